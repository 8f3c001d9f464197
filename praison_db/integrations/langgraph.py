"""LangGraph checkpoints in praison_db: :class:`PraisonCheckpointSaver`, a ``BaseCheckpointSaver`` over a praison_db URL.

    from praison_db.integrations.langgraph import PraisonCheckpointSaver

    with PraisonCheckpointSaver("postgresql://ai:ai@localhost:5432/ai") as saver:
        graph = builder.compile(checkpointer=saver)
        graph.invoke({"messages": [...]}, {"configurable": {"thread_id": "user-123"}})

URLs: every SQL URL praison_db takes (``sqlite:///file.db``, ``postgresql://``, ``mysql://``, ``mariadb://`` and their
aliases), with the same options, driver parameters, timeouts and error translation as praison_db's SQL stores
(``table_prefix``, ``pool_size``, ``connect_timeout``, ``read_timeout``, ``auto_upgrade``, ...); and ``memory://``
(in-process, gone with the process; ``memory://name`` is shared by every saver of that name in the process). Any
other scheme is a ConfigError. Nothing is opened until the first call (or ``setup()``).

Tables, of its own and beside praison_db's (never the conversation or state tables), named from ``table_prefix``:

- ``<prefix>checkpoints``: one row per (thread_id, checkpoint_ns, checkpoint_id): the parent id, the checkpoint
  without its channel values (the saver's ``serde``: type and bytes), its metadata as JSON text (what ``list``
  filters on) and the metadata's ``run_id`` (indexed, for ``delete_for_runs``);
- ``<prefix>checkpoint_blobs``: channel values, one row per (thread_id, checkpoint_ns, channel, version). A
  checkpoint stores only the channels it changed (``new_versions``) and reads the others at the versions it names, so
  an unchanged message list is not written again at every step;
- ``<prefix>checkpoint_writes``: pending writes, one row per (thread_id, checkpoint_ns, checkpoint_id, task_id, idx);
- ``<prefix>checkpoint_schema_version``: the migrations applied (``MIGRATIONS``, append-only, applied under the
  same cross-process lock as praison_db's own schema).

Guarantees:

- ``put`` is one transaction (the new blobs, insert-if-absent, then the checkpoint row, an upsert): a reader sees a
  checkpoint with every value it names, or not at all.
- ``put_writes`` is one transaction. Per (task_id, idx): a regular write is insert-if-absent, so a retried task
  stores nothing twice; a special one (error, interrupt, scheduled, resume: negative idx) overwrites.
- ``get_tuple`` without a checkpoint_id reads the newest checkpoint with ``ORDER BY checkpoint_id DESC LIMIT 1`` on
  the primary key; its values and pending writes come in one more read, on the blobs' and writes' keys.
- On PostgreSQL a ``put`` (and a ``put_writes`` of one kind) is a single autocommitted statement: one round trip.
- ``list`` returns newest first and reads a page of rows at a time, never a whole thread. A metadata ``filter``
  matches when each value equals the stored one as JSON (numbers by value, ``True`` is not ``1``, a missing key
  equals None); the database narrows the rows where it can, and every row is checked exactly before it is returned.
- Deadlocks and lock waits are retried as in praison_db's stores; every failure is a praison_db error (no driver
  exception, no password).

Async: ``aget_tuple``, ``alist``, ``aput``, ... run the very same code on the async drivers (aiosqlite, psycopg's
AsyncConnection, aiomysql) in a bridge greenlet, the machinery of ``praison_db.aio``: the event loop serves other
tasks while the database works. The async face opens its own connection pool on first use, bound to that event loop;
close it with ``await saver.aclose()`` (or ``async with``). ``memory://`` runs in place, as it does no I/O.
"""

from __future__ import annotations

import asyncio
import bisect
import builtins
import json
import math
import random
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import ConfigError, Error, InputError, SchemaError, StoreClosed

try:
    from langchain_core.runnables import RunnableConfig
    from langgraph.checkpoint.base import (
        WRITES_IDX_MAP,
        BaseCheckpointSaver,
        ChannelVersions,
        Checkpoint,
        CheckpointMetadata,
        CheckpointTuple,
        PendingWrite,
        get_serializable_checkpoint_metadata,
        writes_sort_key,
    )
    from langgraph.checkpoint.serde.base import SerializerProtocol
except ModuleNotFoundError as e:  # pragma: no cover - the extra is missing
    raise ConfigError(
        f"praison_db.integrations.langgraph needs the {e.name} package: pip install 'praison-db[langgraph]'"
    ) from e

from ..base import resolve_options, untranslated
from ..bridge import greenlet_spawn
from ..models import dumps, utcnow
from ..registry import entry_for
from ..url import StoreURL, parse_url

__all__ = ["PraisonCheckpointSaver", "MIGRATIONS", "SUPPORTED_SCHEMES"]

T = TypeVar("T")

SUPPORTED_SCHEMES = "sqlite://, postgresql://, mysql://, mariadb:// (and their aliases) and memory://"
PRUNE_STRATEGIES = ("keep_latest", "delete")

# Longest ids, in characters. MySQL caps a primary key at 3,072 bytes (4 a character in utf8mb4): the writes table's
# key (thread, namespace, checkpoint, task, idx) is 255 + 255 + 128 + 100 characters and an integer, under it.
MAX_THREAD_ID = 255
MAX_NAMESPACE = 255
MAX_CHECKPOINT_ID = 128
MAX_TASK_ID = 100
MAX_CHANNEL = 150
MAX_VERSION = 64
MAX_RUN_ID = 255

_PAGE = 100  # checkpoints read per round trip by list()
_IN_CHUNK = 500  # values bound in one IN list
EMPTY = "empty"  # blob type of a channel that has a version but no value (LangGraph's convention)

# A stored write: (task_id, idx, channel, type, blob, task_path).
Write = tuple[str, int, str, str, bytes, str]
Decode = Callable[[tuple[str, bytes]], Any]


# ---- what the storages take and give ----


@dataclass(frozen=True)
class _Put:
    """One checkpoint, serialized: its row and the blobs of the channels it changed."""

    thread_id: str
    ns: str
    checkpoint_id: str
    parent_id: str | None
    type: str
    data: bytes
    metadata: str
    run_id: str | None
    blobs: tuple[tuple[str, str, str, bytes | None], ...]  # (channel, version, type, blob)


@dataclass(frozen=True)
class _Row:
    """One stored checkpoint as read back: decoded checkpoint (no channel values), metadata JSON text, the blobs of the
    versions it names, and its pending writes."""

    thread_id: str
    ns: str
    checkpoint_id: str
    parent_id: str | None
    checkpoint: dict[str, Any]
    metadata: str
    values: dict[str, tuple[str, bytes | None]]
    writes: list[Write]

    @property
    def order(self) -> tuple[str, str, str]:
        return (self.checkpoint_id, self.thread_id, self.ns)


@dataclass(frozen=True)
class _Query:
    """What ``list`` asks for; ``after`` is the order key of the last row of the previous page (newest first)."""

    thread_id: str | None
    ns: str | None
    checkpoint_id: str | None
    before: str | None
    filter: Mapping[str, Any]


def _versions(checkpoint: Mapping[str, Any]) -> dict[str, str]:
    """The (channel -> version) a checkpoint names, versions as the text their blobs are keyed by."""
    return {str(k): str(v) for k, v in (checkpoint.get("channel_versions") or {}).items()}


