"""What only the MongoDB stores do: TTL index, collection prefixes, database from the URL, standalone servers. The
contract itself is in tests/conformance, run on MongoDB (SecantusDB in-process) through tests/backends.py."""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pymongo
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from praison_db import ConfigError, IntegrityError, StoreUnavailable
from praison_db.facade import open_store
from praison_db.models import MESSAGE_FIELDS
from praison_db.testing.suite.test_numbers import same
from tests import servers
from tests.backends import BACKENDS

MONGO = next(b for b in BACKENDS if b.name == "mongodb")


@pytest.fixture
def url(make_url) -> str:
    return make_url(MONGO)


@pytest.fixture
def raw(url) -> Iterator[pymongo.database.Database]:
    client: pymongo.MongoClient = pymongo.MongoClient(url, tz_aware=True)
    yield client.get_default_database()
    client.close()


def test_ttl_index_exists_and_the_server_sweeps_expired_keys():
    with servers.mongodb_server(ttl_sweep_seconds=1) as server:  # the run's shared server does not sweep
        url = servers.mongo_database_url(server, "sweep")
        with open_store(url, "state") as state, pymongo.MongoClient(url, tz_aware=True) as client:
            keys = client.get_default_database()["praison_state"]
            indexes = {i["name"]: i for i in keys.list_indexes()}
            assert indexes["expiry"]["key"] == {"e": 1} and indexes["expiry"]["expireAfterSeconds"] == 0
            state.set("brief", 1, ttl=0.5)
            assert keys.find_one({"_id": "brief"}) is not None
            deadline = time.monotonic() + 20  # this server sweeps every second (MongoDB: every minute)
            while keys.find_one({"_id": "brief"}) is not None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert keys.find_one({"_id": "brief"}) is None


def test_expired_documents_the_server_has_not_swept_are_invisible(url, raw):
    with open_store(url, "state") as state:
        # As if the sweep had not run yet: past exact expiry, but a TTL date the server will not act on.
        far = datetime.now(timezone.utc) + timedelta(days=1)
        past = time.time() - 10
        raw["praison_state"].insert_many(
            [
                {"_id": "stale", "v": '"old"', "e": far, "x": past},
                {"_id": "stale_n", "i": 41, "e": far, "x": past},
                {"_id": "stale_d", "v": "1", "e": far, "x": past},
            ]
        )
        assert state.get("stale", "default") == "default" and not state.exists("stale")
        assert state.get_many(["stale", "stale_n"]) == {} and list(state.keys("stale")) == []
        assert state.ttl("stale") is None and state.expire("stale", 10) is False
        assert state.incr("stale_n") == 1 and state.ttl("stale_n") is None  # starts over, without the old TTL
        assert state.delete("stale_d") is False and raw["praison_state"].find_one({"_id": "stale_d"}) is None
        state.set("stale", "new")
        assert state.get("stale") == "new"


def test_restricted_field_names_round_trip_and_integers_are_bson_integers(url, raw):
    """Values are opaque JSON to BSON; integers in the 64-bit range are BSON integers, so incr is a server-side $inc."""
    with open_store(url, "state") as state:
        state.set("small", 5)
        assert raw["praison_state"].find_one({"_id": "small"})["i"] == 5
        state.set("dollar", {"$set": {"a.b": 1}, "x.y": [None]})  # field names BSON restricts
        assert state.get("dollar") == {"$set": {"a.b": 1}, "x.y": [None]}


