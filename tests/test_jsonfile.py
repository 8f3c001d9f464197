"""What is specific to the JSON DefaultSessionStore: files, crashes, locks."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import subprocess
import sys
import threading
from datetime import datetime, timezone
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from praison_db import Message, StoreUnavailable
from praison_db.backends import jsonfile
from praison_db.backends.jsonfile import JsonConversationStore, session_file_stem


@pytest.fixture
def store(tmp_path):
    with JsonConversationStore(tmp_path / "sessions") as s:
        yield s


def count_parses(monkeypatch) -> list[bytes]:
    """Record every JSON line the store parses (to show what a read touches)."""
    parsed: list[bytes] = []
    real = jsonfile._parse_line
    monkeypatch.setattr(jsonfile, "_parse_line", lambda line: parsed.append(line) or real(line))
    return parsed


def messages_file(store: JsonConversationStore, session_id: str) -> Path:
    return store.directory / f"{session_file_stem(session_id)}.jsonl"


def test_append_adds_one_line_and_never_rewrites(store):
    store.create_session("s")
    store.add_messages("s", [{"role": "user", "content": f"m{i}"} for i in range(50)])
    path = messages_file(store, "s")
    before = path.read_bytes()
    inode = path.stat().st_ino
    store.add_message("s", "assistant", "one more")
    after = path.read_bytes()
    assert after.startswith(before) and after.count(b"\n") == before.count(b"\n") + 1
    assert path.stat().st_ino == inode


def test_torn_last_line_loses_only_that_line(store):
    store.create_session("crash")
    store.add_messages("crash", [{"role": "user", "content": f"m{i}"} for i in range(3)])
    path = messages_file(store, "crash")
    with open(path, "ab") as f:  # what a crash in the middle of a write leaves behind
        f.write(b'{"id":"x","session_id":"crash","seq":4,"role":"user","cont')
    assert [m.seq for m in store.get_messages("crash")] == [1, 2, 3]
    assert [m.seq for m in store.get_messages("crash", limit=2)] == [2, 3]
    assert store.count_messages("crash") == 3 and store.get_session("crash").message_count == 3
    assert store.add_message("crash", "user", "after the crash").seq == 4
    assert [m.content for m in store.get_messages("crash")] == ["m0", "m1", "m2", "after the crash"]
    assert path.read_bytes().endswith(b"\n")


def test_file_names_stay_inside_the_directory_and_never_collide(store, tmp_path):
    ids = ["../escape", "../../etc/passwd", "a/b", "a_b", "a\\b", "/abs", "x" * 255, "CON", "." , ".."]
    for session_id in ids:
        store.create_session(session_id)
        store.add_message(session_id, "user", session_id)
    stems = {session_file_stem(i) for i in ids}
    assert len(stems) == len(ids)
    outside = {p for p in tmp_path.rglob("*") if store.directory not in p.parents and p != store.directory}
    assert outside == set()
    assert all(len(p.name) < 160 for p in store.directory.iterdir())
    for session_id in ids:
        assert [m.content for m in store.get_messages(session_id)] == [session_id]


def test_listing_reads_headers_and_last_lines_only(store, monkeypatch):
    for i in range(3):
        store.create_session(f"l{i}")
        store.add_messages(f"l{i}", [{"role": "user", "content": f"m{j}"} for j in range(200)])
    parsed = count_parses(monkeypatch)
    sessions = store.list_sessions()
    assert [s.message_count for s in sessions] == [200, 200, 200]
    assert len(parsed) <= 3  # one last line per session, not 600 messages


def test_listing_the_newest_page_skips_old_sessions(store, monkeypatch):
    from datetime import datetime, timedelta, timezone

    old = datetime.now(timezone.utc) - timedelta(days=2)
    for i in range(40):  # sessions last written two days ago, as their file times say
        store.create_session(f"old{i}")
        data = store.export_session(f"old{i}")
        store.delete_session(f"old{i}")
        data["session"]["created_at"] = data["session"]["updated_at"] = (old + timedelta(seconds=i)).isoformat()
        store.import_session(data)
        stamp = int((old + timedelta(seconds=i)).timestamp() * 1e9)
        for suffix in (".session.json", ".jsonl"):
            os.utime(store.directory / f"{session_file_stem(f'old{i}')}{suffix}", ns=(stamp, stamp))
    store.create_session("new1")
    store.create_session("new2")
    loaded = []
    real = store._load_stem
    monkeypatch.setattr(store, "_load_stem", lambda stem: loaded.append(stem) or real(stem))
    assert [s.session_id for s in store.list_sessions(limit=2)] == ["new2", "new1"]
    assert len(loaded) <= 3  # the two new ones, and at most one old one to prove nothing older can win
    page = store.list_sessions(limit=5)
    assert [s.session_id for s in page] == ["new2", "new1", "old39", "old38", "old37"]
    assert [s.session_id for s in store.list_sessions(limit=50)][-1] == "old0"


def test_newest_n_reads_from_the_end(store, monkeypatch):
    store.create_session("big")
    store.add_messages("big", [{"role": "user", "content": f"m{j}"} for j in range(2000)])
    parsed = count_parses(monkeypatch)
    assert [m.seq for m in store.get_messages("big", limit=20)] == list(range(1981, 2001))
    assert len(parsed) == 20


def test_half_created_session_is_invisible_and_recreated_cleanly(store):
    # A crash after the messages file was written but before the header (the commit point).
    messages_file(store, "half").write_bytes(b'{"id":"x","session_id":"half","seq":1}\n')
    assert store.get_session("half") is None and store.list_sessions().items == []
    store.create_session("half")
    assert store.add_message("half", "user", "clean").seq == 1


def test_delete_takes_the_session_lock(tmp_path):
    with JsonConversationStore(tmp_path / "s", lock_timeout=0.2) as store:
        store.create_session("locked")
        store.add_message("locked", "user", "still here")
        lock_path = store.directory / ".locks" / f"{session_file_stem('locked')}.lock"
        # filelock uses flock(2): a lock on a separate file descriptor is what another process would hold.
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            with pytest.raises(StoreUnavailable, match="lock"):
                store.delete_session("locked")
            with pytest.raises(StoreUnavailable, match="lock"):
                store.add_message("locked", "user", "blocked")
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        assert [m.content for m in store.get_messages("locked")] == ["still here"]
        assert store.delete_session("locked") is True


def test_a_lock_file_removed_between_writes_still_excludes_its_next_holder(tmp_path):
    # The store keeps lock files open between writes: a hold counts only while the path still names the file it holds.
    with JsonConversationStore(tmp_path / "s", lock_timeout=0.2) as store:
        store.create_session("gone")
        store.add_message("gone", "user", "first")
        lock_path = store.directory / ".locks" / f"{session_file_stem('gone')}.lock"
        lock_path.unlink()
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT)  # a new lock file, held by another process
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            with pytest.raises(StoreUnavailable, match="lock"):
                store.add_message("gone", "user", "blocked")
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        assert store.add_message("gone", "user", "second").seq == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_waits_for_the_lock_its_parent_holds(tmp_path):
    with JsonConversationStore(tmp_path / "s", lock_timeout=0.2) as store:
        store.create_session("forked")
        store.add_message("forked", "user", "parent")  # the parent's lock file is open when it forks
        with store._locked(store._paths("forked").lock):
            pid = os.fork()
            if pid == 0:  # the child inherits the open lock file, and with it the parent's flock
                try:
                    store.add_message("forked", "user", "child")
                    code = 1
                except StoreUnavailable:
                    code = 0
                except BaseException:
                    code = 2
                os._exit(code)
            _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert [m.content for m in store.get_messages("forked")] == ["parent"]


def test_state_file_is_a_snapshot_then_one_line_per_change(tmp_path):
    from praison_db.backends.jsonfile import JsonStateStore

    with JsonStateStore(tmp_path / "state.json") as state:
        state.set("a", 1)
        state.set("b", {"x": [1, 2]})
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert [json.loads(line) for line in (tmp_path / "state.json").read_text().splitlines()] == [
        {"format": "praison_db.state/v2", "items": {"a": [1, None]}},
        {"set": {"b": [{"x": [1, 2]}, None]}},
    ]


# ---- message ids ----


@pytest.fixture
def directory(tmp_path):
    return tmp_path / "sessions"


def test_appends_read_only_what_is_new(directory, monkeypatch):
    with JsonConversationStore(directory) as writer:
        writer.create_session("big")
        writer.add_messages("big", [{"role": "user", "content": f"m{i}", "id": f"id-{i}"} for i in range(2000)])
    with JsonConversationStore(directory) as store, JsonConversationStore(directory) as other:
        assert store.add_message("big", "user", "retry", id="id-1500").seq == 1501  # a new store reads the file once
        parsed = count_parses(monkeypatch)
        for i in range(20):
            assert store.add_message("big", "user", f"n{i}", id=f"new-{i}").seq == 2001 + i
        assert len(parsed) <= 20 * 2  # the last line (tail repair), never the 2000 older ones
        # Another writer's appends are read from where this store stopped: its ids are known here too.
        other.add_message("big", "user", "from other", id="other-1")
        parsed.clear()
        again = store.add_message("big", "user", "retry", id="other-1")
        assert (again.seq, again.content) == (2021, "from other") and len(parsed) <= 3
        assert store.count_messages("big") == 2021


def test_a_torn_line_never_counts_as_a_stored_id(directory):
    with JsonConversationStore(directory) as store:
        store.create_session("crash")
        store.add_message("crash", "user", "one", id="a")
        path = directory / f"{session_file_stem('crash')}.jsonl"
        with open(path, "ab") as f:  # a crash in the middle of writing message "b"
            f.write(b'{"id":"b","session_id":"crash","seq":2,"role":"user","cont')
        m = store.add_message("crash", "user", "two", id="b")
        assert (m.seq, m.content) == (2, "two")
        assert [(x.id, x.content) for x in store.get_messages("crash")] == [("a", "one"), ("b", "two")]
        assert store.add_message("crash", "user", "retry", id="b").content == "two"


def test_a_session_deleted_and_created_elsewhere_is_read_afresh(directory):
    with JsonConversationStore(directory) as store, JsonConversationStore(directory) as other:
        store.create_session("s")
        store.add_message("s", "user", "first life", id="m1")
        store.add_message("s", "user", "first life 2", id="m2")
        other.delete_session("s")
        other.create_session("s")
        other.add_message("s", "user", "second life", id="m2")
        assert store.add_message("s", "user", "retry", id="m2").content == "second life"
        m = store.add_message("s", "user", "new", id="m1")
        assert (m.seq, m.content) == (2, "new")


def test_state_reads_see_every_write_of_another_store_on_the_same_file(tmp_path):
    """Reads keep the parsed file: a write by another store object (another process alike), even one of the same
    size within the same clock tick, is seen by the very next read; and a returned value is the caller's own copy."""
    from praison_db.backends.jsonfile import JsonStateStore

    reader, writer = JsonStateStore(tmp_path / "state.json"), JsonStateStore(tmp_path / "state.json")
    writer.set("doc", {"n": 1})
    assert reader.get("doc") == {"n": 1}
    for i in range(300):
        writer.set("x", f"v{i:04d}")  # every file the same size, written faster than file times tick
        assert reader.get("x") == f"v{i:04d}"
        assert reader.get_many(["x", "doc"]) == {"x": f"v{i:04d}", "doc": {"n": 1}}
    mine = reader.get("doc")
    mine["n"] = 2
    assert reader.get("doc") == {"n": 1}
    writer.delete("x")
    assert reader.get("x") is None and not reader.exists("x")


