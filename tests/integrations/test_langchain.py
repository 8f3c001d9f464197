"""PraisonChatMessageHistory on every backend: LangChain's messages come back exactly (class, every field, types of
JSON numbers) on the sync and the async face, ids make adds idempotent, ``limit`` is a window, praison_db's own
reads see a normal conversation, and RunnableWithMessageHistory picks a conversation up after a restart.

Tests taking ``conv_url`` run once per backend of tests/backends.py (praison_db.testing.plugin).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    ChatMessageChunk,
    FunctionMessage,
    FunctionMessageChunk,
    HumanMessage,
    HumanMessageChunk,
    RemoveMessage,
    SystemMessage,
    SystemMessageChunk,
    ToolMessage,
    ToolMessageChunk,
)

from praison_db import ConfigError, InputError, StoreClosed, aio, db
from praison_db.facade import open_store
from praison_db.integrations.langchain import PraisonChatMessageHistory
from praison_db.models import MAX_ROLE_LENGTH
from praison_db.testing.suite.test_numbers import same
from tests.backends import BACKENDS
from tests.integrations.langchain_turns import ANSWERS, QUESTIONS, SYSTEM, Chat

# A backend whose async store runs on its native driver, so its connections belong to one event loop.
POSTGRESQL = next(b for b in BACKENDS if b.name == "postgresql")

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore:RunnableWithMessageHistory is deprecated")


def sid() -> str:
    return "lc-" + uuid.uuid4().hex[:12]


def exact(got: list[BaseMessage], expected: list[BaseMessage]) -> bool:
    """Same classes and the same fields, JSON types and the sign of zero included (``==`` says 1 == 1.0 == True)."""
    return [type(m) for m in got] == [type(m) for m in expected] and same(
        [m.model_dump() for m in got], [m.model_dump() for m in expected]
    )


# Every class LangChain has, with every field it has set to something other than its default.
EVERY_CLASS: list[BaseMessage] = [
    SystemMessage("Be brief.", id="sys-1", name="setup", additional_kwargs={"__openai_role__": "developer"}),
    HumanMessage(
        [{"type": "text", "text": "What is in this picture?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}, "and this?"],
        id="h-1", name="alice", response_metadata={"lang": "en"},
    ),
    AIMessage(
        "",
        id="a-1",
        name="assistant-1",
        tool_calls=[
            {"name": "search", "args": {"q": "café", "n": 3, "score": 0.5, "exact": False, "tags": None}, "id": "call-1"},
            {"name": "noop", "args": {}, "id": None},
        ],
        invalid_tool_calls=[{"name": "broken", "args": "{\"q\": ", "id": "call-2", "error": "truncated JSON", "type": "invalid_tool_call"}],
        usage_metadata={
            "input_tokens": 10, "output_tokens": 20, "total_tokens": 30,
            "input_token_details": {"cache_read": 4}, "output_token_details": {"reasoning": 12},
        },
        response_metadata={"model_name": "gpt-x", "finish_reason": "tool_calls", "logprobs": None, "system_fingerprint": "fp_1"},
        additional_kwargs={"refusal": None, "reasoning": {"summary": ["thought"]}},
    ),
    ToolMessage("12 results", tool_call_id="call-1", name="search", id="t-1", artifact={"rows": [1, 2.0, -0.0]}, status="error"),
    ToolMessage([{"type": "text", "text": "done"}], tool_call_id="call-3"),
    ChatMessage(role="critic", content="Too long.", id="c-1", name="reviewer"),
    ChatMessage(role="user", content="a chat message whose role is a standard one"),
    ChatMessage(role="developer", content="Use metric units."),
    FunctionMessage(name="lookup", content="{\"temp\": 21}", id="f-1"),
    RemoveMessage(id="h-1"),
    HumanMessageChunk("partial question", id="hc-1"),
    AIMessageChunk(
        "partial answer",
        id="ac-1",
        tool_call_chunks=[{"name": "search", "args": "{\"q\": \"x\"}", "id": "call-9", "index": 0}],
        chunk_position="last",
        usage_metadata={"input_tokens": 1, "output_tokens": 2, "total_tokens": 3},
    ),
    SystemMessageChunk("system chunk"),
    ToolMessageChunk("tool chunk", tool_call_id="call-9", artifact=[1, "two"], status="success"),
    FunctionMessageChunk(name="lookup", content="function chunk"),
    ChatMessageChunk(role="critic", content="chat chunk"),
    AIMessage("Plain answer.", id="a-2"),
]
assert len({type(m) for m in EVERY_CLASS}) == 13  # every message class of langchain_core.messages


def in_loop(coro: Any) -> Any:
    return asyncio.run(coro)


# ---- every class, every field, both faces, on every backend ----


@pytest.mark.parametrize("face", ["sync", "async"])
def test_every_message_class_round_trips_exactly(conv_url: str, face: str) -> None:
    """Written on one face and read on it, then read by a new history (new connections) on the other face."""
    s = sid()
    if face == "sync":
        with PraisonChatMessageHistory(s, conv_url) as history:
            history.add_messages(EVERY_CLASS)
            assert exact(history.messages, EVERY_CLASS)

        async def read_back() -> list[BaseMessage]:
            async with PraisonChatMessageHistory(s, conv_url) as other:
                return await other.aget_messages()

        assert exact(in_loop(read_back()), EVERY_CLASS)
    else:

        async def write() -> list[BaseMessage]:
            async with PraisonChatMessageHistory(s, conv_url) as history:
                await history.aadd_messages(EVERY_CLASS)
                return await history.aget_messages()

        assert exact(in_loop(write()), EVERY_CLASS)
        with PraisonChatMessageHistory(s, conv_url) as other:
            assert exact(other.messages, EVERY_CLASS)


def test_praison_reads_see_a_normal_conversation(conv_url: str) -> None:
    s = sid()
    with PraisonChatMessageHistory(s, conv_url) as history:
        history.add_messages(EVERY_CLASS)
    with db(conv_url) as store:
        stored = store.conversations.get_messages(s)
        chat = store.conversations.get_history(s)
    assert [m.role for m in stored] == [
        "system", "user", "assistant", "tool", "tool", "critic", "user", "developer", "function", None, "user",
        "assistant", "system", "tool", "function", "critic", "assistant",
    ]
    assert [m.id for m in stored][:3] == ["sys-1", "h-1", "a-1"]
    removal = stored[9]
    assert (removal.type, removal.extra["remove_id"]) == ("remove", "h-1") and removal.id != "h-1"
    # get_history: the messages a chat model takes, tool calls in the chat API's form, LangChain's fields left out.
    assert chat[2] == {
        "role": "assistant",
        "content": "",
        "name": "assistant-1",
        "tool_calls": [
            {"id": "call-1", "type": "function", "function": {"name": "search", "arguments": "{\"q\": \"café\", \"n\": 3, \"score\": 0.5, \"exact\": false, \"tags\": null}"}},
            {"id": None, "type": "function", "function": {"name": "noop", "arguments": "{}"}},
        ],
    }
    assert chat[3] == {"role": "tool", "content": "12 results", "name": "search", "tool_call_id": "call-1"}
    assert chat[0] == {"role": "system", "content": "Be brief.", "name": "setup"}
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "tool", "tool", "user", "developer", "user", "assistant", "system", "tool", "assistant"]
    # A plain message carries nothing else: what another framework reads is the plain chat message.
    assert stored[-1].to_item() == {"id": "a-2", "role": "assistant", "content": "Plain answer."}


def test_messages_written_by_other_code_are_read_by_role(conv_url: str) -> None:
    """A session written through praison_db's own API (as the Agent and earlier versions write it: role and content,
    OpenAI tool calls, no LangChain fields) reads as LangChain messages; items without a role are left out."""
    s = sid()
    with db(conv_url) as store:
        conv = store.conversations
        conv.create_session(s)
        conv.add_message(s, "system", "Be brief.")
        conv.add_message(s, "user", "weather?")
        conv.add_message(
            s, "assistant", None,
            tool_calls=[
                {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}},
                {"id": "c2", "type": "function", "function": {"name": "weather", "arguments": "{not json"}},
            ],
        )
        conv.add_message(s, "tool", "21 °C", tool_call_id="c1")
        conv.add_messages(s, [{"type": "function_call", "call_id": "c3", "name": "f", "arguments": "{}"}])
        conv.add_message(s, "developer", "Use metric units.")
        conv.add_message(s, "critic", {"score": 3})
        conv.add_message(s, "tool", "no call id")  # a ToolMessage needs one: shown as a chat message
    with PraisonChatMessageHistory(s, conv_url) as history:
        got = history.messages
    assert got[:2] == [SystemMessage("Be brief."), HumanMessage("weather?")]
    assert isinstance(got[2], AIMessage) and got[2].content == ""
    assert got[2].tool_calls == [{"name": "weather", "args": {"city": "Paris"}, "id": "c1", "type": "tool_call"}]
    [invalid] = got[2].invalid_tool_calls  # arguments that are not JSON: an invalid tool call, as LangChain parses it
    assert (invalid["name"], invalid["args"], invalid["id"]) == ("weather", "{not json", "c2")
    assert (invalid["error"] or "").startswith("arguments are not JSON")
    assert got[3:] == [
        ToolMessage("21 °C", tool_call_id="c1"),
        ChatMessage(role="developer", content="Use metric units."),
        ChatMessage(role="critic", content="{\"score\": 3}"),
        ChatMessage(role="tool", content="no call id"),
    ]


# ---- ids, windows, clear ----


def test_an_id_the_session_holds_is_not_stored_again(conv_url: str) -> None:
    s = sid()
    with PraisonChatMessageHistory(s, conv_url) as history:
        history.add_messages([HumanMessage("hi", id="m1"), AIMessage("hello", id="m2")])
        history.add_message(HumanMessage("hi again?", id="m1"))  # a retried add: nothing new, the first one stays
        history.add_messages([HumanMessage("no id"), HumanMessage("no id"), AIMessage("x", id="m3"), AIMessage("y", id="m3")])
        history.add_messages([RemoveMessage(id="m1"), RemoveMessage(id="m1")])  # removals are records: each is kept
        assert [m.content for m in history.messages] == ["hi", "hello", "no id", "no id", "x", "", ""]

        async def again() -> list[BaseMessage]:
            async with PraisonChatMessageHistory(s, conv_url) as other:
                await other.aadd_messages([AIMessage("changed", id="m2")])
                return await other.aget_messages()

        assert [m.content for m in in_loop(again())] == ["hi", "hello", "no id", "no id", "x", "", ""]


@pytest.mark.parametrize("face", ["sync", "async"])
def test_limit_reads_the_newest_messages(conv_url: str, face: str) -> None:
    s = sid()
    turns: list[BaseMessage] = [HumanMessage(f"q{i}") if i % 2 == 0 else AIMessage(f"a{i}") for i in range(30)]
    with PraisonChatMessageHistory(s, conv_url) as writer:
        writer.add_messages(turns)
    window = PraisonChatMessageHistory(s, conv_url, limit=20)
    if face == "sync":
        got = window.messages
        window.close()
    else:

        async def read() -> list[BaseMessage]:
            async with window:
                return await window.aget_messages()

        got = in_loop(read())
    assert got == turns[-20:]
    with PraisonChatMessageHistory(s, conv_url, limit=0) as empty:
        assert empty.messages == []


def test_clear_removes_the_messages_and_keeps_the_session(conv_url: str) -> None:
    s = sid()
    with PraisonChatMessageHistory(s, conv_url, user_id="alice", agent_id="helper") as history:
        assert history.messages == []  # nothing yet: no session either
        history.add_messages([HumanMessage("one"), AIMessage("two")])
        history.clear()
        assert history.messages == []
        history.add_messages([HumanMessage("three")])
        assert history.messages == [HumanMessage("three")]

        async def aclear() -> list[BaseMessage]:
            async with PraisonChatMessageHistory(s, conv_url) as other:
                await other.aclear()
                return await other.aget_messages()

        assert in_loop(aclear()) == []
    with db(conv_url) as store:
        session = store.conversations.get_session(s)
    assert session is not None and (session.user_id, session.agent_id, session.message_count) == ("alice", "helper", 0)


def test_a_refused_batch_stores_nothing(conv_url: str) -> None:
    s = sid()
    history = PraisonChatMessageHistory(s, conv_url)
    history.add_messages([HumanMessage("kept")])
    bad_batches: list[list[BaseMessage]] = [
        [HumanMessage("fine"), ToolMessage("r", tool_call_id="c", artifact=object())],  # not JSON
        [HumanMessage("fine"), HumanMessage("nul \x00 inside")],  # content PostgreSQL cannot hold
        [HumanMessage("fine"), AIMessage("", tool_calls=[{"name": "f", "args": {"x": float("nan")}, "id": "c"}])],
        [HumanMessage("fine"), ChatMessage(role="r" * (MAX_ROLE_LENGTH + 1), content="role too long")],
        [HumanMessage("fine", id="")],
    ]

    async def refused_on_the_async_face() -> list[BaseMessage]:
        for batch in bad_batches:
            with pytest.raises(InputError):
                await history.aadd_messages(batch)
        messages = await history.aget_messages()
        await history.aclose()
        return messages

    for batch in bad_batches:
        with pytest.raises(InputError):
            history.add_messages(batch)
    assert history.messages == [HumanMessage("kept")]
    assert in_loop(refused_on_the_async_face()) == [HumanMessage("kept")]


# ---- generated messages ----

_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=10)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=6,
)
_dict = st.dictionaries(_text, _json, max_size=3)
_content = _text | st.lists(
    _text | st.fixed_dictionaries({"type": st.just("text"), "text": _text}) | st.dictionaries(_text, _json, max_size=3), max_size=3
)
_maybe = st.none() | _text
_ids = st.none() | st.sampled_from(["id-a", "id-b", "id-c"])  # a small pool: repeats test idempotent adds
_common = {"id": _ids, "name": _maybe, "additional_kwargs": _dict, "response_metadata": _dict}
_role = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=MAX_ROLE_LENGTH)
_tool_call = st.fixed_dictionaries({"name": _text, "args": _dict, "id": _maybe})
_invalid_call = st.fixed_dictionaries({"name": _maybe, "args": _maybe, "id": _maybe, "error": _maybe})
_usage = st.none() | st.fixed_dictionaries(
    {"input_tokens": st.integers(0, 10**6), "output_tokens": st.integers(0, 10**6), "total_tokens": st.integers(0, 2 * 10**6)}
)
_chunk = st.fixed_dictionaries({"name": _maybe, "args": _maybe, "id": _maybe, "index": st.none() | st.integers(0, 5)})


def _built(cls: type[BaseMessage], **fields: Any) -> st.SearchStrategy[BaseMessage]:
    return st.builds(cls, content=_content, **_common, **fields)


_ai = {"tool_calls": st.lists(_tool_call, max_size=2), "invalid_tool_calls": st.lists(_invalid_call, max_size=2), "usage_metadata": _usage}
_tool = {"tool_call_id": _text, "artifact": _json, "status": st.sampled_from(["success", "error"])}
lc_messages = st.one_of(
    _built(HumanMessage),
    _built(SystemMessage),
    _built(AIMessage, **_ai),
    _built(ToolMessage, **_tool),
    _built(ChatMessage, role=_role),
    st.builds(FunctionMessage, content=_content, name=_text, id=_ids),
    st.sampled_from(["id-a", "id-b"]).map(lambda target: RemoveMessage(id=target)),
    _built(HumanMessageChunk),
    _built(AIMessageChunk, tool_call_chunks=st.lists(_chunk, max_size=2), usage_metadata=_usage,
           chunk_position=st.none() | st.just("last")),
    _built(ToolMessageChunk, **_tool),
    _built(ChatMessageChunk, role=_role),
)

GENERATED = settings(
    max_examples=int(os.environ.get("PRAISON_FUZZ_EXAMPLES", "30")),
    deadline=None,
    derandomize=os.environ.get("CI", "").lower() == "true",
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _first_of_each_id(batches: list[list[BaseMessage]]) -> list[BaseMessage]:
    """What the session holds after adding ``batches``: a message whose id is already held is not stored again (a
    RemoveMessage's id names its target, not itself: it is always stored)."""
    seen: set[str] = set()
    kept = []
    for m in (m for batch in batches for m in batch):
        if m.id is not None and not isinstance(m, RemoveMessage):
            if m.id in seen:
                continue
            seen.add(m.id)
        kept.append(m)
    return kept


@pytest.fixture
def both_faces(conv_url: str) -> Iterator[tuple[Any, Any, asyncio.AbstractEventLoop]]:
    """A sync store and an async one on the same data, the async one on a loop this test drives."""
    loop = asyncio.new_event_loop()
    sync = open_store(conv_url, "conversations")
    if "memory" in conv_url:  # one process-local store: the async face runs it in threads
        astore = aio.wrap(sync)
    else:
        astore = loop.run_until_complete(aio.open_store(conv_url, "conversations"))
    yield sync, astore, loop
    loop.run_until_complete(astore.aclose())
    sync.close()
    loop.close()


@GENERATED
@given(batches=st.lists(st.lists(lc_messages, min_size=1, max_size=4), min_size=1, max_size=3), write=st.sampled_from(["sync", "async"]))
def test_generated_messages_round_trip_on_both_faces(both_faces: Any, batches: list[list[BaseMessage]], write: str) -> None:
    sync, astore, loop = both_faces
    s = sid()
    writer = PraisonChatMessageHistory(s, sync if write == "sync" else astore)
    for batch in batches:
        if write == "sync":
            writer.add_messages(batch)
        else:
            loop.run_until_complete(writer.aadd_messages(batch))
    expected = _first_of_each_id(batches)
    assert exact(PraisonChatMessageHistory(s, sync).messages, expected)
    assert exact(loop.run_until_complete(PraisonChatMessageHistory(s, astore).aget_messages()), expected)


# ---- RunnableWithMessageHistory over a restart ----


def test_runnable_with_message_history_continues_after_a_restart(conv_url: str) -> None:
    s = sid()
    with db(conv_url) as probe:
        caps = probe.conversations.capabilities
    if caps.persistent and caps.multi_process:
        # The first turn in a process of its own, which then exits: only the store remembers it.
        done = subprocess.run(
            [sys.executable, "-m", "tests.integrations.langchain_turns", conv_url, s],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    else:  # memory:// and chDB live in this process: a new history object on fresh stores is the restart
        Chat(conv_url, 0).ask(s, QUESTIONS[0])

    chat = Chat(conv_url, 1)
    answer = in_loop(chat.aask(s, QUESTIONS[1]))  # the async path this time
    assert answer == ANSWERS[1]
    first = [HumanMessage(QUESTIONS[0]), ANSWERS[0]]
    assert exact(chat.seen.calls[0], [SystemMessage(SYSTEM), *first, HumanMessage(QUESTIONS[1])])
    with PraisonChatMessageHistory(s, conv_url) as history:
        assert exact(history.messages, [*first, HumanMessage(QUESTIONS[1]), ANSWERS[1]])

    third = Chat(conv_url, 0)  # and the sync path again: the answer's id is stored already, so it is not doubled
    third.ask(s, "Again?")
    assert len(third.seen.calls[0]) == 1 + 4 + 1
    with PraisonChatMessageHistory(s, conv_url) as history:
        assert [m.content for m in history.messages][-1] == "Again?"


# ---- db objects, faces and lifecycle (memory and SQLite) ----


def _local_url(kind: str, tmp_path: Path) -> str:
    return f"memory://lc{uuid.uuid4().hex[:8]}" if kind == "memory" else f"sqlite:///{tmp_path}/lc.db"


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_sync_db_serves_both_faces_and_stays_open(kind: str, tmp_path: Path) -> None:
    store = db(_local_url(kind, tmp_path), session_dir=tmp_path / "home")
    history = PraisonChatMessageHistory("s", store)
    history.add_messages([HumanMessage("sync")])
    in_loop(history.aadd_messages([AIMessage("async, in a worker thread")]))
    assert in_loop(history.aget_messages()) == [HumanMessage("sync"), AIMessage("async, in a worker thread")]
    history.close()
    in_loop(history.aclose())
    assert store.conversations.count_messages("s") == 2  # the history did not close what it was given
    store.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgresql"])
def test_an_async_db_serves_the_sync_face_from_another_thread(kind: str, tmp_path: Path, make_url: Any) -> None:
    url = make_url(POSTGRESQL) if kind == "postgresql" else _local_url(kind, tmp_path)
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()

    def on_loop(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    async def opened() -> Any:
        return await aio.db(url, session_dir=tmp_path / "home")

    store = on_loop(opened())

    async def make() -> PraisonChatMessageHistory:  # made in async code, where the loop is known
        return PraisonChatMessageHistory("s", store)

    history = on_loop(make())
    try:
        on_loop(history.aadd_messages([HumanMessage("async")]))
        history.add_messages([AIMessage("sync, from this thread")])  # PostgreSQL: runs on the store's loop
        assert history.messages == [HumanMessage("async"), AIMessage("sync, from this thread")]

        async def sync_inside_the_loop() -> None:
            history.messages  # noqa: B018 - a blocking read on the loop's own thread

        if kind == "postgresql":
            with pytest.raises(ConfigError, match="await"):
                on_loop(sync_inside_the_loop())
        else:  # a store that runs in worker threads serves a blocking call from the loop's own thread too
            on_loop(sync_inside_the_loop())
        on_loop(history.aclose())
        assert on_loop(store.conversations.count_messages("s")) == 2  # not closed: it is the caller's
    finally:
        on_loop(store.aclose())
        loop.call_soon_threadsafe(loop.stop)
        runner.join()
        loop.close()


def test_an_unopened_async_db_is_opened_by_the_async_face(tmp_path: Path) -> None:
    store = aio.db(f"sqlite:///{tmp_path}/lc.db", session_dir=tmp_path / "home")
    history = PraisonChatMessageHistory("s", store)
    with pytest.raises(ConfigError, match="not open yet"):
        history.messages  # noqa: B018

    async def use() -> list[BaseMessage]:
        await history.aadd_messages([HumanMessage("hi")])
        messages = await history.aget_messages()
        await store.aclose()
        return messages

    assert in_loop(use()) == [HumanMessage("hi")]


def test_lifecycle_of_what_the_history_opened(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/lc.db"
    history = PraisonChatMessageHistory("s", url)
    history.add_messages([HumanMessage("one")])
    history.close()
    history.close()  # idempotent
    with pytest.raises(StoreClosed):
        history.add_messages([HumanMessage("two")])

    both = PraisonChatMessageHistory("s", url)
    assert both.messages == [HumanMessage("one")]
    assert in_loop(both.aget_messages()) == [HumanMessage("one")]  # opens an async store (aiosqlite) too
    with pytest.raises(ConfigError, match="aclose"):
        both.close()  # a sync close cannot close the async store: it says so and closes nothing
    assert both.messages == [HumanMessage("one")]
    in_loop(both.aclose())
    with pytest.raises(StoreClosed):
        both.messages  # noqa: B018
    both.close()  # everything is closed already: nothing left to refuse


def test_an_async_store_belongs_to_its_event_loop(make_url: Any) -> None:
    history = PraisonChatMessageHistory("s", make_url(POSTGRESQL))
    first = asyncio.new_event_loop()
    try:
        first.run_until_complete(history.aadd_messages([HumanMessage("first loop")]))
        with pytest.raises(ConfigError, match="another event loop"):
            in_loop(history.aget_messages())
        assert first.run_until_complete(history.aget_messages()) == [HumanMessage("first loop")]
        first.run_until_complete(history.aclose())
    finally:
        first.close()


def test_arguments_are_checked_when_the_history_is_made(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        PraisonChatMessageHistory("", "memory://")
    with pytest.raises(InputError):
        PraisonChatMessageHistory("s", "memory://", limit=-1)
    with pytest.raises(InputError):
        PraisonChatMessageHistory("s", "memory://", user_id="")
    with pytest.raises(ConfigError, match="URL"):
        PraisonChatMessageHistory("s", 42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="nosuch"):
        PraisonChatMessageHistory("s", "nosuch://x")
    with pytest.raises(ConfigError, match="options"):
        PraisonChatMessageHistory("s", db("memory://", session_dir=tmp_path), table_prefix="x_")
    with pytest.raises(InputError, match="a list of messages"):
        PraisonChatMessageHistory("s", "memory://").add_messages(HumanMessage("one"))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="LangChain's message classes"):
        PraisonChatMessageHistory("s", "memory://").add_messages([{"role": "user", "content": "a dict"}])  # type: ignore[list-item]
    with pytest.raises(InputError, match="LangChain's message classes"):

        class Custom(HumanMessage):
            pass

        PraisonChatMessageHistory("s", "memory://").add_messages([Custom("hi")])


def test_no_db_uses_the_database_url_or_the_default_json_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRAISON_HOME", str(tmp_path / "home"))
    for name in ("PRAISON_DATABASE_URL", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    with PraisonChatMessageHistory("s") as history:
        history.add_messages([HumanMessage("in the default store")])
    with db(session_dir=tmp_path / "home" / "sessions") as store:
        assert store.conversations.get_history("s") == [{"role": "user", "content": "in the default store"}]
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/env.db")
    with PraisonChatMessageHistory("s") as history:
        history.add_messages([HumanMessage("in DATABASE_URL")])
    with db(f"sqlite:///{tmp_path}/env.db", session_dir=tmp_path) as store:
        assert store.conversations.count_messages("s") == 1


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_one_async_db_shared_by_the_histories_a_runnable_makes(kind: str, tmp_path: Path) -> None:
    """The documented pattern for async code: open the db once; RunnableWithMessageHistory makes a history per call."""
    from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
    from langchain_core.runnables.history import RunnableWithMessageHistory

    async def two_turns() -> list[BaseMessage]:
        async with aio.db(_local_url(kind, tmp_path), session_dir=tmp_path / "home") as store:
            model = FakeMessagesListChatModel(responses=[AIMessage("one", id="r1"), AIMessage("two", id="r2")])
            chain = RunnableWithMessageHistory(model, lambda session_id: PraisonChatMessageHistory(session_id, store, limit=50))
            config: Any = {"configurable": {"session_id": "s"}}
            await chain.ainvoke([HumanMessage("first")], config)
            await chain.ainvoke([HumanMessage("second")], config)
            return await PraisonChatMessageHistory("s", store).aget_messages()

    assert in_loop(two_turns()) == [HumanMessage("first"), AIMessage("one", id="r1"), HumanMessage("second"), AIMessage("two", id="r2")]
