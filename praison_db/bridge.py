"""Sync store code on an event loop: the one mechanism behind every natively async store.

A store's logic (validation, statements, Lua scripts, Mongo documents, row mapping, error translation) is written
once, in plain synchronous Python. The async API runs that same code in a greenlet on the event loop, and every
wait for the server is an ``await`` on the backend's async driver: SQLAlchemy's asyncio extension does exactly this
for SQL (``AsyncConnection.run_sync``), and :class:`Bridged` does it for redis.asyncio and pymongo's
AsyncMongoClient, so that code written against the sync drivers' shapes calls the async drivers unchanged.

Inside such a greenlet, ``await_(coroutine)`` suspends the greenlet until the loop has the result: the loop keeps
serving other tasks meanwhile, and a cancelled task sees CancelledError at that point.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from sqlalchemy.util import greenlet_spawn

try:  # SQLAlchemy 2.1 renamed await_only to await_
    from sqlalchemy.util import await_
except ImportError:  # pragma: no cover - SQLAlchemy 2.0
    from sqlalchemy.util import await_only as await_  # type: ignore[attr-defined,no-redef]

__all__ = ["Bridged", "await_", "greenlet_spawn", "in_bridge", "in_thread", "pause"]

T = TypeVar("T")

# Objects of these packages are async-world objects: what they return is wrapped again so that sync code can go on
# calling methods on it (a pipeline, a cursor, a session, a collection).
_ASYNC_MODULES = ("redis.asyncio", "redis.commands", "pymongo.asynchronous", "praison_db.aio")


def in_bridge() -> bool:
    """True inside a greenlet started by :func:`greenlet_spawn` (sync code that may ``await_``)."""
    try:
        from greenlet import getcurrent
    except ImportError:  # pragma: no cover - no async API without greenlet
        return False
    return bool(getattr(getcurrent(), "__sqlalchemy_greenlet_provider__", False))


def pause(seconds: float) -> None:
    """Back off between retries: ``time.sleep`` in sync code, an ``asyncio.sleep`` (not blocking the loop) in a bridge."""
    if in_bridge():
        await_(asyncio.sleep(seconds))
    else:
        time.sleep(seconds)


def _wrap(value: Any) -> Any:
    if value is None or isinstance(value, (str, bytes, int, float, bool, list, dict, tuple)):
        return value
    module = type(value).__module__ or ""
    if callable(value) or module.startswith(_ASYNC_MODULES):
        return Bridged(value)
    return value


def _unwrap(value: Any) -> Any:
    if isinstance(value, Bridged):
        return object.__getattribute__(value, "_target")
    if (inspect.isfunction(value) or inspect.ismethod(value)) and not inspect.iscoroutinefunction(value):
        return _as_coroutine_function(value)  # a sync callback (with_transaction's) for a driver that awaits it
    return value


def _as_coroutine_function(fn: Callable[..., T]) -> Callable[..., Any]:
    async def callback(*args: Any, **kwargs: Any) -> T:
        return await greenlet_spawn(fn, *(_wrap(a) for a in args), **{k: _wrap(v) for k, v in kwargs.items()})

    return callback


class Bridged:
    """A synchronous face on an async driver object, for code running in a bridge greenlet.

    Calls whose result is awaitable are awaited (``await_``); ``with`` uses ``async with``; iteration uses
    ``async for``; objects of the async driver that come back (a pipeline, a cursor, a session) are bridged too; and
    a sync callback handed to the driver (``with_transaction``) runs in a greenlet of its own.
    """

    __slots__ = ("_target",)

    def __init__(self, target: Any) -> None:
        object.__setattr__(self, "_target", target)

    def __getattr__(self, name: str) -> Any:
        return _wrap(getattr(object.__getattribute__(self, "_target"), name))

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(object.__getattribute__(self, "_target"), name, value)

    def __getitem__(self, key: Any) -> Any:
        return _wrap(object.__getattribute__(self, "_target")[key])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        target = object.__getattribute__(self, "_target")
        result = target(*(_unwrap(a) for a in args), **{k: _unwrap(v) for k, v in kwargs.items()})
        # Coroutines only: a redis.asyncio pipeline or client is awaitable too, but awaiting it just returns itself.
        if inspect.iscoroutine(result) or asyncio.isfuture(result):
            result = await_(result)
        return _wrap(result)

    def __enter__(self) -> Any:
        target = object.__getattribute__(self, "_target")
        if hasattr(target, "__aenter__"):
            return _wrap(await_(target.__aenter__()))
        return _wrap(target.__enter__())

    def __exit__(self, *exc: Any) -> Any:
        target = object.__getattribute__(self, "_target")
        if hasattr(target, "__aexit__"):
            return await_(target.__aexit__(*exc))
        return target.__exit__(*exc)

    def __iter__(self) -> Iterator[Any]:
        target = object.__getattribute__(self, "_target")
        if not hasattr(target, "__aiter__"):
            yield from (_wrap(item) for item in target)
            return
        items = target.__aiter__()
        while True:
            try:
                item = await_(items.__anext__())
            except StopAsyncIteration:
                return
            yield _wrap(item)

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"Bridged({object.__getattribute__(self, '_target')!r})"


def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking work (a file's fsync, chDB, a DNS lookup) in a worker thread: from a bridge greenlet without
    blocking the loop, else directly."""
    if in_bridge():
        return await_(asyncio.to_thread(fn, *args, **kwargs))
    return fn(*args, **kwargs)
