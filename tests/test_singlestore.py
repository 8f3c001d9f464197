"""SingleStore (``singlestoredb://``, ``singlestore://``): what can be checked without a SingleStore server.

No SingleStore runs on the test machines; the whole conformance suite runs on one when PRAISON_TEST_SINGLESTORE_URL
names it (backend ``singlestore-env``, tests/backends.py). Here: the registry entry, URL parsing and options, the DDL
the SQL backend emits for SingleStore (compiled with the MySQL dialect that drives it), the upsert and insert-ignore
statements, the key and JSON column types; and, on the MariaDB server through the same driver path, the set-up of a
new SingleStore connection and the row lock that serialises schema migrations.
"""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any

import pymysql
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Column, Double, MetaData, String, Table, UniqueConstraint
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql
from sqlalchemy.schema import CreateTable
from sqlalchemy.util import greenlet_spawn

from praison_db import ConfigError, StoreUnavailable
from praison_db.backends.sql import SqlConversationStore, SqlStateStore, migrate, schema_version
from praison_db.backends.sql import schema as sql_schema
from praison_db.backends.sql import engine as sql_engine
from praison_db.backends.sql.engine import (
    OPTIONS,
    _create_engine,
    _insert_ignore,
    _is_retryable,
    _refused,
    _row_lock,
    _singlestore_setup,
    _sqlalchemy_url,
    _upsert,
    is_singlestore,
)
from praison_db.backends.sql.replica import Replica
from praison_db.backends.sql.schema import (
    MIGRATIONS,
    JsonText,
    ShardKey,
    SingleStoreKey,
    Tables,
    build_tables,
)
from praison_db.facade import open_store
from praison_db.registry import entry_for, resolve
from praison_db.url import parse_url
from tests.backends import BACKENDS

MYSQL = next(b for b in BACKENDS if b.name == "mysql")
DIALECT = mysql.dialect()


def _ddl(table: Table, **kw: Any) -> str:
    return str(CreateTable(table, **kw).compile(dialect=DIALECT)).strip()


def _tables() -> Tables:
    return build_tables("praison_", singlestore=True)


# ---- registry, URLs, options ----


@pytest.mark.parametrize("scheme", ["singlestoredb", "singlestore"])
def test_both_schemes_are_the_sql_stores_on_the_mysql_drivers(scheme: str) -> None:
    entry = entry_for(scheme)
    assert entry.sqlalchemy == ("mysql+pymysql", "mysql+aiomysql")
    assert (entry.driver, entry.async_driver, entry.extra) == ("pymysql", "aiomysql", "mysql")
    assert resolve(scheme, "conversations") is SqlConversationStore
    assert resolve(scheme, "state") is SqlStateStore


def test_a_singlestore_url_parses_like_a_mysql_one_and_hides_its_password() -> None:
    url = parse_url("singlestoredb://agent:p%40ss/w@db.example.com:3306/agents")
    assert (url.scheme, url.username, url.password, url.host, url.port, url.path) == (
        "singlestoredb", "agent", "p@ss/w", "db.example.com", 3306, "/agents",
    )  # fmt: skip
    assert "p@ss" not in url.render() and "p%40ss" not in url.render() and "p@ss" not in repr(url)
    sa_url = _sqlalchemy_url(url, "mysql+pymysql", {})
    assert (sa_url.drivername, sa_url.password, sa_url.host, sa_url.database) == ("mysql+pymysql", "p@ss/w", "db.example.com", "agents")
    assert sa_url.query["charset"] == "utf8mb4"


def test_the_scheme_alone_says_singlestore() -> None:
    assert is_singlestore(parse_url("singlestoredb://u@h/db")) and is_singlestore(parse_url("singlestore://u@h:3306/db"))
    for scheme in ("mysql", "mysql+pymysql", "mariadb", "mariadb+pymysql"):
        assert not is_singlestore(parse_url(f"{scheme}://u@h/db"))


