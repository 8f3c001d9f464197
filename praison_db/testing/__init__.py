"""praison_db's conformance suite, for any backend: ours run it, and so can yours.

Every ConversationStore and StateStore case praison_db's own backends pass lives in :mod:`praison_db.testing.suite`,
and the pytest plugin :mod:`praison_db.testing.plugin` runs it against the backends you name, on the sync API and on
the async one (:mod:`praison_db.aio`). A third-party backend registered with ``praison_db.register("mystore", ...)``
or through a ``praison_db.backends`` entry point runs it without writing a test::

    pip install 'praison-db[testing]'
    pytest -p praison_db.testing.plugin --pyargs praison_db.testing.suite \\
        --praison-url 'mystore=mystore://{tmp}/data?prefix={uid}'

``{tmp}`` becomes a fresh temporary folder and ``{uid}`` a unique id for every test (use whichever keeps tests
apart). Or, in a conftest.py, declare backends with servers of their own and pull the cases into a test module::

    # conftest.py
    pytest_plugins = ["praison_db.testing.plugin"]
    from praison_db.testing import Backend, add_backend
    add_backend(Backend("mystore", lambda ctx: f"mystore://{ctx.tmp}/data"))

    # test_mystore.py
    from praison_db.testing.suite import *  # noqa: F403

A case a store cannot pass is skipped, with the store's own reason, only when the store declares the capability
missing (``Capabilities``); everything else must pass. An unreachable server skips its backend loudly, or fails the
run when ``CI`` is set.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Backend",
    "TestContext",
    "ServerMissing",
    "add_backend",
    "backends",
    "for_role",
    "in_ci",
    "require",
    "unavailable",
    "wait_past",
]


@dataclass(frozen=True)
class TestContext:
    """What a backend's ``url`` function gets for one test."""

    __test__ = False  # not a test class, whatever pytest's name pattern says

    tmp: Path  # a fresh folder of this test
    uid: str  # unique per test: use it in prefixes, databases, directories
    server: str | None  # base URL of the per-run server, if the backend has one


@dataclass(frozen=True)
class Backend:
    """One backend the suite runs on.

    Attributes:
        name: shown in test ids (``test_x[sync-mystore]``).
        url: makes a fresh, isolated URL for one test from its :class:`TestContext`.
        roles: which of "conversations" and "state" it plays.
        server: a context manager started once per run that yields the server's base URL (``TestContext.server``)
            and cleans up at the end; it raises :class:`ServerMissing` when the server cannot be had.
        server_name: how skip/fail messages name the server.
        options: keyword options passed when opening every store.
    """

    name: str
    url: Callable[[TestContext], str]
    roles: tuple[str, ...] = ("conversations", "state")
    server: Callable[[], AbstractContextManager[str]] | None = None
    server_name: str = ""
    options: dict[str, Any] = field(default_factory=dict)


class ServerMissing(Exception):
    """The server a backend needs cannot be reached."""


_backends: list[Backend] = []


def add_backend(backend: Backend) -> None:
    """Run the suite on ``backend`` too (call it from a conftest.py, before collection)."""
    if any(b.name == backend.name for b in _backends):
        raise ValueError(f"a backend named {backend.name!r} is already registered")
    _backends.append(backend)


def backends() -> list[Backend]:
    return list(_backends)


def for_role(role: str) -> list[Backend]:
    return [b for b in _backends if role in b.roles]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(what: str, why: object) -> None:
    """Fail in CI, skip loudly elsewhere."""
    import pytest

    message = f"{what} is unreachable ({str(why).splitlines()[0][:200]})"
    if in_ci():
        pytest.fail(f"{message}; CI requires every backend's real server", pytrace=False)
    pytest.skip(f"SKIPPED BACKEND: {message}; start it (see README, 'Running the tests')")


def require(store: Any, capability: str) -> None:
    """Skip, showing the backend's own reason, when a store does not declare a capability."""
    import pytest

    caps = store.capabilities
    if not getattr(caps, capability):
        pytest.skip(f"{type(store).__name__} does not support {capability}: {caps.reason}")


def wait_past(deadline: float) -> None:
    """Wait on the clock until a TTL deadline (a ``time.time()`` value) has passed: expiry is time-based."""
    while time.time() <= deadline:
        time.sleep(max(0.0, deadline - time.time()) + 0.01)
