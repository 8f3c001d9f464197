"""LangGraph checkpoints in praison_db: :class:`PraisonCheckpointSaver`, a ``BaseCheckpointSaver`` over a praison_db URL.

    from praison_db.integrations.langgraph import PraisonCheckpointSaver

    with PraisonCheckpointSaver("postgresql://ai:ai@localhost:5432/ai") as saver:
        graph = builder.compile(checkpointer=saver)
        graph.invoke({"messages": [...]}, {"configurable": {"thread_id": "user-123"}})

URLs, each with the same options, driver parameters, timeouts and error translation as praison_db's stores on it:

- every SQL URL praison_db takes (``sqlite:///file.db``, ``postgresql://``, ``mysql://``, ``mariadb://`` and their
  aliases; ``table_prefix``, ``pool_size``, ``connect_timeout``, ``read_timeout``, ``auto_upgrade``, ...);
- Redis: ``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://`` (``prefix`` and redis-py's options; ``ttl`` is
  refused: checkpoints stay until deleted or pruned);
- MongoDB: ``mongodb://``, ``mongodb+srv://``, the database from the path (``collection_prefix`` and every
  connection-string option);
- ``memory://`` (in-process, gone with the process; ``memory://name`` is shared by every saver of that name in the
  process).

Any other scheme is a ConfigError. Nothing is opened until the first call (or ``setup()``). The checkpoints live
beside praison_db's data, never in the conversation or state tables, keys or collections.

SQL tables, named from ``table_prefix``:

- ``<prefix>checkpoints``: one row per (thread_id, checkpoint_ns, checkpoint_id): the parent id, the checkpoint
  without its channel values (the saver's ``serde``: type and bytes), its metadata as JSON text (what ``list``
  filters on) and the metadata's ``run_id`` (indexed, for ``delete_for_runs``);
- ``<prefix>checkpoint_blobs``: channel values, one row per (thread_id, checkpoint_ns, channel, version). A
  checkpoint stores only the channels it changed (``new_versions``) and reads the others at the versions it names, so
  an unchanged message list is not written again at every step;
- ``<prefix>checkpoint_writes``: pending writes, one row per (thread_id, checkpoint_ns, checkpoint_id, task_id, idx);
- ``<prefix>checkpoint_schema_version``: the migrations applied (``MIGRATIONS``, append-only, applied under the
  same cross-process lock as praison_db's own schema).

Redis keys, under ``<prefix>:lg:`` (plain Redis, no modules). Everything of one thread is under
``<prefix>:lg:{<thread_id>}`` (``%``, ``:`` and ``}`` in ids escaped as ``%25``, ``%3A``, ``%7D``): the thread id is the
hash tag, so a thread's keys share one slot and every call on a thread is one Lua script. Per namespace: a sorted
set of checkpoint ids (the newest is its last member: never a SCAN), hashes of checkpoints (type, metadata, bytes),
of headers (run id, parent, the channel versions named), of blobs (by channel and version) and, per checkpoint, a
hash of pending writes (by task and idx). Two keys span threads: ``<prefix>:lg:all`` (every checkpoint, for ``list``
without a thread) and ``<prefix>:lg:run:<run_id>`` (the threads a run wrote to, for ``delete_for_runs``); a write
updates them in the same round trip, just before the thread's script, and a delete just after it, so they always
cover what exists (an entry whose checkpoint is gone is skipped). In a Redis Cluster (``redis+cluster://``) the same
layout holds; the index step is sent first and each thread's script after it. Checkpoints have no TTL: give Redis a
``maxmemory-policy`` that never evicts keys without one (``noeviction`` or ``volatile-*``), as for praison_db's stores.

MongoDB collections ``<collection_prefix>lg_checkpoints``, ``lg_blobs`` and ``lg_writes``, the SQL tables' columns as
fields (bytes as BSON binary), each with a unique index on its key; a checkpoint also keeps its metadata's plain
top-level values (booleans, 64-bit integers, finite floats, strings up to 200 characters) under ``mf``, which
``list`` filters narrow on. MongoDB 4.4 or later (reads use ``$unionWith``).

Guarantees:

- ``put`` stores the new blobs (insert-if-absent) and then the checkpoint (an upsert): a reader sees a checkpoint with
  every value it names, or not at all. On SQL it is one transaction (on PostgreSQL a single autocommitted
  statement: one round trip); on Redis one script; on MongoDB the checkpoint, written last, is the commit point (on
  MongoDB 8.0 or later both go in one ordered ``bulkWrite``: one round trip).
- ``put_writes``: per (task_id, idx), a regular write is insert-if-absent, so a retried task stores nothing twice; a
  special one (error, interrupt, scheduled, resume: negative idx) overwrites. One transaction on SQL (and on MongoDB
  where the server has transactions), one script on Redis.
- ``get_tuple`` without a checkpoint_id reads the newest checkpoint from an index, never a scan: ``ORDER BY
  checkpoint_id DESC LIMIT 1`` on the SQL primary key, the same sort on MongoDB's unique index, the last member of
  the Redis sorted set (one script with the values and writes: one round trip). On SQL and MongoDB its values and
  pending writes come in one more read on the blobs' and writes' keys (``UNION ALL``, ``$unionWith``).
- ``list`` returns newest first and reads a page at a time, never a whole thread. A metadata ``filter`` matches when
  each value equals the stored one as JSON (numbers by value, ``True`` is not ``1``, a missing key equals None); the
  database narrows the rows where it can (Redis reads only the metadata of candidates), and every row is checked
  exactly, by the same function, before it is returned.
- ``delete_thread``, ``delete_for_runs``, ``copy_thread`` and ``prune`` do the same on every backend: in one
  transaction on SQL (and MongoDB where it has them); on Redis one script per thread (``copy_thread``: one that reads
  the source, one that writes the target).
- Deadlocks and lock waits are retried as in praison_db's stores; every failure is a praison_db error (no driver
  exception, no password).

Async: ``aget_tuple``, ``alist``, ``aput``, ... run the very same code on the async drivers (aiosqlite, psycopg's
AsyncConnection, aiomysql, redis.asyncio, pymongo's AsyncMongoClient) in a bridge greenlet, the machinery of
``praison_db.aio``: the event loop serves other tasks while the database works. The async face opens its own
connection pool on first use, bound to that event loop; close it with ``await saver.aclose()`` (or ``async with``).
``memory://`` runs in place, as it does no I/O.
"""

from __future__ import annotations

import asyncio
import bisect
import builtins
import functools
import hashlib
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

SUPPORTED_SCHEMES = (
    "sqlite://, postgresql://, mysql://, mariadb:// (and their aliases), redis://, rediss://, unix://, redis+cluster://, "
    "mongodb://, mongodb+srv:// and memory://"
)
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
    versions: tuple[tuple[str, str], ...] = ()  # (channel, version) of every value the checkpoint names


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


def _matches(wanted: Mapping[str, Any], metadata: Mapping[str, Any]) -> bool:
    """The metadata filter of ``list``: each wanted value equals the stored one as JSON; a missing key equals None."""
    return all(_same_json(v, metadata.get(k)) for k, v in wanted.items())


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


_EXACT = 2**53  # beyond it, an integer and the float of the same value have different JSON texts (2**60: ...976 vs 1.15...e+18)