class _Storage(ABC):
    """The primitives a backend implements, on serialized data. Sync; the async face runs them in a greenlet."""

    native_async = False  # True: opened on an async driver, must run in a bridge greenlet
    finish_when_cancelled = False  # a cancelled call finishes first (threads that cannot be stopped: aiosqlite)

    @abstractmethod
    def put(self, item: _Put) -> None: ...

    @abstractmethod
    def put_writes(self, thread_id: str, ns: str, checkpoint_id: str, writes: list[Write]) -> None:
        """Store ``writes``: those with idx >= 0 if absent, those with idx < 0 over what is there; one transaction."""

    @abstractmethod
    def get(self, thread_id: str, ns: str, checkpoint_id: str | None, decode: Decode) -> _Row | None:
        """The checkpoint, or the newest of (thread_id, ns) when ``checkpoint_id`` is None."""

    @abstractmethod
    def page(self, query: _Query, after: tuple[str, str, str] | None, n: int, decode: Decode) -> list[_Row]:
        """Up to ``n`` checkpoints matching ``query`` (the metadata filter may be applied loosely or not at all: the
        caller checks it), ordered by (checkpoint_id, thread_id, ns) descending, strictly after ``after``."""

    @abstractmethod
    def delete_threads(self, thread_ids: list[str]) -> None: ...

    @abstractmethod
    def delete_runs(self, run_ids: list[str], decode: Decode) -> None:
        """Delete the checkpoints whose metadata run_id is in ``run_ids``, their writes and the blobs only they used."""

    @abstractmethod
    def copy_thread(self, source: str, target: str) -> None: ...

    @abstractmethod
    def keep_latest(self, thread_id: str, decode: Decode) -> None:
        """Delete every checkpoint of the thread but the newest of each namespace, with their writes and the blobs
        only they used; the kept ones lose their (deleted) parent. Refuses a thread that uses a DeltaChannel."""

    def translate(self, error: Exception) -> Error:
        return untranslated("PraisonCheckpointSaver", error, None)

    def close(self) -> None:
        return None


def _delta_refusal(thread_id: str) -> InputError:
    return InputError(
        f"prune(strategy='keep_latest') cannot prune thread {thread_id!r}: it uses a DeltaChannel, whose value is "
        "rebuilt from older checkpoints; use strategy='delete' or leave the thread as it is"
    )


_DELTA_KEYS = ("counters_since_delta_snapshot", "delta_writes_versioned")


def _uses_delta(metadata_text: str) -> bool:
    try:
        metadata = json.loads(metadata_text)
    except ValueError:
        return False
    return isinstance(metadata, dict) and any(k in metadata for k in _DELTA_KEYS)


# ---- memory:// ----


@dataclass
class _Stored:
    parent_id: str | None
    type: str
    data: bytes
    metadata: str
    run_id: str | None


@dataclass
class _MemoryData:
    lock: threading.RLock = field(default_factory=threading.RLock)
    # thread -> namespace -> (checkpoint ids, sorted; checkpoint id -> row)
    checkpoints: dict[str, dict[str, tuple[builtins.list[str], dict[str, _Stored]]]] = field(default_factory=dict)
    blobs: dict[tuple[str, str, str, str], tuple[str, bytes | None]] = field(default_factory=dict)
    writes: dict[tuple[str, str, str], dict[tuple[str, int], Write]] = field(default_factory=dict)


_named: dict[str, _MemoryData] = {}
_named_lock = threading.Lock()


class _MemoryStorage(_Storage):
    """Dicts under one lock: the reference semantics of the primitives."""

    def __init__(self, url: StoreURL) -> None:
        name = (url.host or "") + (url.path or "").strip("/")
        if not name:
            self.d = _MemoryData()
        else:
            with _named_lock:
                self.d = _named.setdefault(name, _MemoryData())

    def put(self, item: _Put) -> None:
        with self.d.lock:
            for channel, version, kind, blob in item.blobs:
                self.d.blobs.setdefault((item.thread_id, item.ns, channel, version), (kind, blob))
            ids, rows = self.d.checkpoints.setdefault(item.thread_id, {}).setdefault(item.ns, ([], {}))
            if item.checkpoint_id not in rows:
                bisect.insort(ids, item.checkpoint_id)
            rows[item.checkpoint_id] = _Stored(item.parent_id, item.type, item.data, item.metadata, item.run_id)

    def put_writes(self, thread_id: str, ns: str, checkpoint_id: str, writes: list[Write]) -> None:
        with self.d.lock:
            stored = self.d.writes.setdefault((thread_id, ns, checkpoint_id), {})
            for w in writes:
                if w[1] < 0 or (w[0], w[1]) not in stored:
                    stored[(w[0], w[1])] = w

    def _row(self, thread_id: str, ns: str, checkpoint_id: str, s: _Stored, decode: Decode) -> _Row:
        checkpoint = decode((s.type, s.data))
        values = {}
        for channel, version in _versions(checkpoint).items():
            blob = self.d.blobs.get((thread_id, ns, channel, version))
            if blob is not None:
                values[channel] = blob
        writes = builtins.list(self.d.writes.get((thread_id, ns, checkpoint_id), {}).values())
        return _Row(thread_id, ns, checkpoint_id, s.parent_id, checkpoint, s.metadata, values, writes)

    def get(self, thread_id: str, ns: str, checkpoint_id: str | None, decode: Decode) -> _Row | None:
        with self.d.lock:
            ids, rows = self.d.checkpoints.get(thread_id, {}).get(ns, ([], {}))
            if checkpoint_id is None:
                checkpoint_id = ids[-1] if ids else None
            stored = rows.get(checkpoint_id) if checkpoint_id is not None else None
            return None if stored is None or checkpoint_id is None else self._row(thread_id, ns, checkpoint_id, stored, decode)

    def page(self, query: _Query, after: tuple[str, str, str] | None, n: int, decode: Decode) -> list[_Row]:
        with self.d.lock:
            threads = [query.thread_id] if query.thread_id is not None else builtins.list(self.d.checkpoints)
            keys: list[tuple[str, str, str]] = []
            for thread_id in threads:
                for ns, (ids, _) in self.d.checkpoints.get(thread_id, {}).items():
                    if query.ns is not None and ns != query.ns:
                        continue
                    for checkpoint_id in ids:
                        if query.checkpoint_id is not None and checkpoint_id != query.checkpoint_id:
                            continue
                        if query.before is not None and checkpoint_id >= query.before:
                            continue
                        key = (checkpoint_id, thread_id, ns)
                        if after is None or key < after:
                            keys.append(key)
            keys.sort(reverse=True)
            return [
                self._row(t, ns, c, self.d.checkpoints[t][ns][1][c], decode) for c, t, ns in keys[:n]
            ]

    def delete_threads(self, thread_ids: list[str]) -> None:
        doomed = set(thread_ids)
        with self.d.lock:
            for thread_id in doomed:
                self.d.checkpoints.pop(thread_id, None)
            for blob_key in [k for k in self.d.blobs if k[0] in doomed]:
                del self.d.blobs[blob_key]
            for write_key in [k for k in self.d.writes if k[0] in doomed]:
                del self.d.writes[write_key]

    def _drop(self, thread_id: str, ns: str, doomed: set[str], decode: Decode) -> None:
        """Delete these checkpoints of (thread, ns) with their writes and the blobs no remaining checkpoint uses."""
        ids, rows = self.d.checkpoints[thread_id][ns]
        freed: set[tuple[str, str]] = set()
        for checkpoint_id in doomed:
            s = rows.pop(checkpoint_id)
            freed.update(_versions(decode((s.type, s.data))).items())
            self.d.writes.pop((thread_id, ns, checkpoint_id), None)
        ids[:] = [i for i in ids if i not in doomed]
        used: set[tuple[str, str]] = set()
        for s in rows.values():
            used.update(_versions(decode((s.type, s.data))).items())
            if s.parent_id in doomed:
                s.parent_id = None
        for channel, version in freed - used:
            self.d.blobs.pop((thread_id, ns, channel, version), None)
        if not ids:
            del self.d.checkpoints[thread_id][ns]

    def delete_runs(self, run_ids: list[str], decode: Decode) -> None:
        wanted = set(run_ids)
        with self.d.lock:
            for thread_id, spaces in builtins.list(self.d.checkpoints.items()):
                for ns, (_, rows) in builtins.list(spaces.items()):
                    doomed = {c for c, s in rows.items() if s.run_id is not None and s.run_id in wanted}
                    if doomed:
                        self._drop(thread_id, ns, doomed, decode)

    def copy_thread(self, source: str, target: str) -> None:
        with self.d.lock:
            for ns, (ids, rows) in builtins.list(self.d.checkpoints.get(source, {}).items()):
                dest_ids, dest_rows = self.d.checkpoints.setdefault(target, {}).setdefault(ns, ([], {}))
                for checkpoint_id in ids:
                    if checkpoint_id not in dest_rows:
                        s = rows[checkpoint_id]
                        dest_rows[checkpoint_id] = _Stored(s.parent_id, s.type, s.data, s.metadata, s.run_id)
                        bisect.insort(dest_ids, checkpoint_id)
            for (t, ns, channel, version), blob in builtins.list(self.d.blobs.items()):
                if t == source:
                    self.d.blobs.setdefault((target, ns, channel, version), blob)
            for (t, ns, checkpoint_id), writes in builtins.list(self.d.writes.items()):
                if t == source:
                    dest = self.d.writes.setdefault((target, ns, checkpoint_id), {})
                    for key, w in writes.items():
                        dest.setdefault(key, w)

    def keep_latest(self, thread_id: str, decode: Decode) -> None:
        with self.d.lock:
            spaces = self.d.checkpoints.get(thread_id, {})
            if any(_uses_delta(s.metadata) for _, rows in spaces.values() for s in rows.values()):
                raise _delta_refusal(thread_id)
            for ns, (ids, _) in builtins.list(spaces.items()):
                if len(ids) > 1:
                    self._drop(thread_id, ns, set(ids[:-1]), decode)


