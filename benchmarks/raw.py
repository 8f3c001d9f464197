"""The physical limit: the same work as praison_db, written directly against each raw driver.

Every raw side stores the same rows (same ids, timestamps, JSON text) with the same durability as praison_db:

- SQL (sqlite3, psycopg, pymysql): praison_db's own schema (created once by praison_db under the ``raw_`` prefix),
  one transaction per append that bumps the session's counter row and inserts the message; SQLite in WAL mode with
  ``synchronous=FULL``, PostgreSQL and MariaDB at their durable defaults.
- JSON files: praison_db's file layout; append = open, write one line, fsync; the newest N = read the file's tail.
- YAML files: the same in praison_db's YAML layout, one document per message through PyYAML's C dumper and loader.
- Redis (redis-py): one Lua script per append, like praison_db's; Lists and a sorted set of activity.
- MongoDB (pymongo): ``find_one_and_update`` of the counter + ``insert_one``, in one transaction, like praison_db;
  the newest N is the seq range after the session's length, which the raw side keeps in-process.
- ClickHouse (clickhouse-connect): INSERTs only, the seq known in-process; same tables and fsync settings.

What a raw side does not do is what praison_db adds: validation, models, error translation, SQLAlchemy, locks.
Reads return what the driver returns (tuples, bytes, dicts), without building model objects.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from praison_db.files import fsync_dir as _fsync_dir, session_file_stem  # naming and folder fsync: plain helpers
from praison_db.facade import open_store

__all__ = ["RawSql", "RawJson", "RawYaml", "RawRedis", "RawMongo", "RawClickHouse"]

_M_COLUMNS = ("session_id", "seq", "id", "role", "content", "name", "tool_calls", "tool_call_id", "metadata", "created_at")
_S_COLUMNS = ("session_id", "user_id", "agent_id", "session_type", "name", "metadata", "created_at", "updated_at", "message_count")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _json_or_none(value: Any) -> str | None:
    return None if value is None else _dumps(value)


def _us(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def _session_times(n: int) -> list[datetime]:
    """Distinct activity times for ``n`` setup sessions, newest first, all in the past."""
    base = _now() - timedelta(hours=1)
    return [base - timedelta(milliseconds=i) for i in range(n)]


def _fresh_message(session_id: str, seq: int, text: str, now: datetime) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex, "session_id": session_id, "seq": seq, "role": "user", "content": text, "name": None,
        "tool_calls": None, "tool_call_id": None, "metadata": {}, "created_at": now,
    }


def _create_schema(url: str, prefix: str) -> Any:
    """praison_db creates the tables (setup only): the raw side then works on the very same layout."""
    sep = "&" if "?" in url else "?"
    return open_store(f"{url}{sep}table_prefix={prefix}", "conversations")


# ---- SQL ----


@dataclass(frozen=True)
class _Dialect:
    begin: str  # opens a write transaction
    returning: bool  # UPDATE ... RETURNING (MariaDB has none: UPDATE, then SELECT, as praison_db does)
    upsert: str
    stamp: Callable[[datetime], Any]  # a UTC datetime as praison_db stores it
    placeholder: str = "%s"
    quote: str = '"'


_ON_CONFLICT = 'ON CONFLICT ("key") DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at'
_DIALECTS = {
    "sqlite": _Dialect("BEGIN IMMEDIATE", True, _ON_CONFLICT, lambda d: d.replace(tzinfo=None).isoformat(" ", "microseconds"), "?"),
    "postgresql": _Dialect("BEGIN", True, _ON_CONFLICT, lambda d: d),
    "mysql": _Dialect(
        "BEGIN", False, "ON DUPLICATE KEY UPDATE value = VALUES(value), expires_at = VALUES(expires_at)",
        lambda d: d.replace(tzinfo=None), quote="`",
    ),
}


def _connect_sql(kind: str, url: str) -> Any:
    """A DB-API connection in autocommit mode: writes open their transaction explicitly, reads are one statement."""
    if kind == "sqlite":
        conn = sqlite3.connect(url.split(":///", 1)[1], isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=30000", "foreign_keys=ON"):
            conn.execute(f"PRAGMA {pragma}")
        return conn
    if kind == "postgresql":
        import psycopg

        return psycopg.connect(url, autocommit=True)
    import pymysql

    from praison_db.url import parse_url

    u = parse_url(url)
    return pymysql.connect(
        host=u.host or "127.0.0.1", port=u.port or 3306, user=u.username or "root", password=u.password or "",
        database=u.path.strip("/"), charset="utf8mb4", autocommit=True,
    )


class RawSql:
    """sqlite3 / psycopg / pymysql on praison_db's schema under ``prefix``."""

    def __init__(self, kind: str, url: str, prefix: str) -> None:
        _create_schema(url, prefix).close()
        self.kind = kind
        self.d = d = _DIALECTS[kind]
        self.conn = _connect_sql(kind, url)
        self.cur = self.conn.cursor()
        p, ph, q = prefix, d.placeholder, d.quote

        def marks(n: int) -> str:
            return ", ".join([ph] * n)

        self.sql_bump = f"UPDATE {p}sessions SET message_count = message_count + 1, updated_at = {ph} WHERE session_id = {ph}"
        if d.returning:
            self.sql_bump += " RETURNING message_count"
        self.sql_count = f"SELECT message_count FROM {p}sessions WHERE session_id = {ph}"
        self.sql_message = f"INSERT INTO {p}messages ({', '.join(_M_COLUMNS)}) VALUES ({marks(len(_M_COLUMNS))})"
        self.sql_session = f"INSERT INTO {p}sessions ({', '.join(_S_COLUMNS)}) VALUES ({marks(len(_S_COLUMNS))})"
        # PostgreSQL's fastest durable append: one autocommitted statement, a CTE bumping the counter (as praison_db).
        others = [c for c in _M_COLUMNS if c != "seq"]
        self.sql_append_one = (
            f"WITH bump AS ({self.sql_bump}) "
            f"INSERT INTO {p}messages ({', '.join(others)}, seq) SELECT {marks(len(others))}, message_count FROM bump"
        )
        self.sql_newest = f"SELECT {', '.join(_M_COLUMNS)} FROM {p}messages WHERE session_id = {ph} ORDER BY seq DESC LIMIT {ph}"
        self.sql_list = f"SELECT {', '.join(_S_COLUMNS)} FROM {p}sessions ORDER BY updated_at DESC, session_id DESC LIMIT {ph}"
        self.sql_set = f"INSERT INTO {p}state ({q}key{q}, value, expires_at) VALUES ({marks(3)}) {d.upsert}"
        self.sql_get = f"SELECT value FROM {p}state WHERE {q}key{q} = {ph} AND (expires_at IS NULL OR expires_at > {ph})"

    def _write(self, sql: str, params: Any) -> None:
        """One statement in a write transaction of its own."""
        self.cur.execute(self.d.begin)
        self.cur.execute(sql, params)
        self.cur.execute("COMMIT")

    def _session_row(self, session_id: str, count: int, created: datetime, updated: datetime) -> tuple[Any, ...]:
        return (session_id, None, None, "agent", None, "{}", self.d.stamp(created), self.d.stamp(updated), count)

    def create_session(self, session_id: str) -> None:
        now = _now()
        self._write(self.sql_session, self._session_row(session_id, 0, now, now))

    def append(self, session_id: str, text: str) -> None:
        now = _now()
        stamp = self.d.stamp(now)
        cur = self.cur
        if self.kind == "postgresql":
            row = (session_id, uuid.uuid4().hex, "user", text, None, None, None, "{}", stamp)
            cur.execute(self.sql_append_one, (stamp, session_id, *row))
            return
        cur.execute(self.d.begin)
        cur.execute(self.sql_bump, (stamp, session_id))
        if not self.d.returning:
            cur.execute(self.sql_count, (session_id,))
        seq = cur.fetchone()[0]
        cur.execute(self.sql_message, (session_id, seq, uuid.uuid4().hex, "user", text, None, None, None, "{}", stamp))
        cur.execute("COMMIT")

    def import_session(self, session_id: str, msgs: list[dict[str, Any]]) -> None:
        stamp = self.d.stamp
        rows = [
            (
                session_id, m["seq"], m["id"], m["role"], m["content"], m["name"], _json_or_none(m["tool_calls"]),
                m["tool_call_id"], _dumps(m["metadata"]), stamp(datetime.fromisoformat(m["created_at"])),
            )
            for m in msgs
        ]
        first = datetime.fromisoformat(msgs[0]["created_at"])
        last = datetime.fromisoformat(msgs[-1]["created_at"])
        cur = self.cur
        cur.execute(self.d.begin)
        cur.execute(self.sql_session, self._session_row(session_id, len(msgs), first, last))
        cur.executemany(self.sql_message, rows)
        cur.execute("COMMIT")

    def newest(self, session_id: str, n: int) -> list[Any]:
        self.cur.execute(self.sql_newest, (session_id, n))
        return self.cur.fetchall()[::-1]

    def add_sessions(self, n: int) -> None:
        times = _session_times(n)
        rows = [self._session_row(f"list-{i:07d}", 0, t, t) for i, t in enumerate(times)]
        for start in range(0, n, 10_000):
            cur = self.cur
            cur.execute(self.d.begin)
            cur.executemany(self.sql_session, rows[start : start + 10_000])
            cur.execute("COMMIT")

    def list_recent(self, n: int) -> list[Any]:
        self.cur.execute(self.sql_list, (n,))
        return self.cur.fetchall()

    def state_set(self, key: str, value: Any) -> None:
        self._write(self.sql_set, (key, _dumps(value), None))

    def state_get(self, key: str) -> Any:
        self.cur.execute(self.sql_get, (key, time.time()))
        row = self.cur.fetchone()
        return None if row is None else json.loads(row[0])

    def version(self) -> str:
        queries = {
            "sqlite": (
                "SELECT 'SQLite ' || sqlite_version()", "PRAGMA journal_mode",
                "SELECT CASE synchronous WHEN 2 THEN 'FULL' WHEN 3 THEN 'EXTRA' ELSE synchronous END FROM pragma_synchronous",
            ),
            "postgresql": ("SELECT 'PostgreSQL ' || current_setting('server_version')", "SHOW synchronous_commit", "SHOW fsync"),
            "mysql": ("SELECT CONCAT('MariaDB/MySQL ', VERSION())", "SELECT @@innodb_flush_log_at_trx_commit", "SELECT @@sync_binlog"),
        }[self.kind]
        labels = {
            "sqlite": ("journal_mode", "synchronous"),
            "postgresql": ("synchronous_commit", "fsync"),
            "mysql": ("innodb_flush_log_at_trx_commit", "sync_binlog"),
        }[self.kind]
        values = []
        for sql in queries:
            self.cur.execute(sql)
            values.append(str(self.cur.fetchone()[0]))
        return f"{values[0]} ({labels[0]}={values[1]}, {labels[1]}={values[2]})"

    def close(self) -> None:
        self.conn.close()