def _plain_json(value: Any) -> bool:
    """A filter value a database compares as ``list`` does: JSON, every number finite and below 2**53 in magnitude
    (the database's comparison of larger ones may go by their text). Others are left to the exact check."""
    if value is None or isinstance(value, (bool, str)):
        return True
    if isinstance(value, int):
        return abs(value) < _EXACT
    if isinstance(value, float):
        return math.isfinite(value) and abs(value) < _EXACT
    if isinstance(value, (list, tuple)):
        return all(_plain_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_json(v) for k, v in value.items())
    return False


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
                if _plain_json(v):
                    doc[k] = v
            if not doc:
                return []
            return [cast(column, JSONB).op("@>")(cast(literal(json.dumps(doc), String), JSONB))]
        conditions = []
        for k, v in wanted.items():
            if not _SAFE_KEY.match(k) or isinstance(v, bool) or not isinstance(v, (str, int, float)) or not _plain_json(v):
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


# ---- Redis ----

# Every script starts with this. KEYS[1] is a key of the thread (its slot routes the script in a cluster); ARGV[1]
# is the thread's base key name, from which the script names the thread's other keys (all in the same slot: the
# thread id is the base's hash tag). Ids hold no NUL, so NUL joins them in members, fields and values.
_LUA_PRELUDE = r"""
local B = ARGV[1]
local function esc(s)
  return (string.gsub(s, '[%%:}]', {['%'] = '%25', [':'] = '%3A', ['}'] = '%7D'}))
end
local function key(kind, ns) return B .. ':' .. kind .. ':' .. esc(ns) end
local function wkey(ns, cid) return B .. ':w:' .. esc(ns) .. ':' .. esc(cid) end
local function split(s)
  local out, i = {}, 1
  while true do
    local j = string.find(s, '\0', i, true)
    if not j then
      out[#out + 1] = string.sub(s, i)
      return out
    end
    out[#out + 1] = string.sub(s, i, j - 1)
    i = j + 1
  end
end
local function unrun(run, member)
  local R = B .. ':r:' .. esc(run)
  redis.call('SREM', R, member)
  if redis.call('SCARD', R) == 0 then redis.call('SREM', B .. ':runs', run) end
end
local function hmget(h, fields)
  local out = {}
  for i = 1, #fields, 500 do
    local part = redis.call('HMGET', h, unpack(fields, i, math.min(i + 499, #fields)))
    for j = 1, #part do out[#out + 1] = part[j] end
  end
  return out
end
-- Delete checkpoints `doomed` of namespace ns with their writes and the blobs no remaining checkpoint of ns names;
-- a remaining checkpoint whose parent goes loses it. Appends the removed index members to `gone`.
local function drop(ns, doomed, gone)
  local H = key('h', ns)
  local dead, freed, any = {}, {}, false
  for _, cid in ipairs(doomed) do
    local header = redis.call('HGET', H, cid)
    if header then
      local member = cid .. '\0' .. ns
      local parts = split(header)
      if parts[1] ~= '' then unrun(parts[1], member) end
      for j = 3, #parts, 2 do freed[parts[j] .. '\0' .. parts[j + 1]] = true end
      dead[cid], any = true, true
      redis.call('HDEL', key('c', ns), cid)
      redis.call('HDEL', H, cid)
      redis.call('ZREM', key('i', ns), cid)
      redis.call('ZREM', B .. ':x', member)
      redis.call('UNLINK', wkey(ns, cid))
      redis.call('SREM', B .. ':wk', member)
      gone[#gone + 1] = member
    end
  end
  if not any then return end
  local rest = redis.call('HGETALL', H)
  for j = 1, #rest, 2 do
    local parts = split(rest[j + 1])
    for m = 3, #parts, 2 do freed[parts[m] .. '\0' .. parts[m + 1]] = nil end
    if dead[parts[2]] then
      parts[2] = ''
      redis.call('HSET', H, rest[j], table.concat(parts, '\0'))
    end
  end
  local blobs = key('b', ns)
  for field in pairs(freed) do redis.call('HDEL', blobs, field) end
  -- a namespace left with nothing is forgotten, so that deleting every checkpoint leaves no key behind
  if redis.call('EXISTS', key('i', ns)) == 0 and redis.call('EXISTS', blobs) == 0 then redis.call('SREM', B .. ':ns', ns) end
end
"""

# ARGV: base, ns, checkpoint id, record, header, run id ('' none), (blob field, blob value)...
_LUA_PUT = r"""
local ns, cid, run = ARGV[2], ARGV[3], ARGV[6]
local member = cid .. '\0' .. ns
local H = key('h', ns)
local old = redis.call('HGET', H, cid)
if old then
  local was = split(old)[1]
  if was ~= '' and was ~= run then unrun(was, member) end
end
redis.call('SADD', B .. ':ns', ns)
redis.call('ZADD', key('i', ns), 0, cid)
redis.call('ZADD', B .. ':x', 0, member)
redis.call('HSET', key('c', ns), cid, ARGV[4])
redis.call('HSET', H, cid, ARGV[5])
if run ~= '' then
  redis.call('SADD', B .. ':r:' .. esc(run), member)
  redis.call('SADD', B .. ':runs', run)
end
local blobs = key('b', ns)
for i = 7, #ARGV, 2 do redis.call('HSETNX', blobs, ARGV[i], ARGV[i + 1]) end
return 1
"""

# ARGV: base, ns, checkpoint id, (field, value, '1' to overwrite or '0' to keep what is there)...
_LUA_WRITES = r"""
local W = wkey(ARGV[2], ARGV[3])
for i = 4, #ARGV, 3 do
  if ARGV[i + 2] == '1' then
    redis.call('HSET', W, ARGV[i], ARGV[i + 1])
  else
    redis.call('HSETNX', W, ARGV[i], ARGV[i + 1])
  end
end
redis.call('SADD', B .. ':wk', ARGV[3] .. '\0' .. ARGV[2])
return 1
"""

# ARGV: base, mode, ... -> {rows, values}: rows {id, ns, record, header, writes (field, value, ...)}, or with `meta`
# {id, ns, metadata}; values: (ns, fields, blobs) per namespace. Modes: latest (ns); ns (ns, max, min, n, meta);
# thread (max, min, n, meta); ids (meta, (id, ns)...), which leaves out checkpoints that are not there.
_LUA_READ = r"""
local meta, wanted, spaces = false, {}, {}
local function row(ns, cid)
  local rec = redis.call('HGET', key('c', ns), cid)
  if not rec then return nil end
  if meta then
    local a = string.find(rec, '\0', 1, true)
    return {cid, ns, string.sub(rec, a + 1, string.find(rec, '\0', a + 1, true) - 1)}
  end
  local header = redis.call('HGET', key('h', ns), cid)
  local w = wanted[ns]
  if not w then
    w = {fields = {}, seen = {}}
    wanted[ns] = w
    spaces[#spaces + 1] = ns
  end
  local parts = split(header)
  for i = 3, #parts, 2 do
    local f = parts[i] .. '\0' .. parts[i + 1]
    if not w.seen[f] then
      w.seen[f] = true
      w.fields[#w.fields + 1] = f
    end
  end
  return {cid, ns, rec, header, redis.call('HGETALL', wkey(ns, cid))}
end
local mode, out = ARGV[2], {}
if mode == 'latest' then
  local newest = redis.call('ZREVRANGE', key('i', ARGV[3]), 0, 0)[1]
  if newest then out[1] = row(ARGV[3], newest) end
elseif mode == 'ns' then
  meta = ARGV[7] == '1'
  for _, cid in ipairs(redis.call('ZREVRANGEBYLEX', key('i', ARGV[3]), ARGV[4], ARGV[5], 'LIMIT', 0, tonumber(ARGV[6]))) do
    out[#out + 1] = row(ARGV[3], cid)
  end
elseif mode == 'thread' then
  meta = ARGV[6] == '1'
  for _, m in ipairs(redis.call('ZREVRANGEBYLEX', B .. ':x', ARGV[3], ARGV[4], 'LIMIT', 0, tonumber(ARGV[5]))) do
    local p = split(m)
    out[#out + 1] = row(p[2], p[1])
  end
else
  meta = ARGV[3] == '1'
  for i = 4, #ARGV, 2 do
    local r = row(ARGV[i + 1], ARGV[i])
    if r then out[#out + 1] = r end
  end
end
-- each value once, however many of the checkpoints name it (an unchanged channel is named by all of them)
local blobs = {}
for _, ns in ipairs(spaces) do
  blobs[#blobs + 1] = ns
  blobs[#blobs + 1] = wanted[ns].fields
  blobs[#blobs + 1] = hmget(key('b', ns), wanted[ns].fields)
end
return {out, blobs}
"""