# ---- files written before the open message model ----


def old_line(session_id: str, seq: int, role: str, content: str | None, second: int, **fields: object) -> bytes:
    """A message line exactly as the version before ``type`` and ``extra`` wrote it."""
    record = {
        "id": f"old-{seq}", "session_id": session_id, "seq": seq, "role": role, "content": content, "name": None,
        "tool_calls": None, "tool_call_id": None, "metadata": {}, "created_at": f"2026-01-01T10:00:{second:02d}Z",
    }
    record.update(fields)
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def test_files_of_the_previous_version_read_back_unchanged_and_go_on(tmp_path):
    directory = tmp_path / "sessions"
    directory.mkdir(mode=0o700)
    stem = session_file_stem("legacy")
    header = {
        "session_id": "legacy", "user_id": "u1", "agent_id": None, "session_type": "agent", "name": "old",
        "metadata": {"k": 1}, "created_at": "2026-01-01T10:00:00Z", "updated_at": "2026-01-01T10:00:00Z",
    }
    (directory / f"{stem}.session.json").write_text(json.dumps(header))
    call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}
    lines = [
        old_line("legacy", 1, "system", "Be brief.", 1),
        old_line("legacy", 2, "user", "Weather in Paris? é ✓", 2, metadata={"lang": "fr"}),
        old_line("legacy", 3, "assistant", None, 3, tool_calls=[call]),
        old_line("legacy", 4, "tool", "21.5", 4, tool_call_id="c1", name="weather"),
    ]
    path = directory / f"{stem}.jsonl"
    path.write_bytes(b"".join(lines))
    stored = [{**json.loads(line), "type": None, "extra": {}} for line in lines]
    items = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris? é ✓", "metadata": {"lang": "fr"}},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "21.5", "name": "weather", "tool_call_id": "c1"},
    ]

    with JsonConversationStore(directory) as store:
        session = store.get_session("legacy")
        assert (session.message_count, session.name, session.metadata) == (4, "old", {"k": 1})
        assert session.updated_at == datetime(2026, 1, 1, 10, 0, 4, tzinfo=timezone.utc)
        for read in (
            store.get_messages("legacy"),
            store.get_messages("legacy", limit=10),
            store.get_messages("legacy", after_seq=0, before_seq=5),
            list(store.iter_messages("legacy", batch_size=3)),
        ):
            assert [m.model_dump(mode="json") for m in read] == stored
            assert [m.to_item() for m in read] == items
        assert store.get_history("legacy")[2] == {"role": "assistant", "content": None, "tool_calls": [call]}
        assert store.export_session("legacy")["messages"] == stored
        assert store.damaged_files() == []

        # The session goes on: typed items beside the old lines, which are never rewritten.
        item = store.add_messages("legacy", [{"type": "reasoning", "id": "rs_1", "summary": [], "content": [1, 2.5]}])[0]
        assert (item.seq, item.role, item.extra) == (5, None, {"id": "rs_1", "summary": []})
        assert path.read_bytes().startswith(b"".join(lines))
        assert store.pop_message("legacy") == item
        old = store.pop_message("legacy")
        assert old is not None and old.model_dump(mode="json") == stored[3]
        assert path.read_bytes() == b"".join(lines[:3])
        assert store.add_message("legacy", "user", "asked again", id="old-4").seq == 4  # the popped id is free again
    with JsonConversationStore(directory) as fresh:  # nothing cached: read from the files alone
        assert [m.model_dump(mode="json") for m in fresh.get_messages("legacy")][:3] == stored[:3]
        assert fresh.get_session("legacy").message_count == 4


