"""LangChain's chat message history, kept by praison_db: :class:`PraisonChatMessageHistory`.

    from langchain_core.messages import AIMessage, HumanMessage
    from praison_db.integrations.langchain import PraisonChatMessageHistory

    history = PraisonChatMessageHistory("user-123", "postgresql://ai:ai@localhost/ai")
    history.add_messages([HumanMessage("hi"), AIMessage("hello")])
    history.messages                   # every message of the session, as LangChain objects, oldest first
    await history.aget_messages()      # the same on praison_db's async API

It works on every backend (any praison_db URL, a ``praison_db.db(...)``, a ``praison_db.aio.db(...)`` or one of their
conversation stores). Needs ``pip install 'praison-db[langchain]'``. A history given a URL opens a connection pool of
its own; where histories are made per call (``RunnableWithMessageHistory``), open the db once and hand it over::

    store = praison_db.db("postgresql://ai:ai@localhost/ai")      # or: await praison_db.aio.db(...) in async code
    chain = RunnableWithMessageHistory(prompt | model, lambda session_id: PraisonChatMessageHistory(session_id, store,
                                       limit=50), input_messages_key="question", history_messages_key="history")

How a LangChain message is stored, so that praison_db's own reads (``get_history``, the CLI, the UI) see a normal
conversation and the message comes back exactly (same class, same fields):

==========================  ===============================================================================
LangChain                   praison_db Message
==========================  ===============================================================================
class                       ``role``: HumanMessage "user", AIMessage "assistant", SystemMessage "system",
                            ToolMessage "tool", FunctionMessage "function", ChatMessage its own role.
``content``                 ``content`` (a string, or the list of content blocks as JSON)
``id``                      the message id (and ``extra["id"]``); None: the store draws an id, and the
                            message comes back with ``id=None``
``name``, ``tool_call_id``  ``name``, ``tool_call_id``
AIMessage ``tool_calls``    ``tool_calls`` in OpenAI's form (``{"id", "type": "function", "function":
                            {"name", "arguments": "<JSON>"}}``), so ``get_history()`` can be sent to a model
any other field             ``extra`` under its own name, when it differs from the default:
                            ``additional_kwargs``, ``response_metadata``, ``usage_metadata``,
                            ``invalid_tool_calls``, ``artifact``, ``status``, ``tool_call_chunks``, ...
==========================  ===============================================================================

``extra["langchain_type"]`` names the class where the role alone does not (a ChatMessage whose role is "user", the
``*Chunk`` classes). A RemoveMessage is kept as a record of the removal (an item without a role, type "remove", its
target in ``extra["remove_id"]`` and an id of its own), as LangChain's in-memory history keeps it: nothing is deleted.
Messages written by other code (praison_db's Agent, another framework) are read by their role; items without a
role (function calls, reasoning) are left out of ``messages``.

Everything stored is JSON: a field holding anything else (an ``artifact`` that is a Python object) is refused with
:class:`~praison_db.InputError` and nothing of that batch is stored.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Coroutine, Sequence
from typing import Any

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    ChatMessageChunk,
    FunctionMessage,
    FunctionMessageChunk,
    HumanMessage,
    HumanMessageChunk,
    RemoveMessage,
    SystemMessage,
    SystemMessageChunk,
    ToolMessage,
    ToolMessageChunk,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call

from .. import aio
from ..base import ConversationStore
from ..bridge import in_bridge
from ..errors import ConfigError, InputError, SessionNotFound
from ..facade import DATABASE_URL_VARS, PraisonDB, default_home, env_url, open_store
from ..models import Message, check_id, check_optional_id
from ..registry import resolve
from ..url import StoreURL, parse_url

__all__ = ["PraisonChatMessageHistory", "to_item", "from_message"]

# The stored role of each class; a ChatMessage keeps its own role, a RemoveMessage has none.
_ROLES: dict[type[BaseMessage], str | None] = {
    HumanMessage: "user",
    HumanMessageChunk: "user",
    AIMessage: "assistant",
    AIMessageChunk: "assistant",
    SystemMessage: "system",
    SystemMessageChunk: "system",
    ToolMessage: "tool",
    ToolMessageChunk: "tool",
    FunctionMessage: "function",
    FunctionMessageChunk: "function",
    RemoveMessage: None,
}
_CHAT_CLASSES: tuple[type[BaseMessage], ...] = (ChatMessage, ChatMessageChunk)
# LangChain's own name of each class (its ``type`` field): what extra["langchain_type"] holds.
_KINDS: dict[type[BaseMessage], str] = {cls: cls.model_fields["type"].default for cls in (*_ROLES, *_CHAT_CLASSES)}
_CLASSES: dict[str, type[BaseMessage]] = {kind: cls for cls, kind in _KINDS.items()}
# The class a role means when nothing else says: how messages written by other code are read.
_BY_ROLE: dict[str, type[BaseMessage]] = {
    "user": HumanMessage,
    "assistant": AIMessage,
    "system": SystemMessage,
    "tool": ToolMessage,
    "function": FunctionMessage,
}
# Fields that have a column of their own (or are the class itself); every other field goes to extra.
_COLUMNS = frozenset({"type", "role", "content", "id", "name", "tool_call_id", "tool_calls"})
TYPE_KEY, REMOVE_KEY = "langchain_type", "remove_id"


def _defaults(cls: type[BaseMessage]) -> dict[str, Any]:
    return {
        name: field.get_default(call_default_factory=True)
        for name, field in cls.model_fields.items()
        if name not in _COLUMNS and not field.is_required()
    }


_DEFAULTS = {cls: _defaults(cls) for cls in _KINDS}
_FIELDS = {cls: frozenset(cls.model_fields) for cls in _KINDS}  # looked up per message read: pydantic's is slower


# ---- LangChain message <-> praison_db item ----


def _class_for(role: str | None) -> type[BaseMessage]:
    return _BY_ROLE.get(role, ChatMessage) if role is not None else RemoveMessage


def _openai_tool_calls(calls: list[Any]) -> list[dict[str, Any]]:
    """LangChain's tool calls in the chat API's form: what a model is sent back in the assistant message."""
    out = []
    for call in calls:
        try:
            arguments = json.dumps(call["args"], ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise InputError(f"the args of tool call {call.get('name')!r} must be JSON (dict, list, str, number): {e}") from None
        out.append({"id": call.get("id"), "type": "function", "function": {"name": call["name"], "arguments": arguments}})
    return out


def _langchain_tool_calls(calls: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """(tool_calls, invalid_tool_calls) from tool calls in the chat API's form; arguments that are not a JSON
    object make an invalid tool call, as LangChain's own parsers do."""
    valid: list[Any] = []
    invalid: list[Any] = []
    for call in calls:
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        name, arguments, call_id = function.get("name"), function.get("arguments"), call.get("id")
        try:
            args = json.loads(arguments) if isinstance(arguments, str) and arguments.strip() else {}
        except ValueError as e:
            invalid.append(invalid_tool_call(name=name, args=arguments, id=call_id, error=f"arguments are not JSON: {e}"))
            continue
        if isinstance(name, str) and isinstance(args, dict):
            valid.append(tool_call(name=name, args=args, id=call_id))
        else:
            invalid.append(invalid_tool_call(name=name, args=arguments, id=call_id, error="not a function call with JSON object arguments"))
    return valid, invalid