# ARGV: base -> {index members (id NUL ns) of every checkpoint, run ids}; deletes every key of the thread.
_LUA_DELETE_THREAD = r"""
local gone = redis.call('ZRANGE', B .. ':x', 0, -1)
local runs = redis.call('SMEMBERS', B .. ':runs')
for _, ns in ipairs(redis.call('SMEMBERS', B .. ':ns')) do
  redis.call('UNLINK', key('i', ns), key('c', ns), key('h', ns), key('b', ns))
end
for _, m in ipairs(redis.call('SMEMBERS', B .. ':wk')) do
  local p = split(m)
  redis.call('UNLINK', wkey(p[2], p[1]))
end
for _, run in ipairs(runs) do redis.call('UNLINK', B .. ':r:' .. esc(run)) end
redis.call('UNLINK', B .. ':ns', B .. ':x', B .. ':wk', B .. ':runs')
return {gone, runs}
"""

# ARGV: base, run id... -> index members of the checkpoints removed.
_LUA_DELETE_RUNS = r"""
local gone = {}
for i = 2, #ARGV do
  local R = B .. ':r:' .. esc(ARGV[i])
  local by_ns, order = {}, {}
  for _, m in ipairs(redis.call('SMEMBERS', R)) do
    local p = split(m)
    if not by_ns[p[2]] then
      by_ns[p[2]] = {}
      order[#order + 1] = p[2]
    end
    table.insert(by_ns[p[2]], p[1])
  end
  for _, ns in ipairs(order) do drop(ns, by_ns[ns], gone) end
  redis.call('UNLINK', R)
  redis.call('SREM', B .. ':runs', ARGV[i])
end
return gone
"""

# ARGV: base, 'check' or 'go' -> {0, metadata...} when checking and some metadata may name a DeltaChannel (the
# caller decides, exactly, and calls again with 'go'); else {1, index members removed}.
_LUA_KEEP_LATEST = r"""
local spaces = redis.call('SMEMBERS', B .. ':ns')
if ARGV[2] == 'check' then
  local suspects = {}
  for _, ns in ipairs(spaces) do
    for _, rec in ipairs(redis.call('HVALS', key('c', ns))) do
      local a = string.find(rec, '\0', 1, true)
      local m = string.sub(rec, a + 1, string.find(rec, '\0', a + 1, true) - 1)
      if string.find(m, 'counters_since_delta_snapshot', 1, true) or string.find(m, 'delta_writes_versioned', 1, true) then
        suspects[#suspects + 1] = m
      end
    end
  end
  if #suspects > 0 then return {0, suspects} end
end
local gone = {}
for _, ns in ipairs(spaces) do
  local older = redis.call('ZRANGE', key('i', ns), 0, -2)
  if #older > 0 then drop(ns, older, gone) end
end
return {1, gone}
"""

# ARGV: base -> {{ns, records (id, record...), headers (id, header...), blobs (field, value...)}..., {id, ns, writes}...}
_LUA_DUMP = r"""
local spaces, writes = {}, {}
for _, ns in ipairs(redis.call('SMEMBERS', B .. ':ns')) do
  spaces[#spaces + 1] = {ns, redis.call('HGETALL', key('c', ns)), redis.call('HGETALL', key('h', ns)), redis.call('HGETALL', key('b', ns))}
end
for _, m in ipairs(redis.call('SMEMBERS', B .. ':wk')) do
  local p = split(m)
  writes[#writes + 1] = {p[1], p[2], redis.call('HGETALL', wkey(p[2], p[1]))}
end
return {spaces, writes}
"""

# ARGV: base, then entries of five: ('c', ns, id, record, header), ('b', ns, field, value, ''), ('w', ns, id, field,
# value). Stores each one the thread does not have yet.
_LUA_LOAD = r"""
for i = 2, #ARGV, 5 do
  local kind, ns = ARGV[i], ARGV[i + 1]
  if kind == 'c' then
    local cid = ARGV[i + 2]
    if redis.call('HSETNX', key('c', ns), cid, ARGV[i + 3]) == 1 then
      local member = cid .. '\0' .. ns
      redis.call('HSET', key('h', ns), cid, ARGV[i + 4])
      redis.call('SADD', B .. ':ns', ns)
      redis.call('ZADD', key('i', ns), 0, cid)
      redis.call('ZADD', B .. ':x', 0, member)
      local run = split(ARGV[i + 4])[1]
      if run ~= '' then
        redis.call('SADD', B .. ':r:' .. esc(run), member)
        redis.call('SADD', B .. ':runs', run)
      end
    end
  elseif kind == 'b' then
    redis.call('SADD', B .. ':ns', ns)
    redis.call('HSETNX', key('b', ns), ARGV[i + 2], ARGV[i + 3])
  else
    redis.call('HSETNX', wkey(ns, ARGV[i + 2]), ARGV[i + 3], ARGV[i + 4])
    redis.call('SADD', B .. ':wk', ARGV[i + 2] .. '\0' .. ns)
  end
end
return 1
"""

_LUA = {
    "put": _LUA_PUT,
    "writes": _LUA_WRITES,
    "read": _LUA_READ,
    "delete_thread": _LUA_DELETE_THREAD,
    "delete_runs": _LUA_DELETE_RUNS,
    "keep_latest": _LUA_KEEP_LATEST,
    "dump": _LUA_DUMP,
    "load": _LUA_LOAD,
}


def _esc(text: str) -> str:
    """A key part that cannot end a hash tag or a part early: %, : and } escaped as in URLs (the scripts' esc())."""
    return text.replace("%", "%25").replace(":", "%3A").replace("}", "%7D")


def _upper(bounds: list[tuple[str, bool]]) -> str:
    """The ZREVRANGEBYLEX max that meets every (value, inclusive) upper bound: the least value, exclusive on a tie."""
    if not bounds:
        return "+"
    least = min(v for v, _ in bounds)
    return ("[" if all(inclusive for v, inclusive in bounds if v == least) else "(") + least


