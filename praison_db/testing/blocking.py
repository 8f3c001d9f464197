"""A blocking face on the async API, so that the conformance cases written for the sync API run, unchanged, against
every async store: each call is a coroutine of ``praison_db.aio`` run on one event loop in a background thread."""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import threading
from collections.abc import Iterator
from typing import Any

from praison_db.aio import _AsyncIterator, _AsyncStore, open_store
from praison_db.base import StateStore
from praison_db.registry import StoreRole

API_VARIABLE = "PRAISON_TEST_API"  # "async": the multi-process workers open async stores too


class LoopThread:
    """An event loop running in a daemon thread; ``run(coro)`` waits for a coroutine's result from any thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="praison-test-loop", daemon=True).start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()


@functools.cache
def loop_thread() -> LoopThread:
    return LoopThread()


def open_blocking(url: str, role: StoreRole, **options: Any) -> Any:
    """Open an async store and return its blocking face."""
    return blocking(loop_thread().run(open_store(url, role, **options)))  # type: ignore[arg-type]


def open_for_api(url: str, role: StoreRole, **options: Any) -> Any:
    """What the workers open: a sync store, or the blocking face of an async one when the test runs the async API."""
    if os.environ.get(API_VARIABLE) == "async":
        return open_blocking(url, role, **options)
    from praison_db.facade import open_store as open_sync

    return open_sync(url, role, **options)


def blocking(shell: _AsyncStore) -> Any:
    return _blocking_class(type(shell))(shell)  # type: ignore[arg-type]


class Blocking:
    _shell: _AsyncStore

    def __init__(self, shell: _AsyncStore) -> None:
        object.__setattr__(self, "_shell", shell)

    def _call(self, result: Any) -> Any:
        if inspect.iscoroutine(result):
            result = loop_thread().run(result)
        if isinstance(result, _AsyncIterator):
            return _iterate(loop_thread().run(result.start()))
        if isinstance(result, _AsyncStore):
            return blocking(result)
        return result

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # a case reaching into the backend: run it where the store's calls run
            shell = self._shell
            attr = getattr(shell._core, name)
            if callable(attr):
                return lambda *a, **k: loop_thread().run(shell._run(attr, *a, **k))
            return attr
        return getattr(self._shell, name)

    def close(self) -> None:
        loop_thread().run(self._shell.aclose())

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return repr(self._shell)


def _iterate(items: _AsyncIterator) -> Iterator[Any]:
    while True:
        try:
            yield loop_thread().run(items.__anext__())
        except StopAsyncIteration:
            return


def _method(name: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def method(self: Blocking, *args: Any, **kwargs: Any) -> Any:
        return self._call(getattr(self._shell, name)(*args, **kwargs))

    return method


@functools.cache
def _blocking_class(shell_class: type) -> type:
    namespace: dict[str, Any] = {}
    for name in dir(shell_class):
        member = getattr(shell_class, name)
        if name.startswith("_") or name in ("close", "aclose") or not inspect.isfunction(member):
            continue
        namespace[name] = _method(name, member)
    if "get_many" in namespace:  # a state store: the mapping protocol, as the sync StateStore spells it
        for dunder in ("__getitem__", "__setitem__", "__delitem__", "__contains__"):
            namespace[dunder] = getattr(StateStore, dunder)
    return type(f"Blocking{shell_class.__name__}", (Blocking,), namespace)
