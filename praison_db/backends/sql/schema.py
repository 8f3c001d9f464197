"""Tables, types and migrations of the SQL stores (SQLite, PostgreSQL, MySQL/MariaDB, SingleStore), in SQLAlchemy Core.

Dialect differences in the schema are the column variants and the MySQL key collation chosen here, and the
migrations that apply to one dialect only. The statements that differ per dialect (insert-ignore, upsert, the
schema lock) are the "dialect quirks" in ``engine.py``, next to the per-dialect connection hooks.

SingleStore is driven through SQLAlchemy's MySQL dialect, so its differences are chosen by ``build_tables(...,
singlestore=True)`` rather than by a dialect variant: ROWSTORE tables, shard keys, keys in VARBINARY, JSON as text, no
foreign key, every index inside CREATE TABLE (see ``_SINGLESTORE`` below).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    func,
    inspect,
    select,
    update,
    BigInteger,
    Column,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import ColumnCollectionConstraint
from sqlalchemy.sql.compiler import DDLCompiler
from sqlalchemy.types import TypeDecorator

from ...models import as_utc, dumps, naive_utc

__all__ = ["Tables", "build_tables", "MIGRATIONS", "Migration", "SINGLESTORE_FIRST_VERSION"]

ROLE_LENGTH = 64  # models.MAX_ROLE_LENGTH: roles and item types


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, with microseconds on every dialect.

    PostgreSQL stores ``timestamptz``; MySQL ``DATETIME(6)`` and SQLite text hold naive UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        if dialect.name == "sqlite":
            # The same text SQLAlchemy's SQLite DATETIME writes ("2026-01-02 03:04:05.000006"), parsed with the C
            # fromisoformat instead of a regular expression per value. Fixed width, so text order is time order.
            return dialect.type_descriptor(String(26))
        return dialect.type_descriptor(DateTime(timezone=dialect.name == "postgresql"))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if dialect.name == "postgresql":
            return as_utc(value)
        return naive_utc(value).isoformat(sep=" ", timespec="microseconds") if dialect.name == "sqlite" else naive_utc(value)

    def reader(self, dialect: Dialect) -> Callable[[Any], datetime | None]:
        """:meth:`process_result_value` for non-NULL values as one plain function: prepared statements
        (prepared.py) call it once per value."""
        if dialect.name == "sqlite":

            def read(value: Any) -> datetime | None:
                if type(value) is str and len(value) == 26:
                    return datetime.fromisoformat(value + "+00:00")
                return self.process_result_value(value, dialect)

            return read
        # PostgreSQL: aware values in the session's zone (a ZoneInfo on a server whose zone is "Etc/UTC", Debian's
        # default); MySQL: naive UTC values. as_utc converts both without datetime.replace.
        return lambda value: as_utc(value) if type(value) is datetime else self.process_result_value(value, dialect)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            if len(value) == 26:  # what process_bind_param writes: parsed with its zone in one call
                return datetime.fromisoformat(value + "+00:00")
            value = datetime.fromisoformat(value)
        return as_utc(value)


def _key(length: int) -> String:
    """An exact-match string: case- and trailing-space-sensitive on MySQL, byte-ordered on PostgreSQL.

    MySQL's default collations would make "Alice" and "alice " the same primary key. The MySQL collation is
    chosen per server when the tables are built (``utf8mb4_nopad_bin`` on MariaDB, ``utf8mb4_0900_bin`` on MySQL).
    """
    return String(length).with_variant(String(length, collation="C"), "postgresql")  # type: ignore[return-value]


def _mysql_key(length: int, collation: str) -> Any:
    return mysql.VARCHAR(length, charset="utf8mb4", collation=collation)


def _mysql_collation(conn: Connection) -> str:
    if conn.dialect.name not in ("mysql", "mariadb"):
        return "utf8mb4_nopad_bin"
    if getattr(conn.dialect, "is_mariadb", False):
        return "utf8mb4_nopad_bin"
    return "utf8mb4_0900_bin"  # MySQL 8: binary and NO PAD


_LONG_TEXT = Text().with_variant(mysql.LONGTEXT(charset="utf8mb4"), "mysql", "mariadb")
# PostgreSQL's ``json`` keeps the text as written; ``jsonb`` would normalise numbers (1e20 comes back as an int, -0.0
# loses its sign). Nothing queries inside these columns, so nothing needs jsonb's operators.
_JSON = JSON(none_as_null=True).with_variant(postgresql.JSON(none_as_null=True), "postgresql")


# ---- SingleStore ----
#
# What the MySQL tables become on SingleStore, each from its documentation (docs.singlestore.com):
# - ROWSTORE: columnstore is the default table type since 7.3 (CREATE TABLE); the stores need point reads, row locks
#   (Row Locking: columnstores may lock a whole partition) and enforced unique keys.
# - SHARD KEY: a unique key must contain every column of the shard key, and the shard key must be part of the primary
#   key ("Why do I get errors about UNIQUE KEYs?", "Understanding Keys and Indexes"). Messages shard on session_id,
#   which both their primary key (session_id, seq) and their unique (session_id, id) contain; sessions and state shard
#   on their primary keys, as a table does by default.
# - No FOREIGN KEY: "Foreign keys and referential integrity" are in "Unsupported MySQL Features"; the stores delete a
#   session's messages themselves, in the same transaction as the session.
# - Keys in VARBINARY: "Sorting and comparing a VARBINARY uses the exact binary representation" (Binary String Types),
#   so "a" and "a " stay two ids; how utf8mb4_bin treats trailing spaces is not documented.
# - JSON columns as LONGTEXT: SingleStore's JSON type re-encodes values ("Using JSON"); the text we write (2**64,
#   1e20, -0.0 included) must come back as written, and nothing queries inside these columns.
# - COLLATE utf8mb4_bin on the table ("Character Set and Collation Override"): every text column is utf8mb4 whatever
#   the server's default character set; no ENGINE or DEFAULT CHARSET option, which SingleStore's CREATE TABLE lacks.
# - Every index inside CREATE TABLE (KEY / UNIQUE), one statement per table.


class ShardKey(ColumnCollectionConstraint):
    """SingleStore's ``SHARD KEY (columns)``: which columns decide the partition of a row."""