def to_item(message: BaseMessage) -> dict[str, Any]:
    """The praison_db item (``ConversationStore.add_messages`` takes it) that stores ``message``; see the module's
    table.

    Raises:
        InputError: not one of LangChain's message classes.
    """
    cls = type(message)
    kind = _KINDS.get(cls)
    if kind is None:
        raise InputError(
            f"PraisonChatMessageHistory stores LangChain's message classes (HumanMessage, AIMessage, ...), not {cls.__name__}"
        )
    data = message.model_dump()
    role = data["role"] if cls in _CHAT_CLASSES else _ROLES[cls]
    item: dict[str, Any] = {"role": role, "content": data["content"]}
    if role is None:
        item["type"] = "remove"
        item[REMOVE_KEY] = data["id"]  # the id of the message it removes: not this record's id
    elif data["id"] is not None:
        item["id"] = data["id"]
    if _class_for(role) is not cls:
        item[TYPE_KEY] = kind
    for name in ("name", "tool_call_id"):
        if data.get(name) is not None:
            item[name] = data[name]
    if data.get("tool_calls"):
        item["tool_calls"] = _openai_tool_calls(data["tool_calls"])
    for name, default in _DEFAULTS[cls].items():
        if data[name] != default:
            item[name] = data[name]
    return item