def _pairs(flat: Sequence[T]) -> Iterator[tuple[T, T]]:
    return zip(flat[::2], flat[1::2])


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


Entry = tuple[str, str, str]  # (checkpoint_id, thread_id, ns): the order of list(), newest first when descending
Blobs = dict[tuple[bytes, bytes], bytes]  # (ns, channel NUL version) -> stored blob, as a read script returns them


class _RedisStorage(_Storage):
    """The primitives on plain Redis, over praison_db's Redis connection (its options, timeouts, retries, errors).

    Per thread, under ``<prefix>:lg:{<thread>}`` (B; the thread id, escaped, is the hash tag, so every key of a thread
    is in one slot and each call on a thread is one script there): ``B:i:<ns>`` a sorted set of the namespace's
    checkpoint ids (all scores 0: lexicographic, so the newest is its last member and ``before``/pages are ranges);
    ``B:c:<ns>`` hash id -> record (type, metadata JSON, checkpoint bytes); ``B:h:<ns>`` hash id -> header (run id,
    parent id, then the (channel, version) pairs it names); ``B:b:<ns>`` hash channel+version -> blob;
    ``B:w:<ns>:<id>`` hash task+idx -> write; ``B:x`` the thread's (id, ns) across namespaces; ``B:ns``, ``B:wk``,
    ``B:runs``, ``B:r:<run>`` what delete, copy and delete_for_runs walk. Across threads, in slots of their own and
    written in a step of their own: ``<prefix>:lg:all`` (every (id, thread, ns), for ``list`` without a thread) and
    ``<prefix>:lg:run:<run>`` (the threads that hold checkpoints of a run).
    """

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.r: Any = conn.client
        self.native_async = conn.asynchronous
        self.prefix: str = conn.prefix
        self.all_key = f"{self.prefix}:lg:all"
        # A Redis Cluster: the index step lands before the scripts, sent one by one (see _execute).
        self.stepwise = bool(getattr(conn, "cluster", False))
        self.scripts = {name: (_LUA_PRELUDE + body, hashlib.sha1((_LUA_PRELUDE + body).encode()).hexdigest()) for name, body in _LUA.items()}

    def translate(self, error: Exception) -> Error:
        return self.conn.translate(error)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.conn.release()

    # ---- keys and calls ----

    def _base(self, thread_id: str) -> str:
        return f"{self.prefix}:lg:{{{_esc(thread_id)}}}"

    def _run_key(self, run_id: str) -> str:
        return f"{self.prefix}:lg:run:{_esc(run_id)}"

    def _call(self, name: str, thread_id: str, args: list[Any]) -> Any:
        from redis.exceptions import NoScriptError

        text, sha = self.scripts[name]
        base = self._base(thread_id)
        try:
            return self.r.evalsha(sha, 1, base + ":ns", base, *args)
        except NoScriptError:  # a server that forgot it (a restart, SCRIPT FLUSH): EVAL runs and caches it again
            return self.r.eval(text, 1, base + ":ns", base, *args)

    def _execute(self, index: Callable[[Any], int] | None, calls: list[tuple[str, str, list[Any]]]) -> list[Any]:
        """The index step (``index`` queues commands on the cross-thread keys and says how many), then scripts (name,
        thread, args), in one round trip; returns the scripts' results. Were a script forgotten by the server,
        everything is sent again with EVAL: each command and script here can run twice harmlessly. In a cluster,
        whose pipelines have no order across nodes (nor EVAL), the index step goes first, then each script."""
        from redis.exceptions import NoScriptError

        if self.stepwise:
            if index is not None:
                self._index(index)
            return [self._call(name, thread_id, args) for name, thread_id, args in calls]
        for attempt in (0, 1):
            pipe = self.r.pipeline(transaction=False)
            skip = index(pipe) if index is not None else 0
            for name, thread_id, args in calls:
                text, sha = self.scripts[name]
                base = self._base(thread_id)
                if attempt:
                    pipe.eval(text, 1, base + ":ns", base, *args)
                else:
                    pipe.evalsha(sha, 1, base + ":ns", base, *args)
            try:
                return list(pipe.execute()[skip:]) if skip or calls else []
            except NoScriptError:
                if attempt:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _index(self, commands: Callable[[Any], int]) -> None:
        """Commands on the cross-thread keys alone, in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        if commands(pipe):
            pipe.execute()

    # ---- writes ----

    def put(self, item: _Put) -> None:
        header = "\0".join([item.run_id or "", item.parent_id or "", *(x for pair in item.versions for x in pair)])
        record = item.type.encode() + b"\0" + item.metadata.encode() + b"\0" + item.data
        args: list[Any] = [item.ns, item.checkpoint_id, record, header, item.run_id or ""]
        for channel, version, kind, blob in item.blobs:
            args += [f"{channel}\0{version}", kind.encode() if blob is None else kind.encode() + b"\0" + blob]

        def index(pipe: Any) -> int:
            pipe.zadd(self.all_key, {f"{item.checkpoint_id}\0{item.thread_id}\0{item.ns}": 0})
            if item.run_id is None:
                return 1
            pipe.sadd(self._run_key(item.run_id), item.thread_id)
            return 2

        self._execute(index, [("put", item.thread_id, args)])

    def put_writes(self, thread_id: str, ns: str, checkpoint_id: str, writes: list[Write]) -> None:
        args: list[Any] = [ns, checkpoint_id]
        for task, idx, channel, kind, blob, path in writes:
            args += [f"{task}\0{idx}", b"\0".join([channel.encode(), kind.encode(), path.encode(), blob]), "1" if idx < 0 else "0"]
        self._call("writes", thread_id, args)

    # ---- reads ----

    def _row(self, thread_id: str, found: tuple[list[Any], Blobs], decode: Decode) -> _Row:
        (cid, ns, record, header, writes), blobs = found
        kind, _, rest = record.partition(b"\0")
        metadata, _, data = rest.partition(b"\0")
        parts = header.split(b"\0")
        values: dict[str, tuple[str, bytes | None]] = {}
        for channel, version in _pairs(parts[2:]):
            blob = blobs.get((ns, channel + b"\0" + version))
            if blob is not None:
                blob_kind, sep, blob_data = blob.partition(b"\0")
                values[channel.decode()] = (blob_kind.decode(), blob_data if sep else None)
        stored: list[Write] = []
        for name, value in _pairs(writes):
            task, _, idx = name.decode().rpartition("\0")
            channel, write_kind, path, blob = value.split(b"\0", 3)
            stored.append((task, int(idx), channel.decode(), write_kind.decode(), blob, path.decode()))
        checkpoint = decode((kind.decode(), data))
        return _Row(thread_id, ns.decode(), cid.decode(), parts[1].decode() or None, checkpoint, metadata.decode(), values, stored)

    def _read(self, thread_id: str, reply: list[Any]) -> dict[Entry, tuple[list[Any], Blobs]]:
        """A read script's reply: each row (or metadata) with the values of its thread, by (id, thread, ns)."""
        rows, flat = reply
        blobs: Blobs = {}
        for i in range(0, len(flat), 3):
            ns, fields, values = flat[i : i + 3]
            blobs.update(((ns, f), v) for f, v in zip(fields, values) if v is not None)
        return {(raw[0].decode(), thread_id, raw[1].decode()): (raw, blobs) for raw in rows}

    def get(self, thread_id: str, ns: str, checkpoint_id: str | None, decode: Decode) -> _Row | None:
        args = ["latest", ns] if checkpoint_id is None else ["ids", "0", checkpoint_id, ns]
        found = self._read(thread_id, self._call("read", thread_id, args))
        return next((self._row(thread_id, f, decode) for f in found.values()), None)

    def _fetch(self, entries: list[Entry], meta: bool) -> dict[Entry, tuple[list[Any], Blobs]]:
        """The rows (or metadata) of these checkpoints, of any threads, in one round trip; missing ones left out."""
        by_thread: dict[str, list[str]] = {}
        for cid, thread_id, ns in entries:
            by_thread.setdefault(thread_id, []).extend([cid, ns])
        calls = [("read", t, ["ids", "1" if meta else "0", *ids]) for t, ids in by_thread.items()]
        found: dict[Entry, tuple[list[Any], Blobs]] = {}
        for thread_id, reply in zip(by_thread, self._execute(None, calls)):
            found.update(self._read(thread_id, reply))
        return found

    def _scan(self, query: _Query, cursor: Entry | None, want: int, meta: bool) -> tuple[list[Entry], dict[Entry, tuple[list[Any], Blobs]], Entry | None]:
        """Up to ``want`` index entries after ``cursor`` (newest first) and the rows (or metadata) of those that exist;
        the last entry read, None once the index has no more."""
        highs: list[tuple[str, bool]] = [] if query.before is None else [(query.before, False)]
        cid = query.checkpoint_id
        flag = "1" if meta else "0"
        if query.thread_id is not None:
            if query.ns is not None:  # one namespace: a range of its sorted set of ids
                low = "-" if cid is None else "[" + cid
                highs += ([] if cid is None else [(cid, True)]) + ([] if cursor is None else [(cursor[0], False)])
                args = ["ns", query.ns, _upper(highs), low, str(want), flag]
            else:  # every namespace of the thread: a range of its (id NUL ns) set
                low = "-" if cid is None else "[" + cid + "\0"
                highs += ([] if cid is None else [(cid + "\x01", False)]) + ([] if cursor is None else [(f"{cursor[0]}\0{cursor[2]}", False)])
                args = ["thread", _upper(highs), low, str(want), flag]
            found = self._read(query.thread_id, self._call("read", query.thread_id, args))
            entries = list(found)
            return entries, found, (entries[-1] if len(entries) == want else None)
        low = "-" if cid is None else "[" + cid + "\0"
        highs += ([] if cid is None else [(cid + "\x01", False)]) + ([] if cursor is None else [("\0".join(cursor), False)])
        members = self.r.zrevrangebylex(self.all_key, _upper(highs), low, start=0, num=want)
        scanned: list[Entry] = [tuple(m.decode().split("\0")) for m in members]  # type: ignore[misc]
        entries = [e for e in scanned if query.ns is None or e[2] == query.ns]
        found = self._fetch(entries, meta) if entries else {}
        # An entry without a checkpoint is a put that failed after its index step, or a delete in progress: skipped.
        return [e for e in entries if e in found], found, (scanned[-1] if len(scanned) == want else None)

    def page(self, query: _Query, after: tuple[str, str, str] | None, n: int, decode: Decode) -> list[_Row]:
        rows: list[_Row] = []
        cursor: Entry | None = after
        while len(rows) < n:
            # Metadata first when filtering: rows are read only for the checkpoints that match.
            want = n - len(rows) if not query.filter and query.thread_id is not None else max(n - len(rows), _PAGE)
            entries, found, cursor = self._scan(query, cursor, want, bool(query.filter))
            if query.filter:
                entries = [e for e in entries if _matches(query.filter, json.loads(found[e][0][2]))]
                found = self._fetch(entries, False) if entries else {}
            rows += [self._row(e[1], found[e], decode) for e in entries if e in found]
            if cursor is None:
                break
        return rows[:n]

    # ---- deletes and copies ----

    def _unindex(self, pipe: Any, thread_id: str, members: Sequence[bytes]) -> int:
        """Queue the removal of checkpoints of a thread (index members: id NUL ns) from the cross-thread index."""
        encoded = thread_id.encode()
        queued = 0
        for some in _chunks(members, 1000):
            pipe.zrem(self.all_key, *[m.replace(b"\0", b"\0" + encoded + b"\0", 1) for m in some])
            queued += 1
        return queued

    def delete_threads(self, thread_ids: list[str]) -> None:
        # Each thread's keys first, then its entries in the cross-thread keys: those always cover what exists.
        for some in _chunks(thread_ids, 100):
            results = self._execute(None, [("delete_thread", t, []) for t in some])
            self._index(functools.partial(self._forget_threads, list(zip(some, results))))

    def _forget_threads(self, done: list[tuple[str, Any]], pipe: Any) -> int:
        return sum(self._forget(pipe, thread_id, gone, runs) for thread_id, (gone, runs) in done)

    def _forget(self, pipe: Any, thread_id: str, gone: Sequence[bytes], runs: Sequence[bytes]) -> int:
        queued = self._unindex(pipe, thread_id, gone)
        for run in runs:
            pipe.srem(self._run_key(run.decode()), thread_id)
        return queued + len(runs)

    def delete_runs(self, run_ids: list[str], decode: Decode) -> None:
        pipe = self.r.pipeline(transaction=False)
        for run in run_ids:
            pipe.smembers(self._run_key(run))
        runs_of: dict[str, list[str]] = {}
        for run, threads in zip(run_ids, pipe.execute()):
            for thread_id in sorted(threads):
                runs_of.setdefault(thread_id.decode(), []).append(run)
        if not runs_of:
            return
        results = self._execute(None, [("delete_runs", t, runs) for t, runs in runs_of.items()])

        def index(pipe: Any) -> int:
            queued = 0
            for (thread_id, runs), gone in zip(runs_of.items(), results):
                queued += self._unindex(pipe, thread_id, gone)
                for run in runs:
                    pipe.srem(self._run_key(run), thread_id)
                    queued += 1
            return queued

        self._index(index)

    def copy_thread(self, source: str, target: str) -> None:
        # One script reads the source, one writes the target: the target gets a consistent copy, all or nothing.
        spaces, writes = self._call("dump", source, [])
        args: list[Any] = []
        members: list[str] = []
        runs: set[str] = set()
        for ns, records, headers, blobs in spaces:
            header_of = dict(_pairs(headers))
            for cid, record in _pairs(records):
                header = header_of.get(cid)
                if header is None:
                    continue
                args += ["c", ns, cid, record, header]
                members.append(f"{cid.decode()}\0{target}\0{ns.decode()}")
                run = header.split(b"\0", 1)[0].decode()
                if run:
                    runs.add(run)
            for name, value in _pairs(blobs):
                args += ["b", ns, name, value, ""]
        for cid, ns, stored in writes:
            for name, value in _pairs(stored):
                args += ["w", ns, cid, name, value]
        if not args:
            return

        def index(pipe: Any) -> int:
            queued = 0
            for some in _chunks(members, 1000):
                pipe.zadd(self.all_key, dict.fromkeys(some, 0))
                queued += 1
            for run in sorted(runs):
                pipe.sadd(self._run_key(run), target)
                queued += 1
            return queued

        self._execute(index, [("load", target, args)])

    def keep_latest(self, thread_id: str, decode: Decode) -> None:
        result = self._call("keep_latest", thread_id, ["check"])
        if int(result[0]) == 0:
            if any(_uses_delta(m.decode()) for m in result[1]):
                raise _delta_refusal(thread_id)
            result = self._call("keep_latest", thread_id, ["go"])
        gone = result[1]
        self._index(lambda pipe: self._unindex(pipe, thread_id, gone))


