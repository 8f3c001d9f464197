"""Read replicas on real replicas started here and stopped by pid: PostgreSQL streaming replication (a private
primary, ``pg_basebackup`` into a temporary folder and a second postmaster on a free loopback port) and MariaDB GTID
replication (two private servers, the second following the first's binary log).

What a user relies on: listings and history reads are served by the replica, what this db object wrote is visible
to its next read however far the replica lags, and a replica that goes away costs no error.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
import pymysql
import pytest

from praison_db import ConfigError, db
from praison_db.aio import db as async_db
from tests.private_servers import PrivateServer, _stop, private_mariadb, private_postgres, streaming_replica
from tests.servers import wait_until

pytestmark = pytest.mark.slow


@dataclass
class Pair:
    primary: PrivateServer
    replica: PrivateServer
    kind: str  # "postgresql" or "mariadb"

    def sql(self, url: str, statement: str) -> object:
        if self.kind == "postgresql":
            with psycopg.connect(url, autocommit=True) as conn:
                row = conn.execute(statement).fetchone()
        else:
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            with pymysql.connect(host="127.0.0.1", port=port, user="root", autocommit=True) as conn, conn.cursor() as cur:
                cur.execute(statement)
                row = cur.fetchone()
        return None if row is None else row[0]

    def pause_replay(self) -> None:
        self.sql(self.replica.url, "SELECT pg_wal_replay_pause()" if self.kind == "postgresql" else "STOP SLAVE SQL_THREAD")

    def resume_replay(self) -> None:
        self.sql(self.replica.url, "SELECT pg_wal_replay_resume()" if self.kind == "postgresql" else "START SLAVE SQL_THREAD")

    def wait_for_replay(self) -> None:
        """Poll until the replica has replayed everything the primary has written so far."""
        if self.kind == "postgresql":
            target = self.sql(self.primary.url, "SELECT pg_current_wal_lsn()::text")
            check = f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"
            wait_until(lambda: self.sql(self.replica.url, check) is True, "replica replay", timeout=60)
        else:
            target = self.sql(self.primary.url, "SELECT @@gtid_binlog_pos")
            check = f"SELECT MASTER_GTID_WAIT('{target}', 0)"
            wait_until(lambda: self.sql(self.replica.url, check) == 0, "replica replay", timeout=60)


@contextmanager
def mariadb_pair() -> Iterator[Pair]:
    with private_mariadb("--log-bin=binlog", "--server-id=1") as primary, private_mariadb("--server-id=2") as replica:
        pair = Pair(primary, replica, "mariadb")
        port = primary.url.rsplit(":", 1)[1].split("/")[0]
        pair.sql(replica.url, f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={port}, MASTER_USER='root', MASTER_USE_GTID=slave_pos")
        pair.sql(replica.url, "START SLAVE")
        pair.sql(primary.url, "CREATE DATABASE IF NOT EXISTS replicated")
        pair.wait_for_replay()
        yield pair


@contextmanager
def postgres_pair() -> Iterator[Pair]:
    with private_postgres() as primary, streaming_replica(primary) as replica:
        yield Pair(primary, replica, "postgresql")


PAIRS = {"postgresql": postgres_pair, "mariadb": mariadb_pair}


@pytest.fixture(scope="module", params=sorted(PAIRS))
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    with PAIRS[request.param]() as found:
        yield found


def sid() -> str:
    return "r-" + uuid.uuid4().hex[:10]


def test_reads_go_to_the_replica_and_own_writes_are_read_back_despite_lag(pair):
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    with db(pair.primary.url, table_prefix=prefix, read_url=pair.replica.url) as store:
        chat = store.conversations
        s = sid()
        chat.create_session(s, user_id="u")
        pair.wait_for_replay()
        pair.pause_replay()
        try:
            # Our own writes, with the replica stopped behind them: the reads see every one (served by the primary).
            for i in range(5):
                chat.add_message(s, "user", f"turn {i}")
                assert [m.content for m in chat.get_messages(s, limit=1)] == [f"turn {i}"]
            assert chat.count_messages(s) == 5 and chat.get_session(s).message_count == 5
            assert [x.session_id for x in chat.list_sessions(user_id="u")] == [s]
            # Another writer's message, which this db object cannot know of: the lagging replica does not have it
            # yet, and a store that has not written reads from the replica.
            with db(pair.primary.url, table_prefix=prefix) as other:
                other.conversations.add_message(s, "assistant", "from elsewhere")
            with db(pair.primary.url, table_prefix=prefix, read_url=pair.replica.url) as reader:
                # The replica stopped replaying before the five turns: it still has the session without messages.
                assert reader.conversations.count_messages(s) == 0 and reader.conversations.get_messages(s) == []
                assert reader.conversations.get_session(s).message_count == 0
                pair.resume_replay()
                pair.wait_for_replay()
                assert reader.conversations.count_messages(s) == 6
                assert reader.conversations.get_messages(s, limit=1)[0].content == "from elsewhere"
        finally:
            pair.resume_replay()


def test_the_async_api_reads_its_own_writes_through_a_lagging_replica(pair):
    import asyncio

    prefix = f"t{uuid.uuid4().hex[:8]}_"
    s = sid()

    async def main() -> list[str]:
        async with async_db(pair.primary.url, table_prefix=prefix, read_url=pair.replica.url) as store:
            await store.conversations.create_session(s)
            pair.wait_for_replay()
            pair.pause_replay()
            try:
                await store.conversations.add_messages(s, [{"role": "user", "content": "a"}, {"type": "reasoning", "summary": []}])
                return [m.content or m.type for m in await store.conversations.get_messages(s)]
            finally:
                pair.resume_replay()

    assert asyncio.run(main()) == ["a", "reasoning"]


@pytest.mark.parametrize("kind", sorted(PAIRS))
def test_a_replica_that_goes_away_costs_no_error(kind):
    with PAIRS[kind]() as pair:
        primary, replica = pair.primary, pair.replica
        with db(primary.url, read_url=replica.url) as store:
            chat = store.conversations
            s = sid()
            chat.create_session(s)
            chat.add_message(s, "user", "before")
            _stop(replica.process, signal.SIGKILL)
            started = time.monotonic()
            assert [m.content for m in chat.get_messages(s)] == ["before"]
            chat.add_message(s, "user", "after")
            assert [m.content for m in chat.get_messages(s)] == ["before", "after"]
            assert [x.session_id for x in chat.list_sessions()] == [s]
            assert time.monotonic() - started < 20


def test_read_url_is_checked_and_its_password_never_shown(pair):
    with pytest.raises(ConfigError, match=f"read_url must be a {pair.primary.url.split(':')[0]}:// URL"):
        db(pair.primary.url, read_url="redis://localhost:6379/0")
    with pytest.raises(ConfigError, match="supported on PostgreSQL and MariaDB, not on sqlite"):
        db("sqlite:///:memory:", read_url="sqlite:///other.db")
    with pytest.raises(ConfigError) as info:
        db("redis://localhost:6379/0", read_url="postgresql://u:s3cret@h/db")
    assert "s3cret" not in str(info.value)


def test_praison_read_url_in_the_environment(pair, monkeypatch):
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    monkeypatch.setenv("PRAISON_READ_URL", pair.replica.url)
    with db(pair.primary.url, table_prefix=prefix) as store:
        replica = store.conversations.db.replica
        assert replica is not None and str(replica.engine.url.port) == pair.replica.url.rsplit(":", 1)[1].split("/")[0]