# ---- removing messages: on disk ----


def test_removals_cut_the_end_off_and_read_only_what_goes(store, monkeypatch):
    store.create_session("s")
    store.add_messages("s", [{"role": "user", "content": f"m{i}"} for i in range(2000)])
    path = messages_file(store, "s")
    before, inode = path.read_bytes(), path.stat().st_ino
    updated = store.get_session("s").updated_at
    store.add_message("s", "assistant", {"answer": [1, 2.5]}, id="last")
    parsed = count_parses(monkeypatch)
    popped = store.pop_message("s")
    assert popped is not None and (popped.id, popped.seq, popped.content) == ("last", 2001, {"answer": [1, 2.5]})
    assert len(parsed) <= 3  # the newest lines, never the 2000 before them
    assert path.read_bytes() == before and path.stat().st_ino == inode  # cut in place: no removed line, no marker
    session = store.get_session("s")
    assert session.message_count == 2000 and session.updated_at > updated
    parsed.clear()
    assert store.truncate("s", 1990) == 10 and len(parsed) <= 14
    assert path.read_bytes() == b"".join(before.splitlines(keepends=True)[:1990])
    parsed.clear()
    assert store.clear_messages("s") == 1990 and len(parsed) <= 4  # counted, not parsed
    assert path.read_bytes() == b"" and store.get_session("s").message_count == 0
    assert [p.name for p in store.directory.iterdir() if p.name.startswith(".tmp-")] == []
    assert store.add_message("s", "user", "fresh").seq == 1