# ---- JSON files ----


def _write_durably(path: Path, data: bytes, mode: str = "wb") -> None:
    with open(path, mode) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class RawJson:
    """Plain files in praison_db's layout: ``<stem>.session.json`` headers, ``<stem>.jsonl`` messages.

    State is one small file per key, replaced atomically (write, fsync, rename, fsync the folder), read back on
    every get: the same durability and cross-process freshness as praison_db's state file. The format is a few
    methods (:class:`RawYaml` is the same side in YAML).
    """

    HEADER, MESSAGES, STATE, END = ".session.json", ".jsonl", ".json", b"\n"

    def __init__(self, directory: str) -> None:
        self.dir = Path(directory)
        self.state_dir = self.dir / "raw-state"
        self._seq: dict[str, int] = {}
        self._files: dict[str, tuple[Path, Path]] = {}

    def _value(self, value: Any) -> bytes:
        """A header or a state value, as its file holds it."""
        return json.dumps(value, ensure_ascii=False).encode()

    def _record(self, message: dict[str, Any]) -> bytes:
        """A message as appended, its terminator included."""
        return (_dumps(message) + "\n").encode()

    def _load(self, data: bytes) -> Any:
        return json.loads(data)

    def _paths(self, session_id: str) -> tuple[Path, Path]:
        paths = self._files.get(session_id)
        if paths is None:
            stem = session_file_stem(session_id)
            paths = self._files[session_id] = (self.dir / f"{stem}{self.HEADER}", self.dir / f"{stem}{self.MESSAGES}")
        return paths

    def _header(self, session_id: str, created: str, updated: str) -> bytes:
        header = {
            "session_id": session_id, "user_id": None, "agent_id": None, "session_type": "agent", "name": None,
            "metadata": {}, "created_at": created, "updated_at": updated,
        }
        return self._value(header)

    def create_session(self, session_id: str) -> None:
        header, _ = self._paths(session_id)
        now = _now().isoformat()
        _write_durably(header, self._header(session_id, now, now))
        _fsync_dir(self.dir)
        self._seq[session_id] = 0

    def append(self, session_id: str, text: str) -> None:
        seq = self._seq[session_id] + 1
        message = _fresh_message(session_id, seq, text, _now())
        message["created_at"] = message["created_at"].isoformat()
        _write_durably(self._paths(session_id)[1], self._record(message), "ab")
        self._seq[session_id] = seq

    def import_session(self, session_id: str, msgs: list[dict[str, Any]]) -> None:
        header, lines = self._paths(session_id)
        _write_durably(lines, b"".join(self._record(m) for m in msgs))
        _write_durably(header, self._header(session_id, msgs[0]["created_at"], msgs[-1]["created_at"]))
        _fsync_dir(self.dir)
        self._seq[session_id] = len(msgs)

    def newest(self, session_id: str, n: int) -> list[Any]:
        with open(self._paths(session_id)[1], "rb") as f:
            size = f.seek(0, os.SEEK_END)
            block = 16 * 1024
            while True:
                start = max(0, size - block)
                f.seek(start)
                records = f.read(size - start).split(self.END)
                if start == 0 or len(records) >= n + 2:  # a partial first record, n whole ones, "" after the last
                    break
                block *= 4
        return [self._load(record) for record in records[-n - 1 : -1]]

    def add_sessions(self, n: int) -> None:
        # Each header gets the file time it would have had if written at its activity time, as when a store writes
        # it: both sides (praison_db's listing and the raw one) rely on file times agreeing with activity.
        for i, t in enumerate(_session_times(n)):
            sid = f"list-{i:07d}"
            path = self._paths(sid)[0]
            path.write_bytes(self._header(sid, t.isoformat(), t.isoformat()))
            stamp = int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1_000
            os.utime(path, ns=(stamp, stamp))
        _fsync_dir(self.dir)

    def list_recent(self, n: int) -> list[Any]:
        """Newest activity = newest file time (a header or a messages file): stat every file, read n headers."""
        with os.scandir(self.dir) as entries:
            stamped = [
                (e.stat().st_mtime_ns, e.name.split(".", 1)[0]) for e in entries if e.name.endswith((self.HEADER, self.MESSAGES))
            ]
        stems: list[str] = []
        for _, stem in heapq.nlargest(2 * n, stamped):
            if stem not in stems:
                stems.append(stem)
        return [self._load((self.dir / f"{stem}{self.HEADER}").read_bytes()) for stem in stems[:n]]

    def _state_path(self, key: str) -> Path:
        return self.state_dir / f"{hashlib.sha1(key.encode()).hexdigest()}{self.STATE}"

    def state_set(self, key: str, value: Any) -> None:
        self.state_dir.mkdir(exist_ok=True)  # made on first use; nothing next to the two fsyncs
        path = self._state_path(key)
        tmp = path.with_suffix(".tmp")
        _write_durably(tmp, self._value(value))
        os.replace(tmp, path)
        _fsync_dir(self.state_dir)

    def state_get(self, key: str) -> Any:
        try:
            return self._load(self._state_path(key).read_bytes())
        except FileNotFoundError:
            return None

    def version(self) -> str:
        return "plain files + fsync"

    def close(self) -> None:
        pass


