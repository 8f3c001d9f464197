"""The async API: the same stores, names, arguments, results and errors as the sync API, awaited.

    from praison_db.aio import db

    async with db("postgresql://ai:ai@localhost/ai", state_url="redis://localhost:6379/0") as store:
        await store.conversations.get_or_create_session("user-123")
        await store.conversations.add_message("user-123", "user", "hi")
        recent = await store.conversations.get_messages("user-123", limit=20)
        async for s in store.conversations.iter_sessions(user_id="alice"): ...
        await store.state.incr("rate:alice")

How it runs, written once: an async store wraps the very store class the sync API uses.
- PostgreSQL, MySQL, Redis and MongoDB are opened on their native async drivers (SQLAlchemy's asyncio extension over
  psycopg 3's AsyncConnection and aiomysql; redis.asyncio; pymongo's AsyncMongoClient). Each call runs the store's
  code in a greenlet on the event loop, and every wait for the server is an ``await`` on that driver
  (:mod:`praison_db.bridge`): the loop serves other tasks meanwhile, and a cancelled task stops at that wait.
- SQLite, JSON files, YAML files, memory, chDB and DynamoDB run each call in a worker thread, with the same
  cross-process file locks, so a file's fsync never stalls the loop (for SQLite one hop per call costs less than
  aiosqlite's hop per statement).
- A thread cannot be stopped: a call cancelled while it runs in a worker thread finishes before CancelledError
  reaches the caller. Either way a cancelled append is stored
  whole or not at all.

Iterators (``iter_messages``, ``iter_sessions``, ``keys``) are async iterators; their argument errors surface at the
first step of the ``async for``. ``scope()`` returns a view at once (it does no I/O). Close with ``await
store.aclose()`` (``close`` is the same coroutine) or ``async with``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, ClassVar

from ..base import ConversationStore, StateStore, Store, closed_error
from ..bridge import greenlet_spawn
from ..errors import ConfigError
from ..facade import PraisonDB, _open, assemble
from ..registry import StoreRole

__all__ = ["db", "open_store", "AsyncPraisonDB", "AsyncConversationStore", "AsyncStateStore", "wrap"]

# Items an async iterator fetches per hop to the worker thread or greenlet (a hop costs tens of microseconds).
_BATCH = 64


def _take(items: Iterator[Any], n: int) -> list[Any]:
    out = []
    for item in items:
        out.append(item)
        if len(out) >= n:
            break
    return out


async def _to_the_end(call: Any) -> Any:
    """Await ``call``; a cancelled caller waits for it to finish before CancelledError reaches it. For work that
    cannot be stopped (a thread): the call has then either happened or not, instead of still changing the store (or
    racing a close) after the caller's ``await`` returned."""
    future = asyncio.ensure_future(call)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            try:
                await asyncio.wait([future])
            except asyncio.CancelledError:  # cancelled again: still wait for the end
                continue
        if not future.cancelled():
            future.exception()  # retrieved: the caller was cancelled, what the call raised is not reported
        raise


class _AsyncIterator:
    """An async iterator over a store's sync iterator, made and advanced by the store's runner."""

    def __init__(self, store: _AsyncStore, make: Callable[[], Iterator[Any]]) -> None:
        self._store, self._make = store, make
        self._items: Iterator[Any] | None = None
        self._buffer: list[Any] = []
        self._done = False

    def __aiter__(self) -> _AsyncIterator:
        return self

    async def start(self) -> _AsyncIterator:
        """Make the underlying iterator now (its argument errors raise here) instead of at the first step."""
        if self._items is None:
            self._items = await self._store._run(self._make)
        return self

    async def __anext__(self) -> Any:
        if self._items is None:
            await self.start()
        if not self._buffer and not self._done:
            self._buffer = await self._store._run(_take, self._items, _BATCH)
            self._buffer.reverse()
            self._done = not self._buffer
        if self._store.closed:  # what was fetched before close() is not handed out after it
            raise closed_error(self._store._core)
        if not self._buffer:
            raise StopAsyncIteration
        return self._buffer.pop()


