"""Hot statements compiled once and run on the driver's cursor of the connection SQLAlchemy checked out.

For a statement that SQLite runs in a few microseconds, SQLAlchemy's per-call machinery (the compiled-cache lookup,
an execution context, result metadata, a Row per row) costs several times the statement itself. A
:class:`Prepared` statement is compiled by SQLAlchemy once per dialect, and each call then binds its values through
the same type processors SQLAlchemy would use (the columns' own: datetimes, JSON), runs the SQL text on the DBAPI
cursor inside the Connection's transaction, and converts result values with the columns' result processors. What
SQLAlchemy adds around a statement is kept where it matters:

- a driver error becomes SQLAlchemy's exception for it (``sqlalchemy.exc.IntegrityError``, ``OperationalError``,
  ...), and a lost connection is invalidated first, so conflict retries, error translation and the pool behave as
  for any other statement;
- the connection's events: on MySQL the max_allowed_packet check that ``before_cursor_execute`` runs (engine.py)
  runs here too, through the same function; with ``echo`` on (every statement logged) statements go through
  SQLAlchemy's own execution.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.sql import sqltypes
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.pool import PoolProxiedConnection

__all__ = ["Prepared", "Runner", "wrapped_error"]

Processor = Callable[[Any], Any] | None
# What a prepared statement runs on: a SQLAlchemy Connection (inside its transaction), or a pooled DBAPI connection
# (``Engine.raw_connection()``, see SqlDatabase.fast_read).
Runner = Connection | PoolProxiedConnection


def _close(cursor: Any) -> None:
    try:
        cursor.close()
    except Exception:  # noqa: BLE001 - the statement's own error is the one to report
        pass


def _empty_dict_first(processor: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A JSON bind processor that writes the usual empty metadata without serializing it."""
    empty = processor({})

    def process(value: Any) -> Any:
        return empty if type(value) is dict and not value else processor(value)

    return process


def _json_text(value: Any) -> Any:
    return {} if value == "{}" else json.loads(value)


def wrapped_error(
    dialect: Dialect, conn: Runner | None, error: Exception, sql: str | None, params: Any = None, cursor: Any = None, many: bool = False
) -> BaseException:
    """The SQLAlchemy exception for a driver error, as Connection.execute raises it; a lost connection (``conn``) is
    invalidated first, so the pool replaces it."""
    driver = None if conn is None else Prepared._driver(conn)
    disconnect = dialect.is_disconnect(error, driver, cursor)  # type: ignore[arg-type]
    if disconnect and conn is not None:
        conn.invalidate(error)
    return sa_exc.DBAPIError.instance(
        sql, params, error, dialect.loaded_dbapi.Error, connection_invalidated=disconnect, dialect=dialect, ismulti=many
    )


