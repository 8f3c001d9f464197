"""The SQL stores, their shared database handle and engine, and the schema commands."""

from __future__ import annotations

import functools
import logging
import random
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import and_, bindparam, case, delete, event, func, insert, or_, select, text, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine, create_engine
from sqlalchemy.pool import StaticPool

from ... import errors
from ...bridge import pause
from ...base import (
    ConnectedStore,
    SharedConnection,
    BOOL,
    MISSING,
    POSITIVE_SECONDS,
    Capabilities,
    ConversationStore,
    Option,
    SessionFilter,
    StateStore,
    check_prefix,
    incremented,
    loads,
    missing_session,
    after_last,
    resolve_options,
)
from ...models import Message, MessageDraft, Session, dumps, utcnow
from ...url import StoreURL, redacted
from . import schema as sql_schema
from .schema import Tables, build_tables

__all__ = ["SqlConversationStore", "SqlStateStore", "SqlDatabase", "migrate", "schema_version"]

log = logging.getLogger("praison_db")


def _int(value: Any) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must be a non-negative integer")
    return number


OPTIONS: dict[str, Option] = {
    "table_prefix": Option(check_prefix, "praison_", "prefix of every table name"),
    "pool_size": Option(_int, 5, "connections kept open (PostgreSQL, MySQL)"),
    "max_overflow": Option(_int, 10, "extra connections allowed under load"),
    "pool_recycle": Option(_int, 1800, "seconds after which a pooled connection is replaced"),
    # 10 s to connect rides out a busy server or a slow TLS handshake; 30 s for any answer is far above a healthy
    # statement here (a 16 MB message included) and short enough that a strict=False Agent carries on.
    "connect_timeout": Option(POSITIVE_SECONDS, 10.0, "seconds to wait for the server when connecting"),
    "read_timeout": Option(POSITIVE_SECONDS, 30.0, "seconds to wait for any answer from the server (PostgreSQL, MySQL)"),
    "auto_upgrade": Option(BOOL, True, "apply pending schema migrations on open"),
    "echo": Option(BOOL, False, "log every SQL statement"),
}

# Options of other backends: named in the error when one is given to a SQL URL.
_OTHER_BACKENDS = {
    "ttl": "redis://",
    "prefix": "redis://",
    "collection_prefix": "mongodb://",
    "lock_timeout": "json://",
    "fsync": "clickhouse://",
    "query_timeout": "clickhouse://",
    "verify": "clickhouse://",
    "ca_cert": "clickhouse://",
}
# libpq keywords, used when psycopg cannot list those of the libpq it runs on.
_LIBPQ_KEYWORDS = frozenset(
    "application_name channel_binding client_encoding connect_timeout dbname fallback_application_name gssdelegation "
    "gssencmode gsslib host hostaddr keepalives keepalives_count keepalives_idle keepalives_interval krbsrvname "
    "load_balance_hosts max_protocol_version min_protocol_version options passfile password port replication "
    "require_auth requirepeer service ssl_max_protocol_version ssl_min_protocol_version sslcert sslcertmode "
    "sslcompression sslcrl sslcrldir sslkey sslkeylogfile sslmode sslnegotiation sslpassword sslrootcert sslsni "
    "target_session_attrs tcp_user_timeout user".split()
)
# PyMySQL's connection arguments that make sense as text in a URL, plus the ssl_* keys SQLAlchemy gathers into its
# ssl dict. Left out: object-valued ones (conv, cursorclass, ssl) and ones that break SQLAlchemy (autocommit,
# defer_connect) or PyMySQL itself (compress, named_pipe: not implemented).
_PYMYSQL_ARGUMENTS = frozenset(
    "user password passwd host database db unix_socket port charset collation sql_mode read_default_file "
    "read_default_group use_unicode client_flag init_command connect_timeout read_timeout write_timeout local_infile "
    "max_allowed_packet bind_address binary_prefix program_name server_public_key ssl_ca ssl_cert ssl_key "
    "ssl_key_password ssl_disabled ssl_verify_cert ssl_verify_identity ssl_capath ssl_cipher ssl_check_hostname".split()
)


@functools.cache
def _libpq_keywords() -> frozenset[str]:
    try:
        from psycopg import pq

        return frozenset(o.keyword.decode() for o in pq.Conninfo.get_defaults()) or _LIBPQ_KEYWORDS
    except Exception:  # noqa: BLE001 - psycopg missing (psycopg2 URLs) or no libpq: the list above
        return _LIBPQ_KEYWORDS


def _check_url(url: StoreURL, driver_args: dict[str, Any]) -> dict[str, Any]:
    """Refuse what SQLAlchemy would only fail on at connect time (or silently ignore); returns the driver args."""
    sqlite = url.scheme.startswith("sqlite")
    if sqlite and (url.host or url.port or url.username or url.password is not None):
        raise errors.ConfigError(
            f"{url.render()}: SQLite URLs name a file, not a host: sqlite:///relative.db or sqlite:////absolute.db"
        )
    postgres = url.base_scheme in ("postgresql", "postgres")
    if len(url.hosts) > 1:
        hint = " (for several PostgreSQL hosts write ?host=h1:5432&host=h2:5432)" if postgres else ""
        raise errors.ConfigError(f"{url.render()}: a {url.base_scheme} URL names one host{hint}")
    if sqlite:
        valid, kind = frozenset(), ""
    elif postgres:
        valid, kind = _libpq_keywords(), ", or a libpq connection parameter (sslmode, application_name, options, ...)"
    else:
        valid, kind = _PYMYSQL_ARGUMENTS, ", or a PyMySQL connection argument (ssl_ca, init_command, read_timeout, ...)"
    for name in driver_args:
        if name not in valid:
            owner = _OTHER_BACKENDS.get(name)
            belongs = f" ({name} is an option of {owner} URLs)" if owner else ""
            raise errors.ConfigError(
                f"unknown option {name!r} for {url.scheme}://{belongs}; valid options: {', '.join(sorted(OPTIONS))}{kind}"
            )
    args = dict(driver_args)
    for name in ("host", "port"):
        values = [v for k, v in url.query_pairs if k == name]
        if len(values) > 1:
            if not postgres:
                raise errors.ConfigError(f"option {name!r} is given twice in {url.render()}; give it once")
            args[name] = tuple(values)  # libpq multi-host, as SQLAlchemy passes it
    return args


