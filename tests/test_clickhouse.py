"""ClickHouse-specific behaviour; the shared contract is in tests/conformance/, run on the same backends.

The store always runs here on chDB, the real ClickHouse engine inside this process (through clickhouse-connect's
chdb support). When PRAISON_TEST_CLICKHOUSE_URL names a server (``clickhouse://user:pass@host:8123/db``), the
"clickhouse-http" backend is added in tests/backends.py and the tests below that are not about chDB itself run
over HTTP against it too; without it that backend is absent, not skipped.

chDB hosts one data folder per process, and the run keeps one open (tests/servers.py), so tests that need another
folder or the in-memory engine run in a child process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from praison_db import ConfigError, IntegrityError, StoreUnavailable, db
from praison_db.base import EXPORT_FORMAT
from praison_db.facade import open_store
from tests.backends import BACKENDS, Backend

CLICKHOUSE = [b for b in BACKENDS if b.name.startswith("clickhouse")]
CHDB = next(b for b in CLICKHOUSE if b.name == "clickhouse-chdb")
_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=CLICKHOUSE, ids=[b.name for b in CLICKHOUSE])
def ch_backend(request: pytest.FixtureRequest) -> Backend:
    return request.param


@pytest.fixture
def ch_url(ch_backend: Backend, make_url: Any) -> str:
    return make_url(ch_backend)


@pytest.fixture
def ch(ch_url: str) -> Any:
    with open_store(ch_url, "conversations") as store:
        yield store


@pytest.fixture
def chdb_url(make_url: Any) -> str:
    return make_url(CHDB)


def run_python(code: str) -> str:
    """Run code in a fresh interpreter (a process of its own, so it may open any chDB folder); its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300, cwd=str(_ROOT)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


# ---- roles and configuration ----


def test_state_role_is_refused_with_the_alternatives(chdb_url, tmp_path):
    for url in (chdb_url, "clickhouse://u:secret@127.0.0.1:1/db"):
        with pytest.raises(ConfigError) as info:
            open_store(url, "state")
        message = str(info.value)
        assert all(name in message for name in ("Redis", "MongoDB", "SQL")) and "secret" not in message
    with pytest.raises(ConfigError, match="Redis"):
        db(database_url="sqlite:///" + str(tmp_path / "c.db"), state_url=chdb_url)
    # As the conversations store alone, state falls back to the JSON file in session_dir.
    with db(database_url=chdb_url, session_dir=tmp_path / "s") as memory:
        memory.conversations.create_session("ok")
        memory.state.set("k", 1)
        assert memory.state.get("k") == 1 and type(memory.state).__name__ == "JsonStateStore"


@pytest.mark.parametrize(
    "query, fragment",
    [
        ("table_prefix=bad-prefix", "table_prefix"),
        ("table_prefix=" + "x" * 40, "table_prefix"),
        ("database=no%20spaces", "database"),
        ("colour=blue", "valid options: ca_cert, connect_timeout, database, fsync, query_timeout, table_prefix, verify"),
        ("verify=false", "clickhouse:// servers"),
        ("fsync=maybe", "fsync"),
    ],
)
def test_bad_options_are_config_errors(chdb_url, query, fragment):
    base = chdb_url.split("?", 1)[0]
    with pytest.raises(ConfigError) as info:
        open_store(f"{base}?{query}", "conversations")
    assert fragment in str(info.value)


def test_missing_driver_packages_name_the_extra():
    # A fresh interpreter where the package cannot be imported, as on a machine without the extra installed.
    out = run_python(
        """
        import sys
        from praison_db import ConfigError
        from praison_db.facade import open_store
        for blocked, url in (("clickhouse_connect", "clickhouse://h/db"), ("clickhouse_connect", "chdb:///x"), ("chdb", "chdb:///x")):
            sys.modules[blocked] = None
            sys.modules.pop("praison_db.backends.clickhouse", None)
            import praison_db.registry as registry
            registry._loaded.clear()
            try:
                open_store(url, "conversations")
            except ConfigError as e:
                print(e)
            del sys.modules[blocked]
        """
    )
    lines = out.strip().splitlines()
    assert lines[0].endswith("pip install 'praison-db[clickhouse]'") and lines[1].endswith("pip install 'praison-db[chdb]'")
    assert lines[2] == "chdb:// needs the chdb package: pip install 'praison-db[chdb]'"


def test_chdb_url_with_a_host_is_rejected(chdb_url):
    with pytest.raises(ConfigError, match=r"chdb:///absolute/folder"):
        open_store("chdb://somehost/data", "conversations")


