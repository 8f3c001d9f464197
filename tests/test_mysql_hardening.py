"""MySQL/MariaDB correctness under contention and at the size limits; schema creation racing on every SQL dialect."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from sqlalchemy import func, select, text

from praison_db import InputError, SessionNotFound, StoreUnavailable
from praison_db.backends.sql import schema as sql_schema
from praison_db.facade import open_store
from tests.backends import BACKENDS
from praison_db.testing.workers import run_workers
from tests.private_servers import private_mariadb

MYSQL = next(b for b in BACKENDS if b.name == "mysql")
SQL = [b for b in BACKENDS if b.name in ("sqlite", "postgresql", "mysql")]


@pytest.fixture
def mysql_url(make_url: Any) -> str:
    return make_url(MYSQL)


# ---- deadlocks and lock waits ----


@pytest.mark.slow
def test_deleting_a_session_while_others_append_never_surfaces_a_deadlock(mysql_url: str) -> None:
    appenders, appends = 4, 150
    failures: list[BaseException] = []
    done = threading.Event()
    with open_store(mysql_url, "conversations", pool_size=8) as store:
        store.create_session("hot")

        def append(worker: int) -> None:
            try:
                for i in range(appends):
                    try:
                        store.add_message("hot", "user", f"{worker}-{i}")
                    except SessionNotFound:  # deleted a moment ago: the deleter re-creates it
                        store.get_or_create_session("hot")
            except BaseException as e:
                failures.append(e)

        def churn() -> int:
            rounds = 0
            try:
                while not done.is_set() and rounds < 500:  # bounded whatever the appenders do
                    store.delete_session("hot")
                    store.get_or_create_session("hot")
                    rounds += 1
            except BaseException as e:
                failures.append(e)
            return rounds

        threads = [threading.Thread(target=append, args=(w,)) for w in range(appenders)]
        rounds: list[int] = []
        deleter = threading.Thread(target=lambda: rounds.append(churn()))
        deleter.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        done.set()
        deleter.join(timeout=300)

        assert not [f for f in failures if isinstance(f, StoreUnavailable)], failures[:3]
        assert not failures, failures[:3]
        assert rounds and rounds[0] > 0
        # The surviving incarnation: seqs 1..n with no gap, its counter agrees, and no orphan rows remain.
        messages = store.get_messages("hot")
        assert [m.seq for m in messages] == list(range(1, len(messages) + 1))
        assert store.count_messages("hot") == len(messages)
        with store.db.read() as conn:
            stored = conn.execute(select(func.count()).select_from(store.t.messages)).scalar_one()
        assert stored == len(messages)


# ---- schema creation racing ----


def _open_and_append(barrier: Any, url: str) -> int:
    barrier.wait(timeout=60)
    with open_store(url, "conversations") as store:
        session = store.get_or_create_session("shared")
        return store.add_message(session.session_id, "user", "hello").seq


@pytest.mark.slow
@pytest.mark.parametrize("backend", SQL, ids=[b.name for b in SQL])
def test_six_processes_opening_an_empty_database_at_once_all_succeed(backend: Any, make_url: Any) -> None:
    for _ in range(4):  # a few rounds, each on empty tables of its own
        url = make_url(backend)
        seqs = run_workers(_open_and_append, [(url,)] * 6, timeout=240)
        assert sorted(seqs) == [1, 2, 3, 4, 5, 6]
        with open_store(url, "conversations") as store, store.db.read() as conn:
            versions = conn.execute(select(store.t.version.c.version).order_by(store.t.version.c.version)).scalars().all()
        assert versions == list(range(1, len(sql_schema.MIGRATIONS) + 1))


# ---- packet size ----


def _escape_heavy(size: int) -> str:
    """JSON text of about ``size`` characters that is mostly quotes and backslashes: escaping doubles it."""
    return json.dumps(["\"\\" * (size // 5)])[:size]


def test_content_over_the_servers_packet_limit_is_refused_before_sending(mysql_url: str) -> None:
    with open_store(mysql_url, "conversations") as store:
        with store.db.read() as conn:
            limit = int(conn.execute(text("SELECT @@max_allowed_packet")).scalar_one())
        if limit > 20 * 1024 * 1024:
            pytest.skip(f"this server's max_allowed_packet ({limit}) carries 11 MB of escaped JSON")
        store.create_session("big")
        before = store.get_session("big")
        content = _escape_heavy(11 * 1024 * 1024)
        with pytest.raises(InputError, match=r"max_allowed_packet is [\d,]+ bytes; raise it"):
            store.add_message("big", "user", content)
        with pytest.raises(InputError, match="max_allowed_packet"):
            store.add_messages("big", [{"role": "user", "content": "small"}, {"role": "user", "content": content}])
        # Nothing was written and the connection is intact: the next append is seq 1.
        assert store.count_messages("big") == 0
        assert store.get_session("big").updated_at == before.updated_at
        assert store.add_message("big", "user", "x" * (4 * 1024 * 1024)).seq == 1


@pytest.mark.slow
def test_sixteen_megabytes_of_escape_heavy_json_is_stored_when_the_packet_limit_allows() -> None:
    from praison_db.models import MAX_CONTENT_BYTES

    with private_mariadb("--max-allowed-packet=64M") as server:
        with open_store(server.url, "conversations") as store:
            store.create_session("big")
            content = _escape_heavy(MAX_CONTENT_BYTES)
            assert store.add_message("big", "user", content).seq == 1
            assert store.get_messages("big")[0].content == content


# ---- no silent truncation ----


def test_long_names_are_stored_whole(mysql_url: str) -> None:
    with open_store(mysql_url, "conversations") as store:
        for sid, name in [("ascii", "n" * 70_000), ("wide", "é" * 70_000), ("emoji", "🙂" * 40_000)]:
            created = store.create_session(sid, name=name)
            assert created.name == name
            assert store.get_session(sid).name == name
        assert store.update_session("ascii", name="m" * 80_000).name == "m" * 80_000
        assert store.get_session("ascii").name == "m" * 80_000
        long = "t" * 70_000
        stored = store.add_message("ascii", "tool", "ok", name=long, tool_call_id=long)
        got = store.get_messages("ascii")[-1]
        assert (stored.seq, got.name, got.tool_call_id) == (1, long, long)


def test_connections_run_in_strict_mode(mysql_url: str) -> None:
    with open_store(mysql_url, "conversations") as store, store.db.read() as conn:
        assert "STRICT_ALL_TABLES" in conn.execute(text("SELECT @@SESSION.sql_mode")).scalar_one().split(",")


def test_a_version_1_database_is_widened_on_open(mysql_url: str) -> None:
    with open_store(mysql_url, "conversations") as store:
        sessions, messages, version = store.t.sessions.name, store.t.messages.name, store.t.version.name
        with store.db.write() as conn:  # back to how version 1 created them
            conn.execute(text(f"ALTER TABLE `{sessions}` MODIFY COLUMN `name` TEXT"))
            conn.execute(text(f"ALTER TABLE `{messages}` MODIFY COLUMN `name` TEXT, MODIFY COLUMN `tool_call_id` TEXT"))
            conn.execute(text(f"DELETE FROM `{version}` WHERE version > 1"))
        store.create_session("old", name="kept")
    with open_store(mysql_url, "conversations") as store:
        assert store.get_session("old").name == "kept"
        assert store.create_session("new", name="x" * 70_000).name == "x" * 70_000
        assert store.get_session("new").name == "x" * 70_000
        with store.db.read() as conn:
            kinds = conn.execute(
                text(
                    "SELECT table_name, column_name, data_type FROM information_schema.columns WHERE table_schema = "
                    "DATABASE() AND column_name IN ('name', 'tool_call_id') AND table_name IN (:s, :m)"
                ),
                {"s": sessions, "m": messages},
            ).all()
            assert sorted(k[2].lower() for k in kinds) == ["longtext"] * 3
            assert conn.execute(text(f"SELECT max(version) FROM `{version}`")).scalar_one() == len(sql_schema.MIGRATIONS)