class RawYaml(RawJson):
    """The same files in praison_db's YAML layout, written and read by PyYAML's C dumper and loader directly:
    ``<stem>.session.yaml`` headers, ``<stem>.yaml`` messages as ``---`` ... ``...`` documents (fields that are None
    left out, as praison_db writes them)."""

    HEADER, MESSAGES, STATE, END = ".session.yaml", ".yaml", ".yaml", b"\n...\n"

    def __init__(self, directory: str) -> None:
        import yaml

        super().__init__(directory)
        self._yaml, self._dumper, self._loader = yaml, yaml.CSafeDumper, yaml.CSafeLoader

    def _dump(self, value: Any, document: bool) -> bytes:
        text = self._yaml.dump(
            value, Dumper=self._dumper, explicit_start=document, explicit_end=document, allow_unicode=True,
            default_flow_style=False, sort_keys=False,
        )  # fmt: skip
        return str(text).encode()

    def _value(self, value: Any) -> bytes:
        return self._dump(value, False)

    def _record(self, message: dict[str, Any]) -> bytes:
        return self._dump({k: v for k, v in message.items() if v is not None and v != {}}, True)

    def _load(self, data: bytes) -> Any:
        return self._yaml.load(data, Loader=self._loader)

    def version(self) -> str:
        return f"PyYAML {self._yaml.__version__} (libyaml) + fsync"


