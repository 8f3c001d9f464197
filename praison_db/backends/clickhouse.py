"""ClickHouse conversation store over clickhouse-connect: a ClickHouse server, or chDB inside this process.

URLs: ``clickhouse://user:pass@host:8123/db`` (HTTP), ``clickhouses://user:pass@host:8443/db`` (HTTPS),
``chdb:///abs/folder`` (the embedded chDB engine, data kept in that folder) and ``chdb://`` (embedded, in memory
until the last store on it closes). The database is the URL path (``default`` when absent); chDB creates it.

Options: ``table_prefix`` (default ``praison_``), ``database`` (instead of the URL path), ``fsync`` (default true:
tables are created with ``fsync_after_insert``), and for servers only ``connect_timeout`` (seconds, default 10),
``query_timeout`` (seconds to wait for any answer, default 60: a silent or frozen server raises StoreUnavailable),
``verify`` and ``ca_cert`` (TLS).

Layout, designed for what ClickHouse is (append-only, no transactions, no cheap row updates):

- ``<prefix>messages``: MergeTree ordered by ``(session_id, seq)``. Messages are inserted in one batch per
  ``add_messages``/``import_session``; the newest N of a session is ``ORDER BY seq DESC LIMIT N`` on the primary
  key, reading N rows whatever the session's length. An item comes back exactly (deep-equal, types included): text
  content is in ``content``; ``extra`` is the JSON text of the item's other fields and of content that is not text
  ('' when there are none); ``role`` and ``type`` are '' when absent (neither can be empty). Schema version 3 added
  ``type`` and ``extra`` as columns with a default, which rewrites no data: older rows read back with no type and
  no extra.
- ``<prefix>sessions``: ReplacingMergeTree(version) ordered by ``session_id``. Every change (create, append,
  update) inserts a whole new row version; reads use ``FINAL``, so they see only the newest version.
- Deletes (``delete_session``, ``delete_user``, ``prune``, and the removals below) are lightweight ``DELETE``s run
  with ``lightweight_deletes_sync=2``: a read after the call returns does not see the rows.
- Inserts are synchronous (``async_insert=0``): a message is in a table part when the call returns, and with
  ``fsync`` that part has been fsynced. Every value travels as a server-side query parameter; table names come
  from the validated prefix and database name.

Seq guarantee. ClickHouse cannot allocate a counter atomically, so seqs are allocated here: every append to a
session takes a lock kept in this process for that session (shared by every store opened on the same tables in
this process), reads the last stored seq, inserts the messages with the following seqs, then inserts the session's
new version (message_count, updated_at). Hence:

- within one process, any number of threads (and store objects) appending to a session get unique, increasing,
  gap-free seqs, and ``get_or_create_session`` creates a session once;
- on chDB, whose data folder only one process can open at a time, an append takes the last seq, message_count and
  row version from what the previous append in this process left (kept per session under the same lock, dropped
  by any other write to the session, by a failed append, and when the last store on the tables closes), and skips
  the read-back below, which only another process can need: an append of new ids is its two inserts;
- across processes (only possible with a ClickHouse server; chDB lets one process open a data folder), appends to
  one session must not overlap in time: one writer process per session at a time. A session may move between
  processes (each append re-reads the last seq), but two processes appending to one session at the same moment
  can write the same seq. Then exactly one of them wins and the other removes what it wrote and raises
  IntegrityError: every insert carries a random ``writer`` id, and after inserting, a writer reads back the rows at
  its seqs; the row in the part with the lowest ``_block_number`` wins. MergeTree numbers a table's parts in the
  order they become visible, so a writer that found no earlier row at its seqs can never lose to one found later.
  Reads pick the same winner (``LIMIT 1 BY seq``), so no read shows two messages at one seq, not even before the
  loser's delete. The block number is kept per row through merges (``enable_block_number_column``), which needs a
  ClickHouse release that has that table setting; the order holds on one server's MergeTree, the engine these
  tables are created with.

Removing messages (``pop_message``, ``truncate``, ``clear_messages``) takes the same per-session lock. One read finds
the session and the seqs to remove; then a new session version is inserted (``message_count`` = the newest seq
kept, ``updated_at`` moved) and one DELETE removes exactly the seqs that read found (every row at them, a
collision's leftovers too). The next append numbers from the stored messages, so it takes the freed seq, and a
removed id can be added again. Hence, within one process, concurrent pops each get a different message and
removals and appends never interleave. Across processes nothing serialises them (no transactions, no row locks),
so removals, like appends, need one writer process per session at a time: two processes popping one session at
the same moment can both return the same message (it is removed once and ``message_count`` stays right); two
truncates at the same moment can both count the same messages; a removal overlapping another process's append can
leave a gap in the seqs (the append keeps the seq it was given; the removed seq below it is not reused). The
capabilities say so (``multi_process=False``, with the reason), and the conformance suite skips those cases.

Without transactions, a crash between the two inserts of an append leaves ``message_count``/``updated_at`` one
step behind until the next append (seqs stay right: they come from the messages). A removal that fails between its
two statements leaves every message in place with ``message_count`` already lowered: retrying it removes the same
messages, and the next append puts the count right anyway. Deletes remove the session row before its messages,
and imports insert messages before the session row, so an interrupted delete or import leaves at worst messages
without a session; they are removed when that id is created or imported again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import clickhouse_connect
from clickhouse_connect.driver import exceptions as ch_errors
from clickhouse_connect.driver.client import Client

from .. import errors
from ..base import (
    BOOL,
    POSITIVE_SECONDS,
    Capabilities,
    ConversationStore,
    Option,
    SessionFilter,
    check_prefix,
    missing_session,
    after_last,
    resolve_options,
)
from ..models import Message, MessageDraft, Session, as_utc, dumps, packed_extra, unpacked_extra, utcnow
from ..url import StoreURL, redacted

__all__ = ["ClickHouseConversationStore", "MIGRATIONS"]

log = logging.getLogger("praison_db")


def _database_name(value: Any) -> str:
    text = str(value)
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,63}", text):
        raise ValueError("use at most 64 letters, digits, underscores or hyphens")
    return text


def _optional_text(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


OPTIONS: dict[str, Option] = {
    "table_prefix": Option(check_prefix, "praison_", "prefix of every table name"),
    "database": Option(lambda v: None if v in (None, "") else _database_name(v), None, "database (default: URL path or 'default')"),
    "fsync": Option(BOOL, True, "create tables that fsync every insert (durable on power loss)"),
    "connect_timeout": Option(POSITIVE_SECONDS, 10.0, "seconds to wait for the server when connecting"),
    # A store's queries are key lookups, appends and synchronous lightweight deletes: 60 s leaves room for a busy
    # merge, and a frozen server costs a caller a minute, not five.
    "query_timeout": Option(POSITIVE_SECONDS, 60.0, "seconds to wait for a query's answer"),
    "verify": Option(BOOL, True, "verify the server's TLS certificate (clickhouses://)"),
    "ca_cert": Option(_optional_text, None, "CA bundle for the server's TLS certificate"),
}
_SERVER_ONLY = ("connect_timeout", "query_timeout", "verify", "ca_cert")

# Settings for every query of our clients. async_insert=0: each insert writes its own part before it returns,
# instead of going through the server's shared insert buffer (chDB turns async inserts on by default).
# lightweight_deletes_sync=2: a DELETE returns only when the rows are gone on every replica, so the next read
# cannot see them.
_CLIENT_SETTINGS = {"async_insert": 0, "lightweight_deletes_sync": 2}

_DT = "DateTime64(6, 'UTC')"  # microseconds, like the models' datetimes, so they round-trip exactly
# The messages table as schema version 1 created it; later versions add columns (writer, then _OPEN_COLUMNS).
_MESSAGE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("session_id", "String"),
    ("seq", "UInt64"),
    ("id", "String"),
    ("role", "LowCardinality(String)"),  # '' for an item without a role (a role is never empty)
    ("content", "Nullable(String)"),  # text content; any other content is kept in extra
    ("name", "Nullable(String)"),
    ("tool_calls", "Nullable(String)"),  # JSON text
    ("tool_call_id", "Nullable(String)"),
    ("metadata", "String"),  # JSON text
    ("created_at", _DT),
)
_SESSION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("session_id", "String"),
    ("user_id", "Nullable(String)"),
    ("agent_id", "Nullable(String)"),
    ("session_type", "LowCardinality(String)"),
    ("name", "Nullable(String)"),
    ("metadata", "String"),  # JSON text
    ("created_at", _DT),
    ("updated_at", _DT),
    ("message_count", "UInt64"),
    ("version", "UInt64"),  # ReplacingMergeTree keeps the row with the highest version
)
# Added by schema version 3, the open message model. Not Nullable (ClickHouse advises against it, and an empty type
# is never valid): '' stands for no type and for no open fields.
_OPEN_COLUMNS: tuple[tuple[str, str], ...] = (
    ("type", "LowCardinality(String)"),
    ("extra", "String"),  # JSON text of models.packed_extra: the item's other fields, and content that is not text
)
_M_NAMES = [c for c, _ in (*_MESSAGE_COLUMNS, *_OPEN_COLUMNS)]
_M_TYPES = [t for _, t in (*_MESSAGE_COLUMNS, *_OPEN_COLUMNS)]
_S_NAMES = [c for c, _ in _SESSION_COLUMNS]
_S_TYPES = [t for _, t in _SESSION_COLUMNS]
_M_SELECT = ", ".join(f"`{c}`" for c in _M_NAMES)
_S_SELECT = ", ".join(_S_NAMES)
_ID_CHUNK = 1000  # session ids per DELETE ... IN (...) statement


# ---- names and schema ----


@dataclass(frozen=True)
class _Tables:
    """Quoted, fully qualified table names. Both parts are validated, so they are safe inside SQL text."""

    database: str
    prefix: str

    def _q(self, name: str) -> str:
        return f"`{self.database}`.`{self.prefix}{name}`"

    @property
    def messages(self) -> str:
        return self._q("messages")

    @property
    def sessions(self) -> str:
        return self._q("sessions")

    @property
    def version(self) -> str:
        return self._q("schema_version")


def _columns_ddl(columns: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"`{name}` {type_}" for name, type_ in columns)


def _engine_settings(fsync: bool) -> str:
    # fsync_after_insert/fsync_part_directory: a returned insert survives power loss, like SQLite's synchronous=FULL.
    return " SETTINGS fsync_after_insert = 1, fsync_part_directory = 1" if fsync else ""


def _v1(client: Client, t: _Tables, fsync: bool) -> None:
    client.command(
        f"CREATE TABLE IF NOT EXISTS {t.messages} ({_columns_ddl(_MESSAGE_COLUMNS)}) "
        f"ENGINE = MergeTree ORDER BY (session_id, seq){_engine_settings(fsync)}"
    )
    client.command(
        f"CREATE TABLE IF NOT EXISTS {t.sessions} ({_columns_ddl(_SESSION_COLUMNS)}) "
        f"ENGINE = ReplacingMergeTree(version) ORDER BY session_id{_engine_settings(fsync)}"
    )


_NO_WRITER = "00000000-0000-0000-0000-000000000000"  # rows written before writer ids existed


def _v2(client: Client, t: _Tables, fsync: bool) -> None:
    """Writer ids and per-row block numbers on messages: what decides between two colliding appends."""
    client.command(f"ALTER TABLE {t.messages} ADD COLUMN IF NOT EXISTS writer UUID DEFAULT '{_NO_WRITER}'")
    client.command(f"ALTER TABLE {t.messages} MODIFY SETTING enable_block_number_column = 1")


def _v3(client: Client, t: _Tables, fsync: bool) -> None:
    """The open message model: an item's type and its other fields. ClickHouse adds a column with a default in the
    table's metadata only, rewriting no part: rows written before read back with no type and no extra."""
    for name, type_ in _OPEN_COLUMNS:
        client.command(f"ALTER TABLE {t.messages} ADD COLUMN IF NOT EXISTS `{name}` {type_} DEFAULT ''")


