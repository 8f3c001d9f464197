"""The pytest plugin behind praison_db's conformance suite (``-p praison_db.testing.plugin`` or
``pytest_plugins = ["praison_db.testing.plugin"]``).

Fixtures: ``conv`` / ``state`` (an open store of each registered backend, once on the sync API and once on the async
API through a blocking face), ``conv_backend`` / ``state_backend``, ``conv_url`` / ``state_url``, ``make_url`` and
``api``. Backends come from :func:`praison_db.testing.add_backend` and the ``--praison-url NAME=TEMPLATE`` option.
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from praison_db.registry import StoreRole, entry_for

from . import Backend, ServerMissing, TestContext, add_backend, for_role, unavailable
from .blocking import API_VARIABLE, open_blocking

_running: dict[str, Any] = {}
_exits = contextlib.ExitStack()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("praison_db", "praison_db conformance suite")
    group.addoption(
        "--praison-url",
        action="append",
        default=[],
        metavar="NAME=TEMPLATE",
        help="run the suite on a backend: a URL template where {tmp} is a fresh folder and {uid} a unique id per test",
    )


def pytest_configure(config: pytest.Config) -> None:
    for spec in config.getoption("--praison-url") or []:
        name, sep, template = spec.partition("=")
        if not sep or not name or "://" not in template:
            raise pytest.UsageError(f"--praison-url takes NAME=URL_TEMPLATE, e.g. 'mine=mystore://{{tmp}}/db', not {spec!r}")
        entry = entry_for(template.split("://", 1)[0])
        roles = tuple(r for r in ("conversations", "state") if getattr(entry, r) is not None)
        add_backend(Backend(name, functools.partial(_fill_template, template), roles=roles))


def _fill_template(template: str, ctx: TestContext) -> str:
    return template.format(tmp=ctx.tmp, uid=ctx.uid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exits.close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for fixture, role in (("conv_backend", "conversations"), ("state_backend", "state")):
        if fixture in metafunc.fixturenames:
            chosen = for_role(role)
            metafunc.parametrize(fixture, chosen, ids=[b.name for b in chosen])


def server_url(backend: Backend) -> str | None:
    """Start (once per run) or find the backend's server; fail in CI / skip elsewhere when unreachable."""
    if backend.server is None:
        return None
    if backend.name not in _running:
        try:
            _running[backend.name] = _exits.enter_context(backend.server())
        except ServerMissing as e:
            _running[backend.name] = e
        except Exception as e:  # a driver missing, a refused port...
            _running[backend.name] = ServerMissing(e)
    value = _running[backend.name]
    if isinstance(value, Exception):
        unavailable(backend.server_name or backend.name, value.args[0] if value.args else value)
    return value  # type: ignore[no-any-return]


@pytest.fixture
def make_url(tmp_path: Any) -> Any:
    """make_url(backend) -> a fresh URL for this test (each call another isolated namespace)."""

    def make(backend: Backend) -> str:
        ctx = TestContext(tmp_path / uuid.uuid4().hex[:8], "x" + uuid.uuid4().hex[:10], server_url(backend))
        ctx.tmp.mkdir(parents=True, exist_ok=True)
        return backend.url(ctx)

    return make


@pytest.fixture
def conv_url(conv_backend: Backend, make_url: Any) -> str:
    return make_url(conv_backend)  # type: ignore[no-any-return]


@pytest.fixture
def state_url(state_backend: Backend, make_url: Any) -> str:
    return make_url(state_backend)  # type: ignore[no-any-return]


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which API the stores are opened with; worker processes of multi-process cases open the same one."""
    monkeypatch.setenv(API_VARIABLE, request.param)
    return request.param  # type: ignore[no-any-return]


def _open(api: str, url: str, role: StoreRole, backend: Backend) -> Any:
    if api == "async":
        return open_blocking(url, role, **backend.options)
    from praison_db.facade import open_store

    return open_store(url, role, **backend.options)


@pytest.fixture
def conv(api: str, conv_url: str, conv_backend: Backend) -> Iterator[Any]:
    store = _open(api, conv_url, "conversations", conv_backend)
    yield store
    store.close()


@pytest.fixture
def state(api: str, state_url: str, state_backend: Backend) -> Iterator[Any]:
    store = _open(api, state_url, "state", state_backend)
    yield store
    store.close()
