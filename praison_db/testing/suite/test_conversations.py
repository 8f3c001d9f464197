"""The ConversationStore contract, run on every backend in tests/backends.py."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from praison_db import InputError, SessionExists, SessionNotFound, StoreClosed
from praison_db.facade import open_store
from praison_db.testing import require
from praison_db.testing.workers import append_many, get_or_create, run_workers

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


def sid() -> str:
    return "s-" + uuid.uuid4().hex[:12]


def fill(conv, session_id: str, n: int, start: int = 0) -> None:
    conv.add_messages(session_id, [{"role": "user", "content": f"m{start + i}"} for i in range(n)])


# ---- sessions ----


def test_create_and_get_round_trip(conv):
    s = conv.create_session(
        "alpha", user_id="alice", agent_id="helper", session_type="team", name="Plans", metadata={"k": [1, {"x": None}]}
    )
    assert (s.session_id, s.user_id, s.agent_id, s.session_type, s.name) == ("alpha", "alice", "helper", "team", "Plans")
    assert s.metadata == {"k": [1, {"x": None}]} and s.message_count == 0
    got = conv.get_session("alpha")
    assert got == s
    assert got.created_at.tzinfo is not None and got.created_at.utcoffset() == timedelta(0)
    assert abs(got.created_at - datetime.now(timezone.utc)) < timedelta(minutes=5)


def test_create_without_id_generates_unique_ids(conv):
    a, b = conv.create_session(), conv.create_session()
    assert a.session_id and b.session_id and a.session_id != b.session_id
    assert conv.get_session(a.session_id) is not None


def test_create_existing_raises_and_keeps_original(conv):
    conv.create_session("dup", user_id="alice", name="first")
    conv.add_message("dup", "user", "kept")
    with pytest.raises(SessionExists):
        conv.create_session("dup", user_id="mallory", name="second")
    s = conv.get_session("dup")
    assert (s.user_id, s.name, s.message_count) == ("alice", "first", 1)


def test_get_or_create_returns_existing_unchanged(conv):
    first = conv.get_or_create_session("g", user_id="alice", name="one")
    again = conv.get_or_create_session("g", user_id="bob", name="two")
    assert again.session_id == "g" and again.user_id == "alice" and again.name == "one"
    assert again.created_at == first.created_at


def test_get_missing_and_user_scoping(conv):
    assert conv.get_session("nope") is None
    conv.create_session("owned", user_id="alice")
    assert conv.get_session("owned", user_id="alice") is not None
    assert conv.get_session("owned", user_id="mallory") is None


def test_ids_that_look_alike_are_distinct(conv):
    ids = ["a/b", "a_b", "../x", "x", "A", "a", "a ", "Ünïcødé-会话-🙂", ".", "..", "v1.2.3", "con", "x" * 255]
    for i, session_id in enumerate(ids):
        conv.create_session(session_id, name=str(i))
        conv.add_message(session_id, "user", f"content {i}")
    for i, session_id in enumerate(ids):
        s = conv.get_session(session_id)
        assert s is not None and s.session_id == session_id and s.name == str(i), session_id
        assert [m.content for m in conv.get_messages(session_id)] == [f"content {i}"]
    assert sorted(s.session_id for s in conv.iter_sessions()) == sorted(ids)


def test_update_session(conv):
    s = conv.create_session("u", name="old", metadata={"a": 1})
    updated = conv.update_session("u", name="new")
    assert updated.name == "new" and updated.metadata == {"a": 1} and updated.updated_at >= s.updated_at
    updated = conv.update_session("u", metadata={"b": 2})
    assert updated.name == "new" and updated.metadata == {"b": 2}
    assert conv.get_session("u") == updated
    with pytest.raises(SessionNotFound):
        conv.update_session("missing", name="x")


# ---- messages ----


def test_append_assigns_contiguous_seqs_and_round_trips(conv):
    conv.create_session("m")
    first = conv.add_message("m", "system", "be brief", metadata={"source": "test"})
    second = conv.add_message("m", "user", "hello", name="alice")
    batch = conv.add_messages("m", [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "bye"}])
    assert [first.seq, second.seq] + [m.seq for m in batch] == [1, 2, 3, 4]
    stored = conv.get_messages("m")
    assert [m.seq for m in stored] == [1, 2, 3, 4]
    assert stored[0] == first and stored[1] == second and stored[2:] == batch
    assert stored[1].name == "alice" and stored[0].metadata == {"source": "test"}
    assert all(m.created_at.utcoffset() == timedelta(0) for m in stored)
    assert len({m.id for m in stored}) == 4


def test_append_to_missing_session_raises_and_creates_nothing(conv):
    with pytest.raises(SessionNotFound):
        conv.add_message("ghost", "user", "hi")
    with pytest.raises(SessionNotFound):
        conv.add_messages("ghost", [{"role": "user", "content": "hi"}])
    assert conv.get_session("ghost") is None and conv.get_messages("ghost") == []


def test_limit_returns_newest_n_in_order(conv):
    conv.create_session("n")
    fill(conv, "n", 30)
    newest = conv.get_messages("n", limit=5)
    assert [m.seq for m in newest] == [26, 27, 28, 29, 30]
    assert [m.content for m in newest] == ["m25", "m26", "m27", "m28", "m29"]
    assert [m.seq for m in conv.get_messages("n", limit=100)] == list(range(1, 31))
    assert conv.get_messages("n", limit=0) == []
    assert [m.seq for m in conv.get_messages("n", limit=3, before_seq=10)] == [7, 8, 9]
    assert [m.seq for m in conv.get_messages("n", after_seq=27)] == [28, 29, 30]
    assert [m.seq for m in conv.get_messages("n", after_seq=20, before_seq=24)] == [21, 22, 23]
    assert [m.seq for m in conv.get_messages("n", limit=2, after_seq=20, before_seq=24)] == [22, 23]
    assert conv.get_messages("missing", limit=5) == []


def test_count_messages(conv):
    conv.create_session("c")
    assert conv.count_messages("c") == 0
    fill(conv, "c", 7)
    assert conv.count_messages("c") == 7 and conv.get_session("c").message_count == 7
    assert conv.count_messages("missing") == 0


def test_append_bumps_updated_at(conv):
    s = conv.create_session("t")
    m = conv.add_message("t", "user", "x")
    after = conv.get_session("t")
    assert after.updated_at > s.updated_at and after.updated_at >= m.created_at
    assert after.created_at == s.created_at and after.message_count == 1


def test_tool_call_turns_round_trip_exactly(conv):
    conv.create_session("tools")
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": json.dumps({"city": "Paris"})}},
        {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": "{}"}},
    ]
    turns = [
        {"role": "user", "content": "Weather and time in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "call_1", "name": "weather"},
        {"role": "tool", "content": "12:00", "tool_call_id": "call_2", "name": "time"},
        {"role": "assistant", "content": "21°C and noon."},
    ]
    conv.add_messages("tools", turns[:2])
    for t in turns[2:]:
        conv.add_message("tools", t["role"], t["content"], tool_call_id=t.get("tool_call_id"), name=t.get("name"))
    assert [m.to_openai() for m in conv.get_messages("tools")] == turns
    assert conv.get_history("tools", limit=3) == turns[2:]


@pytest.mark.parametrize(
    "content",
    ["", None, "emoji 🙂👍🏽 and 4-byte 𝄞 𠜎", "مرحبا بالعالم", "日本語のテキスト", "e\u0301 combining", "tab\tnew\nline \"quotes\" \\ back"],
    ids=["empty", "none", "emoji", "rtl", "cjk", "combining", "escapes"],
)
def test_content_round_trips(conv, content):
    conv.create_session("c")
    conv.add_message("c", "user", content)
    assert conv.get_messages("c")[0].content == content


@pytest.mark.slow
def test_ten_megabyte_content(conv):
    big = ("0123456789abcdef🙂" * 700_000)[: 10 * 1024 * 1024 // 2] + "END"
    conv.create_session("big")
    conv.add_message("big", "user", big)
    conv.add_message("big", "assistant", "after")
    got = conv.get_messages("big")
    assert got[0].content == big and got[1].content == "after"
    assert conv.get_messages("big", limit=1)[0].content == "after"


def test_bad_input_is_rejected_and_changes_nothing(conv):
    conv.create_session("ok")
    conv.add_message("ok", "user", "kept")
    bad_calls = [
        lambda: conv.create_session(""),
        lambda: conv.create_session(123),  # type: ignore[arg-type]
        lambda: conv.create_session("x" * 256),
        lambda: conv.create_session("nul\x00id"),
        lambda: conv.create_session("t", session_type="robot"),
        lambda: conv.create_session("t", metadata={"s": {1, 2}}),
        lambda: conv.create_session("t", metadata={"nan": float("nan")}),
        lambda: conv.create_session("t", metadata=["not", "a", "dict"]),  # type: ignore[arg-type]
        lambda: conv.add_message("ok", "", "x"),
        lambda: conv.add_message("ok", "user", b"bytes"),
        lambda: conv.add_message("ok", "user", "x", metadata={"o": object()}),
        lambda: conv.add_message("ok", "assistant", None, tool_calls="not a list"),  # type: ignore[arg-type]
        lambda: conv.add_messages("ok", [{"role": "user", "content": "fine"}, {"role": "x" * 65, "content": "x"}]),
        lambda: conv.add_messages("ok", [{"content": "no role"}]),
        lambda: conv.get_messages("ok", limit=-1),
        lambda: conv.list_sessions(limit=0),
        lambda: conv.list_sessions(cursor="garbage!"),
        lambda: conv.prune(older_than=5),  # type: ignore[arg-type]
    ]
    for call in bad_calls:
        with pytest.raises(InputError) as info:
            call()
        assert "\n" not in str(info.value)
    assert conv.get_session("t") is None
    assert [m.content for m in conv.get_messages("ok")] == ["kept"]
    assert conv.get_session("ok").message_count == 1


# ---- listing ----


def test_list_sessions_newest_activity_first_with_cursor(conv):
    ids = [f"l{i}" for i in range(7)]
    for session_id in ids:
        conv.create_session(session_id, user_id="lister")
    conv.add_message("l2", "user", "activity moves l2 to the front")
    page = conv.list_sessions(user_id="lister", limit=3)
    assert [s.session_id for s in page] == ["l2", "l6", "l5"] and page.next_cursor
    seen = [s.session_id for s in page]
    while page.next_cursor:
        page = conv.list_sessions(user_id="lister", limit=3, cursor=page.next_cursor)
        seen += [s.session_id for s in page]
    assert seen == ["l2", "l6", "l5", "l4", "l3", "l1", "l0"]
    assert [s.session_id for s in conv.iter_sessions(user_id="lister")] == seen
    exact = conv.list_sessions(user_id="lister", limit=7)
    assert len(exact) == 7 and exact.next_cursor is None


def test_list_sessions_filters(conv):
    conv.create_session("f1", user_id="alice", agent_id="a1", session_type="agent")
    conv.create_session("f2", user_id="alice", agent_id="a2", session_type="team")
    conv.create_session("f3", user_id="bob", agent_id="a1", session_type="workflow")
    assert {s.session_id for s in conv.list_sessions(user_id="alice")} == {"f1", "f2"}
    assert {s.session_id for s in conv.list_sessions(agent_id="a1")} == {"f1", "f3"}
    assert {s.session_id for s in conv.list_sessions(session_type="workflow")} == {"f3"}
    assert [s.session_id for s in conv.list_sessions(user_id="alice", agent_id="a2", session_type="team")] == ["f2"]
    assert list(conv.list_sessions(user_id="nobody")) == []


# ---- deletion ----


def test_delete_session_cascades_and_leaves_others(conv):
    conv.create_session("d1", user_id="alice")
    conv.create_session("d2", user_id="alice")
    fill(conv, "d1", 5)
    fill(conv, "d2", 3)
    assert conv.delete_session("d1") is True
    assert conv.get_session("d1") is None and conv.get_messages("d1") == [] and conv.count_messages("d1") == 0
    assert [m.content for m in conv.get_messages("d2")] == ["m0", "m1", "m2"]
    assert conv.delete_session("d1") is False  # deleting a missing session is a no-op
    conv.create_session("d1")
    assert conv.add_message("d1", "user", "fresh").seq == 1  # a re-created id starts over


def test_delete_with_wrong_user_deletes_nothing(conv):
    conv.create_session("mine", user_id="alice")
    conv.add_message("mine", "user", "private")
    assert conv.delete_session("mine", user_id="mallory") is False
    assert conv.get_session("mine") is not None and conv.count_messages("mine") == 1
    assert conv.delete_session("mine", user_id="alice") is True


def test_delete_user(conv):
    for i in range(3):
        conv.create_session(f"a{i}", user_id="alice")
        conv.add_message(f"a{i}", "user", "x")
    conv.create_session("b0", user_id="bob")
    conv.add_message("b0", "user", "y")
    assert conv.delete_user("alice") == 3
    assert conv.list_sessions(user_id="alice").items == [] and conv.get_messages("a0") == []
    assert conv.get_session("b0") is not None and conv.count_messages("b0") == 1
    assert conv.delete_user("alice") == 0


def _aged_export(conv, session_id: str, days: int) -> dict:
    conv.create_session(session_id, user_id="old")
    conv.add_message(session_id, "user", "long ago")
    data = conv.export_session(session_id)
    conv.delete_session(session_id)
    past = (datetime.now(timezone.utc) - timedelta(days=days)).isoformat()
    data["session"]["created_at"] = data["session"]["updated_at"] = past
    data["messages"][0]["created_at"] = past
    return data


def test_prune_deletes_only_idle_sessions(conv):
    conv.import_session(_aged_export(conv, "stale", days=40))
    conv.import_session(_aged_export(conv, "recentish", days=2))
    conv.create_session("fresh")
    assert conv.prune(older_than=timedelta(days=30)) == 1
    assert conv.get_session("stale") is None and conv.get_messages("stale") == []
    assert conv.get_session("recentish") is not None and conv.get_session("fresh") is not None
    assert conv.prune(older_than=timedelta(days=30)) == 0


# ---- export / import ----


def test_export_import_round_trip(conv):
    conv.create_session("e", user_id="alice", agent_id="bot", name="N", metadata={"m": 1})
    conv.add_messages(
        "e",
        [
            {"role": "user", "content": "q 🙂"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "content": "r", "tool_call_id": "c"},
        ],
    )
    data = conv.export_session("e")
    json.loads(json.dumps(data))  # plain JSON
    before_session, before_messages = conv.get_session("e"), conv.get_messages("e")
    with pytest.raises(SessionExists):
        conv.import_session(data)
    conv.delete_session("e")
    restored = conv.import_session(data)
    assert restored == before_session and conv.get_session("e") == before_session
    assert conv.get_messages("e") == before_messages
    assert conv.add_message("e", "user", "continues").seq == 4
    with pytest.raises(SessionNotFound):
        conv.export_session("missing")
    with pytest.raises(InputError):
        conv.import_session({"format": "something else"})


# ---- lifecycle ----


def test_reopen_sees_the_same_data(conv, conv_url):
    conv.create_session("p", user_id="alice")
    conv.add_message("p", "user", "persisted")
    conv.close()
    with open_store(conv_url, "conversations") as again:
        assert again.get_session("p").user_id == "alice"
        assert [m.content for m in again.get_messages("p")] == ["persisted"]


def test_closed_store_raises(conv):
    conv.create_session("z")
    conv.close()
    conv.close()  # idempotent
    with pytest.raises(StoreClosed):
        conv.get_session("z")
    with pytest.raises(StoreClosed):
        conv.add_message("z", "user", "x")


# ---- concurrency ----


@pytest.mark.slow
@pytest.mark.parametrize("workers, per", [(4, 200), (8, 500)], ids=["4x200", "8x500"])
def test_processes_append_to_one_session(conv, conv_url, workers, per):
    require(conv, "multi_process")
    conv.create_session("race")
    started = time.perf_counter()
    results = run_workers(append_many, [(conv_url, "race", per, w) for w in range(workers)])
    elapsed = time.perf_counter() - started
    messages = conv.get_messages("race")
    total = per * workers
    assert [m.seq for m in messages] == list(range(1, total + 1))
    assert sorted(seq for r in results for seq in r) == list(range(1, total + 1))
    for w in range(workers):  # each writer's own messages stay in its order
        mine = [m.content for m in messages if m.content.startswith(f"w{w}-")]
        assert mine == [f"w{w}-{i}" for i in range(per)]
    assert conv.get_session("race").message_count == total
    print(f"\n{type(conv).__name__}: {workers} processes x {per} appends in {elapsed:.2f} s")


@pytest.mark.slow
def test_eight_processes_get_or_create_one_session(conv, conv_url):
    require(conv, "multi_process")
    names = run_workers(get_or_create, [(conv_url, "contested", w) for w in range(8)])
    assert len(set(names)) == 1  # everyone got the same (winner's) session
    assert len(conv.list_sessions(user_id="racer")) == 1


def test_a_fresh_store_reports_its_server_and_an_up_to_date_schema(conv):
    version = conv.server_version()
    assert version is None or (isinstance(version, str) and version and version != "?")
    schema = conv.schema_version()
    assert schema is None or (schema[0] == schema[1] >= 1)