# ---- MongoDB ----

_KEY_INDEX = "thread_ns_checkpoint"
_ROW_FIELDS = {"_id": 0, "thread_id": 1, "checkpoint_ns": 1, "checkpoint_id": 1, "parent_checkpoint_id": 1, "type": 1, "checkpoint": 1, "metadata": 1}
_NOT_KEY = {"_id": 0, "thread_id": 0, "checkpoint_ns": 0}
_CLIENT_BULK_WRITE = 25  # the wire version of MongoDB 8.0, whose bulkWrite command writes to several collections


def _bson_scalar(value: Any) -> bool:
    """A metadata value MongoDB compares as list() does (numbers by value, booleans apart), short enough to be kept
    twice: what the prefilter uses, the same rule for the stored values and the filter's."""
    if isinstance(value, str):
        return len(value) <= 200
    return isinstance(value, (bool, int, float)) and _plain_json(value)


def _duplicate_key(error: Exception) -> bool:
    """A unique-index violation, from any write, a client bulkWrite's included."""
    from ..backends.mongo import _DUPLICATE_KEY, _is_duplicate_key

    nested = getattr(error, "write_errors", None) or []  # ClientBulkWriteException
    return _is_duplicate_key(error) or any(isinstance(e, Mapping) and e.get("code") in _DUPLICATE_KEY for e in nested)


