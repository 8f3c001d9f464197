"""What only Redis Cluster does: the cluster URLs, a session's keys in one slot, listings that stay exact although
their indexes live in another slot, and a master killed mid-run. The contract itself is in tests/conformance, run on
a private three-master cluster through tests/backends.py (backend ``redis-cluster``)."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from praison_db import ConfigError, SessionExists, SessionNotFound, StoreUnavailable
from praison_db.backends.redis import _Layout
from praison_db.base import EXPORT_FORMAT
from praison_db.facade import open_store
from praison_db.testing import ServerMissing, unavailable
from praison_db.testing.blocking import open_blocking
from tests import servers
from tests.backends import BACKENDS
from tests.private_servers import free_port
from tests.redis_cluster import LocalCluster, local_cluster
from tests.servers import wait_past, wait_until

CLUSTER = next(b for b in BACKENDS if b.name == "redis-cluster")
REDIS = next(b for b in BACKENDS if b.name == "redis")


@pytest.fixture
def url(make_url) -> str:
    return make_url(CLUSTER)


def prefix_of(url: str) -> str:
    return url.rsplit("prefix=", 1)[1]


def hosts_of(url: str) -> list[tuple[str, int]]:
    netloc = url.split("://", 1)[1].split("?", 1)[0].rsplit("@", 1)[-1]
    return [(h, int(p)) for h, p in (item.rsplit(":", 1) for item in netloc.split(","))]


@pytest.fixture
def raw(url) -> Iterator[RedisCluster]:
    client = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in hosts_of(url)])
    yield client
    client.close()


def _open(api: str, url: str, role: str = "conversations") -> Any:
    return open_blocking(url, role) if api == "async" else open_store(url, role)  # type: ignore[arg-type]


def listed(conv: Any, page_size: int, **filters: Any) -> list[str]:
    """Every session id of a listing, page by page."""
    ids, cursor = [], None
    while True:
        page = conv.list_sessions(limit=page_size, cursor=cursor, **filters)
        ids += [s.session_id for s in page.items]
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def us(when: datetime) -> int:
    return (when - EPOCH) // timedelta(microseconds=1)


def export(session_id: str, user_id: str, when: str, messages: int = 0) -> dict[str, Any]:
    """An export of a session last active at ``when`` (an ISO timestamp), as import_session takes it."""
    return {
        "format": EXPORT_FORMAT,
        "session": {"session_id": session_id, "user_id": user_id, "session_type": "agent", "metadata": {}, "created_at": when, "updated_at": when, "message_count": messages},
        "messages": [
            {"id": f"m{i}", "session_id": session_id, "seq": i, "role": "user", "content": "x", "created_at": when} for i in range(1, messages + 1)
        ],
    }


def node_text(cluster: LocalCluster, port: int, what: str) -> str:
    """CLUSTER INFO / CLUSTER NODES of one node, as text."""
    with cluster.client(port) as r:
        reply = r.execute_command("CLUSTER", what)
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def by_activity(conv: Any, ids: list[str]) -> list[str]:
    """The ids of the sessions that exist, in the order a listing must give: newest activity first, ties by id."""
    sessions = [s for s in (conv.get_session(i) for i in ids) if s is not None]
    return [s.session_id for s in sorted(sessions, key=lambda s: (s.updated_at, s.session_id.encode()), reverse=True)]


# ---- URLs ----


def test_a_cluster_url_names_startup_nodes_and_any_one_of_them_is_enough(url):
    (host, port), *_ = hosts_of(url)
    p = prefix_of(url)
    with open_store(url, "conversations") as every:
        every.create_session("s", user_id="alice")
        every.add_message("s", "user", "hi")
    # ?cluster=true on a redis:// URL is the same backend; one live startup node finds the rest of the cluster.
    with open_store(f"redis://{host}:{port}/0?cluster=true&prefix={p}", "conversations") as one:
        assert [m.content for m in one.get_messages("s")] == ["hi"]
        assert [s.session_id for s in one.list_sessions(user_id="alice").items] == ["s"]
    dead = free_port()
    with open_store(f"redis+cluster://127.0.0.1:{dead},{host}:{port}?prefix={p}", "state") as state:
        state.set("k", 1)
        assert state.get("k") == 1


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("redis+cluster://127.0.0.1:7000/2", "only database 0"),
        ("redis+cluster://127.0.0.1:7000?cluster=false", "contradicts"),
        ("unix:///tmp/redis.sock?cluster=true", "over TCP"),
        ("redis://127.0.0.1:7000,127.0.0.1:7001/0", "redis+cluster://"),
    ],
)
def test_cluster_url_mistakes_are_one_line_config_errors(text, needle):
    with pytest.raises(ConfigError) as info:
        open_store(text, "conversations")
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_a_cluster_url_to_a_single_server_or_a_plain_url_to_a_cluster_node_says_which_to_use(url):
    single = servers.REDIS_URL.split("?", 1)[0].rsplit("/", 1)[0].replace("redis://", "redis+cluster://", 1)
    try:
        with redis.Redis.from_url(servers.REDIS_URL, socket_connect_timeout=2) as r:
            r.ping()
    except redis.RedisError as e:
        unavailable("Redis (127.0.0.1:6379)", e)
    with pytest.raises(ConfigError, match="not a Redis Cluster node; open it with redis://"):
        open_store(single, "state")
    (host, port), *_ = hosts_of(url)
    with open_store(f"redis://{host}:{port}/0?prefix={prefix_of(url)}", "state") as plain:
        with pytest.raises(ConfigError, match="node of a Redis Cluster; open it with redis\\+cluster://"):
            for i in range(50):  # some of these keys live on another node
                plain.set(f"k{i}", i)


def test_unreachable_startup_nodes_are_unavailable_quickly_with_the_password_masked():
    start = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        open_store(f"redis+cluster://:s3cret@127.0.0.1:{free_port()},127.0.0.1:{free_port()}", "state")
    assert time.monotonic() - start < 10
    text = str(info.value)
    assert "s3cret" not in text and "***" in text and "\n" not in text


# ---- key layout ----

_ids = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=255)
_prefixes = st.text(st.sampled_from("abcXYZ019_"), max_size=32)


@settings(max_examples=300, deadline=None, database=None)
@given(prefix=_prefixes, session_id=_ids | st.sampled_from(["}", "}x", "{", "{}", "a}b{c}", "{s:x}", "x}:m"]), user=_ids)
def test_every_key_of_a_session_shares_one_slot_and_the_indexes_share_another(prefix, session_id, user):
    layout = _Layout(prefix, cluster=True)
    keys = layout.session(session_id)
    assert len({key_slot(k.encode()) for k in keys}) == 1
    assert len(set(keys)) == 3 and all(k.startswith(f"{prefix}:") for k in keys)
    index = [*layout.index_keys, layout.user(user), layout.agent(user)]
    assert len({key_slot(k.encode()) for k in index}) == 1
    assert all(k.startswith(f"{prefix}:") for k in index)


@settings(max_examples=100, deadline=None, database=None)
@given(a=_ids, b=_ids)
def test_cluster_key_names_never_collide(a, b):
    layout = _Layout("p", cluster=True)
    names_a, names_b = layout.session(a), layout.session(b)
    if a != b:
        assert not set(names_a) & set(names_b)
    assert not set(names_a) & set(layout.index_keys) and not any(n.startswith(layout.kv) for n in names_a)


def test_the_single_server_layout_is_unchanged(make_url):
    """A store on one server writes exactly the key names of the previous version: no hash tag, no migration."""
    url = make_url(REDIS)
    p = prefix_of(url)
    with open_store(url, "conversations") as conv, open_store(url, "state") as state:
        conv.create_session("s", user_id="u", agent_id="a")
        conv.add_message("s", "user", "hi")
        state.set("k", 1)
    with redis.Redis.from_url(servers.REDIS_URL) as r:
        found = sorted(k.decode() for k in r.scan_iter(match=f"{p}:*"))
    assert found == sorted(f"{p}:{name}" for name in ("s:s", "m:s", "i:s", "activity", "u:u", "g:a", "kv:k"))


def test_the_cluster_layout_on_the_server(url, raw):
    p = prefix_of(url)
    odd = ["}x", "{a}b", "a}", "{}", "plain"]
    with open_store(url, "conversations") as conv, open_store(url, "state") as state:
        for sid in odd:
            conv.create_session(sid, user_id="u", agent_id="a")
            conv.add_message(sid, "user", sid)
        for k in ("k1", "k2", "{t}a", "{t}b"):
            state.set(k, k)
        assert sorted(state.keys()) == ["k1", "k2", "{t}a", "{t}b"]
    names = {k.decode() for k in raw.scan_iter(match=f"{p}:*")}
    for sid in odd:
        keys = [f"{p}:{{s:{sid}}}", f"{p}:{{s:{sid}}}:m", f"{p}:{{s:{sid}}}:i"]
        assert set(keys) <= names
        assert len({raw.keyslot(k) for k in keys}) == 1  # the server's own hash, not ours
    index = {f"{p}:{{i:{p}}}:{n}" for n in ("activity", "owners", "u:u", "g:a")}
    assert index <= names and len({raw.keyslot(k) for k in index}) == 1
    assert {f"{p}:kv:{k}" for k in ("k1", "k2", "{t}a", "{t}b")} <= names
    assert len(names) == 3 * len(odd) + len(index) + 4


# ---- listings ----


def _sessions(conv: Any, n: int, user: str = "u") -> list[str]:
    """n sessions of one user with distinct, increasing activity: s0 oldest."""
    ids = [f"s{i}" for i in range(n)]
    for sid in ids:
        conv.create_session(sid, user_id=user, agent_id="bot")
        conv.add_message(sid, "user", "hi", id=f"{sid}-1")
    return ids


def test_entries_ahead_of_their_session_are_placed_by_the_session_on_every_page(url, raw):
    p = prefix_of(url)
    with open_store(url, "conversations") as conv:
        ids = _sessions(conv, 6)
        before = conv.get_session("s0")
        # An id already stored changes nothing, but its index step has raised s0's entries above every session.
        assert conv.add_message("s0", "user", "again", id="s0-1").content == "hi"
        assert conv.get_session("s0").updated_at == before.updated_at
        # s2: a writer whose process died between its index step and its script (nothing noted anywhere).
        future = us(datetime.now(timezone.utc) + timedelta(hours=1))
        for key in (f"{p}:{{i:{p}}}:activity", f"{p}:{{i:{p}}}:u:u", f"{p}:{{i:{p}}}:g:bot"):
            raw.zadd(key, {"s2": future}, gt=True)
        expected = by_activity(conv, ids)
        assert expected == ["s5", "s4", "s3", "s2", "s1", "s0"]
        for size in (1, 2, 4, 50):
            for filters in ({}, {"user_id": "u"}, {"agent_id": "bot"}):
                assert listed(conv, size, **filters) == expected, (size, filters)
        assert [s.updated_at for s in conv.list_sessions().items] == [conv.get_session(i).updated_at for i in expected]
        # The next real write brings the entry back in line; the note is forgotten by a later page.
        conv.add_message("s0", "user", "new")
        assert listed(conv, 1) == ["s0", "s5", "s4", "s3", "s2", "s1"]


def test_entries_of_sessions_that_are_gone_are_skipped_and_dropped(url, raw):
    p = prefix_of(url)
    with open_store(url, "conversations") as conv:
        _sessions(conv, 3)
        # A delete whose process died after the session's keys went, before its index step.
        raw.unlink(f"{p}:{{s:s1}}", f"{p}:{{s:s1}}:m", f"{p}:{{s:s1}}:i")
        assert listed(conv, 1) == ["s2", "s0"] and listed(conv, 1, user_id="u") == ["s2", "s0"]
        index = f"{p}:{{i:{p}}}:"
        assert raw.zscore(index + "activity", "s1") is None and raw.zscore(index + "u:u", "s1") is None
        assert raw.hget(index + "owners", "s1") is None


def test_an_entry_behind_its_session_is_raised_by_the_listing_that_sees_it(url, raw):
    p = prefix_of(url)
    with open_store(url, "conversations") as conv:
        _sessions(conv, 3)
        raw.zadd(f"{p}:{{i:{p}}}:activity", {"s2": 1})  # as no write of this store leaves it
        conv.list_sessions(limit=50)
        assert int(raw.zscore(f"{p}:{{i:{p}}}:activity", "s2")) == us(conv.get_session("s2").updated_at)
        assert listed(conv, 1) == ["s2", "s1", "s0"]


def test_a_session_created_again_by_another_owner_is_indexed_for_its_new_owner(url, raw):
    p = prefix_of(url)
    owners = f"{p}:{{i:{p}}}:owners"
    with open_store(url, "conversations") as conv:
        conv.create_session("s", user_id="alice")
        conv.add_message("s", "user", "a")
        # The index slot still names the previous incarnation's owner (its delete's index step never ran).
        raw.hset(owners, "s", "mallory\0")
        conv.add_message("s", "user", "b")
        assert raw.hget(owners, "s") == b"alice\0"
        assert [s.session_id for s in conv.list_sessions(user_id="alice").items] == ["s"]
        assert conv.list_sessions(user_id="mallory").items == []


@pytest.mark.parametrize("when", ["after-create", "after-import-of-older", "inside-import-of-older"])
def test_a_session_deleted_and_created_again_mid_delete_stays_listed(url, when):
    """A delete's index step arrives after the session was created again under its id: after the create, or between
    the create's index step and its script. It must not take the new session's entries, also when the new session
    is dated before the deleted one (an import), so that the entries' scores do not protect them."""
    with open_store(url, "conversations") as conv:
        conv.create_session("s", user_id="alice")
        conv.add_message("s", "user", "old")
        index = conv._index
        status, owner, up = index.delete_one("s")  # the delete's first step: the session's keys are gone
        assert status == 1
        if when == "after-create":
            conv.create_session("s", user_id="bob")
            index.drop([("s", up, owner)])
        elif when == "after-import-of-older":
            conv.import_session(export("s", "bob", "2020-01-01T00:00:00+00:00"))
            index.drop([("s", up, owner)])
        else:
            script = conv._import_script

            def late_drop_first(*args: Any, **kwargs: Any) -> Any:
                index.drop([("s", up, owner)])  # lands after the import's index step, before its script
                return script(*args, **kwargs)

            conv._import_script = late_drop_first
            conv.import_session(export("s", "bob", "2020-01-01T00:00:00+00:00"))
            conv._import_script = script
        assert [s.session_id for s in conv.list_sessions().items] == ["s"]
        assert [s.session_id for s in conv.list_sessions(user_id="bob").items] == ["s"]
        assert conv.list_sessions(user_id="alice").items == []


