"""LangChain's own chat-history tests, run against PraisonChatMessageHistory.

langchain-core's source distribution ships its unit tests. For the installed version, this test downloads it (once,
into pytest's cache folder), installs the test tools those tests need and this environment lacks (into the same
folder, never into the environment), and runs two of its files in a pytest subprocess:

- ``tests/unit_tests/chat_history/test_chat_history.py``: the history interface, sync and async;
- ``tests/unit_tests/runnables/test_history.py``: ``RunnableWithMessageHistory``, sync and async.

A conftest written next to them replaces ``InMemoryChatMessageHistory`` (what both files build their histories with)
by a PraisonChatMessageHistory on a fresh session of a praison_db URL: memory:// and a SQLite file. LangChain's own
conftest stays in force, so its blockbuster fixture fails an async test whose history blocks the event loop.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from praison_db.testing import in_ci

FILES = ("tests/unit_tests/chat_history/test_chat_history.py", "tests/unit_tests/runnables/test_history.py")

# Tests of the in-memory class itself, which no other history can pass; each is left out, with the reason.
DESELECTED = [
    # Asserts that InMemoryChatMessageHistory's docstring announces its deprecation and links LangChain's docs: a
    # property of that class's text. (The BaseChatMessageHistory case of the same test runs.)
    "tests/unit_tests/chat_history/test_chat_history.py::test_chat_history_deprecated[InMemoryChatMessageHistory]",
]

# Every other test of the two files passes: 5 of test_chat_history.py (after the one above) and 23 of test_history.py.
EXPECTED_PASSED = 28

# The test tools the two files' conftests import, and their requirement if pyproject.toml cannot be read.
TOOLS = {"blockbuster": "blockbuster", "pytest_mock": "pytest-mock"}

CONFTEST = '''\
"""Written by praison_db's tests/integrations/test_langchain_suite.py: LangChain's chat-history tests build their
histories with InMemoryChatMessageHistory; here each one is a PraisonChatMessageHistory on a fresh session of
$PRAISON_LANGCHAIN_URL."""

import os
import sys
import uuid

sys.path.append(os.environ["PRAISON_LANGCHAIN_TOOLS"])  # after the environment's packages: only what it lacks

import langchain_core.chat_history

from praison_db.integrations.langchain import PraisonChatMessageHistory

pytest_plugins = ["pytest_mock"]
URL = os.environ["PRAISON_LANGCHAIN_URL"]


class InMemoryChatMessageHistory(PraisonChatMessageHistory):
    """``InMemoryChatMessageHistory(messages=[...])``: a new session holding those messages."""

    def __init__(self, messages=None):
        super().__init__("lc-" + uuid.uuid4().hex, URL)
        if messages:
            self.add_messages(messages)

    def __eq__(self, other):
        # The in-memory class is a pydantic model: two are equal when they hold the same messages.
        return isinstance(other, PraisonChatMessageHistory) and self.messages == other.messages

    __hash__ = None


langchain_core.chat_history.InMemoryChatMessageHistory = InMemoryChatMessageHistory
'''

PYTEST_INI = """\
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
markers =
    requires: mark tests as requiring a specific library
    compile: mark placeholder test used to compile integration tests without running them
filterwarnings =
    ignore::langchain_core._api.beta_decorator.LangChainBetaWarning
"""


def _cannot(what: str, done: subprocess.CompletedProcess[str]) -> None:
    message = f"{what} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(f"SKIPPED: {message} (no network?)")


def _requirements(archive: tarfile.TarFile, top: str) -> list[str]:
    """Requirements of the test tools this environment lacks, with the bounds of langchain-core's test group."""
    missing = [name for module, name in TOOLS.items() if importlib.util.find_spec(module) is None]
    try:
        import tomllib

        extracted = archive.extractfile(f"{top}/pyproject.toml")
        assert extracted is not None
        group = tomllib.load(extracted)["dependency-groups"]["test"]
    except Exception:  # noqa: BLE001 - Python 3.10 or another layout: the bare names will do
        return missing
    pinned = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower(): r for r in group if isinstance(r, str)}
    return [pinned.get(name, name) for name in missing]


def _safe_members(archive: tarfile.TarFile, top: str) -> list[tarfile.TarInfo]:
    """The files under tests/, refusing anything that would land outside the folder."""
    members = []
    for member in archive.getmembers():
        if not member.name.startswith(f"{top}/tests/"):
            continue
        if member.name.startswith("/") or ".." in Path(member.name).parts or not (member.isfile() or member.isdir()):
            raise AssertionError(f"unexpected member in the langchain-core source distribution: {member.name}")
        members.append(member)
    return members


@pytest.fixture(scope="module")
def upstream(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """langchain-core's tests for the installed version, extracted, with the test tools they need."""
    version = metadata.version("langchain-core")
    cache = getattr(request.config, "cache", None)
    base = Path(cache.mkdir("langchain-core-tests")) if cache is not None else tmp_path_factory.mktemp("langchain-core-tests")
    top = f"langchain_core-{version}"
    root, tools, ready = base / top, base / f"tools-{version}", base / f"{top}.ready"
    if not ready.exists():
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             f"langchain-core=={version}", "-d", str(base)],
            capture_output=True, text=True, timeout=600,
        )
        if done.returncode != 0:
            _cannot(f"pip download langchain-core=={version}", done)
        with tarfile.open(base / f"{top}.tar.gz") as archive:
            archive.extractall(base, members=_safe_members(archive, top))  # noqa: S202 - members checked above
            needed = _requirements(archive, top)
        if needed:
            done = subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(tools), *needed],
                capture_output=True, text=True, timeout=600,
            )
            if done.returncode != 0:
                _cannot(f"pip install {' '.join(needed)}", done)
        (root / "conftest.py").write_text(CONFTEST, encoding="utf-8")
        (root / "pytest.ini").write_text(PYTEST_INI, encoding="utf-8")
        ready.write_text(version)
    tools.mkdir(exist_ok=True)
    return {"root": root, "tools": tools, "version": version}


def _outcomes(report: Path) -> dict[str, list[str]]:
    outcomes: dict[str, list[str]] = {"passed": [], "failed": [], "skipped": []}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            outcomes["failed"].append(name)
        elif case.find("skipped") is not None:
            outcomes["skipped"].append(name)
        else:
            outcomes["passed"].append(name)
    return outcomes


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_langchain_chat_history_suite(backend: str, upstream: dict[str, Any], tmp_path: Path) -> None:
    url = f"memory://lc{tmp_path.name}" if backend == "memory" else f"sqlite:///{tmp_path}/langchain.db"
    report = tmp_path / "report.xml"
    deselect = [arg for test in DESELECTED for arg in ("--deselect", test)]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", f"--junitxml={report}",
         *deselect, *FILES],
        cwd=upstream["root"], capture_output=True, text=True, timeout=600,
        env={**_environ(), "PRAISON_LANGCHAIN_URL": url, "PRAISON_LANGCHAIN_TOOLS": str(upstream["tools"])},
    )
    assert report.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    outcomes = _outcomes(report)
    assert outcomes["failed"] == [], done.stdout[-6000:]
    assert outcomes["skipped"] == []
    assert len(outcomes["passed"]) == EXPECTED_PASSED, outcomes["passed"]
    assert f"{EXPECTED_PASSED} passed, {len(DESELECTED)} deselected" in done.stdout


def _environ() -> dict[str, str]:
    # LangSmith tracing off, and no variable of this run's database choice leaking into the child's default.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LANGSMITH_", "LANGCHAIN_", "PRAISON_"))}
    return {**env, "LANGSMITH_TRACING": "false"}