class _MongoStorage(_Storage):
    """The primitives on MongoDB, over praison_db's MongoDB connection (its options, timeouts, errors).

    Collections ``<collection_prefix>lg_checkpoints``, ``lg_blobs`` and ``lg_writes``, with a unique index on each
    one's key, as the SQL tables. A checkpoint document also keeps its metadata's plain top-level values under ``mf``,
    which ``list`` filters narrow on (every document is checked exactly after). Multi-document writes run in a
    transaction where the server has them; a ``put`` writes the blobs first and the checkpoint last, so a reader sees a
    checkpoint only with its values, transaction or not.
    """

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.native_async = conn.asynchronous
        self.c = conn.collection("lg_checkpoints")
        self.b = conn.collection("lg_blobs")
        self.w = conn.collection("lg_writes")
        self.client_bulk = int(conn.client.admin.command("hello").get("maxWireVersion", 0)) >= _CLIENT_BULK_WRITE
        # Idempotent; cheap when the indexes exist. The key index is also "newest of a thread": sorted by id, read backwards.
        self.c.create_index([("thread_id", 1), ("checkpoint_ns", 1), ("checkpoint_id", 1)], unique=True, name=_KEY_INDEX)
        self.c.create_index([("run_id", 1)], sparse=True, name="run")
        self.b.create_index([("thread_id", 1), ("checkpoint_ns", 1), ("channel", 1), ("version", 1)], unique=True, name="thread_ns_channel_version")
        self.w.create_index(
            [("thread_id", 1), ("checkpoint_ns", 1), ("checkpoint_id", 1), ("task_id", 1), ("idx", 1)], unique=True, name="thread_ns_checkpoint_task_idx"
        )

    def translate(self, error: Exception) -> Error:
        return self.conn.translate(error)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.conn.release()

    def _write(self, work: Callable[[Any], None], *, transaction: bool = True) -> None:
        """Run ``work(session)`` (in a transaction where the server has them, if asked); again when two upserts of one
        key raced and one lost with a duplicate key (the retry finds the other's document)."""
        for attempt in range(5):
            try:
                if transaction:
                    self.conn.transaction(work)
                else:
                    work(None)
                return
            except Exception as e:
                if attempt == 4 or not _duplicate_key(e):
                    raise

    # ---- writes ----

    def put(self, item: _Put) -> None:
        from pymongo import UpdateOne

        metadata = json.loads(item.metadata)
        fields: dict[str, Any] = {
            "parent_checkpoint_id": item.parent_id, "type": item.type, "checkpoint": item.data, "metadata": item.metadata,
            "mf": {k: v for k, v in metadata.items() if _SAFE_KEY.match(k) and _bson_scalar(v)},
        }
        update: dict[str, Any] = {"$set": fields}
        if item.run_id is None:
            update["$unset"] = {"run_id": ""}  # absent, not null: the run index is sparse
        else:
            fields["run_id"] = item.run_id
        key = {"thread_id": item.thread_id, "checkpoint_ns": item.ns, "checkpoint_id": item.checkpoint_id}
        blobs = [
            ({"thread_id": item.thread_id, "checkpoint_ns": item.ns, "channel": ch, "version": v}, {"$setOnInsert": {"type": kind, "blob": data}})
            for ch, v, kind, data in item.blobs
        ]

        # No transaction: the checkpoint, written last, is the commit point (a failed put leaves only unnamed blobs).
        if self.client_bulk:
            # MongoDB 8.0+: blobs and checkpoint in one ordered bulkWrite, one round trip; a failure stops it there.
            ops = [UpdateOne(f, u, upsert=True, namespace=self.b.full_name) for f, u in blobs]
            ops.append(UpdateOne(key, update, upsert=True, namespace=self.c.full_name))
            self._write(lambda session: self.conn.client.bulk_write(ops, ordered=True), transaction=False)
            return

        def work(session: Any) -> None:
            if blobs:
                self.b.bulk_write([UpdateOne(f, u, upsert=True) for f, u in blobs], ordered=False, session=session)
            self.c.update_one(key, update, upsert=True, session=session)

        self._write(work, transaction=False)

    def put_writes(self, thread_id: str, ns: str, checkpoint_id: str, writes: list[Write]) -> None:
        from pymongo import UpdateOne

        ops = []
        for task, idx, channel, kind, blob, path in writes:
            value = {"channel": channel, "type": kind, "blob": blob, "task_path": path}
            ops.append(UpdateOne(
                {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id, "task_id": task, "idx": idx},
                {"$set": value} if idx < 0 else {"$setOnInsert": value},
                upsert=True,
            ))
        self._write(lambda session: self.w.bulk_write(ops, ordered=False, session=session), transaction=len(ops) > 1)

    # ---- reads ----

    def get(self, thread_id: str, ns: str, checkpoint_id: str | None, decode: Decode) -> _Row | None:
        query: dict[str, Any] = {"thread_id": thread_id, "checkpoint_ns": ns}
        if checkpoint_id is not None:
            query["checkpoint_id"] = checkpoint_id
        found = list(self.c.find(query, _ROW_FIELDS).sort([("checkpoint_id", -1)]).limit(1).hint(_KEY_INDEX))
        return self._complete(found, decode)[0] if found else None

    def page(self, query: _Query, after: tuple[str, str, str] | None, n: int, decode: Decode) -> list[_Row]:
        where: dict[str, Any] = {}
        if query.thread_id is not None:
            where["thread_id"] = query.thread_id
        if query.ns is not None:
            where["checkpoint_ns"] = query.ns
        both: list[dict[str, Any]] = []
        if query.checkpoint_id is not None:
            both.append({"checkpoint_id": query.checkpoint_id})
        if query.before is not None:
            both.append({"checkpoint_id": {"$lt": query.before}})
        one_namespace = query.thread_id is not None and query.ns is not None
        if after is not None:
            cid, thread_id, ns = after
            if one_namespace:
                both.append({"checkpoint_id": {"$lt": cid}})
            else:
                both.append({"$or": [
                    {"checkpoint_id": {"$lt": cid}},
                    {"checkpoint_id": cid, "thread_id": {"$lt": thread_id}},
                    {"checkpoint_id": cid, "thread_id": thread_id, "checkpoint_ns": {"$lt": ns}},
                ]})
        # Narrow on the plain values (a superset of the matches: the caller checks each row exactly).
        both += [{f"mf.{k}": v} for k, v in query.filter.items() if _SAFE_KEY.match(k) and _bson_scalar(v)]
        if both:
            where["$and"] = both
        cursor = self.c.find(where, _ROW_FIELDS)
        if one_namespace:
            cursor = cursor.sort([("checkpoint_id", -1)]).hint(_KEY_INDEX)
        else:
            cursor = cursor.sort([("checkpoint_id", -1), ("thread_id", -1), ("checkpoint_ns", -1)])
        found = list(cursor.limit(n))
        return self._complete(found, decode) if found else []

    def _complete(self, found: list[Mapping[str, Any]], decode: Decode) -> list[_Row]:
        """Documents with their blobs and pending writes: one more read per (thread, namespace), on the keys."""
        decoded = [(d, decode((d["type"], bytes(d["checkpoint"])))) for d in found]
        groups: dict[tuple[str, str], list[tuple[Mapping[str, Any], dict[str, Any]]]] = {}
        for d, checkpoint in decoded:
            groups.setdefault((d["thread_id"], d["checkpoint_ns"]), []).append((d, checkpoint))
        blobs: dict[tuple[str, str, str, str], tuple[str, bytes | None]] = {}
        writes: dict[tuple[str, str, str], list[Write]] = {}
        for (thread_id, ns), members in groups.items():
            pairs = {pair for _, checkpoint in members for pair in _versions(checkpoint).items()}
            here = {"thread_id": thread_id, "checkpoint_ns": ns}
            channels = sorted({p[0] for p in pairs})
            ids = [d["checkpoint_id"] for d, _ in members]
            for first, some in enumerate(_chunks(sorted({p[1] for p in pairs}), 2000) if pairs else [[]]):
                # The blobs (channel IN ... AND version IN ...: each an index lookup) and the writes in one read.
                writes_part = [{"$match": {**here, "checkpoint_id": {"$in": ids if first == 0 else []}}}, {"$project": _NOT_KEY}]
                pipeline = [
                    {"$match": {**here, "channel": {"$in": channels}, "version": {"$in": list(some)}}},
                    {"$project": _NOT_KEY},
                    {"$unionWith": {"coll": self.w.name, "pipeline": writes_part}},
                ]
                for v in self.b.aggregate(pipeline):
                    if "task_id" in v:
                        writes.setdefault((thread_id, ns, v["checkpoint_id"]), []).append(
                            (v["task_id"], int(v["idx"]), v["channel"], v["type"], bytes(v["blob"]), v["task_path"])
                        )
                    else:
                        data = v.get("blob")
                        blobs[(thread_id, ns, v["channel"], v["version"])] = (v["type"], None if data is None else bytes(data))
        rows = []
        for d, checkpoint in decoded:
            thread_id, ns, checkpoint_id = d["thread_id"], d["checkpoint_ns"], d["checkpoint_id"]
            values = {}
            for channel, version in _versions(checkpoint).items():
                blob = blobs.get((thread_id, ns, channel, version))
                if blob is not None:
                    values[channel] = blob
            rows.append(_Row(
                thread_id, ns, checkpoint_id, d.get("parent_checkpoint_id"), checkpoint, d["metadata"], values,
                writes.get((thread_id, ns, checkpoint_id), []),
            ))
        return rows

    # ---- deletes and copies ----

    def delete_threads(self, thread_ids: list[str]) -> None:
        def work(session: Any) -> None:
            # Checkpoints first: a reader never sees a checkpoint whose values are already gone.
            for collection in (self.c, self.w, self.b):
                for some in _chunks(thread_ids):
                    collection.delete_many({"thread_id": {"$in": list(some)}}, session=session)

        self._write(work)

    def _drop(self, session: Any, thread_id: str, ns: str, doomed: list[tuple[str, str, bytes]], decode: Decode) -> None:
        """Delete these checkpoints (id, type, bytes) of (thread, ns) with their writes and the blobs no remaining
        checkpoint of (thread, ns) uses; a remaining checkpoint whose parent goes loses its parent."""
        here = {"thread_id": thread_id, "checkpoint_ns": ns}
        ids = [d[0] for d in doomed]
        freed = {pair for d in doomed for pair in _versions(decode((d[1], bytes(d[2])))).items()}
        for some in _chunks(ids):
            self.c.delete_many({**here, "checkpoint_id": {"$in": list(some)}}, session=session)
            self.w.delete_many({**here, "checkpoint_id": {"$in": list(some)}}, session=session)
            self.c.update_many({**here, "parent_checkpoint_id": {"$in": list(some)}}, {"$set": {"parent_checkpoint_id": None}}, session=session)
        used: set[tuple[str, str]] = set()
        for d in self.c.find(here, {"_id": 0, "type": 1, "checkpoint": 1}, session=session):
            used.update(_versions(decode((d["type"], bytes(d["checkpoint"])))).items())
        garbage: dict[str, list[str]] = {}
        for channel, version in freed - used:
            garbage.setdefault(channel, []).append(version)
        for channel, versions in garbage.items():
            for some in _chunks(versions):
                self.b.delete_many({**here, "channel": channel, "version": {"$in": list(some)}}, session=session)

    def delete_runs(self, run_ids: list[str], decode: Decode) -> None:
        def work(session: Any) -> None:
            groups: dict[tuple[str, str], list[tuple[str, str, bytes]]] = {}
            for some in _chunks(run_ids):
                fields = {"_id": 0, "thread_id": 1, "checkpoint_ns": 1, "checkpoint_id": 1, "type": 1, "checkpoint": 1}
                for d in self.c.find({"run_id": {"$in": list(some)}}, fields, session=session):
                    groups.setdefault((d["thread_id"], d["checkpoint_ns"]), []).append((d["checkpoint_id"], d["type"], d["checkpoint"]))
            for (thread_id, ns), doomed in groups.items():
                self._drop(session, thread_id, ns, doomed, decode)

        self._write(work)

    def copy_thread(self, source: str, target: str) -> None:
        from pymongo import UpdateOne

        keys = {
            self.b: ("checkpoint_ns", "channel", "version"),
            self.w: ("checkpoint_ns", "checkpoint_id", "task_id", "idx"),
            self.c: ("checkpoint_ns", "checkpoint_id"),
        }

        def work(session: Any) -> None:
            # Values and writes before the checkpoints that name them; what the target has under a key, it keeps.
            for collection, key in keys.items():
                ops: list[Any] = []
                for d in collection.find({"thread_id": source}, {"_id": 0}, session=session):
                    d = {**d, "thread_id": target}
                    ops.append(UpdateOne({"thread_id": target, **{k: d[k] for k in key}}, {"$setOnInsert": d}, upsert=True))
                    if len(ops) == 1000:
                        collection.bulk_write(ops, ordered=False, session=session)
                        ops = []
                if ops:
                    collection.bulk_write(ops, ordered=False, session=session)

        self._write(work)

    def keep_latest(self, thread_id: str, decode: Decode) -> None:
        def work(session: Any) -> None:
            marked = {"thread_id": thread_id, "metadata": {"$regex": "counters_since_delta_snapshot|delta_writes_versioned"}}
            if any(_uses_delta(d["metadata"]) for d in self.c.find(marked, {"_id": 0, "metadata": 1}, session=session)):
                raise _delta_refusal(thread_id)
            heads = self.c.aggregate(
                [{"$match": {"thread_id": thread_id}}, {"$group": {"_id": "$checkpoint_ns", "head": {"$max": "$checkpoint_id"}}}],
                session=session,
            )
            for head in list(heads):
                older = {"thread_id": thread_id, "checkpoint_ns": head["_id"], "checkpoint_id": {"$lt": head["head"]}}
                doomed = [(d["checkpoint_id"], d["type"], d["checkpoint"]) for d in self.c.find(older, {"_id": 0, "checkpoint_id": 1, "type": 1, "checkpoint": 1}, session=session)]
                if doomed:
                    self._drop(session, thread_id, head["_id"], doomed, decode)

        self._write(work)


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
            if self.query.filter and not _matches(self.query.filter, metadata):
                continue
            if self.left is not None:
                if self.left <= 0:
                    self.done = True
                    return
                self.left -= 1
                if self.left == 0:
                    self.done = True
            yield row, metadata