def test_listing_stays_exact_under_concurrent_appends_and_deletes(url):
    """Writers append (some with ids already stored, some pops of nothing) and delete while listers page through;
    every page is in order without repeats and never shows a session deleted before the listing began; once the
    writers stop, every listing is exactly the sessions that exist, in order."""
    sessions = [f"c{i}" for i in range(12)]
    users = {sid: f"u{i % 3}" for i, sid in enumerate(sessions)}
    deleted: dict[str, float] = {}  # id -> when its delete returned
    failures: list[BaseException] = []
    stop = threading.Event()
    with open_store(url, "conversations") as setup:
        for sid in sessions:
            setup.create_session(sid, user_id=users[sid])
            setup.add_message(sid, "user", "start", id="first")

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        with open_store(url, "conversations") as conv:
            for n in range(25):
                sid = rng.choice(sessions)
                try:
                    kind = rng.random()
                    if kind < 0.6:
                        conv.add_message(sid, "user", f"{seed}-{n}")
                    elif kind < 0.8:
                        conv.add_message(sid, "user", "dup", id="first")  # stores nothing
                    else:
                        conv.pop_message(sid)
                except SessionNotFound:
                    pass

    def deleter() -> None:
        with open_store(url, "conversations") as conv:
            for sid in sessions[::4]:
                assert conv.delete_session(sid)
                deleted[sid] = time.monotonic()

    def lister(filters: dict[str, str]) -> None:
        with open_store(url, "conversations") as conv:
            while not stop.is_set():
                began = time.monotonic()
                gone_before = {sid for sid, when in list(deleted.items()) if when < began}
                seen, cursor, last = set(), None, None
                while True:
                    page = conv.list_sessions(limit=3, cursor=cursor, **filters)
                    for s in page.items:
                        key = (s.updated_at, s.session_id.encode())
                        assert last is None or key < last, "out of order"
                        assert s.session_id not in seen, "listed twice"
                        assert s.session_id not in gone_before, "deleted before the listing began"
                        last = key
                        seen.add(s.session_id)
                    if page.next_cursor is None:
                        break
                    cursor = page.next_cursor

    def guarded(fn: Any, *args: Any) -> Any:
        def run() -> None:
            try:
                fn(*args)
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                failures.append(e)

        return threading.Thread(target=run)

    writers = [guarded(writer, seed) for seed in range(3)] + [guarded(deleter)]
    listers = [guarded(lister, {}), guarded(lister, {"user_id": "u1"})]
    for t in writers + listers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in listers:
        t.join()
    assert not failures, failures[0]
    with open_store(url, "conversations") as conv:
        alive = by_activity(conv, sessions)
        assert set(alive) == set(sessions) - set(deleted)
        for size in (1, 5, 50):
            assert listed(conv, size) == alive
            for user in ("u0", "u1", "u2"):
                assert listed(conv, size, user_id=user) == [s for s in alive if users[s] == user]