# ---- SQL: SQLite, PostgreSQL, MySQL/MariaDB ----


@dataclass(frozen=True)
class _Tables:
    metadata: Any
    checkpoints: Any
    blobs: Any
    writes: Any
    version: Any


def _build_tables(prefix: str, collation: str) -> _Tables:
    """The checkpoint tables under ``prefix``, with praison_db's column types (exact-match keys, long text)."""
    from sqlalchemy import Column, Index, Integer, LargeBinary, MetaData, String, Table
    from sqlalchemy.dialects import mysql

    from ..backends.sql.schema import _LONG_TEXT, UTCDateTime, _key, _mysql_key

    md = MetaData()

    def key(length: int) -> Any:
        return _key(length).with_variant(_mysql_key(length, collation), "mysql", "mariadb")

    blob = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")  # MySQL's BLOB stops at 64 KB
    args: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mariadb_engine": "InnoDB", "mariadb_charset": "utf8mb4"}
    checkpoints = Table(
        f"{prefix}checkpoints",
        md,
        # The primary key is the index behind "newest of a thread": ORDER BY checkpoint_id DESC LIMIT 1.
        Column("thread_id", key(MAX_THREAD_ID), primary_key=True),
        Column("checkpoint_ns", key(MAX_NAMESPACE), primary_key=True),
        Column("checkpoint_id", key(MAX_CHECKPOINT_ID), primary_key=True),
        Column("parent_checkpoint_id", key(MAX_CHECKPOINT_ID)),
        Column("type", String(64), nullable=False),
        Column("checkpoint", blob, nullable=False),
        Column("metadata", _LONG_TEXT, nullable=False),
        Column("run_id", key(MAX_RUN_ID)),
        Index(f"{prefix}checkpoints_run", "run_id"),
        **args,
    )
    blobs = Table(
        f"{prefix}checkpoint_blobs",
        md,
        Column("thread_id", key(MAX_THREAD_ID), primary_key=True),
        Column("checkpoint_ns", key(MAX_NAMESPACE), primary_key=True),
        Column("channel", key(MAX_CHANNEL), primary_key=True),
        Column("version", key(MAX_VERSION), primary_key=True),
        Column("type", String(64), nullable=False),
        Column("blob", blob),
        **args,
    )
    writes = Table(
        f"{prefix}checkpoint_writes",
        md,
        Column("thread_id", key(MAX_THREAD_ID), primary_key=True),
        Column("checkpoint_ns", key(MAX_NAMESPACE), primary_key=True),
        Column("checkpoint_id", key(MAX_CHECKPOINT_ID), primary_key=True),
        Column("task_id", key(MAX_TASK_ID), primary_key=True),
        Column("idx", Integer, primary_key=True, autoincrement=False),
        Column("channel", _LONG_TEXT, nullable=False),
        Column("type", String(64), nullable=False),
        Column("blob", blob, nullable=False),
        Column("task_path", _LONG_TEXT, nullable=False),
        **args,
    )
    version = Table(
        f"{prefix}checkpoint_schema_version",
        md,
        Column("version", Integer, primary_key=True, autoincrement=False),
        Column("applied_at", UTCDateTime, nullable=False),
        **args,
    )
    return _Tables(md, checkpoints, blobs, writes, version)


def _v1_create(conn: Any, tables: _Tables) -> None:
    tables.metadata.create_all(conn, tables=[tables.checkpoints, tables.blobs, tables.writes], checkfirst=True)


# Append-only: MIGRATIONS[i] brings the checkpoint tables from version i to i + 1. Never edit a released entry.
# Each must be safe to re-run after a crash half-way (DDL is not transactional on MySQL).
MIGRATIONS: list[Callable[[Any, _Tables], None]] = [_v1_create]

_SAFE_KEY = re.compile(r"[A-Za-z0-9_\-]{1,64}\Z")