class InlineKey(ColumnCollectionConstraint):
    """A plain ``KEY name (columns)`` written inside CREATE TABLE."""


@compiles(ShardKey)
def _shard_key_ddl(element: ShardKey, compiler: DDLCompiler, **kw: Any) -> str:
    return "SHARD KEY (%s)" % ", ".join(compiler.preparer.quote(c.name) for c in element.columns)


@compiles(InlineKey)
def _inline_key_ddl(element: InlineKey, compiler: DDLCompiler, **kw: Any) -> str:
    columns = ", ".join(compiler.preparer.quote(c.name) for c in element.columns)
    return f"KEY {compiler.preparer.quote(str(element.name))} ({columns})"


class SingleStoreKey(TypeDecorator[str]):
    """An exact-match key on SingleStore: the UTF-8 bytes of the text in a VARBINARY, compared and ordered byte for
    byte (which is code point order, as on the other dialects)."""

    impl = mysql.VARBINARY
    cache_ok = True

    def __init__(self, length: int) -> None:
        super().__init__(4 * length)  # characters of up to 4 bytes each

    def process_bind_param(self, value: str | None, dialect: Dialect) -> bytes | None:
        return None if value is None else value.encode("utf-8")

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else bytes(value).decode("utf-8")


class JsonText(TypeDecorator[Any]):
    """A JSON value kept as the exact JSON text written (LONGTEXT); None is SQL NULL."""

    impl = mysql.LONGTEXT
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else dumps(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else json.loads(value)


_SINGLESTORE_TABLE: dict[str, Any] = {"prefixes": ["ROWSTORE"], "mysql_collate": "utf8mb4_bin"}


@dataclass(frozen=True)
class Tables:
    metadata: MetaData
    sessions: Table
    messages: Table
    state: Table
    version: Table
    # SingleStore only: the row whose write lock lets one process at a time migrate (it has no GET_LOCK).
    lock: Table | None = None


def build_tables(prefix: str, mysql_collation: str = "utf8mb4_nopad_bin", *, singlestore: bool = False) -> Tables:
    """The current schema under ``prefix``; table and index names derive from it. ``singlestore``: the tables as
    SingleStore needs them (compiled with the MySQL dialect; see the notes above)."""
    md = MetaData()

    def key(length: int) -> Any:
        if singlestore:
            return SingleStoreKey(length)
        return _key(length).with_variant(_mysql_key(length, mysql_collation), "mysql", "mariadb")

    def index(name: str, *columns: str, unique: bool = False) -> Any:
        if not singlestore:
            return Index(name, *columns, unique=unique)
        return UniqueConstraint(*columns, name=name) if unique else InlineKey(*columns, name=name)

    long_text: Any = mysql.LONGTEXT() if singlestore else _LONG_TEXT  # the table's COLLATE makes it utf8mb4
    json_type: Any = JsonText() if singlestore else _JSON
    table_args: dict[str, Any] = (
        _SINGLESTORE_TABLE
        if singlestore
        else {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mariadb_engine": "InnoDB", "mariadb_charset": "utf8mb4"}
    )
    sessions = Table(
        f"{prefix}sessions",
        md,
        Column("session_id", key(255), primary_key=True),
        Column("user_id", key(255)),
        Column("agent_id", key(255)),
        Column("session_type", String(16), nullable=False),
        Column("name", long_text),  # MySQL's TEXT holds 64 KB; a longer name must not be cut
        Column("metadata", json_type, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
        Column("message_count", BigInteger, nullable=False),
        # "Newest activity first", all sessions or one user's: both are index range scans.
        index(f"{prefix}sessions_activity", "updated_at", "session_id"),
        index(f"{prefix}sessions_user_activity", "user_id", "updated_at", "session_id"),
        *([ShardKey("session_id")] if singlestore else []),
        **table_args,
    )
    # No foreign key on SingleStore (unsupported); elsewhere it cascades as a safety net behind the stores' deletes.
    session_ref = [] if singlestore else [ForeignKey(sessions.c.session_id, ondelete="CASCADE")]
    messages = Table(
        f"{prefix}messages",
        md,
        # The primary key (session_id, seq) is the index behind "newest N" and makes seqs unique per session.
        Column("session_id", key(255), *session_ref, primary_key=True),
        Column("seq", BigInteger, primary_key=True, autoincrement=False),
        Column("id", key(255), nullable=False),
        # "" for a typed item without a role: no role is empty, so it cannot be mistaken for one, and tables made
        # before roles were optional keep their NOT NULL (SQLite cannot drop it without rebuilding the table).
        Column("role", String(ROLE_LENGTH), nullable=False),
        Column("content", long_text),
        Column("name", long_text),
        Column("tool_calls", json_type),
        Column("tool_call_id", long_text),
        Column("metadata", json_type, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Column("type", String(ROLE_LENGTH)),
        # The item's own fields beyond the columns, and content that is not text (models.packed_extra).
        Column("extra", json_type),
        # Message ids are unique per session: this index is what makes a retried append store nothing.
        index(f"{prefix}messages_id", "session_id", "id", unique=True),
        # A session's messages on one partition: the unique (session_id, id) contains the shard key, as it must.
        *([ShardKey("session_id")] if singlestore else []),
        **table_args,
    )
    state = Table(
        f"{prefix}state",
        md,
        Column("key", key(512), primary_key=True),
        Column("value", long_text, nullable=False),
        Column("expires_at", Double),  # Unix time: no time zone can shift it
        index(f"{prefix}state_expires", "expires_at"),
        *([ShardKey("key")] if singlestore else []),
        **table_args,
    )
    version = Table(
        f"{prefix}schema_version",
        md,
        Column("version", Integer, primary_key=True, autoincrement=False),
        Column("applied_at", UTCDateTime, nullable=False),
        **table_args,
    )
    if not singlestore:
        return Tables(md, sessions, messages, state, version)
    lock = Table(
        f"{prefix}schema_lock",
        md,
        Column("name", key(255), primary_key=True),
        Column("locked_at", Double, nullable=False),
        **table_args,
    )
    return Tables(md, sessions, messages, state, version, lock)


Migration = Callable[[Connection, Tables], None]


def _v1_create(conn: Connection, tables: Tables) -> None:
    tables.metadata.create_all(conn, tables=[tables.sessions, tables.messages, tables.state], checkfirst=True)


def _v2_message_ids(conn: Connection, tables: Tables) -> None:
    """Message ids: up to 255 exact-match characters, unique within their session."""
    m = tables.messages
    index = next(i for i in m.indexes if i.unique)
    if any(i["name"] == index.name for i in inspect(conn).get_indexes(m.name)):
        return  # created with the current schema, or a re-run after a crash
    # Imports could once store one id twice in a session: keep the first, give the others a unique suffix.
    doubled = select(m.c.session_id, m.c.id).group_by(m.c.session_id, m.c.id).having(func.count() > 1)
    for session_id, message_id in list(conn.execute(doubled)):
        seqs = conn.execute(select(m.c.seq).where(m.c.session_id == session_id, m.c.id == message_id).order_by(m.c.seq)).scalars()
        for seq in list(seqs)[1:]:
            conn.execute(update(m).where(m.c.session_id == session_id, m.c.seq == seq).values(id=f"{message_id}:{seq}"))
    name = conn.dialect.identifier_preparer.format_table(m)
    column_type = m.c.id.type.compile(dialect=conn.dialect)
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"ALTER TABLE {name} ALTER COLUMN id TYPE {column_type}")
    elif conn.dialect.name in ("mysql", "mariadb"):
        conn.exec_driver_sql(f"ALTER TABLE {name} MODIFY id {column_type} NOT NULL")
    # SQLite does not enforce VARCHAR lengths and compares text bytewise: only the index is new.
    index.create(conn)


def _v3_mysql_long_text(conn: Connection, tables: Tables) -> None:
    """MySQL/MariaDB: free-text columns created as TEXT (at most 65,535 bytes) become LONGTEXT.

    Elsewhere TEXT has no such limit and nothing changes. Columns already LONGTEXT are left alone, so a re-run (or
    a database created at this version) costs nothing.
    """
    if conn.dialect.name not in ("mysql", "mariadb"):
        return
    widen = {tables.sessions: ["name"], tables.messages: ["name", "tool_call_id"]}
    for table, names in widen.items():
        rows = conn.exec_driver_sql(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = DATABASE() AND table_name = %s",
            (table.name,),
        ).all()
        types = {str(name).lower(): str(kind).lower() for name, kind in rows}
        todo = [n for n in names if types.get(n) not in (None, "longtext")]
        if todo:
            changes = ", ".join(f"MODIFY COLUMN `{n}` LONGTEXT CHARACTER SET utf8mb4 NULL" for n in todo)
            conn.exec_driver_sql(f"ALTER TABLE `{table.name}` {changes}")


def _v4_json_verbatim(conn: Connection, tables: Tables) -> None:
    """PostgreSQL: jsonb columns become json, which stores numbers exactly as written (other dialects: nothing)."""
    if conn.dialect.name != "postgresql":
        return
    for table, column in ((tables.sessions, "metadata"), (tables.messages, "tool_calls"), (tables.messages, "metadata")):
        kind = conn.execute(
            text(
                "SELECT data_type FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = :t AND column_name = :c"
            ),
            {"t": table.name, "c": column},
        ).scalar()
        if kind == "jsonb":  # re-running after a crash skips the columns already done
            conn.execute(text(f'ALTER TABLE "{table.name}" ALTER COLUMN "{column}" TYPE json USING "{column}"::text::json'))


def _v5_open_items(conn: Connection, tables: Tables) -> None:
    """Messages hold any item: roles up to 64 characters, and the new ``type`` and ``extra`` columns.

    Rows written before keep type and extra NULL, which read back as no type and no other fields. Each step checks
    what is there first, so a re-run after a crash half-way (MySQL DDL is not transactional) does only what is left.
    """
    m = tables.messages
    name = conn.dialect.identifier_preparer.format_table(m)
    quote = conn.dialect.identifier_preparer.quote
    columns = {c["name"]: c for c in inspect(conn).get_columns(m.name)}
    for column in (m.c.type, m.c.extra):
        if column.name not in columns:
            kind = column.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {name} ADD COLUMN {quote(column.name)} {kind}")
    # SQLite does not enforce VARCHAR lengths; the others hold 16 characters until widened.
    length = getattr(columns["role"]["type"], "length", None)
    if conn.dialect.name != "sqlite" and length is not None and length < ROLE_LENGTH:
        role = quote("role")
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"ALTER TABLE {name} ALTER COLUMN {role} TYPE VARCHAR({ROLE_LENGTH})")
        else:
            conn.exec_driver_sql(f"ALTER TABLE {name} MODIFY {role} VARCHAR({ROLE_LENGTH}) NOT NULL")


# Append-only: MIGRATIONS[i] brings a database from version i to i + 1. Never edit a released entry; add one.
# Each must be safe to re-run after a crash half-way (DDL is not transactional on MySQL).
MIGRATIONS: list[Migration] = [_v1_create, _v2_message_ids, _v3_mysql_long_text, _v4_json_verbatim, _v5_open_items]

# SingleStore support began at this schema version: there _v1_create builds it whole, and the migrations between v1
# and it (which convert layouts a SingleStore database never had, reading them back through the MySQL dialect's
# parser of SHOW CREATE TABLE) are recorded without running. A migration added after it runs on SingleStore too.
SINGLESTORE_FIRST_VERSION = 5