def test_options_are_checked_before_any_connection() -> None:
    with pytest.raises(ConfigError, match=r"unknown option 'prefix' for singlestoredb:// \(prefix is an option of redis:// URLs\)"):
        open_store("singlestoredb://u:pw@127.0.0.1:1/db?prefix=x", "conversations")
    with pytest.raises(ConfigError, match="pool_size"):
        open_store("singlestore://u:pw@127.0.0.1:1/db", "state", pool_size="many")
    # PyMySQL's own arguments pass through: what fails then is reaching the (closed) port.
    with pytest.raises(StoreUnavailable):
        open_store("singlestoredb://u:pw@127.0.0.1:1/db?ssl_disabled=true&table_prefix=p_", "conversations", connect_timeout=2)


def test_read_replicas_are_refused_on_singlestore() -> None:
    primary = parse_url("singlestoredb://u@h/db")
    opts = {name: option.default for name, option in OPTIONS.items()}
    with pytest.raises(ConfigError, match=r"read replicas are supported on PostgreSQL and MariaDB, not on singlestoredb://"):
        Replica(primary, "singlestoredb://u@replica/db", opts, False, DIALECT)


# ---- the tables ----


def test_every_table_is_a_rowstore_collated_utf8mb4_bin_without_mysql_table_options() -> None:
    t = _tables()
    assert t.lock is not None
    for table in (t.sessions, t.messages, t.state, t.version, t.lock):
        ddl = _ddl(table)
        assert ddl.startswith(f"CREATE ROWSTORE TABLE {table.name} (")
        assert ddl.endswith(")COLLATE utf8mb4_bin")
        assert not re.search(r"ENGINE|CHARSET|CHARACTER SET|FOREIGN KEY|REFERENCES", ddl)
        assert not table.indexes  # every index inside CREATE TABLE: no CREATE INDEX after it
    assert _ddl(t.lock, if_not_exists=True).startswith("CREATE ROWSTORE TABLE IF NOT EXISTS praison_schema_lock (")


def test_the_messages_table_as_singlestore_gets_it() -> None:
    assert _ddl(_tables().messages) == (
        "CREATE ROWSTORE TABLE praison_messages (\n"
        "\tsession_id VARBINARY(1020) NOT NULL, \n"
        "\tseq BIGINT NOT NULL, \n"
        "\tid VARBINARY(1020) NOT NULL, \n"
        "\t`role` VARCHAR(64) NOT NULL, \n"
        "\tcontent LONGTEXT, \n"
        "\tname LONGTEXT, \n"
        "\ttool_calls LONGTEXT, \n"
        "\ttool_call_id LONGTEXT, \n"
        "\tmetadata LONGTEXT NOT NULL, \n"
        "\tcreated_at DATETIME(6) NOT NULL, \n"
        "\ttype VARCHAR(64), \n"
        "\textra LONGTEXT, \n"
        "\tPRIMARY KEY (session_id, seq), \n"
        "\tCONSTRAINT praison_messages_id UNIQUE (session_id, id), \n"
        "\tSHARD KEY (session_id)\n"
        ")COLLATE utf8mb4_bin"
    )


def test_sessions_and_state_shard_on_their_primary_keys_with_their_listing_keys_inline() -> None:
    t = _tables()
    sessions, state = _ddl(t.sessions), _ddl(t.state)
    assert "\tPRIMARY KEY (session_id), \n" in sessions and "\tSHARD KEY (session_id)\n" in sessions
    assert "\tKEY praison_sessions_activity (updated_at, session_id), \n" in sessions
    assert "\tKEY praison_sessions_user_activity (user_id, updated_at, session_id), \n" in sessions
    assert "\tPRIMARY KEY (`key`), \n" in state and "\tSHARD KEY (`key`)\n" in state
    assert "\tKEY praison_state_expires (expires_at), \n" in state
    assert "\t`key` VARBINARY(2048) NOT NULL, \n" in state and "\tvalue LONGTEXT NOT NULL, \n" in state