def _chunks(values: Sequence[T], size: int = _IN_CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


class _SqlStorage(_Storage):
    """The primitives over SQLAlchemy Core, on a praison_db SqlDatabase (its engine, transactions and errors)."""

    def __init__(self, database: Any, auto_upgrade: bool) -> None:
        from sqlalchemy import bindparam, literal_column, null, select, union_all

        from ..backends.sql.engine import _insert_ignore, _upsert
        from ..backends.sql.schema import _mysql_collation

        self.db = database
        self.dialect: str = database.dialect
        self.native_async = database.asynchronous
        self.finish_when_cancelled = self.dialect == "sqlite"
        with database.read() as conn:
            collation = _mysql_collation(conn)
        self.t = _build_tables(database.prefix, collation)
        self._prepare(auto_upgrade)
        c, b, w = self.t.checkpoints, self.t.blobs, self.t.writes
        self.columns = (c.c.thread_id, c.c.checkpoint_ns, c.c.checkpoint_id, c.c.parent_checkpoint_id, c.c.type, c.c.checkpoint, c.c.metadata)
        where = (c.c.thread_id == bindparam("t"), c.c.checkpoint_ns == bindparam("ns"))
        self.q_latest = select(*self.columns).where(*where).order_by(c.c.checkpoint_id.desc()).limit(1)
        self.q_exact = select(*self.columns).where(*where, c.c.checkpoint_id == bindparam("cid"))
        # The values and pending writes of checkpoints of one (thread, namespace), in one round trip: blobs by
        # channel IN (...) AND version IN (...), an index lookup per pair on every dialect (a row-value IN list is
        # a full scan on SQLite; the few extra blobs it may return are not asked for), then the writes by id.
        blob_part = select(
            literal_column("0"), b.c.channel, b.c.version, null(), b.c.type, b.c.blob, null(), null()
        ).where(
            b.c.thread_id == bindparam("t"), b.c.checkpoint_ns == bindparam("ns"),
            b.c.channel.in_(bindparam("channels", expanding=True)), b.c.version.in_(bindparam("versions", expanding=True)),
        )
        write_part = select(
            literal_column("1"), w.c.channel, w.c.task_id, w.c.idx, w.c.type, w.c.blob, w.c.task_path, w.c.checkpoint_id
        ).where(w.c.thread_id == bindparam("t"), w.c.checkpoint_ns == bindparam("ns"), w.c.checkpoint_id.in_(bindparam("ids", expanding=True)))
        self.q_values = union_all(blob_part, write_part)
        self._pages: dict[tuple[bool, ...], Any] = {}
        self.s_blobs = _insert_ignore(self.dialect, b)
        self.s_checkpoint = _upsert(self.dialect, c, ["parent_checkpoint_id", "type", "checkpoint", "metadata", "run_id"])
        self.s_write_new = _insert_ignore(self.dialect, w)
        self.s_write_over = _upsert(self.dialect, w, ["channel", "type", "blob", "task_path"])

    # ---- schema ----

    def _current(self) -> int:
        from sqlalchemy import func, select

        with self.db.read() as conn:
            if not self.db.engine.dialect.has_table(conn, self.t.version.name):
                return 0
            return int(conn.execute(select(func.coalesce(func.max(self.t.version.c.version), 0))).scalar_one())

    def _prepare(self, auto_upgrade: bool) -> None:
        current, latest = self._current(), len(MIGRATIONS)
        prefix = self.db.prefix
        if current > latest:
            raise SchemaError(
                f"the {prefix}checkpoint* tables are at schema version {current}, newer than this praison-db supports "
                f"({latest}); upgrade praison-db"
            )
        if current < latest:
            if not auto_upgrade:
                raise SchemaError(
                    f"the {prefix}checkpoint* tables are at schema version {current}, this praison-db needs {latest}: "
                    "open the saver once with auto_upgrade=true (the default) to migrate them"
                )
            self.upgrade()

    def upgrade(self) -> None:
        from sqlalchemy import func, insert, select

        from ..backends.sql.engine import _schema_transaction

        with _schema_transaction(self.db.engine, f"praison_db:{self.db.prefix}checkpoints") as conn:
            self.t.metadata.create_all(conn, tables=[self.t.version], checkfirst=True)
            current = conn.execute(select(func.coalesce(func.max(self.t.version.c.version), 0))).scalar_one()
            for index in range(current, len(MIGRATIONS)):
                MIGRATIONS[index](conn, self.t)
                conn.execute(insert(self.t.version).values(version=index + 1, applied_at=utcnow()))

    def schema_version(self) -> tuple[int, int]:
        return self._current(), len(MIGRATIONS)

    def translate(self, error: Exception) -> Error:
        return self.db.translate(error)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.db.release()

    # ---- writes ----

    def put(self, item: _Put) -> None:
        self._put(item)

    def _retried(self, work: Callable[[], T]) -> T:
        from ..backends.sql.engine import retry_conflicts

        return retry_conflicts(lambda _self: work())(self)  # type: ignore[no-any-return]

    def _put(self, item: _Put) -> None:
        blobs = [
            {"thread_id": item.thread_id, "checkpoint_ns": item.ns, "channel": ch, "version": v, "type": k, "blob": data}
            for ch, v, k, data in item.blobs
        ]
        row = {
            "thread_id": item.thread_id, "checkpoint_ns": item.ns, "checkpoint_id": item.checkpoint_id,
            "parent_checkpoint_id": item.parent_id, "type": item.type, "checkpoint": item.data,
            "metadata": item.metadata, "run_id": item.run_id,
        }

        if self.dialect == "postgresql":
            self._retried(lambda: self._pg_put(item))
            return

        def work() -> None:
            with self.db.write() as conn:
                if blobs:
                    conn.execute(self.s_blobs, blobs)
                conn.execute(self.s_checkpoint, [row])

        self._retried(work)

    def _pg_put(self, item: _Put) -> None:
        """PostgreSQL: the blobs and the checkpoint row in one statement (the blobs' INSERT in a CTE), autocommitted:
        one round trip instead of four (BEGIN, two statements, COMMIT), and still all or nothing. Were the caller to
        give up waiting (read_timeout) while the server goes on, the checkpoint could land afterwards: harmless, as a
        put is idempotent (the same id always carries the same checkpoint)."""
        params: list[Any] = []
        for channel, version, kind, data in item.blobs:
            params += [item.thread_id, item.ns, channel, version, kind, data]
        params += [item.thread_id, item.ns, item.checkpoint_id, item.parent_id, item.type, item.data, item.metadata, item.run_id]
        with self.db.read() as conn:  # read(): an autocommitted connection on PostgreSQL
            conn.exec_driver_sql(self._pg_put_sql(conn, len(item.blobs)), tuple(params))

    def _pg_put_sql(self, conn: Any, blobs: int) -> str:
        cache = self.__dict__.setdefault("_pg_put_cache", {})
        if blobs not in cache:
            quote = conn.dialect.identifier_preparer.format_table
            row = "(%s, %s, %s, %s, %s, %s)"
            upsert = (
                f"INSERT INTO {quote(self.t.checkpoints)} (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, "
                "type, checkpoint, metadata, run_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id) DO UPDATE SET parent_checkpoint_id = "
                "EXCLUDED.parent_checkpoint_id, type = EXCLUDED.type, checkpoint = EXCLUDED.checkpoint, "
                "metadata = EXCLUDED.metadata, run_id = EXCLUDED.run_id"
            )
            if blobs:
                upsert = (
                    f"WITH new_blobs AS (INSERT INTO {quote(self.t.blobs)} (thread_id, checkpoint_ns, channel, version, type, blob) "
                    f"VALUES {', '.join([row] * blobs)} ON CONFLICT DO NOTHING) {upsert}"
                )
            cache[blobs] = upsert
        return cache[blobs]  # type: ignore[no-any-return]

    def put_writes(self, thread_id: str, ns: str, checkpoint_id: str, writes: list[Write]) -> None:
        rows: list[dict[str, Any]] = [
            {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id, "task_id": w[0], "idx": w[1],
             "channel": w[2], "type": w[3], "blob": w[4], "task_path": w[5]}
            for w in writes
        ]
        new = [r for r in rows if r["idx"] >= 0]
        over = [r for r in rows if r["idx"] < 0]

        if self.dialect == "postgresql" and not (new and over):
            # One statement (as many rows as it has), autocommitted: one round trip instead of three; a retried
            # write stores what the first one did, so landing after a timeout is harmless (see _pg_put).
            def one_statement() -> None:
                with self.db.read() as conn:
                    conn.execute(self.s_write_new if new else self.s_write_over, new or over)

            self._retried(one_statement)
            return

        def work() -> None:
            with self.db.write() as conn:
                if new:
                    conn.execute(self.s_write_new, new)
                if over:
                    conn.execute(self.s_write_over, over)

        self._retried(work)

    # ---- reads ----

    def get(self, thread_id: str, ns: str, checkpoint_id: str | None, decode: Decode) -> _Row | None:
        with self.db.read() as conn:
            if checkpoint_id is None:
                found = conn.execute(self.q_latest, {"t": thread_id, "ns": ns}).first()
            else:
                found = conn.execute(self.q_exact, {"t": thread_id, "ns": ns, "cid": checkpoint_id}).first()
            if found is None:
                return None
            return self._complete(conn, [found], decode)[0]

    def page(self, query: _Query, after: tuple[str, str, str] | None, n: int, decode: Decode) -> list[_Row]:
        shape = (query.thread_id is not None, query.ns is not None, query.checkpoint_id is not None, query.before is not None, after is not None)
        if query.filter:
            statement = self._page_statement(*shape, prefilter=self._prefilter(query.filter))
        else:  # built once per shape, values bound
            statement = self._pages.get(shape)
            if statement is None:
                statement = self._pages[shape] = self._page_statement(*shape, prefilter=[])
        params: dict[str, Any] = {"t": query.thread_id, "ns": query.ns, "cid": query.checkpoint_id, "before": query.before, "n": n}
        if after is not None:
            params.update(after_cid=after[0], after_t=after[1], after_ns=after[2])
        with self.db.read() as conn:
            found = conn.execute(statement, params).all()
            return self._complete(conn, found, decode) if found else []

    def _page_statement(self, thread: bool, ns: bool, cid: bool, before: bool, after: bool, *, prefilter: list[Any]) -> Any:
        from sqlalchemy import bindparam, select, tuple_

        c = self.t.checkpoints.c
        q = select(*self.columns)
        if thread:
            q = q.where(c.thread_id == bindparam("t"))
        if ns:
            q = q.where(c.checkpoint_ns == bindparam("ns"))
        if cid:
            q = q.where(c.checkpoint_id == bindparam("cid"))
        if before:
            q = q.where(c.checkpoint_id < bindparam("before"))
        q = q.where(*prefilter)
        if thread and ns:
            # One namespace of one thread: a range of the primary key, newest first.
            if after:
                q = q.where(c.checkpoint_id < bindparam("after_cid"))
            q = q.order_by(c.checkpoint_id.desc())
        else:
            if after:
                q = q.where(tuple_(c.checkpoint_id, c.thread_id, c.checkpoint_ns) < tuple_(bindparam("after_cid"), bindparam("after_t"), bindparam("after_ns")))
            q = q.order_by(c.checkpoint_id.desc(), c.thread_id.desc(), c.checkpoint_ns.desc())
        return q.limit(bindparam("n"))

    def _prefilter(self, wanted: Mapping[str, Any]) -> list[Any]:
        """Conditions that keep every row whose metadata matches ``wanted`` (and maybe some more: the caller checks
        each row exactly). Values the dialect cannot compare reliably are left to that check."""
        from sqlalchemy import String, cast, func, literal
        from sqlalchemy.dialects.postgresql import JSONB

        column = self.t.checkpoints.c.metadata
        if self.dialect == "postgresql":
            # jsonb containment: strings exactly, numbers by value, true is not 1; a container contains its parts.
            doc = {}
            for k, v in wanted.items():
                if v is None:  # a missing key matches None too: containment cannot say that
                    continue
                try:
                    json.dumps(v, allow_nan=False)
                except (TypeError, ValueError):
                    continue
                doc[k] = v
            if not doc:
                return []
            return [cast(column, JSONB).op("@>")(cast(literal(json.dumps(doc), String), JSONB))]
        conditions = []
        for k, v in wanted.items():
            if not _SAFE_KEY.match(k) or isinstance(v, bool) or not isinstance(v, (str, int, float)):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                continue
            value = func.json_extract(column, f'$."{k}"')
            if self.dialect != "sqlite" and isinstance(v, str):
                value = func.json_unquote(value)
            conditions.append(value == v)
        return conditions

    def _complete(self, conn: Any, found: Sequence[Any], decode: Decode) -> list[_Row]:
        """Rows with their blobs and pending writes: one more read per (thread, namespace) in the batch, on the keys."""
        decoded = [(r, decode((r[4], bytes(r[5])))) for r in found]
        groups: dict[tuple[str, str], list[tuple[Any, dict[str, Any]]]] = {}
        for r, checkpoint in decoded:
            groups.setdefault((r[0], r[1]), []).append((r, checkpoint))
        blobs: dict[tuple[str, str, str, str], tuple[str, bytes | None]] = {}
        writes: dict[tuple[str, str, str], list[Write]] = {}
        for (thread_id, ns), members in groups.items():
            pairs = {pair for _, checkpoint in members for pair in _versions(checkpoint).items()}
            channels = sorted({p[0] for p in pairs})
            versions = sorted({p[1] for p in pairs})
            ids = [r[2] for r, _ in members]
            for first, some in enumerate(_chunks(versions, 2000) if versions else [[]]):
                params = {"t": thread_id, "ns": ns, "channels": channels, "versions": list(some), "ids": ids if first == 0 else []}
                for src, channel, key, idx, kind, data, path, checkpoint_id in conn.execute(self.q_values, params):
                    if src == 0:
                        blobs[(thread_id, ns, channel, key)] = (kind, None if data is None else bytes(data))
                    else:
                        writes.setdefault((thread_id, ns, checkpoint_id), []).append((key, idx, channel, kind, bytes(data), path))
        rows = []
        for r, checkpoint in decoded:
            thread_id, ns, checkpoint_id = r[0], r[1], r[2]
            values = {}
            for channel, version in _versions(checkpoint).items():
                blob = blobs.get((thread_id, ns, channel, version))
                if blob is not None:
                    values[channel] = blob
            rows.append(_Row(thread_id, ns, checkpoint_id, r[3], checkpoint, r[6], values, writes.get((thread_id, ns, checkpoint_id), [])))
        return rows

    # ---- deletes and copies ----

    def delete_threads(self, thread_ids: list[str]) -> None:
        from sqlalchemy import delete

        def work() -> None:
            with self.db.write() as conn:
                for table in (self.t.writes, self.t.blobs, self.t.checkpoints):
                    for some in _chunks(thread_ids):
                        conn.execute(delete(table).where(table.c.thread_id.in_(some)))

        self._retried(work)

    def _drop(self, conn: Any, thread_id: str, ns: str, doomed: list[tuple[str, str, bytes]], decode: Decode) -> None:
        """Delete these checkpoints (id, type, bytes) of (thread, ns) with their writes and the blobs that no remaining
        checkpoint of (thread, ns) uses; a remaining checkpoint whose parent goes loses its parent."""
        from sqlalchemy import delete, select, update

        c, b, w = self.t.checkpoints, self.t.blobs, self.t.writes
        ids = [d[0] for d in doomed]
        freed = {pair for d in doomed for pair in _versions(decode((d[1], bytes(d[2])))).items()}
        here = (c.c.thread_id == thread_id, c.c.checkpoint_ns == ns)
        for some in _chunks(ids):
            conn.execute(delete(w).where(w.c.thread_id == thread_id, w.c.checkpoint_ns == ns, w.c.checkpoint_id.in_(some)))
            conn.execute(delete(c).where(*here, c.c.checkpoint_id.in_(some)))
            conn.execute(update(c).where(*here, c.c.parent_checkpoint_id.in_(some)).values(parent_checkpoint_id=None))
        used: set[tuple[str, str]] = set()
        for kind, data in conn.execute(select(c.c.type, c.c.checkpoint).where(*here)):
            used.update(_versions(decode((kind, bytes(data)))).items())
        garbage: dict[str, list[str]] = {}
        for channel, version in freed - used:
            garbage.setdefault(channel, []).append(version)
        for channel, versions in garbage.items():
            for some in _chunks(versions):
                conn.execute(
                    delete(b).where(b.c.thread_id == thread_id, b.c.checkpoint_ns == ns, b.c.channel == channel, b.c.version.in_(some))
                )

    def delete_runs(self, run_ids: list[str], decode: Decode) -> None:
        from sqlalchemy import select

        c = self.t.checkpoints.c

        def work() -> None:
            with self.db.write() as conn:
                groups: dict[tuple[str, str], list[tuple[str, str, bytes]]] = {}
                for some in _chunks(run_ids):
                    q = select(c.thread_id, c.checkpoint_ns, c.checkpoint_id, c.type, c.checkpoint).where(c.run_id.in_(some))
                    for thread_id, ns, checkpoint_id, kind, data in conn.execute(q):
                        groups.setdefault((thread_id, ns), []).append((checkpoint_id, kind, data))
                for (thread_id, ns), doomed in groups.items():
                    self._drop(conn, thread_id, ns, doomed, decode)

        self._retried(work)

    def copy_thread(self, source: str, target: str) -> None:
        from sqlalchemy import literal, select

        from ..backends.sql.engine import _insert_ignore

        def work() -> None:
            with self.db.write() as conn:
                for table in (self.t.checkpoints, self.t.blobs, self.t.writes):
                    names = [col.name for col in table.c]
                    picked = [
                        literal(target, table.c.thread_id.type).label("thread_id") if col.name == "thread_id" else col
                        for col in table.c
                    ]
                    rows = select(*picked).where(table.c.thread_id == source)
                    conn.execute(_insert_ignore(self.dialect, table).from_select(names, rows))

        self._retried(work)

    def keep_latest(self, thread_id: str, decode: Decode) -> None:
        from sqlalchemy import func, select

        c = self.t.checkpoints.c

        def work() -> None:
            with self.db.write() as conn:
                marked = select(c.metadata).where(
                    c.thread_id == thread_id, c.metadata.like("%counters_since_delta_snapshot%") | c.metadata.like("%delta_writes_versioned%")
                )
                if any(_uses_delta(m) for (m,) in conn.execute(marked)):
                    raise _delta_refusal(thread_id)
                heads = conn.execute(
                    select(c.checkpoint_ns, func.max(c.checkpoint_id)).where(c.thread_id == thread_id).group_by(c.checkpoint_ns)
                ).all()
                for ns, head in heads:
                    q = select(c.checkpoint_id, c.type, c.checkpoint).where(
                        c.thread_id == thread_id, c.checkpoint_ns == ns, c.checkpoint_id < head
                    )
                    doomed = [tuple(r) for r in conn.execute(q)]
                    if doomed:
                        self._drop(conn, thread_id, ns, doomed, decode)  # type: ignore[arg-type]

        self._retried(work)


# ---- the saver ----


def _same_json(expected: Any, actual: Any) -> bool:
    """Equality of two JSON values: numbers by value, booleans apart from numbers, tuples as lists."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and expected == actual
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return expected == actual
    if isinstance(expected, dict) and isinstance(actual, dict):
        return expected.keys() == actual.keys() and all(_same_json(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, (list, tuple)) and isinstance(actual, (list, tuple)):
        return len(expected) == len(actual) and all(_same_json(a, b) for a, b in zip(expected, actual))
    if isinstance(expected, (dict, list, tuple, int, float)) or isinstance(actual, (dict, list, tuple, int, float)):
        return False
    return bool(expected == actual)


def _ident(value: Any, what: str, limit: int, *, empty: bool = False) -> str:
    """An id as stored: a string (an int is taken as its text), at most ``limit`` characters, no NUL, valid Unicode."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(f"{what} must be a string, got {type(value).__name__}")
    text = str(value)
    if not text and not empty:
        raise InputError(f"{what} must not be empty")
    if len(text) > limit:
        raise InputError(f"{what} is {len(text)} characters long; use at most {limit}")
    if "\x00" in text:
        raise InputError(f"{what} must not contain NUL characters")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"{what} is not valid Unicode (a lone surrogate)") from None
    return text