# ---- Redis ----

_REDIS_LIST = """
local out = {}
for i, sid in ipairs(redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)) do
  out[i] = redis.call('HGETALL', ARGV[2] .. ':s:' .. sid)
end
return cjson.encode(out)
"""
_REDIS_APPEND = """
local n = redis.call('HINCRBY', KEYS[1], 'message_count', 1)
redis.call('HSET', KEYS[1], 'updated_at', ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
return n
"""


def _redis_body(m: dict[str, Any], created_us: int) -> str:
    """A message as stored in a Redis List; its seq is its position."""
    return _dumps({k: m[k] for k in ("id", "role", "content", "name", "tool_calls", "tool_call_id", "metadata")} | {"created_at": created_us})


class RawRedis:
    """redis-py: ``<p>:s:<id>`` hash, ``<p>:m:<id>`` list, ``<p>:activity`` sorted set, ``<p>:kv:<key>`` strings."""

    def __init__(self, url: str, prefix: str) -> None:
        import redis

        self.r = redis.Redis.from_url(url)
        self.p = prefix
        self._append = self.r.register_script(_REDIS_APPEND)
        self._list = self.r.register_script(_REDIS_LIST)

    def _keys(self, session_id: str) -> list[str]:
        return [f"{self.p}:s:{session_id}", f"{self.p}:m:{session_id}", f"{self.p}:activity"]

    @staticmethod
    def _hash(count: int, created_us: int, updated_us: int) -> dict[str, Any]:
        return {"session_type": "agent", "metadata": "{}", "created_at": created_us, "updated_at": updated_us, "message_count": count}

    def create_session(self, session_id: str) -> None:
        s, _, activity = self._keys(session_id)
        now = _us(_now())
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(s, mapping=self._hash(0, now, now))
        pipe.zadd(activity, {session_id: now})
        pipe.execute()

    def append(self, session_id: str, text: str) -> None:
        now = _now()
        body = _redis_body(_fresh_message(session_id, 0, text, now), _us(now))
        self._append(keys=self._keys(session_id), args=[body, _us(now), session_id])

    def import_session(self, session_id: str, msgs: list[dict[str, Any]]) -> None:
        s, m, activity = self._keys(session_id)
        bodies = [_redis_body(x, _us(datetime.fromisoformat(x["created_at"]))) for x in msgs]
        first, last = (_us(datetime.fromisoformat(msgs[i]["created_at"])) for i in (0, -1))
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(s, mapping=self._hash(len(msgs), first, last))
        for start in range(0, len(bodies), 1000):
            pipe.rpush(m, *bodies[start : start + 1000])
        pipe.zadd(activity, {session_id: last})
        pipe.execute()

    def newest(self, session_id: str, n: int) -> list[Any]:
        return self.r.lrange(self._keys(session_id)[1], -n, -1)

    def add_sessions(self, n: int) -> None:
        pipe = self.r.pipeline(transaction=False)
        for i, t in enumerate(_session_times(n)):
            sid, us = f"list-{i:07d}", _us(t)
            s, _, activity = self._keys(sid)
            pipe.hset(s, mapping=self._hash(0, us, us))
            pipe.zadd(activity, {sid: us})
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()

    def list_recent(self, n: int) -> list[Any]:
        # One round trip and one parse, as praison_db's listing script: the fastest way to these rows, not a pipeline
        # whose reply redis-py parses item by item.
        return json.loads(self._list(keys=[f"{self.p}:activity"], args=[n, self.p]))

    def state_set(self, key: str, value: Any) -> None:
        self.r.set(f"{self.p}:kv:{key}", _dumps(value))

    def state_get(self, key: str) -> Any:
        raw = self.r.get(f"{self.p}:kv:{key}")
        return None if raw is None else json.loads(raw)

    def version(self) -> str:
        info = self.r.info("server")
        persistence = self.r.config_get("appendonly") | self.r.config_get("save")
        return f"Redis {info['redis_version']} (appendonly={persistence.get('appendonly')}, save={persistence.get('save')!r})"

    def close(self) -> None:
        self.r.close()