def test_a_removal_does_not_make_another_store_read_the_whole_file_for_its_ids(directory, monkeypatch):
    with JsonConversationStore(directory) as store, JsonConversationStore(directory) as other:
        store.create_session("big")
        store.add_messages("big", [{"role": "user", "content": f"m{i}", "id": f"id-{i}"} for i in range(1000)])
        other.add_message("big", "user", "known to other", id="id-5")  # other has read every id once
        parsed = count_parses(monkeypatch)
        assert store.pop_message("big").id == "id-999"
        assert store.add_message("big", "user", "again", id="id-999").seq == 1000  # this store's ids stay exact
        assert len(parsed) <= 6
        # The other store sees the file cut under its ids: it reads them afresh once and never trusts a removed one.
        parsed.clear()
        assert other.add_message("big", "user", "retry", id="id-999").content == "again"
        assert other.add_message("big", "user", "new", id="id-1000").seq == 1001


def cut_record(path: Path, keep: int, moment: datetime) -> bytes:
    """The cut record a removal of every message after seq ``keep`` commits with (written here by hand)."""
    offset = 0
    for line in path.read_bytes().splitlines(keepends=True):
        if json.loads(line)["seq"] > keep:
            break
        offset += len(line)
    return (json.dumps({"seq": keep, "created_at": moment.isoformat(), "cut": offset}) + "\n").encode()