def test_database_from_the_url_and_collection_prefixes_keep_apart(url, raw):
    with open_store(f"{url}?collection_prefix=app_a_", "conversations") as a, open_store(
        f"{url}?collection_prefix=app_b_", "conversations"
    ) as b:
        for store, who in ((a, "a"), (b, "b")):
            store.create_session("same-id", user_id="alice", metadata={"$weird.key": 1})
            store.add_message("same-id", "user", f"from {who}")
        assert [m.content for m in a.get_messages("same-id")] == ["from a"]
        assert a.get_session("same-id").metadata == {"$weird.key": 1}
        assert a.delete_user("alice") == 1 and b.count_messages("same-id") == 1
    names = set(raw.list_collection_names())
    assert {"app_a_sessions", "app_a_messages", "app_b_sessions", "app_b_messages"} <= names
    assert raw["app_b_messages"].find_one({"session_id": "same-id"})["content"] == "from b"
    indexes = {i["name"]: i for i in raw["app_a_messages"].list_indexes()}
    assert indexes["session_inc_seq"]["unique"] is True and "session_seq" not in indexes
    assert dict(indexes["session_inc_seq"]["key"]) == {"session_id": 1, "inc": 1, "seq": 1}


def test_default_database_is_praison(url):
    server = url.split("/")[2]
    with open_store(f"mongodb://{server}/?collection_prefix=dflt_{id(url)}_", "state") as state:
        state.set("k", 1)
        client: pymongo.MongoClient = pymongo.MongoClient(f"mongodb://{server}/")
        try:
            assert client["praison"][f"dflt_{id(url)}_state"].find_one({"_id": "k"}) is not None
            client["praison"].drop_collection(f"dflt_{id(url)}_state")
        finally:
            client.close()


def test_timestamps_keep_microseconds(url, raw):
    with open_store(url, "conversations") as conv:
        created = conv.create_session("us")
        message = conv.add_message("us", "user", "x")
        assert conv.get_session("us").created_at == created.created_at
        assert conv.get_messages("us")[0].created_at == message.created_at
        assert raw["praison_sessions"].find_one({"_id": "us"})["created_us"] % 1_000_000 == created.created_at.microsecond


def test_options(url):
    with open_store(f"{url}?w=majority&journal=true&readPreference=primary", "state") as state:
        state.set("x", 1)
    for bad in (f"{url}?nonsense=1", f"{url}?serverSelectionTimeoutMS=soon", f"{url}?collection_prefix=has-dash"):
        with pytest.raises(ConfigError) as info:
            open_store(bad, "state")
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        open_store(f"{url}?nonsense=1", "state")
    assert "collection_prefix" in str(info.value)


def test_refused_port_is_unavailable_quickly_with_the_password_masked():
    start = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        open_store("mongodb://u:s3cret@127.0.0.1:1/db?serverSelectionTimeoutMS=500", "conversations")
    assert time.monotonic() - start < 10
    text = str(info.value)
    assert "s3cret" not in text and "***" in text and "\n" not in text