def _configurable(config: Any, what: str = "config") -> Mapping[str, Any]:
    inner = config.get("configurable") if isinstance(config, Mapping) else None
    if not isinstance(inner, Mapping):
        raise InputError(f"{what} must be a dict like {{'configurable': {{'thread_id': 'user-123'}}}}")
    return inner


def _thread_id(inner: Mapping[str, Any], what: str = "config") -> str:
    if inner.get("thread_id") is None:
        raise InputError(f"{what}['configurable'] needs a 'thread_id' (the conversation the checkpoints belong to)")
    return _ident(inner["thread_id"], "thread_id", MAX_THREAD_ID)


def _namespace(inner: Mapping[str, Any]) -> str:
    ns = inner.get("checkpoint_ns")
    return "" if ns is None else _ident(ns, "checkpoint_ns", MAX_NAMESPACE, empty=True)


def _checkpoint_id(inner: Mapping[str, Any]) -> str | None:
    value = inner.get("checkpoint_id")
    return None if value in (None, "") else _ident(value, "checkpoint_id", MAX_CHECKPOINT_ID)


def _config(thread_id: str, ns: str, checkpoint_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id}}


def _id_list(values: Any, what: str) -> builtins.list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, set, frozenset)):
        raise InputError(f"{what} must be a list of ids, not {type(values).__name__}")
    return builtins.list(dict.fromkeys(_ident(v, what[:-1] if what.endswith("s") else what, MAX_RUN_ID) for v in values))


