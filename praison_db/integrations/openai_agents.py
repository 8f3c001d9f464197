"""The OpenAI Agents SDK's ``Session``, kept by praison_db: conversation history on any backend, from one URL.

    from agents import Agent, Runner
    from praison_db.integrations.openai_agents import PraisonSession

    agent = Agent(name="Assistant", instructions="Reply very concisely.")
    session = PraisonSession("user-123", "postgresql://ai:ai@localhost:5432/ai")
    await Runner.run(agent, "My name is Alice", session=session)
    result = await Runner.run(agent, "What is my name?", session=session)  # the history came from PostgreSQL
    await session.aclose()

What it guarantees:

- Every item the SDK adds comes back exactly as added (a Responses API message, reasoning item, function call or
  its output, any framework's own item): one praison message per item, with the item's type, role, content and
  other fields, so the same history is readable through ``praison_db`` itself (``get_messages``, the CLI, the UI).
  An item those fields cannot give back exactly (one with neither role nor type, as EncryptedSession's envelopes;
  an explicit null in a message field such as ``"name": None``) is kept whole, as the content of a message of type
  ``"praison_db.raw_item"``.
- Items are appended as given: two items carrying the same ``id`` are both kept, as in the SDK's own sessions (the
  SDK gives every item of a model it reaches over Chat Completions the id ``"__fake_id__"``). The item's id stays
  one of its fields; the praison message gets an id of its own.
- ``add_items`` stores its items in one transaction where the backend has them; ``get_items(limit=n)`` is one
  indexed read of the newest ``n``; ``pop_item`` and ``clear_session`` are atomic.
- The praison session is created on the first ``add_items`` (race-free: processes sharing a session id share one
  session) and kept by ``clear_session`` (its messages go).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

try:
    from agents.memory.session_settings import SessionSettings, coerce_session_settings, resolve_session_limit
except ImportError as e:  # pragma: no cover - the extra is missing
    raise ImportError(
        "praison_db.integrations.openai_agents needs the openai-agents package: pip install 'praison-db[openai-agents]'"
    ) from e

from ..aio import AsyncConversationStore, AsyncPraisonDB, _to_the_end, wrap
from ..base import ConversationStore
from ..errors import ConfigError, Error, InputError, SessionNotFound, StoreClosed
from ..facade import DATABASE_URL_VARS, PraisonDB, default_home, env_url, open_store
from ..models import MESSAGE_FIELDS, Message, MessageDraft, check_id, check_optional_id
from ..url import parse_url

if TYPE_CHECKING:
    from agents.items import TResponseInputItem

__all__ = ["PraisonSession"]


class PraisonSession:
    """An OpenAI Agents SDK ``Session`` whose items live in a praison_db conversation store.

    Pass it wherever the SDK takes a session (``Runner.run(agent, text, session=...)``, ``run_sync``,
    ``run_streamed``)::

        session = PraisonSession("user-123", "sqlite:///agents.db")
        result = Runner.run_sync(agent, "Hi, I'm Alice", session=session)
        items = await session.get_items(limit=20)      # the newest 20 items, oldest first
        session.close()

    Args:
        session_id: the conversation (1-255 characters, no NUL); the praison session of that id.
        db: where the items go: a praison URL (``"postgresql://..."``, ``"redis://..."``, ``"sqlite:///a.db"``,
            ``"memory://"``, ...), or a store you opened: ``praison_db.db(...)``, ``await praison_db.aio.db(...)``
            or one of their ``.conversations``. None: what ``praison_db.db()`` picks (``$PRAISON_DATABASE_URL``,
            ``$DATABASE_URL``, else the JSON session files in ``~/.praison/sessions``).
        session_settings: the SDK's ``SessionSettings`` (or a dict of them); ``limit`` is the default number of
            newest items ``get_items()`` returns.
        user_id, agent_id: recorded on the praison session when this creates it (``delete_user`` finds it).
        **options: backend options for a URL (``table_prefix=``, ``prefix=``, ...), as ``praison_db.db`` takes them.

    A URL is opened on the first call, in a worker thread, and each call then runs the store in a worker thread:
    that works from any event loop and thread (``Runner.run_sync`` brings its own loop each time). A store you pass
    runs as it was opened: a ``praison_db.aio.db(...)`` store on its native async driver, on the loop it was opened
    on, sharing one connection pool between many sessions. ``close()`` / ``aclose()`` (or ``async with``) close
    what this session opened itself, never a store you passed.

    Raises:
        ConfigError: an unknown scheme, a missing driver extra, options without a URL, a ``db`` of another type.
        InputError: a bad session id (at once); a bad item (at ``add_items``, before anything is stored).
        StoreClosed: a call after ``close()``.
    """

    session_settings: SessionSettings | None = None

    def __init__(
        self,
        session_id: str,
        db: str | os.PathLike[str] | PraisonDB | AsyncPraisonDB | ConversationStore | AsyncConversationStore | None = None,
        *,
        session_settings: SessionSettings | Mapping[str, Any] | None = None,
        user_id: str | None = None,
        agent_id: str | None = None,
        **options: Any,
    ) -> None:
        self.session_id = check_id(session_id)
        self.session_settings = (
            coerce_session_settings(cast(Any, session_settings)) if session_settings is not None else SessionSettings()
        )
        self._owner = {"user_id": check_optional_id(user_id, "user_id"), "agent_id": check_optional_id(agent_id, "agent_id")}
        if options and not (db is None or isinstance(db, (str, os.PathLike))):
            raise ConfigError(f"options {sorted(options)} apply to a URL; a store you pass was opened with its own")
        if not (db is None or isinstance(db, (str, os.PathLike, PraisonDB, AsyncPraisonDB, ConversationStore, AsyncConversationStore))):
            raise ConfigError(
                f"db must be a praison URL, praison_db.db(...), praison_db.aio.db(...) or a conversations store, "
                f"not {type(db).__name__}"
            )
        self._source = db
        self._options = options
        # A passed sync store runs in worker threads, a passed async one as it is; a URL opens on first use.
        self._store: AsyncConversationStore | None = (
            wrap(db.conversations) if isinstance(db, PraisonDB)
            else wrap(db) if isinstance(db, ConversationStore)
            else db if isinstance(db, AsyncConversationStore)
            else None
        )
        self._opened: ConversationStore | None = None  # the store this session opened, closed by close()
        self._lock = threading.Lock()  # one open, and close() after it, whatever threads and loops call in
        self._closed = False

    # ---- the Session protocol ----

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """The session's items, oldest first: all of them, or the newest ``limit`` (default:
        ``session_settings.limit``; 0 returns none, a negative limit all, as the SDK's SQLiteSession does)."""
        store = await self._conversations()
        limit = resolve_session_limit(limit, self.session_settings)
        if isinstance(limit, int) and not isinstance(limit, bool) and limit < 0:
            limit = None
        messages = await store.get_messages(self.session_id, limit=limit)
        return [_item(m) for m in messages]

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Append ``items`` in order, in one transaction where the backend has them (all or none).

        Like every change here (``pop_item``, ``clear_session``), a cancelled call finishes first: CancelledError
        reaches the caller once the items are stored or known not to be, as with the SDK's own sessions.

        Raises:
            InputError: an item is not a dict, or holds what JSON cannot keep exactly (NaN, an object, a lone
                surrogate); nothing of the call is stored then.
        """
        store = await self._conversations()
        if isinstance(items, (str, bytes, Mapping)):
            raise InputError(f"add_items expects a list of items, got {type(items).__name__}")
        drafts = [_draft(item) for item in items]
        if not drafts:
            return
        await _to_the_end(self._append(store, drafts))

    async def _append(self, store: AsyncConversationStore, drafts: list[MessageDraft]) -> None:
        try:
            await store.add_messages(self.session_id, cast(Any, drafts))
        except SessionNotFound:
            # First items of this conversation, or the session was deleted meanwhile. get_or_create is race-free:
            # every process that gets here appends to the one session.
            await store.get_or_create_session(self.session_id, **self._owner)
            await store.add_messages(self.session_id, cast(Any, drafts))

    async def pop_item(self) -> TResponseInputItem | None:
        """Remove the newest item and return it (None when there is none); atomic, so concurrent pops each get a
        different item."""
        store = await self._conversations()
        message = await _to_the_end(store.pop_message(self.session_id))
        return None if message is None else _item(message)

    async def clear_session(self) -> None:
        """Remove every item, atomically. The praison session itself stays (empty)."""
        store = await self._conversations()
        await _to_the_end(store.clear_messages(self.session_id))

    # ---- lifecycle ----

    def close(self) -> None:
        """Close the store this session opened from a URL (a store you passed stays open). Idempotent; later calls
        raise StoreClosed."""
        self._shut()

    async def aclose(self) -> None:
        """``close()`` for async code: a server connection pool is closed in a worker thread."""
        await asyncio.to_thread(self._shut)

    def _shut(self) -> None:
        with self._lock:
            self._closed = True
            opened, self._opened = self._opened, None
        if opened is not None:
            opened.close()

    async def __aenter__(self) -> PraisonSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        where = self._store.url if self._store is not None else _describe(self._source)
        return f"<PraisonSession {self.session_id!r} on {where}{' closed' if self._closed else ''}>"

    # ---- internals ----

    def _closed_error(self) -> StoreClosed:
        return StoreClosed(f"{type(self).__name__} is closed (session {self.session_id!r}); make a new one")

    async def _conversations(self) -> AsyncConversationStore:
        if self._closed:
            raise self._closed_error()
        store = self._store
        if store is not None:
            return store
        if isinstance(self._source, AsyncPraisonDB):
            store = (await self._source.open()).conversations
        else:
            store = await asyncio.to_thread(self._open)
        self._store = store
        return store

    def _open(self) -> AsyncConversationStore:
        """Open the URL once, whichever thread gets here first."""
        with self._lock:
            if self._closed:
                raise self._closed_error()
            if self._store is not None:
                return self._store
            source = self._source
            url = os.fspath(source) if isinstance(source, (str, os.PathLike)) else env_url(DATABASE_URL_VARS)
            if url is not None:
                opened = open_store(url, "conversations", **self._options)
            elif self._options:
                raise ConfigError(f"options {sorted(self._options)} need a URL to apply to")
            else:
                from ..backends.jsonfile import JsonConversationStore

                opened = JsonConversationStore(default_home() / "sessions")
            self._opened = opened
            self._store = wrap(opened)
            return self._store


# The type of a message that holds a whole item as its content: an item the message fields cannot give back exactly
# (one with neither role nor type, as EncryptedSession's envelopes; an explicit null in a message field).
RAW_ITEM_TYPE = "praison_db.raw_item"
# Message fields whose explicit None the message model does not keep.
_NULLABLE = ("role", "type", "name", "tool_calls", "tool_call_id")


def _draft(item: object) -> MessageDraft:
    """An item as a message to append. Its own ``id`` stays one of its fields, not the message id: the SDK's
    sessions keep every item added, and items can share an id."""
    if not isinstance(item, Mapping):
        raise InputError(f"each item must be a dict (a Responses API input item), got {type(item).__name__}")
    if _fits_the_fields(item):
        try:
            return MessageDraft.build(
                item.get("role"),
                item.get("content"),
                type=item.get("type"),
                name=item.get("name"),
                tool_calls=item.get("tool_calls"),
                tool_call_id=item.get("tool_call_id"),
                metadata=item.get("metadata"),
                extra={key: value for key, value in item.items() if key not in MESSAGE_FIELDS or key == "id"},
            ).with_new_id()
        except InputError:
            pass  # a field of another shape than the message model's (a numeric name, a list as metadata)
    try:
        return MessageDraft.build(None, dict(item), type=RAW_ITEM_TYPE).with_new_id()
    except InputError as e:  # the item itself is not plain JSON
        raise InputError(f"an item cannot be stored: {str(e).replace('content', 'it', 1)}") from None


def _fits_the_fields(item: Mapping[str, Any]) -> bool:
    """Whether the message fields give ``item`` back exactly (``Message.to_item``)."""
    if item.get("type") == RAW_ITEM_TYPE or (item.get("role") is None and item.get("type") is None):
        return False
    if any(key in item and item[key] is None for key in _NULLABLE) or ("metadata" in item and not item["metadata"]):
        return False
    if "content" in item:
        return item["content"] is not None or item.get("role") is not None
    return item.get("role") is None  # to_item gives a message with a role its content, None when missing


def _item(message: Message) -> TResponseInputItem:
    if message.type == RAW_ITEM_TYPE and isinstance(message.content, dict):
        return cast("TResponseInputItem", message.content)
    return cast("TResponseInputItem", message.to_item())


def _describe(source: object) -> str:
    if source is None:
        return "the default store"
    if isinstance(source, (str, os.PathLike)):
        try:
            return parse_url(os.fspath(source)).render()  # the password masked
        except Error:
            return "an invalid URL"
    return repr(source)