# scheme -> (SQLAlchemy driver name, praison-db extra, driver module)
_DRIVERS: dict[str, tuple[str, str | None, str]] = {
    "sqlite": ("sqlite+pysqlite", None, "sqlite3"),
    "sqlite+pysqlite": ("sqlite+pysqlite", None, "sqlite3"),
    "postgresql": ("postgresql+psycopg", "postgres", "psycopg"),
    "postgres": ("postgresql+psycopg", "postgres", "psycopg"),
    "postgresql+psycopg": ("postgresql+psycopg", "postgres", "psycopg"),
    "postgresql+psycopg2": ("postgresql+psycopg2", None, "psycopg2"),
    "mysql": ("mysql+pymysql", "mysql", "pymysql"),
    "mysql+pymysql": ("mysql+pymysql", "mysql", "pymysql"),
    "mariadb": ("mariadb+pymysql", "mysql", "pymysql"),
    "mariadb+pymysql": ("mariadb+pymysql", "mysql", "pymysql"),
}
# The async API's driver for each: aiosqlite, psycopg 3's AsyncConnection, aiomysql (built on PyMySQL, so the same
# errors, conversions and connection arguments as the sync path).
_ASYNC_DRIVERS: dict[str, tuple[str, str]] = {
    "sqlite+pysqlite": ("sqlite+aiosqlite", "aiosqlite"),
    "postgresql+psycopg": ("postgresql+psycopg", "psycopg"),
    "postgresql+psycopg2": ("postgresql+psycopg", "psycopg"),
    "mysql+pymysql": ("mysql+aiomysql", "aiomysql"),
    "mariadb+pymysql": ("mariadb+aiomysql", "aiomysql"),
}


# ---- dialect quirks: the only place that knows which database this is ----


