"""The SQL backend's engine: URL checks and options, the driver table, engine creation (sync and async), the
per-dialect connection hooks, error classification, conflict retries and the dialect quirks.

SingleStore (``singlestoredb://``, ``singlestore://``) is driven through the MySQL dialect and drivers; the URL scheme
(:func:`is_singlestore`), not the server, tells the places that differ: the tables (``schema.build_tables``), the
upsert, the schema lock and the session set-up of a new connection."""

from __future__ import annotations

import functools
import random
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Insert, Table, bindparam, event, insert, text, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine, create_engine
from sqlalchemy.pool import StaticPool
from sqlalchemy.schema import CreateTable

from ... import errors
from ...base import BOOL, POSITIVE_SECONDS, Option, check_prefix
from ...bridge import pause
from ...models import dumps
from ...registry import entry_for
from ...url import StoreURL, redacted


def _optional_url(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError("must be a URL string")
    return value


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
    "read_url": Option(_optional_url, None, "a replica for listings and history reads (PostgreSQL, MariaDB)"),
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


SINGLESTORE_SCHEMES = frozenset({"singlestoredb", "singlestore"})


def is_singlestore(url: StoreURL) -> bool:
    """Whether ``url`` names a SingleStore database (which SQLAlchemy drives as MySQL)."""
    return url.base_scheme in SINGLESTORE_SCHEMES


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
    valid: frozenset[str]
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




# ---- dialect quirks: the statements that differ per dialect ----


def _insert_ignore(dialect: str, table: Any) -> Any:
    """INSERT that does nothing when the primary key exists (rowcount tells which happened)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt: Insert = pg_insert(table).on_conflict_do_nothing()
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(table).on_conflict_do_nothing()
    else:
        stmt = insert(table).prefix_with("IGNORE")
    # SQLAlchemy only reports an INSERT's rowcount when asked to keep it.
    return stmt.execution_options(preserve_rowcount=True)


def _upsert(dialect: str, table: Any, columns: list[str]) -> Any:
    """INSERT that overwrites ``columns`` when the primary key exists. ``dialect``: SQLAlchemy's name, or
    ``"singlestore"``."""
    stmt: Any  # a PostgreSQL, SQLite or MySQL Insert: each names the upsert clause its own way
    if dialect in ("postgresql", "sqlite"):
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[assignment]
        stmt = dialect_insert(table)
        return stmt.on_conflict_do_update(index_elements=list(table.primary_key.columns), set_={c: stmt.excluded[c] for c in columns})
    if dialect == "singlestore":
        return _singlestore_upsert(table, columns)
    from sqlalchemy.dialects.mysql import insert as mysql_insert

    stmt = mysql_insert(table)
    return stmt.on_duplicate_key_update({c: stmt.inserted[c] for c in columns})


def _singlestore_upsert(table: Table, columns: list[str]) -> Any:
    """``INSERT ... ON DUPLICATE KEY UPDATE col = VALUES(col)``, the form of SingleStore's INSERT reference, written out.

    SQLAlchemy's MySQL insert adds MySQL 8.0.20's ``AS new`` row alias when the server reports such a version, and
    SingleStore's INSERT grammar has no such alias. Values are bound through the columns' types (keys, JSON).
    """
    names = [c.name for c in table.columns]
    assert all(n.replace("_", "").isalnum() for n in [table.name, *names]), "plain identifiers only"
    updates = ", ".join(f"`{c}` = VALUES(`{c}`)" for c in columns)
    sql = (
        f"INSERT INTO `{table.name}` ({', '.join(f'`{n}`' for n in names)}) "
        f"VALUES ({', '.join(f':{n}' for n in names)}) ON DUPLICATE KEY UPDATE {updates}"
    )
    return text(sql).bindparams(*(bindparam(c.name, type_=c.type) for c in table.columns))


@contextmanager
def _schema_transaction(engine: Engine, name: str, lock: Table | None = None) -> Iterator[Connection]:
    """A write transaction that one process at a time runs, the lock held until after it commits.

    Releasing the lock before the commit would let the next process read the old version and apply the same
    migration again (a duplicate key on the version table). PostgreSQL: a transaction-scoped advisory lock, released
    by the commit itself. MySQL: a named lock, taken before BEGIN and released after COMMIT. SQLite: the write lock of
    BEGIN IMMEDIATE, held to the commit. SingleStore (``lock`` given): the write lock of the row ``name`` in ``lock``
    (see :func:`_row_lock`), and statements that commit one by one.
    """
    if lock is not None:
        with _row_lock(engine, lock, name):
            # Autocommit: no transaction for SingleStore's DDL to meet (how DDL inside BEGIN behaves there is not
            # documented); the version row of each migration commits after the migration, as on MySQL.
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                yield conn
        return
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


SCHEMA_LOCK_WAIT = 60.0  # seconds a process waits for another one's migration, as GET_LOCK(name, 60) on MySQL


@contextmanager
def _row_lock(engine: Engine, table: Table, name: str) -> Iterator[None]:
    """Hold the write lock of row ``name`` of ``table`` (created if missing) for the duration of the block.

    For SingleStore, which has no GET_LOCK: an UPDATE takes a row lock held until its transaction ends (SingleStore's
    "Row Locking": row locks are taken on writes and held to COMMIT or ROLLBACK). The lock lives in a connection of its
    own, so the migration's statements on another connection cannot end it, and a process that dies loses its
    connection and, with it, the lock. Waiting ends after SCHEMA_LOCK_WAIT seconds with StoreUnavailable.
    """
    with engine.connect() as holder:
        holder.execute(CreateTable(table, if_not_exists=True))
        holder.commit()
        deadline = time.monotonic() + SCHEMA_LOCK_WAIT
        timed_out = "timed out waiting for another process to finish migrating the schema"
        while True:
            try:
                if holder.execute(update(table).where(table.c.name == name).values(locked_at=time.time())).rowcount:
                    break  # locked
                # The name's first use: add its row (committed: every process must find it), then lock it.
                holder.execute(_insert_ignore("singlestore", table).values(name=name, locked_at=time.time()))
                holder.commit()
            except sa_exc.DBAPIError as e:
                holder.rollback()
                if not _is_retryable(e):
                    raise
                if time.monotonic() >= deadline:  # each try waited the server's lock wait timeout
                    raise errors.StoreUnavailable(timed_out) from e
            if time.monotonic() >= deadline:
                raise errors.StoreUnavailable(timed_out)
        try:
            yield
        finally:
            if not holder.invalidated:
                holder.rollback()  # ends the transaction, releasing the lock; the row's time need not be kept


# ---- conflicts and errors ----


_RETRYABLE_CODES = {"40001", "40P01", 1213, 1205}  # serialization failure, deadlock, lock wait timeout
_LOCK_WAIT_CODES = {1205}
# A lost deadlock costs milliseconds and is worth many tries; a lock wait timeout has already waited half the read
# timeout behind a holder that may be frozen, so it is tried once more and then reported.
_CONFLICT_ATTEMPTS = 12
_LOCK_WAIT_ATTEMPTS = 2


def _codes(error: sa_exc.DBAPIError) -> set[Any]:
    orig: Any = error.orig  # the driver's exception, whose attributes depend on the driver
    # psycopg names the SQLSTATE; PyMySQL gives the error number first, and since 1.2 a SQLSTATE too, which for a
    # lock wait timeout (1205) is only the generic HY000: look at both.
    return {getattr(orig, "sqlstate", None), *(orig.args[:1] if getattr(orig, "args", None) else ())}


def _is_retryable(error: sa_exc.DBAPIError, attempt: int = 0) -> bool:
    """Whether a failed transaction is worth running again, ``attempt`` (0-based) tries having failed so far."""
    codes = _codes(error)
    if not codes.isdisjoint(_LOCK_WAIT_CODES):
        return attempt + 1 < _LOCK_WAIT_ATTEMPTS
    return not codes.isdisjoint(_RETRYABLE_CODES)


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
                if attempt + 1 < _CONFLICT_ATTEMPTS and _is_retryable(e, attempt):
                    pause(_conflict_backoff(attempt))
                    continue
                raise
        raise AssertionError("unreachable")

    return retried


def _classify(error: BaseException, where: str, password: str | None) -> errors.Error | None:
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


# ---- engine creation and connection hooks ----


# A pooled connection idle longer than this is pinged before use; one used more recently is not (one round trip
# less per call). A server that restarts within this window costs the call that meets it a StoreUnavailable.
PING_AFTER_IDLE_SECONDS = 1.0


def _install_idle_ping(engine: Engine) -> None:
    """SQLAlchemy's pool_pre_ping, skipped for a connection the pool handed out within the last second: a server
    restart costs the next call a reconnect, not an error, without a ping on every busy call."""

    @event.listens_for(engine, "connect")
    def _fresh(dbapi_connection: Any, record: Any) -> None:
        record.info["praison_used"] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def _used(dbapi_connection: Any, record: Any) -> None:
        record.info["praison_used"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if time.monotonic() - record.info.get("praison_used", 0.0) < PING_AFTER_IDLE_SECONDS:
            return
        dialect = engine.dialect
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as e:
            if dialect.is_disconnect(e, dbapi_connection, None):
                raise sa_exc.DisconnectionError("the server closed this pooled connection") from e  # the pool reconnects
            raise


def _create_engine(url: StoreURL, opts: dict[str, Any], driver_args: dict[str, Any], asynchronous: bool, where: str) -> Engine:
    """The engine of a SQL URL (for the async API, the sync face of an async engine), with its dialect's hooks."""
    entry = entry_for(url.scheme)  # the scheme's dialect, driver and extra: facts of the registry
    assert entry.sqlalchemy is not None and entry.driver is not None, f"{url.scheme}:// is not a SQL scheme"
    drivername = entry.sqlalchemy[1 if asynchronous else 0]
    module, extra = (entry.async_driver or entry.driver) if asynchronous else entry.driver, entry.extra
    if module == "psycopg":
        extra = "postgres"  # psycopg2 URLs too: the async API speaks psycopg 3
    sa_url = _sqlalchemy_url(url, drivername, driver_args)
    kwargs: dict[str, Any] = {"echo": opts["echo"], "json_serializer": lambda v: dumps(v)}
    if drivername.startswith("sqlite"):
        kwargs.update(_sqlite_engine_args(sa_url))  # a file has no connection to lose: no ping
    else:
        kwargs.update(
            pool_size=opts["pool_size"],
            max_overflow=opts["max_overflow"],
            pool_recycle=opts["pool_recycle"],
        )
        if drivername.startswith(("mysql", "mariadb")) or drivername == "postgresql+psycopg":
            kwargs["pool_reset_on_return"] = None  # autocommit connections: see _install_mysql_hooks / _install_psycopg_hooks
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
        if not drivername.startswith("sqlite"):
            _install_idle_ping(engine)
        if drivername.startswith(("mysql", "mariadb")):
            _install_mysql_hooks(
                engine, opts["connect_timeout"], opts["read_timeout"], where, asynchronous, singlestore=is_singlestore(url)
            )
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


def _sqlite_engine_args(sa_url: URL) -> dict[str, Any]:
    args: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
    if sa_url.database in (None, "", ":memory:"):
        args["poolclass"] = StaticPool  # one connection, or each would see its own empty database
    return args


def _repair_aiomysql() -> None:
    """aiomysql (0.3 and before) escapes bytes with ``pymysql.converters.escape_bytes_prefixed``, which PyMySQL 1.2
    replaced by a placeholder string (PyMySQL issue 1274): every bytes parameter then fails with "'str' object is
    not callable". Put back what the name stood for (PyMySQL's own escaping of bytes), only while it is the
    placeholder."""
    import aiomysql.connection
    from pymysql.converters import escape_bytes

    if not callable(getattr(aiomysql.connection, "escape_bytes_prefixed", None)):
        aiomysql.connection.escape_bytes_prefixed = escape_bytes


def _singlestore_setup(sql_mode: str | None, lock_wait: int, escape: Callable[[str], str]) -> list[str]:
    """Statements for a new SingleStore connection, given its ``@@sql_mode``; each may be refused by the server.

    SingleStore has no innodb_lock_wait_timeout; its lock wait setting is ``lock_wait_timeout``. Strict mode is set
    with a literal, and only when the server's mode lacks it. Whether SingleStore lets a session set either is not
    in its documentation: the connection hooks leave the server's own setting when it refuses one.
    """
    statements = []
    modes = [m for m in (sql_mode or "").split(",") if m]
    if "STRICT_ALL_TABLES" not in modes:
        statements.append(f"SET SESSION sql_mode = {escape(','.join([*modes, 'STRICT_ALL_TABLES']))}")
    statements.append(f"SET SESSION lock_wait_timeout = {lock_wait}")
    return statements


def _refused(error: Exception) -> bool:
    """A server's error answer to a statement: MySQL server error numbers run from 1000 to 1999; client errors (a lost
    or closed connection among them) are 0 or 2000 and up."""
    code = error.args[0] if error.args else None
    return isinstance(code, int) and 1000 <= code < 2000


def _begin_explicitly(engine: Engine) -> None:
    """On connections kept in autocommit mode (MySQL, PostgreSQL): every SQLAlchemy transaction is a real one, begun
    with BEGIN, but for the single-statement reads that ask for none (``praison_read``) and connections switched to
    the AUTOCOMMIT isolation level."""

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if not options.get("praison_read") and options.get("isolation_level") != "AUTOCOMMIT":
            conn.exec_driver_sql("BEGIN")


# MySQL's server status flags (SERVER_STATUS_IN_TRANS, SERVER_STATUS_AUTOCOMMIT), as PyMySQL keeps them.
_IN_TRANSACTION, _AUTOCOMMIT = 1, 2


def _install_mysql_hooks(
    engine: Engine, connect_timeout: float, read_timeout: float, where: str, asynchronous: bool, *, singlestore: bool = False
) -> None:
    """Bounded waits, strict mode and the packet limit on every new PyMySQL (or aiomysql) connection, and
    transactions only where a write asks for one.

    Connections run in autocommit mode: a read is one statement, which then needs no COMMIT or ROLLBACK round trip
    to end the transaction the server would otherwise open for it (reads cost one round trip, as the raw driver's).
    Every SQLAlchemy transaction starts with an explicit BEGIN, but for reads marked ``praison_read`` (single
    statements, which then autocommit). The pool's rollback on every return is
    replaced by one that runs only when a transaction was left open, and a connection that left autocommit mode
    (an isolation level reset) is put back into it."""
    if asynchronous:
        _repair_aiomysql()

    # Lock waits end on the server (a retryable 1205) well before the client stops waiting for an answer.
    lock_wait = max(1, int(read_timeout / 2))
    init: str | None = (
        "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'STRICT_ALL_TABLES'), "
        f"SESSION innodb_lock_wait_timeout = {lock_wait}"
    )
    # SingleStore: set after connecting (_singlestore_setup), where a refused setting does not fail the connection.
    probe = "SELECT @@max_allowed_packet"
    if singlestore:
        init, probe = None, "SELECT @@max_allowed_packet, @@sql_mode"

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        if asynchronous:
            return dialect.connect(*cargs, async_creator_fn=_aiomysql_connect, **cparams)
        import pymysql

        # PyMySQL bounds the handshake by its read timeout, not connect_timeout: a port that accepts and never
        # answers would otherwise block for the read timeout (or forever without one). Connect with the connect
        # timeout for both, then switch to the read timeout for the life of the connection.
        params = {**cparams, "read_timeout": connect_timeout, "write_timeout": connect_timeout, "defer_connect": True}
        if init is not None:
            params.setdefault("init_command", init)
        params["autocommit"] = True
        conn = pymysql.connections.Connection(*cargs, **params)
        conn.connect()
        # PyMySQL reads these before every socket call.
        conn._read_timeout, conn._write_timeout = read_timeout, float(cparams.get("write_timeout") or read_timeout)
        with conn.cursor() as cur:
            cur.execute(probe)
            row = cur.fetchone()
            conn.praison_max_packet = int(row[0])  # type: ignore[attr-defined]
            if singlestore and "init_command" not in cparams:
                for statement in _singlestore_setup(row[1], lock_wait, conn.escape):
                    try:
                        cur.execute(statement)
                    except pymysql.err.MySQLError as e:
                        if not _refused(e):
                            raise
        return conn

    async def _aiomysql_connect(*cargs: Any, **cparams: Any) -> Any:
        import aiomysql
        import pymysql

        # aiomysql has no read or write timeout (asyncio streams wait as long as they are awaited).
        for name in ("read_timeout", "write_timeout"):
            cparams.pop(name, None)
        given_init = "init_command" in cparams
        if init is not None:
            cparams.setdefault("init_command", init)
        cparams["connect_timeout"] = connect_timeout
        cparams["autocommit"] = True
        conn = await aiomysql.connect(*cargs, **cparams)
        async with conn.cursor() as cur:
            await cur.execute(probe)
            row = await cur.fetchone()
            conn.praison_max_packet = int(row[0])
            if singlestore and not given_init:
                for statement in _singlestore_setup(row[1], lock_wait, conn.escape):
                    try:
                        await cur.execute(statement)
                    except pymysql.err.MySQLError as e:
                        if not _refused(e):
                            raise
        return conn

    _begin_explicitly(engine)

    @event.listens_for(engine, "checkin")
    def _settle(dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is None:  # invalidated
            return
        # The flags of the server's last answer (no round trip); the async adapter keeps aiomysql's connection.
        status = getattr(getattr(dbapi_connection, "_connection", dbapi_connection), "server_status", _IN_TRANSACTION)
        try:
            if status & _IN_TRANSACTION:
                dbapi_connection.rollback()
            if not status & _AUTOCOMMIT:
                dbapi_connection.autocommit(True)
        except Exception as e:  # noqa: BLE001 - a connection that cannot be reset is not reused
            record.invalidate(e)

    @event.listens_for(engine, "before_cursor_execute")
    def _check_packet(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        check_packet(where, cursor, statement, parameters, executemany)


def check_packet(where: str, cursor: Any, statement: str, parameters: Any, executemany: bool) -> None:
    """Refuse, as a one-line InputError, a MySQL statement larger than the server's max_allowed_packet (which the
    server would answer by dropping the connection). Run before every statement: by the ``before_cursor_execute``
    hook, and by prepared statements (prepared.py), which bypass it."""
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
    """Bounded waits on every psycopg connection (_BoundedWait), and connections kept in autocommit mode, as MySQL's
    are (_install_mysql_hooks): a read is one statement with no mode switch around it (psycopg's switch costs tens of
    microseconds, as much as the pool checkout), a write begins with BEGIN, and the pool's rollback on return runs
    only for a transaction left open (psycopg knows the transaction status without a round trip)."""
    import psycopg

    cls = _bounded_psycopg_class(asynchronous)

    async def connect_async(*cargs: Any, **cparams: Any) -> Any:
        conn = await cls.connect(*cargs, autocommit=True, **cparams)
        conn.read_timeout = read_timeout
        return conn

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        if asynchronous:
            return dialect.connect(*cargs, async_creator_fn=connect_async, **cparams)
        conn = cls.connect(*cargs, autocommit=True, **cparams)  # psycopg bounds the connection itself by connect_timeout
        conn.read_timeout = read_timeout
        return conn

    _begin_explicitly(engine)
    idle = psycopg.pq.TransactionStatus.IDLE

    @event.listens_for(engine, "checkin")
    def _settle(dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is None:  # invalidated
            return
        try:
            if dbapi_connection.info.transaction_status != idle:
                dbapi_connection.rollback()
            if not dbapi_connection.autocommit:  # an isolation level reset took it out of autocommit mode
                dbapi_connection.autocommit = True
        except Exception as e:  # noqa: BLE001 - a connection that cannot be reset is not reused
            record.invalidate(e)


def _wal(cursor: Any, wait: float = 30.0) -> None:
    """PRAGMA journal_mode=WAL (readers never block the writer). While another connection switches a new file's
    journal mode, SQLite answers "database is locked" at once, without its busy handler: several threads or processes
    opening a new database together would fail. So the switch is tried again, backing off, for up to ``wait``."""
    deadline = time.monotonic() + wait
    delay = 0.001
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as e:  # sqlite3's or aiosqlite's OperationalError
            if "locked" not in str(e) or time.monotonic() >= deadline:
                raise
            pause(delay)
            delay = min(delay * 2, 0.05)


def _install_sqlite_hooks(engine: Engine, *, memory: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy's "begin" hook below decides how transactions start
        cur = dbapi_conn.cursor()
        if not memory:
            _wal(cur)
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