class _Listing:
    """The paging of one ``list`` call, shared by the sync and async faces: which page to read next, and which of its
    rows to hand out (the exact metadata filter, the limit)."""

    def __init__(self, query: _Query, limit: int | None) -> None:
        self.query, self.left = query, limit
        self.after: tuple[str, str, str] | None = None
        self.done = limit == 0

    def size(self) -> int:
        if self.query.filter or self.left is None:
            return _PAGE
        return max(1, min(_PAGE, self.left))

    def accept(self, rows: builtins.list[_Row], n: int) -> Iterator[tuple[_Row, dict[str, Any]]]:
        if len(rows) < n:
            self.done = True
        if rows:
            self.after = rows[-1].order
        for row in rows:
            metadata = json.loads(row.metadata)
            if self.query.filter and not all(_same_json(v, metadata.get(k)) for k, v in self.query.filter.items()):
                continue
            if self.left is not None:
                if self.left <= 0:
                    self.done = True
                    return
                self.left -= 1
                if self.left == 0:
                    self.done = True
            yield row, metadata


class PraisonCheckpointSaver(BaseCheckpointSaver[str]):
    """LangGraph's checkpointer over a praison_db URL: SQLite, PostgreSQL, MySQL/MariaDB or memory://.

    Args:
        url: where the checkpoints live, e.g. ``"sqlite:///agent.db"`` or ``"postgresql://ai:ai@localhost/ai"``.
        serde: the serializer of checkpoints, channel values and writes (LangGraph's default when None).
        **options: praison_db's SQL options (``table_prefix``, ``pool_size``, ``read_timeout``, ``auto_upgrade``,
            ...), as keyword arguments or in the URL's query string.

    Raises:
        ConfigError: an unsupported scheme, a missing driver, an unknown option (here, before any I/O).
    """

    def __init__(self, url: str | StoreURL, *, serde: SerializerProtocol | None = None, **options: Any) -> None:
        super().__init__(serde=serde)
        self._url = parse_url(url)
        self.url = self._url.render()
        self._options = options
        self._closed = False
        self._lock = threading.Lock()
        self._sync: _Storage | None = None
        self._async: _Storage | None = None
        self._opening: asyncio.Future[_Storage] | None = None
        entry = entry_for(self._url.scheme)
        if self._url.scheme == "memory":
            resolve_options("memory://", {}, {**self._url.query, **options})
            self._sync = self._async = _MemoryStorage(self._url)
        elif entry.sqlalchemy is not None:
            from ..backends.sql.engine import OPTIONS, _check_url

            _, driver_args = resolve_options(f"{self._url.scheme}://", OPTIONS, {**self._url.query, **options}, passthrough=True)
            _check_url(self._url, driver_args)
        else:
            raise ConfigError(
                f"PraisonCheckpointSaver keeps checkpoints in SQL databases or memory, not {self._url.scheme}://; "
                f"use {SUPPORTED_SCHEMES}"
            )

    # ---- opening, running, closing ----

    def _open(self, asynchronous: bool) -> _Storage:
        from ..backends.sql.database import SqlDatabase
        from ..backends.sql.engine import OPTIONS

        opts, _ = resolve_options(f"{self._url.scheme}://", OPTIONS, {**self._url.query, **self._options}, passthrough=True)
        database = SqlDatabase(self._url, schema="skip", asynchronous=asynchronous, **self._options)
        try:
            return _SqlStorage(database, opts["auto_upgrade"])
        except Exception as e:
            database.release()
            if isinstance(e, Error):
                raise
            raise database.translate(e) from e

    def _closed_error(self) -> StoreClosed:
        return StoreClosed(f"PraisonCheckpointSaver ({self.url}) is closed; open a new one")

    def _storage(self) -> _Storage:
        if self._closed:
            raise self._closed_error()
        if self._sync is None:
            with self._lock:
                if self._sync is None:
                    self._sync = self._open(asynchronous=False)
        return self._sync

    async def _astorage(self) -> _Storage:
        if self._closed:
            raise self._closed_error()
        if self._async is None:
            if self._opening is None:  # one open however many tasks start at once
                self._opening = asyncio.ensure_future(greenlet_spawn(self._open, True))
            try:
                storage = await asyncio.shield(self._opening)
            except BaseException:
                if self._opening.done():
                    self._opening = None  # a failed open may be tried again
                raise
            if self._async is None:
                self._async = storage
        return self._async

    def _guarded(self, storage: _Storage, work: Callable[[_Storage], T]) -> T:
        if self._closed:
            raise self._closed_error()
        try:
            return work(storage)
        except Error:
            raise
        except Exception as e:
            raise storage.translate(e) from e

    def _run(self, work: Callable[[_Storage], T]) -> T:
        return self._guarded(self._storage(), work)

    async def _arun(self, work: Callable[[_Storage], T]) -> T:
        storage = await self._astorage()
        if not storage.native_async:
            return self._guarded(storage, work)
        call = greenlet_spawn(self._guarded, storage, work)
        if storage.finish_when_cancelled:
            from ..aio import _to_the_end

            return await _to_the_end(call)  # type: ignore[no-any-return]
        return await call

    def setup(self) -> None:
        """Connect and create or migrate the tables now (the first call does it otherwise)."""
        self._run(lambda storage: None)

    async def asetup(self) -> None:
        """``setup`` for the async face: opens its connection pool on this event loop."""
        await self._arun(lambda storage: None)

    def schema_version(self) -> tuple[int, int] | None:
        """(the version of the checkpoint tables, the version this praison-db expects); None for memory://."""
        return self._run(lambda s: s.schema_version() if isinstance(s, _SqlStorage) else None)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Release the connections. Idempotent; any later call raises StoreClosed. After async use, prefer
        ``await saver.aclose()``, which also closes the async pool's connections (here they are only dropped)."""
        if self._closed:
            return
        self._closed = True
        if self._sync is not None:
            self._sync.close()
        if isinstance(self._async, _SqlStorage) and self._async is not self._sync:
            self._async.db.engine.dispose(close=False)

    async def aclose(self) -> None:
        """Release the connections of both faces. Idempotent; any later call raises StoreClosed."""
        if self._closed:
            return
        self._closed = True
        if self._opening is not None and not self._opening.done():
            try:
                await self._opening
            except Exception:  # noqa: BLE001 - it failed to open: nothing to close
                pass
        if self._async is not None and self._async is not self._sync:
            await greenlet_spawn(self._async.close)
        if self._sync is not None:
            await asyncio.to_thread(self._sync.close)

    def __enter__(self) -> PraisonCheckpointSaver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> PraisonCheckpointSaver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<PraisonCheckpointSaver {self.url}{' closed' if self._closed else ''}>"

    # ---- serialization (shared by both faces) ----

    def _encode_put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata, new_versions: ChannelVersions) -> _Put:
        inner = _configurable(config)
        thread_id, ns = _thread_id(inner), _namespace(inner)
        if not isinstance(checkpoint, Mapping) or "id" not in checkpoint:
            raise InputError("checkpoint must be a LangGraph Checkpoint dict with an 'id'")
        checkpoint_id = _ident(checkpoint["id"], "checkpoint id", MAX_CHECKPOINT_ID)
        stripped: dict[str, Any] = dict(checkpoint)
        values: Mapping[str, Any] = stripped.pop("channel_values", None) or {}
        kind, data = self.serde.dumps_typed(stripped)
        blobs = []
        for channel, version in (new_versions or {}).items():
            name = _ident(channel, "channel name", MAX_CHANNEL)
            ver = _ident(version if not isinstance(version, float) else str(version), "channel version", MAX_VERSION)
            typed = self.serde.dumps_typed(values[channel]) if channel in values else (EMPTY, None)
            blobs.append((name, ver, typed[0], typed[1]))
        meta = get_serializable_checkpoint_metadata(config, metadata)
        run_id = meta.get("run_id")
        return _Put(
            thread_id, ns, checkpoint_id, _checkpoint_id(inner), kind, data, dumps(meta, "checkpoint metadata"),
            # Sorted: concurrent puts insert shared blob keys in one order, so they wait for each other, never deadlock.
            None if run_id is None else _ident(run_id, "metadata run_id", MAX_RUN_ID), tuple(sorted(blobs, key=lambda b: b[:2])),
        )

    def _encode_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str) -> tuple[str, str, str, builtins.list[Write]]:
        inner = _configurable(config)
        thread_id, ns = _thread_id(inner), _namespace(inner)
        checkpoint_id = _checkpoint_id(inner)
        if checkpoint_id is None:
            raise InputError("put_writes needs config['configurable']['checkpoint_id'] (the checkpoint the writes follow)")
        task = _ident(task_id, "task_id", MAX_TASK_ID)
        path = _ident(task_path or "", "task_path", 10_000, empty=True)
        rows: dict[tuple[str, int], Write] = {}
        for idx, (channel, value) in enumerate(writes):
            key = (task, WRITES_IDX_MAP.get(channel, idx))
            if key[1] >= 0 and key in rows:
                continue
            kind, data = self.serde.dumps_typed(value)
            rows[key] = (task, key[1], _ident(channel, "channel name", 10_000), kind, data, path)
        return thread_id, ns, checkpoint_id, [rows[key] for key in sorted(rows)]  # one key order: no deadlocks

    def _tuple(self, row: _Row, metadata: Any = None) -> CheckpointTuple:
        values = {ch: self.serde.loads_typed((kind, data)) for ch, (kind, data) in row.values.items() if kind != EMPTY and data is not None}
        writes = sorted(row.writes, key=lambda w: writes_sort_key(w[5], w[0], w[1]))
        pending: builtins.list[PendingWrite] = [(w[0], w[2], self.serde.loads_typed((w[3], w[4]))) for w in writes]
        parent = _config(row.thread_id, row.ns, row.parent_id) if row.parent_id else None
        return CheckpointTuple(
            config=_config(row.thread_id, row.ns, row.checkpoint_id),
            checkpoint={**row.checkpoint, "channel_values": values},  # type: ignore[typeddict-item]
            metadata=json.loads(row.metadata) if metadata is None else metadata,
            parent_config=parent,
            pending_writes=pending,
        )

    def _lookup(self, config: RunnableConfig) -> tuple[str, str, str | None]:
        inner = _configurable(config)
        return _thread_id(inner), _namespace(inner), _checkpoint_id(inner)

    def _listing(self, config: RunnableConfig | None, filter: dict[str, Any] | None, before: RunnableConfig | None, limit: int | None) -> _Listing:
        thread_id = ns = checkpoint_id = None
        if config is not None:
            inner = _configurable(config)
            thread_id = _thread_id(inner) if inner.get("thread_id") is not None else None
            ns = None if inner.get("checkpoint_ns") is None else _namespace(inner)
            checkpoint_id = _checkpoint_id(inner)
        before_id = _checkpoint_id(_configurable(before, "before")) if before is not None else None
        if filter is not None and not isinstance(filter, Mapping):
            raise InputError(f"filter must be a dict of metadata key -> value, not {type(filter).__name__}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise InputError("limit must be a non-negative integer or None")
        return _Listing(_Query(thread_id, ns, checkpoint_id, before_id, dict(filter or {})), limit)

    def _page(self, listing: _Listing, n: int) -> Callable[[_Storage], builtins.list[_Row]]:
        query, after, decode = listing.query, listing.after, self.serde.loads_typed
        return lambda storage: storage.page(query, after, n, decode)

    @staticmethod
    def _strategy(thread_ids: Any, strategy: Any) -> builtins.list[str]:
        if strategy not in PRUNE_STRATEGIES:
            raise InputError(f"prune strategy must be one of {', '.join(PRUNE_STRATEGIES)}, not {strategy!r}")
        return _id_list(thread_ids, "thread_ids")

    # ---- the sync face ----

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names (its ``checkpoint_id``), or the thread's newest in its namespace; None if
        there is none. ``pending_writes`` come in LangGraph's ``writes_sort_key`` order."""
        thread_id, ns, checkpoint_id = self._lookup(config)
        row = self._run(lambda s: s.get(thread_id, ns, checkpoint_id, self.serde.loads_typed))
        return None if row is None else self._tuple(row)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Checkpoints, newest first: of ``config``'s thread (and namespace, when it names one; every thread when
        ``config`` is None), whose metadata matches ``filter``, older than ``before``, at most ``limit``. Read a page
        at a time as the caller iterates."""
        listing = self._listing(config, filter, before, limit)
        while not listing.done:
            n = listing.size()
            rows = self._run(self._page(listing, n))
            for row, metadata in listing.accept(rows, n):
                yield self._tuple(row, metadata)

    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata, new_versions: ChannelVersions) -> RunnableConfig:
        """Store a checkpoint (the values of the channels in ``new_versions``, and the checkpoint row) in one
        transaction; returns the config that names it. The config's ``checkpoint_id`` is the parent."""
        item = self._encode_put(config, checkpoint, metadata, new_versions)
        self._run(lambda s: s.put(item))
        return _config(item.thread_id, item.ns, item.checkpoint_id)

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = "") -> None:
        """Store a task's writes against the checkpoint ``config`` names, in one transaction: a (task_id, idx) already
        stored keeps its value, except special writes (errors, interrupts), which overwrite."""
        thread_id, ns, checkpoint_id, rows = self._encode_writes(config, writes, task_id, task_path)
        if rows:
            self._run(lambda s: s.put_writes(thread_id, ns, checkpoint_id, rows))

    def delete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint, blob and write of the thread, in every namespace. A missing thread is a no-op."""
        ids = [_ident(thread_id, "thread_id", MAX_THREAD_ID)]
        self._run(lambda s: s.delete_threads(ids))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints whose metadata ``run_id`` is one of ``run_ids``, with their writes and the blobs
        no other checkpoint uses, in one transaction. A remaining checkpoint whose parent is deleted loses it."""
        ids = _id_list(run_ids, "run_ids")
        if ids:
            self._run(lambda s: s.delete_runs(ids, self.serde.loads_typed))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint, blob and write of one thread to another, in one transaction (the whole parent
        chain). Rows the target already has under the same keys are kept; a missing source copies nothing."""
        source = _ident(source_thread_id, "source_thread_id", MAX_THREAD_ID)
        target = _ident(target_thread_id, "target_thread_id", MAX_THREAD_ID)
        if source != target:
            self._run(lambda s: s.copy_thread(source, target))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Prune threads. ``"keep_latest"`` keeps the newest checkpoint of each namespace with its writes and the
        blobs it uses (one transaction per thread; the kept checkpoint loses its deleted parent) and refuses, with
        InputError, a thread that uses a DeltaChannel. ``"delete"`` deletes the threads, in one transaction."""
        ids = self._strategy(thread_ids, strategy)
        if strategy == "delete":
            self._run(lambda s: s.delete_threads(ids))
            return
        for thread_id in ids:
            self._run(lambda s, t=thread_id: s.keep_latest(t, self.serde.loads_typed))  # type: ignore[misc]

    def get_next_version(self, current: str | int | float | None, channel: None = None) -> str:
        """The next version of a channel: a zero-padded counter (so text order is version order) and a random
        fraction, so that two forks of one checkpoint never name different values with the same version."""
        if current is None:
            number = 0
        elif isinstance(current, str):
            number = int(current.split(".")[0])
        else:
            number = int(current)
        return f"{number + 1:032}.{random.random():016}"

    # ---- the async face: the same, awaited ----

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """``get_tuple``, awaited."""
        thread_id, ns, checkpoint_id = self._lookup(config)
        row = await self._arun(lambda s: s.get(thread_id, ns, checkpoint_id, self.serde.loads_typed))
        return None if row is None else self._tuple(row)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """``list``, as an async iterator."""
        listing = self._listing(config, filter, before, limit)
        while not listing.done:
            n = listing.size()
            rows = await self._arun(self._page(listing, n))
            for row, metadata in listing.accept(rows, n):
                yield self._tuple(row, metadata)

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata, new_versions: ChannelVersions) -> RunnableConfig:
        """``put``, awaited."""
        item = self._encode_put(config, checkpoint, metadata, new_versions)
        await self._arun(lambda s: s.put(item))
        return _config(item.thread_id, item.ns, item.checkpoint_id)

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = "") -> None:
        """``put_writes``, awaited."""
        thread_id, ns, checkpoint_id, rows = self._encode_writes(config, writes, task_id, task_path)
        if rows:
            await self._arun(lambda s: s.put_writes(thread_id, ns, checkpoint_id, rows))

    async def adelete_thread(self, thread_id: str) -> None:
        """``delete_thread``, awaited."""
        ids = [_ident(thread_id, "thread_id", MAX_THREAD_ID)]
        await self._arun(lambda s: s.delete_threads(ids))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """``delete_for_runs``, awaited."""
        ids = _id_list(run_ids, "run_ids")
        if ids:
            await self._arun(lambda s: s.delete_runs(ids, self.serde.loads_typed))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """``copy_thread``, awaited."""
        source = _ident(source_thread_id, "source_thread_id", MAX_THREAD_ID)
        target = _ident(target_thread_id, "target_thread_id", MAX_THREAD_ID)
        if source != target:
            await self._arun(lambda s: s.copy_thread(source, target))

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``prune``, awaited."""
        ids = self._strategy(thread_ids, strategy)
        if strategy == "delete":
            await self._arun(lambda s: s.delete_threads(ids))
            return
        for thread_id in ids:
            await self._arun(lambda s, t=thread_id: s.keep_latest(t, self.serde.loads_typed))  # type: ignore[misc]