_STEPS = st.lists(
    st.tuples(
        st.sampled_from(
            ["create", "import_old", "append", "dup", "pop", "truncate", "update", "delete", "died_after_index", "died_after_delete", "late_drop"]
        ),
        st.integers(0, 4),
        st.sampled_from(["u0", "u1"]),
    ),
    min_size=3,
    max_size=25,
)
_examples = itertools.count()


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(owners=st.lists(st.sampled_from(["u0", "u1"]), min_size=5, max_size=5), steps=_STEPS)
def test_any_sequence_of_writes_and_interrupted_writes_lists_exactly(url, owners, steps):
    """Writes, and writes whose process died between the two steps (after the index step; after a delete's first
    step), and a delete's index step arriving after the id was used again: every listing, at every page size and
    filter, is exactly the sessions that exist in activity order."""
    url = f"{url}h{next(_examples)}"
    ids = [f"s{i}" for i in range(5)]
    late: list[tuple[str, int, str]] = []
    with open_store(url, "conversations") as conv:
        index = conv._index
        for sid, user in zip(ids, owners):
            conv.create_session(sid, user_id=user)
            conv.add_message(sid, "user", "first")
        for kind, n, user in steps:
            sid = ids[n]
            try:
                if kind == "create":
                    conv.get_or_create_session(sid, user_id=user)
                elif kind == "import_old":
                    conv.import_session(export(sid, user, f"2020-01-0{n + 1}T00:00:00+00:00", messages=1))
                elif kind == "append":
                    conv.add_message(sid, "user", "x")
                elif kind == "dup":
                    conv.add_message(sid, "user", "dup", id="d")
                elif kind == "pop":
                    conv.pop_message(sid)
                elif kind == "truncate":
                    conv.truncate(sid, 1)
                elif kind == "update":
                    conv.update_session(sid, name=kind)
                elif kind == "delete":
                    conv.delete_session(sid)
                elif kind == "died_after_index":
                    index.raise_entries(sid, us(datetime.now(timezone.utc)))
                elif kind == "died_after_delete":
                    status, owner, up = index.delete_one(sid)
                    if status == 1:
                        late.append((sid, up, owner))
                elif late:
                    index.drop([late.pop(0)])
            except (SessionNotFound, SessionExists):
                pass
        owner = {sid: s.user_id for sid in ids if (s := conv.get_session(sid)) is not None}
        expected = by_activity(conv, ids)
        for size in (1, 3):
            assert listed(conv, size) == expected
            for user in ("u0", "u1"):
                assert listed(conv, size, user_id=user) == [sid for sid in expected if owner[sid] == user]