def _insert_ignore(dialect: str, table: Any) -> Any:
    """INSERT that does nothing when the primary key exists (rowcount tells which happened)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt = pg_insert(table).on_conflict_do_nothing()
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(table).on_conflict_do_nothing()
    else:
        stmt = insert(table).prefix_with("IGNORE")
    # SQLAlchemy only reports an INSERT's rowcount when asked to keep it.
    return stmt.execution_options(preserve_rowcount=True)


def _upsert(dialect: str, table: Any, columns: list[str]) -> Any:
    """INSERT that overwrites ``columns`` when the primary key exists."""
    if dialect in ("postgresql", "sqlite"):
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[assignment]
        stmt = dialect_insert(table)
        return stmt.on_conflict_do_update(index_elements=list(table.primary_key.columns), set_={c: stmt.excluded[c] for c in columns})
    from sqlalchemy.dialects.mysql import insert as mysql_insert

    stmt = mysql_insert(table)
    return stmt.on_duplicate_key_update({c: stmt.inserted[c] for c in columns})


@contextmanager
def _schema_transaction(engine: Engine, name: str) -> Iterator[Connection]:
    """A write transaction that one process at a time runs, the lock held until after it commits.

    Releasing the lock before the commit would let the next process read the old version and apply the same
    migration again (a duplicate key on the version table). PostgreSQL: a transaction-scoped advisory lock, released
    by the commit itself. MySQL: a named lock, taken before BEGIN and released after COMMIT. SQLite: the write lock of
    BEGIN IMMEDIATE, held to the commit.
    """
    with engine.connect().execution_options(praison_write=True) as conn:
        if conn.dialect.name in ("mysql", "mariadb"):
            got = conn.execute(text("SELECT GET_LOCK(:n, 60)"), {"n": name[:64]}).scalar()
            conn.commit()
            if got != 1:
                raise errors.StoreUnavailable("timed out waiting for another process to finish migrating the schema")
            try:
                with conn.begin():
                    yield conn
            finally:
                if not conn.invalidated:  # a dropped connection has lost the lock with it
                    conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": name[:64]})
                    conn.commit()
            return
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(name.encode())})
            yield conn


_RETRYABLE_CODES = {"40001", "40P01", 1213, 1205}  # serialization failure, deadlock, lock wait timeout


def _is_retryable(error: sa_exc.DBAPIError) -> bool:
    orig = error.orig
    code = getattr(orig, "sqlstate", None) or (orig.args[0] if getattr(orig, "args", None) else None)
    return code in _RETRYABLE_CODES


_CONFLICT_ATTEMPTS = 12


def _conflict_backoff(attempt: int) -> float:
    """Seconds before retry ``attempt`` (0-based): exponential with jitter, capped, so colliding writers spread out."""
    return random.uniform(0.5, 1.0) * min(0.25, 0.004 * 2**attempt)


def retry_conflicts(method: Callable[..., Any]) -> Callable[..., Any]:
    """Re-run a store method whose write transaction lost a deadlock or a lock wait (bounded, with backoff).

    The database rolled the whole transaction back, so running the method again is safe; it must open its own
    transaction(s) and have no other side effects.
    """

    @functools.wraps(method)
    def retried(self: Any, *args: Any, **kwargs: Any) -> Any:
        for attempt in range(_CONFLICT_ATTEMPTS):
            try:
                return method(self, *args, **kwargs)
            except sa_exc.DBAPIError as e:
                if attempt + 1 < _CONFLICT_ATTEMPTS and _is_retryable(e):
                    pause(_conflict_backoff(attempt))
                    continue
                raise
        raise AssertionError("unreachable")

    return retried


def _classify(error: Exception, where: str, password: str | None) -> errors.Error | None:
    """A praison_db error for a SQLAlchemy/driver error; the message is one line with no password."""
    if isinstance(error, errors.Error):
        return error
    if not isinstance(error, (sa_exc.SQLAlchemyError, OSError)):
        return None
    orig = getattr(error, "orig", None) or error
    detail = redacted(orig, password)
    lowered = detail.lower()
    if isinstance(error, sa_exc.IntegrityError):
        return errors.IntegrityError(f"{where}: {detail}")
    if isinstance(error, sa_exc.DataError):
        return errors.InputError(f"{where} rejected the value: {detail}")
    if any(s in lowered for s in ("password authentication failed", "access denied", "no password supplied")) or (
        "role" in lowered and "does not exist" in lowered
    ):
        return errors.ConfigError(f"{where}: the server refused the credentials; check the user and password in the URL")
    if ("database" in lowered and "does not exist" in lowered) or "unknown database" in lowered:
        return errors.ConfigError(f"{where}: the database does not exist; create it or fix the URL ({detail})")
    if isinstance(error, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, OSError)):
        return errors.StoreUnavailable(f"{where} is unavailable: {detail}")
    if isinstance(error, sa_exc.ProgrammingError) and ("does not exist" in lowered or "doesn't exist" in lowered):
        return errors.SchemaError(f"{where}: the tables are missing; run `praison-db migrate URL` ({detail})")
    return None


class SqlDatabase(SharedConnection):
    """One engine, its tables and its schema version, shared by the conversation and state stores of a URL."""

    def __init__(self, url: StoreURL, *, schema: str = "auto", asynchronous: bool = False, **options: Any) -> None:
        # PostgreSQL and MySQL drivers take their own query parameters (sslmode, ...), checked by _check_url.
        opts, driver_args = resolve_options(f"{url.scheme}://", OPTIONS, {**url.query, **options}, passthrough=True)
        driver_args = _check_url(url, driver_args)
        self.url = url
        self.where = f"{url.base_scheme} at {url.render()}"
        self.password = url.password
        self.prefix: str = opts["table_prefix"]
        self.asynchronous = asynchronous
        SharedConnection.__init__(self)
        self.engine = self._create_engine(url, opts, driver_args, asynchronous)
        self.dialect: str = self.engine.dialect.name
        try:
            self.tables = self._prepare(opts["auto_upgrade"], check=schema != "skip")
        except Exception as e:
            self.engine.dispose()
            if isinstance(e, errors.Error):
                raise
            if isinstance(e, UnicodeError):  # PyMySQL sends the user and password as latin-1
                raise errors.ConfigError(
                    f"{self.where}: the driver cannot send the user, password or database name as written "
                    f"({type(e).__name__}); use characters it can encode"
                ) from None
            translated = _classify(e, self.where, self.password)
            if translated is None:
                raise
            raise translated from e

    # ---- engine ----

    def translate(self, error: Exception) -> errors.Error | None:
        return _classify(error, self.where, self.password)

    def _create_engine(self, url: StoreURL, opts: dict[str, Any], driver_args: dict[str, Any], asynchronous: bool) -> Engine:
        drivername, extra, module = _DRIVERS[url.scheme]
        if asynchronous:
            drivername, module = _ASYNC_DRIVERS[drivername]
        sa_url = self._sqlalchemy_url(url, drivername, driver_args)
        kwargs: dict[str, Any] = {"echo": opts["echo"], "json_serializer": lambda v: dumps(v)}
        if drivername.startswith("sqlite"):
            kwargs.update(self._sqlite_engine_args(sa_url))  # a file has no connection to lose: no ping
        else:
            kwargs.update(
                pool_pre_ping=True,  # a server restart costs the next call a reconnect, not an error
                pool_size=opts["pool_size"],
                max_overflow=opts["max_overflow"],
                pool_recycle=opts["pool_recycle"],
            )
            if "connect_timeout" not in driver_args:
                kwargs["connect_args"] = {"connect_timeout": max(1, round(opts["connect_timeout"]))}
        try:
            if asynchronous:
                # The async API runs this same code: the engine's pool holds async driver connections, which SQLAlchemy
                # drives from the bridge greenlet (praison_db.bridge), exactly as AsyncConnection.run_sync does.
                from sqlalchemy.ext.asyncio import create_async_engine

                engine = create_async_engine(sa_url, **kwargs).sync_engine
            else:
                engine = create_engine(sa_url, **kwargs)
            if drivername.startswith(("mysql", "mariadb")):
                _install_mysql_hooks(engine, opts["connect_timeout"], opts["read_timeout"], self.where, asynchronous)
            elif drivername == "postgresql+psycopg":
                _install_psycopg_hooks(engine, opts["read_timeout"], asynchronous)
        except ModuleNotFoundError as e:
            fix = f"pip install 'praison-db[{extra}]'" if extra else f"pip install {module}"
            if module == "psycopg2":
                fix = "pip install psycopg2-binary (or use postgresql:// for psycopg 3)"
            raise errors.ConfigError(f"{url.scheme}:// needs the {module} package: {fix}") from e
        except (sa_exc.ArgumentError, TypeError, ValueError) as e:
            raise errors.ConfigError(f"invalid options for {url.render()}: {redacted(e, url.secrets, limit=200)}") from e
        if engine.dialect.name == "sqlite":
            _install_sqlite_hooks(engine, memory=sa_url.database in (None, "", ":memory:"))
        return engine

    @staticmethod
    def _sqlalchemy_url(url: StoreURL, drivername: str, driver_args: dict[str, Any]) -> URL:
        if drivername.startswith("sqlite"):
            database = url.path[1:] if url.path.startswith("/") else url.path
            if database and database != ":memory:":
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            return URL.create(drivername, database=database or ":memory:", query=driver_args)
        # Built from the parsed parts, not re-parsed from text: the URL's password may hold '/', '?' or '@'.
        base = URL.create(
            drivername,
            username=url.username,
            password=url.password,
            host=url.host,
            port=url.port,
            database=url.path.lstrip("/") or None,
        )
        query = dict(driver_args)
        if drivername.startswith(("mysql", "mariadb")):
            query.setdefault("charset", "utf8mb4")
        return base.set(drivername=drivername, query=query)

    @staticmethod
    def _sqlite_engine_args(sa_url: URL) -> dict[str, Any]:
        args: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
        if sa_url.database in (None, "", ":memory:"):
            args["poolclass"] = StaticPool  # one connection, or each would see its own empty database
        return args

    def _dispose(self) -> None:
        self.engine.dispose()

    # ---- transactions ----

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction; on SQLite it takes the write lock first (BEGIN IMMEDIATE) to avoid upgrade deadlocks."""
        with self.engine.connect().execution_options(praison_write=True) as conn:
            with conn.begin():
                yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads, which are single statements: on PostgreSQL in autocommit mode (psycopg switches
        it without a round trip), saving the BEGIN and ROLLBACK around every read."""
        conn = self.engine.connect()
        if self.dialect == "postgresql":
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        with conn:
            with conn.begin():
                yield conn

    def retrying(self, work: Callable[[Connection], Any], attempts: int = 30) -> Any:
        """Run ``work`` in a write transaction, again after a deadlock or a lost insert race (bounded)."""
        for attempt in range(attempts):
            try:
                with self.write() as conn:
                    return work(conn)
            except sa_exc.DBAPIError as e:
                if attempt + 1 < attempts and (_is_retryable(e) or isinstance(e, sa_exc.IntegrityError)):
                    pause(min(0.05, 0.001 * 2**attempt))  # back-off between retries, not synchronisation
                    continue
                raise
        raise AssertionError("unreachable")

    # ---- schema ----

    def _prepare(self, auto_upgrade: bool, *, check: bool = True) -> Tables:
        with self.read() as conn:
            collation = _mysql_collation(conn)
        tables = build_tables(self.prefix, collation)
        if not check:
            return tables
        latest = len(sql_schema.MIGRATIONS)
        current = self.current_version(tables)
        if current > latest:
            raise errors.SchemaError(
                f"the {self.prefix}* tables are at schema version {current}, newer than this praison-db supports "
                f"({latest}); upgrade praison-db"
            )
        if current < latest:
            if not auto_upgrade:
                raise errors.SchemaError(
                    f"the {self.prefix}* tables are at schema version {current}, this praison-db needs {latest}: "
                    f"run `praison-db migrate '{self.url.render()}'`"
                )
            self.upgrade(tables)
        return tables

    def current_version(self, tables: Tables) -> int:
        with self.read() as conn:
            if not self.engine.dialect.has_table(conn, tables.version.name):
                return 0
            return conn.execute(select(func.coalesce(func.max(tables.version.c.version), 0))).scalar_one()

    def upgrade(self, tables: Tables) -> list[int]:
        """Apply every pending migration in order, each recorded in the version table. Idempotent."""
        applied: list[int] = []
        with _schema_transaction(self.engine, f"praison_db:{self.prefix}") as conn:
            tables.metadata.create_all(conn, tables=[tables.version], checkfirst=True)
            current = conn.execute(select(func.coalesce(func.max(tables.version.c.version), 0))).scalar_one()
            for index in range(current, len(sql_schema.MIGRATIONS)):
                sql_schema.MIGRATIONS[index](conn, tables)
                conn.execute(insert(tables.version).values(version=index + 1, applied_at=utcnow()))
                applied.append(index + 1)
                log.info("praison_db: migrated %s to schema version %d", self.where, index + 1)
        return applied

    def server_version(self) -> str:
        with self.read() as conn:
            info = conn.dialect.server_version_info
            return ".".join(str(p) for p in info) if info else "?"


def _mysql_collation(conn: Connection) -> str:
    if conn.dialect.name not in ("mysql", "mariadb"):
        return "utf8mb4_nopad_bin"
    if getattr(conn.dialect, "is_mariadb", False):
        return "utf8mb4_nopad_bin"
    return "utf8mb4_0900_bin"  # MySQL 8: binary and NO PAD


def _install_mysql_hooks(engine: Engine, connect_timeout: float, read_timeout: float, where: str, asynchronous: bool) -> None:
    """Bounded waits, strict mode and the packet limit on every new PyMySQL (or aiomysql) connection."""

    # Lock waits end on the server (a retryable 1205) well before the client stops waiting for an answer.
    lock_wait = max(1, int(read_timeout / 2))
    init = (
        "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'STRICT_ALL_TABLES'), "
        f"SESSION innodb_lock_wait_timeout = {lock_wait}"
    )

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        if asynchronous:
            return dialect.connect(*cargs, async_creator_fn=_aiomysql_connect, **cparams)
        import pymysql

        # PyMySQL bounds the handshake by its read timeout, not connect_timeout: a port that accepts and never
        # answers would otherwise block for the read timeout (or forever without one). Connect with the connect
        # timeout for both, then switch to the read timeout for the life of the connection.
        params = {**cparams, "read_timeout": connect_timeout, "write_timeout": connect_timeout, "defer_connect": True}
        params.setdefault("init_command", init)
        conn = pymysql.connections.Connection(*cargs, **params)
        conn.connect()
        # PyMySQL reads these before every socket call.
        conn._read_timeout, conn._write_timeout = read_timeout, float(cparams.get("write_timeout") or read_timeout)
        with conn.cursor() as cur:
            cur.execute("SELECT @@max_allowed_packet")
            conn.praison_max_packet = int(cur.fetchone()[0])  # type: ignore[attr-defined]
        return conn

    async def _aiomysql_connect(*cargs: Any, **cparams: Any) -> Any:
        import aiomysql

        # aiomysql has no read or write timeout (asyncio streams wait as long as they are awaited).
        for name in ("read_timeout", "write_timeout"):
            cparams.pop(name, None)
        cparams.setdefault("init_command", init)
        cparams["connect_timeout"] = connect_timeout
        conn = await aiomysql.connect(*cargs, **cparams)
        async with conn.cursor() as cur:
            await cur.execute("SELECT @@max_allowed_packet")
            conn.praison_max_packet = int((await cur.fetchone())[0])
        return conn

    @event.listens_for(engine, "before_cursor_execute")
    def _check_packet(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        cursor = getattr(cursor, "_cursor", cursor)  # the driver's own cursor under SQLAlchemy's async adapter
        limit = getattr(cursor.connection, "praison_max_packet", None)
        if not limit or not parameters:
            return
        for row in parameters if executemany else [parameters]:
            values = row.values() if isinstance(row, dict) else row
            # Cheap upper bound first (4 bytes a character, doubled by escaping); the exact size only when close.
            if len(statement) + 8 * sum(len(v) for v in values if isinstance(v, (str, bytes))) < limit - 1024:
                continue
            size = len(cursor.mogrify(statement, row).encode("utf-8", "surrogateescape")) + 1
            if size > limit:
                raise errors.InputError(
                    f"{where}: this write needs a {size:,}-byte statement but the server's max_allowed_packet is "
                    f"{limit:,} bytes; raise it (max_allowed_packet=64M under [mysqld], or SET GLOBAL "
                    "max_allowed_packet=67108864) or store less"
                )


class _BoundedWait:
    """Mixed into psycopg's Connection and AsyncConnection: every wait for the server ends after ``read_timeout``.

    psycopg waits for the server without a deadline unless given one; a server frozen mid-call would block the
    caller until it wakes. Past the deadline the connection is closed (its state is unknown), which SQLAlchemy
    sees as a disconnect and replaces it.
    """

    read_timeout: float = 30.0

    def _deadline(self, timeout: float | None) -> float:
        return self.read_timeout if timeout is None else timeout

    def _timed_out(self, error: Exception, timeout: float | None) -> Exception:
        import psycopg

        if timeout is not None:
            return error
        self.pgconn.finish()  # type: ignore[attr-defined]
        return psycopg.OperationalError(f"no answer from the server within {self.read_timeout:g} s (read_timeout)")

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        import psycopg

        try:
            return super().wait(gen, interval=interval, timeout=self._deadline(timeout))  # type: ignore[misc]
        except psycopg.errors._WaitTimeout as e:
            raise self._timed_out(e, timeout) from None


class _AsyncBoundedWait(_BoundedWait):
    async def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:  # type: ignore[override]
        import psycopg

        try:
            return await super(_BoundedWait, self).wait(gen, interval=interval, timeout=self._deadline(timeout))  # type: ignore[misc]
        except psycopg.errors._WaitTimeout as e:
            raise self._timed_out(e, timeout) from None


@functools.cache
def _bounded_psycopg_class(asynchronous: bool) -> Any:
    import psycopg

    if asynchronous:
        return type("BoundedAsyncConnection", (_AsyncBoundedWait, psycopg.AsyncConnection), {})
    return type("BoundedConnection", (_BoundedWait, psycopg.Connection), {})


def _install_psycopg_hooks(engine: Engine, read_timeout: float, asynchronous: bool) -> None:
    cls = _bounded_psycopg_class(asynchronous)

    async def connect_async(*cargs: Any, **cparams: Any) -> Any:
        conn = await cls.connect(*cargs, **cparams)
        conn.read_timeout = read_timeout
        return conn

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        if asynchronous:
            return dialect.connect(*cargs, async_creator_fn=connect_async, **cparams)
        conn = cls.connect(*cargs, **cparams)  # psycopg bounds the connection itself by connect_timeout
        conn.read_timeout = read_timeout
        return conn


def _install_sqlite_hooks(engine: Engine, *, memory: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy's "begin" hook below decides how transactions start
        cur = dbapi_conn.cursor()
        if not memory:
            cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        cur.execute("PRAGMA synchronous=FULL")  # durable when commit returns, even on power loss
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writes take the write lock up front (no deadlock upgrading a read lock). Reads are single statements, which
        # SQLite runs atomically without a BEGIN: one round trip fewer per read.
        if conn.get_execution_options().get("praison_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def _open_database(url: StoreURL, options: dict[str, Any], *, asynchronous: bool) -> SqlDatabase:
    return SqlDatabase(url, asynchronous=asynchronous, **options)


class _SqlStore(ConnectedStore):
    """What both SQL stores share: opening, the database handle, error translation, close."""

    OPTIONS = OPTIONS
    capabilities = Capabilities()
    _connection_class = staticmethod(_open_database)
    db: SqlDatabase

    def __init__(self, database: SqlDatabase) -> None:
        self.db = database.acquire()
        self.url = database.url.render()
        self.t = database.tables

    def _translate_error(self, error: Exception) -> errors.Error | None:
        return self.db.translate(error)

    def _close(self) -> None:
        self.db.release()


# Rows are unpacked by position (the tables' column order, see sql_schema): attribute access on a Row costs more
# than building the model.


def _session_from_row(row: Any) -> Session:
    session_id, user_id, agent_id, session_type, name, metadata, created_at, updated_at, message_count = row
    return Session.trusted(
        session_id=session_id,
        user_id=user_id,
        agent_id=agent_id,
        session_type=session_type,
        name=name,
        metadata=metadata or {},
        created_at=created_at,
        updated_at=updated_at,
        message_count=message_count,
    )


# Values bound in one IN list: PostgreSQL's protocol caps a statement at 65,535 parameters, SQLite's build may at
# 32,766; a batch of ids or keys larger than this is looked up a slice at a time.
_IN_CHUNK = 10_000


def _chunks(values: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(values), _IN_CHUNK):
        yield values[start : start + _IN_CHUNK]


def _message_from_row(row: Any) -> Message:
    session_id, seq, id, role, content, name, tool_calls, tool_call_id, metadata, created_at = row
    return Message.trusted(
        id=id,
        session_id=session_id,
        seq=seq,
        role=role,
        content=content,
        name=name,
        tool_calls=tool_calls,
        tool_call_id=tool_call_id,
        metadata=metadata or {},
        created_at=created_at,
    )


def _message_row(m: Message) -> dict[str, Any]:
    return {
        "session_id": m.session_id,
        "seq": m.seq,
        "id": m.id,
        "role": m.role,
        "content": m.content,
        "name": m.name,
        "tool_calls": m.tool_calls,
        "tool_call_id": m.tool_call_id,
        "metadata": m.metadata,
        "created_at": m.created_at,
    }


def _session_row(s: Session) -> dict[str, Any]:
    return s.model_dump()


def _later(column: Any, now: Any) -> Any:
    """``updated_at`` for an update at ``now``: never earlier than the stored value (an imported session can be dated
    ahead of this clock). CASE rather than GREATEST/MAX: it means the same on SQLite, PostgreSQL and MySQL."""
    return case((column > now, column), else_=now)


class SqlConversationStore(_SqlStore, ConversationStore):
    """ConversationStore over SQLAlchemy Core (SQLite, PostgreSQL, MySQL/MariaDB)."""

    def state_store(self) -> SqlStateStore:
        """A StateStore in the same database, sharing this store's connection pool."""
        return SqlStateStore(self.db)

    # ---- sessions ----

    @retry_conflicts
    def _insert_session(self, session: Session) -> bool:
        with self.db.write() as conn:
            result = conn.execute(_insert_ignore(self.db.dialect, self.t.sessions).values(**_session_row(session)))
            return result.rowcount == 1

    def _get_or_insert_session(self, session: Session) -> Session:
        # Insert-or-nothing commits first; the read after it sees whichever process won.
        self._insert_session(session)
        found = self._get_session(session.session_id)
        if found is None:  # deleted in between by someone else: create again
            return self._get_or_insert_session(session)
        return found

    def _get_session(self, session_id: str) -> Session | None:
        with self.db.read() as conn:
            row = conn.execute(select(self.t.sessions).where(self.t.sessions.c.session_id == session_id)).first()
        return _session_from_row(row) if row else None

    def _list_statement(self, user: bool, agent: bool, kind: bool, after: bool) -> Any:
        """The listing query for one combination of filters, built once, with the values as bound parameters."""
        cache = self.__dict__.setdefault("_list_statements", {})
        shape = (user, agent, kind, after)
        if shape not in cache:
            cache[shape] = self._build_list_statement(*shape)
        return cache[shape]

    def _build_list_statement(self, user: bool, agent: bool, kind: bool, after: bool) -> Any:
        s = self.t.sessions.c
        query = select(self.t.sessions)
        if user:
            query = query.where(s.user_id == bindparam("user_id"))
        if agent:
            query = query.where(s.agent_id == bindparam("agent_id"))
        if kind:
            query = query.where(s.session_type == bindparam("session_type"))
        if after:
            at, sid = bindparam("after_at", type_=s.updated_at.type), bindparam("after_id")
            query = query.where(or_(s.updated_at < at, and_(s.updated_at == at, s.session_id < sid)))
        return query.order_by(s.updated_at.desc(), s.session_id.desc()).limit(bindparam("n"))

    def _list_sessions(self, flt: SessionFilter, limit: int, after: tuple[datetime, str] | None) -> list[Session]:
        query = self._list_statement(flt.user_id is not None, flt.agent_id is not None, flt.session_type is not None, after is not None)
        params = {"user_id": flt.user_id, "agent_id": flt.agent_id, "session_type": flt.session_type, "n": limit}
        if after is not None:
            params.update(after_at=after[0], after_id=after[1])
        with self.db.read() as conn:
            return [_session_from_row(r) for r in conn.execute(query, params)]

    @retry_conflicts
    def _update_session(self, session_id: str, changes: dict[str, Any], now: datetime) -> Session | None:
        s = self.t.sessions.c
        with self.db.write() as conn:
            stamp = bindparam("now", now, type_=s.updated_at.type)
            result = conn.execute(update(self.t.sessions).where(s.session_id == session_id).values(**changes, updated_at=_later(s.updated_at, stamp)))
            if result.rowcount == 0:
                return None
            row = conn.execute(select(self.t.sessions).where(s.session_id == session_id)).first()
        return _session_from_row(row)

    @retry_conflicts
    def _delete_session(self, session_id: str, user_id: str | None) -> bool:
        s = self.t.sessions.c
        cond = s.session_id == session_id
        if user_id is not None:
            cond = and_(cond, s.user_id == user_id)
        with self.db.write() as conn:
            # Lock the session row first, as an append does: the same lock order means no deadlock between them.
            if conn.execute(select(s.session_id).where(cond).with_for_update()).first() is None:
                return False
            owned = select(s.session_id).where(cond)
            conn.execute(delete(self.t.messages).where(self.t.messages.c.session_id.in_(owned.scalar_subquery())))
            return conn.execute(delete(self.t.sessions).where(cond)).rowcount > 0

    @retry_conflicts
    def _delete_sessions(self, *, user_id: str | None = None, idle_before: datetime | None = None) -> int:
        s = self.t.sessions.c
        cond = s.user_id == user_id if user_id is not None else s.updated_at < idle_before
        with self.db.write() as conn:
            # One set-based statement per table; the foreign key cascades too, as a safety net.
            doomed = select(s.session_id).where(cond).scalar_subquery()
            conn.execute(delete(self.t.messages).where(self.t.messages.c.session_id.in_(doomed)))
            return conn.execute(delete(self.t.sessions).where(cond)).rowcount

    # ---- messages ----

    @functools.cached_property
    def _append_statements(self) -> tuple[Any, Any, Any]:
        """(counter bump, count read, message insert), built once per store."""
        s = self.t.sessions.c
        bump = update(self.t.sessions).where(s.session_id == bindparam("sid"))
        bump = bump.values(message_count=s.message_count + bindparam("n"), updated_at=_later(s.updated_at, bindparam("now", type_=s.updated_at.type)))
        if self.db.engine.dialect.update_returning:
            bump = bump.returning(s.message_count)
        count = select(s.message_count).where(s.session_id == bindparam("sid"))
        return bump, count, insert(self.t.messages)

    @retry_conflicts
    def _append(self, session_id: str, drafts: list[MessageDraft], now: datetime) -> list[Message]:
        try:
            return self._append_new(session_id, drafts, now)
        except sa_exc.IntegrityError:
            # The unique (session_id, id) index refused an id the session already holds (a retried append): that
            # transaction rolled back whole; sort the drafts into stored and new under the session's row lock.
            return self._append_known(session_id, drafts, now)

    def _bump(self, conn: Connection, session_id: str, n: int, now: datetime) -> int:
        """Add ``n`` to the session's message_count (taking its row lock); the new count."""
        bump, read_count, _ = self._append_statements
        params = {"sid": session_id, "n": n, "now": now}
        # The counter row is the lock: concurrent appenders to one session queue here, others don't wait.
        if conn.dialect.update_returning:
            count = conn.execute(bump, params).scalar()
            if count is None:
                raise missing_session(session_id)
            return int(count)
        if conn.execute(bump, params).rowcount == 0:
            raise missing_session(session_id)
        return int(conn.execute(read_count, params).scalar_one())

    def _append_new(self, session_id: str, drafts: list[MessageDraft], now: datetime) -> list[Message]:
        insert_messages = self._append_statements[2]
        n = len(drafts)
        with self.db.write() as conn:
            count = self._bump(conn, session_id, n, now)
            stored = [d.stamp(session_id, count - n + 1 + i, now) for i, d in enumerate(drafts)]
            rows = [_message_row(m) for m in stored]
            conn.execute(insert_messages, rows[0] if n == 1 else rows)
        return stored

    def _append_known(self, session_id: str, drafts: list[MessageDraft], now: datetime) -> list[Message]:
        s, m = self.t.sessions.c, self.t.messages.c
        with self.db.write() as conn:
            # Locking reads: the row lock queues us behind other appenders, and the messages read is the latest
            # committed state (not an older snapshot) on every isolation level.
            found = conn.execute(select(s.message_count).where(s.session_id == session_id).with_for_update()).first()
            if found is None:
                raise missing_session(session_id)
            ids = [d.id for d in drafts]
            known: dict[str, Message] = {}
            for chunk in _chunks(ids):
                query = select(self.t.messages).where(m.session_id == session_id, m.id.in_(chunk)).with_for_update()
                known.update((row.id, _message_from_row(row)) for row in conn.execute(query))
            fresh = [d for d in drafts if d.id not in known]
            if fresh:
                count = self._bump(conn, session_id, len(fresh), now)
                stored = [d.stamp(session_id, count - len(fresh) + 1 + i, now) for i, d in enumerate(fresh)]
                conn.execute(self._append_statements[2], [_message_row(x) for x in stored])
                known.update((x.id, x) for x in stored)
        return [known[d.id] for d in drafts]  # type: ignore[index]

    @functools.cached_property
    def _newest(self) -> Any:
        """The resume query, built once: statement construction costs more than SQLite takes to run it."""
        m = self.t.messages.c
        return select(self.t.messages).where(m.session_id == bindparam("sid")).order_by(m.seq.desc()).limit(bindparam("n"))

    def _get_messages(self, session_id: str, limit: int | None, before_seq: int | None, after_seq: int | None) -> list[Message]:
        if limit is not None and before_seq is None and after_seq is None:
            with self.db.read() as conn:
                rows = [_message_from_row(r) for r in conn.execute(self._newest, {"sid": session_id, "n": limit})]
            rows.reverse()
            return rows
        m = self.t.messages.c
        query = select(self.t.messages).where(m.session_id == session_id)
        if before_seq is not None:
            query = query.where(m.seq < before_seq)
        if after_seq is not None:
            query = query.where(m.seq > after_seq)
        if limit is not None:
            # Newest N: walk the (session_id, seq) index backwards and stop after N rows.
            query = query.order_by(m.seq.desc()).limit(limit)
        else:
            query = query.order_by(m.seq)
        with self.db.read() as conn:
            rows = [_message_from_row(r) for r in conn.execute(query)]
        if limit is not None:
            rows.reverse()
        return rows

    def _count_messages(self, session_id: str) -> int:
        with self.db.read() as conn:
            count = conn.execute(
                select(self.t.sessions.c.message_count).where(self.t.sessions.c.session_id == session_id)
            ).scalar()
        return int(count or 0)

    @retry_conflicts
    def _import_messages(self, session_id: str, messages: list[Message], updated_at: datetime) -> int:
        try:
            return self._import_numbered(session_id, messages, updated_at, known=False)
        except sa_exc.IntegrityError:
            # An id the session already holds (a repeated or resumed import): that transaction rolled back whole;
            # sort stored from new under the session's row lock.
            return self._import_numbered(session_id, messages, updated_at, known=True)

    def _import_numbered(self, session_id: str, messages: list[Message], updated_at: datetime, *, known: bool) -> int:
        s, m = self.t.sessions.c, self.t.messages.c
        with self.db.write() as conn:
            # The session row lock queues us behind appenders, as an append does.
            if conn.execute(select(s.message_count).where(s.session_id == session_id).with_for_update()).first() is None:
                raise missing_session(session_id)
            # The newest seq by walking the (session_id, seq) key backwards: one index entry.
            last = conn.execute(self._newest_seq, {"sid": session_id}).scalar() or 0
            fresh = messages
            if messages and (known or messages[0].seq <= last):
                held = set(conn.execute(select(m.id).where(m.session_id == session_id, m.id.in_([x.id for x in messages]))).scalars())
                fresh = [x for x in messages if x.id not in held]
            last = after_last(session_id, fresh, last)
            if fresh:
                conn.execute(insert(self.t.messages), [_message_row(x) for x in fresh])
            stamp = bindparam("at", updated_at, type_=s.updated_at.type)
            conn.execute(
                update(self.t.sessions)
                .where(s.session_id == session_id)
                .values(message_count=s.message_count + len(fresh), updated_at=_later(s.updated_at, stamp))
            )
        return len(fresh)

    @functools.cached_property
    def _newest_seq(self) -> Any:
        m = self.t.messages.c
        return select(m.seq).where(m.session_id == bindparam("sid")).order_by(m.seq.desc()).limit(1)

    @retry_conflicts
    def _import(self, session: Session, messages: list[Message]) -> bool:
        with self.db.write() as conn:
            result = conn.execute(_insert_ignore(self.db.dialect, self.t.sessions).values(**_session_row(session)))
            if result.rowcount != 1:
                return False
            batch = 5000
            for start in range(0, len(messages), batch):
                conn.execute(insert(self.t.messages), [_message_row(m) for m in messages[start : start + batch]])
        return True