def test_every_unique_key_contains_the_shard_key_and_the_shard_key_is_in_the_primary_key() -> None:
    t = _tables()
    for table in (t.sessions, t.messages, t.state, t.version, t.lock):
        assert table is not None
        primary = [c.name for c in table.primary_key.columns]
        shard_keys = [c for c in table.constraints if isinstance(c, ShardKey)]
        assert len(shard_keys) <= 1
        shard = [c.name for c in shard_keys[0].columns] if shard_keys else primary  # default: the primary key
        assert set(shard) <= set(primary), table.name
        for unique in (c for c in table.constraints if isinstance(c, UniqueConstraint)):
            assert set(shard) <= {c.name for c in unique.columns}, (table.name, unique.name)
    assert [c.name for c in next(c for c in t.messages.constraints if isinstance(c, ShardKey)).columns] == ["session_id"]


def test_timestamps_are_datetime6_and_no_foreign_key_is_declared() -> None:
    t = _tables()
    assert not t.messages.foreign_keys
    for table, column in ((t.sessions, "created_at"), (t.sessions, "updated_at"), (t.messages, "created_at"), (t.version, "applied_at")):
        assert table.c[column].type.compile(dialect=DIALECT) == "DATETIME(6)"


def test_mysql_and_mariadb_tables_are_untouched_by_the_singlestore_flag() -> None:
    plain, explicit = build_tables("p_", "utf8mb4_0900_bin"), build_tables("p_", "utf8mb4_0900_bin", singlestore=False)
    for a, b in zip((plain.sessions, plain.messages, plain.state, plain.version), (explicit.sessions, explicit.messages, explicit.state, explicit.version)):
        assert _ddl(a) == _ddl(b)
        assert _ddl(a).startswith(f"CREATE TABLE {a.name} (") and _ddl(a).endswith(")ENGINE=InnoDB CHARSET=utf8mb4")
    assert plain.lock is None and len(plain.sessions.indexes) == 2 and len(plain.messages.indexes) == 1
    assert "FOREIGN KEY(session_id) REFERENCES p_sessions (session_id) ON DELETE CASCADE" in _ddl(plain.messages)
    assert "session_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_0900_bin NOT NULL" in _ddl(plain.messages)


# ---- statements ----


def test_the_upsert_is_singlestores_values_form_whatever_version_the_server_reports() -> None:
    state = _tables().state
    dialect = mysql.dialect()
    dialect._requires_alias_for_on_duplicate_key = True  # what SQLAlchemy does for a server reporting 8.0.20 or later
    sql = str(_upsert("singlestore", state, ["value", "expires_at"]).compile(dialect=dialect))
    assert sql == (
        "INSERT INTO `praison_state` (`key`, `value`, `expires_at`) VALUES (%s, %s, %s) "
        "ON DUPLICATE KEY UPDATE `value` = VALUES(`value`), `expires_at` = VALUES(`expires_at`)"
    )
    assert " AS new " in str(_upsert("mysql", state, ["value"]).compile(dialect=dialect))  # MySQL follows its server
    assert str(_insert_ignore("singlestore", state).compile(dialect=dialect)).startswith("INSERT IGNORE INTO praison_state ")


def test_the_upsert_binds_through_the_column_types_and_overwrites(make_url: Any) -> None:
    # On MariaDB, which takes the same INSERT ... VALUES(col) form and VARBINARY keys: one batch, then an overwrite.
    mysql_url = make_url(MYSQL)
    table = Table(
        f"{parse_url(mysql_url).query['table_prefix']}kv", MetaData(),
        Column("key", SingleStoreKey(512), primary_key=True), Column("value", mysql.LONGTEXT, nullable=False), Column("expires_at", Double),
    )  # fmt: skip
    engine = _create_engine(parse_url(mysql_url.split("?", 1)[0]), _opts(), {}, False, "test")
    upsert = _upsert("singlestore", table, ["value", "expires_at"])
    try:
        with engine.begin() as conn:
            table.create(conn)
            conn.execute(upsert, [{"key": "a", "value": "1", "expires_at": None}, {"key": "a ", "value": "2", "expires_at": 5.0}])
            conn.execute(upsert, [{"key": "a", "value": "3", "expires_at": 7.5}])
            rows = dict((k, (v, e)) for k, v, e in conn.execute(table.select()))
            table.drop(conn)
    finally:
        engine.dispose()
    assert rows == {"a": ("3", 7.5), "a ": ("2", 5.0)}