def test_standalone_server_without_transactions_still_works():
    try:
        from secantus import SecantusDBServer
    except ImportError as e:
        servers.unavailable("SecantusDB (pip install 'secantusdb==0.7.0b3')", e)

    with tempfile.TemporaryDirectory(prefix="praison-mongo-standalone-") as tmp:
        with SecantusDBServer(host="127.0.0.1", port=0, storage_path=tmp, replica_set_name=None) as server:
            url = server.uri.rstrip("/") + "/standalone"
            with open_store(url, "conversations") as conv:
                assert conv.capabilities.transactions is False and "replica set" in conv.capabilities.reason
                conv.create_session("s", user_id="u")
                conv.add_messages("s", [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
                assert [m.seq for m in conv.get_messages("s")] == [1, 2]
                assert conv.delete_user("u") == 1 and conv.get_messages("s") == []
                with conv.state_store() as state:
                    state.set_many({"a": 1, "b": 2})
                    assert state.incr("a") == 2


def test_newest_n_reads_an_index_range_and_copes_with_gaps(url, raw):
    with open_store(url, "conversations") as conv:
        conv.create_session("g")
        conv.add_messages("g", [{"role": "user", "content": f"m{i}"} for i in range(1, 11)])
        assert [m.seq for m in conv.get_messages("g", limit=3)] == [8, 9, 10]
        # A gap, as a process dying mid-append on a standalone server could leave: the read falls back to the index walk.
        raw["praison_messages"].delete_one({"session_id": "g", "seq": 9})
        assert [m.seq for m in conv.get_messages("g", limit=3)] == [7, 8, 10]
        assert [m.seq for m in conv.get_messages("g", limit=2, before_seq=10**6)] == [8, 10]
        assert [m.seq for m in conv.get_messages("g", limit=2, before_seq=2**70, after_seq=7)] == [8, 10]
        assert conv.get_messages("g", limit=5, before_seq=1) == []


# ---- incarnations: a deleted session's messages never come back ----


@pytest.fixture(scope="module")
def standalone_server() -> Iterator[str]:
    """A standalone SecantusDB (no replica set, so no transactions), for this module's tests."""
    try:
        from secantus import SecantusDBServer
    except ImportError as e:
        servers.unavailable("SecantusDB (pip install 'secantusdb==0.7.0b3')", e)
    with tempfile.TemporaryDirectory(prefix="praison-mongo-standalone-") as tmp:
        with SecantusDBServer(host="127.0.0.1", port=0, storage_path=tmp, replica_set_name=None) as server:
            yield server.uri.rstrip("/")


@pytest.fixture
def standalone_url(standalone_server) -> str:
    return f"{standalone_server}/sa{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=["replica-set", "standalone"])
def any_url(request, url, standalone_server) -> str:
    return url if request.param == "replica-set" else f"{standalone_server}/sa{uuid.uuid4().hex[:10]}"


class _RunsFirst:
    """The store's messages collection, running ``before`` once ahead of the next insert_many: a delete from another
    client lands exactly between an append's counter bump and its insert, where it can only land on a server
    without transactions. Every other call goes straight to the real collection."""

    def __init__(self, real: Any, before: Callable[[], None]) -> None:
        self._real, self._before = real, before

    def insert_many(self, *args: Any, **kwargs: Any) -> Any:
        before, self._before = self._before, lambda: None
        before()
        return self._real.insert_many(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_a_delete_between_counter_and_insert_does_not_resurrect_messages(standalone_url):
    with open_store(standalone_url, "conversations") as a, open_store(standalone_url, "conversations") as b:
        assert a.capabilities.transactions is False
        a.create_session("raced", user_id="alice")
        a.add_messages("raced", [{"role": "user", "content": f"old {i}"} for i in range(3)])

        def delete_and_recreate() -> None:
            assert b.delete_session("raced")
            b.create_session("raced", user_id="alice")

        a.messages = _RunsFirst(a.messages, delete_and_recreate)
        late = a.add_message("raced", "user", "late")  # took seq 4 of the old session, which is gone by the insert
        assert late.seq == 4

        for store in (a, b):
            assert store.get_messages("raced") == [] and store.get_messages("raced", limit=5) == []
            assert store.count_messages("raced") == 0 and store.get_session("raced").message_count == 0
        fresh = b.add_messages("raced", [{"role": "user", "content": f"new {i}"} for i in range(6)])
        assert [m.seq for m in fresh] == [1, 2, 3, 4, 5, 6]
        assert [m.content for m in a.get_messages("raced")] == [f"new {i}" for i in range(6)]
        assert [m.content for m in a.get_messages("raced", limit=3, before_seq=6)] == ["new 2", "new 3", "new 4"]
        assert [m.seq for m in a.get_messages("raced", after_seq=3)] == [4, 5, 6]
        assert b.export_session("raced")["messages"][3]["content"] == "new 3"
        # The appender removed what it wrote into the deleted incarnation: nothing is left behind.
        raw = pymongo.MongoClient(standalone_url)
        try:
            contents = sorted(d["content"] for d in raw.get_default_database()["praison_messages"].find({"session_id": "raced"}))
        finally:
            raw.close()
        assert contents == [f"new {i}" for i in range(6)]


def test_deletes_racing_appends_from_two_clients(standalone_url):
    """One client appends while another deletes, re-creates and appends to the session, 150 rounds: no append fails
    with anything but SessionNotFound, and afterwards the session reads back whole, contiguous, with nothing left
    over."""
    from praison_db import SessionNotFound

    with open_store(standalone_url, "conversations") as a, open_store(standalone_url, "conversations") as b:
        a.create_session("busy")
        stop = threading.Event()
        failures: list[BaseException] = []

        def append() -> None:
            for i in range(2000):  # bounded; normally stopped by the deleter
                if stop.is_set():
                    return
                try:
                    a.add_messages("busy", [{"role": "user", "content": str(i)}, {"role": "assistant", "content": str(i)}])
                except SessionNotFound:
                    pass
                except BaseException as e:
                    failures.append(e)
                    return

        def churn() -> None:
            try:
                for _ in range(150):
                    b.delete_session("busy")
                    b.get_or_create_session("busy")
                    # The new incarnation reaches the seqs the other client may just have written into the old one.
                    b.add_messages("busy", [{"role": "user", "content": "c"}] * 3)
                    seqs = [m.seq for m in b.get_messages("busy")]
                    assert seqs == sorted(set(seqs)), seqs  # gaps can show while an append is between its writes
            except BaseException as e:
                failures.append(e)
            finally:
                stop.set()

        threads = [threading.Thread(target=append), threading.Thread(target=churn)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not failures, repr(failures[0])
        count = b.count_messages("busy")
        nxt = b.add_message("busy", "user", "after the race")
        assert nxt.seq == count + 1
        assert [m.seq for m in b.get_messages("busy")] == list(range(1, count + 2))
        raw = pymongo.MongoClient(standalone_url)
        try:
            left = raw.get_default_database()["praison_messages"].count_documents({"session_id": "busy"})
        finally:
            raw.close()
        assert left == count + 1


def test_duplicate_keys_are_integrity_errors_and_a_failed_append_adds_nothing(any_url):
    raw_client = pymongo.MongoClient(any_url)
    raw = raw_client.get_default_database()
    with open_store(any_url, "conversations") as conv:
        conv.create_session("dup")
        conv.add_message("dup", "user", "one")
        # Another writer's document already sits at the next seq of this incarnation.
        inc = raw["praison_sessions"].find_one({"_id": "dup"})["inc"]
        raw["praison_messages"].insert_one({"session_id": "dup", "inc": inc, "seq": 3, "id": "foreign", "role": "user", "content": "x", "created_us": 0})
        with pytest.raises(IntegrityError) as info:
            conv.add_messages("dup", [{"role": "user", "content": "two"}, {"role": "user", "content": "three"}])
        text = str(info.value)
        assert "duplicate key" in text and "\n" not in text
        left = sorted(d["id"] for d in raw["praison_messages"].find({"session_id": "dup"}))
        assert len(left) == 2 and "foreign" in left  # ours of the failed call are gone, the other writer's stays
        assert [m.content for m in conv.get_messages("dup", limit=1)] != ["two"]
        if conv.capabilities.transactions:
            assert conv.count_messages("dup") == 1
    raw_client.close()


def test_sessions_from_before_incarnations_keep_working(url, raw):
    """Documents written without ``inc`` under the old unique (session_id, seq) index: opening the store replaces the
    index, and the old session reads, appends and deletes as before."""
    raw["praison_messages"].create_index([("session_id", 1), ("seq", 1)], unique=True, name="session_seq")
    raw["praison_sessions"].insert_one(
        {"_id": "legacy", "user_id": "old", "agent_id": None, "session_type": "agent", "name": None, "metadata": "{}",
         "created_us": 1, "updated_us": 1, "message_count": 2}
    )
    raw["praison_messages"].insert_many(
        [{"session_id": "legacy", "seq": i, "id": f"m{i}", "role": "user", "content": f"old {i}", "created_us": 1} for i in (1, 2)]
    )
    with open_store(url, "conversations") as conv:
        assert "session_seq" not in {i["name"] for i in raw["praison_messages"].list_indexes()}
        assert [m.content for m in conv.get_messages("legacy")] == ["old 1", "old 2"]
        assert conv.add_message("legacy", "user", "new").seq == 3
        assert [m.content for m in conv.get_messages("legacy", limit=2)] == ["old 2", "new"]
        assert conv.delete_user("old") == 1
        assert raw["praison_messages"].count_documents({"session_id": "legacy"}) == 0
        conv.create_session("legacy")
        assert conv.get_messages("legacy") == [] and conv.add_message("legacy", "user", "x").seq == 1


# ---- message ids ----

def test_message_ids_have_a_unique_index(url, raw):
    with open_store(url, "conversations") as conv:
        conv.create_session("s")
        conv.add_message("s", "user", "one", id="m1")
        indexes = {i["name"]: i for i in raw["praison_messages"].list_indexes()}
        index = indexes["session_inc_id"]
        assert index["key"] == {"session_id": 1, "inc": 1, "id": 1} and index["unique"]
        inc = raw["praison_sessions"].find_one({"_id": "s"})["inc"]
        with pytest.raises(pymongo.errors.DuplicateKeyError):  # the server itself refuses a second copy
            raw["praison_messages"].insert_one({"session_id": "s", "inc": inc, "seq": 99, "id": "m1"})


def test_older_data_with_an_id_twice_still_opens_and_works(url, raw, caplog):
    with open_store(url, "conversations") as conv:
        conv.create_session("old")
        first = conv.add_message("old", "user", "one", id="twice")
    messages = raw["praison_messages"]
    messages.drop_index("session_inc_id")  # as an older version left it, with an import that repeated an id
    doc = messages.find_one({"session_id": "old"}, {"_id": 0})
    messages.insert_one({**doc, "seq": 2, "content": "two"})
    raw["praison_sessions"].update_one({"_id": "old"}, {"$set": {"message_count": 2}})
    with caplog.at_level(logging.WARNING, logger="praison_db"), open_store(url, "conversations") as conv:
        assert any("ids are not enforced unique" in r.getMessage() for r in caplog.records)
        assert conv.add_message("old", "user", "retry", id="twice").seq in (1, 2)
        assert conv.add_message("old", "user", "three", id="new").seq == 3
        assert [m.content for m in conv.get_messages("old")] == [first.content, "two", "three"]


# ---- the open message model: any item, stored exactly ----

_AWKWARD: dict[str, Any] = {
    "$set": {"a.b": [[-0.0, 0.0], [2**64 + 1, -(2**70)]]},
    "x.y": [None, True, 1, 1.0, "1"],
    "$": {"": [], ".": {}},
}


def test_awkward_json_in_content_and_extra_round_trips_on_both_deployments(any_url):
    """Integers beyond 64 bits, -0.0, nested lists, keys with dots or a leading $ (none of which BSON stores as
    given) in content and in the item's own fields: stored as JSON text, read back deep-equal with their types."""
    item = {"type": "custom", "role": None, "content": _AWKWARD, "$weird.field": _AWKWARD, "big": 2**80}
    expected = {k: v for k, v in item.items() if k != "role"}
    with open_store(any_url, "conversations") as conv:
        conv.create_session("odd")
        conv.add_messages("odd", [item, {"role": "user", "content": [2**65, -0.0]}, {"role": "user", "content": "text"}])
        back = conv.get_messages("odd")
        assert same(back[0].to_item(), expected) and back[0].role is None
        assert same(back[1].content, [2**65, -0.0]) and back[2].content == "text"
        assert same(conv.get_messages("odd", limit=1)[0].content, "text")
        assert same(conv.pop_message("odd").content, "text")
        assert same(conv.pop_message("odd").content, [2**65, -0.0])
        assert same(conv.pop_message("odd").to_item(), expected)
    raw_client: pymongo.MongoClient = pymongo.MongoClient(any_url)
    try:
        assert raw_client.get_default_database()["praison_messages"].count_documents({"session_id": "odd"}) == 0
    finally:
        raw_client.close()


def test_text_content_stays_a_bson_string_and_other_content_is_json_text(url, raw):
    with open_store(url, "conversations") as conv:
        conv.create_session("layout")
        conv.add_messages(
            "layout",
            [
                {"role": "user", "content": "plain"},
                {"role": "critic", "content": {"score": 2**70}, "mood": "$ok"},
                {"type": "function_call", "call_id": "c1", "arguments": "{}"},
            ],
        )
    docs = list(raw["praison_messages"].find({"session_id": "layout"}, {"_id": 0}).sort("seq", 1))
    assert docs[0]["content"] == "plain" and "extra" not in docs[0] and "type" not in docs[0]
    assert docs[1]["content"] is None and docs[1]["extra"] == '{"mood":"$ok","content":{"score":1180591620717411303424}}'
    assert docs[2]["type"] == "function_call" and docs[2]["role"] is None
    assert docs[2]["extra"] == '{"call_id":"c1","arguments":"{}"}'


_json_key = st.text(st.sampled_from("$.ab\u00e9"), max_size=4)
_any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_json_key, inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=_any_json, extra=st.dictionaries(_json_key.filter(lambda k: k not in MESSAGE_FIELDS), _any_json, max_size=3))
def test_any_json_comes_back_exactly(conv_on_mongo, content, extra):
    """Unbounded integers and keys made of "$" and "." too (the conformance suite keeps to 64-bit integers)."""
    sid = "h" + uuid.uuid4().hex
    conv_on_mongo.create_session(sid)
    added = conv_on_mongo.add_message(sid, "tool", content, extra=extra)
    back = conv_on_mongo.get_messages(sid)[0]
    assert same(back.content, content) and same(back.extra, extra) and back == added


@pytest.fixture
def conv_on_mongo(url) -> Iterator[Any]:
    with open_store(url, "conversations") as conv:
        yield conv


def test_messages_written_before_the_open_message_model_read_back_unchanged(url, raw):
    """The layout of the previous version, written directly: role always set, content a string or null, no type
    and no extra field. Reads, pops, truncation and appends work on it as on new documents."""
    with open_store(url, "conversations") as conv:
        conv.create_session("before", user_id="u")
    inc = raw["praison_sessions"].find_one({"_id": "before"})["inc"]
    calls = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    old = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi", "name": "alice", "metadata": '{"n":1}'},
        {"role": "assistant", "content": None, "tool_calls": json.dumps(calls)},
        {"role": "tool", "content": "42", "tool_call_id": "call_1"},
    ]
    raw["praison_messages"].insert_many(
        [{"session_id": "before", "inc": inc, "seq": i, "id": f"m{i}", "created_us": 1_700_000_000_000_000 + i, **d} for i, d in enumerate(old, 1)]
    )
    raw["praison_sessions"].update_one({"_id": "before"}, {"$set": {"message_count": 4}})
    with open_store(url, "conversations") as conv:
        back = conv.get_messages("before")
        assert [m.to_item() for m in back] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi", "name": "alice", "metadata": {"n": 1}},
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "content": "42", "tool_call_id": "call_1"},
        ]
        assert all(m.type is None and m.extra == {} for m in back)
        assert back[1].created_at == datetime(2023, 11, 14, 22, 13, 20, 2, tzinfo=timezone.utc)
        assert conv.get_history("before")[2] == {"role": "assistant", "content": None, "tool_calls": calls}
        assert conv.get_messages("before", limit=2) == back[2:]
        assert conv.pop_message("before") == back[3]
        assert conv.add_message("before", "user", "new").seq == 4
        assert conv.truncate("before", 1) == 3 and conv.get_messages("before") == back[:1]
        assert conv.get_session("before").message_count == 1


