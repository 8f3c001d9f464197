"""PraisonSession on every backend: the OpenAI Agents SDK's items come back exactly (every Responses API shape, types
of JSON numbers, items sharing an id, items with neither role nor type), ``get_items(limit)`` is the newest window,
``pop_item`` and ``clear_session`` remove what they say, and a real ``Runner.run`` with a scripted model (tools, a
handoff, a rewind) picks its conversation up after a restart. On a URL, on ``praison_db.db(...)`` and on
``praison_db.aio.db(...)`` (the native async drivers).

Tests taking ``conv_url`` run once per backend of tests/backends.py (praison_db.testing.plugin).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from agents import Agent, RunConfig, Runner, SessionSettings, function_tool, set_tracing_disabled
from agents.memory import Session
from agents.testing import ScriptedModel, assistant_message, function_call
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.responses import ResponseReasoningItem
from openai.types.responses.response_reasoning_item import Summary

from praison_db import ConfigError, InputError, StoreClosed, aio, db
from praison_db.facade import open_store
from praison_db.integrations.openai_agents import RAW_ITEM_TYPE, PraisonSession
from praison_db.testing import require
from praison_db.testing.suite.test_numbers import same
from praison_db.testing.workers import run_workers
from tests.integrations import openai_agents_workers

set_tracing_disabled(True)  # the SDK would otherwise send its traces to OpenAI whenever a key is set

# Items as the Responses API and the Agents SDK write them, one of each shape a session holds.
ITEMS: list[dict[str, Any]] = [
    {"role": "developer", "content": "Answer in French."},
    {"role": "user", "content": "Quelle heure est-il ? 🙂"},
    {"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "What is in this image?"},
        {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "auto"},
    ]},
    {"id": "rs_01", "type": "reasoning", "summary": [{"type": "summary_text", "text": "Look it up."}], "encrypted_content": "gAAA"},
    {"arguments": "{\"city\":\"Paris\"}", "call_id": "call_1", "id": "fc_01", "type": "function_call", "name": "weather",
     "status": "completed"},
    {"call_id": "call_1", "output": "{\"temp\": 21.5, \"rain\": false, \"hours\": [1, 2.0]}", "type": "function_call_output"},
    {"id": "msg_01", "status": "completed", "type": "message", "role": "assistant", "content": [
        {"annotations": [], "text": "Il fait 21,5 °C.", "type": "output_text", "logprobs": []},
    ]},
    {"id": "msg_02", "type": "message", "role": "assistant", "status": "completed",
     "content": [{"type": "refusal", "refusal": "I cannot help with that."}]},
    {"type": "item_reference", "id": "msg_00"},
    {"type": "compaction", "id": "cmp_1", "encrypted_content": "summary"},
    # Models served over Chat Completions answer every item with this id: each is a separate item all the same.
    {"id": "__fake_id__", "type": "message", "role": "assistant", "status": "completed",
     "content": [{"annotations": [], "text": "one", "type": "output_text"}]},
    {"id": "__fake_id__", "type": "message", "role": "assistant", "status": "completed",
     "content": [{"annotations": [], "text": "one", "type": "output_text"}]},
    # EncryptedSession's envelope: neither a role nor a type.
    {"__enc__": 1, "v": 1, "kid": "hkdf-v1", "payload": "gAAAAABo"},
    # An explicit null in a message field, a number as a name: kept as written.
    {"role": "assistant", "content": None, "name": None, "refusal": None},
    {"type": "custom", "name": 7, "content": {"score": 0.5, "big": 2**62, "zero": -0.0}},
]


def sid() -> str:
    return "oa-" + uuid.uuid4().hex[:12]


@contextlib.asynccontextmanager
async def session_on(source: str, url: str, options: dict[str, Any], session_id: str | None = None,
                     **kwargs: Any) -> AsyncIterator[PraisonSession]:
    """A PraisonSession on ``url``, given as the URL itself, a sync ``db(...)`` or an opened ``aio.db(...)``."""
    session_id = session_id or sid()
    if source == "url":
        session = PraisonSession(session_id, url, **options, **kwargs)
        try:
            yield session
        finally:
            await session.aclose()
    elif source == "db":
        with db(url, **options) as store:
            session = PraisonSession(session_id, store, **kwargs)
            yield session
            session.close()
            assert not store.closed  # a store the caller passed stays open
    else:
        async with aio.db(url, **options) as store:
            session = PraisonSession(session_id, store, **kwargs)
            yield session
            await session.aclose()
            assert not store.conversations.closed


SOURCES = ["url", "db", "aio"]


@pytest.mark.parametrize("source", SOURCES)
def test_items_come_back_exactly(conv_url: str, conv_backend: Any, source: str) -> None:
    async def main() -> None:
        async with session_on(source, conv_url, conv_backend.options) as session:
            assert isinstance(session, Session)  # the SDK's runtime-checkable protocol
            assert await session.get_items() == []  # before the session exists
            await session.add_items(ITEMS[:5])
            await session.add_items(ITEMS[5:])
            assert same(await session.get_items(), ITEMS)
            assert same(await session.get_items(limit=3), ITEMS[-3:])
            assert same(await session.get_items(limit=len(ITEMS) + 5), ITEMS)
            assert await session.get_items(limit=0) == []
            assert same(await session.get_items(limit=-1), ITEMS)  # as the SDK's SQLiteSession: all of them
            await session.add_items([])
            assert len(await session.get_items()) == len(ITEMS)

            # praison_db's own reads see the same conversation: one message per item, numbered in order.
            reader = open_store(conv_url, "conversations", **conv_backend.options)
            try:
                messages = reader.get_messages(session.session_id)
                assert [m.seq for m in messages] == list(range(1, len(ITEMS) + 1))
                call = messages[4]
                assert (call.type, call.role, call.name, call.extra["call_id"]) == ("function_call", None, "weather", "call_1")
                assert messages[0].to_openai() == {"role": "developer", "content": "Answer in French."}
                assert messages[12].type == RAW_ITEM_TYPE and messages[12].content == ITEMS[12]
                assert len({m.id for m in messages}) == len(ITEMS)  # the two "__fake_id__" items are two messages
            finally:
                reader.close()

    asyncio.run(main())


def test_session_settings_limit_is_the_default_window(conv_url: str, conv_backend: Any) -> None:
    async def main() -> None:
        async with session_on("url", conv_url, conv_backend.options, session_settings={"limit": 2}) as session:
            assert session.session_settings == SessionSettings(limit=2)
            await session.add_items([{"role": "user", "content": f"m{i}"} for i in range(5)])
            assert [i["content"] for i in await session.get_items()] == ["m3", "m4"]
            assert [i["content"] for i in await session.get_items(limit=4)] == ["m1", "m2", "m3", "m4"]

    asyncio.run(main())


@pytest.mark.parametrize("source", SOURCES)
def test_pop_item_and_clear_session(conv_url: str, conv_backend: Any, source: str) -> None:
    async def main() -> None:
        async with session_on(source, conv_url, conv_backend.options) as session, \
                session_on(source, conv_url, conv_backend.options) as other:
            assert await session.pop_item() is None  # no session yet
            await session.clear_session()  # nor is this an error
            await other.add_items([{"role": "user", "content": "elsewhere"}])
            await session.add_items(ITEMS)
            assert same(await session.pop_item(), ITEMS[-1])
            assert same(await session.pop_item(), ITEMS[-2])
            assert same(await session.get_items(), ITEMS[:-2])
            await session.add_items([ITEMS[-1]])  # takes the freed place
            assert same(await session.get_items(limit=2), [ITEMS[-3], ITEMS[-1]])

            await session.clear_session()
            assert await session.get_items() == []
            assert await session.pop_item() is None
            await session.add_items([{"role": "user", "content": "again"}])
            assert await session.get_items() == [{"role": "user", "content": "again"}]
            assert await other.get_items() == [{"role": "user", "content": "elsewhere"}]

            reader = open_store(conv_url, "conversations", **conv_backend.options)
            try:  # clear_session keeps the praison session; numbering starts over
                assert [m.seq for m in reader.get_messages(session.session_id)] == [1]
                assert reader.get_session(session.session_id) is not None
            finally:
                reader.close()

    asyncio.run(main())


@function_tool
def lookup_invoice(month: str) -> str:
    """The invoice total of a month."""
    return json.dumps({"month": month, "total": 42.5, "currency": "EUR"})


def _agents(model: ScriptedModel) -> tuple[Agent[Any], Agent[Any]]:
    billing = Agent(name="billing", instructions="Answer billing questions.", model=model, tools=[lookup_invoice])
    triage = Agent(name="triage", instructions="Hand billing questions over.", model=model, handoffs=[billing])
    return triage, billing


def _reasoning(text: str) -> ResponseReasoningItem:
    return ResponseReasoningItem(id="rs_" + text[:4], type="reasoning", summary=[Summary(text=text, type="summary_text")])


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


@pytest.mark.parametrize("source", SOURCES)
def test_a_run_with_a_handoff_and_a_rewind_resumes_after_a_restart(conv_url: str, conv_backend: Any, source: str) -> None:
    session_id = sid()

    async def first_process() -> list[dict[str, Any]]:
        model = ScriptedModel()
        triage, billing = _agents(model)
        async with session_on(source, conv_url, conv_backend.options, session_id) as session:
            # Turn 1: triage hands over to billing, which reasons, calls its tool and answers.
            model.enqueue([function_call("transfer_to_billing", {}, call_id="call_h")])
            model.enqueue([_reasoning("Look the invoice up"), function_call("lookup_invoice", {"month": "May"}, call_id="call_m")])
            model.enqueue([assistant_message("Your May invoice is 42.50 EUR.")])
            result = await Runner.run(triage, "What is my May invoice?", session=session)
            assert result.final_output == "Your May invoice is 42.50 EUR." and result.last_agent is billing
            history = await session.get_items()
            assert same(history, result.to_input_list())
            assert [i.get("type") for i in history] == [
                None, "function_call", "function_call_output", "reasoning", "function_call", "function_call_output", "message"
            ]
            assert json.loads(history[5]["output"]) == {"month": "May", "total": 42.5, "currency": "EUR"}

            # Turn 2, with the wrong month; the model is given the whole history plus the question.
            model.enqueue([assistant_message("Your April invoice is 40.00 EUR.")])
            await Runner.run(billing, "And April?", session=session)
            assert same(model.calls[-1].input, history + [_user("And April?")])

            # Rewind turn 2 (the answer, then the question) and ask again.
            answer = (await session.get_items(limit=1))[0]
            assert answer["content"][0]["text"] == "Your April invoice is 40.00 EUR."
            assert same(await session.pop_item(), answer)
            assert (await session.pop_item()) == _user("And April?")
            assert same(await session.get_items(), history)
            model.enqueue([assistant_message("Your June invoice is 45.00 EUR.")])
            await Runner.run(billing, "And June?", session=session)
            assert same(model.calls[-1].input, history + [_user("And June?")])
            return await session.get_items()

    async def after_a_restart(expected: list[dict[str, Any]]) -> None:
        model = ScriptedModel()
        _, billing = _agents(model)
        async with session_on(source, conv_url, conv_backend.options, session_id) as session:
            assert same(await session.get_items(), expected)
            model.enqueue([assistant_message("You asked about May and June.")])
            result = await Runner.run(billing, "What did I ask about?", session=session)
            assert same(model.calls[0].input, expected + [_user("What did I ask about?")])
            assert result.final_output == "You asked about May and June."
            assert len(await session.get_items()) == len(expected) + 2

    stored = asyncio.run(first_process())
    assert [i.get("content") for i in stored if i.get("role") == "user"] == ["What is my May invoice?", "And June?"]
    asyncio.run(after_a_restart(stored))


def test_run_sync_and_threads_each_with_their_own_loop(conv_url: str, conv_backend: Any) -> None:
    """A URL session is not tied to the loop it first ran on: Runner.run_sync makes a loop of its own each time."""
    model = ScriptedModel()
    _, billing = _agents(model)
    session = PraisonSession(sid(), conv_url, **conv_backend.options)
    try:
        model.enqueue([assistant_message("first")])
        Runner.run_sync(billing, "one", session=session)
        model.enqueue([assistant_message("second")])
        Runner.run_sync(billing, "two", session=session)
        assert len(model.calls[-1].input) == 3

        def add(worker: int) -> None:
            asyncio.run(session.add_items([_user(f"w{worker}-{i}") for i in range(3)]))

        threads = [threading.Thread(target=add, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        items = asyncio.run(session.get_items())
        assert len(items) == 4 + 12
        added = [i["content"] for i in items[4:]]
        assert sorted(added) == sorted(f"w{w}-{i}" for w in range(4) for i in range(3))
        for w in range(4):  # each batch is stored in order
            mine = [text for text in added if text.startswith(f"w{w}-")]
            assert mine == [f"w{w}-{i}" for i in range(3)]
    finally:
        session.close()


def test_history_written_through_praison_db_is_the_runs_history(conv_url: str, conv_backend: Any) -> None:
    """A conversation praison_db's own API (or the Agent) wrote, chat messages with a role and text, is what the SDK
    continues: each message is an item {"role", "content"} (plus its tool fields)."""
    session_id = sid()
    with db(conv_url, **conv_backend.options) as store:
        store.conversations.create_session(session_id, user_id="alice")
        store.conversations.add_message(session_id, "system", "Be brief.")
        store.conversations.add_message(session_id, "user", "My name is Alice.")
        store.conversations.add_message(session_id, "assistant", "Hello Alice!")
        model = ScriptedModel([[assistant_message("Alice.")]])
        _, billing = _agents(model)
        session = PraisonSession(session_id, store, user_id="bob")
        Runner.run_sync(billing, "What is my name?", session=session)
        assert model.calls[0].input == [
            {"role": "system", "content": "Be brief."},
            _user("My name is Alice."),
            {"role": "assistant", "content": "Hello Alice!"},
            _user("What is my name?"),
        ]
        assert store.conversations.count_messages(session_id) == 5
        assert store.conversations.get_session(session_id).user_id == "alice"  # an existing session is not changed


def test_the_first_items_from_many_processes_go_to_one_session(conv_url: str, conv_backend: Any) -> None:
    with contextlib.closing(open_store(conv_url, "conversations", **conv_backend.options)) as store:
        require(store, "multi_process")
        session_id, workers, each = sid(), 4, 5
        run_workers(openai_agents_workers.add_items, [(conv_url, conv_backend.options, session_id, w, each) for w in range(workers)])
        messages = store.get_messages(session_id)
        assert [m.seq for m in messages] == list(range(1, workers * each + 1))
        assert sorted(m.content for m in messages) == sorted(f"w{w}-{i}" for w in range(workers) for i in range(each))
        assert store.get_session(session_id).user_id == "racer"
        assert store.list_sessions(user_id="racer").items[0].message_count == workers * each


@pytest.mark.parametrize("source", ["url", "aio"])
def test_a_cancelled_add_items_is_stored_whole_or_not_at_all(conv_url: str, conv_backend: Any, source: str) -> None:
    batch = [_user(f"part {i} " + "x" * 2000) for i in range(50)]

    async def main() -> None:
        async with session_on(source, conv_url, conv_backend.options) as session:
            await session.add_items([_user("before")])
            for steps in range(4):  # cancelled after 0, 1, 2, 3 turns of the loop
                task = asyncio.create_task(session.add_items(batch))
                for _ in range(steps):
                    await asyncio.sleep(0)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                count = len(await session.get_items())
                assert (count - 1) % len(batch) == 0, count  # the outcome is known when CancelledError arrives
            assert (await session.get_items(limit=1))[0]["content"].startswith(("part 49", "before"))

    asyncio.run(main())


# ---- open-ended items ----

_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=10)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_names = st.sampled_from(["message", "function_call", "reasoning", RAW_ITEM_TYPE, "x" * 65, ""]) | _text
_items = st.dictionaries(
    st.sampled_from(["role", "type", "content", "id", "name", "tool_calls", "tool_call_id", "metadata", "status"]) | _text,
    _json,
    max_size=6,
).flatmap(lambda base: st.fixed_dictionaries(
    {},
    optional={"role": st.none() | _names, "type": st.none() | _names, "content": _json, "id": st.sampled_from(["fc_1", "__fake_id__"])},
).map(lambda fields: {**base, **fields}))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(items=st.lists(_items, min_size=1, max_size=4))
def test_any_json_item_comes_back_exactly(conv_url: str, conv_backend: Any, items: list[dict[str, Any]]) -> None:
    async def main() -> None:
        async with session_on("url", conv_url, conv_backend.options) as session:
            await session.add_items(items)
            await session.add_items(items)  # the same items again: kept twice
            assert same(await session.get_items(), items + items)
            assert same(await session.pop_item(), items[-1])

    asyncio.run(main())


# ---- arguments, errors, lifecycle ----


def test_bad_arguments_are_refused_with_what_to_do(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/a.db"
    with pytest.raises(InputError, match="session_id"):
        PraisonSession("", url)
    with pytest.raises(InputError, match="user_id"):
        PraisonSession("s", url, user_id="")
    with pytest.raises(ConfigError, match="db must be"):
        PraisonSession("s", 42)  # type: ignore[arg-type]
    with db("memory://") as store, pytest.raises(ConfigError, match="apply to a URL"):
        PraisonSession("s", store, table_prefix="x_")
    with pytest.raises(TypeError, match="limitt"):  # the SDK's own check of its settings
        PraisonSession("s", url, session_settings={"limitt": 1})

    async def main() -> None:
        with pytest.raises(ConfigError, match="nosuch"):
            await PraisonSession("s", "nosuch://x").get_items()
        session = PraisonSession("s", url)
        await session.add_items([_user("kept")])
        for bad in ([_user("fine"), {"role": "user", "content": object()}], [_user("fine"), 5], "text", {"role": "user"}):
            with pytest.raises(InputError):
                await session.add_items(bad)  # type: ignore[arg-type]
        assert await session.get_items() == [_user("kept")]  # nothing of a refused batch was stored
        assert repr(session) == f"<PraisonSession 's' on sqlite:///{tmp_path}/a.db>"
        await session.aclose()

    asyncio.run(main())


def test_a_password_never_shows(tmp_path: Any) -> None:
    session = PraisonSession("s", "postgresql://ai:s3cret@127.0.0.1:1/ai")
    assert "s3cret" not in repr(session) and "***" in repr(session)


def test_after_close_every_call_raises_store_closed(tmp_path: Any) -> None:
    async def main() -> None:
        session = PraisonSession("s", f"sqlite:///{tmp_path}/a.db")
        await session.add_items([_user("x")])
        await asyncio.gather(session.aclose(), session.aclose())
        session.close()  # idempotent
        for call in (session.get_items(), session.add_items([]), session.pop_item(), session.clear_session()):
            with pytest.raises(StoreClosed, match="PraisonSession is closed") as raised:
                await call
            assert isinstance(raised.value, RuntimeError)  # what the SDK's sessions raise after close
        never_used = PraisonSession("t", f"sqlite:///{tmp_path}/b.db")
        never_used.close()
        with pytest.raises(StoreClosed):
            await never_used.get_items()
        async with PraisonSession("u", f"sqlite:///{tmp_path}/a.db") as again:
            assert await again.get_items() == []
        with pytest.raises(StoreClosed):
            await again.get_items()

    asyncio.run(main())


def test_the_default_store_is_praison_db_s(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("PRAISON_DATABASE_URL", f"sqlite:///{tmp_path}/env.db")
    session = PraisonSession("env")
    asyncio.run(session.add_items([_user("to the environment's database")]))
    session.close()
    with contextlib.closing(open_store(f"sqlite:///{tmp_path}/env.db", "conversations")) as store:
        assert store.count_messages("env") == 1
    monkeypatch.delenv("PRAISON_DATABASE_URL")
    monkeypatch.setenv("PRAISON_HOME", str(tmp_path / "home"))
    session = PraisonSession("files")
    asyncio.run(session.add_items([_user("to the JSON session files")]))
    session.close()
    assert any((tmp_path / "home" / "sessions").iterdir())


def test_runconfig_session_settings_override(tmp_path: Any) -> None:
    async def main() -> None:
        async with PraisonSession("s", f"sqlite:///{tmp_path}/a.db", session_settings=SessionSettings(limit=50)) as session:
            await session.add_items([_user(f"turn {i}") for i in range(10)])
            model = ScriptedModel([[assistant_message("ok")]])
            _, billing = _agents(model)
            await Runner.run(billing, "new", session=session, run_config=RunConfig(session_settings=SessionSettings(limit=2)))
            assert model.calls[0].input == [_user("turn 8"), _user("turn 9"), _user("new")]

    asyncio.run(main())


def test_every_kind_of_store_can_be_passed_and_stays_open(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/kinds.db"

    async def main() -> None:
        with db(url) as sync_db:
            unopened = aio.db(url)  # opened by the session's first call, closed by its owner
            async with aio.db(url) as async_db:
                stores = [sync_db, sync_db.conversations, unopened, async_db, async_db.conversations]
                for n, store in enumerate(stores):
                    session = PraisonSession("kinds", store)
                    await session.add_items([_user(f"through store {n}")])
                    assert (await session.get_items())[-1] == _user(f"through store {n}")
                    await session.aclose()
                    with pytest.raises(StoreClosed):
                        await session.get_items()
                assert not sync_db.closed and not async_db.closed and not unopened.closed
                assert await async_db.conversations.count_messages("kinds") == len(stores)
            await unopened.aclose()

    asyncio.run(main())
