"""The database handle that the SQL stores of a URL share (SqlDatabase: engine, transactions, schema version and
upgrade), and the schema commands ``migrate`` and ``schema_version``."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import func, insert, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.pool import PoolProxiedConnection

from ... import errors
from ...base import SharedConnection, resolve_options
from ...bridge import pause
from ...models import utcnow
from ...registry import entry_for
from ...url import StoreURL
from . import schema as sql_schema
from .engine import OPTIONS, _check_url, _classify, _create_engine, _is_retryable, _schema_transaction, check_packet, is_singlestore
from .prepared import Prepared, Runner, wrapped_error
from .replica import Replica
from .schema import Tables, _mysql_collation, build_tables

log = logging.getLogger("praison_db")
T = TypeVar("T")


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
        # SingleStore runs on SQLAlchemy's MySQL dialect; the scheme says which tables and statements it needs.
        self.singlestore = is_singlestore(url)
        SharedConnection.__init__(self)
        self.engine = _create_engine(url, opts, driver_args, asynchronous, self.where)
        # SQLAlchemy's dialect name, or "singlestore": the name the dialect quirks (engine.py) go by.
        self.dialect: str = "singlestore" if self.singlestore else self.engine.dialect.name
        # Connections kept in autocommit mode, transactions begun with BEGIN (engine.py): MySQL's and psycopg 3's.
        # psycopg2's (postgresql+psycopg2://) begin implicitly and are switched to autocommit for reads.
        self.autocommit: bool = self.dialect != "sqlite" and self.engine.dialect.driver != "psycopg2"
        self.replica: Replica | None = None
        try:
            self.tables = self._prepare(opts["auto_upgrade"], check=schema != "skip")
            if opts["read_url"] is not None:  # after _prepare: the dialect knows by now whether MySQL is MariaDB
                self.replica = Replica(url, opts["read_url"], opts, asynchronous, self.engine.dialect)
        except Exception as e:
            self._dispose()
            if isinstance(e, errors.Error):
                raise
            if isinstance(e, UnicodeError):  # PyMySQL sends the user and password as latin-1
                raise errors.ConfigError(
                    f"{self.where}: the driver cannot send the user, password or database name as written "
                    f"({type(e).__name__}); use characters it can encode"
                ) from None
            raise self.translate(e) from e

    # ---- engine ----

    def classify(self, error: BaseException) -> errors.Error | None:
        return _classify(error, self.where, self.password)

    def _dispose(self) -> None:
        self.engine.dispose()
        if self.replica is not None:
            self.replica.dispose()

    def prepare(self, statement: Any) -> Prepared:
        """``statement`` compiled once for this database, to run on the driver's cursor (see prepared.py)."""
        guard = functools.partial(check_packet, self.where) if self.engine.dialect.name in ("mysql", "mariadb") else None
        return Prepared(statement, self.engine.dialect, guard=guard)

    # ---- transactions ----

    @contextmanager
    def write(self, *, history: bool = True) -> Iterator[Connection]:
        """A write transaction; on SQLite it takes the write lock first (BEGIN IMMEDIATE) to avoid upgrade deadlocks.

        ``history=False`` for writes that no replica read depends on (state), which then cost no position check.
        """
        with self.engine.connect().execution_options(praison_write=True) as conn:
            with conn.begin():
                yield conn
            if history and self.replica is not None:
                self.replica.wrote(conn)  # after the commit: what the replica must replay before we read there

    def _raw_connection(self) -> PoolProxiedConnection:
        """A pooled DBAPI connection (the pool's checkout events run: the idle ping); a failure to connect raised as
        SQLAlchemy raises it."""
        try:
            return self.engine.raw_connection()
        except self.engine.dialect.loaded_dbapi.Error as e:
            raise wrapped_error(self.engine.dialect, None, e, None) from e

    @contextmanager
    def fast_write(self, *, history: bool = True) -> Iterator[Runner]:
        """A write transaction for prepared statements (prepared.py) on a pooled DBAPI connection: what :meth:`write`
        gives without SQLAlchemy's Connection and transaction bookkeeping. SQLite takes its write lock first (BEGIN
        IMMEDIATE), autocommit connections (MySQL, PostgreSQL) begin with BEGIN, psycopg2 begins with the first
        statement; commit when the block ends, roll back when it raises (a lost connection is invalidated instead).
        :meth:`write` itself on SingleStore, with a replica to track, or with ``echo`` on."""
        if self.dialect == "singlestore" or self.engine.echo or (history and self.replica is not None):
            with self.write(history=history) as conn:
                yield conn
            return
        dialect = self.engine.dialect
        raw = self._raw_connection()
        try:
            driver = raw.dbapi_connection
            assert driver is not None
            try:
                if self.dialect == "sqlite":
                    driver.execute("BEGIN IMMEDIATE")
                elif self.autocommit:
                    cursor = driver.cursor()
                    cursor.execute("BEGIN")
                    cursor.close()
                yield raw
                driver.commit()
            except BaseException as e:
                # A driver error here is BEGIN's or COMMIT's (statements raise SQLAlchemy's): raised as SQLAlchemy's,
                # a lost connection invalidated first. Then the rollback, unless the connection is gone.
                error = wrapped_error(dialect, raw, e, None) if isinstance(e, dialect.loaded_dbapi.Error) else e
                _invalidate_on_exit(raw, e)
                if raw.is_valid:
                    try:
                        driver.rollback()
                    except dialect.loaded_dbapi.Error:
                        raw.invalidate()
                if error is e:
                    raise
                raise error from e
        finally:
            raw.close()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads, which are single statements: no transaction around them (the BEGIN and ROLLBACK
        would double a read's round trips). Autocommit connections skip their BEGIN (engine.py); psycopg2's are
        switched to autocommit mode (without a round trip); SQLite begins no read transaction (engine.py)."""
        conn = self.engine.connect()
        if self.autocommit:
            conn = conn.execution_options(praison_read=True)
        elif self.dialect == "postgresql":
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        with conn:
            with conn.begin():
                yield conn

    @contextmanager
    def fast_read(self) -> Iterator[Runner]:
        """A pooled DBAPI connection for prepared statements (prepared.py) that read: what :meth:`read` gives
        without SQLAlchemy's Connection and transaction bookkeeping around each call, which costs more than SQLite
        takes to answer. In autocommit mode but on SQLite, as in :meth:`read` (so a one-statement write commits on
        its own: PostgreSQL's one-statement append); the pool's checkout checks (the idle ping) and its reset on
        return still run. With ``echo`` on, :meth:`read` itself (statements logged)."""
        if self.engine.echo:
            with self.read() as conn:
                yield conn
            return
        dialect = self.engine.dialect
        raw = self._raw_connection()
        try:
            if self.dialect == "postgresql" and not self.autocommit:  # psycopg2
                dialect.set_isolation_level(raw.dbapi_connection, "AUTOCOMMIT")  # type: ignore[arg-type]
                try:
                    yield raw
                finally:
                    if raw.is_valid:
                        dialect.reset_isolation_level(raw.dbapi_connection)  # type: ignore[arg-type]
            else:
                yield raw
        except BaseException as e:
            _invalidate_on_exit(raw, e)
            raise
        finally:
            raw.close()

    def read_history(self, work: Callable[[Any], T], *, prepared: bool = False) -> T:
        """``work(conn)`` for a listing or history read: on the read replica when one is set and it has our writes
        (see replica.py), else as :meth:`read` (:meth:`fast_read` when ``work`` runs only prepared statements)."""
        on_primary = self._on_primary_fast if prepared else self._on_primary
        if self.replica is None:
            return on_primary(work)
        return self.replica.read(work, on_primary)

    def _on_primary(self, work: Callable[[Connection], T]) -> T:
        with self.read() as conn:
            return work(conn)

    def _on_primary_fast(self, work: Callable[[Runner], T]) -> T:
        with self.fast_read() as conn:
            return work(conn)

    def retrying(self, work: Callable[[Connection], Any], attempts: int = 30, *, history: bool = True) -> Any:
        """Run ``work`` in a write transaction, again after a deadlock or a lost insert race (bounded)."""
        for attempt in range(attempts):
            try:
                with self.write(history=history) as conn:
                    return work(conn)
            except sa_exc.DBAPIError as e:
                if attempt + 1 < attempts and (_is_retryable(e, attempt) or isinstance(e, sa_exc.IntegrityError)):
                    pause(min(0.05, 0.001 * 2**attempt))  # back-off between retries, not synchronisation
                    continue
                raise
        raise AssertionError("unreachable")

    # ---- schema ----

    def _prepare(self, auto_upgrade: bool, *, check: bool = True) -> Tables:
        if self.singlestore:
            tables = build_tables(self.prefix, singlestore=True)
        else:
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
        with _schema_transaction(self.engine, f"praison_db:{self.prefix}", tables.lock) as conn:
            tables.metadata.create_all(conn, tables=[tables.version], checkfirst=True)
            current = conn.execute(select(func.coalesce(func.max(tables.version.c.version), 0))).scalar_one()
            for index in range(current, len(sql_schema.MIGRATIONS)):
                if not (self.singlestore and 0 < index < sql_schema.SINGLESTORE_FIRST_VERSION):
                    sql_schema.MIGRATIONS[index](conn, tables)
                conn.execute(insert(tables.version).values(version=index + 1, applied_at=utcnow()))
                applied.append(index + 1)
                log.info("praison_db: migrated %s to schema version %d", self.where, index + 1)
        return applied

    def server_version(self) -> str:
        with self.read() as conn:
            info = conn.dialect.server_version_info
            return ".".join(str(p) for p in info) if info else "?"


def _invalidate_on_exit(raw: Any, error: BaseException) -> None:
    """A call cancelled or interrupted mid-statement leaves its connection in an unknown state: replace it."""
    if not isinstance(error, Exception) and raw.is_valid:
        raw.invalidate(error)


def _open_unprepared(url: str | StoreURL, options: dict[str, Any]) -> SqlDatabase:
    from ...url import parse_url

    parsed = parse_url(url)
    if entry_for(parsed.scheme).sqlalchemy is None:
        raise errors.ConfigError(f"schema versions apply to SQL URLs (sqlite, postgresql, mysql), not {parsed.scheme}://")
    return SqlDatabase(parsed, schema="skip", **options)


def _with_schema(url: str | StoreURL, options: dict[str, Any], work: Callable[[SqlDatabase], T]) -> T:
    """Run ``work`` on a database opened without touching its schema; errors as praison_db errors; closed after."""
    database = _open_unprepared(url, options)
    try:
        return work(database)
    except errors.Error:
        raise
    except Exception as e:
        raise database.translate(e) from e
    finally:
        database.release()


def _upgrade(database: SqlDatabase) -> tuple[int, int]:
    before = database.current_version(database.tables)
    database.upgrade(database.tables)
    return before, database.current_version(database.tables)


def migrate(url: str | StoreURL, **options: Any) -> tuple[int, int]:
    """Bring the schema of a SQL database up to date. Returns (version before, version after). Idempotent."""
    return _with_schema(url, options, _upgrade)


def schema_version(url: str | StoreURL, **options: Any) -> tuple[int, int]:
    """(the database's schema version, the version this praison-db expects), without changing anything."""
    return _with_schema(url, options, lambda database: (database.current_version(database.tables), len(sql_schema.MIGRATIONS)))
