"""One entry per backend: where a run's isolated data lives, the praison_db URL for it, and the raw driver on it.

A location is a context manager: it creates a fresh database / key prefix / folder, yields a :class:`Location`
and removes everything on exit. A backend whose server or store module is missing is reported and skipped.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from praison_db import db

from . import raw
from .harness import export

__all__ = ["BACKENDS", "Backend", "Location", "PraisonSide", "Unavailable"]


class Unavailable(Exception):
    """The backend cannot run here (no server, no driver, its store not in this checkout)."""


class PraisonSide:
    """praison_db through its public API, with the same methods as the raw sides."""

    def __init__(self, url: str, home: Path) -> None:
        self.db = db(url, session_dir=home)  # session_dir: so nothing is written under ~/.praison
        self.conv, self.state = self.db.conversations, self.db.state

    def create_session(self, session_id: str) -> None:
        self.conv.create_session(session_id)

    def append(self, session_id: str, text: str) -> None:
        self.conv.add_message(session_id, "user", text)

    def import_session(self, session_id: str, msgs: list[dict[str, Any]]) -> None:
        self.conv.import_session(export(session_id, msgs))

    def newest(self, session_id: str, n: int) -> Any:
        return self.conv.get_messages(session_id, limit=n)

    def add_sessions(self, n: int) -> None:
        """Setup for the list test where no raw bulk path fills praison_db's own tables: one call per session."""
        for i in range(n):
            self.conv.create_session(f"list-{i:07d}")

    def list_recent(self, n: int) -> Any:
        return self.conv.list_sessions(limit=n)

    def state_set(self, key: str, value: Any) -> None:
        self.state.set(key, value)

    def state_get(self, key: str) -> Any:
        return self.state.get(key)

    def close(self) -> None:
        self.db.close()


@dataclass(frozen=True)
class Location:
    praison_url: str
    tmp: Path
    raw: Callable[[], Any] | None = None  # the raw driver on tables of its own
    # The raw driver on praison_db's own tables, to bulk-create the list test's sessions fast (setup, not timed).
    praison_tables: Callable[[], Any] | None = None
    # Caps on the run's sizes where this server cannot do the full work in reasonable time, and why.
    smaller: Mapping[str, int] = field(default_factory=dict)
    why_smaller: str = ""


@dataclass(frozen=True)
class Backend:
    name: str
    location: Callable[[], AbstractContextManager[Location]]
    needs: tuple[str, ...] = ()  # modules that must be importable (drivers, the praison_db store module)
    state: bool = True  # plays the state role (item 6)
    raw_label: str = ""  # the raw driver, for the table

    def unavailable(self) -> str | None:
        for module in self.needs:
            try:
                found = importlib.util.find_spec(module) is not None
            except ModuleNotFoundError:
                found = False
            if not found:
                where = "this checkout" if module.startswith("praison_db") else "this environment"
                return f"{module} is not in {where}"
        return None


def _uid() -> str:
    return uuid.uuid4().hex[:10]


@contextmanager
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="praison-bench-") as tmp:
        yield Path(tmp)


@contextmanager
def _memory() -> Iterator[Location]:
    with _scratch() as tmp:
        yield Location(f"memory://bench{_uid()}", tmp)


def _files(scheme: str, raw_side: type[raw.RawJson]) -> Callable[[], AbstractContextManager[Location]]:
    """A folder for the file store of ``scheme`` and one for its raw side, which also fills praison_db's folder."""

    @contextmanager
    def location() -> Iterator[Location]:
        with _scratch() as tmp:
            mine, theirs = tmp / "praison", tmp / "raw"
            theirs.mkdir()
            yield Location(f"{scheme}://{mine}", tmp, partial(raw_side, str(theirs)), partial(raw_side, str(mine)))

    return location


def _sql(kind: str, url: str, tmp: Path, raw_url: str | None = None) -> Location:
    return Location(
        url, tmp, partial(raw.RawSql, kind, raw_url or url, "raw_"), partial(raw.RawSql, kind, url, "praison_")
    )


@contextmanager
def _sqlite() -> Iterator[Location]:
    with _scratch() as tmp:
        yield _sql("sqlite", f"sqlite:///{tmp}/praison.db", tmp, f"sqlite:///{tmp}/raw.db")


def _server_database(factory: Callable[[], AbstractContextManager[str]], kind: str) -> Callable[[], AbstractContextManager[Location]]:
    @contextmanager
    def location() -> Iterator[Location]:
        from tests import servers

        with ExitStack() as stack:
            try:
                url = stack.enter_context(factory())
            except (servers.ServerMissing, ImportError) as e:
                raise Unavailable(str(e).splitlines()[0][:200]) from e
            # One fresh database, dropped afterwards; praison_* and raw_* tables side by side in it.
            yield _sql(kind, url, stack.enter_context(_scratch()))

    return location