def test_unreachable_server_is_store_unavailable_without_the_password():
    with pytest.raises(StoreUnavailable) as info:
        open_store("clickhouse://alice:s3cret-pw@127.0.0.1:1/db?connect_timeout=1", "conversations")
    assert "s3cret-pw" not in str(info.value) and "\n" not in str(info.value)


def test_a_second_chdb_folder_in_one_process_is_a_config_error(chdb_url, tmp_path):
    # The run's folder is open (tests/servers.py keeps it so): chDB cannot host another one in this process.
    with pytest.raises(ConfigError, match="one engine per process"):
        open_store(f"chdb://{tmp_path}/other", "conversations")


# ---- seq allocation without transactions ----


def test_threads_in_one_process_get_contiguous_seqs(ch_url):
    """8 threads x 100 appends to one session: seqs 1..800, each thread's messages in its own order.

    Half the threads share one store, the others open their own: the per-session lock is shared by every store on
    the same tables in the process. (fsync off: this is about seqs; durability has its own test below.)
    """
    ch_url += "&fsync=false"
    threads_n, per = 8, 100
    shared = open_store(ch_url, "conversations")
    shared.create_session("busy")
    own = [open_store(ch_url, "conversations") for _ in range(threads_n // 2)]
    stores = [shared] * (threads_n // 2) + own
    start = threading.Barrier(threads_n)
    seqs: dict[int, list[int]] = {}
    failures: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            start.wait()
            seqs[worker] = [stores[worker].add_message("busy", "user", f"w{worker}-{i}").seq for i in range(per)]
        except BaseException as e:  # surfaced below
            failures.append(e)

    began = time.perf_counter()
    threads = [threading.Thread(target=work, args=(w,)) for w in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    elapsed = time.perf_counter() - began
    try:
        assert not failures, failures[0]
        total = threads_n * per
        assert sorted(s for got in seqs.values() for s in got) == list(range(1, total + 1))
        messages = shared.get_messages("busy")
        assert [m.seq for m in messages] == list(range(1, total + 1))
        for w in range(threads_n):
            assert [m.content for m in messages if m.content.startswith(f"w{w}-")] == [f"w{w}-{i}" for i in range(per)]
            assert seqs[w] == sorted(seqs[w])
        assert shared.get_session("busy").message_count == total and shared.count_messages("busy") == total
        print(f"\n{threads_n} threads x {per} appends: {elapsed:.2f} s ({elapsed / total * 1000:.1f} ms per append)")
    finally:
        for store in own + [shared]:
            store.close()


def test_a_colliding_writer_is_told_not_silently_duplicated(ch_url):
    """What happens when the one-writer-per-session rule is broken: never a silent duplicate.

    A second process is simulated by a store with its own lock table (as a separate process would have), both
    appending to one session from two threads. Any seq written twice must have made at least one of its two
    appends raise IntegrityError.
    """
    from praison_db.backends.clickhouse import _SessionLocks

    ch_url += "&fsync=false"
    first = open_store(ch_url, "conversations")
    second = open_store(ch_url, "conversations")
    second._locks = _SessionLocks()  # what a separate process has: locks of its own
    first.create_session("contested")
    outcomes: dict[str, list[tuple[str, int | None]]] = {"first": [], "second": []}
    start = threading.Barrier(2)

    def work(name: str, store: Any) -> None:
        start.wait()
        for i in range(60):
            try:
                outcomes[name].append(("ok", store.add_message("contested", "user", f"{name}-{i}").seq))
            except IntegrityError:
                outcomes[name].append(("error", None))

    threads = [threading.Thread(target=work, args=(n, s)) for n, s in (("first", first), ("second", second))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        stored = Counter(m.seq for m in first.get_messages("contested"))
        duplicated = [seq for seq, n in stored.items() if n > 1]
        errors = sum(1 for results in outcomes.values() for kind, _ in results if kind == "error")
        ok_seqs = [seq for results in outcomes.values() for kind, seq in results if kind == "ok"]
        assert len(ok_seqs) == len(set(ok_seqs)), "two appends both returned the same seq"
        assert errors >= len(duplicated)
        print(f"\ncolliding writers: {len(duplicated)} duplicated seqs, {errors} IntegrityErrors raised")
    finally:
        first.close()
        second.close()


# ---- volume ----


@pytest.mark.slow
def test_import_100k_messages_and_read_the_newest_20(ch):
    n = 100_000
    now = datetime.now(timezone.utc)
    data = {
        "format": EXPORT_FORMAT,
        "session": {
            "session_id": "big",
            "user_id": "analyst",
            "session_type": "agent",
            "metadata": {},
            "created_at": now.isoformat(),
            "updated_at": now.isoformat(),
            "message_count": n,
        },
        "messages": [
            {
                "id": uuid.uuid4().hex,
                "session_id": "big",
                "seq": i,
                "role": "user" if i % 2 else "assistant",
                "content": f"message number {i}",
                "created_at": (now + timedelta(microseconds=i)).isoformat(),
            }
            for i in range(1, n + 1)
        ],
    }
    began = time.perf_counter()
    session = ch.import_session(data)
    imported = time.perf_counter() - began
    began = time.perf_counter()
    newest = ch.get_messages("big", limit=20)
    read = time.perf_counter() - began
    assert session.message_count == n and ch.count_messages("big") == n
    assert [m.seq for m in newest] == list(range(n - 19, n + 1))
    assert [m.content for m in newest] == [f"message number {i}" for i in range(n - 19, n + 1)]
    assert ch.add_message("big", "user", "next").seq == n + 1
    print(f"\nimport_session of {n:,} messages: {imported:.2f} s; get_messages(limit=20): {read * 1000:.1f} ms")


# ---- values travel as query parameters ----


@pytest.mark.parametrize(
    "session_id",
    ["it's", 'say "hi"', "back\\slash", "'); DROP TABLE x; --", "{sid:String}", "`tick`", "%(x)s", "\\'"],
)
def test_awkward_ids_round_trip_as_parameters(ch, session_id):
    user = session_id + "-user"
    ch.create_session(session_id, user_id=user, name=session_id, metadata={"v": session_id})
    ch.add_message(session_id, "user", session_id, name=session_id, metadata={session_id: session_id})
    got = ch.get_session(session_id)
    assert got.session_id == session_id and got.name == session_id and got.metadata == {"v": session_id}
    message = ch.get_messages(session_id, limit=1)[0]
    assert (message.content, message.name, message.metadata) == (session_id, session_id, {session_id: session_id})
    assert [s.session_id for s in ch.list_sessions(user_id=user)] == [session_id]
    assert ch.delete_user(user) == 1 and ch.get_session(session_id) is None
    ch.create_session("still-there")  # the tables survived
    assert ch.get_session("still-there") is not None


# ---- versions and deletes ----


def test_prune_reads_the_newest_version_only(ch):
    """An old session that was appended to today is active: its old row version must not make prune delete it."""
    past = (datetime.now(timezone.utc) - timedelta(days=40)).isoformat()
    data = {
        "format": EXPORT_FORMAT,
        "session": {"session_id": "revived", "created_at": past, "updated_at": past, "message_count": 0},
        "messages": [],
    }
    ch.import_session(data)
    ch.add_message("revived", "user", "back again")
    assert ch.prune(older_than=timedelta(days=30)) == 0
    assert ch.count_messages("revived") == 1
    assert [s.session_id for s in ch.list_sessions(cursor=None)] == ["revived"]


def test_versions_merge_to_one_row(ch, ch_url):
    ch.create_session("v", name="one")
    for i in range(5):
        ch.add_message("v", "user", str(i))
        ch.update_session("v", name=f"name {i}")
    assert len(ch.list_sessions()) == 1
    assert ch.get_session("v").name == "name 4" and ch.get_session("v").message_count == 5
    assert ch.delete_session("v") and ch.list_sessions().items == []


# ---- chDB itself ----


def test_chdb_insert_is_on_disk_when_the_call_returns(tmp_path):
    """A process killed right after add_message returns (no close, no flush) loses nothing."""
    folder = tmp_path / "crash"
    run_python(
        f"""
        import os
        from praison_db.facade import open_store
        store = open_store("chdb://{folder}", "conversations")
        store.create_session("c")
        store.add_message("c", "user", "survives")
        os._exit(0)
        """
    )
    out = run_python(
        f"""
        from praison_db.facade import open_store
        with open_store("chdb://{folder}", "conversations") as store:
            print([m.content for m in store.get_messages("c")], store.get_session("c").message_count)
        """
    )
    assert out.strip() == "['survives'] 1"


def test_chdb_in_memory_url(tmp_path):
    out = run_python(
        """
        from praison_db.facade import open_store
        with open_store("chdb://", "conversations") as store:
            store.create_session("m")
            store.add_message("m", "user", "in memory")
            print(store.get_messages("m")[0].content, store.capabilities.persistent)
        """
    )
    assert out.strip() == "in memory False"