class _AsyncStore:
    """What both async stores share: the sync store they run, how they run it, lifecycle."""

    _sync_names: ClassVar[frozenset[str]] = frozenset()  # methods that return at once, without I/O
    _iterator_names: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, core: Store, *, native: bool | None = None) -> None:
        self._core = core
        # Native when the store was opened on its async driver; otherwise each call goes to a worker thread.
        self._native = bool(getattr(core, "asynchronous", False)) if native is None else native
        # aiosqlite runs every statement in a thread of its own, which a cancellation cannot stop either; throwing
        # the connection away mid-transaction instead can leave the SQLite file write-locked. So a cancelled call on
        # SQLite, as in a worker thread, finishes before CancelledError reaches the caller.
        self._finish_when_cancelled = not self._native or str(getattr(core, "url", "")).startswith("sqlite")

    async def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        call = greenlet_spawn(fn, *args, **kwargs) if self._native else asyncio.to_thread(fn, *args, **kwargs)
        if self._finish_when_cancelled:
            return await _to_the_end(call)
        return await call

    def _adopt(self, result: Any) -> Any:
        """A store handed back by a call (``state_store()``) is wrapped, running the same way as this one."""
        return wrap(result, native=self._native) if isinstance(result, Store) else result

    @property
    def url(self) -> str:
        return self._core.url

    @property
    def capabilities(self) -> Any:
        return self._core.capabilities

    @property
    def closed(self) -> bool:
        return self._core.closed

    @property
    def sync_store(self) -> Store:
        """The sync store underneath (for code that runs it in a thread or a bridge greenlet itself)."""
        return self._core

    async def aclose(self) -> None:
        """Release connections and files. Idempotent; any later call raises StoreClosed."""
        await self._run(self._core.close)

    close = aclose

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __getattr__(self, name: str) -> Any:
        # Attributes a backend adds (a JSON store's directory, ...) read through; methods are made async per class.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._core, name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._core.url}{' closed' if self.closed else ''}>"


def _coroutine_method(name: str, sync_fn: Callable[..., Any]) -> Callable[..., Any]:
    async def method(self: _AsyncStore, *args: Any, **kwargs: Any) -> Any:
        return self._adopt(await self._run(getattr(self._core, name), *args, **kwargs))

    functools.update_wrapper(method, sync_fn)
    return method


