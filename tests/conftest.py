"""Fixtures shared by every test: the backend registry turned into store fixtures."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from praison_db.facade import open_store
from tests import servers
from tests.backends import Backend, TestContext, for_role

_running: dict[str, Any] = {}
_exits = contextlib.ExitStack()


def server_url(backend: Backend) -> str | None:
    """Start (once per run) or find the backend's server; fail in CI / skip elsewhere when unreachable."""
    if backend.server is None:
        return None
    if backend.name not in _running:
        try:
            _running[backend.name] = _exits.enter_context(backend.server())
        except servers.ServerMissing as e:
            _running[backend.name] = e
        except Exception as e:  # a driver missing, a refused port...
            _running[backend.name] = servers.ServerMissing(e)
    value = _running[backend.name]
    if isinstance(value, Exception):
        servers.unavailable(backend.server_name or backend.name, value.args[0] if value.args else value)
    return value


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exits.close()


@pytest.fixture
def make_url(tmp_path: Any) -> Any:
    """make_url(backend) -> a fresh URL for this test (each call another isolated namespace)."""

    def make(backend: Backend) -> str:
        ctx = TestContext(tmp_path / uuid.uuid4().hex[:8], "x" + uuid.uuid4().hex[:10], server_url(backend))
        ctx.tmp.mkdir(parents=True, exist_ok=True)
        return backend.url(ctx)

    return make


def _ids(backends: list[Backend]) -> list[str]:
    return [b.name for b in backends]


@pytest.fixture(params=for_role("conversations"), ids=_ids(for_role("conversations")))
def conv_backend(request: pytest.FixtureRequest) -> Backend:
    return request.param


@pytest.fixture(params=for_role("state"), ids=_ids(for_role("state")))
def state_backend(request: pytest.FixtureRequest) -> Backend:
    return request.param


@pytest.fixture
def conv_url(conv_backend: Backend, make_url: Any) -> str:
    return make_url(conv_backend)


@pytest.fixture
def state_url(state_backend: Backend, make_url: Any) -> str:
    return make_url(state_backend)


@pytest.fixture
def conv(conv_url: str, conv_backend: Backend) -> Iterator[Any]:
    store = open_store(conv_url, "conversations", **conv_backend.options)
    yield store
    store.close()


@pytest.fixture
def state(state_url: str, state_backend: Backend) -> Iterator[Any]:
    store = open_store(state_url, "state", **state_backend.options)
    yield store
    store.close()