def test_a_crash_while_the_cut_record_is_written_leaves_the_old_messages(store):
    store.create_session("s")
    store.add_messages("s", [{"role": "user", "content": f"m{i}"} for i in range(1, 6)])
    path = messages_file(store, "s")
    intact = path.read_bytes()
    with open(path, "ab") as f:
        f.write(cut_record(path, 2, datetime.now(timezone.utc))[:25])  # torn: no newline
    assert [m.seq for m in store.get_messages("s")] == [1, 2, 3, 4, 5]
    assert [m.seq for m in store.get_messages("s", limit=2)] == [4, 5]
    assert store.count_messages("s") == 5 and store.damaged_files() == []
    assert store.add_message("s", "user", "m6").seq == 6
    assert path.read_bytes().startswith(intact) and path.read_bytes().count(b"\n") == 6


CRASH_MID_REMOVAL = """
import os, sys
from praison_db.backends.jsonfile import JsonConversationStore

directory, after_seq, crash_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = JsonConversationStore(directory)
store.get_session("s")
real, calls = os.fsync, []


def fsync(fd):
    real(fd)
    calls.append(fd)
    if len(calls) == crash_at:
        os._exit(3)  # the process dies right here: nothing after this line of the removal runs


os.fsync = fsync
store.truncate("s", after_seq)
os._exit(0)
"""


