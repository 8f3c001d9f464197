"""db(...) across backends: conversations in one database, state in another, and a session resumed after reopening."""

from __future__ import annotations

import pytest

from praison_db import db
from praison_db.backends.mongo import MongoConversationStore, MongoStateStore
from praison_db.backends.redis import RedisConversationStore, RedisStateStore
from praison_db.backends.sql import SqlConversationStore
from tests.backends import BACKENDS

BY_NAME = {b.name: b for b in BACKENDS}
TURNS = [
    {"role": "user", "content": "My name is Alice"},
    {"role": "assistant", "content": "Nice to meet you, Alice."},
]


def resume(database_url: str, state_url: str | None, tmp_path) -> None:
    """Write a conversation and some state, close everything, reopen from the same URLs and read it all back."""
    with db(database_url=database_url, state_url=state_url, session_dir=tmp_path) as store:
        store.conversations.get_or_create_session("user-123", user_id="alice", agent_id="assistant")
        for turn in TURNS:
            store.conversations.add_message("user-123", turn["role"], turn["content"])
        store.state.scope("session", "user-123").set("turns", 1)
        store.state.set("rate:alice", 3, ttl=60)
    assert store.closed and store.conversations.closed and store.state.closed
    # ... the process restarts ...
    with db(database_url=database_url, state_url=state_url, session_dir=tmp_path) as again:
        session = again.conversations.get_or_create_session("user-123", user_id="alice", agent_id="assistant")
        assert session.message_count == 2
        assert again.conversations.get_history("user-123", limit=20) == TURNS
        assert again.state.scope("session", "user-123").get("turns") == 1
        assert again.state.incr("rate:alice") == 4 and 0 < again.state.ttl("rate:alice") <= 60
        again.conversations.add_message("user-123", "user", "What's my name?")
        assert [m.seq for m in again.conversations.get_messages("user-123", limit=2)] == [2, 3]


def test_postgresql_conversations_with_redis_state(make_url, tmp_path):
    pg, rd = make_url(BY_NAME["postgresql"]), make_url(BY_NAME["redis"])
    with db(database_url=pg, state_url=rd, session_dir=tmp_path) as store:
        assert isinstance(store.conversations, SqlConversationStore) and isinstance(store.state, RedisStateStore)
    resume(pg, rd, tmp_path)


def test_redis_for_both_shares_one_connection(make_url, tmp_path):
    rd = make_url(BY_NAME["redis"])
    with db(database_url=f"{rd}&ttl=3600", session_dir=tmp_path) as store:
        assert isinstance(store.conversations, RedisConversationStore) and isinstance(store.state, RedisStateStore)
        assert store.state.conn is store.conversations.conn
    resume(rd, None, tmp_path)


def test_mongodb_for_both(make_url, tmp_path):
    mongo = make_url(BY_NAME["mongodb"])
    with db(database_url=mongo, session_dir=tmp_path) as store:
        assert isinstance(store.conversations, MongoConversationStore) and isinstance(store.state, MongoStateStore)
        assert store.state.conn is store.conversations.conn
    resume(mongo, None, tmp_path)


def test_urls_from_the_environment(make_url, tmp_path, monkeypatch):
    mongo, rd = make_url(BY_NAME["mongodb"]), make_url(BY_NAME["redis"])
    monkeypatch.setenv("PRAISON_DATABASE_URL", mongo)
    monkeypatch.setenv("PRAISON_STATE_URL", rd)
    with db(session_dir=tmp_path) as store:
        assert isinstance(store.conversations, MongoConversationStore) and isinstance(store.state, RedisStateStore)
    resume(mongo, rd, tmp_path)


@pytest.mark.parametrize(
    "url",
    ["redis://:s3cret@127.0.0.1:1/0", "mongodb://u:s3cret@127.0.0.1:1/db?serverSelectionTimeoutMS=300"],
    ids=["redis", "mongodb"],
)
def test_unreachable_state_server_closes_what_was_opened(url, make_url, tmp_path):
    from praison_db import StoreUnavailable

    with pytest.raises(StoreUnavailable) as info:
        db(database_url=make_url(BY_NAME["sqlite"]), state_url=url, session_dir=tmp_path)
    assert "s3cret" not in str(info.value)


AGENT = """
import sys
from praison_db import Agent, db
url, state_url, session_dir, text = sys.argv[1:5]
with db(database_url=url, state_url=state_url or None, session_dir=session_dir) as store:
    agent = Agent(name="Assistant", instructions="You are helpful.", db=store, session_id="user-123", user_id="alice")
    print(agent.chat(text))
    store.state.scope("session", "user-123").incr("turns")
"""


@pytest.mark.parametrize(
    "conversations, state",
    [("postgresql", "redis"), ("mongodb", None), ("redis", None), ("mysql", "mongodb"), ("clickhouse-chdb", "sqlite")],
)
def test_an_agent_resumes_its_session_in_a_new_process(conversations, state, make_url, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    # chDB lets one process own a data folder: the children get a folder of their own, not this run's.
    conv_url = f"chdb://{tmp_path}/clickhouse" if conversations == "clickhouse-chdb" else make_url(BY_NAME[conversations])
    state_url = make_url(BY_NAME[state]) if state else ""
    root = Path(__file__).resolve().parents[1]

    def chat(text: str) -> str:
        out = subprocess.run(
            [sys.executable, "-c", AGENT, conv_url, state_url, str(tmp_path), text],
            env={**os.environ, "PYTHONPATH": str(root)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    assert "Alice" in chat("My name is Alice")
    assert "Your name is Alice." in chat("What's my name?")  # only the restored history can say so
    if conversations != "clickhouse-chdb":
        with db(database_url=conv_url, state_url=state_url or None, session_dir=tmp_path) as store:
            assert store.conversations.count_messages("user-123") == 4
            assert store.state.scope("session", "user-123").get("turns") == 2
