"""The one map from URL scheme to store classes.

Entries are import strings, so this module imports no backend and no driver; a class is imported the first time a
URL needs it and cached. Third parties add schemes with :func:`register`::

    from praison_db.registry import register
    register("cassandra", conversations="my_pkg.cassandra:CassandraConversationStore", extra=None)

or, without an import, with an entry point in the ``praison_db.backends`` group naming a callable that registers
them (looked up the first time a URL names a scheme not known here)::

    [project.entry-points."praison_db.backends"]
    cassandra = "my_pkg.cassandra:register"
"""

from __future__ import annotations

import difflib
import importlib
import threading
from dataclasses import dataclass, replace
from typing import Literal

from .errors import ConfigError

__all__ = ["BackendEntry", "register", "resolve", "known_schemes", "entry_for"]

StoreRole = Literal["conversations", "state"]


@dataclass(frozen=True)
class BackendEntry:
    """Everything praison_db knows about a scheme, in one place: the store class of each role (import strings), the
    pip extra and the driver modules it needs (sync and async API), refusals, and for SQL the SQLAlchemy dialect."""

    conversations: str | None
    state: str | None
    extra: str | None = None
    # Why a role is missing, said to the user instead of a generic message.
    refusals: tuple[tuple[str, str], ...] = ()
    driver: str | None = None  # the module the sync stores import to talk to the server
    async_driver: str | None = None  # the one praison_db.aio uses (None: the sync store runs in worker threads)
    sqlalchemy: tuple[str, str] | None = None  # SQL schemes: SQLAlchemy driver names for the sync and async API
    distributions: tuple[str, ...] = ()  # packages whose versions `praison-db doctor` reports


_SQL = "praison_db.backends.sql:SqlConversationStore", "praison_db.backends.sql:SqlStateStore"
_REDIS = "praison_db.backends.redis:RedisConversationStore", "praison_db.backends.redis:RedisStateStore"
_MONGO = "praison_db.backends.mongo:MongoConversationStore", "praison_db.backends.mongo:MongoStateStore"
_JSON = "praison_db.backends.jsonfile:JsonConversationStore", "praison_db.backends.jsonfile:JsonStateStore"
_YAML = "praison_db.backends.yamlfile:YamlConversationStore", "praison_db.backends.yamlfile:YamlStateStore"
_MEMORY = "praison_db.backends.memory:MemoryConversationStore", "praison_db.backends.memory:MemoryStateStore"
_DYNAMO = "praison_db.backends.dynamodb:DynamoConversationStore", "praison_db.backends.dynamodb:DynamoStateStore"
_CLICKHOUSE_STATE = (
    ("state", "ClickHouse has no cheap row updates or atomic counters, so it cannot be a state store; "
              "use Redis, MongoDB or a SQL database for state_url"),
)
_CH = "praison_db.backends.clickhouse:ClickHouseConversationStore"

_SQLITE = BackendEntry(
    *_SQL, driver="sqlite3", async_driver="aiosqlite", sqlalchemy=("sqlite+pysqlite", "sqlite+aiosqlite"),
    distributions=("sqlalchemy", "aiosqlite"),
)
_POSTGRES = BackendEntry(
    *_SQL, extra="postgres", driver="psycopg", async_driver="psycopg",
    sqlalchemy=("postgresql+psycopg", "postgresql+psycopg"), distributions=("sqlalchemy", "psycopg"),
)
# psycopg2 has no asyncio: the async API speaks psycopg 3 to the same server.
_PSYCOPG2 = BackendEntry(
    *_SQL, extra=None, driver="psycopg2", async_driver="psycopg",
    sqlalchemy=("postgresql+psycopg2", "postgresql+psycopg"), distributions=("sqlalchemy", "psycopg2", "psycopg2-binary"),
)
_MYSQL = BackendEntry(
    *_SQL, extra="mysql", driver="pymysql", async_driver="aiomysql", sqlalchemy=("mysql+pymysql", "mysql+aiomysql"),
    distributions=("sqlalchemy", "pymysql", "aiomysql"),
)
_MARIADB = BackendEntry(
    *_SQL, extra="mysql", driver="pymysql", async_driver="aiomysql", sqlalchemy=("mariadb+pymysql", "mariadb+aiomysql"),
    distributions=("sqlalchemy", "pymysql", "aiomysql"),
)
_CLICKHOUSE = BackendEntry(
    _CH, None, extra="clickhouse", refusals=_CLICKHOUSE_STATE, driver="clickhouse_connect",
    distributions=("clickhouse-connect",),
)
_REDIS_ENTRY = BackendEntry(*_REDIS, extra="redis", driver="redis", async_driver="redis.asyncio", distributions=("redis",))
_REDIS_CLUSTER = replace(_REDIS_ENTRY, driver="redis.cluster", async_driver="redis.asyncio.cluster")
_MONGO_ENTRY = BackendEntry(*_MONGO, extra="mongo", driver="pymongo", async_driver="pymongo", distributions=("pymongo",))
_JSON_ENTRY = BackendEntry(*_JSON, driver="filelock", distributions=("filelock",))
# No async driver, as for JSON files: praison_db.aio runs the YAML stores in worker threads.
_YAML_ENTRY = BackendEntry(*_YAML, extra="yaml", driver="yaml", distributions=("pyyaml", "filelock"))
# No async driver: praison_db.aio runs the DynamoDB stores in worker threads.
_DYNAMODB = BackendEntry(*_DYNAMO, extra="dynamodb", driver="boto3", distributions=("boto3", "botocore"))

