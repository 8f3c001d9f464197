"""The praison-db command line, run as a real subprocess (``python -m praison_db.cli``) against real stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import praison_db
from praison_db import db

ROOT = Path(praison_db.__file__).resolve().parent.parent
URL_VARS = ("PRAISON_DATABASE_URL", "DATABASE_URL", "PRAISON_STATE_URL", "PRAISON_DEBUG")


def run(home: Path, *args: str, input: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in URL_VARS}
    environ.update(PRAISON_HOME=str(home), PYTHONPATH=str(ROOT), COLUMNS="200", **env)
    return subprocess.run(
        [sys.executable, "-m", "praison_db.cli", *args],
        env=environ,
        cwd=home.parent,
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def seeded(home: Path) -> dict[str, Any]:
    """Two sessions in the default JSON store under PRAISON_HOME, written through the library."""
    with db(session_dir=home / "sessions") as store:
        store.conversations.create_session("s-alice", user_id="alice", agent_id="Assistant")
        store.conversations.add_messages(
            "s-alice",
            [{"role": "user", "content": "My name is Alice"}, {"role": "assistant", "content": "Hi [bold]Alice[/bold]"}],
        )
        store.conversations.create_session("s-bob", user_id="bob")
        store.conversations.add_message("s-bob", "user", "hello")
    return {"ids": {"s-alice", "s-bob"}}


def test_help_lists_the_commands(home: Path) -> None:
    proc = run(home, "--help")
    assert proc.returncode == 0
    for command in ("demo", "sessions", "doctor", "migrate"):
        assert command in proc.stdout
    assert "_demo-resume" not in proc.stdout
    sessions = run(home, "sessions", "--help")
    for command in ("list", "show", "delete"):
        assert command in sessions.stdout


def test_demo_resumes_the_conversation_in_a_second_process(home: Path) -> None:
    proc = run(home, "demo")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Your name is Alice." in proc.stdout
    assert "Your favourite colour is blue." in proc.stdout
    assert "Process 2" in proc.stdout and "restored 4 messages" in proc.stdout
    runs = list((home / "demo").iterdir())
    assert len(runs) == 1 and list(runs[0].glob("demo-*.jsonl"))


def test_demo_on_sqlite(home: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    proc = run(home, "demo", "--database-url", url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Your name is Alice." in proc.stdout
    with db(url) as store:
        (session,) = store.conversations.list_sessions().items
        assert session.message_count == 8


def test_demo_refuses_a_store_that_dies_with_its_process(home: Path) -> None:
    assert "outlives a process" in assert_one_line_error(run(home, "-d", "memory://", "demo"))


def test_sessions_list_json(home: Path, seeded: dict[str, Any]) -> None:
    proc = run(home, "sessions", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert {s["session_id"] for s in data["sessions"]} == seeded["ids"]
    assert data["next_cursor"] is None

    only_bob = json.loads(run(home, "sessions", "list", "--json", "--user-id", "bob").stdout)
    assert [s["session_id"] for s in only_bob["sessions"]] == ["s-bob"]

    first_page = json.loads(run(home, "sessions", "list", "--json", "--limit", "1").stdout)
    assert len(first_page["sessions"]) == 1 and first_page["next_cursor"]

    human = run(home, "sessions", "list")
    assert human.returncode == 0 and "s-alice" in human.stdout and "s-bob" in human.stdout


def test_sessions_show(home: Path, seeded: dict[str, Any]) -> None:
    proc = run(home, "sessions", "show", "s-alice", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["session"]["user_id"] == "alice"
    assert [m["content"] for m in data["messages"]] == ["My name is Alice", "Hi [bold]Alice[/bold]"]
    assert [m["seq"] for m in json.loads(run(home, "sessions", "show", "s-alice", "--json", "--limit", "1").stdout)["messages"]] == [2]

    human = run(home, "sessions", "show", "s-alice")
    assert human.returncode == 0
    assert "My name is Alice" in human.stdout
    assert "[bold]Alice[/bold]" in human.stdout  # user text is shown as text, not as Rich markup

    assert "no session 'nope'" in assert_one_line_error(run(home, "sessions", "show", "nope"))


def test_sessions_delete(home: Path, seeded: dict[str, Any]) -> None:
    refused = run(home, "sessions", "delete", "s-bob")  # no --yes and nobody to answer the prompt
    assert refused.returncode != 0
    assert "s-bob" in run(home, "sessions", "list").stdout

    proc = run(home, "sessions", "delete", "s-bob", "--yes", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"session_id": "s-bob", "deleted": True, "messages": 1}
    remaining = json.loads(run(home, "sessions", "list", "--json").stdout)["sessions"]
    assert [s["session_id"] for s in remaining] == ["s-alice"]

    again = run(home, "sessions", "delete", "s-bob", "--yes", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["deleted"] is False

    confirmed = run(home, "sessions", "delete", "s-alice", input="y\n")
    assert confirmed.returncode == 0 and "deleted session s-alice" in confirmed.stdout


def _check_doctor_report(proc: subprocess.CompletedProcess[str], backend: str) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True and report["praison_db"] == praison_db.__version__
    assert [s["role"] for s in report["stores"]] == ["conversations", "state"]
    for store in report["stores"]:
        assert store["ok"] and store["backend"] == backend
        assert isinstance(store["latency_ms"], (int, float)) and store["latency_ms"] >= 0
    return report


def test_doctor_json_on_sqlite(home: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'doctor.db'}"
    report = _check_doctor_report(run(home, "-d", url, "doctor", "--json"), "sqlite")
    for store in report["stores"]:
        assert store["url"] == url
        assert store["schema"]["current"] == store["schema"]["expected"] >= 1
        assert "sqlalchemy" in store["versions"] and store["server_version"]
    with db(url) as store:  # the probe cleaned up after itself
        assert list(store.state.keys()) == []
        assert store.conversations.list_sessions().items == []


def test_doctor_json_on_the_default_json_store(home: Path) -> None:
    report = _check_doctor_report(run(home, "doctor", "--json"), "json")
    assert report["stores"][0]["url"] == f"json://{home / 'sessions'}"
    assert report["stores"][1]["schema"] is None
    human = run(home, "doctor")
    assert human.returncode == 0 and "round trip" in human.stdout and " ms " in human.stdout


def test_doctor_hides_the_password_of_an_unreachable_database(home: Path) -> None:
    url = "postgresql://u:s3cret@127.0.0.1:1/x"
    human = run(home, "-d", url, "doctor")
    assert human.returncode != 0
    assert "s3cret" not in human.stdout + human.stderr and "Traceback" not in human.stderr
    assert "u:***@127.0.0.1" in human.stderr

    machine = run(home, "doctor", "--json", PRAISON_DATABASE_URL=url)
    assert machine.returncode != 0 and "s3cret" not in machine.stdout + machine.stderr
    report = json.loads(machine.stdout)
    assert report["ok"] is False and "unavailable" in report["error"]


def test_migrate_is_idempotent(home: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'migrate.db'}"
    first = run(home, "migrate", url, "--json")
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    assert data["before"] == 0 and data["after"] >= 1 and data["changed"] is True
    second = run(home, "migrate", url)
    assert second.returncode == 0
    assert f"version {data['after']} → {data['after']} (already up to date)" in second.stdout


def test_errors_are_one_line_without_traceback(home: Path) -> None:
    assert "did you mean mysql://" in assert_one_line_error(run(home, "-d", "mysq://u:pw@h/x", "sessions", "list"))
    assert "SQL URLs" in assert_one_line_error(run(home, "migrate", "json:///tmp/x"))
    assert "needs a SQL database URL" in assert_one_line_error(run(home, "migrate"))


def test_missing_cli_extra_is_one_line(home: Path) -> None:
    code = "import sys; sys.modules['typer'] = None; from praison_db.cli import main; main()"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stdout + proc.stderr == "the praison-db CLI needs: pip install 'praison-db[cli]'\n"