@pytest.mark.parametrize("crash_at", [1, 2, 3, 0], ids=["cut-record-durable", "header-written", "header-renamed", "none"])
def test_a_process_killed_mid_removal_leaves_the_new_state_which_the_next_write_completes(directory, crash_at):
    """The fsyncs of a removal, in order: the cut record (the commit point), the new header, its folder."""
    with JsonConversationStore(directory) as store:
        store.create_session("s", name="kept")
        store.add_messages("s", [{"role": "user", "content": f"m{i}", "id": f"id-{i}"} for i in range(1, 6)])
        path = messages_file(store, "s")
        kept_bytes = b"".join(path.read_bytes().splitlines(keepends=True)[:2])
        started = datetime.now(timezone.utc)
        proc = subprocess.run(
            [sys.executable, "-c", CRASH_MID_REMOVAL, str(directory), "2", str(crash_at)],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}, capture_output=True, timeout=60,
        )
        assert proc.returncode == (3 if crash_at else 0), proc.stderr.decode()
        if crash_at:
            assert path.read_bytes().startswith(path.read_bytes()[:0]) and b'"cut"' in path.read_bytes().splitlines()[-1]
        for reader in (store, JsonConversationStore(directory)):
            assert [m.content for m in reader.get_messages("s")] == ["m1", "m2"]
            assert [m.seq for m in reader.get_messages("s", limit=5)] == [1, 2]
            assert [m.seq for m in reader.iter_messages("s")] == [1, 2]
            session = reader.get_session("s")
            assert (session.name, session.message_count, reader.count_messages("s")) == ("kept", 2, 2)
            assert session.updated_at >= started
            assert [m["seq"] for m in reader.export_session("s")["messages"]] == [1, 2]
            assert reader.damaged_files() == []
        m = store.add_message("s", "user", "m3 again", id="id-3")
        assert (m.seq, m.content) == (3, "m3 again")
        assert path.read_bytes() == kept_bytes + JsonConversationStore._line(m)  # the cut record went with the rest
        assert store.get_session("s").updated_at >= started


def test_a_removal_that_fails_half_way_changes_nothing(store, monkeypatch):
    store.create_session("s")
    store.add_messages("s", [{"role": "user", "content": f"m{i}"} for i in range(1, 4)])
    path, header = messages_file(store, "s"), store.directory / f"{session_file_stem('s')}.session.json"
    messages_before, header_before = path.read_bytes(), header.read_bytes()
    real, calls = os.fsync, []

    def failing_fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:  # the new header's: the disk gives up after the cut record was committed
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StoreUnavailable):
        store.pop_message("s")
    monkeypatch.undo()
    assert path.read_bytes() == messages_before and header.read_bytes() == header_before
    assert [m.seq for m in store.get_messages("s")] == [1, 2, 3] and store.count_messages("s") == 3
    assert store.pop_message("s").content == "m3"


def test_a_cut_record_inside_the_file_is_reported_as_damage(store):
    store.create_session("s")
    store.add_messages("s", [{"role": "user", "content": f"m{i}"} for i in range(1, 4)])
    path = messages_file(store, "s")
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + cut_record(path, 1, datetime.now(timezone.utc)) + b"".join(lines[1:]))
    assert [d["problem"] for d in store.damaged_files()] == ["line 2 is not a message"]
    assert [m.seq for m in store.get_messages("s")] == [1, 2, 3]  # never read as a message


CHURN = """
import sys
from praison_db.backends.jsonfile import JsonConversationStore

pad = "x" * 3000
with JsonConversationStore(sys.argv[1]) as writer:
    for round_ in range(1, int(sys.argv[2]) + 1):
        keep = 30 - (round_ % 6) - 1
        writer.truncate("busy", keep)
        writer.add_messages("busy", [{"role": "user", "content": f"{s}:{round_}:{pad}"} for s in range(keep + 1, 31)])
"""