# ---- removing messages ----


def test_pops_and_appends_from_several_threads_lose_nothing(url):
    """Two threads append while two pop, on one session: every message is either popped once or still there,
    and what is left is numbered 1..n with message_count n (removal and append are ordered by transactions)."""
    with open_store(url, "conversations") as conv:
        conv.create_session("busy")
        conv.add_messages("busy", [{"role": "user", "content": "seed", "id": f"seed{i}"} for i in range(10)])
        popped: list[Any] = []
        failures: list[BaseException] = []

        def append(who: str) -> None:
            try:
                for i in range(15):
                    conv.add_message("busy", "user", f"{who}{i}", id=f"{who}{i}")
            except BaseException as e:
                failures.append(e)

        def pop() -> None:
            try:
                popped.extend(m for _ in range(12) if (m := conv.pop_message("busy")) is not None)
            except BaseException as e:
                failures.append(e)

        threads = [threading.Thread(target=append, args=(w,)) for w in "ab"] + [threading.Thread(target=pop) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not failures, repr(failures[0])
        left = conv.get_messages("busy")
        assert [m.seq for m in left] == list(range(1, len(left) + 1))
        assert conv.get_session("busy").message_count == len(left) == len(conv.get_messages("busy", limit=len(left) + 5))
        ids = [m.id for m in popped] + [m.id for m in left]
        assert sorted(ids) == sorted([f"seed{i}" for i in range(10)] + [f"{w}{i}" for w in "ab" for i in range(15)])


def test_pops_on_a_standalone_server_each_get_a_different_message(standalone_url):
    """Without transactions a pop is one atomic find-and-delete and a $min on the counter: concurrent pops still
    never share a message, and the counter ends where the messages do."""
    with open_store(standalone_url, "conversations") as conv:
        assert conv.capabilities.transactions is False
        conv.create_session("s")
        conv.add_messages("s", [{"role": "user", "content": str(i)} for i in range(30)])
        got: list[Any] = []
        threads = [threading.Thread(target=lambda: got.extend(conv.pop_message("s") for _ in range(10))) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        seqs = sorted(m.seq for m in got if m is not None)
        assert seqs == list(range(1, 31)) and got.count(None) == 10
        assert conv.get_session("s").message_count == 0 and conv.add_message("s", "user", "next").seq == 1
        conv.add_messages("s", [{"role": "user", "content": str(i)} for i in range(5)])
        assert conv.truncate("s", 2) == 4 and conv.add_message("s", "user", "x").seq == 3


def test_a_pop_between_counter_and_insert_on_a_standalone_server_repeats_no_seq(standalone_url):
    """The one race a standalone server leaves open: a pop lands between an append's counter bump and its insert.
    It can leave a gap in the seqs, never two messages at one seq: the appender raises the counter again."""
    with open_store(standalone_url, "conversations") as a, open_store(standalone_url, "conversations") as b:
        a.create_session("raced")
        a.add_messages("raced", [{"role": "user", "content": f"old {i}"} for i in range(3)])
        popped: list[Any] = []
        a.messages = _RunsFirst(a.messages, lambda: popped.append(b.pop_message("raced")))
        late = a.add_message("raced", "user", "late")
        assert late.seq == 4 and popped[0].seq == 3
        after = [a.add_message("raced", "user", f"after {i}").seq for i in range(2)]
        seqs = [m.seq for m in a.get_messages("raced")]
        assert seqs == [1, 2, 4, 5, 6] and after == [5, 6] and a.get_session("raced").message_count == 6
        assert [m.seq for m in a.get_messages("raced", limit=3)] == [4, 5, 6]


class _DeletesAfter:
    """The store's messages collection, running ``before`` once ahead of the next delete_one: another client's pop
    lands between this pop's read of the newest message and its delete."""

    def __init__(self, real: Any, before: Callable[[], None]) -> None:
        self._real, self._before = real, before

    def delete_one(self, *args: Any, **kwargs: Any) -> Any:
        before, self._before = self._before, lambda: None
        before()
        return self._real.delete_one(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_a_pop_that_loses_its_message_to_another_pop_takes_the_next(any_url):
    with open_store(any_url, "conversations") as a, open_store(any_url, "conversations") as b:
        a.create_session("race")
        a.add_messages("race", [{"role": "user", "content": str(i)} for i in range(1, 5)])
        other: list[Any] = []
        a.messages = _DeletesAfter(a.messages, lambda: other.append(b.pop_message("race")))
        mine = a.pop_message("race")  # read seq 4, which b then popped: a looks again and takes seq 3
        assert (other[0].seq, mine.seq) == (4, 3)
        assert [m.seq for m in b.get_messages("race")] == [1, 2] and b.get_session("race").message_count == 2
        assert b.add_message("race", "user", "next").seq == 3
