"""Bounded time on every server backend: a silent port or a frozen server raises StoreUnavailable within the bound.

Silent ports are listening sockets this test opens and never reads; frozen servers are private ones started on a free
port (SIGSTOP, then SIGCONT), never the machine's shared servers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from praison_db import StoreUnavailable
from praison_db.facade import open_store
from tests import private_servers
from tests.backends import BACKENDS
from tests.private_servers import silent_port

# Small bounds for the tests; the defaults (10 s to connect, 30 s for an answer) are checked separately.
SQL_FAST = "connect_timeout=1&read_timeout=1"
SILENT_URLS = {
    # Only connect_timeout: the handshake with a silent server is bounded by it, not by the 30 s read timeout.
    "postgresql": "postgresql://u@127.0.0.1:{port}/x?connect_timeout=1",
    "mysql": "mysql://root@127.0.0.1:{port}/x?connect_timeout=1",
    "mariadb": "mariadb://root@127.0.0.1:{port}/x?connect_timeout=1",
    "redis": "redis://127.0.0.1:{port}/0?socket_connect_timeout=1&socket_timeout=1",
    "mongodb": "mongodb://127.0.0.1:{port}/x?serverSelectionTimeoutMS=1000&connectTimeoutMS=1000&socketTimeoutMS=1000",
    "clickhouse": "clickhouse://default@127.0.0.1:{port}/default?connect_timeout=1&query_timeout=1",
}
# Connecting (1 s) plus one unanswered request (1 s), plus generous room for a loaded 2-core machine.
BOUND = 6.0


@contextmanager
def within(seconds: float) -> Iterator[None]:
    start = time.monotonic()
    yield
    elapsed = time.monotonic() - start
    assert elapsed < seconds, f"took {elapsed:.1f} s, bound {seconds} s"


@pytest.mark.parametrize("scheme", list(SILENT_URLS))
def test_a_port_that_never_answers_raises_store_unavailable_within_the_bound(scheme: str) -> None:
    with silent_port() as port:
        url = SILENT_URLS[scheme].format(port=port)
        with within(BOUND), pytest.raises(StoreUnavailable) as caught:
            open_store(url, "conversations")
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message


def _server(name: str, make_url: Any) -> str:
    return make_url(next(b for b in BACKENDS if b.name == name))


def test_sql_servers_get_read_and_connect_timeouts_by_default(make_url: Any) -> None:
    with open_store(_server("postgresql", make_url), "conversations") as store:
        with store.db.read() as conn:
            pg = conn.connection.dbapi_connection
            assert pg.read_timeout == 30.0
            assert pg.info.get_parameters()["connect_timeout"] == "10"
    with open_store(_server("mysql", make_url), "conversations") as store:
        with store.db.read() as conn:
            my = conn.connection.dbapi_connection
            assert (my._read_timeout, my._write_timeout, my.connect_timeout) == (30.0, 30.0, 10)


def test_redis_mongo_and_clickhouse_have_bounded_waits_by_default(make_url: Any) -> None:
    with open_store(_server("redis", make_url), "conversations") as store:
        kwargs = store.conn.client.connection_pool.connection_kwargs
        assert (kwargs["socket_connect_timeout"], kwargs["socket_timeout"]) == (5.0, 30.0)
    with open_store(_server("mongodb", make_url), "conversations") as store:
        pool = store.conn.client.options.pool_options
        assert (pool.connect_timeout, pool.socket_timeout) == (10.0, 30.0)
        assert store.conn.client.options.server_selection_timeout == 10.0
    from praison_db.backends.clickhouse import OPTIONS

    assert (OPTIONS["connect_timeout"].default, OPTIONS["query_timeout"].default) == (10.0, 60.0)


def test_the_read_timeout_is_a_url_option(make_url: Any) -> None:
    url = _server("postgresql", make_url)
    with open_store(f"{url}{'&' if '?' in url else '?'}read_timeout=7.5", "conversations") as store:
        with store.db.read() as conn:
            assert conn.connection.dbapi_connection.read_timeout == 7.5


FREEZABLE = {
    "postgresql": (private_servers.private_postgres, SQL_FAST),
    "mariadb": (private_servers.private_mariadb, SQL_FAST),
    "redis": (private_servers.private_redis, "socket_connect_timeout=1&socket_timeout=1"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FREEZABLE))
def test_a_frozen_server_raises_store_unavailable_within_the_bound_and_loses_nothing(name: str) -> None:
    start_server, query = FREEZABLE[name]
    with start_server() as server:
        with open_store(f"{server.url}?{query}", "conversations") as store:
            store.create_session("s")
            store.add_message("s", "user", "before")
            with server.frozen():
                # A pooled connection goes silent (read timeout), then reconnecting finds no answer (connect timeout).
                with within(BOUND), pytest.raises(StoreUnavailable):
                    store.add_message("s", "user", "while frozen")
                with within(BOUND), pytest.raises(StoreUnavailable):
                    store.get_messages("s")
            # Thawed: the store carries on without being reopened, and nothing is half-written. MariaDB's append is
            # a transaction the dropped client never committed, so the server rolled it back; a Redis script or
            # PostgreSQL's one-statement append already in the server's socket buffer runs when the server wakes, so
            # there the timed-out append is stored whole or not at all.
            contents = [m.content for m in store.get_messages("s")]
            if name in ("redis", "postgresql"):
                assert contents in (["before"], ["before", "while frozen"])
            else:
                assert contents == ["before"]
            after = store.add_message("s", "assistant", "after")
            assert after.seq == len(contents) + 1 == store.count_messages("s")
            assert [m.seq for m in store.get_messages("s")] == list(range(1, after.seq + 1))


@pytest.mark.slow
def test_a_frozen_postgresql_does_not_hang_a_state_store() -> None:
    with private_servers.private_postgres() as server:
        with open_store(f"{server.url}?{SQL_FAST}", "state") as state:
            state.set("k", 1)
            with server.frozen(), within(BOUND), pytest.raises(StoreUnavailable):
                state.incr("k")
            assert state.get("k") == 1
            assert state.incr("k") == 2


@pytest.mark.slow
def test_a_non_strict_agent_keeps_talking_while_its_database_is_frozen(tmp_path: Any) -> None:
    from praison_db import Agent, db

    with private_servers.private_postgres() as server:
        with db(database_url=f"{server.url}?{SQL_FAST}", session_dir=tmp_path / "sessions", strict=False) as store:
            agent = Agent(db=store, session_id="frozen")
            agent.chat("My name is Alice")
            with server.frozen(), within(4 * BOUND):
                reply = agent.chat("My favourite colour is blue")  # each write fails within its bound
            assert "blue" in reply
            assert [u["role"] for u in agent.unsaved] == ["user", "assistant"]
            assert agent.chat("What's my favourite colour?") == "Your favourite colour is blue."
            assert agent.unsaved == []
            assert [m.seq for m in store.conversations.get_messages("frozen")] == [1, 2, 3, 4, 5, 6]
