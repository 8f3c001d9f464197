"""The conformance cases run twice on every backend: on the sync API and, through a blocking face, on the async API
(``praison_db.aio``): one set of case definitions for both."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from praison_db.facade import open_store
from tests.aio_blocking import API_VARIABLE, open_blocking
from tests.backends import Backend


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(API_VARIABLE, request.param)  # worker processes open the same API
    return request.param


def _open(api: str, url: str, role: str, backend: Backend) -> Any:
    opener = open_blocking if api == "async" else open_store
    return opener(url, role, **backend.options)


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