# MIGRATIONS[i] brings the tables from schema version i to i + 1. Append only; each step must be idempotent.
MIGRATIONS: list[Callable[[Client, _Tables, bool], None]] = [_v1, _v2, _v3]


# ---- locks shared by every store on the same tables in this process ----


class _SessionLocks:
    """A fixed set of locks, one chosen per session id: bounded memory however many sessions there are."""

    def __init__(self, stripes: int = 256) -> None:
        self._locks = [threading.RLock() for _ in range(stripes)]

    def _index(self, session_id: str) -> int:
        return zlib.crc32(session_id.encode("utf-8", "surrogatepass")) % len(self._locks)

    def of(self, session_id: str) -> threading.RLock:
        return self._locks[self._index(session_id)]

    @contextmanager
    def many(self, session_ids: Iterable[str]) -> Iterator[None]:
        # Always in index order, so two callers holding several locks cannot deadlock.
        with ExitStack() as stack:
            for index in sorted({self._index(s) for s in session_ids}):
                stack.enter_context(self._locks[index])
            yield


class _Tails:
    """What this process's last append left of each session (its row, version and newest seq), so that the next
    append to it needs no read. Only for chDB: a chDB data folder is open in one process at a time, and in this
    process every write to a session holds the session's lock and keeps this in step (an append replaces the
    entry, any other write drops it). The entries are dropped when the last store on the tables closes: another
    process may open the folder after that."""

    def __init__(self, size: int = 4096) -> None:
        self._items: OrderedDict[str, _Current] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size
        self._users = 0
        self._generation = 0  # moves on every clear, so an append that read before a clear cannot store after it

    def open(self) -> None:
        with self._lock:
            self._users += 1

    def close(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                self._items.clear()
                self._generation += 1

    def get(self, session_id: str) -> tuple[_Current | None, int]:
        with self._lock:
            return self._items.get(session_id), self._generation

    def put(self, session_id: str, current: _Current, generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                return
            self._items[session_id] = current
            self._items.move_to_end(session_id)
            if len(self._items) > self._size:
                self._items.popitem(last=False)

    def drop(self, session_ids: Iterable[str]) -> None:
        with self._lock:
            for session_id in session_ids:
                self._items.pop(session_id, None)


@dataclass(frozen=True)
class _Shared:
    """What every store on the same tables in this process shares."""

    locks: _SessionLocks
    migration: threading.Lock
    tails: _Tails


_shared: dict[tuple[str, ...], _Shared] = {}
_registry_lock = threading.Lock()


def _shared_for(key: tuple[str, ...]) -> _Shared:
    with _registry_lock:
        return _shared.setdefault(key, _Shared(_SessionLocks(), threading.Lock(), _Tails()))


# ---- rows <-> models ----


def _micros(moment: datetime) -> int:
    delta = moment.astimezone(timezone.utc) - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _next_version(previous: int, now: datetime) -> int:
    # Time-based, so a re-created session's rows outrank any leftover of a deleted one; +1 keeps it increasing
    # when the clock stands still or steps back.
    return max(previous + 1, _micros(now))


def _session_from_row(row: Sequence[Any]) -> Session:
    return Session.trusted(
        session_id=row[0],
        user_id=row[1],
        agent_id=row[2],
        session_type=row[3],
        name=row[4],
        metadata=json.loads(row[5]) if row[5] else {},
        created_at=as_utc(row[6]),
        updated_at=as_utc(row[7]),
        message_count=int(row[8]),
    )


def _session_row(s: Session, version: int) -> list[Any]:
    return [
        s.session_id,
        s.user_id,
        s.agent_id,
        s.session_type,
        s.name,
        dumps(s.metadata),
        s.created_at,
        s.updated_at,
        s.message_count,
        version,
    ]


def _message_from_row(row: Sequence[Any]) -> Message:
    content, extra = unpacked_extra(row[4], json.loads(row[11]) if row[11] else None)
    return Message.trusted(
        id=row[2],
        session_id=row[0],
        seq=int(row[1]),
        role=row[3] or None,
        content=content,
        type=row[10] or None,
        name=row[5],
        tool_calls=json.loads(row[6]) if row[6] is not None else None,
        tool_call_id=row[7],
        metadata=json.loads(row[8]) if row[8] else {},
        extra=extra,
        created_at=as_utc(row[9]),
    )


def _packed(message: Message) -> str:
    packed = packed_extra(message)
    return dumps(packed) if packed else ""


def _message_columns(messages: Sequence[Message]) -> list[list[Any]]:
    """Column-oriented insert data: one list per column, no per-row tuples for large imports."""
    return [
        [m.session_id for m in messages],
        [m.seq for m in messages],
        [m.id for m in messages],
        [m.role or "" for m in messages],
        [m.content if m.content is None or isinstance(m.content, str) else None for m in messages],
        [m.name for m in messages],
        [None if m.tool_calls is None else dumps(m.tool_calls) for m in messages],
        [m.tool_call_id for m in messages],
        [dumps(m.metadata) if m.metadata else "{}" for m in messages],  # most are empty: skip the encoder
        [m.created_at for m in messages],
        [m.type or "" for m in messages],
        [_packed(m) for m in messages],
    ]


@dataclass(frozen=True)
class _Current:
    """The newest version of a session row, plus the last stored seq of its messages when asked for."""

    session: Session
    version: int
    last_seq: int


# ---- connecting ----


@dataclass(frozen=True)
class _Location:
    embedded: bool
    folder: str | None  # chDB data folder; None = in memory (embedded) or a server
    where: str  # for messages, never with a password
    lock_key: tuple[str, ...]


def _chdb_folder(url: StoreURL) -> str | None:
    if url.host not in (None, "", "memory") or url.port is not None:
        raise errors.ConfigError(
            "chdb URLs are chdb:///absolute/folder (data on disk) or chdb:// (in memory); "
            f"{url.render()} names a host"
        )
    path = url.path
    if url.host == "memory" or path in ("", "/"):
        return None
    return os.path.realpath(path)  # chDB compares folders literally: one spelling per folder


def _open_chdb(folder: str | None) -> Client:
    try:
        import chdb  # noqa: F401  (imported here so clickhouse:// works without the chdb package)
    except ModuleNotFoundError as e:
        raise errors.ConfigError("chdb:// needs the chdb package: pip install 'praison-db[chdb]'") from e
    dsn = f"chdb://{folder}" if folder else "chdb://memory"
    try:
        return clickhouse_connect.get_client(dsn=dsn, tz_mode="aware", settings=dict(_CLIENT_SETTINGS))
    except ch_errors.ProgrammingError as e:
        text = str(e)
        here = folder or "in-memory chDB"
        match = re.search(r"already initialized with path '([^']*)'", text)
        if match:
            other = match.group(1) or "another folder"
            raise errors.ConfigError(
                f"chDB runs one engine per process and it is already open on {other}; close the stores on it "
                f"before opening {here}, or keep both in one folder with different ?table_prefix="
            ) from e
        raise errors.StoreUnavailable(
            f"could not open the chDB data folder {here}: is another process using it? chDB lets one process "
            "open a data folder at a time; use a ClickHouse server to share data between processes"
        ) from e


def _open_server(url: StoreURL, opts: dict[str, Any]) -> Client:
    if len(url.hosts) > 1:
        raise errors.ConfigError(f"{url.render()}: a ClickHouse URL names one server")
    secure = url.scheme == "clickhouses"
    kwargs: dict[str, Any] = {
        "host": url.host or "localhost",
        "port": url.port or (8443 if secure else 8123),
        "username": url.username or "default",
        "password": url.password or "",
        "secure": secure,
        "verify": opts["verify"],
        "connect_timeout": opts["connect_timeout"],
        "send_receive_timeout": opts["query_timeout"],
        "tz_mode": "aware",
        "settings": dict(_CLIENT_SETTINGS),
        # No HTTP session: a ClickHouse session serves one query at a time, and threads share this client.
        "autogenerate_session_id": False,
    }
    if opts["ca_cert"]:
        kwargs["ca_cert"] = opts["ca_cert"]
    return clickhouse_connect.get_client(**kwargs)


# ---- errors ----

_CREDENTIALS = {192, 193, 194, 195, 516}  # UNKNOWN_USER, WRONG_PASSWORD, REQUIRED_PASSWORD, IP_ADDRESS_NOT_ALLOWED, AUTHENTICATION_FAILED
_UNKNOWN_DATABASE = 81
_UNKNOWN_TABLE = 60


def _classify(error: Exception, where: str, password: str | None) -> errors.Error | None:
    """A praison_db error for a clickhouse-connect/chDB error; one line, no password."""
    if isinstance(error, errors.Error):
        return error
    if not isinstance(error, (ch_errors.ClickHouseError, OSError)):
        return None
    detail = redacted(error, password)
    code = getattr(error, "code", None)
    if code in _CREDENTIALS:
        return errors.ConfigError(f"{where}: the server refused the credentials; check the user and password in the URL")
    if code == _UNKNOWN_DATABASE:
        return errors.ConfigError(f"{where}: the database does not exist; create it or fix the URL ({detail})")
    if code == _UNKNOWN_TABLE:
        return errors.SchemaError(f"{where}: the tables are missing (dropped while open?); reopen the store to create them ({detail})")
    if isinstance(error, (ch_errors.OperationalError, OSError)):
        return errors.StoreUnavailable(f"{where} is unavailable: {detail}")
    return errors.Error(f"{where}: ClickHouse error: {detail}")


# ---- the store ----

_CAPABILITIES = Capabilities(
    transactions=False,
    multi_process=False,
    reason=(
        "ClickHouse has no transactions or unique keys: seqs, get_or_create and removals are serialised by a lock "
        "inside one process, so of two processes appending to one session at the same moment one can lose (it stores "
        "nothing and raises IntegrityError), and two processes popping one session at the same moment can both "
        "return the same message; chDB also lets only one process open a data folder"
    ),
)


class ClickHouseConversationStore(ConversationStore):
    """ConversationStore on ClickHouse (server over HTTP(S), or embedded chDB), append-only.

    Seqs are unique, increasing and gap-free for any number of threads in one process; across processes, one
    writer per session at a time (see the module docstring). Sessions are versioned rows read with FINAL.
    """

    OPTIONS = OPTIONS
    capabilities = _CAPABILITIES

    def __init__(self, url: StoreURL, **options: Any) -> None:
        opts, _ = resolve_options(f"{url.scheme}://", OPTIONS, options)
        embedded = url.scheme == "chdb"
        if embedded:
            stray = sorted(set(options) & set(_SERVER_ONLY))
            if stray:
                raise errors.ConfigError(f"option(s) {', '.join(stray)} apply to clickhouse:// servers, not to chdb://")
        path_db = "" if embedded else url.path.strip("/")
        if path_db and opts["database"] and path_db != opts["database"]:
            raise errors.ConfigError(f"{url.render()} names database {path_db!r} and the database option {opts['database']!r}; give one")
        try:
            database = _database_name(opts["database"] or path_db or "default")
        except ValueError as e:
            raise errors.ConfigError(f"database name in {url.render()} is invalid: {e}") from None

        self.url = url.render()
        self._password = url.password
        self._tables = _Tables(database, opts["table_prefix"])
        if embedded:
            folder = _chdb_folder(url)
            self._location = _Location(True, folder, f"chDB at {folder or 'memory'}", ("chdb", folder or ":memory:", database, self._tables.prefix))
            if folder is None:
                # The in-memory engine is gone when the last store on it closes.
                self.capabilities = Capabilities(  # type: ignore[misc]
                    transactions=False, multi_process=False, persistent=False, reason=_CAPABILITIES.reason + "; chdb:// keeps data in memory"
                )
        else:
            host = f"{url.host or 'localhost'}:{url.port or ''}"
            self._location = _Location(False, None, f"ClickHouse at {self.url}", (url.scheme, host, database, self._tables.prefix))
        shared = _shared_for(self._location.lock_key)
        self._locks, migration_lock = shared.locks, shared.migration
        # Servers can have other processes writing: every append reads the session and settles (see _settle).
        self._tails: _Tails | None = shared.tails if embedded else None
        self._tails_user = self._tails  # what close() releases

        try:
            self._client = _open_chdb(self._location.folder) if embedded else _open_server(url, opts)
        except errors.Error:
            raise
        except Exception as e:
            raise (self._translate_error(e) or e) from e
        try:
            with migration_lock:
                self._prepare(opts["fsync"])
        except Exception as e:
            self._client.close()
            if isinstance(e, errors.Error):
                raise
            raise (self._translate_error(e) or e) from e
        if self._tails_user is not None:
            self._tails_user.open()

    @classmethod
    def from_url(cls, url: StoreURL, **options: Any) -> ClickHouseConversationStore:
        """Open the store for a ``clickhouse://``, ``clickhouses://`` or ``chdb://`` URL (options: module docstring)."""
        return cls(url, **{**url.query, **options})

    # ---- plumbing ----

    def _translate_error(self, error: Exception) -> errors.Error | None:
        return _classify(error, self._location.where if hasattr(self, "_location") else self.url, self._password)

    def _close(self) -> None:
        if self._tails_user is not None:
            self._tails_user.close()
        self._client.close()

    def _forget(self, session_ids: Iterable[str]) -> None:
        """Called, with the sessions' locks held, by every write to them other than an append."""
        if self._tails is not None:
            self._tails.drop(session_ids)

    def _server_version(self) -> str | None:
        return str(self._client.server_version)

    def _schema_version(self) -> tuple[int, int] | None:
        return int(self._rows(f"SELECT max(version) FROM {self._tables.version}")[0][0]), len(MIGRATIONS)

    def _rows(self, sql: str, **parameters: Any) -> list[Sequence[Any]]:
        return list(self._client.query(sql, parameters=parameters).result_rows)

    def _command(self, sql: str, **parameters: Any) -> None:
        self._client.command(sql, parameters=parameters)

    def _insert_messages(self, messages: Sequence[Message], writer: uuid.UUID) -> None:
        t = self._tables
        self._client.insert(
            f"{t.prefix}messages",
            [*_message_columns(messages), [writer] * len(messages)],
            database=t.database,
            column_names=[*_M_NAMES, "writer"],
            column_type_names=[*_M_TYPES, "UUID"],  # known types: no DESCRIBE TABLE round trip per insert
            column_oriented=True,
        )

    def _insert_session_version(self, session: Session, version: int) -> None:
        t = self._tables
        self._client.insert(
            f"{t.prefix}sessions",
            [_session_row(session, version)],
            database=t.database,
            column_names=_S_NAMES,
            column_type_names=_S_TYPES,
        )

    def _prepare(self, fsync: bool) -> None:
        """Create the database (chDB only) and bring the tables to the latest schema version."""
        t = self._tables
        if self._location.embedded:
            self._command(f"CREATE DATABASE IF NOT EXISTS `{t.database}`")
        elif not self._rows("SELECT 1 FROM system.databases WHERE name = {db:String}", db=t.database):
            raise errors.ConfigError(
                f"{self._location.where}: database {t.database!r} does not exist; create it (CREATE DATABASE "
                f"{t.database}) or fix the URL"
            )
        self._command(
            f"CREATE TABLE IF NOT EXISTS {t.version} (version UInt32, applied_at {_DT}) "
            f"ENGINE = MergeTree ORDER BY version{_engine_settings(fsync)}"
        )
        current = int(self._rows(f"SELECT max(version) FROM {t.version}")[0][0])
        if current > len(MIGRATIONS):
            raise errors.SchemaError(
                f"the {t.prefix}* tables in {t.database} are at schema version {current}, newer than this "
                f"praison-db supports ({len(MIGRATIONS)}); upgrade praison-db"
            )
        for index in range(current, len(MIGRATIONS)):
            MIGRATIONS[index](self._client, t, fsync)
            self._client.insert(
                f"{t.prefix}schema_version", [[index + 1, utcnow()]], database=t.database,
                column_names=["version", "applied_at"], column_type_names=["UInt32", _DT],
            )
            log.info("praison_db: created/migrated %s tables %s* to schema version %d", self._location.where, t.prefix, index + 1)

    def _current(self, session_id: str, *, last_seq: bool = False) -> _Current | None:
        """The newest version of a session (FINAL merges the versions at read time), by primary key."""
        t = self._tables
        # The newest seq by reading the primary key backwards (one granule), not max() over the whole session.
        newest = f"SELECT seq FROM {t.messages} WHERE session_id = {{sid:String}} ORDER BY seq DESC LIMIT 1"
        extra = f", ifNull(({newest}), 0)" if last_seq else ", 0"
        rows = self._rows(f"SELECT {_S_SELECT}{extra} FROM {t.sessions} FINAL WHERE session_id = {{sid:String}}", sid=session_id)
        if not rows:
            return None
        row = rows[0]
        return _Current(_session_from_row(row), int(row[9]), int(row[10]))

    def _orphans_removed(self, session_id: str) -> None:
        """Delete messages left without a session by an interrupted delete or import (normally none)."""
        t = self._tables
        if int(self._rows(f"SELECT count() FROM {t.messages} WHERE session_id = {{sid:String}}", sid=session_id)[0][0]):
            log.warning("praison_db: removing messages left behind for session %r in %s", session_id, self._location.where)
            self._command(f"DELETE FROM {t.messages} WHERE session_id = {{sid:String}}", sid=session_id)

    def _delete_ids(self, session_ids: list[str]) -> None:
        # The session rows go first: once they are gone no read shows the session, whatever happens next.
        t = self._tables
        self._forget(session_ids)
        self._command(f"DELETE FROM {t.sessions} WHERE session_id IN {{ids:Array(String)}}", ids=session_ids)
        self._command(f"DELETE FROM {t.messages} WHERE session_id IN {{ids:Array(String)}}", ids=session_ids)

    # ---- sessions ----

    def _create(self, session: Session) -> None:
        """Insert a session the caller, holding its lock, has found missing."""
        self._forget([session.session_id])
        self._orphans_removed(session.session_id)
        self._insert_session_version(session, _next_version(0, utcnow()))

    def _insert_session(self, session: Session) -> bool:
        with self._locks.of(session.session_id):
            if self._current(session.session_id) is not None:
                return False
            self._create(session)
            return True

    def _get_or_insert_session(self, session: Session) -> Session:
        # Race-free between threads of this process (the lock); not between processes (see capabilities).
        with self._locks.of(session.session_id):
            current = self._current(session.session_id)
            if current is not None:
                return current.session
            self._create(session)
            return session

    def _get_session(self, session_id: str) -> Session | None:
        current = self._current(session_id)
        return current.session if current else None

    def _list_sessions(self, flt: SessionFilter, limit: int, after: tuple[datetime, str] | None) -> list[Session]:
        # FINAL merges versions before WHERE is applied to non-key columns, so an old version whose updated_at
        # matched the cursor or a filter is never returned.
        conditions: list[str] = []
        params: dict[str, Any] = {"n": limit}
        if flt.user_id is not None:
            conditions.append("user_id = {user:String}")
            params["user"] = flt.user_id
        if flt.agent_id is not None:
            conditions.append("agent_id = {agent:String}")
            params["agent"] = flt.agent_id
        if flt.session_type is not None:
            conditions.append("session_type = {stype:String}")
            params["stype"] = flt.session_type
        if after is not None:
            conditions.append(f"(updated_at < {{ts:{_DT}}} OR (updated_at = {{ts:{_DT}}} AND session_id < {{sid:String}}))")
            params["ts"], params["sid"] = after
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        sql = (
            f"SELECT {_S_SELECT} FROM {self._tables.sessions} FINAL {where} "
            "ORDER BY updated_at DESC, session_id DESC LIMIT {n:UInt32}"
        )
        return [_session_from_row(r) for r in self._rows(sql, **params)]

    def _update_session(self, session_id: str, changes: dict[str, Any], now: datetime) -> Session | None:
        with self._locks.of(session_id):
            current = self._current(session_id)
            if current is None:
                return None
            self._forget([session_id])
            # max(): an imported session can be dated ahead of this clock; activity never moves it back.
            updated = current.session.model_copy(update={**changes, "updated_at": max(now, current.session.updated_at)})
            self._insert_session_version(updated, _next_version(current.version, now))
            return updated

    def _delete_session(self, session_id: str, user_id: str | None) -> bool:
        with self._locks.of(session_id):
            current = self._current(session_id)
            if current is None or (user_id is not None and current.session.user_id != user_id):
                return False
            self._delete_ids([session_id])
            return True

    def _delete_sessions(self, *, user_id: str | None = None, idle_before: datetime | None = None) -> int:
        t = self._tables
        params: dict[str, Any]
        if user_id is not None:
            condition, params = "user_id = {user:String}", {"user": user_id}
        else:
            condition, params = f"updated_at < {{before:{_DT}}}", {"before": idle_before}
        candidates = [r[0] for r in self._rows(f"SELECT session_id FROM {t.sessions} FINAL WHERE {condition}", **params)]
        deleted = 0
        for start in range(0, len(candidates), _ID_CHUNK):
            chunk = candidates[start : start + _ID_CHUNK]
            with self._locks.many(chunk):
                # Checked again under the locks: an append in between may have made a session active again.
                doomed = [
                    r[0]
                    for r in self._rows(
                        f"SELECT session_id FROM {t.sessions} FINAL WHERE session_id IN {{ids:Array(String)}} AND {condition}",
                        ids=chunk,
                        **params,
                    )
                ]
                if doomed:
                    self._delete_ids(doomed)
                    deleted += len(doomed)
        return deleted

    # ---- messages ----

    def _append(self, session_id: str, drafts: list[MessageDraft], now: datetime) -> list[Message]:
        with self._locks.of(session_id):
            tails = self._tails
            if tails is None:
                return self._append_locked(session_id, drafts, now, None)[0]
            cached, generation = tails.get(session_id)
            try:
                messages, left = self._append_locked(session_id, drafts, now, cached)
            except BaseException:
                tails.drop([session_id])  # whatever this append left in the tables, the next one reads it
                raise
            if left is not None:
                tails.put(session_id, left, generation)
            return messages

    def _append_locked(
        self, session_id: str, drafts: list[MessageDraft], now: datetime, current: _Current | None
    ) -> tuple[list[Message], _Current | None]:
        """The append, with the session's lock held: its messages, and what it left of the session (None when it
        stored nothing). ``current`` is what the last append in this process left (chDB only), else it is read."""
        t = self._tables
        if current is None:
            current = self._current(session_id, last_seq=True)
            if current is None:
                raise missing_session(session_id)
        # No unique key in ClickHouse: under the session's lock, ids the session already holds are looked up.
        # The lookup reads the session's id column, so it is skipped when every id is a fresh random one.
        asked = [d.id for d in drafts if not d.generated]
        known = {
            m.id: m
            for m in map(
                _message_from_row,
                self._rows(
                    f"SELECT {_M_SELECT} FROM {t.messages} WHERE session_id = {{sid:String}} AND id IN {{ids:Array(String)}}",
                    sid=session_id,
                    ids=asked,
                )
                if asked
                else (),
            )
        }
        drafts_new = [d for d in drafts if d.id not in known]
        if not drafts_new:
            return [known[d.id] for d in drafts], None  # type: ignore[index]
        # The messages are the truth for seqs (not message_count, which a crash could leave behind).
        first = current.last_seq + 1
        stored = [d.stamp(session_id, first + i, now) for i, d in enumerate(drafts_new)]
        last = stored[-1].seq
        writer = uuid.uuid4()
        self._insert_messages(stored, writer)
        if self._tails is None:
            # Another process may have taken these seqs meanwhile. On chDB none can: its data folder is open in
            # this process only, and here the session's lock keeps other appenders out.
            self._settle(session_id, first, last, writer)
        session = current.session.model_copy(update={"message_count": last, "updated_at": max(now, current.session.updated_at)})
        version = _next_version(current.version, now)
        self._insert_session_version(session, version)
        known.update((m.id, m) for m in stored)
        return [known[d.id] for d in drafts], _Current(session, version, last)  # type: ignore[index]

    def _settle(self, session_id: str, first: int, last: int, writer: uuid.UUID) -> None:
        """After inserting seqs first..last as ``writer``: keep them if no other writer's row at those seqs became
        visible earlier (a lower block number); else delete ours and raise IntegrityError. No unique keys in
        ClickHouse: this is how a collision with another process is decided, the same way by both writers."""
        t = self._tables
        scope = "session_id = {sid:String} AND seq BETWEEN {a:UInt64} AND {b:UInt64}"
        rows = self._rows(
            f"SELECT writer, min(_block_number) FROM {t.messages} WHERE {scope} GROUP BY writer", sid=session_id, a=first, b=last
        )
        blocks = {w: int(b) for w, b in rows}
        mine = blocks.pop(writer, None)
        if mine is not None and all(b > mine for b in blocks.values()):
            return
        # Lost (or our rows were deleted meanwhile by another process): leave nothing behind.
        self._command(f"DELETE FROM {t.messages} WHERE {scope} AND writer = {{w:UUID}}", sid=session_id, a=first, b=last, w=writer)
        raise errors.IntegrityError(
            f"seqs {first}..{last} of session {session_id!r} were taken by another process appending at the same time; "
            "nothing was stored, retry the append (ClickHouse stores need one writer process per session)"
        )

    def _get_messages(self, session_id: str, limit: int | None, before_seq: int | None, after_seq: int | None) -> list[Message]:
        if before_seq is not None and before_seq <= 1:
            return []  # no seq is below 1; also keeps the parameter inside UInt64
        conditions = ["session_id = {sid:String}"]
        params: dict[str, Any] = {"sid": session_id}
        if before_seq is not None:
            conditions.append("seq < {before:UInt64}")
            params["before"] = min(before_seq, 2**63)
        if after_seq is not None and after_seq > 0:
            if after_seq >= 2**63:
                return []
            conditions.append("seq > {after:UInt64}")
            params["after"] = after_seq
        sql = f"SELECT {_M_SELECT} FROM {self._tables.messages} WHERE {' AND '.join(conditions)}"
        # One row per seq: where two writers collided, the winner (lowest block number; see _settle), also while
        # the loser's rows are still there.
        if limit is None:
            return [_message_from_row(r) for r in self._rows(sql + " ORDER BY seq, _block_number LIMIT 1 BY seq", **params)]
        # Newest N: read the primary key backwards and stop after N rows, then put them in chronological order.
        params["n"] = min(limit, 2**63)  # any larger limit means "all", and must still fit UInt64
        rows = self._rows(sql + " ORDER BY seq DESC, _block_number LIMIT 1 BY seq LIMIT {n:UInt64}", **params)
        return [_message_from_row(r) for r in reversed(rows)]

    def _count_messages(self, session_id: str) -> int:
        current = self._current(session_id)
        return current.session.message_count if current else 0

    def _pop(self, session_id: str, now: datetime) -> Message | None:
        with self._locks.of(session_id):
            current = self._current(session_id)
            newest = self._get_messages(session_id, 1, None, None) if current is not None else []
            if current is None or not newest:
                return None
            popped = newest[0]
            self._remove(current, popped.seq, popped.seq, popped.seq - 1, now)
            return popped

    def _truncate(self, session_id: str, after_seq: int, now: datetime) -> int:
        t = self._tables
        scope = f"FROM {t.messages} WHERE session_id = {{sid:String}} AND seq"
        doomed = f"SELECT (uniqExact(seq), max(seq)) {scope} > {{after:UInt64}}"
        kept = f"SELECT seq {scope} <= {{after:UInt64}} ORDER BY seq DESC LIMIT 1"
        with self._locks.of(session_id):
            rows = self._rows(
                f"SELECT {_S_SELECT}, ({doomed}), ifNull(({kept}), 0) FROM {t.sessions} FINAL WHERE session_id = {{sid:String}}",
                sid=session_id,
                after=after_seq,
            )
            if not rows:
                return 0
            row = rows[0]
            (count, last), last_kept = row[10], int(row[11])
            if not count:
                return 0
            self._remove(_Current(_session_from_row(row), int(row[9]), int(last)), after_seq + 1, int(last), last_kept, now)
            return int(count)

    def _remove(self, current: _Current, first: int, last: int, last_kept: int, now: datetime) -> None:
        """Remove the messages at seqs first..last of a session whose lock is held; ``last_kept`` is the newest seq
        left, the new message_count.

        The new session version goes first: if the DELETE then fails, the messages are all still there and a retry
        removes the same ones (the other order would have a retried pop remove a second message). The next append
        numbers from the messages, so it takes the freed seq; the removed ids are free too (deleted rows are not
        found by its id lookup). Only the seqs this call read are deleted, never what it did not count.
        """
        sid = current.session.session_id
        self._forget([sid])
        session = current.session.model_copy(update={"message_count": last_kept, "updated_at": max(now, current.session.updated_at)})
        self._insert_session_version(session, _next_version(current.version, now))
        self._command(
            f"DELETE FROM {self._tables.messages} WHERE session_id = {{sid:String}} AND seq BETWEEN {{a:UInt64}} AND {{b:UInt64}}",
            sid=sid,
            a=first,
            b=last,
        )

    def _import_messages(self, session_id: str, messages: list[Message], updated_at: datetime) -> int:
        t = self._tables
        with self._locks.of(session_id):
            current = self._current(session_id, last_seq=True)
            if current is None:
                raise missing_session(session_id)
            self._forget([session_id])
            last = current.last_seq
            fresh = messages
            if messages and messages[0].seq <= last:
                # Only a resumed or repeated import overlaps what is stored: look its ids up (no unique keys here).
                known = {
                    row[0]
                    for row in self._rows(
                        f"SELECT id FROM {t.messages} WHERE session_id = {{sid:String}} AND id IN {{ids:Array(String)}}",
                        sid=session_id,
                        ids=[m.id for m in messages],
                    )
                }
                fresh = [m for m in messages if m.id not in known]
            last = after_last(session_id, fresh, last)
            if fresh:
                writer = uuid.uuid4()
                self._insert_messages(fresh, writer)
                self._settle(session_id, fresh[0].seq, last, writer)
            if fresh or updated_at > current.session.updated_at:
                session = current.session.model_copy(
                    update={
                        "message_count": max(last, current.session.message_count),
                        "updated_at": max(updated_at, current.session.updated_at),
                    }
                )
                self._insert_session_version(session, _next_version(current.version, utcnow()))
        return len(fresh)

    def _import(self, session: Session, messages: list[Message]) -> bool:
        with self._locks.of(session.session_id):
            if self._current(session.session_id) is not None:
                return False
            self._forget([session.session_id])
            self._orphans_removed(session.session_id)
            # Messages first, in one batch insert; the session row last, so the session appears complete or not at all.
            if messages:
                self._insert_messages(messages, uuid.uuid4())
            self._insert_session_version(session, _next_version(0, utcnow()))
        return True