def _content(value: Any) -> str | list[Any]:
    """LangChain content from stored content: as stored when it is a string or a list (all this module writes)."""
    if isinstance(value, (str, list)):
        return value
    return "" if value is None else json.dumps(value, ensure_ascii=False)


def from_message(message: Message) -> BaseMessage | None:
    """The LangChain message a stored message holds (see the module's table); None for an item without a role that
    this module did not write (a function call or reasoning item of another framework)."""
    extra = dict(message.extra)
    kind = extra.pop(TYPE_KEY, None)
    cls = _CLASSES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        if message.role is None and message.type != "remove":
            return None
        cls = _class_for(message.role)
    fields = _FIELDS[cls]
    values: dict[str, Any] = {"content": _content(message.content)}
    own_id = extra.pop(REMOVE_KEY if cls is RemoveMessage else "id", None)
    if own_id is not None:
        values["id"] = own_id
    for name in ("name", "tool_call_id"):
        if getattr(message, name) is not None and name in fields:
            values[name] = getattr(message, name)
    if "role" in fields:
        values["role"] = message.role
    if "tool_calls" in fields and message.tool_calls:
        values["tool_calls"], invalid = _langchain_tool_calls(message.tool_calls)
        if invalid:  # only in tool calls written by other code: this module writes the invalid ones to extra
            values["invalid_tool_calls"] = invalid
    values.update((name, value) for name, value in extra.items() if name in fields and name not in _COLUMNS)
    try:
        return cls(**values)
    except Exception:  # noqa: BLE001 - the classes' validators raise ValidationError, KeyError, ValueError...
        # Written by other code in a shape this class refuses: still shown, as a message with its role.
        return ChatMessage(role=message.role or message.type or "unknown", content=values["content"], id=values.get("id"))


# ---- the history ----


def _in_process(url: StoreURL) -> bool:
    """Whether the URL names data that lives in this process only: both faces must then share one store."""
    return url.base_scheme == "memory" or (url.base_scheme == "sqlite" and url.path in ("", "/", "/:memory:"))


def _check_limit(limit: object) -> int | None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise InputError("limit must be a non-negative integer (the newest messages to read) or None for all")
    return limit


