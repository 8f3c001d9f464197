"""The SQL stores' prepared statements (praison_db/backends/sql/prepared.py): the hot paths run their SQL on the
driver's cursor, and must read and write exactly what SQLAlchemy's own execution does, fail the same way, and leave
no transaction or lock behind.

Runs on SQLite and on the machine's real PostgreSQL and MariaDB.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from praison_db import SessionNotFound, db
from praison_db.facade import open_store
from praison_db.testing.suite.test_items import items
from tests.backends import BACKENDS

SQL = [b for b in BACKENDS if b.name in ("sqlite", "postgresql", "mysql")]

# Items of any shape, as the shared conformance suite generates them.
ITEMS = st.lists(items(), min_size=1, max_size=4)


@pytest.fixture(params=SQL, ids=[b.name for b in SQL])
def sql_url(request: Any, make_url: Any) -> str:
    return make_url(request.param)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=ITEMS)
def test_prepared_reads_return_what_sqlalchemy_returns(sql_url: str, items: list[dict[str, Any]]) -> None:
    with open_store(sql_url, "conversations") as store:
        sid = store.create_session(user_id="u").session_id
        stored = store.add_messages(sid, items)
        assert store.get_messages(sid, limit=len(items)) == stored  # the prepared newest-N read
        assert [m.to_item() for m in stored] == [m.to_item() for m in store.get_messages(sid)]  # SQLAlchemy's
        newest = store._newest_prepared
        with store.db.fast_read() as raw:
            fast = newest.rows(raw, {"sid": sid, "n": len(items)})
        with store.db.read() as conn:
            slow = [tuple(r) for r in conn.execute(newest.statement, {"sid": sid, "n": len(items)})]
        assert [tuple(r) for r in fast] == slow
        assert store.get_session(sid) == store.list_sessions(user_id="u", limit=1)[0]


def test_with_echo_every_statement_is_logged(tmp_path: Any, caplog: Any) -> None:
    with db(f"sqlite:///{tmp_path}/echo.db?echo=true") as handle, caplog.at_level(logging.INFO, "sqlalchemy.engine"):
        handle.conversations.get_or_create_session("s")
        handle.conversations.add_message("s", "user", "logged")
        assert handle.conversations.get_messages("s", limit=5)[0].content == "logged"
        handle.state.set("k", 1)
        assert handle.state.get("k") == 1
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for statement in ("UPDATE praison_sessions", "INSERT INTO praison_messages", "FROM praison_messages", "INTO praison_state"):
        assert statement in logged


def test_a_failed_prepared_write_leaves_no_lock_and_nothing_stored(tmp_path: Any) -> None:
    path = tmp_path / "locks.db"
    with db(f"sqlite:///{path}") as handle:
        conversations = handle.conversations
        conversations.get_or_create_session("s")
        with pytest.raises(SessionNotFound):
            conversations.add_message("missing", "user", "nowhere")  # fails after BEGIN IMMEDIATE took the lock
        other = sqlite3.connect(path, timeout=0.05, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # would raise "database is locked" if the failed call kept the lock
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert conversations.get_messages("missing") == [] and conversations.count_messages("s") == 0
        assert conversations.add_message("s", "user", "after").seq == 1


def test_a_failed_prepared_write_on_a_server_returns_its_connection_clean(sql_url: str) -> None:
    with db(sql_url) as handle:
        conversations = handle.conversations
        sid = conversations.create_session().session_id
        first = conversations.add_message(sid, "user", "one", id="m1")
        for _ in range(8):  # more than the pool holds: a connection left mid-transaction would show up
            with pytest.raises(SessionNotFound):
                conversations.add_message("missing-" + sid, "user", "x")
            assert conversations.add_message(sid, "user", "one again", id="m1") == first  # the id is known
        assert conversations.add_message(sid, "user", "two").seq == 2
        assert [m.content for m in conversations.get_messages(sid)] == ["one", "two"]
