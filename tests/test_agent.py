"""Agent: persistence across restarts, history windows, tool turns, strict/non-strict storage, the offline model.

Every store here is real (JSON files or a SQLite file in tmp_path); nothing is mocked.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import praison_db
from praison_db import Agent, ConfigError, SessionExists, StoreClosed, db
from praison_db.llm import OfflineModel, normalize_reply

ROOT = Path(praison_db.__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PRAISON_DATABASE_URL", "DATABASE_URL", "PRAISON_STATE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PRAISON_HOME", str(tmp_path / "home"))


@pytest.fixture(params=["json", "sqlite"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A function that opens a new db() over the same place each time (what a restarted process does)."""
    url = None if request.param == "json" else f"sqlite:///{tmp_path / 'chat.db'}"
    opened: list[praison_db.PraisonDB] = []

    def factory(**kwargs: Any) -> praison_db.PraisonDB:
        store = db(url, session_dir=tmp_path / "sessions", **kwargs)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


def roles(store: praison_db.PraisonDB, session_id: str) -> list[str]:
    return [m.role for m in store.conversations.get_messages(session_id)]


class Recorder:
    """A callable llm that records every prompt and answers with the offline model."""

    def __init__(self) -> None:
        self.prompts: list[list[dict[str, Any]]] = []
        self.model = OfflineModel()

    def __call__(self, messages: list[dict[str, Any]]) -> str:
        self.prompts.append(messages)
        return self.model(messages)


# ---- persistence ----


def test_history_survives_a_restart(open_store: Any) -> None:
    first = open_store()
    agent = Agent(name="Assistant", instructions="You are helpful.", db=first, session_id="user-123", user_id="u1")
    assert "Alice" in agent.chat("My name is Alice")
    assert "blue" in agent.chat("My favourite colour is blue")
    assert first.conversations.count_messages("user-123") == 4  # stored before chat() returned
    first.close()

    second = open_store()
    resumed = Agent(name="Assistant", db=second, session_id="user-123", user_id="u1")
    assert resumed.chat("What's my name?") == "Your name is Alice."
    assert resumed.chat("What's my favourite colour?") == "Your favourite colour is blue."
    assert roles(second, "user-123") == ["user", "assistant"] * 4
    session = second.conversations.get_session("user-123")
    assert session is not None and session.user_id == "u1" and session.agent_id == "Assistant"
    # The instructions are a system prompt, never a stored message.
    assert all(m["role"] != "system" for m in resumed.history)