def _family(scheme: str) -> str:
    """Which storage a scheme gets: memory, sql, redis or mongo; anything else is a ConfigError."""
    entry = entry_for(scheme)
    if scheme == "memory":
        return "memory"
    if scheme.split("+", 1)[0] in ("singlestoredb", "singlestore"):
        # Its tables need ROWSTORE, shard keys and no foreign keys, which the checkpoint schema does not say yet.
        raise ConfigError(f"PraisonCheckpointSaver does not keep checkpoints on SingleStore yet; use {SUPPORTED_SCHEMES}")
    if entry.sqlalchemy is not None:
        return "sql"
    for family, module in (("redis", "praison_db.backends.redis:"), ("mongo", "praison_db.backends.mongo:")):
        if (entry.conversations or "").startswith(module):
            return family
    raise ConfigError(f"PraisonCheckpointSaver keeps checkpoints in SQL databases, Redis, MongoDB or memory, not {scheme}://; use {SUPPORTED_SCHEMES}")


def _driver(family: str) -> Any:
    """praison_db's backend module of a family; a missing driver is a ConfigError naming the extra."""
    import importlib

    try:
        return importlib.import_module(f"praison_db.backends.{family}")
    except ModuleNotFoundError as e:
        raise ConfigError(f"PraisonCheckpointSaver on {family} needs the {e.name} package: pip install 'praison-db[{family}]'") from e


