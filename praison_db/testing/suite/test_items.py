"""The open message model and removing messages, on every backend.

A message holds any item a framework produces (an OpenAI chat message, a Responses API item, a custom role's turn)
and ``to_item()`` gives it back deep-equal, types included. ``pop_message``, ``truncate`` and ``clear_messages``
remove the newest messages atomically and the numbering continues from what is left.
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from praison_db import Error, InputError
from praison_db.models import MAX_ROLE_LENGTH, MESSAGE_FIELDS
from praison_db.testing import require
from praison_db.testing.suite.test_numbers import same
from praison_db.testing.workers import pop_many, run_workers

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


def sid() -> str:
    return "s-" + uuid.uuid4().hex[:12]


# Items as the OpenAI Responses API and Agents SDK produce them, and chat messages beyond the four classic roles.
REAL_ITEMS: list[dict[str, Any]] = [
    {"role": "developer", "content": "Answer in French."},
    {"role": "user", "content": [{"type": "input_text", "text": "What is in this image?"}, {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "auto"}]},
    {"id": "rs_01", "type": "reasoning", "summary": [{"type": "summary_text", "text": "Look it up."}], "encrypted_content": None},
    {"type": "function_call", "id": "fc_01", "call_id": "call_1", "name": "lookup", "arguments": "{\"q\": \"Paris\"}", "status": "completed"},
    {"type": "function_call_output", "call_id": "call_1", "output": "{\"temp\": 21.5}"},
    {"id": "msg_01", "type": "message", "role": "assistant", "status": "completed", "content": [{"type": "output_text", "text": "Il fait 21,5 °C.", "annotations": [], "logprobs": []}]},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "call_2", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "call_2", "content": "ok"},
    {"role": "critic", "content": {"score": 3, "notes": ["short", "polite"]}, "name": "reviewer", "metadata": {"run": 7}},
    {"type": "compaction_marker", "content": 0, "dropped": 12},
]


def _items(messages: list[Any]) -> list[dict[str, Any]]:
    return [m.to_item() for m in messages]


def test_real_items_come_back_exactly_on_every_read(conv):
    s = sid()
    conv.create_session(s)
    stored = conv.add_messages(s, REAL_ITEMS)
    assert [m.seq for m in stored] == list(range(1, len(REAL_ITEMS) + 1))
    assert same(_items(stored), REAL_ITEMS)
    assert same(_items(conv.get_messages(s)), REAL_ITEMS)
    assert same(_items(conv.get_messages(s, limit=4)), REAL_ITEMS[-4:])
    assert same(_items(conv.get_messages(s, after_seq=2, before_seq=5)), REAL_ITEMS[2:4])
    assert same(_items(list(conv.iter_messages(s, batch_size=3))), REAL_ITEMS)
    # Items that carried an id are stored under it; the others got one, which to_item() does not add.
    assert [m.id for m in stored][2:4] == ["rs_01", "fc_01"]
    assert all(m.id for m in stored) and len({m.id for m in stored}) == len(stored)


def test_fields_of_typed_items_are_model_fields(conv):
    s = sid()
    conv.create_session(s)
    call, output, answer = conv.add_messages(s, REAL_ITEMS[3:6])
    assert (call.type, call.role, call.content, call.name) == ("function_call", None, None, "lookup")
    assert call.extra == {"id": "fc_01", "call_id": "call_1", "arguments": "{\"q\": \"Paris\"}", "status": "completed"}
    assert (output.type, output.extra["output"]) == ("function_call_output", "{\"temp\": 21.5}")
    assert answer.role == "assistant" and answer.content[0]["text"] == "Il fait 21,5 °C."


def test_export_import_keeps_items_exactly(conv):
    s, t = sid(), sid()
    conv.create_session(s)
    conv.add_messages(s, REAL_ITEMS)
    data = conv.export_session(s)
    data["session"]["session_id"] = t
    for m in data["messages"]:
        m["session_id"] = t
    conv.import_session(data)
    assert same(_items(conv.get_messages(t)), REAL_ITEMS)


def test_get_history_gives_only_what_a_chat_model_takes(conv):
    s = sid()
    conv.create_session(s)
    conv.add_messages(s, REAL_ITEMS)
    history = conv.get_history(s)
    assert [h["role"] for h in history] == ["developer", "user", "assistant", "assistant", "tool"]
    assert history[1]["content"][0] == {"type": "text", "text": "What is in this image?"}
    assert history[2] == {"role": "assistant", "content": [{"type": "text", "text": "Il fait 21,5 °C."}]}
    assert history[3]["tool_calls"][0]["id"] == "call_2"


def test_keyword_api_takes_type_and_extra(conv):
    s = sid()
    conv.create_session(s)
    m = conv.add_message(s, None, None, type="function_call_output", extra={"call_id": "c", "output": [1, 2.5, None]})
    back = conv.get_messages(s)[0]
    assert back == m
    assert same(back.to_item(), {"type": "function_call_output", "call_id": "c", "output": [1, 2.5, None]})


@pytest.mark.parametrize(
    "item",
    [
        {"content": "no role and no type"},
        {"role": "", "content": "x"},
        {"role": "r" * (MAX_ROLE_LENGTH + 1), "content": "x"},
        {"role": "a\x00b", "content": "x"},
        {"role": 3, "content": "x"},
        {"type": "", "content": "x"},
        {"type": ["message"], "content": "x"},
        {"role": "user", "content": {"n": float("nan")}},
        {"role": "user", "content": {1: "int key"}},
        {"role": "user", "content": "x", "id": 42},
        {"role": "user", "content": b"bytes"},
    ],
)
def test_bad_items_are_input_errors_and_store_nothing(conv, item):
    s = sid()
    conv.create_session(s)
    conv.add_message(s, "user", "kept")
    with pytest.raises(InputError):
        conv.add_messages(s, [{"role": "user", "content": "first of the batch"}, item])
    assert [m.content for m in conv.get_messages(s)] == ["kept"]


def test_extra_cannot_shadow_a_message_field(conv):
    s = sid()
    conv.create_session(s)
    with pytest.raises(InputError, match="extra"):
        conv.add_message(s, "user", "x", extra={"role": "system"})
    assert conv.count_messages(s) == 0


# ---- items of any shape: generated ----

_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_name = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=MAX_ROLE_LENGTH)
_extra = st.dictionaries(_text.filter(lambda k: k not in MESSAGE_FIELDS), _json, max_size=3)


@st.composite
def items(draw: Any) -> dict[str, Any]:
    """An item as to_item() gives it back: a role or a type (or both); content present whenever there is a role."""
    item: dict[str, Any] = dict(draw(_extra))
    role = draw(st.none() | _name)
    kind = draw(_name) if role is None else draw(st.none() | _name)
    if role is not None:
        item["role"] = role
        item["content"] = draw(_json)
    else:
        content = draw(_json)
        if content is not None:
            item["content"] = content
    if kind is not None:
        item["type"] = kind
    if draw(st.booleans()):
        item["id"] = draw(_text.filter(bool)) + uuid.uuid4().hex  # unique within the session
    return item


GENERATED = settings(
    max_examples=int(os.environ.get("PRAISON_FUZZ_EXAMPLES", "30")),
    deadline=None,
    derandomize=os.environ.get("CI", "").lower() == "true",
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@GENERATED
@given(batch=st.lists(items(), min_size=1, max_size=4))
def test_any_item_comes_back_deep_equal(conv, batch):
    s = sid()
    conv.create_session(s)
    conv.add_messages(s, batch)
    assert same(_items(conv.get_messages(s)), batch)
    assert same(conv.pop_message(s).to_item(), batch[-1])


# ---- removing messages ----


def test_pop_message_returns_the_newest_and_numbering_continues(conv):
    s = sid()
    conv.create_session(s)
    assert conv.pop_message(s) is None
    assert conv.pop_message("no-such-session") is None
    conv.add_messages(s, [{"role": "user", "content": f"m{i}", "id": f"id{i}"} for i in range(1, 4)])
    before = conv.get_session(s)
    popped = conv.pop_message(s)
    assert (popped.seq, popped.id, popped.content) == (3, "id3", "m3")
    after = conv.get_session(s)
    assert after.message_count == conv.count_messages(s) == 2 and after.updated_at >= before.updated_at
    assert [m.content for m in conv.get_messages(s)] == ["m1", "m2"]
    # The freed seq and the popped id can both be used again.
    again = conv.add_message(s, "user", "m3 again", id="id3")
    assert (again.seq, again.content) == (3, "m3 again")
    assert [m.seq for m in conv.get_messages(s)] == [1, 2, 3]
    assert [conv.pop_message(s).content for _ in range(3)] == ["m3 again", "m2", "m1"]
    assert conv.pop_message(s) is None and conv.count_messages(s) == 0
    assert conv.add_message(s, "user", "fresh").seq == 1


def test_truncate_and_clear_keep_the_session(conv):
    s = sid()
    conv.create_session(s, name="kept", metadata={"k": 1})
    conv.add_messages(s, [{"role": "user", "content": str(i)} for i in range(1, 7)])
    assert conv.truncate(s, 6) == 0 and conv.truncate(s, 99) == 0
    assert conv.truncate(s, 4) == 2
    assert [m.seq for m in conv.get_messages(s)] == [1, 2, 3, 4]
    assert conv.add_message(s, "user", "five").seq == 5
    assert conv.clear_messages(s) == 5
    session = conv.get_session(s)
    assert (session.name, session.metadata, session.message_count) == ("kept", {"k": 1}, 0)
    assert conv.get_messages(s) == [] and conv.get_messages(s, limit=3) == []
    assert conv.add_message(s, "user", "again").seq == 1
    assert conv.clear_messages("no-such-session") == 0 and conv.truncate("no-such-session", 0) == 0


@pytest.mark.parametrize("bad", [-1, "3", 1.5, True, None])
def test_truncate_refuses_a_bad_seq(conv, bad):
    s = sid()
    conv.create_session(s)
    conv.add_message(s, "user", "kept")
    with pytest.raises(InputError):
        conv.truncate(s, bad)
    assert conv.count_messages(s) == 1


def test_removal_is_refused_after_close(conv):
    conv.close()
    for call in (lambda: conv.pop_message("s"), lambda: conv.truncate("s", 0), lambda: conv.clear_messages("s")):
        with pytest.raises(Error):
            call()


def test_concurrent_pops_each_get_a_different_message(conv):
    s = sid()
    conv.create_session(s)
    conv.add_messages(s, [{"role": "user", "content": str(i)} for i in range(40)])
    got: list[Any] = []
    lock = threading.Lock()

    def popper() -> None:
        for _ in range(10):
            m = conv.pop_message(s)
            with lock:
                got.append(m)

    threads = [threading.Thread(target=popper) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    popped = [m for m in got if m is not None]
    assert len(popped) == 40 and len({m.seq for m in popped}) == 40
    assert got.count(None) == 10
    assert conv.count_messages(s) == 0 and conv.add_message(s, "user", "next").seq == 1


def test_pops_from_several_processes_each_get_a_different_message(conv, conv_url):
    require(conv, "multi_process")
    s = sid()
    conv.create_session(s)
    conv.add_messages(s, [{"role": "user", "content": str(i)} for i in range(24)])
    results = run_workers(pop_many, [(conv_url, s, 8) for _ in range(4)])
    seqs = [seq for worker in results for seq in worker if seq is not None]
    assert sorted(seqs) == list(range(1, 25)) and sum(seq is None for worker in results for seq in worker) == 8
    assert conv.count_messages(s) == 0 and conv.get_session(s).message_count == 0


def test_appends_and_pops_interleaved_keep_seqs_gap_free(conv):
    s = sid()
    conv.create_session(s)
    for round_ in range(5):
        conv.add_messages(s, [{"role": "user", "content": f"{round_}-{i}"} for i in range(3)])
        conv.pop_message(s)
    seqs = [m.seq for m in conv.get_messages(s)]
    assert seqs == list(range(1, 11)) and conv.count_messages(s) == 10
