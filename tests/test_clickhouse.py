"""ClickHouse-specific behaviour; the shared contract is in tests/conformance/, run on the same backends.

The store always runs here on chDB, the real ClickHouse engine inside this process (through clickhouse-connect's
chdb support). When PRAISON_TEST_CLICKHOUSE_URL names a server (``clickhouse://user:pass@host:8123/db``), the
"clickhouse-http" backend is added in tests/backends.py and the tests below that are not about chDB itself run
over HTTP against it too; without it that backend is absent, not skipped.

chDB hosts one data folder per process, and the run keeps one open (tests/servers.py), so tests that need another
folder or the in-memory engine run in a child process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from praison_db import ConfigError, IntegrityError, SessionNotFound, StoreUnavailable, db
from praison_db.base import EXPORT_FORMAT
from praison_db.facade import open_store
from praison_db.models import Message
from praison_db.testing.suite.test_numbers import same
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


def _writers(ch_url: str) -> tuple[Any, Any]:
    """Two stores on the same tables that do not share the in-process lock: what two processes are."""
    from praison_db.backends.clickhouse import _SessionLocks

    first = open_store(ch_url + "&fsync=false", "conversations")
    second = open_store(ch_url + "&fsync=false", "conversations")
    second._locks = _SessionLocks()  # what a separate process has: locks of its own
    # and no chDB knowledge of the session's tail: two processes never share a chDB folder, but a server they do.
    first._tails = second._tails = None
    return first, second


def _raw_rows(store: Any, session_id: str) -> list[tuple[int, str]]:
    """Every stored row of a session, duplicates included (no LIMIT BY): what is physically left behind."""
    t = store._tables
    return [(int(r[0]), r[1]) for r in store._rows(f"SELECT seq, content FROM {t.messages} WHERE session_id = {{sid:String}} ORDER BY seq, content", sid=session_id)]


def test_colliding_writers_one_wins_and_the_loser_leaves_nothing(ch_url):
    """Two writers take the same seq: the one whose rows became visible first keeps it; the other raises
    IntegrityError, and neither reads nor the table show its message afterwards."""
    first, second = _writers(ch_url)
    try:
        first.create_session("contested")
        first.add_message("contested", "user", "one")
        real_insert = second._insert_messages

        def first_gets_in_between(messages: Any, writer: Any) -> None:
            # second has read the last seq (1) and is about to insert seq 2: first appends seq 2 right now.
            assert first.add_message("contested", "user", "first wins").seq == 2
            real_insert(messages, writer)

        second._insert_messages = first_gets_in_between
        with pytest.raises(IntegrityError) as info:
            second.add_message("contested", "user", "second loses")
        assert "nothing was stored" in str(info.value) and "\n" not in str(info.value)
        del second._insert_messages

        for store in (first, second):
            assert [(m.seq, m.content) for m in store.get_messages("contested")] == [(1, "one"), (2, "first wins")]
            assert store.count_messages("contested") == 2
        assert _raw_rows(first, "contested") == [(1, "one"), (2, "first wins")]
        assert second.add_message("contested", "user", "retried").seq == 3
        assert [m.content for m in first.get_messages("contested", limit=2)] == ["first wins", "retried"]
    finally:
        first.close()
        second.close()


def test_reads_show_the_winner_while_the_losers_rows_are_still_there(ch_url):
    first, second = _writers(ch_url)
    try:
        first.create_session("window")
        real_insert, real_settle = second._insert_messages, second._settle
        seen: list[list[tuple[int, Any]]] = []

        def first_gets_in_between(messages: Any, writer: Any) -> None:
            first.add_messages("window", [{"role": "user", "content": "w1"}, {"role": "user", "content": "w2"}])
            real_insert(messages, writer)

        def read_before_settling(*args: Any) -> None:
            # Both writers' rows are in the table now, seqs 1 and 2 twice each.
            assert len(_raw_rows(first, "window")) == 4
            for store in (first, second):
                seen.append([(m.seq, m.content) for m in store.get_messages("window")])
                seen.append([(m.seq, m.content) for m in store.get_messages("window", limit=1)])
                seen.append([(m["seq"], m["content"]) for m in store.export_session("window")["messages"]])
            real_settle(*args)

        second._insert_messages, second._settle = first_gets_in_between, read_before_settling
        with pytest.raises(IntegrityError):
            second.add_messages("window", [{"role": "user", "content": "l1"}, {"role": "user", "content": "l2"}])
        assert seen == [[(1, "w1"), (2, "w2")], [(2, "w2")], [(1, "w1"), (2, "w2")]] * 2
        assert _raw_rows(first, "window") == [(1, "w1"), (2, "w2")]
    finally:
        first.close()
        second.close()


def test_the_first_visible_writer_wins_whoever_checks_first(ch_url):
    """Both writers read the last seq, both insert, and the one that inserted second checks first: it must lose, and
    the one that inserted first keeps its message though it checks last."""
    first, second = _writers(ch_url)
    try:
        first.create_session("order")
        second_insert, first_insert = second._insert_messages, first._insert_messages
        outcome: list[BaseException] = []

        def second_inserts_then_first(messages: Any, writer: Any) -> None:
            # Called in first's append, after it read the last seq (0): second's seq 1 lands, then first's.
            second_insert(*pending)
            first_insert(messages, writer)

        def first_appends_meanwhile(messages: Any, writer: Any) -> None:
            # Called in second's append, after it read the last seq (0); its insert happens inside first's append.
            pending.extend([messages, writer])
            try:
                first.add_message("order", "user", "inserted second")
            except IntegrityError as e:
                outcome.append(e)

        pending: list[Any] = []
        first._insert_messages, second._insert_messages = second_inserts_then_first, first_appends_meanwhile
        assert second.add_message("order", "user", "inserted first").seq == 1
        assert len(outcome) == 1  # first checked while both rows were there, and lost to the earlier one
        assert [(m.seq, m.content) for m in first.get_messages("order")] == [(1, "inserted first")]
        assert _raw_rows(first, "order") == [(1, "inserted first")]
    finally:
        first.close()
        second.close()


def test_colliding_writers_under_load_never_leave_a_duplicate(ch_url):
    """Two writers without a shared lock, 60 appends each at the same moment: every seq is stored once, every
    message stored is one whose append returned, and every append that raised left nothing."""
    first, second = _writers(ch_url)
    first.create_session("contested")
    outcomes: dict[str, list[tuple[str, str, int | None]]] = {"first": [], "second": []}
    start = threading.Barrier(2)

    def work(name: str, store: Any) -> None:
        start.wait()
        for i in range(60):
            content = f"{name}-{i}"
            try:
                outcomes[name].append(("ok", content, store.add_message("contested", "user", content).seq))
            except IntegrityError:
                outcomes[name].append(("error", content, None))

    threads = [threading.Thread(target=work, args=(n, s)) for n, s in (("first", first), ("second", second))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        results = [r for rs in outcomes.values() for r in rs]
        assert len(results) == 120
        ok = {content: seq for kind, content, seq in results if kind == "ok"}
        failed = {content for kind, content, _ in results if kind == "error"}
        raw = _raw_rows(first, "contested")
        assert len(raw) == len({seq for seq, _ in raw}), "a seq is stored twice"
        assert sorted(raw) == sorted((seq, content) for content, seq in ok.items())
        assert [m.seq for m in first.get_messages("contested")] == list(range(1, len(ok) + 1))
        assert not failed & {content for _, content in raw}
        print(f"\ncolliding writers: {len(ok)} appends stored, {len(failed)} lost a collision and stored nothing")
    finally:
        first.close()
        second.close()


def test_tables_from_schema_version_1_are_upgraded_and_old_duplicates_read_once(chdb_url):
    """Tables created before writer ids: opening migrates them (schema version 2), and duplicate seqs that an older
    version left behind read as one message each."""
    from praison_db.backends.clickhouse import MIGRATIONS

    with open_store(chdb_url, "conversations") as store:
        t = store._tables
        store._command(f"DROP TABLE {t.messages}")
        store._command(f"DROP TABLE {t.version}")
        store._command(f"DROP TABLE {t.sessions}")
        MIGRATIONS[0](store._client, t, False)
        store._command(f"CREATE TABLE {t.version} (version UInt32, applied_at DateTime64(6, 'UTC')) ENGINE = MergeTree ORDER BY version")
        store._command(f"INSERT INTO {t.version} VALUES (1, now64(6))")
        store._command(f"INSERT INTO {t.sessions} (session_id, session_type, metadata, created_at, updated_at, message_count, version) VALUES ('old', 'agent', '{{}}', now64(6), now64(6), 2, 1)")
        columns = "(session_id, seq, id, role, content, metadata, created_at)"
        store._command(f"INSERT INTO {t.messages} {columns} VALUES ('old', 1, 'a', 'user', 'one', '{{}}', now64(6))")
        for content in ("two", "duplicate two"):  # two old writers at seq 2
            store._command(f"INSERT INTO {t.messages} {columns} VALUES ('old', 2, '{content}', 'user', '{content}', '{{}}', now64(6))")
    with open_store(chdb_url, "conversations") as store:
        assert int(store._rows(f"SELECT max(version) FROM {store._tables.version}")[0][0]) == len(MIGRATIONS) == 3
        got = [(m.seq, m.content) for m in store.get_messages("old")]
        assert got[0] == (1, "one") and len(got) == 2 and got[1] in ((2, "two"), (2, "duplicate two"))
        assert store.get_messages("old", limit=1) == store.get_messages("old")[1:]
        assert store.add_message("old", "user", "new").seq == 3
        # A removal counts a seq once and takes every row at it, the duplicate too.
        assert store.truncate("old", 1) == 2
        assert _raw_rows(store, "old") == [(1, "one")]
        assert store.add_message("old", "user", "two again").seq == 2 and store.count_messages("old") == 2


# ---- the open message model on tables of the previous schema version ----

# The tables as schema version 2 created them (before type and extra), spelled out so the test keeps that layout.
_V2_MESSAGES = (
    "session_id String, seq UInt64, id String, role LowCardinality(String), content Nullable(String), "
    "name Nullable(String), tool_calls Nullable(String), tool_call_id Nullable(String), metadata String, "
    "created_at DateTime64(6, 'UTC'), writer UUID DEFAULT '00000000-0000-0000-0000-000000000000'"
)
_V2_SESSIONS = (
    "session_id String, user_id Nullable(String), agent_id Nullable(String), session_type LowCardinality(String), "
    "name Nullable(String), metadata String, created_at DateTime64(6, 'UTC'), updated_at DateTime64(6, 'UTC'), "
    "message_count UInt64, version UInt64"
)
_V2_FIELDS = ("role", "content", "name", "tool_calls", "tool_call_id", "metadata")

# What the previous version stored: a role on every message, text or no content.
OLD_ITEMS: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": '{"looks": "like JSON", "but": "is text"}', "metadata": {"lang": "en", "score": 1.0}},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
    {"role": "tool", "content": "", "tool_call_id": "c1", "name": "f"},
    {"role": "critic", "content": "ça va ✓", "metadata": {"nested": {"list": [1, -0.0, None, True]}}},
]


def _old_messages(items: list[dict[str, Any]]) -> list[Message]:
    """The messages the previous version held for these items, seqs 1..n in session "old"."""
    start = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
    return [
        Message(
            id=f"old-{seq}",
            session_id="old",
            seq=seq,
            created_at=start + timedelta(seconds=seq),
            **{"metadata": {}, **{k: v for k, v in item.items() if k in _V2_FIELDS}},
        )
        for seq, item in enumerate(items, 1)
    ]


def _write_version_2_tables(url: str, messages: list[Message]) -> None:
    """Replace the store's tables by schema version 2's, holding session "old" with ``messages``, written the way that
    version wrote them (JSON text for tool_calls and metadata, a writer id per insert)."""
    with open_store(url, "conversations") as store:
        t, client = store._tables, store._client
        for table in (t.messages, t.sessions, t.version):
            store._command(f"DROP TABLE {table}")
        store._command(
            f"CREATE TABLE {t.messages} ({_V2_MESSAGES}) ENGINE = MergeTree ORDER BY (session_id, seq) "
            "SETTINGS enable_block_number_column = 1"
        )
        store._command(f"CREATE TABLE {t.sessions} ({_V2_SESSIONS}) ENGINE = ReplacingMergeTree(version) ORDER BY session_id")
        store._command(f"CREATE TABLE {t.version} (version UInt32, applied_at DateTime64(6, 'UTC')) ENGINE = MergeTree ORDER BY version")
        store._command(f"INSERT INTO {t.version} VALUES (1, now64(6)), (2, now64(6))")
        now = datetime.now(timezone.utc)
        client.insert(f"{t.prefix}sessions", [["old", None, None, "agent", None, "{}", now, now, len(messages), 1]], database=t.database)
        if messages:
            rows = [
                [m.session_id, m.seq, m.id, m.role, m.content, m.name, None if m.tool_calls is None else json.dumps(m.tool_calls),
                 m.tool_call_id, json.dumps(m.metadata), m.created_at, uuid.uuid4()]
                for m in messages
            ]
            client.insert(
                f"{t.prefix}messages", rows, database=t.database,
                column_names=["session_id", "seq", "id", "role", "content", "name", "tool_calls", "tool_call_id", "metadata", "created_at", "writer"],
            )


def test_tables_of_schema_version_2_are_migrated_and_old_rows_read_back_unchanged(chdb_url):
    from praison_db.backends.clickhouse import MIGRATIONS

    old = _old_messages(OLD_ITEMS)
    _write_version_2_tables(chdb_url, old)
    with open_store(chdb_url, "conversations") as store:
        assert store.schema_version() == (3, 3)
        got = store.get_messages("old")
        assert got == old and all(m.type is None and m.extra == {} for m in got)
        assert same([m.to_item() for m in got], OLD_ITEMS)  # text that looks like JSON stays text, "" stays ""
        assert store.get_messages("old", limit=2) == old[-2:] and store.export_session("old")["messages"] == [
            m.model_dump(mode="json") for m in old
        ]
        # Running the migration again (another process opening the tables at the same moment does) changes nothing.
        MIGRATIONS[2](store._client, store._tables, False)
        assert store.get_messages("old") == old
    with open_store(chdb_url, "conversations") as store:
        t = store._tables
        assert [int(r[0]) for r in store._rows(f"SELECT version FROM {t.version} ORDER BY version")] == [1, 2, 3]
        assert store.get_messages("old") == old
        # The old session goes on under the open model, and the old messages can be removed like new ones.
        item = {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}", "status": "completed"}
        assert store.add_messages("old", [item])[0].seq == len(old) + 1
        assert same(store.pop_message("old").to_item(), item)
        assert store.pop_message("old") == old[-1]
        assert store.get_messages("old") == old[:-1] and store.get_session("old").message_count == len(old) - 1


_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=6,
)
_old_item = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool"]) | _text.filter(bool), "content": st.none() | _text},
    optional={
        "name": _text,
        "tool_calls": st.lists(st.dictionaries(_text, _json, max_size=3), max_size=2),
        "tool_call_id": _text,
        "metadata": st.dictionaries(_text, _json, min_size=1, max_size=3),
    },
)


@settings(
    max_examples=int(os.environ.get("PRAISON_FUZZ_EXAMPLES", "15")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(items=st.lists(_old_item, min_size=1, max_size=5))
def test_any_row_of_schema_version_2_reads_back_unchanged(chdb_url, items):
    old = _old_messages(items)
    _write_version_2_tables(chdb_url, old)
    with open_store(chdb_url, "conversations") as store:
        got = store.get_messages("old")
        assert got == old and same([m.to_item() for m in got], items)


# ---- removing messages without transactions ----


def test_pops_and_appends_from_threads_keep_seqs_gap_free(ch_url):
    """Threads appending and popping one session at once (the per-session lock serialises them): every pop returns
    a different message, each message is either popped or still there, and what is left is numbered 1..n."""
    store = open_store(ch_url + "&fsync=false", "conversations")
    store.create_session("mixed")
    threads_n, rounds = 4, 8
    start = threading.Barrier(threads_n)
    added: list[str] = []
    popped: list[Any] = []
    failures: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            start.wait()
            for i in range(rounds):
                added.extend(m.id for m in store.add_messages("mixed", [{"role": "user", "content": f"{worker}-{i}-{j}"} for j in (0, 1)]))
                popped.append(store.pop_message("mixed"))
        except BaseException as e:  # surfaced below
            failures.append(e)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(threads_n)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        assert not failures, failures[0]
        left = store.get_messages("mixed")
        popped_ids = [m.id for m in popped if m is not None]
        assert len(popped_ids) == threads_n * rounds and len(set(popped_ids)) == len(popped_ids)
        assert sorted(popped_ids + [m.id for m in left]) == sorted(added)
        assert [m.seq for m in left] == list(range(1, threads_n * rounds + 1))
        assert store.count_messages("mixed") == len(left) and store.add_message("mixed", "user", "next").seq == len(left) + 1
    finally:
        store.close()


def test_a_removal_that_fails_midway_loses_nothing_and_a_retry_finishes_it(ch):
    ch.create_session("r")
    ch.add_messages("r", [{"role": "user", "content": f"m{i}"} for i in (1, 2, 3)])
    real_command = ch._command

    def delete_fails(sql: str, **parameters: Any) -> None:
        if sql.startswith("DELETE"):
            raise StoreUnavailable("the server went away before the DELETE")
        real_command(sql, **parameters)

    ch._command = delete_fails
    with pytest.raises(StoreUnavailable):
        ch.pop_message("r")
    del ch._command
    assert [m.content for m in ch.get_messages("r")] == ["m1", "m2", "m3"]
    # The next append numbers from the messages and puts the count right.
    assert ch.add_message("r", "user", "m4").seq == 4 and ch.count_messages("r") == 4
    ch._command = delete_fails
    with pytest.raises(StoreUnavailable):
        ch.truncate("r", 1)
    del ch._command
    assert [m.content for m in ch.get_messages("r")] == ["m1", "m2", "m3", "m4"]
    assert ch.truncate("r", 1) == 3 and [m.content for m in ch.get_messages("r")] == ["m1"]
    assert ch.count_messages("r") == 1 and ch.pop_message("r").content == "m1" and ch.pop_message("r") is None


def test_two_processes_popping_at_once_can_both_get_the_newest_message(ch_url):
    """What the capabilities declare (multi_process=False): without a shared lock, two pops at the same moment can
    both return the newest message. It is removed once, and the session stays consistent."""
    first, second = _writers(ch_url)
    try:
        caps = first.capabilities
        assert not caps.multi_process and "popping one session at the same moment" in caps.reason
        first.create_session("popped")
        first.add_messages("popped", [{"role": "user", "content": c} for c in ("a", "b", "c")])
        real_remove = second._remove
        from_first: list[Any] = []

        def first_pops_meanwhile(*args: Any) -> None:
            # second has read the newest message and not yet removed it
            from_first.append(first.pop_message("popped"))
            real_remove(*args)

        second._remove = first_pops_meanwhile
        from_second = second.pop_message("popped")
        assert from_first == [from_second] and from_second.content == "c"
        assert _raw_rows(first, "popped") == [(1, "a"), (2, "b")]
        assert first.count_messages("popped") == 2 and first.add_message("popped", "user", "next").seq == 3
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


def test_chdb_stores_on_the_same_tables_keep_appends_in_step_with_their_writes(chdb_url):
    """On chDB an append numbers from what the last append in this process left; every other write, through any
    store on the same tables, is seen by the next append (seqs stay gap-free and freed seqs are taken again)."""
    with open_store(chdb_url, "conversations") as one, open_store(chdb_url, "conversations") as other:
        one.create_session("s")
        assert [one.add_message("s", "user", c).seq for c in ("a", "b", "c")] == [1, 2, 3]
        assert other.pop_message("s").content == "c"
        assert one.add_message("s", "user", "c2").seq == 3
        assert other.truncate("s", 1) == 2
        assert one.add_message("s", "user", "b2").seq == 2
        other.update_session("s", name="renamed")
        assert one.add_message("s", "user", "c3").seq == 3 and one.get_session("s").name == "renamed"
        assert other.delete_session("s")
        with pytest.raises(SessionNotFound):
            one.add_message("s", "user", "gone")
        other.create_session("s")
        assert one.add_message("s", "user", "again").seq == 1
        assert other.clear_messages("s") == 1
        assert one.add_messages("s", [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}])[-1].seq == 2
        assert [(m.seq, m.content) for m in other.get_messages("s")] == [(1, "x"), (2, "y")]
        assert other.get_session("s").message_count == 2 and other.get_session("s").name is None


def test_chdb_appends_continue_after_another_process_wrote_to_the_folder(tmp_path):
    """What an append in this process remembers of a session is forgotten when the last store on the folder closes:
    another process may then open the folder and append."""
    folder = tmp_path / "handed"
    out = run_python(
        f"""
        import subprocess, sys
        from praison_db.facade import open_store
        url = "chdb://{folder}"
        with open_store(url, "conversations") as store:
            store.create_session("h")
            store.add_message("h", "user", "here 1")
            store.add_message("h", "user", "here 2")
        code = "from praison_db.facade import open_store\\n" \\
            "with open_store(" + repr(url) + ", 'conversations') as s: s.add_message('h', 'user', 'there')"
        subprocess.run([sys.executable, "-c", code], check=True)
        with open_store(url, "conversations") as store:
            store.add_message("h", "user", "here 3")
            print([(m.seq, m.content) for m in store.get_messages("h")], store.get_session("h").message_count)
        """
    )
    assert out.strip() == "[(1, 'here 1'), (2, 'here 2'), (3, 'there'), (4, 'here 3')] 4"


def test_a_failed_chdb_append_leaves_the_next_one_reading_the_tables(ch):
    """An append that fails after its messages were written is not remembered: the next one numbers from the rows."""
    ch.create_session("f")
    ch.add_message("f", "user", "one")
    real = ch._insert_session_version

    def fails(*args: Any) -> None:
        raise StoreUnavailable("the session row could not be written")

    ch._insert_session_version = fails
    with pytest.raises(StoreUnavailable):
        ch.add_message("f", "user", "two")
    del ch._insert_session_version
    assert ch._insert_session_version == real
    assert ch.add_message("f", "user", "three").seq == 3
    assert [m.seq for m in ch.get_messages("f")] == [1, 2, 3] and ch.get_session("f").message_count == 3
