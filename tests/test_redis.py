"""What only the Redis stores do: per-session TTL, key prefixes, the index walk, restarts. The contract itself is in
tests/conformance, run on Redis through tests/backends.py."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from praison_db import ConfigError, StoreUnavailable
from praison_db.facade import open_store
from praison_db.models import message_from_body
from praison_db.testing.blocking import open_blocking
from praison_db.testing.suite.test_numbers import same
from tests import servers
from tests.backends import BACKENDS
from tests.servers import wait_past

REDIS = next(b for b in BACKENDS if b.name == "redis")


@pytest.fixture
def url(make_url) -> str:
    return make_url(REDIS)


@pytest.fixture
def raw(url) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(servers.REDIS_URL)
    yield client
    client.close()


def prefix_of(url: str) -> str:
    return url.rsplit("prefix=", 1)[1]


# ---- per-session TTL ----


def test_session_ttl_is_refreshed_by_activity_and_expiry_cleans_the_indexes(url, raw):
    p = prefix_of(url)
    with open_store(f"{url}&ttl=1", "conversations") as conv:
        conv.create_session("s", user_id="alice", agent_id="bot")
        conv.add_message("s", "user", "hello")
        for key in (f"{p}:s:s", f"{p}:m:s"):
            assert 0 < raw.pttl(key) <= 1000
        wait_past(time.time() + 0.6)
        conv.add_message("s", "assistant", "hi")  # activity: another full second from now
        last_activity = time.time()
        wait_past(last_activity + 0.6)  # 1.2 s after creation: alive only because the append refreshed it
        assert conv.get_session("s").message_count == 2
        conv.update_session("s", name="renamed")  # an update is activity too
        last_activity = time.time()
        wait_past(last_activity + 1.05)
        assert conv.get_session("s") is None
        assert conv.get_messages("s") == [] and conv.count_messages("s") == 0
        assert list(conv.list_sessions()) == [] and list(conv.list_sessions(user_id="alice")) == []
        # The listing swept the index entries Redis could not expire itself.
        assert not raw.exists(f"{p}:activity", f"{p}:u:alice", f"{p}:g:bot", f"{p}:expiring")


def test_sessions_without_ttl_do_not_expire_and_ttl_survives_other_clients(url, raw):
    p = prefix_of(url)
    with open_store(url, "conversations") as plain, open_store(f"{url}&ttl=60", "conversations") as expiring:
        plain.create_session("forever")
        plain.add_message("forever", "user", "x")
        assert raw.pttl(f"{p}:s:forever") == -1 and raw.pttl(f"{p}:m:forever") == -1
        expiring.create_session("brief")
        plain.add_message("brief", "user", "activity from a client without ttl still refreshes the session's own")
        assert 55_000 < raw.pttl(f"{p}:s:brief") <= 60_000 and 55_000 < raw.pttl(f"{p}:m:brief") <= 60_000


def test_state_ttl_option_is_the_default_for_set(url):
    with open_store(f"{url}&ttl=60", "state") as state:
        state.set("default", 1)
        state.set("own", 1, ttl=5)
        assert 55 < state.ttl("default") <= 60 and 0 < state.ttl("own") <= 5
        assert state.incr("counter") == 1 and state.ttl("counter") is None


# ---- prefixes ----


def test_two_prefixes_on_one_server_see_nothing_of_each_other(make_url):
    a_url, b_url = make_url(REDIS), make_url(REDIS)
    with open_store(a_url, "conversations") as a, open_store(b_url, "conversations") as b:
        for store, who in ((a, "a"), (b, "b")):
            store.create_session("same-id", user_id="alice")
            store.add_message("same-id", "user", f"from {who}")
        assert [m.content for m in a.get_messages("same-id")] == ["from a"]
        assert [m.content for m in b.get_messages("same-id")] == ["from b"]
        assert a.delete_user("alice") == 1
        assert b.get_session("same-id") is not None and len(b.list_sessions(user_id="alice")) == 1
        assert a.list_sessions().items == []
    with open_store(a_url, "state") as a, open_store(b_url, "state") as b:
        a.set("k", "a")
        b.set("k", "b")
        assert (a.get("k"), b.get("k")) == ("a", "b")
        assert a.clear() == 1 and b.get("k") == "b" and list(b.keys()) == ["k"]


def test_state_keys_with_glob_characters_are_literal(url):
    with open_store(url, "state") as state:
        keys = ["a*b", "a?", "a[1]", "a\\x", "ab", "a]", "a^"]
        for k in keys:
            state.set(k, k)
        assert list(state.keys("a*")) == ["a*b"]
        assert list(state.keys("a[")) == ["a[1]"]
        assert list(state.keys("a\\")) == ["a\\x"]
        assert sorted(state.keys("a")) == sorted(keys)
        assert state.clear("a?") == 1 and state.clear("a]") == 1 and state.get("ab") == "ab"


# ---- the activity index walk ----


def test_equal_timestamps_page_in_session_id_order_even_when_the_anchor_moves(url):
    stamp = datetime(2020, 1, 1, tzinfo=timezone.utc).isoformat()
    with open_store(url, "conversations") as conv:
        for i in range(30):
            conv.import_session(
                {
                    "format": "praison_db.session/v1",
                    "session": {"session_id": f"t{i:02d}", "created_at": stamp, "updated_at": stamp, "user_id": "u"},
                    "messages": [],
                }
            )
        first = conv.list_sessions(limit=7)
        assert [s.session_id for s in first] == [f"t{i:02d}" for i in range(29, 22, -1)]
        conv.add_message("t23", "user", "moves the cursor's session to the front")
        rest = [s.session_id for s in conv.iter_sessions(user_id="u")]
        assert rest[0] == "t23"
        seen = []
        cursor = first.next_cursor
        while cursor:
            page = conv.list_sessions(limit=7, cursor=cursor)
            seen += [s.session_id for s in page]
            cursor = page.next_cursor
        assert seen == [f"t{i:02d}" for i in range(22, -1, -1)]  # nothing skipped, nothing repeated


def test_timestamps_keep_microseconds(url):
    with open_store(url, "conversations") as conv:
        created = conv.create_session("us")
        message = conv.add_message("us", "user", "x")
        assert conv.get_session("us").created_at == created.created_at
        assert conv.get_messages("us")[0].created_at == message.created_at
        assert created.created_at.microsecond == conv.get_session("us").created_at.microsecond


def test_a_first_page_that_filters_or_missing_sessions_leave_short_walks_on(url, raw):
    # The first page is one script reading `limit` entries; the walk goes on from its last entry when it fell short.
    with open_store(url, "conversations") as conv:
        for i in range(3):
            conv.create_session(f"w{i}", session_type="workflow")
        for i in range(60):
            conv.create_session(f"a{i:02d}")
        page = conv.list_sessions(session_type="workflow", limit=2)
        assert [s.session_id for s in page] == ["w2", "w1"] and page.next_cursor
        assert [s.session_id for s in conv.list_sessions(session_type="workflow", limit=2, cursor=page.next_cursor)] == ["w0"]
        raw.delete(*(f"{prefix_of(url)}:s:a{i}" for i in range(55, 60)))  # gone, as if evicted: their entries stay
        assert [s.session_id for s in conv.list_sessions(limit=3)] == ["a54", "a53", "a52"]
        assert [s.session_id for s in conv.iter_sessions()][-4:] == ["a00", "w2", "w1", "w0"]


# ---- reads ----

_ITEMS: list[dict[str, Any]] = [
    {"role": "system", "content": "Sois bref, s'il te plaît. \u2028 \" / \\ \U0001f600"},
    {"role": "user", "content": "Quel temps ?", "name": "alice", "metadata": {"lang": "fr", "n": -0.0, "big": 2**60}},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
    {"role": "tool", "content": {"temp": 21.5, "list": [1, None, True]}, "tool_call_id": "c1"},
    {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{}", "status": "completed"},
    {"type": "reasoning", "summary": [], "id": "rs_1"},
]


@pytest.mark.parametrize("large", [False, True], ids=["one-array-reply", "a-reply-per-message"])
def test_reads_give_exactly_the_stored_messages(url, raw, large):
    # Windows small together come back from the server as one JSON array, larger ones message by message.
    items = _ITEMS + ([{"role": "user", "content": "x" * 700_000}, {"role": "user", "content": "y" * 700_000}] if large else [])
    with open_store(url, "conversations") as conv:
        conv.create_session("r")
        stored = conv.add_messages("r", items)
        bodies = raw.lrange(f"{prefix_of(url)}:m:r", 0, -1)
        expected = [message_from_body("r", i + 1, body) for i, body in enumerate(bodies)]
        assert conv.get_messages("r") == expected == stored
        assert same([m.to_item() for m in conv.get_messages("r")], [m.to_item() for m in stored])
        assert conv.get_messages("r", limit=3) == expected[-3:]
        assert conv.get_messages("r", before_seq=4, after_seq=1) == expected[1:3]
        assert conv.get_messages("r", after_seq=len(items)) == [] == conv.get_messages("missing", limit=20)


# ---- options and failures ----


def test_options(url):
    with open_store(f"{url}&socket_timeout=5&health_check_interval=5", "state") as state:
        state.set("x", 1)
    with pytest.raises(ConfigError) as info:
        open_store(f"{url}&nonsense=1", "state")
    assert "prefix" in str(info.value) and "ttl" in str(info.value) and "socket_timeout" in str(info.value)
    with pytest.raises(ConfigError):
        open_store(f"{url}&ttl=-5", "conversations")
    with pytest.raises(ConfigError):
        open_store(servers.REDIS_URL + "?prefix=has:colon", "state")


def test_a_database_path_that_is_not_a_number_is_refused_not_read_as_database_0():
    base = servers.REDIS_URL.split("?", 1)[0].rsplit("/", 1)[0]
    for path in ("abc", "O", "1x", "db1"):
        with pytest.raises(ConfigError, match="by number"):
            open_store(f"{base}/{path}", "state")
    with open_store(f"{base}/1?prefix=r{servers.RUN}db", "state") as state:
        assert state.get("missing") is None


def test_refused_port_is_unavailable_quickly_with_the_password_masked():
    start = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        open_store("redis://:s3cret@127.0.0.1:1/0", "state")
    assert time.monotonic() - start < 10
    text = str(info.value)
    assert "s3cret" not in text and "***" in text and "\n" not in text


# ---- the previous message layout ----

# Message bodies exactly as the previous version wrote them: "id", "role", "created_at" (µs) first, then the fields
# that were set; never a "type" or "extra", and a role on every message.
OLD_BODIES = [
    '{"id":"m1","role":"system","created_at":1700000000000001,"content":"Sois bref, s\'il te plaît."}',
    '{"id":"m2","role":"user","created_at":1700000000000002,"content":"Quel temps fait-il ?","name":"alice","metadata":{"lang":"fr","n":-0.0}}',
    '{"id":"m3","role":"assistant","created_at":1700000000000003,"tool_calls":[{"id":"c1","type":"function","function":{"name":"weather","arguments":"{}"}}]}',
    '{"id":"m4","role":"tool","created_at":1700000000000004,"content":"21 °C","tool_call_id":"c1"}',
]
OLD_ITEMS = [
    {"role": "system", "content": "Sois bref, s'il te plaît."},
    {"role": "user", "content": "Quel temps fait-il ?", "name": "alice", "metadata": {"lang": "fr", "n": -0.0}},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
    {"role": "tool", "content": "21 °C", "tool_call_id": "c1"},
]


def write_old_session(raw: redis.Redis, prefix: str, session_id: str, *, indexed: bool) -> None:
    """A session as the previous version stored it; ``indexed=False`` is the older layout without the id index."""
    raw.hset(
        f"{prefix}:s:{session_id}",
        mapping={"session_type": "agent", "metadata": "{}", "created_at": "1700000000000000", "updated_at": "1700000000000004", "message_count": "4"},
    )
    raw.rpush(f"{prefix}:m:{session_id}", *OLD_BODIES)
    if indexed:
        raw.hset(f"{prefix}:i:{session_id}", mapping={f"m{i}": str(i) for i in range(1, 5)})
    raw.zadd(f"{prefix}:activity", {session_id: 1700000000000004})


@pytest.mark.parametrize("indexed", [True, False], ids=["with-id-index", "without-id-index"])
def test_messages_of_the_previous_layout_read_pop_truncate_and_continue(url, raw, api, indexed):
    p = prefix_of(url)
    write_old_session(raw, p, "old", indexed=indexed)
    with _open(api, url) as conv:
        messages = conv.get_messages("old")
        assert [(m.seq, m.id, m.type, m.extra) for m in messages] == [(i, f"m{i}", None, {}) for i in range(1, 5)]
        assert same([m.to_item() for m in messages], OLD_ITEMS)
        assert messages[1].created_at == datetime(2023, 11, 14, 22, 13, 20, 2, tzinfo=timezone.utc)
        assert [h["role"] for h in conv.get_history("old")] == ["system", "user", "assistant", "tool"]
        assert same([m.to_item() for m in conv.get_messages("old", limit=2)], OLD_ITEMS[2:])
        # Removing old messages frees their seqs and ids, as with new ones.
        popped = conv.pop_message("old")
        assert (popped.seq, popped.id) == (4, "m4") and same(popped.to_item(), OLD_ITEMS[3])
        assert conv.add_message("old", "tool", {"temp": 21.0}, id="m4", tool_call_id="c1").seq == 4
        assert conv.truncate("old", 1) == 3
        again = conv.add_message("old", "user", "Et demain ?", id="m2")
        assert (again.seq, again.content) == (2, "Et demain ?")
        assert conv.add_message("old", "user", "retry", id="m1").content == "Sois bref, s'il te plaît."
        assert [m.id for m in conv.get_messages("old")] == ["m1", "m2"]
        assert conv.get_session("old").message_count == conv.count_messages("old") == 2
        assert raw.hgetall(f"{p}:i:old") == {b"m1": b"1", b"m2": b"2"}


def _open(api: str, url: str) -> Any:
    return open_blocking(url, "conversations") if api == "async" else open_store(url, "conversations")


# ---- removing messages keeps the id index exact ----

# Ids with the characters JSON escapes: the scripts read an id from the start of a stored body.
_ids = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=40)


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(_ids | st.sampled_from(['"', "\\", '\\"', 'a"b\\', "é\U0001f600"]), min_size=1, max_size=6, unique=True), keep=st.integers(0, 6))
def test_pop_and_truncate_drop_exactly_the_removed_ids_from_the_index(url, raw, ids, keep):
    p, s = prefix_of(url), "s-" + uuid.uuid4().hex
    with open_store(url, "conversations") as conv:
        conv.create_session(s)
        conv.add_messages(s, [{"role": "user", "content": i, "id": i} for i in ids])
        assert conv.pop_message(s).id == ids[-1]
        kept = ids[: min(keep, len(ids) - 1)]
        assert conv.truncate(s, keep) == len(ids) - 1 - len(kept)
        assert raw.hgetall(f"{p}:i:{s}") == {i.encode(): str(n).encode() for n, i in enumerate(kept, 1)}
        # A removed id is stored anew; a kept one is still a repeat.
        again = conv.add_messages(s, [{"role": "user", "content": "new", "id": i} for i in ids])
        assert [m.content for m in again] == kept + ["new"] * (len(ids) - len(kept))
        assert [m.seq for m in again] == list(range(1, len(ids) + 1))


def test_removal_refreshes_the_session_ttl_and_activity(make_url, raw):
    url = make_url(REDIS) + "&ttl=600"
    p = url.split("prefix=", 1)[1].split("&", 1)[0]
    with open_store(url, "conversations") as conv:
        conv.create_session("t", user_id="alice")
        conv.add_messages("t", [{"role": "user", "content": str(i)} for i in range(3)])
        raw.pexpire(f"{p}:s:t", 5_000)
        before = raw.zscore(f"{p}:u:alice", "t")
        conv.pop_message("t")
        assert 595_000 < raw.pttl(f"{p}:s:t") <= 600_000
        assert raw.zscore(f"{p}:activity", "t") == raw.zscore(f"{p}:u:alice", "t") >= before
        raw.pexpire(f"{p}:s:t", 5_000)
        assert conv.clear_messages("t") == 2
        assert 595_000 < raw.pttl(f"{p}:s:t") <= 600_000
        assert raw.exists(f"{p}:m:t", f"{p}:i:t") == 0
        assert conv.add_message("t", "user", "after").seq == 1 and 0 < raw.pttl(f"{p}:m:t") <= 600_000


# ---- restart (last in this file: it restarts the machine's Redis) ----

@pytest.mark.restart
def test_a_restarted_server_costs_the_next_call_a_reconnect_not_an_error(url):
    if servers.REDIS_URL != "redis://127.0.0.1:6379/0" or shutil.which("redis-server") is None:
        pytest.skip("restarts only the machine's own Redis on 127.0.0.1:6379, started by redis-server")
    conv = open_store(url, "conversations")
    state = conv.state_store()
    try:
        conv.create_session("before")
        state.set("before", 1)
        servers.restart_redis()  # it keeps nothing on disk: the restarted server is empty
        # The pooled connections of both stores are dead; the next calls reconnect and succeed.
        state.set("after", 2)
        assert state.get("after") == 2
        assert conv.create_session("after").session_id == "after"
        assert conv.add_message("after", "user", "still here").seq == 1
    finally:
        state.close()
        conv.close()


# ---- message ids ----

def test_messages_written_without_an_id_index_are_indexed_on_the_next_append(url, raw):
    prefix = url.rsplit("prefix=", 1)[1]
    with open_store(url, "conversations") as conv:
        conv.create_session("old")
        first = conv.add_message("old", "user", "one", id="m1")
        conv.add_message("old", "user", "two", id="m2")
        raw.delete(f"{prefix}:i:old")  # as the previous version left it: messages, no id index
        assert conv.add_message("old", "user", "retry", id="m1") == first
        assert conv.add_message("old", "user", "three", id="m3").seq == 3
        assert conv.count_messages("old") == 3
        assert raw.hgetall(f"{prefix}:i:old") == {b"m1": b"1", b"m2": b"2", b"m3": b"3"}


def test_an_import_indexes_every_id_across_script_chunks(url, raw):
    # The import script writes ids and bodies a thousand at a time (Lua's stack bounds unpack()).
    p = prefix_of(url)
    stamp = datetime(2024, 5, 1, tzinfo=timezone.utc).isoformat()
    messages = [
        {"id": f"i{n}", "session_id": "big", "seq": n, "role": "user", "content": f"n{n}", "created_at": stamp} for n in range(1, 2502)
    ]
    session = {"session_id": "big", "created_at": stamp, "updated_at": stamp}
    with open_store(url, "conversations") as conv:
        conv.import_session({"format": "praison_db.session/v1", "session": session, "messages": messages})
        assert raw.hgetall(f"{p}:i:big") == {f"i{n}".encode(): str(n).encode() for n in range(1, 2502)}
        assert [m.content for m in conv.get_messages("big", after_seq=998, limit=4)] == ["n2498", "n2499", "n2500", "n2501"]
        assert [m.id for m in conv.get_messages("big", before_seq=1003, after_seq=998)] == ["i999", "i1000", "i1001", "i1002"]
        assert conv.add_message("big", "user", "retry", id="i1001").content == "n1001"
        assert conv.add_message("big", "user", "next").seq == 2502 == conv.count_messages("big")


def test_the_id_index_expires_and_is_deleted_with_its_session(make_url, raw):
    url = make_url(REDIS) + "&ttl=600"
    prefix = url.split("prefix=", 1)[1].split("&", 1)[0]
    with open_store(url, "conversations") as conv:
        conv.create_session("t")
        conv.add_message("t", "user", "one", id="m1")
        assert 0 < raw.pttl(f"{prefix}:i:t") <= 600_000
        conv.delete_session("t")
        assert raw.exists(f"{prefix}:i:t") == 0
