"""praison_db.testing is usable by a backend that is not ours: a package installed beside praison-db registers a
scheme through the ``praison_db.backends`` entry point, and the shipped suite runs against it from the command line,
on the sync and the async API, without a test file of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from praison_db import ConfigError
from praison_db.registry import entry_for

PACKAGE = '''
from praison_db.backends.memory import MemoryConversationStore, MemoryStateStore


class ThirdConversationStore(MemoryConversationStore):
    """A third-party backend: the in-process store under a scheme of its own."""


class ThirdStateStore(MemoryStateStore):
    pass


def register():
    import praison_db

    praison_db.register("thirdparty", conversations=ThirdConversationStore, state=ThirdStateStore)
'''


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A folder holding an installed distribution (its dist-info with an entry point) and its package."""
    (tmp_path / "thirdparty_backend.py").write_text(textwrap.dedent(PACKAGE))
    info = tmp_path / "thirdparty_backend-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-backend\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[praison_db.backends]\nthirdparty = thirdparty_backend:register\n")
    return tmp_path


def _run(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, *args], cwd=site, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def test_an_entry_point_registers_a_scheme_on_first_use(site: Path) -> None:
    done = _run(
        site,
        "-c",
        "from praison_db import db\n"
        "with db('thirdparty://x') as store:\n"
        "    store.conversations.create_session('s')\n"
        "    print(type(store.conversations).__name__, type(store.state).__name__)",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ThirdConversationStore", "ThirdStateStore"]


def test_the_suite_runs_on_a_third_party_backend_from_the_command_line(site: Path) -> None:
    done = _run(
        site,
        "-m", "pytest", "-q", "-p", "praison_db.testing.plugin", "--pyargs", "praison_db.testing.suite",
        "--praison-url", "third=thirdparty://{uid}", "-m", "not slow", "-k", "not fuzz", "-p", "no:cacheprovider",
    )
    tail = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    passed = int(tail.split(" passed")[0].split()[-1])
    assert passed > 150, tail  # every case but the fuzz and slow ones, on the sync and the async API
    assert "async-third" in _run(
        site, "-m", "pytest", "--collect-only", "-q", "-p", "praison_db.testing.plugin", "--pyargs",
        "praison_db.testing.suite.test_state", "--praison-url", "third=thirdparty://{uid}",
    ).stdout


def test_a_bad_praison_url_option_is_a_usage_error(site: Path) -> None:
    done = _run(site, "-m", "pytest", "-p", "praison_db.testing.plugin", "--praison-url", "nourl", "--co", "-q")
    assert done.returncode != 0 and "--praison-url takes NAME=URL_TEMPLATE" in done.stderr + done.stdout


def test_an_unknown_scheme_still_names_the_closest_known_one() -> None:
    with pytest.raises(ConfigError, match="did you mean redis://"):
        entry_for("rediz")