def _check_redis_options(url: StoreURL, given: Mapping[str, Any]) -> None:
    """praison_db's Redis options, checked before any I/O (the connection checks them again when it opens)."""
    backend = _driver("redis")
    opts, driver = resolve_options(f"{url.scheme}://", backend.OPTIONS, given, passthrough=True)
    unknown = sorted(set(driver) - backend.DRIVER_OPTIONS)
    if unknown:
        valid = ", ".join(sorted(backend.OPTIONS)) + "; redis-py options: " + ", ".join(sorted(backend.DRIVER_OPTIONS))
        raise ConfigError(f"unknown option {unknown[0]!r} for {url.scheme}://; valid options: {valid}")
    if opts.get("ttl") is not None:
        raise ConfigError("PraisonCheckpointSaver keeps checkpoints until they are deleted or pruned; drop the ttl option")


def _check_mongo_options(url: StoreURL, given: Mapping[str, Any], keywords: Mapping[str, Any]) -> None:
    """praison_db's MongoDB option and pymongo's, checked before any I/O."""
    backend = _driver("mongo")
    resolve_options(f"{url.scheme}://", backend.OPTIONS, given, passthrough=True)
    from pymongo.common import validate
    from pymongo.errors import ConfigurationError
    from pymongo.uri_parser import split_options

    query = backend._split_url(url, backend.OPTIONS)[0].partition("?")[2]
    try:
        if query:
            split_options(query, validate=True, warn=False)
        for name, value in keywords.items():
            if name not in backend.OPTIONS:
                validate(name, value)
    except (ConfigurationError, ValueError, TypeError) as e:
        valid = ", ".join(sorted(backend.OPTIONS))
        raise ConfigError(
            f"invalid option for {url.scheme}://: {str(e).split('. ')[0][:200]}; valid options: {valid}, or any MongoDB "
            "connection-string option"
        ) from None


def _over(conn: Any, storage: Callable[[Any], _Storage]) -> _Storage:
    """A storage on a fresh connection, which it then owns; the connection is let go if the storage cannot start."""
    try:
        return storage(conn)
    except Exception as e:
        conn.release()
        if isinstance(e, Error):
            raise
        raise conn.translate(e) from e


class PraisonCheckpointSaver(BaseCheckpointSaver[str]):
    """LangGraph's checkpointer over a praison_db URL: SQLite, PostgreSQL, MySQL/MariaDB, Redis, MongoDB or memory://.

    Args:
        url: where the checkpoints live, e.g. ``"sqlite:///agent.db"``, ``"postgresql://ai:ai@localhost/ai"``,
            ``"redis://localhost:6379/0"`` or ``"mongodb://localhost:27017/agents"``.
        serde: the serializer of checkpoints, channel values and writes (LangGraph's default when None).
        **options: praison_db's options for that backend (SQL: ``table_prefix``, ``pool_size``, ``read_timeout``,
            ``auto_upgrade``, ...; Redis: ``prefix`` and redis-py's; MongoDB: ``collection_prefix`` and pymongo's), as
            keyword arguments or in the URL's query string.

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
        self._family = _family(self._url.scheme)
        given = {**self._url.query, **options}
        if self._family == "memory":
            resolve_options("memory://", {}, given)
            self._sync = self._async = _MemoryStorage(self._url)
        elif self._family == "sql":
            from ..backends.sql.engine import OPTIONS, _check_url

            _, driver_args = resolve_options(f"{self._url.scheme}://", OPTIONS, given, passthrough=True)
            _check_url(self._url, driver_args)
        elif self._family == "redis":
            _check_redis_options(self._url, given)
        else:
            _check_mongo_options(self._url, given, options)

    # ---- opening, running, closing ----

    def _open(self, asynchronous: bool) -> _Storage:
        if self._family == "redis":
            return _over(_driver("redis")._Connection(self._url, self._options, asynchronous=asynchronous), _RedisStorage)
        if self._family == "mongo":
            return _over(_driver("mongo")._Connection(self._url, self._options, asynchronous=asynchronous), _MongoStorage)
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
        """(the version of the checkpoint tables, the version this praison-db expects); None where there are no tables
        (memory://, Redis, MongoDB)."""
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
            tuple((_ident(c, "channel name", 10_000), _ident(v, "channel version", 10_000)) for c, v in _versions(checkpoint).items()),
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
