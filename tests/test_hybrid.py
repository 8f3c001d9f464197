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
