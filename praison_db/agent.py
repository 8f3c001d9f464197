"""``Agent``: a chat loop whose every turn is persisted before ``chat()`` returns.

On its first ``chat()`` an Agent gets or creates its session and restores the newest ``history_limit`` messages,
so a new process with the same ``session_id`` carries on the conversation. The user's message is stored before the
model is called; the reply (and any tool turns) before ``chat()`` returns.

With ``db(strict=False)`` a storage failure does not stop the agent: the message is kept in ``agent.unsaved`` and
in a JSON Lines spool file under ``<session_dir>/unsaved/``, and written (in order, before anything newer) on the
next successful write, by this Agent or by the next one opened on the same session. Nothing is dropped silently.

In async code, ``await agent.achat(text)`` does the same with an ``AsyncPraisonDB`` from ``praison_db.aio.db(...)``:
the same turn logic runs in a bridge greenlet on the event loop, every store call is awaited on the async store, and
the model (and each tool) is awaited when it is a coroutine function, else run in a worker thread, so the loop keeps
serving other tasks meanwhile. With a sync ``PraisonDB``, ``achat`` runs ``chat`` in a worker thread.

Every message gets its id when the Agent creates it, and every write (the first and each retry) passes that id, so a
write that landed although the caller saw a failure, or a spooled message written by two Agents, is stored once.
A spooled message the store later refuses as invalid is set aside in ``<session_dir>/unsaved/<name>.rejected.jsonl``
(and ``agent.rejected``) instead of blocking the messages behind it. A session deleted, pruned or expired while an
Agent uses it is created again by the next write.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from .aio import AsyncPraisonDB
from .files import make_private_dir, open_private, private_lock, session_file_stem, write_private
from .bridge import Bridged, await_, greenlet_spawn, in_bridge, in_thread
from .errors import ConfigError, Error, InputError, SessionExists, SessionNotFound
from .facade import PraisonDB
from .facade import db as open_db
from .llm import ChatModel, normalize_reply, resolve_llm
from .models import MessageDraft, check_id, new_id

__all__ = ["Agent"]

log = logging.getLogger("praison_db")

_MESSAGE_FIELDS = ("role", "content", "name", "tool_calls", "tool_call_id")

# The event loop of the ``achat`` that runs ``chat`` in a worker thread (a sync PraisonDB): an async model or tool
# called there is run on that loop. asyncio.to_thread copies the context, so the thread sees it.
_caller_loop: contextvars.ContextVar[asyncio.AbstractEventLoop | None] = contextvars.ContextVar(
    "praison_db_agent_loop", default=None
)


class Agent:
    """A conversational agent with persistent memory.

    Example::

        agent = Agent(name="Assistant", instructions="You are helpful.", db=db("sqlite:///chat.db"), session_id="u-1")
        agent.chat("My name is Alice")
        # ... later, in another process ...
        Agent(db=db("sqlite:///chat.db"), session_id="u-1").chat("What's my name?")  # "Your name is Alice."
    """

    def __init__(
        self,
        name: str = "Assistant",
        instructions: str | None = None,
        llm: ChatModel | str | None = None,
        db: PraisonDB | AsyncPraisonDB | str | os.PathLike[str] | None = None,
        session_id: str | None = None,
        user_id: str | None = None,
        history_limit: int | None = 50,
        tools: Mapping[str, Callable[..., Any]] | None = None,
        max_tool_rounds: int = 8,
    ) -> None:
        """
        Args:
            name: the agent's name, stored as the session's ``agent_id``.
            instructions: the system prompt; sent with every request, never stored as a message.
            llm: None or ``"offline"`` (the deterministic offline model), a model name for an OpenAI-compatible
                endpoint, or a callable taking OpenAI-style messages (see :mod:`praison_db.llm`).
            db: a :class:`PraisonDB` from ``praison_db.db(...)``, an :class:`~praison_db.aio.AsyncPraisonDB` from
                ``praison_db.aio.db(...)`` (then use :meth:`achat`), or a database URL; None opens ``db()`` (zero
                config). A store the Agent opened itself is closed by :meth:`close`.
            session_id: the conversation to continue or start; None generates one (``agent.session_id``).
            user_id: the session's owner.
            history_limit: how many of the newest messages are restored and sent to the model (None: all).
            tools: name -> Python function; tool calls from the model run these and the results are stored.
            max_tool_rounds: how many times in a row the model may ask for tools within one ``chat()``.

        Raises:
            ConfigError: ``db`` or ``llm`` is of the wrong kind, or the model cannot be set up.
            InputError: an id or a limit is invalid.
        """
        if history_limit is not None and (isinstance(history_limit, bool) or not isinstance(history_limit, int) or history_limit < 0):
            raise InputError("history_limit must be a non-negative integer or None")
        if isinstance(max_tool_rounds, bool) or not isinstance(max_tool_rounds, int) or max_tool_rounds < 0:
            raise InputError("max_tool_rounds must be a non-negative integer")
        self.name = check_id(name, "name")
        self.instructions = instructions
        self.user_id = None if user_id is None else check_id(user_id, "user_id")
        self.history_limit = history_limit
        self.max_tool_rounds = max_tool_rounds
        self.tools: dict[str, Callable[..., Any]] = dict(tools or {})
        for tool_name, fn in self.tools.items():
            if not callable(fn):
                raise ConfigError(f"tool {tool_name!r} is not callable")
        self.llm = resolve_llm(llm, self.tools)
        self._session_id = new_id() if session_id is None else check_id(session_id)

        self.db: PraisonDB | AsyncPraisonDB
        if db is None or isinstance(db, (str, os.PathLike)):
            self.db = open_db(db)
            self._owns_db = True
        elif isinstance(db, (PraisonDB, AsyncPraisonDB)):
            self.db = db
            self._owns_db = False
        else:
            raise ConfigError(
                f"db must be what praison_db.db(...) or praison_db.aio.db(...) returns (or a URL), not {type(db).__name__}"
            )
        # What the turn logic calls: the db itself, or (async) a sync face whose every call is awaited in the bridge.
        self._store: Any = Bridged(self.db) if isinstance(self.db, AsyncPraisonDB) else self.db

        self._history: list[dict[str, Any]] = []
        self._unsaved: list[dict[str, Any]] = []
        self._rejected: list[dict[str, Any]] = []
        self._started = False
        self._ready: set[str] = set()  # session ids known to exist in the store
        self._spools_read: set[str] = set()
        self._lock = threading.RLock()
        # achat turns share the loop's thread (the RLock lets them all in): they queue on an asyncio.Lock per loop.
        self._async_lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    # ---- public ----

    @property
    def session_id(self) -> str:
        """The session this Agent reads and writes (generated when none was given)."""
        return self._session_id

    @property
    def history(self) -> list[dict[str, Any]]:
        """The conversation as this Agent knows it (restored messages, then this run's), as OpenAI dicts."""
        with self._lock:
            return [dict(m) for m in self._history]

    @property
    def unsaved(self) -> list[dict[str, Any]]:
        """Messages not yet in the store (only with ``strict=False``), oldest first, each with its ``session_id``
        and ``id``."""
        with self._lock:
            return [dict(m) for m in self._unsaved]

    @property
    def rejected(self) -> list[dict[str, Any]]:
        """Kept messages the store refused as invalid when they were written later, each with the ``error``; they
        are also in ``<session_dir>/unsaved/<name>.rejected.jsonl``."""
        with self._lock:
            return [dict(m) for m in self._rejected]

    def chat(self, text: str) -> str:
        """Send a user message and return the reply; both are stored before this returns.

        Args:
            text: the user's message.

        Returns:
            The assistant's reply text.

        Raises:
            praison_db.Error: a storage failure while ``db.strict`` is True (the default).
            InputError: ``text`` is not a string, or a message cannot be stored at all (too large).
            ConfigError: the Agent's db is an ``AsyncPraisonDB`` or its llm is a coroutine function (use
                :meth:`achat`).
        """
        self._refuse_async("chat")
        if _is_async(self.llm) and _caller_loop.get() is None:
            raise ConfigError("this Agent's llm is a coroutine function; use await agent.achat(...)")
        return self._chat(text)

    async def achat(self, text: str) -> str:
        """``chat`` for async code: send a user message and return the reply, both stored before this returns.

        With an ``AsyncPraisonDB`` every store call is awaited and the loop serves other tasks meanwhile; an async
        llm (a coroutine function) is awaited, a sync one runs in a worker thread. With a sync ``PraisonDB``,
        ``chat`` runs in a worker thread. Turns of one Agent run one at a time, in the order they were awaited.

        Raises: as :meth:`chat`.
        """
        if not isinstance(self.db, AsyncPraisonDB):
            async with self._turn_lock():
                token = _caller_loop.set(asyncio.get_running_loop())
                try:
                    return await asyncio.to_thread(self._chat, text)
                finally:
                    _caller_loop.reset(token)
        return await self._bridged(self._chat, text)  # type: ignore[no-any-return]

    def _chat(self, text: str) -> str:
        if not isinstance(text, str):
            raise InputError(f"chat() takes a string, not {type(text).__name__}")
        with self._lock:
            self._start()
            turn_start = len(self._history)
            self._save({"role": "user", "content": text})
            reply = normalize_reply(_invoke(self.llm, self._prompt(turn_start)))
            rounds = 0
            while reply.get("tool_calls"):
                if rounds >= self.max_tool_rounds:
                    log.warning("praison_db: the model asked for tools %d times in a row; stopping", rounds)
                    reply = {"role": "assistant", "content": reply.get("content") or f"(stopped after {rounds} tool rounds)"}
                    break
                rounds += 1
                self._save(reply)
                for call in reply["tool_calls"]:
                    self._save(self._run_tool(call))
                reply = normalize_reply(_invoke(self.llm, self._prompt(turn_start)))
            answer = reply.get("content") or ""
            self._save({"role": "assistant", "content": answer})
            return answer

    def reset(self, session_id: str | None = None) -> None:
        """Start another conversation (a new generated id, or ``session_id``); the old one stays in the store.

        Messages of the old session still in ``unsaved`` stay queued and are written with the next write.
        """
        with self._lock:
            self._session_id = new_id() if session_id is None else check_id(session_id)
            self._history = []
            self._started = False

    def flush(self) -> int:
        """Try to write the ``unsaved`` messages now. Returns how many are still unsaved.

        Raises:
            praison_db.Error: a storage failure while ``db.strict`` is True.
            ConfigError: the Agent's db is an ``AsyncPraisonDB`` (use :meth:`aflush`).
        """
        self._refuse_async("flush")
        return self._flush_now()

    async def aflush(self) -> int:
        """``flush`` for async code. Returns how many messages are still unsaved."""
        if not isinstance(self.db, AsyncPraisonDB):
            async with self._turn_lock():
                return await asyncio.to_thread(self._flush_now)
        return await self._bridged(self._flush_now)  # type: ignore[no-any-return]

    def _flush_now(self) -> int:
        with self._lock:
            try:
                self._flush()
            except Error as e:
                if not self._tolerated(e):
                    raise
                log.warning("praison_db: %d messages are still unsaved: %s", len(self._unsaved), e)
            return len(self._unsaved)

    def close(self) -> None:
        """Close the store if this Agent opened it. Unsaved messages stay in their spool files.

        Raises:
            ConfigError: the Agent owns an ``AsyncPraisonDB`` (use :meth:`aclose`).
        """
        if self._owns_db and isinstance(self.db, AsyncPraisonDB):
            raise ConfigError("this Agent's db is an AsyncPraisonDB; use await agent.aclose()")
        self._warn_unsaved()
        if self._owns_db:
            self.db.close()

    async def aclose(self) -> None:
        """``close`` for async code: close the store if this Agent opened it (an async one is awaited)."""
        self._warn_unsaved()
        if not self._owns_db:
            return
        if isinstance(self.db, AsyncPraisonDB):
            await self.db.aclose()
        else:
            await asyncio.to_thread(self.db.close)

    def _warn_unsaved(self) -> None:
        if self._unsaved:
            log.warning(
                "praison_db: closing with %d unsaved messages; they are kept in %s", len(self._unsaved), self._spool_dir()
            )

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Agent:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<Agent {self.name!r} session_id={self._session_id!r} db={self.db!r}>"

    # ---- async ----

    def _refuse_async(self, method: str) -> None:
        if isinstance(self.db, AsyncPraisonDB) and not in_bridge():
            raise ConfigError(f"this Agent's db is an AsyncPraisonDB; use await agent.a{method}(...)")

    def _turn_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._async_lock is None or self._async_lock[0] is not loop:
            self._async_lock = (loop, asyncio.Lock())
        return self._async_lock[1]

    async def _bridged(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run sync turn logic in a bridge greenlet on this loop, over the async db (opened first if need be)."""
        assert isinstance(self.db, AsyncPraisonDB)
        async with self._turn_lock():
            if not self.db.closed:  # a closed one is not reopened: its stores raise StoreClosed
                await self.db.open()
            return await greenlet_spawn(fn, *args)

    # ---- turns ----

    def _start(self) -> None:
        """Restore the session on first use: get or create it, write spooled messages, load the newest ones."""
        if self._started:
            return
        sid = self._session_id
        if sid not in self._spools_read:
            self._unsaved.extend(self._read_spool(sid))
            self._spools_read.add(sid)
        restored: list[dict[str, Any]] = []
        try:
            self._ensure_session(sid)
            self._flush()
            if self.history_limit != 0:
                messages = self._store.conversations.get_messages(sid, limit=self.history_limit)
                restored = [chat for chat in (m.to_openai() for m in messages) if chat is not None]
        except Error as e:
            if not self._tolerated(e):
                raise
            log.warning("praison_db: could not restore session %r, starting without its history: %s", sid, e)
        pending = [_as_message(u) for u in self._unsaved if u["session_id"] == sid]
        self._history = restored + pending
        self._started = True

    def _prompt(self, turn_start: int) -> list[dict[str, Any]]:
        """System message + the newest ``history_limit`` earlier messages + the whole current turn."""
        earlier = self._history[:turn_start]
        if self.history_limit is not None:
            earlier = earlier[len(earlier) - min(len(earlier), self.history_limit):]
        while earlier and earlier[0]["role"] == "tool":  # a window must not start with an orphaned tool result
            earlier = earlier[1:]
        system = [{"role": "system", "content": self.instructions}] if self.instructions else []
        return system + [dict(m) for m in earlier + self._history[turn_start:]]

    def _run_tool(self, call: dict[str, Any]) -> dict[str, Any]:
        function = call.get("function") or {}
        tool_name = function.get("name")
        fn = self.tools.get(tool_name) if isinstance(tool_name, str) else None
        try:
            if fn is None:
                raise LookupError(f"no tool named {tool_name!r}; available: {', '.join(sorted(self.tools)) or 'none'}")
            arguments = json.loads(function.get("arguments") or "{}")
            if not isinstance(arguments, dict):
                raise TypeError("tool arguments must be a JSON object")
            result = _invoke(fn, **arguments)
            content = result if isinstance(result, str) else json.dumps(result, default=str)
        except Exception as e:  # the model sees the error and can recover, as with any tool
            log.warning("praison_db: tool %r failed: %s: %s", tool_name, type(e).__name__, e)
            content = f"error: {type(e).__name__}: {e}"
        return {"role": "tool", "tool_call_id": call["id"], "content": content}

    # ---- storage ----

    def _tolerated(self, error: Error) -> bool:
        """Whether a storage error is logged and survived (strict=False) rather than raised.

        Bad input and someone else's session are never storage failures: retrying would not help.
        """
        return not self._store.strict and not isinstance(error, (InputError, SessionExists))

    def _save(self, message: dict[str, Any]) -> None:
        """Store one message (after any unsaved ones) and add it to the history; keep it locally if that fails."""
        record = {
            "session_id": self._session_id,
            "id": new_id(),  # made once: every retry of this write passes it, so the store keeps one copy
            **{k: message[k] for k in _MESSAGE_FIELDS if message.get(k) is not None},
        }
        record.setdefault("content", None)
        # Refuse bad input now, not after it has waited in the spool for the store to refuse it.
        MessageDraft.build(
            record["role"], record["content"], id=record["id"], name=record.get("name"),
            tool_calls=record.get("tool_calls"), tool_call_id=record.get("tool_call_id"),
        )
        try:
            self._flush()
            self._write(record)
        except Error as e:
            if not self._tolerated(e):
                raise
            self._keep(record, e)
        self._history.append(_as_message(record))

    def _ensure_session(self, session_id: str) -> None:
        if session_id in self._ready:
            return
        session = self._store.conversations.get_or_create_session(session_id, user_id=self.user_id, agent_id=self.name)
        if self.user_id is not None and session.user_id is not None and session.user_id != self.user_id:
            raise SessionExists(f"session {session_id!r} belongs to another user; use another session_id")
        self._ready.add(session_id)

    def _write(self, record: dict[str, Any]) -> None:
        session_id = record["session_id"]
        self._ensure_session(session_id)
        try:
            self._add(record)
        except SessionNotFound:
            # Deleted, pruned or expired since this Agent saw it: the conversation goes on in a new session.
            self._ready.discard(session_id)
            log.warning("praison_db: session %r no longer exists; creating it again", session_id)
            self._ensure_session(session_id)
            self._add(record)

    def _add(self, record: dict[str, Any]) -> None:
        self._store.conversations.add_message(
            record["session_id"],
            record["role"],
            record.get("content"),
            id=record["id"],
            name=record.get("name"),
            tool_calls=record.get("tool_calls"),
            tool_call_id=record.get("tool_call_id"),
        )

    def _flush(self) -> None:
        """Write the unsaved messages in order; stop (raising) at the first failure, keeping the rest.

        A message the store refuses as invalid cannot succeed later either: it is set aside, and the rest go on.
        """
        if not self._unsaved:
            return
        written: dict[str, set[str]] = {}
        try:
            while self._unsaved:
                record = self._unsaved[0]
                try:
                    self._write(record)
                except InputError as e:
                    self._reject(record, e)
                self._unsaved.pop(0)
                written.setdefault(record["session_id"], set()).add(record["id"])
        finally:
            for sid, ids in written.items():
                self._remove_from_spool(sid, ids)
        log.info("praison_db: wrote the messages that had been kept locally")

    def _reject(self, record: dict[str, Any], error: Error) -> None:
        entry = {**record, "error": str(error)}
        self._rejected.append(entry)
        path = self._rejected_path(record["session_id"])
        try:
            self._append_line(path, entry)
            where = f"agent.rejected and {path}"
        except Exception as file_error:  # noqa: BLE001 - still in memory; say so
            where = f"agent.rejected only (the file failed: {file_error})"
        log.warning(
            "praison_db: the store refused the kept %s message %r of session %r: %s; set aside in %s",
            record["role"], record["id"], record["session_id"], error, where,
        )

    @staticmethod
    def _append_line(path: Path, record: dict[str, Any]) -> None:
        make_private_dir(path.parent, root=path.parent.parent)
        with _spool_lock(path), open_private(path, "a", root=path.parent.parent) as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _keep(self, record: dict[str, Any], error: Error) -> None:
        self._unsaved.append(record)
        path = self._spool_path(record["session_id"])
        try:
            self._append_line(path, record)
            where = f"agent.unsaved and {path}"
        except Exception as spool_error:  # noqa: BLE001 - the message is still in memory; say so
            where = f"agent.unsaved only (the spool file failed: {spool_error})"
        log.warning(
            "praison_db: could not store the %s message of session %r: %s; kept in %s",
            record["role"], record["session_id"], error, where,
        )

    # ---- the spool: JSON Lines, one file per session ----

    def _spool_dir(self) -> Path:
        return Path(self._store.session_dir) / "unsaved"

    def _spool_path(self, session_id: str) -> Path:
        return self._spool_dir() / f"{session_file_stem(session_id)}.jsonl"

    def _rejected_path(self, session_id: str) -> Path:
        return self._spool_dir() / f"{session_file_stem(session_id)}.rejected.jsonl"

    def _read_spool(self, session_id: str) -> list[dict[str, Any]]:
        path = self._spool_path(session_id)
        if not os.path.lexists(path):
            return []
        try:
            with _spool_lock(path):
                records = _spooled(path, session_id)
                if any(not isinstance(r.get("id"), str) for r in records):
                    # Written by a version that gave no ids (or an id damaged by hand): give them ids now, once, so
                    # retries stay idempotent and every id can be tracked.
                    for r in records:
                        if not isinstance(r.get("id"), str):
                            r["id"] = new_id()
                    _write_spool(path, records)
        except Exception as e:  # noqa: BLE001
            log.warning("praison_db: cannot read the unsaved messages in %s: %s", path, e)
            return []
        if records:
            log.info("praison_db: found %d unsaved messages of session %r in %s", len(records), session_id, path)
        return records

    def _remove_from_spool(self, session_id: str, ids: set[str]) -> None:
        """Drop written messages from the spool file, keeping what other Agents on this session spooled meanwhile."""
        path = self._spool_path(session_id)
        try:
            with _spool_lock(path):
                if not os.path.lexists(path):
                    return
                _write_spool(path, [r for r in _spooled(path, session_id) if r.get("id") not in ids])
        except Exception as e:  # noqa: BLE001 - already stored, and ids make the next writer's retry a no-op
            log.warning("praison_db: could not update %s: %s", path, e)


def _is_async(fn: Any) -> bool:
    """A coroutine function, or an object whose ``__call__`` is one."""
    return inspect.iscoroutinefunction(fn) or (callable(fn) and inspect.iscoroutinefunction(fn.__call__))


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _invoke(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the model or a tool. In a bridge greenlet the loop never waits on it: a coroutine function is awaited, a
    sync one runs in a worker thread. In a worker thread of ``achat`` an awaitable result runs on the caller's loop."""
    if in_bridge():
        result = fn(*args, **kwargs) if _is_async(fn) else in_thread(fn, *args, **kwargs)
        return await_(result) if inspect.isawaitable(result) else result
    result = fn(*args, **kwargs)
    if not inspect.isawaitable(result):
        return result
    loop = _caller_loop.get()
    if loop is None:
        if inspect.iscoroutine(result):
            result.close()  # never awaited: say what to do instead of warning about it
        raise ConfigError(f"{getattr(fn, '__name__', 'the llm')} returned an awaitable; use await agent.achat(...)")
    return asyncio.run_coroutine_threadsafe(_awaited(result), loop).result()


def _spool_lock(path: Path) -> Any:
    return private_lock(Path(f"{path}.lock"), 10, root=path.parent.parent)


def _spooled(path: Path, session_id: str) -> list[dict[str, Any]]:
    records = []
    with open_private(path, "r", root=path.parent.parent) as f:
        text = f.read()
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line torn by a crash while spooling
        if isinstance(record, dict) and record.get("session_id") == session_id and record.get("role"):
            records.append(record)
    return records


def _write_spool(path: Path, records: list[dict[str, Any]]) -> None:
    if not records:
        path.unlink(missing_ok=True)
        return
    write_private(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def _as_message(record: dict[str, Any]) -> dict[str, Any]:
    """An unsaved/spool record as an OpenAI message dict (without our ``session_id``)."""
    out = {k: record[k] for k in _MESSAGE_FIELDS if record.get(k) is not None}
    out.setdefault("content", None)
    return out
