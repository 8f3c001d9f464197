"""What only the MongoDB stores do: TTL index, collection prefixes, database from the URL, standalone servers. The
contract itself is in tests/conformance, run on MongoDB (SecantusDB in-process) through tests/backends.py."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pymongo
import pytest

from praison_db import ConfigError, StoreUnavailable
from praison_db.facade import open_store
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


def test_ttl_index_exists_and_the_server_sweeps_expired_keys(url, raw):
    with open_store(url, "state") as state:
        indexes = {i["name"]: i for i in raw["praison_state"].list_indexes()}
        assert indexes["expiry"]["key"] == {"e": 1} and indexes["expiry"]["expireAfterSeconds"] == 0
        state.set("brief", 1, ttl=0.5)
        assert raw["praison_state"].find_one({"_id": "brief"}) is not None
        deadline = time.monotonic() + 20  # the test server sweeps every second (MongoDB: every minute)
        while raw["praison_state"].find_one({"_id": "brief"}) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert raw["praison_state"].find_one({"_id": "brief"}) is None


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
    assert indexes["session_seq"]["unique"] is True


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
