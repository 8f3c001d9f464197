"""``praison-db export | import | copy | prune`` as real subprocesses against real stores."""

from __future__ import annotations

import gzip
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from praison_db import db
from tests.test_cli import assert_one_line_error, run


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def source(tmp_path: Path, home: Path) -> str:
    """A SQLite store with two users' sessions and some state."""
    url = f"sqlite:///{tmp_path / 'source.db'}"
    with db(url, session_dir=home / "sessions") as store:
        for sid, user in (("s-alice", "alice"), ("s-bob", "bob")):
            store.conversations.create_session(sid, user_id=user, metadata={"who": user})
            store.conversations.add_messages(sid, [{"role": "user", "content": f"{sid} {i}", "id": f"{sid}-{i}"} for i in range(25)])
        store.state.set("greeting", "hello", ttl=600)
    return url


def summary(proc: Any) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


def messages_of(url: str, home: Path, sid: str) -> list[Any]:
    with db(url, session_dir=home / "sessions") as store:
        return store.conversations.get_messages(sid)


def test_export_gzip_then_import_round_trips(home, tmp_path, source):
    backup = tmp_path / "backup.jsonl.gz"
    out = summary(run(home, "export", source, "-o", str(backup)))
    assert (out["sessions"], out["messages"], out["state"]) == (2, 50, 1)
    with gzip.open(backup, "rt") as f:
        assert json.loads(f.readline())["format"] == "praison_db.export"
    target = f"sqlite:///{tmp_path / 'target.db'}"
    out = summary(run(home, "import", target, str(backup)))
    assert (out["sessions"], out["messages"], out["state"]) == (2, 50, 1)
    assert messages_of(target, home, "s-bob") == messages_of(source, home, "s-bob")
    again = summary(run(home, "import", target, str(backup), "--json"))
    assert (again["messages"], again["messages_present"]) == (0, 50)


def test_export_to_stdout_and_import_from_stdin(home, tmp_path, source):
    exported = run(home, "export", source, "--user", "alice", "-o", "-")
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stderr.strip().splitlines()[-1])["sessions"] == 1  # the summary is not in the data
    target = f"sqlite:///{tmp_path / 'target.db'}"
    out = summary(run(home, "import", target, "-", input=exported.stdout))
    assert (out["sessions"], out["messages"], out["state"]) == (1, 25, 0)
    assert [m.id for m in messages_of(target, home, "s-alice")] == [f"s-alice-{i}" for i in range(25)]
    assert messages_of(target, home, "s-bob") == []


def test_copy_json_to_sqlite_is_resumable_and_filters(home, tmp_path, source):
    folder = tmp_path / "json-store"
    json_url = f"json://{folder}"
    assert summary(run(home, "copy", source, json_url, "--session", "s-bob"))["sessions"] == 1
    out = summary(run(home, "copy", source, json_url))
    assert (out["sessions"], out["messages"], out["messages_present"]) == (2, 25, 25)
    target = f"sqlite:///{tmp_path / 'target.db'}"
    assert summary(run(home, "copy", json_url, target))["messages"] == 50
    assert messages_of(target, home, "s-alice") == messages_of(source, home, "s-alice")


def test_import_conflicts_fail_in_one_line_unless_told(home, tmp_path, source):
    backup = tmp_path / "backup.jsonl"
    summary(run(home, "export", source, "-o", str(backup), "--no-state"))
    target = f"sqlite:///{tmp_path / 'target.db'}"
    with db(target, session_dir=home / "sessions") as store:
        store.conversations.create_session("s-alice", user_id="alice")
        store.conversations.add_message("s-alice", "user", "mine", id="other")
    line = assert_one_line_error(run(home, "import", target, str(backup)))
    assert "s-alice" in line and "--on-conflict" in line
    assert summary(run(home, "import", target, str(backup), "--on-conflict", "skip"))["sessions_skipped"] == 1
    assert [m.id for m in messages_of(target, home, "s-alice")] == ["other"]
    assert summary(run(home, "import", target, str(backup), "--on-conflict", "replace"))["sessions_replaced"] == 1
    assert len(messages_of(target, home, "s-alice")) == 25


def test_damaged_file_is_one_line_naming_the_line(home, tmp_path, source):
    backup = tmp_path / "backup.jsonl"
    summary(run(home, "export", source, "-o", str(backup)))
    lines = backup.read_bytes().splitlines(keepends=True)
    backup.write_bytes(b"".join(lines[:10]))
    line = assert_one_line_error(run(home, "import", f"sqlite:///{tmp_path / 't.db'}", str(backup)))
    assert "line 10" in line and "truncated" in line


def test_prune_dry_run_then_for_real(home, tmp_path, source):
    with db(source, session_dir=home / "sessions") as store:
        store.conversations.create_session("fresh")
    old = summary(run(home, "prune", source, "--older-than", "0s", "--dry-run"))
    assert (old["sessions"], old["messages"], old["dry_run"]) == (3, 50, True)
    assert summary(run(home, "prune", source, "--older-than", "1d"))["sessions"] == 0
    assert summary(run(home, "prune", source, "--older-than", "0s"))["sessions"] == 3
    with db(source, session_dir=home / "sessions") as store:
        assert store.conversations.prune(older_than=timedelta(0)) == 0
    assert "--older-than" in assert_one_line_error(run(home, "prune", source, "--older-than", "soon"))


def test_errors_never_show_a_password(home, tmp_path, source):
    proc = run(home, "copy", source, "postgresql://ai:s3cr3t-pw@127.0.0.1:1/ai")
    line = assert_one_line_error(proc)
    assert "s3cr3t-pw" not in proc.stderr + proc.stdout and "***" in line
    assert "--since" in assert_one_line_error(run(home, "export", source, "--since", "last tuesday", "-o", str(tmp_path / "x")))