def test_the_append_counter_is_read_back_with_a_select_as_on_mysql() -> None:
    # UPDATE ... RETURNING is not MySQL's; the stores ask the dialect, and SingleStore runs on the MySQL dialect.
    assert DIALECT.update_returning is False


# ---- column types ----

_TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40)  # lone surrogates are refused earlier


@given(_TEXT, _TEXT)
def test_keys_compare_and_sort_as_their_text(a: str, b: str) -> None:
    key = SingleStoreKey(255)
    ka, kb = key.process_bind_param(a, DIALECT), key.process_bind_param(b, DIALECT)
    assert isinstance(ka, bytes) and isinstance(kb, bytes)
    assert (ka == kb) == (a == b) and (ka < kb) == (a < b)  # byte order of UTF-8 is code point order
    assert key.process_result_value(ka, DIALECT) == a


def test_keys_keep_case_and_trailing_spaces_apart() -> None:
    key = SingleStoreKey(255)
    forms = {key.process_bind_param(s, DIALECT) for s in ("a", "a ", "A", "a\u00a0", "\u00e9", "e\u0301")}
    assert len(forms) == 6
    assert key.process_bind_param(None, DIALECT) is None and key.process_result_value(None, DIALECT) is None
    assert key.process_result_value(bytearray(b"\xf0\x9f\x99\x82"), DIALECT) == "\U0001f642"


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80) | st.floats(allow_nan=False, allow_infinity=False) | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)


@given(_JSON)
def test_json_columns_give_back_exactly_what_was_written(value: Any) -> None:
    column = JsonText()
    stored = column.process_bind_param(value, DIALECT)
    back = column.process_result_value(stored, DIALECT)
    assert back == value and type(back) is type(value)
    if isinstance(value, float):
        assert math.copysign(1.0, back) == math.copysign(1.0, value)  # -0.0 keeps its sign


def test_json_edge_values_survive() -> None:
    column = JsonText()
    for value in (2**64, 1e20, -0.0, {"a": [1, "x", None]}, [], {}, "\U0001f642"):
        assert column.process_result_value(column.process_bind_param(value, DIALECT), DIALECT) == value
    assert column.process_bind_param(None, DIALECT) is None  # SQL NULL, not the JSON text "null"


# ---- a new connection's set-up, on the MariaDB server (same protocol, driver and hooks) ----


def test_the_session_statements_add_strict_mode_only_when_missing() -> None:
    assert _singlestore_setup("STRICT_ALL_TABLES", 15, repr) == ["SET SESSION lock_wait_timeout = 15"]
    assert _singlestore_setup("", 4, repr) == ["SET SESSION sql_mode = 'STRICT_ALL_TABLES'", "SET SESSION lock_wait_timeout = 4"]
    assert _singlestore_setup("ONLY_FULL_GROUP_BY,ANSI_QUOTES", 4, repr)[0] == (
        "SET SESSION sql_mode = 'ONLY_FULL_GROUP_BY,ANSI_QUOTES,STRICT_ALL_TABLES'"
    )


def _singlestore_url_on_mariadb(mysql_url: str, query: str = "") -> Any:
    """The MariaDB test database under the singlestoredb:// scheme: only engines, never the SingleStore tables."""
    base = mysql_url.split("?", 1)[0].replace("mysql://", "singlestoredb://", 1)
    return parse_url(base + query)


def _opts(**changes: Any) -> dict[str, Any]:
    return {**{name: option.default for name, option in OPTIONS.items()}, **changes}


_SESSION = "SELECT @@session.lock_wait_timeout, @@session.sql_mode, @@session.innodb_lock_wait_timeout, @@global.innodb_lock_wait_timeout"


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_singlestore_connection_sets_its_lock_wait_and_strict_mode_without_mysqls_init_command(
    make_url: Any, asynchronous: bool
) -> None:
    url = _singlestore_url_on_mariadb(make_url(MYSQL))
    engine = _create_engine(url, _opts(read_timeout=8.0), {}, asynchronous, "test")

    def read() -> Any:
        try:
            with engine.connect() as conn:
                return conn.exec_driver_sql(_SESSION).one()
        finally:
            engine.dispose()  # on the event loop, where aiomysql's connections live

    lock_wait, sql_mode, innodb_session, innodb_global = asyncio.run(greenlet_spawn(read)) if asynchronous else read()
    assert lock_wait == 4  # half the read timeout
    assert "STRICT_ALL_TABLES" in sql_mode.split(",")
    assert innodb_session == innodb_global  # the MySQL init command (innodb_lock_wait_timeout) was not sent


