"""What is specific to the SQL stores: schema versions, indexes, URL forms, server failures, large values.

Runs on SQLite and on the machine's real PostgreSQL and MariaDB (see tests/backends.py and tests/servers.py).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
from sqlalchemy import MetaData, String, insert, inspect, text

from praison_db import ConfigError, Error, InputError, SchemaError, StoreUnavailable, db
from praison_db.backends.sql import migrate, schema_version
from praison_db.backends.sql import schema as sql_schema
from praison_db.backends.sql.database import _open_unprepared
from praison_db.facade import open_store
from tests import servers
from tests.backends import BACKENDS

SQL = [b for b in BACKENDS if b.name in ("sqlite", "postgresql", "mysql")]
SERVERS = [b for b in SQL if b.server is not None]


@pytest.fixture(params=SQL, ids=[b.name for b in SQL])
def sql_url(request, make_url):
    return make_url(request.param)


@pytest.fixture(params=SERVERS, ids=[b.name for b in SERVERS])
def server_url(request, make_url):
    return make_url(request.param)


LATEST = len(sql_schema.MIGRATIONS)


def test_schema_version_is_recorded_and_migrate_is_idempotent(sql_url):
    with open_store(sql_url, "conversations") as store:
        store.create_session("v")
        version_table = store.t.version.name
        with store.db.read() as conn:
            assert conn.execute(text(f"SELECT version FROM {version_table} ORDER BY version")).scalars().all() == list(range(1, LATEST + 1))
    assert schema_version(sql_url) == (LATEST, LATEST)
    assert migrate(sql_url) == (LATEST, LATEST)
    assert migrate(sql_url) == (LATEST, LATEST)


def test_a_new_migration_is_applied_on_open_and_data_survives(sql_url, monkeypatch):
    assert migrate(sql_url) == (0, LATEST)
    with open_store(sql_url, "conversations") as store:
        store.create_session("old", user_id="alice")
        store.add_message("old", "user", "written by version 1")
        sessions = store.t.sessions.name

    def add_tag_column(conn, tables):
        if "tag" not in {c["name"] for c in inspect(conn).get_columns(tables.sessions.name)}:
            conn.execute(text(f"ALTER TABLE {tables.sessions.name} ADD COLUMN tag VARCHAR(20) DEFAULT 'v2'"))

    monkeypatch.setattr(sql_schema, "MIGRATIONS", [*sql_schema.MIGRATIONS, add_tag_column])
    with pytest.raises(SchemaError, match=rf"schema version {LATEST}, this praison-db needs {LATEST + 1}: run `praison-db migrate"):
        open_store(sql_url, "conversations", auto_upgrade=False)
    with open_store(sql_url, "conversations") as store:
        assert [m.content for m in store.get_messages("old")] == ["written by version 1"]
        assert store.add_message("old", "assistant", "and read by version 2").seq == 2
        with store.db.read() as conn:
            assert conn.execute(text(f"SELECT tag FROM {sessions}")).scalar() == "v2"
    assert schema_version(sql_url) == (LATEST + 1, LATEST + 1) and migrate(sql_url) == (LATEST + 1, LATEST + 1)


def test_a_database_written_before_open_items_migrates_and_reads_unchanged(sql_url, monkeypatch):
    """Schema version 4 had no type/extra columns and 16-character roles; its rows read back as they were."""
    with monkeypatch.context() as old:
        old.setattr(sql_schema, "MIGRATIONS", sql_schema.MIGRATIONS[:4])
        with open_store(sql_url, "conversations") as store:
            store.create_session("old", user_id="alice")
            table, dialect = store.t.messages.name, store.db.engine.dialect.name
            with store.db.write() as conn:  # back to version 4's layout exactly, then a row as version 4 wrote it
                for column in ("type", "extra"):
                    conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
                if dialect == "postgresql":
                    conn.exec_driver_sql(f"ALTER TABLE {table} ALTER COLUMN role TYPE VARCHAR(16)")
                elif dialect != "sqlite":
                    conn.exec_driver_sql(f"ALTER TABLE {table} MODIFY role VARCHAR(16) NOT NULL")
                row = {
                    "session_id": "old", "seq": 1, "id": "v4", "role": "assistant", "content": None, "name": None,
                    "tool_calls": [{"id": "c", "type": "function"}], "tool_call_id": None, "metadata": {"n": 1},
                    "created_at": datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc),
                }
                conn.execute(insert(store.t.messages).values(**row))
                conn.execute(store.t.sessions.update().values(message_count=1))
    with open_store(sql_url, "conversations") as store:
        assert schema_version(sql_url) == (LATEST, LATEST)
        (kept,) = store.get_messages("old")
        assert kept.model_dump(exclude={"type", "extra"}) == row
        assert (kept.type, kept.extra) == (None, {})
        assert kept.to_item() == {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function"}], "metadata": {"n": 1}}
        long_role = "r" * 64
        added = store.add_messages("old", [{"role": long_role, "content": {"a": [1]}}, {"type": "reasoning", "summary": []}])
        assert [m.to_item() for m in store.get_messages("old")[1:]] == [m.to_item() for m in added]
        assert added[0].to_item() == {"role": long_role, "content": {"a": [1]}}
    assert migrate(sql_url) == (LATEST, LATEST)  # a re-run finds nothing left to do


def test_a_newer_schema_is_refused(sql_url):
    with open_store(sql_url, "conversations") as store:
        stamp = store.get_or_create_session("x").created_at
        with store.db.write() as conn:
            conn.execute(store.t.version.insert().values(version=99, applied_at=stamp))
    with pytest.raises(SchemaError, match="newer than this praison-db supports"):
        open_store(sql_url, "conversations")


def _plan(store, query: str, params: dict) -> str:
    dialect = store.db.dialect
    with store.db.read() as conn:
        if dialect == "sqlite":
            rows = conn.execute(text(f"EXPLAIN QUERY PLAN {query}"), params).all()
            return " | ".join(str(r[-1]) for r in rows)
        if dialect == "postgresql":
            conn.execute(text("SET LOCAL enable_seqscan = off"))  # tiny test tables: ask whether an index CAN serve it
            return " | ".join(r[0] for r in conn.execute(text(f"EXPLAIN {query}"), params))
        rows = conn.execute(text(f"EXPLAIN {query}"), params).mappings().all()
        return " | ".join(f"{r['table']}:{r['type']}:{r['key']}:{r['Extra']}" for r in rows)


def test_newest_reads_are_index_range_scans(sql_url):
    with open_store(sql_url, "conversations") as store:
        # Enough rows that no optimizer prefers a full scan of a tiny table.
        for i in range(300):
            store.create_session(f"e{i}", user_id=f"u{i % 60}")
        store.add_messages("e3", [{"role": "user", "content": "x"}] * 300)
        store.add_messages("e4", [{"role": "user", "content": "x"}] * 300)
        m, s = store.t.messages.name, store.t.sessions.name
        newest_n = _plan(store, f"SELECT * FROM {m} WHERE session_id = :sid ORDER BY seq DESC LIMIT 20", {"sid": "e3"})
        newest_sessions = _plan(
            store,
            f"SELECT * FROM {s} WHERE user_id = :u ORDER BY updated_at DESC, session_id DESC LIMIT 50",
            {"u": "u1"},
        )
        print(f"\n[{store.db.dialect}] newest 20 messages: {newest_n}\n[{store.db.dialect}] newest 50 sessions of a user: {newest_sessions}")
        dialect = store.db.dialect
    if dialect == "sqlite":
        assert "USING PRIMARY KEY" in newest_n or "USING INDEX sqlite_autoindex" in newest_n
        assert "sessions_user_activity" in newest_sessions and "TEMP B-TREE" not in newest_sessions
    elif dialect == "postgresql":
        assert "Index Scan Backward" in newest_n and "pkey" in newest_n and "Sort" not in newest_n
        assert "sessions_user_activity" in newest_sessions and "Sort" not in newest_sessions
    else:
        assert ":PRIMARY:" in newest_n and "filesort" not in newest_n
        assert "sessions_user_activity" in newest_sessions and "filesort" not in newest_sessions


def test_sqlite_pragmas(make_url):
    url = make_url(next(b for b in SQL if b.name == "sqlite"))
    with open_store(url, "conversations") as store:
        with store.db.read() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL: durable at commit
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


def test_large_four_byte_content_round_trips(server_url):
    big = ("𝄞🙂漢" * 1_400_000)[:4_000_000]  # ~15 MB of 4-byte and 3-byte UTF-8
    with open_store(server_url, "conversations") as store:
        store.create_session("huge")
        store.add_message("huge", "user", big)
        assert store.get_messages("huge", limit=1)[0].content == big


def test_a_failed_batch_stores_nothing(server_url):
    with open_store(server_url, "conversations") as store:
        store.create_session("atomic")
        store.add_message("atomic", "user", "kept")
        # PostgreSQL refuses NUL characters in text; MariaDB refuses a seq that collides (simulated below).
        if store.db.dialect == "postgresql":
            with pytest.raises(InputError):
                store.add_messages("atomic", [{"role": "user", "content": "fine"}, {"role": "user", "content": "nul\x00"}])
        else:
            with store.db.write() as conn:  # a stray row at seq 3 makes the second insert of the batch fail
                conn.execute(store.t.messages.insert().values(session_id="atomic", seq=3, id="stray", role="user", content="stray", metadata={}, created_at=store.get_session("atomic").created_at))
            with pytest.raises(Error):
                store.add_messages("atomic", [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
            with store.db.write() as conn:
                conn.execute(store.t.messages.delete().where(store.t.messages.c.id == "stray"))
        assert [m.content for m in store.get_messages("atomic")] == ["kept"]
        assert store.get_session("atomic").message_count == 1
        assert store.add_message("atomic", "user", "next").seq == 2


def test_postgres_url_forms(make_url):
    base = make_url(next(b for b in SERVERS if b.name == "postgresql"))  # postgresql://postgres@127.0.0.1:5432/<db>?table_prefix=..
    rest = base.split("://", 1)[1]
    for scheme in ("postgres", "postgresql+psycopg"):
        with db(f"{scheme}://{rest}&sslmode=disable&connect_timeout=5&application_name=praison") as store:
            store.conversations.get_or_create_session("forms")
            assert store.conversations.get_session("forms") is not None
    with pytest.raises(ConfigError, match="psycopg2"):
        db(f"postgresql+psycopg2://{rest}") if not _has("psycopg2") else pytest.skip("psycopg2 installed")


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_mysql_url_forms_and_awkward_password(make_url):
    import pymysql

    base = make_url(next(b for b in SERVERS if b.name == "mysql"))  # mysql://root@127.0.0.1:3306/<db>?table_prefix=..
    database = base.rsplit("/", 1)[1].split("?", 1)[0]
    user, password = f"pw_{servers.run_id()}", "p@ss:w/rd%"
    with pymysql.connect(host="127.0.0.1", user="root") as conn, conn.cursor() as cur:
        cur.execute(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (password,))
        cur.execute(f"GRANT ALL ON `{database}`.* TO '{user}'@'%'")
    try:
        encoded = "p%40ss%3Aw%2Frd%25"
        query = base.split("?", 1)[1]
        for scheme in ("mysql", "mysql+pymysql", "mariadb", "mariadb+pymysql"):
            with db(f"{scheme}://{user}:{encoded}@127.0.0.1:3306/{database}?{query}") as store:
                store.conversations.get_or_create_session("forms")
                assert store.conversations.get_session("forms") is not None
                assert "p@ss" not in repr(store) and "***" in repr(store)
        with pytest.raises(ConfigError, match="refused the credentials") as info:
            db(f"mysql://{user}:wrong-s3cret@127.0.0.1:3306/{database}")
        assert "wrong-s3cret" not in str(info.value) and "\n" not in str(info.value)
    finally:
        with pymysql.connect(host="127.0.0.1", user="root") as conn, conn.cursor() as cur:
            cur.execute(f"DROP USER '{user}'@'%'")


@pytest.mark.parametrize("url", ["postgresql://ai:s3cret@127.0.0.1:1/ai", "mysql://root:s3cret@127.0.0.1:1/test"])
def test_refused_port_is_store_unavailable_quickly_and_masked(url):
    started = time.perf_counter()
    with pytest.raises(StoreUnavailable) as info:
        db(url)
    assert time.perf_counter() - started < 15
    message = str(info.value)
    assert "s3cret" not in message and "***" in message and "\n" not in message


@pytest.mark.parametrize(
    "url", ["postgresql://postgres@127.0.0.1:5432/praison_no_such_db", "mysql://root@127.0.0.1:3306/praison_no_such_db"]
)
def test_missing_database_is_a_config_error(url):
    with pytest.raises(ConfigError, match="database does not exist"):
        db(url)


@pytest.mark.restart
@pytest.mark.parametrize("name", ["postgresql", "mysql"])
def test_a_server_restart_between_calls_costs_only_a_reconnect(name, make_url):
    url = make_url(next(b for b in SERVERS if b.name == name))
    with db(url) as store:
        store.conversations.create_session("before")
        store.state.set("k", 1)
        (servers.restart_postgres if name == "postgresql" else servers.restart_mariadb)()
        assert store.conversations.add_message("before", "user", "after the restart").seq == 1
        assert store.state.incr("k") == 2


def test_column_types_do_not_truncate(server_url):
    with open_store(server_url, "conversations") as store:
        with store.db.read() as conn:
            messages = {c["name"]: c["type"] for c in inspect(conn).get_columns(store.t.messages.name)}
            sessions = {c["name"]: c["type"] for c in inspect(conn).get_columns(store.t.sessions.name)}
        kinds = {name: type(t).__name__.upper() for name, t in {**messages, "session_metadata": sessions["metadata"]}.items()}
        if store.db.dialect == "postgresql":
            assert kinds["metadata"] == kinds["tool_calls"] == kinds["session_metadata"] == "JSON"  # verbatim numbers
            assert kinds["content"] == "TEXT"
        else:
            assert kinds["content"] == "LONGTEXT" and getattr(messages["content"], "charset", "utf8mb4") in (None, "utf8mb4")
            with store.db.read() as conn:
                charset = conn.execute(
                    text("SELECT character_set_name FROM information_schema.columns WHERE table_schema = DATABASE() "
                         "AND table_name = :t AND column_name = 'content'"), {"t": store.t.messages.name}
                ).scalar()
            assert charset == "utf8mb4"


def test_expired_state_rows_are_removed_on_open(sql_url):
    from tests.servers import wait_past

    with open_store(sql_url, "state") as state:
        deadline = time.time() + 0.2
        state.set("short", 1, ttl=0.2)
        state.set("long", 2)
    wait_past(deadline)
    with open_store(sql_url, "state") as state:
        with state.db.read() as conn:  # the rows themselves, expired or not
            assert sorted(conn.execute(state.t.state.select().with_only_columns(state.t.state.c.key)).scalars()) == ["long"]


# More values than PostgreSQL's protocol takes in one statement (65,535 parameters).
MANY = 66_000


def test_lookups_of_more_ids_or_keys_than_one_statement_can_bind(sql_url):
    with open_store(sql_url, "state") as state:
        state.set("k1", 1)
        assert state.get_many([f"k{i}" for i in range(MANY)]) == {"k1": 1}
    with open_store(sql_url, "conversations") as conv:
        conv.create_session("s")
        conv.add_message("s", "user", "first", id="m0")
        # One id already stored sends the batch down the path that looks every id up first.
        stored = conv.add_messages("s", [{"role": "user", "content": "x", "id": f"m{i}"} for i in range(MANY)])
        assert stored[0].content == "first" and [m.seq for m in stored[:3]] == [1, 2, 3]
        assert conv.count_messages("s") == MANY


# ---- message ids: a database from before they were unique ----


def write_version_1(url: str) -> None:
    """The tables as version 1 made them: ids of at most 64 characters, no unique index on (session_id, id)."""
    database = _open_unprepared(url, {})
    try:
        current = database.tables
        md = MetaData()
        sessions, state, version = (t.to_metadata(md) for t in (current.sessions, current.state, current.version))
        messages = current.messages.to_metadata(md)
        messages.indexes = {i for i in messages.indexes if not i.unique}
        messages.c.id.type = String(64)
        now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
        with database.engine.begin() as conn:
            md.create_all(conn)
            conn.execute(insert(version).values(version=1, applied_at=now))
            conn.execute(
                insert(sessions).values(
                    session_id="old", session_type="agent", metadata={}, created_at=now, updated_at=now, message_count=3
                )
            )
            row = {"session_id": "old", "role": "user", "metadata": {}, "created_at": now}
            conn.execute(
                insert(messages),
                [
                    {**row, "seq": 1, "id": "a" * 32, "content": "one"},
                    {**row, "seq": 2, "id": "twice", "content": "two"},
                    {**row, "seq": 3, "id": "twice", "content": "three"},  # an old import could do this
                ],
            )
    finally:
        database.release()


@pytest.mark.parametrize("backend", SQL, ids=[b.name for b in SQL])
def test_version_1_database_upgrades_and_keeps_working(backend, make_url):
    url = make_url(backend)
    write_version_1(url)
    assert schema_version(url) == (1, len(sql_schema.MIGRATIONS))
    with open_store(url, "conversations") as conv:
        assert schema_version(url) == (len(sql_schema.MIGRATIONS), len(sql_schema.MIGRATIONS))
        old = conv.get_messages("old")
        assert [(m.seq, m.id, m.content) for m in old] == [(1, "a" * 32, "one"), (2, "twice", "two"), (3, "twice:3", "three")]
        assert conv.add_message("old", "user", "retry", id="a" * 32) == old[0]
        assert conv.add_message("old", "user", "retry", id="twice") == old[1]
        assert conv.count_messages("old") == 3
        long_id = "L" * 255
        assert conv.add_message("old", "user", "four", id=long_id).seq == 4
        # Ids are exact: case and trailing spaces make different ids on every dialect.
        assert [conv.add_message("old", "user", x, id=x).seq for x in ("Case", "case", "case ")] == [5, 6, 7]
        assert conv.add_message("old", "user", "again", id="case").content == "case"
        assert [m.id for m in conv.get_messages("old", limit=4)] == [long_id, "Case", "case", "case "]
    with open_store(url, "conversations") as conv:  # opening again is a no-op
        assert conv.count_messages("old") == 7


def test_a_pooled_connection_the_server_dropped_is_replaced_once_idle_past_the_ping_window(server_url):
    """Connections are pinged before use only after an idle second (a busy store saves a round trip per call): the
    server killing a pooled connection costs the next call after that second a reconnect, not an error."""
    from sqlalchemy import create_engine

    from praison_db.backends.sql.engine import PING_AFTER_IDLE_SECONDS
    from praison_db.facade import open_store
    from praison_db.testing import wait_past

    with open_store(server_url, "conversations") as store:
        store.create_session("s")
        with store.db.read() as conn:
            if conn.dialect.name == "postgresql":
                pid, kill = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar(), "SELECT pg_terminate_backend({})"
            else:
                pid, kill = conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar(), "KILL {}"
        admin = create_engine(store.db.engine.url)  # a connection of its own does the killing
        try:
            with admin.connect() as other:
                other.exec_driver_sql(kill.format(int(pid)))
                other.commit()
        finally:
            admin.dispose()
        wait_past(time.time() + PING_AFTER_IDLE_SECONDS)
        for i in range(3):
            assert store.add_message("s", "user", f"after {i}").seq == i + 1


def test_threads_opening_a_new_sqlite_file_at_once_all_succeed(tmp_path):
    """Switching a new file to WAL answers "database is locked" at once to the others racing it: they must wait."""
    import threading

    for attempt in range(15):
        url = f"sqlite:///{tmp_path}/new-{attempt}.db"
        start, failures = threading.Barrier(6), []  # type: ignore[var-annotated]

        def open_one(url: str, start: threading.Barrier, failures: list[BaseException]) -> None:
            try:
                start.wait()
                with db(url) as store:
                    store.conversations.get_or_create_session("shared")
            except BaseException as e:  # noqa: BLE001 - reported below
                failures.append(e)

        threads = [threading.Thread(target=open_one, args=(url, start, failures)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []
        with db(url) as store:
            assert [s.session_id for s in store.conversations.list_sessions()] == ["shared"]
