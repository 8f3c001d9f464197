"""What is specific to the JSON DefaultSessionStore: files, crashes, locks."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

from praison_db import StoreUnavailable
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


def test_state_file_is_replaced_atomically(tmp_path):
    from praison_db.backends.jsonfile import JsonStateStore

    with JsonStateStore(tmp_path / "state.json") as state:
        state.set("a", 1)
        state.set("b", {"x": [1, 2]})
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert json.loads((tmp_path / "state.json").read_text())["items"]["b"][0] == {"x": [1, 2]}


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