def _postgres() -> AbstractContextManager[str]:
    from tests.servers import postgres_database

    return postgres_database()


def _mysql() -> AbstractContextManager[str]:
    from tests.servers import mysql_database

    return mysql_database()


REDIS_URL = os.environ.get("PRAISON_BENCH_REDIS_URL", os.environ.get("PRAISON_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))


@contextmanager
def _redis() -> Iterator[Location]:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except Exception as e:
        client.close()
        raise Unavailable(f"Redis at {REDIS_URL}: {e}") from e
    run = f"bench{_uid()}"
    try:
        with _scratch() as tmp:
            sep = "&" if "?" in REDIS_URL else "?"
            yield Location(f"{REDIS_URL}{sep}prefix={run}p", tmp, partial(raw.RawRedis, REDIS_URL, f"{run}r"))
    finally:
        from praison_db.backends.redis import unlink_matching

        unlink_matching(client, f"{run}*")
        client.close()


_SECANTUS = """
import sys
from secantus import SecantusDBServer
with SecantusDBServer(host="127.0.0.1", port=0, storage_path=sys.argv[1], ttl_sweep_seconds=1) as server:
    print(server.uri, flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
"""


def _with_database(uri: str, name: str) -> str:
    head, sep, query = uri.partition("?")
    scheme, _, rest = head.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}/{name}{sep}{query}"


@contextmanager
def _mongodb() -> Iterator[Location]:
    """PRAISON_BENCH_MONGODB_URL, or SecantusDB (MongoDB wire protocol) in a child process: a server of its own,
    as in production, rather than threads competing with the client for this process's GIL."""
    given = os.environ.get("PRAISON_BENCH_MONGODB_URL")
    with _scratch() as tmp:
        proc = None
        if given:
            uri = given
        else:
            storage = tmp / "secantus"
            storage.mkdir()
            proc = subprocess.Popen(
                [sys.executable, "-c", _SECANTUS, str(storage)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            uri = (proc.stdout.readline() if proc.stdout else "").strip()
            if not uri:
                proc.kill()
                proc.wait()
                raise Unavailable("SecantusDB did not start (pip install 'secantusdb==0.7.0b3')")
        name = f"bench{_uid()}"
        url = _with_database(uri, name)
        smaller = {} if given else {"bulk_messages": 10_000, "list_sessions": 10_000}
        why = "SecantusDB inserts about 3,000 documents/s into an indexed collection, more slowly as it grows"
        try:
            yield Location(url, tmp, partial(raw.RawMongo, url, "raw_"), smaller=smaller, why_smaller=why)
        finally:
            if proc is not None:
                assert proc.stdin is not None
                proc.stdin.close()
                proc.wait(timeout=120)  # WiredTiger holds its folder until the process is gone
            else:
                import pymongo

                with pymongo.MongoClient(given) as client:
                    client.drop_database(name)


@contextmanager
def _clickhouse() -> Iterator[Location]:
    # chDB runs one engine per process: praison_db's tables and the raw ones share a folder, with two prefixes.
    with _scratch() as tmp:
        url = f"chdb://{tmp / 'chdb'}"
        yield Location(url, tmp, partial(raw.RawClickHouse, url, "raw_"), partial(raw.RawClickHouse, url, "praison_"))


BACKENDS: list[Backend] = [
    Backend("memory", _memory, raw_label="none (in-process dict)"),
    Backend("json", _files("json", raw.RawJson), raw_label="open/write/fsync"),
    Backend("yaml", _files("yaml", raw.RawYaml), ("yaml", "praison_db.backends.yamlfile"), raw_label="PyYAML dump/write/fsync"),
    Backend("sqlite", _sqlite, raw_label="sqlite3"),
    Backend("postgresql", _server_database(_postgres, "postgresql"), ("psycopg",), raw_label="psycopg 3"),
    Backend("mysql", _server_database(_mysql, "mysql"), ("pymysql",), raw_label="PyMySQL"),
    Backend("redis", _redis, ("redis", "praison_db.backends.redis"), raw_label="redis-py"),
    Backend("mongodb", _mongodb, ("pymongo", "secantus", "praison_db.backends.mongo"), raw_label="pymongo"),
    Backend(
        "clickhouse", _clickhouse, ("clickhouse_connect", "chdb", "praison_db.backends.clickhouse"), state=False,
        raw_label="clickhouse-connect",
    ),
]
BY_NAME = {b.name: b for b in BACKENDS}