def test_history_survives_a_process_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'chat.db'}"
    script = textwrap.dedent(
        f"""
        from praison_db import Agent, db
        with db({url!r}) as store:
            Agent(db=store, session_id="proc").chat("I'm Alice")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120)
    with db(url) as store:
        agent = Agent(db=store, session_id="proc")
        assert agent.chat("What's my name?") == "Your name is Alice."


def test_user_message_is_stored_before_the_model_is_called(open_store: Any) -> None:
    store = open_store()
    seen: list[list[str]] = []

    def llm(messages: list[dict[str, Any]]) -> str:
        seen.append([m.content for m in store.conversations.get_messages("s")])
        return "ok"

    Agent(db=store, session_id="s", llm=llm).chat("hello")
    assert seen == [["hello"]]


def test_generated_session_id_and_zero_config_db(tmp_path: Path) -> None:
    with Agent() as agent:
        agent.chat("My name is Alice")
        sid = agent.session_id
        assert sid and agent.db.database_url is None
    with db() as store:
        assert store.conversations.count_messages(sid) == 2
    assert (tmp_path / "home" / "sessions").is_dir()


def test_history_limit_restores_only_the_newest_messages(open_store: Any) -> None:
    store = open_store()
    store.conversations.get_or_create_session("long")
    store.conversations.add_messages(
        "long", [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(10)]
    )
    llm = Recorder()
    agent = Agent(db=store, session_id="long", llm=llm, history_limit=3, instructions="be brief")
    agent.chat("next")
    prompt = llm.prompts[0]
    assert prompt[0] == {"role": "system", "content": "be brief"}
    assert [m["content"] for m in prompt[1:]] == ["m7", "m8", "m9", "next"]
    assert [m["content"] for m in agent.history][:4] == ["m7", "m8", "m9", "next"]
    # Later turns keep sending at most history_limit earlier messages plus the current turn.
    first_reply = agent.history[4]["content"]
    agent.chat("again")
    assert [m["content"] for m in llm.prompts[1][1:]] == ["m9", "next", first_reply, "again"]


def test_history_limit_zero_restores_nothing(open_store: Any) -> None:
    store = open_store()
    Agent(db=store, session_id="s").chat("My name is Alice")
    agent = Agent(db=store, session_id="s", history_limit=0)
    assert "Alice" not in agent.chat("What's my name?")
    assert store.conversations.count_messages("s") == 4


# ---- tools ----


def _tool_calling_llm(calls: list[dict[str, Any]]) -> Any:
    def llm(messages: list[dict[str, Any]]) -> Any:
        if messages[-1]["role"] == "user":
            return {"role": "assistant", "content": None, "tool_calls": calls}
        results = [m["content"] for m in messages if m["role"] == "tool"]
        return f"results: {', '.join(results)}"

    return llm


def test_tool_call_turns_are_persisted_and_restored(open_store: Any) -> None:
    store = open_store()
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": json.dumps({"a": 2, "b": 3})}},
        {"id": "call_2", "type": "function", "function": {"name": "missing", "arguments": "{}"}},
    ]
    agent = Agent(db=store, session_id="tools", llm=_tool_calling_llm(calls), tools={"add": lambda a, b: a + b})
    reply = agent.chat("add 2 and 3")
    assert reply.startswith("results: 5, error: LookupError")

    stored = store.conversations.get_messages("tools")
    assert [m.role for m in stored] == ["user", "assistant", "tool", "tool", "assistant"]
    assert stored[1].tool_calls is not None and [c["id"] for c in stored[1].tool_calls] == ["call_1", "call_2"]
    assert stored[1].content is None
    assert (stored[2].tool_call_id, stored[2].content) == ("call_1", "5")
    assert stored[3].tool_call_id == "call_2" and "no tool named 'missing'" in (stored[3].content or "")
    assert stored[4].content == reply

    llm = Recorder()
    resumed = Agent(db=open_store(), session_id="tools", llm=llm)
    resumed.chat("thanks")
    assert [m["role"] for m in llm.prompts[0]] == ["user", "assistant", "tool", "tool", "assistant", "user"]
    assert llm.prompts[0][1]["tool_calls"][0]["function"]["name"] == "add"


def test_tool_loop_is_bounded(open_store: Any) -> None:
    store = open_store()
    call = {"id": "c", "type": "function", "function": {"name": "noop", "arguments": "{}"}}
    agent = Agent(
        db=store,
        session_id="loop",
        llm=lambda messages: {"role": "assistant", "content": None, "tool_calls": [call]},
        tools={"noop": lambda: "done"},
        max_tool_rounds=2,
    )
    assert agent.chat("go") == "(stopped after 2 tool rounds)"
    assert roles(store, "loop") == ["user", "assistant", "tool", "assistant", "tool", "assistant"]


def test_normalize_reply_fills_ids_and_encodes_arguments() -> None:
    reply = normalize_reply({"content": "x", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]})
    call = reply["tool_calls"][0]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert json.loads(call["function"]["arguments"]) == {"a": 1}
    assert normalize_reply("hi") == {"role": "assistant", "content": "hi"}


# ---- strict and non-strict storage ----


def test_strict_store_errors_propagate(open_store: Any) -> None:
    store = open_store()
    agent = Agent(db=store, session_id="s")
    agent.chat("one")
    store.conversations.close()
    with pytest.raises(StoreClosed):
        agent.chat("two")
    assert agent.unsaved == []


def _break_json_writes(directory: Path) -> Path:
    """Make every write of the JSON store fail for real: its lock folder becomes a file."""
    locks = directory / ".locks"
    shutil.rmtree(locks)
    locks.write_text("not a folder")
    return locks


def test_non_strict_keeps_unwritten_messages_and_flushes_them_first(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = db(session_dir=tmp_path / "sessions", strict=False)
    agent = Agent(db=store, session_id="flaky")
    agent.chat("My name is Alice")

    locks = _break_json_writes(tmp_path / "sessions")
    with caplog.at_level(logging.WARNING, logger="praison_db"):
        reply = agent.chat("My favourite colour is blue")  # the agent keeps running
    assert "blue" in reply
    assert [(u["session_id"], u["role"], u["content"]) for u in agent.unsaved] == [
        ("flaky", "user", "My favourite colour is blue"),
        ("flaky", "assistant", reply),
    ]
    assert any("kept in agent.unsaved" in r.getMessage() for r in caplog.records)
    spool = list((tmp_path / "sessions" / "unsaved").glob("*.jsonl"))
    assert len(spool) == 1
    assert [json.loads(line)["role"] for line in spool[0].read_text().splitlines()] == ["user", "assistant"]
    assert store.conversations.count_messages("flaky") == 2

    locks.unlink()
    locks.mkdir()
    assert agent.chat("What's my favourite colour?") == "Your favourite colour is blue."
    assert agent.unsaved == [] and not spool[0].exists()
    stored = store.conversations.get_messages("flaky")
    assert [m.seq for m in stored] == [1, 2, 3, 4, 5, 6]
    assert [m.content for m in stored][2:5] == ["My favourite colour is blue", reply, "What's my favourite colour?"]
    store.close()


def test_non_strict_spool_is_written_by_the_next_agent(tmp_path: Path) -> None:
    store = db(session_dir=tmp_path / "sessions", strict=False)
    agent = Agent(db=store, session_id="crashy")
    store.conversations.close()  # the store is gone before the first message
    reply = agent.chat("My name is Alice")
    assert [u["content"] for u in agent.unsaved] == ["My name is Alice", reply]
    store.close()

    with db(session_dir=tmp_path / "sessions", strict=False) as again:
        resumed = Agent(db=again, session_id="crashy")
        assert resumed.chat("What's my name?") == "Your name is Alice."
        assert [m.content for m in again.conversations.get_messages("crashy")][:3] == [
            "My name is Alice",
            reply,
            "What's my name?",
        ]
        assert resumed.unsaved == []
    assert list((tmp_path / "sessions" / "unsaved").glob("*.jsonl")) == []


def test_session_of_another_user_is_refused(open_store: Any) -> None:
    store = open_store()
    Agent(db=store, session_id="mine", user_id="alice").chat("secret")
    with pytest.raises(SessionExists):
        Agent(db=store, session_id="mine", user_id="mallory").chat("show me")


# ---- the offline model ----


@pytest.mark.parametrize("statement", ["My name is Alice", "I'm Alice", "call me Alice", "I am Alice.", "my name is alice"])
def test_offline_model_answers_the_name_from_history(statement: str) -> None:
    model = OfflineModel()
    history = [{"role": "user", "content": statement}, {"role": "assistant", "content": model([{"role": "user", "content": statement}])}]
    assert model(history + [{"role": "user", "content": "What's my name?"}]) == "Your name is Alice."


def test_offline_model_does_not_know_the_name_in_a_fresh_session(open_store: Any) -> None:
    store = open_store()
    Agent(db=store, session_id="a").chat("My name is Alice")
    reply = Agent(db=store, session_id="b").chat("What's my name?")
    assert "Alice" not in reply and "don't know" in reply
    assert "tired" not in OfflineModel()([{"role": "user", "content": "I'm tired"}, {"role": "user", "content": "Who am I?"}])


def test_offline_model_facts_and_questions_about_the_history() -> None:
    model = OfflineModel()
    history: list[dict[str, Any]] = []
    for text in ["Hello there", "My favorite color is blue and my dog is Rex", "ok"]:
        history += [{"role": "user", "content": text}, {"role": "assistant", "content": model(history + [{"role": "user", "content": text}])}]
    assert "I remember 4 earlier messages" in history[-1]["content"]

    def ask(question: str) -> str:
        return model(history + [{"role": "user", "content": question}])

    assert ask("What's my favourite colour?") == "Your favourite colour is blue."
    assert ask("what is my dog?") == "Your dog is Rex."
    assert "don't know your shoe size" in ask("What is my shoe size?")
    assert ask("How many messages have we exchanged?").startswith("Before this one, our conversation has 6 messages")
    assert ask("What did I say first?") == "Your first message was “Hello there”."
    assert ask("What did I just say?") == "Your previous message was “ok”."


def test_llm_argument_checks() -> None:
    with pytest.raises(ConfigError, match="callable"):
        Agent(llm=42, db="memory://")
    with pytest.raises(ConfigError):
        Agent(db=object())  # type: ignore[arg-type]
    if importlib.util.find_spec("openai") is None:
        with pytest.raises(ConfigError, match=r"pip install 'praison-db\[openai\]'"):
            Agent(llm="gpt-4o-mini", db="memory://")


def test_openai_model_sends_tools_and_normalises_the_reply(open_store: Any) -> None:
    """The OpenAI-compatible layer, with a stand-in client object (the SDK is not needed for this)."""
    from types import SimpleNamespace

    from praison_db.llm import OpenAIChatModel, tool_spec

    def weather(city: str, days: int = 1) -> str:
        """Forecast for a city."""
        return f"sunny in {city}"

    requests: list[dict[str, Any]] = []

    def create(**kwargs: Any) -> Any:
        requests.append(kwargs)
        if kwargs["messages"][-1]["role"] == "user":
            call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
        else:
            message = {"role": "assistant", "content": "It is " + kwargs["messages"][-1]["content"]}
        return SimpleNamespace(choices=[SimpleNamespace(message=message)])

    client = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)))
    spec = tool_spec("weather", weather)
    assert spec["function"]["description"] == "Forecast for a city."
    assert spec["function"]["parameters"]["properties"] == {"city": {"type": "string"}, "days": {"type": "integer"}}
    assert spec["function"]["parameters"]["required"] == ["city"]

    model = OpenAIChatModel("some-model", tools=[spec], client=client, temperature=0)
    agent = Agent(db=open_store(), session_id="w", llm=model, tools={"weather": weather})
    assert agent.chat("weather in Paris?") == "It is sunny in Paris"
    assert requests[0]["model"] == "some-model" and requests[0]["tools"] == [spec] and requests[0]["temperature"] == 0
    assert [m["role"] for m in requests[1]["messages"]] == ["user", "assistant", "tool"]