def test_reads_racing_removals_in_another_process_see_whole_states(directory):
    """Readers without the lock, against another process that keeps cutting and refilling the end of a session:
    every read is a run of seqs 1..n (or its newest part) of messages that were stored, never a gap or a torn line."""
    pad = "x" * 3000  # lines longer than the first block read from the end
    with JsonConversationStore(directory) as reader:
        reader.create_session("busy")
        reader.add_messages("busy", [{"role": "user", "content": f"{i}:0:{pad}"} for i in range(1, 31)])
        writer = subprocess.Popen(
            [sys.executable, "-c", CHURN, str(directory), "60"],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}, stderr=subprocess.PIPE,
        )
        problems: list[str] = []
        reads = [0]

        def check(messages: list[Message], newest: bool) -> None:
            seqs = [m.seq for m in messages]
            first = seqs[0] if seqs else 1
            whole = len(seqs) == 8 if newest else first == 1 and len(seqs) >= 24
            if seqs != list(range(first, first + len(seqs))) or not whole:
                problems.append(f"seqs {seqs}")
            problems.extend(f"message {m.seq} holds {m.content[:12]!r}" for m in messages if m.content.split(":")[0] != str(m.seq))

        def read() -> None:
            try:
                while writer.poll() is None:
                    check(reader.get_messages("busy", limit=8), newest=True)
                    check(reader.get_messages("busy"), newest=False)
                    check(list(reader.iter_messages("busy", batch_size=7)), newest=False)
                    if not 24 <= reader.get_session("busy").message_count <= 30:
                        problems.append("message_count out of range")
                    reads[0] += 1
            except Exception as e:  # noqa: BLE001 - reported with the other problems
                problems.append(repr(e))

        threads = [threading.Thread(target=read) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert writer.wait(timeout=120) == 0, writer.stderr.read().decode() if writer.stderr else ""
        assert problems == [] and reads[0] > 0
        assert [m.seq for m in reader.get_messages("busy")] == list(range(1, 31))


def refill(store: JsonConversationStore, keep: int, upto: int, mark: str, pad: str) -> None:
    """What another process does meanwhile: cut the session back to ``keep`` and append new messages up to ``upto``."""
    store.truncate("s", keep)
    store.add_messages("s", [{"role": "user", "content": f"{s}:{mark}:{pad}"} for s in range(keep + 1, upto + 1)])


def test_a_newest_n_read_that_a_removal_overlaps_reads_again(directory, monkeypatch):
    with JsonConversationStore(directory) as store, JsonConversationStore(directory) as other:
        store.create_session("s")
        store.add_messages("s", [{"role": "user", "content": f"{i}:old:{'x' * 3000}"} for i in range(1, 31)])
        real, lines_read = jsonfile._lines_before, [0]

        def lines_before(f: object, end: int) -> Iterator[tuple[int, bytes]]:
            for item in real(f, end):
                lines_read[0] += 1
                if lines_read[0] == 3:  # the read is under way, a block or two from the end
                    refill(other, 24, 30, "new", "y" * 2500)
                yield item

        monkeypatch.setattr(jsonfile, "_lines_before", lines_before)
        got = store.get_messages("s", limit=8)
        assert [m.seq for m in got] == list(range(23, 31))
        assert [m.content.split(":")[1] for m in got] == ["old"] * 2 + ["new"] * 6


def test_a_stream_that_a_removal_overlaps_goes_on_without_a_gap(directory):
    with JsonConversationStore(directory) as store, JsonConversationStore(directory) as other:
        store.create_session("s")
        store.add_messages("s", [{"role": "user", "content": f"{i}:old:{'x' * 3000}"} for i in range(1, 201)])
        stream = store.iter_messages("s", batch_size=10)
        first = [next(stream) for _ in range(60)]  # the first block read is ~85 messages: 61.. are in memory
        refill(other, 50, 200, "new", "y" * 2200)  # lines of another length: old offsets fall mid-line
        rest = list(stream)
        seqs = [m.seq for m in first + rest]
        assert seqs == list(range(1, 201))
        assert all(m.content.startswith(f"{m.seq}:") for m in first + rest)
        assert {m.content.split(":")[1] for m in rest if m.seq > 100} == {"new"}


# ---- removing messages: any mix of operations and crashes, against a plain list ----

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 3)),
        st.tuples(st.just("pop"), st.just(0)),
        st.tuples(st.just("truncate"), st.integers(0, 10)),
        st.tuples(st.just("add popped id"), st.just(0)),
        st.tuples(st.just("crash after the cut record"), st.integers(0, 10)),
        st.tuples(st.just("crash mid-append"), st.just(0)),
        st.tuples(st.just("reopen"), st.just(0)),
    ),
    max_size=20,
)