class PraisonChatMessageHistory(BaseChatMessageHistory):
    """A LangChain chat message history kept in one praison_db session, on any backend.

    The sync methods (``messages``, ``add_messages``, ``clear``) use praison_db's sync API; the async ones
    (``aget_messages``, ``aadd_messages``, ``aclear``) use its async API (``praison_db.aio``), so on PostgreSQL, MySQL,
    Redis and MongoDB they await the async driver, and elsewhere a worker thread: they never block the event loop. Each store is opened at its first use.

    Given a URL (or nothing), the history opens what it needs itself, once per face, and :meth:`close` /
    :meth:`aclose` close it. Given a db object, it uses that object and leaves closing it to its owner:

    - a sync ``praison_db.db(...)`` (or its ``conversations`` store): the async methods run the sync store in worker
      threads;
    - an async ``praison_db.aio.db(...)`` (or its ``conversations`` store): on a backend without an async driver
      (memory, SQLite, JSON and YAML files, chDB, DynamoDB) the sync methods call the store directly; on PostgreSQL,
      MySQL, Redis and MongoDB they run on the event loop the store belongs to, which must then be running in another thread (called from that loop itself
      they raise ConfigError: await the async methods there).

    Messages are stored exactly (see :mod:`praison_db.integrations.langchain`), and a message's ``id`` is its
    praison_db message id: **adding a message whose id the session already holds stores nothing** (the stored one
    stays), so a retried ``add_messages`` never doubles a turn, and an id repeated within one call is stored once.
    Messages without an id are always stored. ``add_messages`` is one transaction where the backend has them.
    ``clear()`` removes the messages and keeps the session (its owner, name, metadata).
    """

    def __init__(
        self,
        session_id: str,
        db: str | os.PathLike[str] | PraisonDB | aio.AsyncPraisonDB | ConversationStore | aio.AsyncConversationStore | None = None,
        *,
        limit: int | None = None,
        user_id: str | None = None,
        agent_id: str | None = None,
        **options: Any,
    ) -> None:
        """
        Args:
            session_id: the praison_db session that holds the conversation; created at the first add.
            db: a praison_db URL (``"sqlite:///chat.db"``, ``"redis://..."``), a ``praison_db.db(...)``, a
                ``praison_db.aio.db(...)`` or a conversations store of either; None: ``$PRAISON_DATABASE_URL`` /
                ``$DATABASE_URL``, else the JSON DefaultSessionStore in ``$PRAISON_HOME/sessions``.
            limit: read only the newest ``limit`` messages (a window for the model's context); None reads all.
            user_id, agent_id: the owner and agent recorded on the session when this history creates it.
            **options: backend options for a URL (``table_prefix``, ``prefix``, ...).

        Raises:
            ConfigError: ``db`` is of the wrong kind, an unknown URL scheme or one whose driver extra is missing;
                options given with a db object.
            InputError: a bad session id, user id, agent id or limit.
        """
        super().__init__()
        self.session_id = check_id(session_id)
        self.limit = _check_limit(limit)
        self._new_session: dict[str, Any] = {
            "user_id": check_optional_id(user_id, "user_id"),
            "agent_id": check_optional_id(agent_id, "agent_id"),
        }
        self._options = options
        self._url: StoreURL | None = None
        self._sync: ConversationStore | None = None
        self._async: Any = None  # an AsyncConversationStore
        self._async_db: aio.AsyncPraisonDB | None = None
        self._owns_sync = self._owns_async = False
        self._loop: asyncio.AbstractEventLoop | None = None  # where a native async store lives
        self._opening = threading.Lock()
        if db is None:
            text = env_url(DATABASE_URL_VARS)
            self._url = parse_url(text) if text is not None else None
        elif isinstance(db, (str, os.PathLike)):
            self._url = parse_url(db)
        elif isinstance(db, PraisonDB):
            self._sync = db.conversations
        elif isinstance(db, ConversationStore):
            self._sync = db
        elif isinstance(db, aio.AsyncPraisonDB):
            self._async_db = db
        elif isinstance(db, aio.AsyncConversationStore):
            self._async = db
        else:
            raise ConfigError(
                "db must be a praison_db URL, praison_db.db(...), praison_db.aio.db(...) or a conversations store, "
                f"not {type(db).__name__}"
            )
        if self._url is not None:
            resolve(self._url.scheme, "conversations")  # an unknown scheme or a missing driver fails here, not at first use
        if options and self._url is None:
            raise ConfigError(f"options {sorted(options)} apply to a URL; set them where the db object was opened")
        self._given_async = self._async is not None or self._async_db is not None
        if self._given_async:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                pass

    # ---- LangChain's interface ----

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]  # read from the store, not assigned
        """The session's messages (the newest ``limit`` of them), oldest first; [] before the first add."""
        store = self._sync_face()
        if store is None:
            return self._on_loop(self.aget_messages())  # type: ignore[no-any-return]
        return _converted(store.get_messages(self.session_id, limit=self.limit))

    async def aget_messages(self) -> list[BaseMessage]:
        """:attr:`messages` on the async API."""
        store = await self._async_face()
        return _converted(await store.get_messages(self.session_id, limit=self.limit))

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append ``messages`` in order, in one transaction where the backend has them; a message whose id the
        session already holds is not stored again.

        Raises:
            InputError: a message that is not one of LangChain's classes or holds something JSON cannot (nothing
                of the batch is stored).
        """
        items = _items(messages)
        if not items:
            return
        store = self._sync_face()
        if store is None:
            self._on_loop(self._aappend(items))
            return
        try:
            store.add_messages(self.session_id, items)
        except SessionNotFound:  # the first add: nothing was stored, so adding again after creating is safe
            store.get_or_create_session(self.session_id, **self._new_session)
            store.add_messages(self.session_id, items)

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        """:meth:`add_messages` on the async API."""
        items = _items(messages)
        if items:
            await self._aappend(items)

    def clear(self) -> None:
        """Remove every message of the session, atomically; the session itself stays."""
        store = self._sync_face()
        if store is None:
            self._on_loop(self.aclear())
            return
        store.clear_messages(self.session_id)

    async def aclear(self) -> None:
        """:meth:`clear` on the async API."""
        store = await self._async_face()
        await store.clear_messages(self.session_id)

    # ---- lifecycle ----

    def close(self) -> None:
        """Close the store the sync methods opened from a URL (a db object given is its owner's to close).

        Raises:
            ConfigError: the async methods opened an async store too: ``await history.aclose()`` closes both.
        """
        if self._owns_async and not self._async.closed:
            raise ConfigError("this history opened an async store too; close it with `await history.aclose()`")
        if self._owns_sync and self._sync is not None:
            self._sync.close()

    async def aclose(self) -> None:
        """Close every store this history opened from a URL, on either face. Idempotent."""
        if self._owns_async:
            await self._async.aclose()
        if self._owns_sync and self._sync is not None:
            await asyncio.to_thread(self._sync.close)

    def __enter__(self) -> PraisonChatMessageHistory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> PraisonChatMessageHistory:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        store = self._sync or self._async or self._async_db or (self._url.render() if self._url else "json default")
        return f"<PraisonChatMessageHistory session_id={self.session_id!r} on {store}>"

    # ---- the two faces ----

    async def _aappend(self, items: list[dict[str, Any]]) -> None:
        store = await self._async_face()
        try:
            await store.add_messages(self.session_id, items)
        except SessionNotFound:
            await store.get_or_create_session(self.session_id, **self._new_session)
            await store.add_messages(self.session_id, items)

    def _sync_face(self) -> ConversationStore | None:
        """The sync store, opened at first use when it is ours to open; None when the only store is an async one on
        an async driver (the call then runs on that store's loop)."""
        if self._sync is not None:
            return self._sync
        if not self._given_async:
            with self._opening:
                if self._sync is None:
                    self._sync = self._open_sync()
                    self._owns_sync = True
            return self._sync
        core = self._given_async_core()
        return core if in_bridge() or not getattr(core, "asynchronous", False) else None

    def _open_sync(self) -> ConversationStore:
        if self._url is not None:
            return open_store(self._url, "conversations", **self._options)  # type: ignore[no-any-return]
        from ..backends.jsonfile import JsonConversationStore

        return JsonConversationStore(default_home() / "sessions")

    def _given_async_core(self) -> ConversationStore:
        if self._async is not None:
            return self._async.sync_store  # type: ignore[no-any-return]
        assert self._async_db is not None
        try:
            return self._async_db.sync_db.conversations
        except ConfigError:
            raise ConfigError(
                "the praison_db.aio.db(...) given to this history is not open yet: `await` it first, or call an async "
                "method (aget_messages, aadd_messages, aclear)"
            ) from None

    async def _async_face(self) -> Any:
        """The async store: the one given, else opened at first use (worker threads over the sync store where the
        backend has no async driver or the data lives in this process)."""
        if self._async is None:
            if self._async_db is not None:
                await self._async_db.open()
                store = self._async_db.conversations
                owned = False
            elif self._url is not None and not _in_process(self._url) and hasattr(resolve(self._url.scheme, "conversations"), "from_url_async"):
                store = await aio.open_store(self._url.render(hide_password=False), "conversations", **self._options)
                owned = True
            else:
                sync = self._sync if self._sync is not None else await asyncio.to_thread(self._sync_face)
                store, owned = aio.wrap(sync, native=False), False  # type: ignore[arg-type]
            if self._async is not None and owned:  # another task opened one meanwhile
                await store.aclose()
            elif self._async is None:
                self._async, self._owns_async = store, owned
        if getattr(self._async.sync_store, "asynchronous", False):
            loop = asyncio.get_running_loop()
            if self._loop is None:
                self._loop = loop
            elif self._loop is not loop:
                raise ConfigError(
                    "this history's async store belongs to another event loop; make one history (and store) per loop"
                )
        return self._async

    def _on_loop(self, call: Coroutine[Any, Any, Any]) -> Any:
        """Run an async method's coroutine on the loop of the given async store, from a thread outside that loop."""
        loop = self._loop
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if loop is None or loop.is_closed() or not loop.is_running() or here is loop:
            call.close()
            raise ConfigError(
                "this history's store is an async one (praison_db.aio) on an async driver: in async code await "
                "aget_messages(), aadd_messages() or aclear(); for sync code give the history a URL or praison_db.db(...)"
            )
        return asyncio.run_coroutine_threadsafe(call, loop).result()


def _items(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    if isinstance(messages, BaseMessage):  # iterating one would yield its fields
        raise InputError("add_messages takes a list of messages; pass [message], or call add_message(message)")
    return [to_item(m) for m in messages]


def _converted(stored: list[Message]) -> list[BaseMessage]:
    return [m for m in map(from_message, stored) if m is not None]