# ---- MongoDB ----


class RawMongo:
    """pymongo: ``<prefix>sessions`` (counter + activity index), ``<prefix>messages`` (unique session_id+seq)."""

    def __init__(self, url: str, prefix: str) -> None:
        import pymongo

        self.client = pymongo.MongoClient(url)
        database = self.client.get_default_database("bench")
        self.sessions = database[f"{prefix}sessions"]
        self.messages = database[f"{prefix}messages"]
        self.state = database[f"{prefix}state"]
        self.messages.create_index([("session_id", 1), ("seq", 1)], unique=True)
        self.sessions.create_index([("updated_us", -1), ("_id", -1)])
        self._after = pymongo.ReturnDocument.AFTER
        self._count: dict[str, int] = {}  # each session's length, known in-process: the newest N is a seq range

    @staticmethod
    def _session(session_id: str, count: int, created_us: int, updated_us: int) -> dict[str, Any]:
        return {
            "_id": session_id, "user_id": None, "agent_id": None, "session_type": "agent", "name": None,
            "metadata": "{}", "created_us": created_us, "updated_us": updated_us, "message_count": count,
        }

    @staticmethod
    def _message(m: dict[str, Any], created_us: int) -> dict[str, Any]:
        doc = {k: m[k] for k in ("session_id", "seq", "id", "role", "content", "name", "tool_call_id")}
        doc.update(tool_calls=_json_or_none(m["tool_calls"]), metadata=_dumps(m["metadata"]), created_us=created_us)
        return doc

    def create_session(self, session_id: str) -> None:
        now = _us(_now())
        self.sessions.insert_one(self._session(session_id, 0, now, now))

    def append(self, session_id: str, text: str) -> None:
        now = _now()
        us = _us(now)
        with self.client.start_session() as s, s.start_transaction():
            doc = self.sessions.find_one_and_update(
                {"_id": session_id}, {"$inc": {"message_count": 1}, "$set": {"updated_us": us}},
                projection={"message_count": 1}, return_document=self._after, session=s,
            )
            message = _fresh_message(session_id, doc["message_count"], text, now)
            self.messages.insert_one(self._message(message, us), session=s)
        self._count[session_id] = doc["message_count"]

    def import_session(self, session_id: str, msgs: list[dict[str, Any]]) -> None:
        docs = [self._message(m, _us(datetime.fromisoformat(m["created_at"]))) for m in msgs]
        with self.client.start_session() as s, s.start_transaction():
            self.sessions.insert_one(self._session(session_id, len(docs), docs[0]["created_us"], docs[-1]["created_us"]), session=s)
            self.messages.insert_many(docs, session=s)
        self._count[session_id] = len(docs)

    def newest(self, session_id: str, n: int) -> list[Any]:
        # A seq range reads exactly n index entries on any server; some (SecantusDB) sort a whole session for
        # sort + limit.
        last = self._count[session_id]
        return list(self.messages.find({"session_id": session_id, "seq": {"$gt": last - n, "$lte": last}}, sort=[("seq", 1)]))

    def add_sessions(self, n: int) -> None:
        docs = [self._session(f"list-{i:07d}", 0, _us(t), _us(t)) for i, t in enumerate(_session_times(n))]
        for start in range(0, n, 10_000):
            self.sessions.insert_many(docs[start : start + 10_000], ordered=False)

    def list_recent(self, n: int) -> list[Any]:
        return list(self.sessions.find({}, sort=[("updated_us", -1), ("_id", -1)], limit=n))

    def state_set(self, key: str, value: Any) -> None:
        self.state.replace_one({"_id": key}, {"_id": key, "v": _dumps(value)}, upsert=True)

    def state_get(self, key: str) -> Any:
        doc = self.state.find_one({"_id": key})
        return None if doc is None else json.loads(doc["v"])

    def version(self) -> str:
        info = self.client.server_info()
        return f"MongoDB wire protocol, server reports {info.get('version')}"

    def close(self) -> None:
        self.client.close()


