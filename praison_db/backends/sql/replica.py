"""Read replicas: listings and history reads go to a streaming replica, writes to the primary.

``db("postgresql://primary/app", read_url="postgresql://replica/app")`` (or ``?read_url=`` in the URL, or
``$PRAISON_READ_URL``). What goes where:

- the primary: every write, every read inside a write (the counter, ids, the newest seq), state, schema work;
- the replica: ``list_sessions``/``iter_sessions``, ``get_session``, ``get_messages``/``iter_messages``/
  ``get_history``, ``count_messages`` and ``export_session``.

Reading your own writes: after each write transaction the store notes the primary's log position (PostgreSQL:
``pg_current_wal_lsn()``, one more round trip per write, only when a replica is set). A read goes to the replica only
once the replica has replayed that far (``pg_last_wal_replay_lsn()``, checked once per write and then remembered);
until then it goes to the primary. So everything written through one ``db`` object (every store of its URL in this
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
from sqlalchemy.engine import Connection

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


class Replica:
    """The replica engine of one SqlDatabase, and what is known of how far it has replayed."""

    def __init__(self, primary: StoreURL, text: Any, opts: dict[str, Any], asynchronous: bool) -> None:
        url = parse_url(text) if not isinstance(text, StoreURL) else text
        if url.base_scheme != primary.base_scheme:
            raise errors.ConfigError(
                f"read_url must be a {primary.base_scheme}:// URL like the database it replicates, not {url.base_scheme}://"
            )
        if url.base_scheme != "postgresql":
            raise errors.ConfigError(
                f"read replicas are supported on PostgreSQL; {url.base_scheme}:// cannot take read_url yet"
            )
        self.where = f"{url.base_scheme} replica at {url.render()}"
        self.password = url.password
        # The replica's own driver options come from its URL; praison_db options (timeouts, pool) from the primary's.
        self.engine = _create_engine(url, opts, _check_url(url, dict(url.query)), asynchronous, self.where)
        self._lock = threading.Lock()
        self._written = 0  # the primary's position after our newest write
        self._replayed = 0  # how far the replica was last seen to have replayed
        self._down_until = 0.0

    def wrote(self, conn: Connection) -> None:
        """Note the primary's log position after a committed write (``conn`` is the writer's connection)."""
        position = _lsn(conn.exec_driver_sql("SELECT pg_current_wal_lsn()::text").scalar())
        if position is not None:
            with self._lock:
                self._written = max(self._written, position)

    def read(self, work: Callable[[Connection], T], on_primary: Callable[[Callable[[Connection], T]], T]) -> T:
        """``work`` on the replica if it is up and has replayed our writes, else on the primary (``on_primary``)."""
        if time.monotonic() < self._down_until:
            return on_primary(work)
        try:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except sa_exc.DBAPIError as e:
            return self._fall_back(e, work, on_primary)
        with conn:
            try:
                if self._written > self._replayed and not self._caught_up(conn):
                    return on_primary(work)
                return work(conn)
            except sa_exc.DBAPIError as e:
                if not e.connection_invalidated and not isinstance(e, sa_exc.OperationalError):
                    raise  # a statement error is the caller's, not the replica's health
                return self._fall_back(e, work, on_primary)

    def _caught_up(self, conn: Connection) -> bool:
        replayed = _lsn(conn.exec_driver_sql("SELECT pg_last_wal_replay_lsn()::text").scalar())
        if replayed is None:  # not in recovery: the "replica" is a primary, so it has everything it was sent
            return True
        with self._lock:
            self._replayed = max(self._replayed, replayed)
            return self._replayed >= self._written

    def _fall_back(self, error: Exception, work: Callable[[Connection], T], on_primary: Callable[[Callable[[Connection], T]], T]) -> T:
        self._down_until = time.monotonic() + REPLICA_RETRY_SECONDS
        log.warning("praison_db: %s is unreachable, reading from the primary for %.0f s: %s", self.where, REPLICA_RETRY_SECONDS, type(error).__name__)
        return on_primary(work)

    def dispose(self) -> None:
        self.engine.dispose()