@pytest.mark.parametrize("api", ["sync", "async"])
def test_delete_user_and_prune_reach_sessions_whose_entries_are_ahead(url, raw, api):
    p = prefix_of(url)
    with _open(api, url) as conv:
        for sid in ("old1", "old2"):
            conv.import_session(export(sid, "ann", "2020-01-01T00:00:00+00:00", messages=1))
        conv.create_session("new", user_id="ann")
        conv.add_message("old1", "user", "dup", id="m1")  # stores nothing: old1's entries are now ahead of it
        assert listed(conv, 1) == ["new", "old2", "old1"]
        assert conv.prune(older_than=timedelta(days=365)) == 2
        assert listed(conv, 1) == ["new"]
        conv.create_session("other", user_id="bob")
        raw.zadd(f"{p}:{{i:{p}}}:u:ann", {"other": 1})  # an entry of bob's session in ann's index
        assert conv.delete_user("ann") == 1
        assert listed(conv, 1) == ["other"] and raw.zcard(f"{p}:{{i:{p}}}:u:ann") == 0
        assert raw.zcard(f"{p}:{{i:{p}}}:ahead") <= 1  # at most a stale note, forgotten by the next page


def test_expired_sessions_leave_every_cluster_index(url, raw):
    p = prefix_of(url)
    with open_store(f"{url}&ttl=1", "conversations") as conv:
        conv.create_session("brief", user_id="u", agent_id="a")
        conv.add_message("brief", "user", "hi")
        assert 0 < raw.pttl(f"{p}:{{s:brief}}:m") <= 1000
        wait_past(time.time() + 1.05)
        assert conv.get_session("brief") is None
        assert conv.list_sessions().items == [] and conv.list_sessions(user_id="u").items == []
    index = f"{p}:{{i:{p}}}:"
    assert not raw.exists(*(index + n for n in ("activity", "u:u", "g:a", "owners", "expiring")))