class Prepared:
    """One statement (built with named :func:`~sqlalchemy.bindparam`\\ s) compiled for one dialect.

    ``run`` style methods take the values by bind name, as ``Connection.execute`` does; values the statement bound
    at build time (a literal, SQLite's ``OFFSET 0``) are filled in. Statements with expanding (``IN``) parameters
    are not supported: they compile per call.
    """

    def __init__(self, statement: Any, dialect: Dialect, *, guard: Callable[..., None] | None = None) -> None:
        compiled = statement.compile(dialect=dialect)
        self.statement = statement
        self.dialect = dialect
        self.sql: str = compiled.string
        self._guard = guard
        self._reuse = dialect.driver == "psycopg" and not dialect.is_async  # see _new_cursor
        self._error = dialect.loaded_dbapi.Error
        binds = compiled.binds
        by_name = {name: binds[key] for key, name in ((b.key, n) for b, n in compiled.bind_names.items()) if key in binds}
        order = list(compiled.positiontup or ()) if compiled.positional else list(by_name)
        # (name in the SQL, key the caller passes, bind processor, value bound at build time)
        self._binds: list[tuple[str, str, Processor, Any]] = []
        for name in order:
            bind = by_name[name]
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None and isinstance(bind.type, sqltypes.JSON):
                processor = _empty_dict_first(processor)
            self._binds.append((name, bind.key, processor, bind.value))
        self._positional = compiled.positional
        columns = list(getattr(statement, "selected_columns", ()) or ())
        returning = getattr(compiled, "returning", None) or ()
        columns = columns or list(returning)
        # (index, processor) of the result columns that need converting.
        self._results: list[tuple[int, Callable[[Any], Any]]] = []
        for index, column in enumerate(columns):
            processor = column.type.dialect_impl(dialect).result_processor(dialect, None)
            reader = getattr(column.type, "reader", None)  # a type's own one-call conversion (schema.UTCDateTime)
            if reader is not None:
                self._results.append((index, reader(dialect)))
            elif processor is not None:
                # JSON text (SQLite, MySQL): json.loads itself, which is what SQLAlchemy's processor ends in (the
                # engine sets no other deserializer), without its layers; "{}", the usual metadata, without parsing.
                self._results.append((index, _json_text if isinstance(column.type, sqltypes.JSON) else processor))
        self._convert = bool(self._results)

    # ---- values ----

    def _values(self, params: dict[str, Any]) -> Any:
        if self._positional:
            out: list[Any] = []
            for _, key, processor, default in self._binds:
                value = params[key] if key in params else default
                out.append(processor(value) if processor is not None and value is not None else value)
            return out
        named: dict[str, Any] = {}
        for name, key, processor, default in self._binds:
            value = params[key] if key in params else default
            named[name] = processor(value) if processor is not None and value is not None else value
        return named

    def _row(self, row: Sequence[Any]) -> list[Any]:
        values = list(row)
        for index, processor in self._results:
            value = values[index]
            if value is not None:
                values[index] = processor(value)
        return values

    # ---- running ----

    @staticmethod
    def _slow(conn: Runner) -> bool:
        return isinstance(conn, Connection) and bool(conn.engine.echo)

    @staticmethod
    def _driver(conn: Runner) -> Any:
        return conn.connection.dbapi_connection if isinstance(conn, Connection) else conn.dbapi_connection

    def _new_cursor(self, conn: Runner) -> Any:
        """A cursor of ``conn``'s driver connection. psycopg's is kept with the pooled connection and used again:
        a new one costs more than a short statement (its adapters are copied and every parameter's dumper looked
        up again), and it holds nothing between calls, as every result is read whole when the statement returns."""
        driver = self._driver(conn)
        if not self._reuse:
            return driver.cursor()
        kept = conn.info.get("praison_cursor")
        if kept is None or kept[0] is not driver:  # none yet, or the record reconnected since
            kept = conn.info["praison_cursor"] = (driver, driver.cursor())
        return kept[1]

    def _release(self, conn: Runner, cursor: Any) -> None:
        if not self._reuse:
            cursor.close()

    def _cursor(self, conn: Runner, params: Any, many: bool = False) -> Any:
        """Run on the DBAPI cursor of ``conn``; a driver error raised as SQLAlchemy's (see the module docstring)."""
        cursor = self._new_cursor(conn)
        try:
            if self._guard is not None:
                self._guard(cursor, self.sql, params, many)
            if many:
                cursor.executemany(self.sql, params)
            else:
                cursor.execute(self.sql, params)
        except self._error as e:
            self._forget(conn, cursor)
            raise self._wrapped(conn, e, params, cursor, many) from e
        except BaseException as e:
            self._forget(conn, cursor)
            if not isinstance(e, Exception):
                # Cancelled, interrupted or exiting mid-statement: the connection's state is unknown (aiomysql closes
                # it), so it is not rolled back or reused but replaced, as SQLAlchemy's own execution does.
                conn.invalidate(e)
            raise
        return cursor

    def _forget(self, conn: Runner, cursor: Any) -> None:
        """A cursor whose statement failed is closed, not used again."""
        if self._reuse and conn.info.get("praison_cursor", (None, None))[1] is cursor:
            del conn.info["praison_cursor"]
        _close(cursor)

    def _wrapped(self, conn: Runner, error: Exception, params: Any, cursor: Any, many: bool) -> BaseException:
        return wrapped_error(self.dialect, conn, error, self.sql, params, cursor, many)

    def rows(self, conn: Runner, params: dict[str, Any]) -> list[Sequence[Any]]:
        """Every row, its values converted as SQLAlchemy converts them."""
        if self._slow(conn):
            return [tuple(r) for r in conn.execute(self.statement, params)]
        cursor = self._cursor(conn, self._values(params))
        try:
            rows = cursor.fetchall()
        finally:
            self._release(conn, cursor)
        if self._convert:
            return [self._row(r) for r in rows]
        return rows if isinstance(rows, list) else list(rows)

    def first(self, conn: Runner, params: dict[str, Any]) -> Sequence[Any] | None:
        """The first row or None."""
        if self._slow(conn):
            row = conn.execute(self.statement, params).first()
            return None if row is None else tuple(row)
        cursor = self._cursor(conn, self._values(params))
        try:
            row = cursor.fetchone()
        finally:
            self._release(conn, cursor)
        if row is None or not self._convert:
            return row
        return self._row(row)

    def scalar(self, conn: Runner, params: dict[str, Any]) -> Any:
        """The first column of the first row, or None."""
        row = self.first(conn, params)
        return None if row is None else row[0]

    def rowcount(self, conn: Runner, params: dict[str, Any]) -> int:
        """Run a statement that returns no rows; how many rows it changed."""
        if self._slow(conn):
            return int(conn.execute(self.statement, params).rowcount)
        cursor = self._cursor(conn, self._values(params))
        try:
            return int(cursor.rowcount)
        finally:
            self._release(conn, cursor)

    def many(self, conn: Runner, rows: list[dict[str, Any]]) -> None:
        """Run once per dict of values (the driver's executemany)."""
        if self._slow(conn):
            conn.execute(self.statement, rows)
            return
        cursor = self._cursor(conn, [self._values(r) for r in rows], many=True)
        self._release(conn, cursor)