def _live(table: Any, now: float) -> Any:
    return or_(table.c.expires_at.is_(None), table.c.expires_at > now)


def _prefix_range(column: Any, prefix: str) -> Any:
    """``column`` starts with ``prefix``, as an index range (keys use binary collations on every dialect)."""
    last = ord(prefix[-1])
    if last >= 0x10FFFF:
        return column.startswith(prefix, autoescape=True)
    nxt = last + 1 if last + 1 not in range(0xD800, 0xE000) else 0xE000
    return and_(column >= prefix, column < prefix[:-1] + chr(nxt))


class SqlStateStore(_SqlStore, StateStore):
    """StateStore in the ``<prefix>state`` table: JSON text values, expiry as a Unix time checked on every read."""

    def __init__(self, database: SqlDatabase) -> None:
        super().__init__(database)
        # Reads already ignore expired rows; removing them on open keeps the table from growing without bound.
        try:
            self.purge_expired()
        except Exception as e:
            self.db.release()
            raise (_classify(e, self.db.where, self.db.password) or e) from e

    @functools.cached_property
    def _get_statements(self) -> tuple[Any, Any]:
        """(one key, several keys), built once; expiry is checked against a bound ``now``."""
        st = self.t.state
        live = or_(st.c.expires_at.is_(None), st.c.expires_at > bindparam("now"))
        one = select(st.c.key, st.c.value).where(st.c.key == bindparam("key"), live)
        many = select(st.c.key, st.c.value).where(st.c.key.in_(bindparam("keys", expanding=True)), live)
        return one, many

    def _get_many(self, keys: list[str]) -> dict[str, Any]:
        one, many = self._get_statements
        now = time.time()
        with self.db.read() as conn:
            if len(keys) == 1:
                rows = conn.execute(one, {"key": keys[0], "now": now})
                return {key: loads(value) for key, value in rows}
            found: dict[str, Any] = {}
            for chunk in _chunks(list(set(keys))):
                found.update((key, loads(value)) for key, value in conn.execute(many, {"keys": chunk, "now": now}))
            return found

    @retry_conflicts
    def _set_many(self, items: dict[str, str], expires_at: float | None) -> None:
        with self.db.write() as conn:
            conn.execute(
                _upsert(self.db.dialect, self.t.state, ["value", "expires_at"]),
                [{"key": k, "value": v, "expires_at": expires_at} for k, v in items.items()],
            )

    @retry_conflicts
    def _delete(self, key: str) -> bool:
        st = self.t.state
        with self.db.write() as conn:
            live = conn.execute(delete(st).where(st.c.key == key, _live(st, time.time()))).rowcount > 0
            if not live:
                conn.execute(delete(st).where(st.c.key == key))  # an expired leftover
            return live

    def _incr(self, key: str, amount: int) -> int:
        st = self.t.state

        def work(conn: Connection) -> int:
            row = conn.execute(select(st.c.value, st.c.expires_at).where(st.c.key == key).with_for_update()).first()
            expired = row is not None and row.expires_at is not None and row.expires_at <= time.time()
            current = MISSING if row is None or expired else loads(row.value)
            value = incremented(key, current, amount)
            keep = None if row is None or expired else row.expires_at
            if row is None:
                conn.execute(insert(st).values(key=key, value=dumps(value), expires_at=None))
            else:
                conn.execute(update(st).where(st.c.key == key).values(value=dumps(value), expires_at=keep))
            return value

        # A missing key raced by two processes: one insert wins, the other retries and updates.
        return self.db.retrying(work)

    def _expires_at(self, key: str) -> float | None:
        st = self.t.state
        with self.db.read() as conn:
            return conn.execute(select(st.c.expires_at).where(st.c.key == key, _live(st, time.time()))).scalar()

    @retry_conflicts
    def _expire(self, key: str, expires_at: float | None) -> bool:
        st = self.t.state
        with self.db.write() as conn:
            return conn.execute(update(st).where(st.c.key == key, _live(st, time.time())).values(expires_at=expires_at)).rowcount > 0

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        st = self.t.state
        last: str | None = None
        while True:  # keyset pages: no long-lived cursor, no full scan held in memory
            query = select(st.c.key).where(_live(st, time.time()))
            if prefix:
                query = query.where(_prefix_range(st.c.key, prefix))
            if last is not None:
                query = query.where(st.c.key > last)
            with self.db.read() as conn:
                page = list(conn.execute(query.order_by(st.c.key).limit(1000)).scalars())
            yield from page
            if len(page) < 1000:
                return
            last = page[-1]

    @retry_conflicts
    def _clear(self, prefix: str) -> int:
        st = self.t.state
        now = time.time()
        cond = _prefix_range(st.c.key, prefix) if prefix else st.c.key.isnot(None)
        with self.db.write() as conn:
            live = conn.execute(delete(st).where(cond, _live(st, now))).rowcount
            conn.execute(delete(st).where(cond))
            return live

    @retry_conflicts
    def purge_expired(self) -> int:
        """Physically remove expired keys (they are already invisible to every read). Returns how many."""
        st = self.t.state
        with self.db.write() as conn:
            return conn.execute(delete(st).where(st.c.expires_at <= time.time())).rowcount


