"""Moving data between backends: copy, export and import, on real servers.

Every pair that users take (JSON -> SQLite, SQLite -> PostgreSQL, PostgreSQL -> MySQL, Redis -> MongoDB, ClickHouse
as a destination), idempotent and resumable runs (a copy or import killed with SIGKILL finishes on the next run),
conflicts, damaged files, and streaming in constant memory.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from praison_db import InputError, IntegrityError, SessionExists, copy, db, export, import_
from praison_db.transfer import FORMAT
from tests.backends import BACKENDS, Backend

BY_NAME = {b.name: b for b in BACKENDS}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def open_db(make_url: Any, tmp_path: Path) -> Any:
    """open_db(backend name) -> a fresh db(...) on that backend (state alongside, or a file for ClickHouse)."""
    opened: list[Any] = []

    def make(name: str) -> Any:
        backend: Backend = BY_NAME[name]
        url = make_url(backend)
        store = db(url, session_dir=tmp_path / uuid.uuid4().hex[:8], **backend.options)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def populate(store: Any, *, sessions: int = 3, messages: int = 30) -> None:
    conv = store.conversations
    for i in range(sessions):
        sid = f"sess-{i}"
        conv.create_session(sid, user_id=f"user-{i % 2}", agent_id="agent-a", name=f"chat {i}", metadata={"n": i, "tags": ["x"]})
        items: list[dict[str, Any]] = []
        for j in range(messages):
            if j % 5 == 4:
                items.append({"role": "tool", "content": json.dumps({"ok": j}), "tool_call_id": f"call-{j}", "id": f"{sid}-m{j}"})
            elif j % 5 == 3:
                calls = [{"id": f"call-{j + 1}", "type": "function", "function": {"name": "f", "arguments": '{"a": 1.5}'}}]
                items.append({"role": "assistant", "content": None, "tool_calls": calls, "id": f"{sid}-m{j}"})
            else:
                items.append({"role": "user", "content": f"héllo {j} ✓", "metadata": {"j": j}, "id": f"{sid}-m{j}"})
        conv.add_messages(sid, items)
    store.state.set("plain", {"a": [1, 2, 3]})
    store.state.set("counter", 41)
    store.state.set("short-lived", "soon", ttl=300)


def snapshot(store: Any) -> dict[str, Any]:
    conv = store.conversations
    out = {}
    for s in conv.iter_sessions():
        out[s.session_id] = (s, conv.get_messages(s.session_id))
    return out


def assert_same(source: Any, destination: Any) -> None:
    a, b = snapshot(source), snapshot(destination)
    assert sorted(a) == sorted(b)
    for sid, (session, messages) in a.items():
        other, other_messages = b[sid]
        assert other_messages == messages
        assert other == session


PAIRS = [
    ("json", "sqlite"),
    ("sqlite", "postgresql"),
    ("postgresql", "mysql"),
    ("redis", "mongodb"),
    ("sqlite", "clickhouse-chdb"),
]


@pytest.mark.parametrize(("src", "dst"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_copy_preserves_everything_and_is_idempotent(open_db, src, dst):
    source, destination = open_db(src), open_db(dst)
    populate(source)
    report = copy(source, destination)
    assert (report.sessions, report.messages, report.messages_present) == (3, 90, 0)
    assert_same(source, destination)
    assert destination.state.get("plain") == {"a": [1, 2, 3]}
    assert destination.state.get("counter") == 41
    assert destination.state.ttl("plain") is None
    assert 200 < destination.state.ttl("short-lived") <= 300
    again = copy(source, destination)
    assert (again.sessions, again.messages, again.messages_present) == (3, 0, 90)
    assert_same(source, destination)
    # The next append continues the numbering.
    assert destination.conversations.add_message("sess-0", "user", "after").seq == 31


@pytest.mark.parametrize(("src", "dst"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_export_then_import_round_trips(open_db, tmp_path, src, dst):
    source, destination = open_db(src), open_db(dst)
    populate(source)
    path = tmp_path / "backup.jsonl.gz"
    written = export(source, path)
    assert (written.sessions, written.messages, written.state) == (3, 90, 3)
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = [json.loads(x) for x in f]
    assert lines[0]["format"] == FORMAT and lines[0]["version"] == 1
    assert lines[-1]["type"] == "end" and len(lines[-1]["sha256"]) == 64
    report = import_(destination, path)
    assert (report.sessions, report.messages, report.state) == (3, 90, 3)
    assert_same(source, destination)
    assert 200 < destination.state.ttl("short-lived") <= 300
    assert import_(destination, path).messages == 0


def test_filters_choose_sessions_and_leave_state(open_db, tmp_path):
    source, destination = open_db("sqlite"), open_db("memory")
    populate(source, sessions=4, messages=3)
    report = copy(source, destination, user_id="user-1")
    assert sorted(s.session_id for s in destination.conversations.iter_sessions()) == ["sess-1", "sess-3"]
    assert report.state == 0 and destination.state.get("plain") is None
    copy(source, destination, session_ids=["sess-0"])
    assert destination.conversations.get_session("sess-0") is not None
    future = datetime.now(timezone.utc) + timedelta(days=1)
    assert copy(source, open_db("memory"), since=future).sessions == 0
    assert copy(source, open_db("memory"), before=future).sessions == 4
    buffer = io.BytesIO()
    assert export(source, buffer, agent_id="nobody").sessions == 0


# ---- conflicts ----


def conflicting(open_db: Any) -> tuple[Any, Any]:
    source, destination = open_db("sqlite"), open_db("sqlite")
    for store, ids in ((source, ["a", "b", "c"]), (destination, ["a", "X"])):
        store.conversations.create_session("s", user_id="u")
        store.conversations.add_messages("s", [{"role": "user", "content": i, "id": i} for i in ids])
    source.conversations.create_session("clean")
    source.conversations.add_message("clean", "user", "fine")
    return source, destination


def test_conflict_fails_with_one_line_and_changes_nothing(open_db):
    source, destination = conflicting(open_db)
    with pytest.raises(SessionExists, match=r"session 's' already exists at the destination .*seq 2.*on_conflict"):
        copy(source, destination, state=False)
    assert [m.id for m in destination.conversations.get_messages("s")] == ["a", "X"]


def test_conflict_skip_keeps_the_destination(open_db):
    source, destination = conflicting(open_db)
    report = copy(source, destination, on_conflict="skip", state=False)
    assert report.sessions_skipped == 1 and report.sessions == 1
    assert [m.id for m in destination.conversations.get_messages("s")] == ["a", "X"]
    assert destination.conversations.count_messages("clean") == 1


def test_conflict_replace_takes_the_source(open_db):
    source, destination = conflicting(open_db)
    report = copy(source, destination, on_conflict="replace", state=False)
    assert report.sessions_replaced == 1
    assert_same(source, destination)


def test_destination_with_more_messages_or_another_owner_is_a_conflict(open_db):
    source, destination = open_db("memory"), open_db("memory")
    source.conversations.create_session("s")
    source.conversations.add_message("s", "user", "one", id="a")
    destination.conversations.create_session("s")
    destination.conversations.add_messages("s", [{"role": "user", "content": "one", "id": "a"}, {"role": "user", "content": "2"}])
    with pytest.raises(SessionExists, match="more messages"):
        copy(source, destination)
    other = open_db("memory")
    other.conversations.create_session("s", user_id="someone-else")
    with pytest.raises(SessionExists, match="user_id"):
        copy(source, other)


def test_state_conflicts(open_db):
    source, destination = open_db("memory"), open_db("memory")
    source.state.set("k", 1)
    destination.state.set("k", 2)
    with pytest.raises(IntegrityError, match="state key 'k'"):
        copy(source, destination)
    copy(source, destination, on_conflict="skip")
    assert destination.state.get("k") == 2
    copy(source, destination, on_conflict="replace")
    assert destination.state.get("k") == 1


# ---- damaged files ----


@pytest.fixture
def good_lines(open_db: Any) -> list[bytes]:
    source = open_db("memory")
    populate(source, sessions=2, messages=4)
    buffer = io.BytesIO()
    export(source, buffer)
    return buffer.getvalue().splitlines(keepends=True)


def edited(lines: list[bytes], index: int, change: Any) -> list[bytes]:
    record = json.loads(lines[index])
    change(record)
    return [*lines[:index], (json.dumps(record) + "\n").encode(), *lines[index + 1 :]]


def bump_version(n: int) -> Any:
    return lambda r: r.update(version=n)


def alter_message(r: dict[str, Any]) -> None:
    r["message"]["content"] = "tampered"


@pytest.mark.parametrize(
    ("make", "line", "text"),
    [
        (lambda ls: ls[:-1], "line 14", "truncated"),
        (lambda ls: [*ls[:5], ls[5][:20]], "line 6", "cut off"),
        (lambda ls: [*ls[:3], b'{"type": "message", "mess\n', *ls[4:]], "line 4", "not valid JSON"),
        (lambda ls: edited(ls, 0, bump_version(2)), "line 1", "newer praison-db"),
        (lambda ls: edited(ls, 0, bump_version(0)), "line 1", "unsupported format version"),
        (lambda ls: edited(ls, 0, lambda r: r.update(format="something")), "line 1", "not a praison_db export"),
        (lambda ls: edited(ls, 2, alter_message), "line 15", "checksum mismatch"),
        (lambda ls: edited(ls, len(ls) - 1, lambda r: r.update(messages=99)), "line 15", "damaged"),
    ],
    ids=["truncated", "torn-line", "corrupted-line", "newer-version", "wrong-version", "not-an-export", "checksum", "counts"],
)
def test_bad_files_are_input_errors_naming_the_line_and_import_nothing(open_db, tmp_path, good_lines, make, line, text):
    assert len(good_lines) == 15  # header, 2 x (session + 4 messages), 3 state, end
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"".join(make(good_lines)))
    destination = open_db("sqlite")
    with pytest.raises(InputError) as caught:
        import_(destination, path)
    assert f"{path} {line}:" in str(caught.value) and text in str(caught.value)
    assert "\n" not in str(caught.value)
    assert list(destination.conversations.iter_sessions()) == []
    assert destination.state.get("plain") is None


def test_file_without_checksum_is_validated_message_by_message(open_db, tmp_path, good_lines):
    unverified = edited(good_lines, len(good_lines) - 1, lambda r: r.pop("sha256"))
    path = tmp_path / "hand-made.jsonl"
    path.write_bytes(b"".join(unverified))
    destination = open_db("sqlite")
    assert import_(destination, path).messages == 8
    bad = edited(unverified, 3, lambda r: r["message"].update(created_at="yesterday"))
    path.write_bytes(b"".join(bad))
    other = open_db("sqlite")
    with pytest.raises(InputError, match="line 4: not a valid message"):
        import_(other, path)
    assert list(other.conversations.iter_sessions()) == []


def test_damaged_gzip_is_an_input_error(open_db, tmp_path, good_lines):
    data = gzip.compress(b"".join(good_lines))
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="bad.jsonl.gz line"):
        import_(open_db("memory"), path)


# ---- resumable after SIGKILL ----

CHILD = textwrap.dedent(
    """
    import sys
    from praison_db import db, copy, import_
    mode, source, destination = sys.argv[1:4]
    with db(destination, session_dir=sys.argv[4]) as dst:
        if mode == "copy":
            with db(source, session_dir=sys.argv[4]) as src:
                copy(src, dst)
        else:
            import_(dst, source)
    """
)


def kill_when_half_done(args: list[str], destination: Any, session_id: str, total: int) -> int:
    """Run the child; SIGKILL it once some (not all) of the session's messages have landed. Returns that count."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, *args], env=env, stderr=subprocess.PIPE)
    landed = 0
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            landed = destination.conversations.count_messages(session_id)
            if landed > 0:
                child.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=60)
        child.stderr.close()  # type: ignore[union-attr]
    assert child.returncode == -signal.SIGKILL, "the child finished before it could be killed"
    assert 0 < landed < total
    return landed