def test_an_init_command_of_the_url_replaces_the_singlestore_set_up(make_url: Any) -> None:
    url = _singlestore_url_on_mariadb(make_url(MYSQL))
    engine = _create_engine(url, _opts(read_timeout=8.0), {"init_command": "SET SESSION wait_timeout = 77"}, False, "test")
    try:
        with engine.connect() as conn:
            wait, lock_wait, global_lock_wait = conn.exec_driver_sql(
                "SELECT @@session.wait_timeout, @@session.lock_wait_timeout, @@global.lock_wait_timeout"
            ).one()
    finally:
        engine.dispose()
    assert wait == 77 and lock_wait == global_lock_wait


def test_a_setting_the_server_refuses_is_told_from_a_broken_connection(make_url: Any) -> None:
    url = parse_url(make_url(MYSQL).split("?", 1)[0])
    engine = _create_engine(url, _opts(), {}, False, "test")
    try:
        with engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            with raw.cursor() as cur, pytest.raises(pymysql.err.MySQLError) as refused:
                cur.execute("SET SESSION praison_no_such_setting = 1")
            assert _refused(refused.value)  # the server's answer: the set-up goes on without it
            conn.invalidate()
        closed = pymysql.connect(host=url.host, port=url.port or 3306, user=url.username, password=url.password or "")
        closed.close()
        with pytest.raises(pymysql.err.MySQLError) as broken:
            closed.cursor().execute("SELECT 1")
        assert not _refused(broken.value)  # no answer at all: the connection fails
    finally:
        engine.dispose()


# ---- the schema lock ----


