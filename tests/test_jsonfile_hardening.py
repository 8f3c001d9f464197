"""The JSON stores on a disk others can write to: planted links, permissions, damaged files, stray entries, time.

A symbolic link planted where the store keeps a file is refused with IntegrityError naming the file (the stored
data breaks an invariant the store relies on); nothing is read or written through it.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import praison_db
from praison_db import Agent, IntegrityError, db
from praison_db.backends import jsonfile
from praison_db.backends.jsonfile import JsonConversationStore, JsonStateStore, open_private, session_file_stem
from praison_db.base import EXPORT_FORMAT

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="POSIX file semantics")

SECRET = b"outside the store: must never change\n"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside.txt"
    path.write_bytes(SECRET)
    return path


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JsonConversationStore]:
    with JsonConversationStore(tmp_path / "sessions", lock_timeout=2) as s:
        yield s


def files(store: JsonConversationStore, session_id: str) -> dict[str, Path]:
    stem = session_file_stem(session_id)
    return {
        "header": store.directory / f"{stem}.session.json",
        "messages": store.directory / f"{stem}.jsonl",
        "lock": store.directory / ".locks" / f"{stem}.lock",
    }


def plant(path: Path, target: Path) -> None:
    if path.exists() or path.is_symlink():
        path.unlink()
    path.symlink_to(target)


def refused(call: Callable[[], Any], name: str) -> None:
    with pytest.raises(IntegrityError, match="symbolic link") as info:
        call()
    assert name in str(info.value)


# ---- planted links ----


def test_link_at_a_header_is_never_followed(store, outside):
    header = files(store, "h")["header"]
    plant(header, outside)
    for call in (
        lambda: store.get_session("h"),
        lambda: store.create_session("h"),
        lambda: store.get_or_create_session("h"),
        lambda: store.add_message("h", "user", "x"),
        lambda: store.update_session("h", name="n"),
        lambda: store.delete_session("h"),
        lambda: store.count_messages("h"),
    ):
        refused(call, header.name)
    assert store.list_sessions().items == []  # listing ignores it
    assert outside.read_bytes() == SECRET and header.is_symlink()


def test_link_at_a_messages_file_is_never_followed(store, outside):
    store.create_session("m")
    store.add_message("m", "user", "kept")
    messages = files(store, "m")["messages"]
    plant(messages, outside)
    for call in (
        lambda: store.add_message("m", "user", "x"),
        lambda: store.get_messages("m"),
        lambda: store.get_messages("m", limit=1),
        lambda: store.get_session("m"),
        lambda: store.export_session("m"),
        lambda: store.delete_session("m"),  # refused before anything is removed
    ):
        refused(call, messages.name)
    assert files(store, "m")["header"].exists()
    assert outside.read_bytes() == SECRET


def test_link_planted_before_a_session_is_created_is_not_truncated(store, outside):
    plant(files(store, "new")["messages"], outside)
    refused(lambda: store.create_session("new"), files(store, "new")["messages"].name)
    data = {"format": EXPORT_FORMAT, "session": {"session_id": "imp", "created_at": "2026-01-01T00:00:00+00:00",
                                                 "updated_at": "2026-01-01T00:00:00+00:00"}, "messages": []}
    plant(files(store, "imp")["messages"], outside)
    refused(lambda: store.import_session(data), files(store, "imp")["messages"].name)
    assert store.get_session("new") is None and store.get_session("imp") is None
    assert outside.read_bytes() == SECRET


def test_link_at_a_lock_file_is_never_followed(store, outside):
    store.create_session("l")
    lock = files(store, "l")["lock"]
    plant(lock, outside)
    refused(lambda: store.add_message("l", "user", "x"), f".locks/{lock.name}")
    refused(lambda: store.delete_session("l"), lock.name)
    plant(files(store, "l2")["lock"], outside)
    refused(lambda: store.create_session("l2"), files(store, "l2")["lock"].name)
    assert outside.read_bytes() == SECRET and store.get_session("l") is not None


def test_link_at_the_locks_folder_is_refused(tmp_path, outside):
    folder = tmp_path / "sessions"
    folder.mkdir()
    (folder / ".locks").symlink_to(tmp_path)
    refused(lambda: JsonConversationStore(folder), ".locks")


def test_locks_folder_swapped_for_a_link_later_is_refused(store, tmp_path):
    store.create_session("s")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    locks = store.directory / ".locks"
    for p in locks.iterdir():
        p.unlink()
    locks.rmdir()
    locks.symlink_to(elsewhere)
    refused(lambda: store.add_message("s", "user", "x"), ".locks")
    refused(lambda: store.create_session("t"), ".locks")
    assert list(elsewhere.iterdir()) == [] and store.count_messages("s") == 0


def test_fifo_at_a_header_fails_instead_of_hanging(store):
    os.mkfifo(files(store, "f")["header"])
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            store.get_session("f")
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - checked below
            outcome.append(e)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=30)  # a blocking open of the FIFO would wait here for a writer that never comes
    assert not reader.is_alive(), "get_session blocked on a FIFO"
    assert isinstance(outcome[0], IntegrityError) and "not a regular file" in str(outcome[0])


def test_link_at_the_state_file_or_its_lock_is_never_followed(tmp_path, outside):
    with JsonStateStore(tmp_path / "state.json") as state:
        state.set("k", 1)
        plant(tmp_path / "state.json", outside)
        refused(lambda: state.get("k"), "state.json")
        refused(lambda: state.set("k", 2), "state.json")
        refused(lambda: list(state.keys()), "state.json")
        assert outside.read_bytes() == SECRET
        (tmp_path / "state.json").unlink()
        plant(tmp_path / "state.json.lock", outside)
        refused(lambda: state.set("k", 3), "state.json.lock")
        refused(lambda: state.incr("n"), "state.json.lock")
    assert outside.read_bytes() == SECRET and not (tmp_path / "state.json").exists()


def _break_writes(session_dir: Path) -> None:
    """Make every JSON write fail (the lock folder is no longer a folder) while reads keep working."""
    locks = session_dir / ".locks"
    for p in locks.iterdir():
        p.unlink()
    locks.rmdir()
    locks.write_text("not a folder")


def test_link_at_a_spool_file_is_never_followed(tmp_path, outside, caplog):
    session_dir = tmp_path / "sessions"
    store = db(session_dir=session_dir, strict=False)
    agent = Agent(db=store, session_id="spooled")
    agent.chat("hello")
    spool = session_dir / "unsaved" / f"{session_file_stem('spooled')}.jsonl"
    spool.parent.mkdir()
    plant(spool, outside)
    _break_writes(session_dir)
    with caplog.at_level(logging.WARNING, logger="praison_db"):
        agent.chat("kept in memory only")
    assert [u["content"] for u in agent.unsaved][0] == "kept in memory only"
    assert any("symbolic link" in r.getMessage() and "agent.unsaved only" in r.getMessage() for r in caplog.records)
    assert outside.read_bytes() == SECRET
    # The helper the Agent opens spool files with refuses the link itself, for reading too.
    refused(lambda: open_private(spool, "r", root=session_dir), f"unsaved/{spool.name}")
    plant(Path(f"{spool}.lock"), outside)
    spool.unlink()
    with caplog.at_level(logging.WARNING, logger="praison_db"):
        agent.chat("again")
    assert outside.read_bytes() == SECRET and not spool.exists()
    store.close()


# ---- permissions ----


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)  # the worst case: nothing masked
    try:
        yield
    finally:
        os.umask(old)


def test_created_files_and_folders_are_owner_only(tmp_path, open_umask):
    session_dir = tmp_path / "home" / "sessions"
    store = db(session_dir=session_dir, strict=False)
    store.conversations.create_session("p")
    store.conversations.add_message("p", "user", "x")
    store.conversations.update_session("p", name="n")
    store.state.set("k", 1)
    agent = Agent(db=store, session_id="p")
    agent.chat("one")
    _break_writes(session_dir)
    agent.chat("spooled")  # writes the Agent's spool file and its lock
    store.close()
    stem = session_file_stem("p")
    expected = {
        "home", "sessions", f"{stem}.session.json", f"{stem}.jsonl", "state.json", "state.json.lock",
        "unsaved", f"unsaved/{stem}.jsonl", f"unsaved/{stem}.jsonl.lock",
    }
    # .locks was replaced by a file to break writes; its lock files are checked in the next case.
    created = [tmp_path / "home", *(p for p in (tmp_path / "home").rglob("*") if p.name != ".locks")]
    names = {str(p.relative_to(session_dir)) if session_dir in p.parents else p.name for p in created}
    assert names == expected
    for path in created:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_lock_files_and_lock_folder_are_owner_only(tmp_path, open_umask):
    with JsonConversationStore(tmp_path / "s") as store:
        store.create_session("x")
        assert stat.S_IMODE(os.stat(store.directory / ".locks").st_mode) == 0o700
        assert stat.S_IMODE(os.stat(store.directory).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(files(store, "x")["lock"]).st_mode) == 0o600


def test_an_existing_messages_file_is_made_owner_only_on_the_next_append(store):
    store.create_session("old")
    messages = files(store, "old")["messages"]
    os.chmod(messages, 0o644)  # as an older version under a lax umask left it
    store.add_message("old", "user", "x")
    assert stat.S_IMODE(messages.stat().st_mode) == 0o600


# ---- damaged files ----

DAMAGED_HEADERS = {
    "empty": b"",
    "truncated": b'{"session_id": "d", "created_at": "2026-01-01T00:',
    "not json": b"hello, world",
    "binary": bytes(range(256)) * 4,
    "a list": b"[1, 2, 3]",
    "missing fields": b'{"session_id": "d"}',
    "wrong types": b'{"session_id": 5, "created_at": [], "updated_at": {}}',
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "another session": None,  # filled in by the test: a valid header of another id
}


@pytest.mark.parametrize("kind", list(DAMAGED_HEADERS))
def test_a_damaged_header_is_a_typed_error_and_the_session_can_be_deleted(store, kind, caplog):
    store.create_session("d", user_id="u")
    store.add_message("d", "user", "x")
    store.create_session("fine")
    header = files(store, "d")["header"]
    if kind == "another session":
        header.write_bytes(files(store, "fine")["header"].read_bytes())
    else:
        header.write_bytes(DAMAGED_HEADERS[kind])
    for call in (
        lambda: store.get_session("d"),
        lambda: store.add_message("d", "user", "y"),
        lambda: store.update_session("d", name="n"),
        lambda: store.get_or_create_session("d"),
        lambda: store.export_session("d"),
    ):
        with pytest.raises(IntegrityError, match="is damaged") as info:
            call()
        assert header.name in str(info.value)
    with caplog.at_level(logging.WARNING, logger="praison_db"):
        assert [s.session_id for s in store.list_sessions().items] == ["fine"]  # not failing for everyone
    assert any(header.name in r.getMessage() for r in caplog.records)
    assert store.count_messages("d") == 1
    with pytest.raises(IntegrityError, match="without user_id"):  # the owner cannot be checked
        store.delete_session("d", user_id="u")
    assert header.exists()
    assert store.delete_session("d") is True
    assert store.get_session("d") is None and not files(store, "d")["messages"].exists()
    assert store.get_session("fine") is not None


def test_a_damaged_session_does_not_stop_delete_user_or_prune(store):
    store.create_session("bad", user_id="u")
    store.create_session("good", user_id="u")
    files(store, "bad")["header"].write_bytes(b"{")
    assert store.delete_user("u") == 1
    assert store.get_session("good") is None
    assert store.prune(older_than=timedelta(0)) == 0
    assert files(store, "bad")["header"].exists()


def test_a_message_line_of_the_wrong_shape_is_skipped_not_raised(store):
    store.create_session("w")
    store.add_message("w", "user", "one")
    with open(files(store, "w")["messages"], "ab") as f:
        f.write(b'{"seq": "two"}\n[1]\n{"seq": 9, "created_at": 5}\n')
    assert [m.content for m in store.get_messages("w")] == ["one"]
    assert store.get_session("w").message_count == 1
    assert store.add_message("w", "user", "two").seq == 2


DAMAGED_STATE = {
    "empty": b"",
    "truncated": b'{"format": "praison_db.state/v1", "items": {"k": [1, nu',
    "not json": b"state",
    "binary": bytes(range(256)),
    "a list": b"[]",
    "no items": b'{"format": "praison_db.state/v1"}',
    "items not a dict": b'{"items": [1]}',
    "item not a pair": b'{"items": {"k": 1}}',
    "bad expiry": b'{"items": {"k": [1, "soon"]}}',
}


@pytest.mark.parametrize("kind", list(DAMAGED_STATE))
def test_a_damaged_state_file_is_a_typed_error_and_stays_as_it_was(tmp_path, kind):
    path = tmp_path / "state.json"
    path.write_bytes(DAMAGED_STATE[kind])
    with JsonStateStore(path) as state:
        for call in (
            lambda: state.get("k"),
            lambda: state.set("k", 1),
            lambda: state.delete("k"),
            lambda: state.incr("n"),
            lambda: list(state.keys()),
            lambda: state.clear(),
        ):
            with pytest.raises(IntegrityError, match="is damaged") as info:
                call()
            assert str(path) in str(info.value) and "move it aside" in str(info.value)
        assert state.damaged_files() and state.damaged_files()[0]["file"] == "state.json"
    assert path.read_bytes() == DAMAGED_STATE[kind]


# ---- stray entries ----


def test_stray_entries_are_ignored_by_listing(store, tmp_path):
    store.create_session("a", user_id="u")
    store.create_session("b", user_id="u")
    d = store.directory
    (d / "x.session.json").mkdir()
    (d / f"{session_file_stem('y')}.jsonl").mkdir()
    (d / "notes.txt").write_text("hello")
    (d / "README.md").write_text("hello")
    (d / ".session.json").write_text("{}")
    (d / "dangling.session.json").symlink_to(tmp_path / "nowhere")
    (d / "linked.session.json").symlink_to(files(store, "a")["header"])
    (d / "sub").mkdir()
    assert sorted(s.session_id for s in store.list_sessions().items) == ["a", "b"]
    assert sorted(s.session_id for s in store.iter_sessions(user_id="u")) == ["a", "b"]
    assert store.prune(older_than=timedelta(days=1)) == 0
    assert store.delete_user("u") == 2
    assert store.list_sessions().items == []
    assert (d / "x.session.json").is_dir() and (d / "notes.txt").read_text() == "hello"


# ---- doctor ----

ROOT = Path(praison_db.__file__).resolve().parent.parent


def doctor(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PRAISON_DATABASE_URL", "DATABASE_URL", "PRAISON_STATE_URL")}
    env.update(PRAISON_HOME=str(home), PYTHONPATH=str(ROOT), COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "praison_db.cli", "doctor", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_doctor_lists_damaged_files_of_a_json_store(tmp_path, outside):
    home = tmp_path / "home"
    with db(session_dir=home / "sessions") as store:
        conv = store.conversations
        for sid in ("ok", "bad-header", "bad-lines", "linked"):
            conv.create_session(sid)
            conv.add_message(sid, "user", "x")
        store.state.set("k", 1)
    sessions = home / "sessions"
    files_of = {sid: files(conv, sid) for sid in ("bad-header", "bad-lines", "linked")}
    files_of["bad-header"]["header"].write_bytes(b"\x00\xff garbage")
    with open(files_of["bad-lines"]["messages"], "ab") as f:
        f.write(b"not a message\n")
    plant(files_of["linked"]["messages"], outside)
    (sessions / "state.json").write_text("{")
    (sessions / "notes.txt").write_text("not ours, not reported")
    (sessions / "unsaved").mkdir()
    (sessions / "unsaved" / f"{session_file_stem('ok')}.jsonl").symlink_to(outside)

    proc = doctor(home, "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    conv_report, state_report = report["stores"]
    assert report["ok"] is False and conv_report["ok"] is False and state_report["ok"] is False
    damaged = {d["file"]: d["problem"] for d in conv_report["damaged_files"]}
    assert set(damaged) == {
        files_of["bad-header"]["header"].name,
        files_of["bad-lines"]["messages"].name,
        files_of["linked"]["messages"].name,
        f"unsaved/{session_file_stem('ok')}.jsonl",
    }
    assert damaged[files_of["linked"]["messages"].name] == "a symbolic link"
    assert damaged[files_of["bad-lines"]["messages"].name] == "line 2 is not a message"
    assert [d["file"] for d in state_report["damaged_files"]] == ["state.json"]
    assert "4 damaged files" in conv_report["error"]
    assert outside.read_bytes() == SECRET

    human = doctor(home)
    assert human.returncode == 1 and "Traceback" not in human.stderr
    assert "damaged files" in human.stdout
    for name in damaged:
        assert name in human.stdout
    assert "notes.txt" not in human.stdout


def test_doctor_reports_no_damaged_files_on_a_sound_json_store(tmp_path):
    home = tmp_path / "home"
    with db(session_dir=home / "sessions") as store:
        store.conversations.create_session("s")
        store.conversations.add_message("s", "user", "x")
    proc = doctor(home, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [s["damaged_files"] for s in json.loads(proc.stdout)["stores"]] == [[], []]


# ---- time ----


def _export(session_id: str, stamp: datetime, messages: int = 1) -> dict[str, Any]:
    return {
        "format": EXPORT_FORMAT,
        "session": {"session_id": session_id, "created_at": stamp.isoformat(), "updated_at": stamp.isoformat()},
        "messages": [
            {"id": f"{session_id}-{i}", "session_id": session_id, "seq": i, "role": "user", "content": str(i),
             "created_at": stamp.isoformat()}
            for i in range(1, messages + 1)
        ],
    }


def _all_pages(store: JsonConversationStore, page_size: int) -> list[str]:
    listed: list[str] = []
    cursor = None
    for _ in range(50):
        page = store.list_sessions(limit=page_size, cursor=cursor)
        listed += [s.session_id for s in page.items]
        cursor = page.next_cursor
        if cursor is None:
            return listed
    raise AssertionError("the cursor never ended")


@pytest.mark.parametrize("page_size", [1, 2, 3, 10])
def test_a_future_dated_session_is_listed_once_after_an_update_and_appends(store, page_size):
    now = datetime.now(timezone.utc)
    store.import_session(_export("future", now + timedelta(days=1)))
    store.add_message("future", "user", "after the import")
    store.update_session("future", name="renamed")  # rewrites the header, at this machine's time
    store.add_message("future", "user", "and after the update")
    for i in range(4):  # sessions active after all of that, but before the future one's stamp
        store.import_session(_export(f"later-{i}", now + timedelta(hours=1, seconds=i)))
    listed = _all_pages(store, page_size)
    assert listed == ["future", "later-3", "later-2", "later-1", "later-0"]
    session = store.get_session("future")
    assert session.updated_at == now + timedelta(days=1) and session.message_count == 3


def test_file_times_cover_activity_stamped_ahead_of_the_file_system(store, monkeypatch):
    # This machine's clock ahead of the file server's: what the listing relies on must still hold.
    from praison_db import base

    ahead = datetime.now(timezone.utc) + timedelta(hours=2)
    monkeypatch.setattr(base, "utcnow", lambda: ahead)
    store.create_session("fast")
    store.add_message("fast", "user", "x")
    store.update_session("fast", name="n")
    paths = files(store, "fast")
    assert paths["header"].stat().st_mtime_ns >= jsonfile._ns(ahead)
    assert paths["messages"].stat().st_mtime_ns >= jsonfile._ns(ahead)


def test_a_session_copied_without_its_file_times_is_listed_once_from_then_on(store):
    now = datetime.now(timezone.utc)
    store.import_session(_export("copied", now + timedelta(days=1)))
    for i in range(3):
        store.import_session(_export(f"other-{i}", now + timedelta(hours=1, seconds=i)))
    past = int((now - timedelta(days=3)).timestamp() * 1e9)
    for path in files(store, "copied").values():
        if path.exists():
            os.utime(path, ns=(past, past))  # what a copy that does not keep file times leaves
    assert store.list_sessions(limit=100).items[0].session_id == "copied"
    assert _all_pages(store, 1) == ["copied", "other-2", "other-1", "other-0"]


def test_updated_at_never_moves_back_after_a_future_import(store):
    stamp = datetime.now(timezone.utc) + timedelta(days=1)
    store.import_session(_export("ahead", stamp, messages=2))
    seen = [store.get_session("ahead").updated_at]
    store.add_message("ahead", "user", "now")
    seen.append(store.get_session("ahead").updated_at)
    seen.append(store.update_session("ahead", metadata={"k": 1}).updated_at)
    store.add_messages("ahead", [{"role": "user", "content": "a"}])
    seen.append(store.get_session("ahead").updated_at)
    seen.append(store.list_sessions().items[0].updated_at)
    assert seen == [stamp] * 5
    header = json.loads(files(store, "ahead")["header"].read_text())
    assert datetime.fromisoformat(header["updated_at"]) == stamp


@pytest.mark.parametrize("scheme", ["json", "file"])
def test_a_folder_url_with_credentials_is_refused(scheme, tmp_path):
    from praison_db import ConfigError, db

    with pytest.raises(ConfigError, match="takes no user or password") as info:
        db(f"{scheme}://agent:S3cr3tPW@{tmp_path}/sessions", session_dir=tmp_path)
    assert "S3cr3tPW" not in str(info.value)
    assert not (tmp_path / "sessions").exists()