# ---- ClickHouse ----

_CH_MESSAGE_TYPES = [
    "String", "UInt64", "String", "LowCardinality(String)", "Nullable(String)", "Nullable(String)", "Nullable(String)",
    "Nullable(String)", "String", "DateTime64(6, 'UTC')",
]
_CH_SESSION_COLUMNS = [*_S_COLUMNS, "version"]
_CH_SESSION_TYPES = [
    "String", "Nullable(String)", "Nullable(String)", "LowCardinality(String)", "Nullable(String)", "String",
    "DateTime64(6, 'UTC')", "DateTime64(6, 'UTC')", "UInt64", "UInt64",
]


class RawClickHouse:
    """clickhouse-connect on chDB: praison_db's MergeTree tables under ``prefix``; INSERTs only.

    ClickHouse has no counter to bump in a transaction: the raw side keeps each session's seq in this process and
    writes the message row and a new session version row.
    """

    def __init__(self, url: str, prefix: str) -> None:
        import clickhouse_connect

        self._schema = _create_schema(url, prefix)  # kept open: closing the last chDB client may stop the engine
        self.client = clickhouse_connect.get_client(dsn=url, settings={"async_insert": 0})
        self.p = prefix
        self._seq: dict[str, int] = {}

    def _insert_messages(self, rows: list[list[Any]]) -> None:
        self.client.insert(f"{self.p}messages", rows, column_names=list(_M_COLUMNS), column_type_names=_CH_MESSAGE_TYPES)

    def _insert_sessions(self, rows: list[list[Any]]) -> None:
        self.client.insert(f"{self.p}sessions", rows, column_names=_CH_SESSION_COLUMNS, column_type_names=_CH_SESSION_TYPES)

    @staticmethod
    def _session(session_id: str, count: int, created: datetime, updated: datetime) -> list[Any]:
        return [session_id, None, None, "agent", None, "{}", created, updated, count, _us(updated)]

    def create_session(self, session_id: str) -> None:
        now = _now()
        self._insert_sessions([self._session(session_id, 0, now, now)])
        self._seq[session_id] = 0

    def append(self, session_id: str, text: str) -> None:
        seq = self._seq[session_id] + 1
        now = _now()
        m = _fresh_message(session_id, seq, text, now)
        self._insert_messages([[m[c] if c != "metadata" else "{}" for c in _M_COLUMNS]])
        self._insert_sessions([self._session(session_id, seq, now, now)])
        self._seq[session_id] = seq

    def import_session(self, session_id: str, msgs: list[dict[str, Any]]) -> None:
        rows = [
            [session_id, m["seq"], m["id"], m["role"], m["content"], m["name"], _json_or_none(m["tool_calls"]),
             m["tool_call_id"], _dumps(m["metadata"]), datetime.fromisoformat(m["created_at"])]
            for m in msgs
        ]
        self._insert_messages(rows)
        self._insert_sessions([self._session(session_id, len(rows), rows[0][-1], rows[-1][-1])])
        self._seq[session_id] = len(rows)

    def newest(self, session_id: str, n: int) -> list[Any]:
        sql = f"SELECT {', '.join(_M_COLUMNS)} FROM {self.p}messages WHERE session_id = {{sid:String}} ORDER BY seq DESC LIMIT {{n:UInt32}}"
        return self.client.query(sql, parameters={"sid": session_id, "n": n}).result_rows[::-1]

    def add_sessions(self, n: int) -> None:
        self._insert_sessions([self._session(f"list-{i:07d}", 0, t, t) for i, t in enumerate(_session_times(n))])

    def list_recent(self, n: int) -> list[Any]:
        sql = f"SELECT {', '.join(_S_COLUMNS)} FROM {self.p}sessions FINAL ORDER BY updated_at DESC, session_id DESC LIMIT {{n:UInt32}}"
        return self.client.query(sql, parameters={"n": n}).result_rows

    def version(self) -> str:
        return f"ClickHouse {self.client.command('SELECT version()')} (chDB, embedded)"

    def close(self) -> None:
        self.client.close()
        self._schema.close()
