"""Read replicas (PostgreSQL streaming, MariaDB GTID): listings and history reads go to the replica, writes to the
primary.

``db("postgresql://primary/app", read_url="postgresql://replica/app")`` (or ``?read_url=`` in the URL, or
``$PRAISON_READ_URL``). What goes where:

- the primary: every write, every read inside a write (the counter, ids, the newest seq), state, schema work;
- the replica: ``list_sessions``/``iter_sessions``, ``get_session``, ``get_messages``/``iter_messages``/
  ``get_history``, ``count_messages`` and ``export_session``.

Reading your own writes: after each write transaction the store notes the primary's log position (one more round
trip per write, only when a replica is set): PostgreSQL's ``pg_current_wal_lsn()``, MariaDB's ``@@last_gtid`` (the
GTID of the connection's last transaction). A read goes to the replica only once the replica has replayed that far
(``pg_last_wal_replay_lsn()``; ``MASTER_GTID_WAIT(gtid, 0)``, which does not wait), checked once per write and then
remembered; until then it goes to the primary. So everything written through one ``db`` object (every store of its URL in this
process) is visible to its next read; what other processes wrote shows up on the replica after its lag.

A replica that cannot be reached (down, refusing, timing out) is left alone for ``REPLICA_RETRY_SECONDS`` and reads
go to the primary meanwhile: a replica going away costs one failed attempt, never an error to the caller.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Dialect

from ... import errors
from ...url import StoreURL, parse_url
from .engine import _check_url, _create_engine

log = logging.getLogger("praison_db")
T = TypeVar("T")

REPLICA_RETRY_SECONDS = 5.0


def _lsn(text: str | None) -> int | None:
    """A PostgreSQL log position ('16/B374D848') as a number; None for none (not a replica, or nothing replayed)."""
    if not text:
        return None
    high, low = str(text).split("/")
    return (int(high, 16) << 32) | int(low, 16)


class _Positions:
    """How one dialect names a point in the primary's log and asks a replica whether it has replayed it."""

    def after_write(self, conn: Connection) -> tuple[int, str] | None:
        """(a number that grows with the log, the position as the replica is asked about it), or None if unknown."""
        raise NotImplementedError

    def replayed(self, conn: Connection, position: str) -> bool:
        raise NotImplementedError


class _PostgresPositions(_Positions):
    def after_write(self, conn: Connection) -> tuple[int, str] | None:
        text = conn.exec_driver_sql("SELECT pg_current_wal_lsn()::text").scalar()
        number = _lsn(text)
        return None if number is None else (number, str(text))

    def replayed(self, conn: Connection, position: str) -> bool:
        # NULL when the server is not in recovery: a primary has everything it was sent.
        done = conn.exec_driver_sql(f"SELECT pg_last_wal_replay_lsn() >= '{position}'::pg_lsn").scalar()
        return done is None or bool(done)


class _MariaDBPositions(_Positions):
    def after_write(self, conn: Connection) -> tuple[int, str] | None:
        gtid = conn.exec_driver_sql("SELECT @@last_gtid").scalar()
        if not gtid:  # the write changed nothing (no transaction was logged) or the binary log is off
            return None
        return int(str(gtid).rsplit("-", 1)[1]), str(gtid)

    def replayed(self, conn: Connection, position: str) -> bool:
        # 0: the replica has applied that GTID; -1: not yet (a timeout of 0 never waits).
        return conn.exec_driver_sql("SELECT MASTER_GTID_WAIT(%s, 0)", (position,)).scalar() == 0


class Replica:
    """The replica engine of one SqlDatabase, and what is known of how far it has replayed."""

    def __init__(self, primary: StoreURL, text: Any, opts: dict[str, Any], asynchronous: bool, dialect: Dialect) -> None:
        url = parse_url(text) if not isinstance(text, StoreURL) else text
        if url.base_scheme != primary.base_scheme:
            raise errors.ConfigError(
                f"read_url must be a {primary.base_scheme}:// URL like the database it replicates, not {url.base_scheme}://"
            )
        mariadb = bool(getattr(dialect, "is_mariadb", False))
        if url.base_scheme not in ("postgresql", "mysql") or (url.base_scheme == "mysql" and not mariadb):
            what = "MySQL (its GTIDs are not tracked yet)" if url.base_scheme == "mysql" else f"{url.base_scheme}://"
            raise errors.ConfigError(f"read replicas are supported on PostgreSQL and MariaDB, not on {what}")
        self.where = f"{url.base_scheme} replica at {url.render()}"
        self.password = url.password
        # The replica's own driver options come from its URL; praison_db options (timeouts, pool) from the primary's.
        self.engine = _create_engine(url, opts, _check_url(url, dict(url.query)), asynchronous, self.where)
        self._positions: _Positions = _PostgresPositions() if url.base_scheme == "postgresql" else _MariaDBPositions()
        self._lock = threading.Lock()
        self._written = 0  # the primary's position after our newest write, as a number
        self._written_at = ""  # the same position as the replica is asked about it
        self._replayed = 0  # how far the replica was last seen to have replayed (same numbering)
        self._down_until = 0.0

    def wrote(self, conn: Connection) -> None:
        """Note the primary's log position after a committed write (``conn`` is the writer's connection)."""
        found = self._positions.after_write(conn)
        if found is not None:
            with self._lock:
                if found[0] > self._written:
                    self._written, self._written_at = found

    def read(self, work: Callable[[Any], T], on_primary: Callable[[Callable[[Any], T]], T]) -> T:
        """``work`` on the replica if it is up and has replayed our writes, else on the primary (``on_primary``)."""
        if time.monotonic() < self._down_until:
            return on_primary(work)
        try:
            conn = self.engine.connect()
            if conn.dialect.driver == "psycopg2":
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            else:
                conn = conn.execution_options(praison_read=True)  # autocommit connections: no BEGIN (engine.py)
        except sa_exc.DBAPIError as e:
            return self._fall_back(e, work, on_primary)
        with conn:
            try:
                if self._written > self._replayed and not self._caught_up(conn):
                    return on_primary(work)
                with conn.begin():
                    return work(conn)
            except sa_exc.DBAPIError as e:
                if not e.connection_invalidated and not isinstance(e, sa_exc.OperationalError):
                    raise  # a statement error is the caller's, not the replica's health
                return self._fall_back(e, work, on_primary)

    def _caught_up(self, conn: Connection) -> bool:
        with self._lock:
            number, position = self._written, self._written_at
        done = self._positions.replayed(conn, position)
        if conn.in_transaction():
            conn.rollback()  # MySQL drivers begin implicitly: leave the check's transaction before the read's
        if done:
            with self._lock:
                self._replayed = max(self._replayed, number)
        return done

    def _fall_back(self, error: Exception, work: Callable[[Any], T], on_primary: Callable[[Callable[[Any], T]], T]) -> T:
        self._down_until = time.monotonic() + REPLICA_RETRY_SECONDS
        log.warning("praison_db: %s is unreachable, reading from the primary for %.0f s: %s", self.where, REPLICA_RETRY_SECONDS, type(error).__name__)
        return on_primary(work)

    def dispose(self) -> None:
        self.engine.dispose()