def _iterator_method(name: str, sync_fn: Callable[..., Any]) -> Callable[..., Any]:
    def method(self: _AsyncStore, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        return _AsyncIterator(self, lambda: getattr(self._core, name)(*args, **kwargs))

    functools.update_wrapper(method, sync_fn)
    return method


def _public_methods(cls: type) -> dict[str, Callable[..., Any]]:
    return {
        name: member
        for name in dir(cls)
        if not name.startswith("_") and name not in ("close", "from_url", "from_url_async")
        and inspect.isfunction(member := getattr(cls, name))
    }


def _fill(shell: type[_AsyncStore], protocol: type) -> None:
    for name, fn in _public_methods(protocol).items():
        if name in shell.__dict__ or name in shell._sync_names:
            continue
        maker = _iterator_method if name in shell._iterator_names else _coroutine_method
        setattr(shell, name, maker(name, fn))


class AsyncConversationStore(_AsyncStore):
    """A ConversationStore, awaited: every method of :class:`praison_db.base.ConversationStore` as a coroutine
    (``iter_messages`` and ``iter_sessions`` as async iterators)."""

    _iterator_names = frozenset({"iter_messages", "iter_sessions"})


class AsyncStateStore(_AsyncStore):
    """A StateStore, awaited: every method of :class:`praison_db.base.StateStore` as a coroutine (``keys`` as an
    async iterator, ``scope`` at once)."""

    _sync_names = frozenset({"scope"})
    _iterator_names = frozenset({"keys"})

    def scope(self, *parts: str) -> AsyncStateStore:
        """A view whose keys are prefixed with ``"part1:part2:..."``; it shares the connection (no I/O)."""
        return wrap(self._core.scope(*parts), native=self._native)  # type: ignore[attr-defined,no-any-return]


_fill(AsyncConversationStore, ConversationStore)
_fill(AsyncStateStore, StateStore)


@functools.cache
def _shell_class(core_class: type) -> type[_AsyncStore]:
    """The async class for a backend class: the protocol's shell plus async versions of what the backend adds."""
    base: type[_AsyncStore] = AsyncConversationStore if issubclass(core_class, ConversationStore) else AsyncStateStore
    extra = {n: f for n, f in _public_methods(core_class).items() if not hasattr(base, n)}
    if not extra:
        return base
    shell = type(f"Async{core_class.__name__}", (base,), {"__module__": __name__, "__doc__": core_class.__doc__})
    _fill(shell, core_class)
    return shell


def wrap(store: Store, *, native: bool | None = None) -> Any:
    """The async face of a sync store object. ``native`` (default: whether it was opened on an async driver) runs
    its calls in a bridge greenlet on the loop; otherwise they go to worker threads."""
    if not isinstance(store, (ConversationStore, StateStore)):
        raise ConfigError(f"wrap() takes a ConversationStore or StateStore, not {type(store).__name__}")
    return _shell_class(type(store))(store, native=native)


class AsyncPraisonDB:
    """An agent's memory for async code: ``conversations``, ``state`` and the JSON ``sessions`` store.

    Made by :func:`db`; open it with ``await db(...)`` or ``async with db(...) as store``.
    """

    def __init__(self, opener: Callable[[], PraisonDB]) -> None:
        self._opener = opener
        self._db: PraisonDB | None = None
        self._opening: asyncio.Future[PraisonDB] | None = None
        self._stores: dict[str, Any] = {}
        self._closed = False

    async def open(self) -> AsyncPraisonDB:
        """Connect (idempotent). ``await db(...)`` and ``async with`` call it."""
        if self._closed:
            raise ConfigError("this AsyncPraisonDB is closed; open a new one with db(...)")
        if self._db is None:
            if self._opening is None:  # one connect however many tasks await the same db(...) at once
                self._opening = asyncio.ensure_future(greenlet_spawn(self._opener))
            try:
                core = await asyncio.shield(self._opening)
            except BaseException:
                if self._opening.done():
                    self._opening = None  # a failed open may be tried again
                raise
            if self._db is None:
                self._stores = {"conversations": wrap(core.conversations), "state": wrap(core.state)}
                self._db = core
        return self

    def __await__(self) -> Any:
        return self.open().__await__()

    async def __aenter__(self) -> AsyncPraisonDB:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _opened(self) -> PraisonDB:
        if self._db is None:
            raise ConfigError("open the store first: `store = await db(...)` or `async with db(...) as store:`")
        return self._db

    @property
    def conversations(self) -> AsyncConversationStore:
        self._opened()
        return self._stores["conversations"]  # type: ignore[no-any-return]

    @property
    def state(self) -> AsyncStateStore:
        self._opened()
        return self._stores["state"]  # type: ignore[no-any-return]

    @property
    def sessions(self) -> AsyncConversationStore:
        """The file-locked JSON DefaultSessionStore in ``session_dir`` (run in worker threads)."""
        core = self._opened().sessions
        if core is self._opened().conversations:
            return self.conversations
        if "sessions" not in self._stores:
            self._stores["sessions"] = wrap(core)
        return self._stores["sessions"]  # type: ignore[no-any-return]

    @property
    def sync_db(self) -> PraisonDB:
        """The PraisonDB of sync stores underneath (its native stores only work inside a bridge greenlet)."""
        return self._opened()

    @property
    def strict(self) -> bool:
        return self._opened().strict

    @property
    def session_dir(self) -> Any:
        return self._opened().session_dir

    @property
    def database_url(self) -> str | None:
        return self._opened().database_url

    @property
    def state_url(self) -> str | None:
        return self._opened().state_url

    @property
    def closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        """Close every store this object opened. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for store in self._stores.values():
            await store.aclose()
        if self._db is not None:
            self._db._closed = True

    close = aclose

    def __repr__(self) -> str:
        return "<AsyncPraisonDB (not open)>" if self._db is None else "<Async" + repr(self._db)[1:]


def db(
    database_url: str | os.PathLike[str] | None = None,
    state_url: str | None = None,
    *,
    session_dir: str | os.PathLike[str] | None = None,
    strict: bool = True,
    **options: Any,
) -> AsyncPraisonDB:
    """Open an agent's memory for async code: ``praison_db.db()`` with every call awaited.

    Takes the same arguments as :func:`praison_db.db` and reads the same environment variables. The returned object
    connects when awaited or entered: ``store = await db(...)`` or ``async with db(...) as store:``.

    Raises (when opened):
        ConfigError: unknown scheme, missing driver extra, unknown option or a role the backend cannot play.
        StoreUnavailable: the server could not be reached.
    """
    return AsyncPraisonDB(
        functools.partial(
            assemble, database_url, state_url, session_dir=session_dir, strict=strict, options=options, asynchronous=True
        )
    )


async def open_store(url: str, role: StoreRole, **options: Any) -> Any:
    """Open one async store for ``url`` (``"conversations"`` or ``"state"``), as ``praison_db.facade.open_store``."""
    core = await greenlet_spawn(_open, url, role, options, asynchronous=True)
    return wrap(core)