def _open_unprepared(url: str | StoreURL, options: dict[str, Any]) -> SqlDatabase:
    from ...url import parse_url

    parsed = parse_url(url)
    if parsed.scheme not in _DRIVERS:
        raise errors.ConfigError(f"schema versions apply to SQL URLs (sqlite, postgresql, mysql), not {parsed.scheme}://")
    return SqlDatabase(parsed, schema="skip", **options)


def migrate(url: str | StoreURL, **options: Any) -> tuple[int, int]:
    """Bring the schema of a SQL database up to date. Returns (version before, version after). Idempotent."""
    database = _open_unprepared(url, options)
    try:
        before = database.current_version(database.tables)
        database.upgrade(database.tables)
        return before, database.current_version(database.tables)
    except errors.Error:
        raise
    except Exception as e:
        raise (_classify(e, database.where, database.password) or e) from e
    finally:
        database.release()


def schema_version(url: str | StoreURL, **options: Any) -> tuple[int, int]:
    """(the database's schema version, the version this praison-db expects), without changing anything."""
    database = _open_unprepared(url, options)
    try:
        return database.current_version(database.tables), len(sql_schema.MIGRATIONS)
    except errors.Error:
        raise
    except Exception as e:
        raise (_classify(e, database.where, database.password) or e) from e
    finally:
        database.release()