def test_state_keys_spread_over_the_masters_and_a_shared_tag_sets_them_together(url, raw):
    p = prefix_of(url)
    with open_store(url, "state") as state:
        state.set_many({f"k{i}": i for i in range(30)})
        state.set_many({"{cart}a": 1, "{cart}b": 2}, ttl=60)
        nodes = {raw.get_node_from_key(f"{p}:kv:k{i}").name for i in range(30)}
        assert len(nodes) >= 2
        assert state.get_many([f"k{i}" for i in range(30)] + ["nope"]) == {f"k{i}": i for i in range(30)}
        assert sorted(state.keys("k")) == sorted(f"k{i}" for i in range(30))
        assert 55 < state.ttl("{cart}b") <= 60 and state.incr("{cart}a", 2) == 3
        assert state.clear("k") == 30 and list(state.keys()) == ["{cart}a", "{cart}b"]


# ---- a master killed mid-run ----

PASSWORD = "s3cret-pw"


@contextmanager
def killable_cluster(*options: str) -> Iterator[LocalCluster]:
    """A private cluster that keeps its data in an fsynced append-only file, so a killed master comes back with it."""
    try:
        with local_cluster(3, "--appendonly", "yes", "--appendfsync", "always", "--cluster-node-timeout", "1000", *options, password=PASSWORD) as cluster:
            yield cluster
    except ServerMissing as e:
        unavailable("a private Redis Cluster (redis-server)", e)


