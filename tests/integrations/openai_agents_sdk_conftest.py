"""Copied as ``conftest.py`` into the root of the OpenAI Agents SDK's source distribution, so that the SDK's own
session tests run against PraisonSession (see tests/integrations/test_openai_agents_suite.py).

The SDK's tests build their sessions with ``SQLiteSession(session_id, db_path, ...)`` and
``AsyncSQLiteSession(...)``; both names are bound here, before any test module is imported, to classes with those
constructors that make a PraisonSession on the backend under test instead. A ``db_path`` names one database: every
session built on the same path shares it, as with SQLite; ``":memory:"`` (the default) is a fresh, private one.

Environment:
    PRAISON_OA_URL: the URL template of the backend; ``{path}`` becomes a SQLite file for the ``db_path``,
        ``{key}`` a short name unique to it (a memory:// store, a table or key prefix).
    PRAISON_OA_TMP: the folder the files of ``":memory:"`` databases go in.
    PRAISON_OA_FILES: the test files run whole; in the other collected files only tests that build a session.
    PRAISON_OA_DESELECT: a file listing the tests not to run, one per line: a node id, or one without its
        parameters for every case of that test.
    PRAISON_OA_REPORT: where to write the outcome of each test and whether it built a PraisonSession (JSON).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

import agents
import agents.extensions.memory
import agents.extensions.memory.async_sqlite_session
import agents.memory
from praison_db.integrations.openai_agents import PraisonSession

_TEMPLATE = os.environ["PRAISON_OA_URL"]
_TMP = Path(os.environ["PRAISON_OA_TMP"])
_WHOLE_FILES = {name for name in os.environ.get("PRAISON_OA_FILES", "").split(",") if name}
_NAMES = ("SQLiteSession", "AsyncSQLiteSession")
_built = [False]  # whether the running test has built a PraisonSession
_tests: dict[str, dict[str, Any]] = {}
_selection: dict[str, Any] = {"deselect_matched": [], "deselected_listed": 0, "deselected_unrelated": 0}


def praison_url(db_path: str | os.PathLike[str]) -> str:
    """The praison URL standing for one SQLite ``db_path`` of the SDK's tests."""
    if str(db_path) == ":memory:":
        key = uuid.uuid4().hex[:12]
        path = _TMP / f"{key}.db"
    else:
        path = Path(db_path).expanduser().resolve()
        key = hashlib.sha256(str(path).encode()).hexdigest()[:12]
        path = path.with_name(path.name + ".praison.db")
    return _TEMPLATE.format(path=path, key=key)


class SQLiteSession(PraisonSession):
    """SQLiteSession's constructor; a PraisonSession underneath."""

    def __init__(
        self,
        session_id: str,
        db_path: str | os.PathLike[str] = ":memory:",
        sessions_table: str = "agent_sessions",
        messages_table: str = "agent_messages",
        session_settings: Any = None,
    ) -> None:
        _built[0] = True
        super().__init__(session_id, praison_url(db_path), session_settings=session_settings)
        self.db_path = db_path


class AsyncSQLiteSession(SQLiteSession):
    """AsyncSQLiteSession's constructor and its awaited ``close()``; a PraisonSession underneath."""

    async def close(self) -> None:  # type: ignore[override]
        await self.aclose()


for _module in (agents, agents.memory):
    _module.SQLiteSession = SQLiteSession  # type: ignore[attr-defined]
# AsyncSQLiteSession's own module too: one test file imports the class from there. (SQLiteSession stays in its
# module: EncryptedSession checks for the real class there to pick its SQLite-only pop.)
for _module in (agents.extensions.memory, agents.extensions.memory.async_sqlite_session):
    _module.AsyncSQLiteSession = AsyncSQLiteSession  # type: ignore[attr-defined]


def _builds_a_session(item: pytest.Item) -> bool:
    function = getattr(item, "function", None)
    try:
        source = inspect.getsource(function) if function is not None else ""
    except (OSError, TypeError):
        return False
    return any(name in source for name in _NAMES)


def _deselected() -> set[str]:
    listing = os.environ.get("PRAISON_OA_DESELECT")
    if not listing:
        return set()
    return {line.strip() for line in Path(listing).read_text().splitlines() if line.strip()}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    listed = _deselected()
    keep, drop, matched = [], [], set()
    for item in items:
        names = {item.nodeid, item.nodeid.split("[", 1)[0]} & listed
        if names:
            matched |= names
            _selection["deselected_listed"] += 1
            drop.append(item)
        elif item.nodeid.split("::", 1)[0] in _WHOLE_FILES or _builds_a_session(item):
            keep.append(item)
        else:
            _selection["deselected_unrelated"] += 1
            drop.append(item)
    _selection["deselect_matched"] = sorted(matched)
    config.hook.pytest_deselected(items=drop)
    items[:] = keep


def pytest_runtest_setup(item: pytest.Item) -> None:
    _built[0] = False  # runs before the test's fixtures, which may build its session


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    entry = _tests.setdefault(report.nodeid, {"outcome": "passed", "praison": False})
    if report.failed:
        entry["outcome"] = "failed"
    elif report.skipped and entry["outcome"] != "failed":
        entry["outcome"] = "skipped"
    if report.when == "call":
        entry["praison"] = _built[0]


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("PRAISON_OA_REPORT")
    if path:
        Path(path).write_text(json.dumps({"tests": _tests, **_selection}, indent=1))