_registry: dict[str, BackendEntry] = {
    "sqlite": _SQLITE,
    "sqlite+pysqlite": _SQLITE,
    "postgresql": _POSTGRES,
    "postgres": _POSTGRES,
    "postgresql+psycopg": _POSTGRES,
    "postgresql+psycopg2": _PSYCOPG2,
    "mysql": _MYSQL,
    "mysql+pymysql": _MYSQL,
    "mariadb": _MARIADB,
    "mariadb+pymysql": _MARIADB,
    # SingleStore speaks the MySQL protocol: the same drivers and SQLAlchemy dialect; the SQL backend sees the scheme
    # and builds SingleStore's tables and statements (praison_db.backends.sql.engine.is_singlestore).
    "singlestoredb": _MYSQL,
    "singlestore": _MYSQL,
    "clickhouse": _CLICKHOUSE,
    "clickhouses": _CLICKHOUSE,
    "chdb": replace(_CLICKHOUSE, extra="chdb", distributions=("clickhouse-connect", "chdb")),
    "redis": _REDIS_ENTRY,
    "rediss": _REDIS_ENTRY,
    "unix": _REDIS_ENTRY,
    "redis+cluster": _REDIS_CLUSTER,
    "rediss+cluster": _REDIS_CLUSTER,
    "mongodb": _MONGO_ENTRY,
    "mongodb+srv": _MONGO_ENTRY,
    "json": _JSON_ENTRY,
    "file": _JSON_ENTRY,
    "yaml": _YAML_ENTRY,
    "memory": BackendEntry(*_MEMORY),
    "dynamodb": _DYNAMODB,
}
_loaded: dict[str, type] = {}
_lock = threading.Lock()


def register(
    scheme: str,
    *,
    conversations: str | type | None = None,
    state: str | type | None = None,
    extra: str | None = None,
    clobber: bool = False,
) -> None:
    """Map a URL scheme to store classes (import strings ``"pkg.module:Class"`` or classes).

    Args:
        scheme: lower-case scheme, with ``+driver`` if it has one.
        conversations: the ConversationStore for this scheme, if it can play that role.
        state: the StateStore for this scheme, if it can play that role.
        extra: the pip extra (of praison-db) that provides its driver, for the error when it is missing.
        clobber: replace an existing entry instead of raising.

    Raises:
        ConfigError: the scheme is taken and ``clobber`` is false, or neither role is given.
    """
    scheme = scheme.lower()
    if conversations is None and state is None:
        raise ConfigError(f"register({scheme!r}) needs a conversations or a state store")
    with _lock:
        if scheme in _registry and not clobber:
            raise ConfigError(f"scheme {scheme!r} is already registered; pass clobber=True to replace it")
        names: list[str | None] = []
        for cls in (conversations, state):
            if isinstance(cls, type):
                name = f"{cls.__module__}:{cls.__qualname__}"
                _loaded[name] = cls
                names.append(name)
            else:
                names.append(cls)
        _registry[scheme] = BackendEntry(names[0], names[1], extra)


def known_schemes() -> list[str]:
    return sorted(_registry)


ENTRY_POINT_GROUP = "praison_db.backends"
_entry_points_loaded = False


def _load_entry_points() -> None:
    """Call the registering function of every installed ``praison_db.backends`` entry point, once."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name.lower() in _registry:
            continue
        try:
            point.load()()
        except Exception as e:  # noqa: BLE001 - one broken plugin must not break every other URL
            raise ConfigError(f"the {ENTRY_POINT_GROUP} entry point {point.name!r} ({point.value}) failed: {type(e).__name__}: {e}") from e


def entry_for(scheme: str) -> BackendEntry:
    """The registry entry of ``scheme``; an unknown scheme raises ConfigError naming the closest known one."""
    scheme = scheme.lower()
    entry = _registry.get(scheme)
    if entry is not None:
        return entry
    _load_entry_points()
    entry = _registry.get(scheme)
    if entry is not None:
        return entry
    base, plus, driver = scheme.partition("+")
    if plus and base in _registry:
        known = sorted(s for s in _registry if s.startswith(base + "+"))
        raise ConfigError(
            f"unknown driver {driver!r} for {base}://; use {base}:// or one of " + ", ".join(f"{k}://" for k in known)
        )
    close = difflib.get_close_matches(scheme, _registry, n=1)
    hint = f"did you mean {close[0]}://? " if close else ""
    raise ConfigError(f"unknown URL scheme {scheme!r}; {hint}known schemes: {', '.join(known_schemes())}")


def resolve(scheme: str, role: StoreRole) -> type:
    """The store class that plays ``role`` for ``scheme``, imported on first use.

    Raises:
        ConfigError: unknown scheme, a role the backend cannot play, or its driver extra is not installed.
    """
    entry = entry_for(scheme)
    target = entry.conversations if role == "conversations" else entry.state
    if target is None:
        reason = dict(entry.refusals).get(role)
        raise ConfigError(reason or f"{scheme}:// cannot be used as a {role} store")
    cached = _loaded.get(target)
    if cached is not None:
        return cached
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or "its driver"
        if module_name.startswith(missing) or (missing and module_name == missing):
            raise ConfigError(f"cannot import {module_name} for {scheme}://: is the package installed?") from e
        fix = f"pip install 'praison-db[{entry.extra}]'" if entry.extra else f"pip install {missing}"
        raise ConfigError(f"{attr} needs the {missing} package for {scheme}://: {fix}") from e
    cls = getattr(module, attr)
    with _lock:
        _loaded[target] = cls
    return cls