def _placed(cluster: LocalCluster, prefix: str) -> tuple[Any, dict[int, list[str]]]:
    """The index slot's node, and session ids grouped by the port of the node that holds them."""
    index_node = cluster.node_for_slot(key_slot(f"{prefix}:{{i:{prefix}}}:activity".encode()))
    by_port: dict[int, list[str]] = {}
    for i in range(60):
        sid = f"s{i}"
        by_port.setdefault(cluster.node_for_slot(key_slot(f"{prefix}:{{s:{sid}}}".encode())).port, []).append(sid)
    return index_node, by_port


def _unavailable_fast(call: Any) -> str:
    start = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        call()
    assert time.monotonic() - start < 5, "a dead master must fail the call fast"
    text = str(info.value)
    assert PASSWORD not in text and "\n" not in text
    return text


def _state(conv: Any, sid: str) -> tuple[int, list[Any]]:
    return conv.count_messages(sid), [(m.seq, m.content) for m in conv.get_messages(sid)]


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_killed_master_fails_its_sessions_fast_and_the_other_masters_keep_working(api):
    with killable_cluster("--cluster-require-full-coverage", "no") as cluster:
        url = f"{cluster.url}?prefix=k"
        index_node, by_port = _placed(cluster, "k")
        victim = next(n for n in cluster.nodes if n is not index_node)
        lost, kept = by_port[victim.port][0], by_port[index_node.port][0]
        with _open(api, url) as conv, _open(api, url, "state") as state:
            for sid in (lost, kept):
                conv.create_session(sid, user_id="on-" + ("victim" if sid == lost else "live"))
                conv.add_message(sid, "user", "before")
            before = _state(conv, lost)
            victim.kill()
            _unavailable_fast(lambda: conv.add_message(lost, "user", "during"))
            _unavailable_fast(lambda: conv.get_messages(lost))
            _unavailable_fast(lambda: conv.list_sessions())  # the page needs the dead master's session
            # Sessions and state on the live masters keep working, also once the cluster has marked the master failed.
            wait_until(lambda: "fail" in node_text(cluster, index_node.port, "NODES"), "failure detection", timeout=30)
            assert conv.add_message(kept, "user", "during").seq == 2
            assert [s.session_id for s in conv.list_sessions(user_id="on-live").items] == [kept]
            live_key = next(f"x{i}" for i in range(100) if cluster.node_for_slot(key_slot(f"k:kv:x{i}".encode())) is not victim)
            state.set(live_key, 1)
            assert state.get(live_key) == 1
            # The master comes back with its data: the failed append stored nothing, and the listing is exact.
            victim.restart()
            cluster.wait_ok()
            wait_until(lambda: _state(conv, lost) == before, "the restarted master serving its slots", timeout=30)
            assert listed(conv, 1) == [kept, lost] and conv.add_message(lost, "user", "after").seq == 2
            assert listed(conv, 1) == [lost, kept]