@settings(
    max_examples=int(os.environ.get("PRAISON_FUZZ_EXAMPLES", "30")),
    deadline=None,
    derandomize=os.environ.get("CI", "").lower() == "true",
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=OPS)
def test_any_mix_of_appends_removals_and_crashes_reads_like_a_list(tmp_path_factory, ops):
    directory = tmp_path_factory.mktemp("mix")
    store = JsonConversationStore(directory)
    store.create_session("s")
    path = messages_file(store, "s")
    model: list[tuple[str, str]] = []  # (id, content) of seq 1..n
    popped: list[str] = []
    pending = False  # a cut record ends the file (a removal a crash interrupted)
    try:
        for step, (op, n) in enumerate(ops):
            if op == "add":
                batch = [(f"m{step}-{i}", f"c{step}-{i}") for i in range(n)]
                stored = store.add_messages("s", [{"role": "user", "content": c, "id": i} for i, c in batch])
                assert [m.seq for m in stored] == list(range(len(model) + 1, len(model) + n + 1))
                model += batch
            elif op == "pop":
                m = store.pop_message("s")
                assert (m.id, m.seq) == (model[-1][0], len(model)) if model else m is None
                if model:
                    popped.append(model.pop()[0])
            elif op == "truncate":
                assert store.truncate("s", n) == max(0, len(model) - n)
                popped += [i for i, _ in model[n:]]
                del model[n:]
            elif op == "add popped id" and popped:
                content = f"again-{step}"
                assert store.add_message("s", "user", content, id=popped[-1]).seq == len(model) + 1
                model.append((popped.pop(), content))
            elif op == "crash after the cut record" and not pending and n < len(model):
                data = path.read_bytes()
                with open(path, "r+b") as f:  # as a removal does: a torn tail first goes, then the record is appended
                    f.truncate(data.rfind(b"\n") + 1)
                    f.seek(0, os.SEEK_END)
                    f.write(cut_record(path, n, datetime.now(timezone.utc)))
                popped += [i for i, _ in model[n:]]
                del model[n:]
                pending = True
                continue
            elif op == "crash mid-append" and not pending:
                with open(path, "ab") as f:
                    f.write(b'{"id":"torn","session_id":"s","seq":')
            elif op == "reopen":
                store.close()
                store = JsonConversationStore(directory)
                continue
            else:
                continue
            pending = False
            assert [m.id for m in store.get_messages("s")] == [i for i, _ in model]
            assert [(m.id, m.content) for m in store.get_messages("s", limit=2)] == model[-2:]
            assert store.get_session("s").message_count == store.count_messages("s") == len(model)
            assert [m.seq for m in store.iter_messages("s", batch_size=2)] == list(range(1, len(model) + 1))
            lines = path.read_bytes().splitlines()
            if op != "crash mid-append":
                assert all(json.loads(line)["id"] for line in lines)  # never a removed line or a cut record left
        assert [(m.id, m.content) for m in store.get_messages("s")] == model
        assert store.damaged_files() == []
    finally:
        store.close()