TOTAL = 30_000


def big_source(open_db: Any) -> Any:
    source = open_db("sqlite")
    source.conversations.create_session("big", user_id="u")
    source.conversations.add_messages("big", [{"role": "user", "content": f"m{i}", "id": f"id{i}"} for i in range(TOTAL)])
    return source


def assert_exactly_once(source: Any, destination: Any) -> None:
    got = list(destination.conversations.iter_messages("big", batch_size=5000))
    assert [m.seq for m in got] == list(range(1, TOTAL + 1))
    assert got == list(source.conversations.iter_messages("big", batch_size=5000))
    assert destination.conversations.count_messages("big") == TOTAL


def test_copy_killed_half_way_finishes_on_the_next_run(open_db, tmp_path):
    source, destination = big_source(open_db), open_db("postgresql")
    kill_when_half_done(["copy", _secret_url(source), _secret_url(destination), str(tmp_path)], destination, "big", TOTAL)
    report = copy(source, destination)
    assert report.messages_present > 0 and report.messages + report.messages_present == TOTAL
    assert_exactly_once(source, destination)


def test_import_killed_half_way_finishes_on_the_next_run(open_db, tmp_path):
    source, destination = big_source(open_db), open_db("postgresql")
    path = tmp_path / "big.jsonl"
    export(source, path)
    kill_when_half_done(["import", str(path), _secret_url(destination), str(tmp_path)], destination, "big", TOTAL)
    report = import_(destination, path)
    assert report.messages_present > 0 and report.messages + report.messages_present == TOTAL
    assert_exactly_once(source, destination)


def _secret_url(store: Any) -> str:
    """The URL a test store was opened with, password included (the child process has to connect)."""
    return store._database_url.render(hide_password=False)


# ---- constant memory ----


def peak_bytes(work: Any) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("operation", ["export", "import", "copy"])
def test_memory_stays_flat_as_the_session_grows_tenfold(open_db, tmp_path, operation):
    peaks = []
    for n in (2_000, 20_000):
        source = open_db("sqlite")
        source.conversations.create_session("s")
        for start in range(0, n, 5000):
            source.conversations.add_messages("s", [{"role": "user", "content": "x" * 200} for _ in range(min(5000, n - start))])
        path = tmp_path / f"{n}.jsonl"
        destination = open_db("sqlite")
        if operation == "import":
            export(source, path, state=False)
            peaks.append(peak_bytes(functools.partial(import_, destination, path)))
        elif operation == "export":
            peaks.append(peak_bytes(functools.partial(export, source, path, state=False)))
        else:
            peaks.append(peak_bytes(functools.partial(copy, source, destination, state=False)))
        assert destination.conversations.count_messages("s") in (0, n)
    small, big = peaks
    assert big < small * 1.5 + 256 * 1024, f"peak traced memory grew from {small} to {big} bytes"