def test_with_the_index_master_killed_writes_fail_before_changing_anything():
    with killable_cluster("--cluster-require-full-coverage", "no") as cluster:
        url = f"{cluster.url}?prefix=k"
        index_node, by_port = _placed(cluster, "k")
        live = [sid for port, ids in by_port.items() if port != index_node.port for sid in ids][:3]
        with pytest.raises(ConfigError, match="refused the credentials") as info:
            open_store(url.replace(PASSWORD, "wrong-pw"), "conversations")
        assert "wrong-pw" not in str(info.value)
        with open_store(url, "conversations") as conv:
            for sid in live:
                conv.create_session(sid, user_id="u")
                conv.add_message(sid, "user", "before")
            before = {sid: (_state(conv, sid), conv.get_session(sid)) for sid in live}
            index_node.kill()
            a, b, c = live
            for call in (
                lambda: conv.add_message(a, "user", "during"),
                lambda: conv.pop_message(a),
                lambda: conv.truncate(a, 0),
                lambda: conv.update_session(a, name="renamed"),
                lambda: conv.create_session("fresh", user_id="u"),
                lambda: conv.list_sessions(),
            ):
                _unavailable_fast(call)
            # Reads of one session need only its own master.
            assert {sid: (_state(conv, sid), conv.get_session(sid)) for sid in live} == before
            assert conv.get_session("fresh") is None
            # A delete is complete once the session's keys are gone; its index step waits for the next listing.
            assert conv.delete_session(c) is True and conv.get_session(c) is None
            index_node.restart()
            cluster.wait_ok()
            wait_until(lambda: conv.list_sessions() is not None, "the restarted index master", timeout=30)
            assert listed(conv, 1) == by_activity(conv, live) == [b, a]


def test_with_full_coverage_required_a_failed_master_stops_the_whole_cluster_until_it_returns():
    """Redis's default (cluster-require-full-coverage yes): once the masters agree one of them failed, every node
    refuses every key; the calls fail with StoreUnavailable and work again when it is back."""
    with killable_cluster() as cluster:
        url = f"{cluster.url}?prefix=k"
        index_node, by_port = _placed(cluster, "k")
        victim = next(n for n in cluster.nodes if n is not index_node)
        kept = by_port[index_node.port][0]
        with open_store(url, "conversations") as conv:
            conv.create_session(kept)
            victim.kill()
            wait_until(lambda: "cluster_state:fail" in node_text(cluster, index_node.port, "INFO"), "cluster_state:fail", timeout=30)
            assert "down" in _unavailable_fast(lambda: conv.add_message(kept, "user", "x")).lower()
            victim.restart()
            cluster.wait_ok()
            wait_until(lambda: conv.add_message(kept, "user", "y").seq == 1, "the cluster serving again", timeout=30)
