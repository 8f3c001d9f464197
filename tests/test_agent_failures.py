"""The Agent's failure path on real stores: sessions that vanish, writes that land although the caller saw a
failure, two Agents through a real outage, and kept messages the store later refuses.

Outages are real: a private redis-server this test starts on a free loopback port and stops by its pid, or a JSON
store whose lock folder is made unusable. The shared servers are never touched.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import praison_db
from praison_db import Agent, InputError, StoreUnavailable, db
from praison_db.files import session_file_stem
from tests import servers
from tests.backends import BACKENDS
from tests.test_agent import _break_json_writes


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PRAISON_DATABASE_URL", "DATABASE_URL", "PRAISON_STATE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PRAISON_HOME", str(tmp_path / "home"))


def by_name(*names: str) -> list[Any]:
    return [b for b in BACKENDS if b.name in names]


def contents(store: praison_db.PraisonDB, session_id: str) -> list[Any]:
    return [m.content for m in store.conversations.get_messages(session_id)]


# ---- a private Redis server (never the shared one) ----


class PrivateRedis:
    """redis-server on a free loopback port with its data in a temp dir (AOF, fsync always: restarts keep data)."""

    def __init__(self, directory: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0?socket_connect_timeout=1&socket_timeout=5"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            servers.unavailable("redis-server", "the redis-server binary is not installed")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.directory), "--logfile", str(self.directory / "log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        servers.wait_until(self._answers, f"redis-server on port {self.port}", timeout=30)

    def _answers(self) -> bool:
        import redis

        try:
            with redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5) as client:
                return bool(client.ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # by its pid: this process started it
            self.proc.wait(timeout=30)
            self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    pytest.importorskip("redis")
    server = PrivateRedis(tmp_path / "redis")
    server.directory.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_two_agents_on_one_session_through_an_outage_store_each_turn_once(private_redis, tmp_path):
    sessions = tmp_path / "sessions"
    first = db(private_redis.url, session_dir=sessions, strict=False)
    second = db(private_redis.url, session_dir=sessions, strict=False)
    a = Agent(db=first, session_id="shared")
    r1 = a.chat("My name is Alice")

    private_redis.stop()
    r2 = a.chat("My favourite colour is blue")  # kept: agent a's spool
    b = Agent(db=second, session_id="shared")
    r3 = b.chat("I live in Paris")  # b picks up a's spooled turn and keeps its own behind it
    assert [u["content"] for u in a.unsaved] == ["My favourite colour is blue", r2]
    assert [u["content"] for u in b.unsaved] == ["My favourite colour is blue", r2, "I live in Paris", r3]

    private_redis.start()
    assert a.flush() == 0
    assert b.flush() == 0  # b's copies of a's turn are the same ids: returned as stored, not stored again
    expected = ["My name is Alice", r1, "My favourite colour is blue", r2, "I live in Paris", r3]
    with db(private_redis.url, session_dir=sessions) as check:
        stored = check.conversations.get_messages("shared")
        assert [m.content for m in stored] == expected
        assert [m.seq for m in stored] == [1, 2, 3, 4, 5, 6]
        assert len({m.id for m in stored}) == 6
    assert list((sessions / "unsaved").glob("*.jsonl")) == []
    first.close()
    second.close()


# ---- a write that landed although the caller saw a failure ----


class LandsThenFails:
    """A real store whose next ``fail`` add_message calls perform the write and then report it failed, as a
    timeout after the server applied the write does. Fault injection around a real backend, not a stand-in."""

    def __init__(self, store: Any, fail: int) -> None:
        self._store = store
        self.fail = fail

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def add_message(self, *args: Any, **kwargs: Any) -> Any:
        message = self._store.add_message(*args, **kwargs)
        if self.fail:
            self.fail -= 1
            raise StoreUnavailable("the server did not answer in time")
        return message


@pytest.mark.parametrize("backend", by_name("json", "sqlite", "postgresql", "redis", "mongodb"), ids=lambda b: b.name)
def test_a_retried_write_that_had_landed_is_stored_once(backend, make_url, tmp_path):
    store = db(make_url(backend), session_dir=tmp_path / "sessions", strict=False)
    real = store.conversations
    store.conversations = LandsThenFails(real, fail=1)
    try:
        agent = Agent(db=store, session_id="landed")
        reply = agent.chat("My name is Alice")  # the user turn landed, the Agent saw a failure and kept it
        assert agent.unsaved == []  # written again before the reply: the store returned the stored message
        store.conversations.fail = 2  # both writes of the next turn land and "fail"
        second = agent.chat("What's my name?")
        assert [u["content"] for u in agent.unsaved] == ["What's my name?", second]
        assert agent.flush() == 0
    finally:
        store.conversations = real
    assert contents(store, "landed") == ["My name is Alice", reply, "What's my name?", second]
    assert [m.seq for m in real.get_messages("landed")] == [1, 2, 3, 4]
    store.close()


# ---- sessions that vanish while an Agent uses them ----


VANISH = {
    "delete_session": lambda conv, sid: conv.delete_session(sid),
    "delete_user": lambda conv, sid: conv.delete_user("alice"),
    "prune": lambda conv, sid: conv.prune(older_than=timedelta(0)),
}


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
@pytest.mark.parametrize("how", sorted(VANISH))
@pytest.mark.parametrize("backend", by_name("json", "sqlite", "redis"), ids=lambda b: b.name)
def test_a_vanished_session_is_created_again_and_every_later_turn_stored(backend, how, strict, make_url, tmp_path):
    with db(make_url(backend), session_dir=tmp_path / "sessions", strict=strict) as store:
        agent = Agent(db=store, session_id="gone", user_id="alice")
        agent.chat("My name is Alice")
        VANISH[how](store.conversations, "gone")
        assert store.conversations.get_session("gone") is None
        r2 = agent.chat("My favourite colour is blue")
        r3 = agent.chat("What's my favourite colour?")
        assert r3 == "Your favourite colour is blue."  # the Agent's own history carries on
        assert contents(store, "gone") == ["My favourite colour is blue", r2, "What's my favourite colour?", r3]
        assert store.conversations.get_session("gone").user_id == "alice"
        assert agent.unsaved == []


def test_a_session_expired_by_redis_ttl_is_created_again(make_url, tmp_path):
    redis_backend = by_name("redis")[0]
    with db(make_url(redis_backend) + "&ttl=0.3", session_dir=tmp_path / "sessions", strict=False) as store:
        agent = Agent(db=store, session_id="ttl")
        agent.chat("My name is Alice")
        servers.wait_past(time.time() + 0.35)  # expiry is time-based: wait past it on the clock
        assert store.conversations.get_session("ttl") is None
        for text in ("one", "two", "three"):
            agent.chat(text)
        assert contents(store, "ttl")[::2] == ["one", "two", "three"]
        assert agent.unsaved == []


# ---- kept messages the store refuses later ----




def test_invalid_input_is_refused_at_once_even_during_an_outage(tmp_path):
    sessions = tmp_path / "sessions"
    with db(session_dir=sessions, strict=False) as store:
        agent = Agent(db=store, session_id="big", llm=lambda messages: "ok")
        agent.chat("hello")
        locks = _break_json_writes(sessions)
        agent.chat("during the outage")
        with pytest.raises(InputError, match="larger than"):
            agent.chat("x" * (17 * 1024 * 1024))  # over the 16 MB limit: never kept, never spooled
        assert [u["content"] for u in agent.unsaved] == ["during the outage", "ok"]
        locks.unlink()
        locks.mkdir()
        agent.chat("back")
        assert contents(store, "big") == ["hello", "ok", "during the outage", "ok", "back", "ok"]
        assert agent.rejected == []


def test_a_kept_message_the_store_refuses_is_set_aside_and_the_rest_go_on(tmp_path, caplog):
    """A spool left by an Agent that kept a message without checking it first: it no longer blocks the queue."""
    sessions = tmp_path / "sessions"
    spool = sessions / "unsaved" / f"{session_file_stem('big')}.jsonl"
    spool.parent.mkdir(parents=True)
    huge = "x" * (17 * 1024 * 1024)
    kept = [
        {"session_id": "big", "role": "user", "content": "before"},  # no ids: written by an older version
        {"session_id": "big", "role": "user", "content": huge},
        {"session_id": "big", "role": "assistant", "content": "after"},
    ]
    spool.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    agents = []
    for _ in range(2):  # and across a restart: nothing is left to block on
        with db(session_dir=sessions, strict=False) as store, caplog.at_level(logging.WARNING, logger="praison_db"):
            agents.append(Agent(db=store, session_id="big", llm=lambda messages: "ok"))
            agents[-1].chat("next")
            assert agents[-1].unsaved == []
            stored = contents(store, "big")
    assert stored == ["before", "after", "next", "ok", "next", "ok"]
    assert [len(r["content"]) for r in agents[0].rejected] == [len(huge)] and agents[1].rejected == []
    assert not spool.exists()
    assert sum("set aside in agent.rejected and" in r.getMessage() for r in caplog.records) == 1
    dead = sessions / "unsaved" / f"{session_file_stem('big')}.rejected.jsonl"
    (line,) = dead.read_text(encoding="utf-8").splitlines()
    record = json.loads(line)
    assert record["content"] == huge and "larger than" in record["error"] and record["id"]


def test_a_spool_edited_by_hand_with_odd_ids_is_written_once_each(tmp_path):
    """Ids damaged in a spool file (a list, a dict, a number, null) are replaced once and the messages written."""
    sessions = tmp_path / "sessions"
    spool = sessions / "unsaved" / f"{session_file_stem('odd')}.jsonl"
    spool.parent.mkdir(parents=True)
    kept = [{"session_id": "odd", "id": odd, "role": "user", "content": f"kept {i}"} for i, odd in enumerate([[1], {"a": 1}, 5, None])]
    spool.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    with db(session_dir=sessions, strict=False) as store:
        agent = Agent(db=store, session_id="odd", llm=lambda messages: "ok")
        agent.chat("next")
        assert contents(store, "odd") == ["kept 0", "kept 1", "kept 2", "kept 3", "next", "ok"]
        assert agent.unsaved == [] and agent.rejected == []
    assert not spool.exists()


@pytest.mark.parametrize("backend", by_name("postgresql"), ids=lambda b: b.name)
def test_a_spool_with_a_refused_message_does_not_block_the_next_agent(backend, make_url, tmp_path):
    """A NUL byte spooled while PostgreSQL was down: the next Agent sets it aside and writes the rest."""
    sessions = tmp_path / "sessions"
    spool = sessions / "unsaved" / f"{session_file_stem('nul')}.jsonl"
    spool.parent.mkdir(parents=True)
    kept = [
        {"session_id": "nul", "id": "k1", "role": "user", "content": "a\x00b"},
        {"session_id": "nul", "id": "k2", "role": "assistant", "content": "fine"},
    ]
    spool.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    url = make_url(backend)
    for _ in range(2):  # and across a restart: nothing is left to block on
        with db(url, session_dir=sessions, strict=False) as store:
            agent = Agent(db=store, session_id="nul", llm=lambda messages: "ok")
            agent.chat("next")
            assert agent.unsaved == []
    with db(url, session_dir=sessions) as store:
        stored = store.conversations.get_messages("nul")
        assert [(m.id, m.content) for m in stored][:1] == [("k2", "fine")]
        assert [m.content for m in stored] == ["fine", "next", "ok", "next", "ok"]
    assert not spool.exists()
    rejected = [json.loads(x) for x in spool.with_name(f"{session_file_stem('nul')}.rejected.jsonl").read_text().splitlines()]
    assert [(r["id"], r["content"]) for r in rejected] == [("k1", "a\x00b")]
