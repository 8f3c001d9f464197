"""The examples and DESIGN's "what a user writes" run as written on the embedded backends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ["sqlite:///conversations.db", "json:///{tmp}/sessions", "memory://"]


def run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(
        [sys.executable, *args],
        cwd=tmp_path,
        env={**os.environ, "PRAISON_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("url", EMBEDDED, ids=["sqlite", "json", "memory"])
def test_quickstart(tmp_path, url):
    out = run(tmp_path, str(ROOT / "examples" / "quickstart.py"), url.format(tmp=tmp_path))
    assert "#4 assistant It is 21°C in Paris." in out and "sessions of alice: ['quickstart']" in out and "turns: 1" in out


@pytest.mark.parametrize("url", [None, "sqlite:///conversations.db", "json:///{tmp}/agent"], ids=["default", "sqlite", "json"])
def test_agent_remembers_across_processes(tmp_path, url):
    args = [str(ROOT / "examples" / "agent_restart.py")] + ([url.format(tmp=tmp_path)] if url else [])
    assert "Nice to meet you, Alice" in run(tmp_path, *args)
    assert "Your name is Alice." in run(tmp_path, *args)


def test_design_snippet_with_environment_urls(tmp_path):
    code = """
from praison_db import db, Agent
store = db()
agent = Agent(name="Assistant", instructions="You are helpful.", db=store, session_id="user-123")
agent.chat("My name is Alice")
store.close()
store = db()
agent = Agent(name="Assistant", db=store, session_id="user-123")
print(agent.chat("What's my name?"))
print(store)
"""
    out = run(tmp_path, "-c", code, env={"PRAISON_DATABASE_URL": "sqlite:///env.db", "PRAISON_STATE_URL": "memory://"})
    assert "Your name is Alice." in out and "sqlite:///env.db" in out
    assert (tmp_path / "env.db").is_file()