def test_the_schema_lock_row_lets_one_process_at_a_time_and_is_free_after(make_url: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    mysql_url = make_url(MYSQL)
    prefix = parse_url(mysql_url).query["table_prefix"]
    # The same lock table without ROWSTORE (a SingleStore word MariaDB does not know); the locking is plain SQL.
    table = Table(f"{prefix}schema_lock", MetaData(), Column("name", String(255), primary_key=True), Column("locked_at", Double, nullable=False))
    # Lock waits end on the server after 1 s (innodb_lock_wait_timeout = read_timeout / 2), the migration wait after 2 s.
    engine = _create_engine(parse_url(mysql_url.split("?", 1)[0]), _opts(read_timeout=2.0), {}, False, "test")
    monkeypatch.setattr(sql_engine, "SCHEMA_LOCK_WAIT", 2.0)
    try:
        with _row_lock(engine, table, "praison_db:a"):
            with pytest.raises(StoreUnavailable, match="another process to finish migrating"):
                with _row_lock(engine, table, "praison_db:a"):
                    pytest.fail("two holders of one lock")
            with _row_lock(engine, table, "praison_db:b"):  # another name, another lock
                pass
        with _row_lock(engine, table, "praison_db:a"):  # released when the first holder finished
            pass
        with engine.connect() as conn:
            assert sorted(conn.exec_driver_sql(f"SELECT name FROM `{table.name}`").scalars()) == ["praison_db:a", "praison_db:b"]
            conn.exec_driver_sql(f"DROP TABLE `{table.name}`")
    finally:
        engine.dispose()


def test_a_lock_wait_timeout_is_retryable_though_pymysql_reports_sqlstate_hy000(make_url: Any) -> None:
    # The schema lock waits by retrying 1205; PyMySQL 1.2 attaches the generic SQLSTATE HY000 to it.
    mysql_url = make_url(MYSQL)
    name = f"{parse_url(mysql_url).query['table_prefix']}rows"
    engine = _create_engine(parse_url(mysql_url.split("?", 1)[0]), _opts(read_timeout=2.0), {}, False, "test")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE TABLE `{name}` (id INT PRIMARY KEY, n INT)")
            conn.exec_driver_sql(f"INSERT INTO `{name}` VALUES (1, 0)")
        with engine.connect() as holder, engine.connect() as waiter:
            holder.exec_driver_sql(f"UPDATE `{name}` SET n = 1 WHERE id = 1")
            with pytest.raises(sa_exc.OperationalError) as waited:
                waiter.exec_driver_sql(f"UPDATE `{name}` SET n = 2 WHERE id = 1")
            holder.rollback()
        assert waited.value.orig.args[0] == 1205 and getattr(waited.value.orig, "sqlstate", "HY000") == "HY000"
        assert _is_retryable(waited.value)
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE `{name}`")
    finally:
        engine.dispose()


# ---- the whole SingleStore path, with MariaDB standing in ----


@pytest.fixture
def singlestore_on_mariadb(make_url: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """A ``singlestoredb://`` URL on the MariaDB test database, for this test's table prefix.

    MariaDB takes every word of the SingleStore DDL but two, ROWSTORE and SHARD KEY, which are left out here (for this
    test only). Everything else runs as on SingleStore: VARBINARY keys, JSON as text, the VALUES() upsert, tables
    without foreign keys and with their keys inline, the migration row lock, the skipped migrations, the connection
    set-up. (The whole conformance suite passes this way too; it is not part of the test run.)
    """
    monkeypatch.setitem(sql_schema._SINGLESTORE_TABLE, "prefixes", [])
    monkeypatch.setitem(ShardKey._compiler_dispatcher.specs, "default", lambda element, compiler, **kw: None)  # type: ignore[attr-defined]
    return str(make_url(MYSQL)).replace("mysql://", "singlestoredb://", 1)


def test_the_singlestore_stores_keep_what_they_are_given(singlestore_on_mariadb: str) -> None:
    url = singlestore_on_mariadb
    with open_store(url, "conversations") as conv:
        conv.create_session("a", user_id="u")
        conv.create_session("a ", user_id="u ")  # a trailing space makes another id
        conv.add_message("a", "user", "hi", metadata={"big": 2**64, "zero": -0.0, "e": 1e20})
        conv.add_messages("a", [{"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]}])
        first, second = conv.get_messages("a")
        assert first.metadata == {"big": 2**64, "zero": -0.0, "e": 1e20} and math.copysign(1.0, first.metadata["zero"]) == -1.0
        assert second.tool_calls == [{"id": "c1", "type": "function"}]
        assert [s.session_id for s in conv.list_sessions(user_id="u ")] == ["a "] and conv.count_messages("a ") == 0
        assert conv.pop_message("a") == second and conv.count_messages("a") == 1
        assert conv.delete_session("a") and conv.get_messages("a") == [] and conv.get_session("a ") is not None
        state = conv.state_store()
        try:
            state.set("k", {"x": [1, 2**70]})
            state.set_many({"k": 2, "k ": 3})  # the upsert overwrites "k" and keeps "k " apart
            assert state.get_many(["k", "k "]) == {"k": 2, "k ": 3} and state.incr("n", 5) == 5
            assert list(state.keys("k")) == ["k", "k "]
        finally:
            state.close()
    prefix = parse_url(url).query["table_prefix"]
    assert schema_version(url) == (len(MIGRATIONS), len(MIGRATIONS)) and migrate(url) == (len(MIGRATIONS), len(MIGRATIONS))
    engine = _create_engine(parse_url(url.split("?", 1)[0]), _opts(), {}, False, "test")
    try:
        with engine.connect() as conn:
            versions = list(conn.exec_driver_sql(f"SELECT version FROM `{prefix}schema_version` ORDER BY version").scalars())
            locks = [bytes(n).decode() for n in conn.exec_driver_sql(f"SELECT name FROM `{prefix}schema_lock`").scalars()]
            messages_ddl = conn.exec_driver_sql(f"SHOW CREATE TABLE `{prefix}messages`").one()[1]
    finally:
        engine.dispose()
    assert versions == list(range(1, len(MIGRATIONS) + 1))  # v2..v5 recorded without running
    assert locks == [f"praison_db:{prefix}"]
    assert "`session_id` varbinary(1020) NOT NULL" in messages_ddl and "FOREIGN KEY" not in messages_ddl
