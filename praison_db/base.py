"""The two store protocols and the kit every backend builds on.

A backend subclasses :class:`ConversationStore` or :class:`StateStore` and implements the few ``_``-prefixed
primitives. Validation, cursors, export/import, scoping, error translation and the closed-store check live here,
once. The async API (praison_db.aio) runs these same classes, so nothing here is written twice.

The kit (``__all__``), for backends ours and third-party:
- protocols and lifecycle: ``ConversationStore``, ``StateStore``, ``Store``, ``Capabilities``, ``closed_error``;
- connections: ``SharedConnection`` (one pool shared by a URL's stores, closed with the last; its ``classify`` is the
  backend's error table, ``translate`` always gives a praison_db error) and ``ConnectedStore`` (``from_url`` and
  ``from_url_async`` over it);
- options: ``Option``, ``resolve_options``, ``BOOL``, ``POSITIVE_SECONDS``, ``check_prefix``;
- shared semantics: ``SessionFilter``, ``activity_key``, ``newest_window``, ``after_last``, ``missing_session``,
  ``seq_taken``, ``incremented``, ``not_an_integer``, ``MISSING``, ``loads``, ``untranslated``.
Validation of values lives in :mod:`praison_db.models`; running sync code on an event loop in
:mod:`praison_db.bridge`.
"""

from __future__ import annotations

import base64
import functools
import inspect
import json
import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar, NoReturn, TypeVar

from .errors import ConfigError, Error, InputError, IntegrityError, SessionExists, SessionNotFound, StoreClosed, StoreUnavailable
from .models import (
    Message,
    MessageDraft,
    Page,
    Session,
    as_utc,
    check_finite,
    check_id,
    check_json_dict,
    check_optional_id,
    check_optional_text,
    check_session_type,
    check_text,
    encode_json,
    new_id,
    utcnow,
)
from .url import StoreURL, redacted

__all__ = [
    "BOOL",
    "EXPORT_FORMAT",
    "MISSING",
    "POSITIVE_SECONDS",
    "Capabilities",
    "ConnectedStore",
    "ConversationStore",
    "Option",
    "SessionFilter",
    "SharedConnection",
    "StateStore",
    "Store",
    "activity_key",
    "after_last",
    "check_prefix",
    "closed_error",
    "incremented",
    "loads",
    "missing_session",
    "newest_window",
    "not_an_integer",
    "resolve_options",
    "seq_taken",
    "untranslated",
]

log = logging.getLogger("praison_db")
F = TypeVar("F", bound=Callable[..., Any])
_UNSET: Any = object()
EXPORT_FORMAT = "praison_db.session/v1"
MAX_KEY_LENGTH = 512
# Seqs, limits and counters are 64-bit signed integers in every database.
MAX_INT64 = 2**63 - 1
# Longest TTL: about a century. Far beyond that, expiry times leave what the databases' time types can hold.
MAX_TTL_SECONDS = 100 * 365.25 * 86400


@dataclass(frozen=True)
class Capabilities:
    """What a store guarantees; the conformance suite skips (with the reason shown) what a store does not."""

    transactions: bool = True
    multi_process: bool = True  # several processes may append to one session / incr one key at once
    persistent: bool = True  # data outlives the store object
    reason: str = ""  # why something above is False


@dataclass(frozen=True)
class Option:
    """One praison_db option a backend accepts in the URL query string or as a keyword argument."""

    convert: Callable[[Any], Any]
    default: Any
    help: str


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {value!r}")


def _to_positive_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):  # ttl=True would quietly mean one second
        raise ValueError("must be a number of seconds, not a bool")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError("must be a positive number of seconds")
    if number > MAX_TTL_SECONDS:
        raise ValueError(f"must be at most {MAX_TTL_SECONDS:.0f} seconds (100 years)")
    return number


BOOL, POSITIVE_SECONDS = _to_bool, _to_positive_float


def resolve_options(
    owner: str, spec: Mapping[str, Option], given: Mapping[str, Any], *, passthrough: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split and convert options: (praison_db options with defaults filled in, leftovers for the driver).

    Unknown names are a ConfigError listing the valid ones, unless ``passthrough`` (SQL drivers take their own
    query parameters, such as ``sslmode``).
    """
    ours: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for name, value in given.items():
        if name not in spec:
            if passthrough:
                extra[name] = value
                continue
            valid = ", ".join(sorted(spec)) or "none"
            raise ConfigError(f"unknown option {name!r} for {owner}; valid options: {valid}")
        try:
            ours[name] = spec[name].convert(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"option {name}={str(value)[:40]!r} for {owner} is invalid: {e}") from None
    for name, option in spec.items():
        ours.setdefault(name, option.default)
    return ours, extra


def check_prefix(value: Any) -> str:
    text = str(value)
    if not all(c.isalnum() or c in "_" for c in text) or len(text) > 32:
        raise ValueError("use at most 32 letters, digits or underscores")
    return text


def _closed_error(store: _Store) -> StoreClosed:
    return StoreClosed(f"{type(store).__name__} ({store.url}) is closed; open a new one with db(...)")


def _operation(fn: F) -> F:
    """Public-method wrapper: refuse after close, and turn driver exceptions into praison_db errors."""

    @functools.wraps(fn)
    def wrapper(self: _Store, *args: Any, **kwargs: Any) -> Any:
        if self._closed:
            raise _closed_error(self)
        try:
            return fn(self, *args, **kwargs)
        except Exception as e:
            _reraise(self, e)

    wrapper._praison_operation = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def _guarded(fn: F) -> F:
    """Closed check for public methods that only call other public methods or return views (scope, get_history)."""

    @functools.wraps(fn)
    def wrapper(self: _Store, *args: Any, **kwargs: Any) -> Any:
        if self._closed:
            raise _closed_error(self)
        return fn(self, *args, **kwargs)

    wrapper._praison_operation = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


# Exceptions that a bad argument provokes deep inside a driver (text it cannot encode, a number it cannot hold).
_INPUT_FAILURES = (UnicodeError, OverflowError, RecursionError)


def untranslated(where: str, error: BaseException, password: str | None) -> Error:
    """The praison_db error for an exception no backend table knows: its type and text on one line, no password."""
    kind = InputError if isinstance(error, _INPUT_FAILURES) else Error
    return kind(f"{where} failed with {type(error).__name__}: {redacted(error, password)}")


def _reraise(store: _Store, error: Exception) -> NoReturn:
    """Raise ``error`` as the backend's praison_db error for it; anything untranslated becomes a praison_db.Error
    naming the exception type, with its text on one line and no password."""
    if store._closed and (type(error) in (Error, StoreUnavailable) or not isinstance(error, Error)):
        # close() ran while this call was in flight: the driver's complaint about its closed pool means just that.
        raise _closed_error(store) from error
    if isinstance(error, Error):
        raise error
    translated = store._translate_error(error)
    if translated is None:
        translated = untranslated(type(store).__name__, error, store._secret())
    raise translated from error


class SharedConnection:
    """A connection pool or client shared by the stores of one URL, closed when the last of them lets go.

    The opener holds the first reference; each store ``acquire()``s its own and ``release()``s it on close.
    """

    where: str = "?"  # "PostgreSQL at postgresql://ai:***@host/db": how errors name the server
    password: str | None = None  # stripped from every error message
    asynchronous: bool = False  # built on the async driver: calls must run in a bridge greenlet (praison_db.aio)

    def __init__(self) -> None:
        self._refs = 1
        self._refs_lock = threading.Lock()

    def classify(self, error: BaseException) -> Error | None:
        """The backend's error table: its praison_db error for a driver exception it recognises, else None."""
        return None

    def translate(self, error: BaseException) -> Error:
        """Always a praison_db error: the backend's (``classify``), else a generic one naming the exception type, on one
        line and without the password."""
        if isinstance(error, Error):
            return error
        return self.classify(error) or untranslated(self.where, error, self.password)

    def acquire(self: Any) -> Any:
        with self._refs_lock:
            self._refs += 1
        return self

    def release(self) -> None:
        with self._refs_lock:
            self._refs -= 1
            last = self._refs <= 0
        if last:
            self._dispose()

    def _dispose(self) -> None:
        raise NotImplementedError


class ConnectedStore:
    """Opening for stores over a :class:`SharedConnection` (SQL, Redis, MongoDB): one connection class per backend,
    built from the URL with the sync driver (``from_url``) or the async one (``from_url_async``, for praison_db.aio),
    and handed to the store, which holds its own reference."""

    _connection_class: ClassVar[Callable[..., SharedConnection]]

    @classmethod
    def from_url(cls, url: StoreURL, **options: Any) -> Any:
        return cls._over(cls._connection_class(url, options, asynchronous=False))

    @classmethod
    def from_url_async(cls, url: StoreURL, **options: Any) -> Any:
        """The same store on the backend's async driver; its calls must run in a bridge greenlet (praison_db.aio)."""
        return cls._over(cls._connection_class(url, options, asynchronous=True))

    def _connection(self) -> SharedConnection:
        found = [v for v in vars(self).values() if isinstance(v, SharedConnection)]
        assert len(found) == 1, f"{type(self).__name__} holds {len(found)} shared connections"
        return found[0]

    @property
    def asynchronous(self) -> bool:
        """True when this store runs on the backend's async driver (opened by ``from_url_async``)."""
        return self._connection().asynchronous

    def _translate_error(self, error: Exception) -> Error | None:
        return self._connection().translate(error)

    @classmethod
    def _over(cls, connection: SharedConnection) -> Any:
        try:
            return cls(connection)  # type: ignore[call-arg]
        except Exception as e:
            if isinstance(e, Error):
                raise
            raise connection.translate(e) from e
        finally:
            connection.release()  # the opener's reference: the store has acquired its own


_LIFECYCLE = frozenset({"close", "from_url", "from_url_async"})


class _Store:
    """Lifecycle shared by both protocols: URL for messages, options, close, context manager."""

    OPTIONS: ClassVar[Mapping[str, Option]] = {}
    capabilities: ClassVar[Capabilities] = Capabilities()
    _closed: bool = False
    url: str = "?"

    @classmethod
    def from_url(cls, url: StoreURL, **options: Any) -> Any:
        """Open the store a URL names; options come from the query string and keyword arguments."""
        raise NotImplementedError

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Every public method refuses to run after close(), including ones a backend adds (state_store(),
        # purge_expired()): a method cannot be forgotten. Those not already wrapped get the plain closed check.
        super().__init_subclass__(**kwargs)
        for name, member in list(vars(cls).items()):
            if (
                name.startswith("_")
                or name in _LIFECYCLE
                or not inspect.isfunction(member)
                or getattr(member, "_praison_operation", False)
            ):
                continue
            setattr(cls, name, _guarded(member))

    def _translate_error(self, error: Exception) -> Error | None:
        """Map a driver exception to a praison_db error (or None: the caller wraps it generically)."""
        return None

    @_guarded
    def server_version(self) -> str | None:
        """The version the server reports; None where there is no server (files, memory)."""
        return self._server_version()

    @_guarded
    def schema_version(self) -> tuple[int, int] | None:
        """(the schema version of the store's tables, the version this praison-db expects); None where the backend
        keeps no versioned schema."""
        return self._schema_version()

    def _server_version(self) -> str | None:
        return None

    def _schema_version(self) -> tuple[int, int] | None:
        return None

    def _secret(self) -> str | None:
        """The connection password, to strip from error messages (backends keep it on the store or its pool)."""
        for holder in (self, getattr(self, "db", None), getattr(self, "conn", None)):
            for attr in ("password", "_password"):
                value = getattr(holder, attr, None)
                if isinstance(value, str) and value:
                    return value
        return None

    def _close(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Release connections and files. Idempotent; any later call raises StoreClosed."""
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self: Any) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<{type(self).__name__} {self.url}{state}>"


@dataclass(frozen=True)
class SessionFilter:
    user_id: str | None = None
    agent_id: str | None = None
    session_type: str | None = None

    def matches(self, s: Session) -> bool:
        return (
            (self.user_id is None or s.user_id == self.user_id)
            and (self.agent_id is None or s.agent_id == self.agent_id)
            and (self.session_type is None or s.session_type == self.session_type)
        )


def activity_key(s: Session) -> tuple[datetime, str]:
    """Sort key for "newest activity first": updated_at, then session_id to break ties (both descending)."""
    return (s.updated_at, s.session_id)


def encode_cursor(s: Session) -> str:
    raw = json.dumps([s.updated_at.isoformat(), s.session_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


_CURSOR_RANGE = (datetime(1970, 1, 1, tzinfo=timezone.utc), datetime(2200, 1, 1, tzinfo=timezone.utc))


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The position a cursor names. Anything that no list_sessions page could have returned is an InputError."""
    try:
        if not isinstance(cursor, str) or len(cursor) > 2048 or not cursor.isascii():
            raise ValueError
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, sid = json.loads(raw)
        if not isinstance(stamp, str) or not isinstance(sid, str):
            raise ValueError
        when = as_utc(datetime.fromisoformat(stamp))
        if not _CURSOR_RANGE[0] <= when < _CURSOR_RANGE[1]:
            raise ValueError
        return when, check_id(sid)
    except Exception:
        raise InputError("invalid cursor: pass back the next_cursor of a previous list_sessions page") from None


def newest_window(messages: list[Message], limit: int | None, before_seq: int | None, after_seq: int | None) -> list[Message]:
    """Reference semantics of get_messages over a chronological list (used by in-process backends)."""
    picked = [
        m for m in messages if (before_seq is None or m.seq < before_seq) and (after_seq is None or m.seq > after_seq)
    ]
    return picked[-limit:] if limit is not None else picked


def _check_limit(limit: Any, what: str = "limit", maximum: int | None = None) -> int | None:
    """A non-negative int or None; one beyond 64 bits means "all" (None), as no session holds more."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise InputError(f"{what} must be a non-negative integer or None")
    if maximum is not None and limit > maximum:
        raise InputError(f"{what} must be at most {maximum}")
    return None if limit > MAX_INT64 else int(limit)


def _check_seq(value: Any, what: str) -> int | None:
    """An int or None, clamped to 0..MAX_INT64: seqs start at 1, so the clamp never changes which messages match,
    and no database sees a number it cannot hold."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{what} must be an integer seq or None")
    return min(max(int(value), 0), MAX_INT64)


class ConversationStore(_Store, ABC):
    """Every message of every session. One protocol, every backend.

    Appends are O(1) in the session's length; ``get_messages(limit=n)`` returns the newest ``n`` messages in
    chronological order; ``seq`` numbers a session's messages 1, 2, 3, ... without gaps even with concurrent writers
    (where ``capabilities.multi_process``).
    """

    # ---- sessions ----

    @_operation
    def create_session(
        self,
        session_id: str | None = None,
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        session_type: str = "agent",
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Session:
        """Create a session.

        Args:
            session_id: the id; a random one is generated when None.
            user_id: owner; reads and deletes that pass a user_id only see that owner's sessions.
            agent_id: the agent the session belongs to.
            session_type: "agent", "team" or "workflow".
            name: a display name.
            metadata: a JSON-serialisable dict.

        Returns:
            The new session.

        Raises:
            SessionExists: the id is taken.
            InputError: an argument is invalid.
        """
        session = self._new_session(session_id if session_id is not None else new_id(), user_id, agent_id, session_type, name, metadata)
        if not self._insert_session(session):
            raise SessionExists(f"session {session.session_id!r} already exists; use get_or_create_session to reuse it")
        return session

    @_operation
    def get_or_create_session(
        self,
        session_id: str,
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        session_type: str = "agent",
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Session:
        """Return the session, creating it with these fields if it does not exist.

        Race-free: any number of processes calling this at once for one id get the same single session. An
        existing session is returned unchanged (its fields are not overwritten).
        """
        return self._get_or_insert_session(self._new_session(session_id, user_id, agent_id, session_type, name, metadata))

    @_operation
    def get_session(self, session_id: str, *, user_id: str | None = None) -> Session | None:
        """The session, or None if it does not exist or ``user_id`` is given and does not own it."""
        check_id(session_id)
        check_optional_id(user_id, "user_id")
        session = self._get_session(session_id)
        if session is None or (user_id is not None and session.user_id != user_id):
            return None
        return session

    @_operation
    def list_sessions(
        self,
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        session_type: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Session]:
        """Sessions, most recently active first, a page at a time.

        Args:
            user_id, agent_id, session_type: keep only sessions that match all given filters.
            limit: page size, 1 to 1000.
            cursor: ``next_cursor`` of the previous page.

        Returns:
            A Page whose ``next_cursor`` is None on the last page.
        """
        flt = SessionFilter(
            check_optional_id(user_id, "user_id"),
            check_optional_id(agent_id, "agent_id"),
            None if session_type is None else check_session_type(session_type),
        )
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InputError("limit must be an integer from 1 to 1000")
        after = decode_cursor(cursor) if cursor is not None else None
        rows = self._list_sessions(flt, limit + 1, after)
        items = rows[:limit]
        next_cursor = encode_cursor(items[-1]) if len(rows) > limit else None
        return Page[Session](items=items, next_cursor=next_cursor)

    def iter_sessions(self, **filters: Any) -> Iterator[Session]:
        """Every matching session, newest activity first, fetched a page at a time.

        Raises StoreClosed at the next item once the store is closed, even mid-page.
        """
        cursor = None
        while True:
            page = self.list_sessions(cursor=cursor, **filters)
            for session in page.items:
                if self._closed:
                    raise _closed_error(self)
                yield session
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    @_operation
    def update_session(self, session_id: str, *, name: Any = _UNSET, metadata: Any = _UNSET) -> Session:
        """Replace a session's name and/or metadata (only the ones passed) and bump ``updated_at``.

        Raises:
            SessionNotFound: no such session.
        """
        check_id(session_id)
        changes: dict[str, Any] = {}
        if name is not _UNSET:
            changes["name"] = check_optional_text(name, "name")
        if metadata is not _UNSET:
            changes["metadata"] = check_json_dict(metadata)
        session = self._update_session(session_id, changes, utcnow())
        if session is None:
            raise SessionNotFound(f"session {session_id!r} does not exist")
        return session

    @_operation
    def delete_session(self, session_id: str, *, user_id: str | None = None) -> bool:
        """Delete a session and all its messages.

        Returns:
            True if it existed (and belonged to ``user_id``, when given); deleting a missing session is a no-op.
        """
        check_id(session_id)
        return self._delete_session(session_id, check_optional_id(user_id, "user_id"))

    @_operation
    def delete_user(self, user_id: str) -> int:
        """Delete every session (and message) of a user. Returns how many sessions were deleted."""
        return self._delete_sessions(user_id=check_id(user_id, "user_id"))

    @_operation
    def prune(self, *, older_than: timedelta) -> int:
        """Delete sessions idle (no append or update) for longer than ``older_than``. Returns how many."""
        if not isinstance(older_than, timedelta) or older_than < timedelta(0):
            raise InputError("older_than must be a non-negative datetime.timedelta, e.g. timedelta(days=30)")
        now = utcnow()
        # No session was idle before 1970; an older cut-off (or one datetime cannot even hold) prunes nothing.
        if older_than >= now - _CURSOR_RANGE[0]:
            return 0
        return self._delete_sessions(idle_before=now - older_than)

    # ---- messages ----

    @_operation
    def add_message(
        self,
        session_id: str,
        role: str | None,
        content: Any,
        *,
        id: str | None = None,
        type: str | None = None,
        name: str | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
        tool_call_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Message:
        """Append one message; durable when this returns.

        Args:
            role: any short name ("user", "assistant", "developer", ...); None for a typed item without a role.
            content: a string, None, or any JSON value (a list of content parts, a dict).
            id: the message's id (1-255 characters, no NUL), unique in the session; None generates one. If the
                session already holds a message with this id, nothing is stored and that message is returned, so
                a retried append never stores a turn twice.
            type: the item's type, e.g. "message", "function_call", "reasoning".
            extra: the item's other fields (a JSON dict), returned as given.

        Raises:
            SessionNotFound: create the session first (``get_or_create_session``).
            InputError: a bad role or type, content or metadata that JSON cannot hold exactly, a bad id.
        """
        check_id(session_id)
        draft = MessageDraft.build(
            role,
            content,
            id=id,
            type=type,
            name=name,
            tool_calls=tool_calls,
            tool_call_id=tool_call_id,
            metadata=metadata,
            extra=extra,
        )
        return self._add(session_id, [draft])[0]

    @_operation
    def add_messages(self, session_id: str, messages: Iterable[Mapping[str, Any] | Message | MessageDraft]) -> list[Message]:
        """Append several messages in order, in one transaction where the backend has them (all or nothing).

        Each item is a dict in any framework's shape (an OpenAI chat message, a Responses API item such as a
        ``function_call`` or ``reasoning`` item, ...) or a Message; its fields beyond the message model are kept in
        ``extra`` and :meth:`Message.to_item` gives the item back exactly.

        An item may carry an ``"id"``: one the session already holds is returned as stored and not appended again,
        and an id repeated within the batch is stored once. The others get contiguous seqs, in order.
        """
        check_id(session_id)
        if isinstance(messages, (str, bytes, Mapping, Message)) or not isinstance(messages, Iterable):
            raise InputError(f"add_messages expects a list of message dicts, got {type(messages).__name__}")
        drafts = [MessageDraft.coerce(m) for m in messages]
        if not drafts:
            return []
        return self._add(session_id, drafts)

    def _add(self, session_id: str, drafts: list[MessageDraft]) -> list[Message]:
        """Give every draft an id, pass each id once to ``_append``, and answer every draft with its message."""
        drafts = [d if d.id is not None else d.with_new_id() for d in drafts]
        first: dict[str, MessageDraft] = {}
        for d in drafts:
            first.setdefault(d.id, d)  # type: ignore[arg-type]
        stored = self._append(session_id, list(first.values()), utcnow())
        by_id = {m.id: m for m in stored}
        return [by_id[d.id] for d in drafts]  # type: ignore[index]

    def add_user_message(self, session_id: str, content: str, **kwargs: Any) -> Message:
        return self.add_message(session_id, "user", content, **kwargs)

    def add_assistant_message(self, session_id: str, content: str | None, **kwargs: Any) -> Message:
        return self.add_message(session_id, "assistant", content, **kwargs)

    @_operation
    def get_messages(
        self,
        session_id: str,
        *,
        limit: int | None = None,
        before_seq: int | None = None,
        after_seq: int | None = None,
    ) -> list[Message]:
        """Messages in chronological order.

        Args:
            limit: return only the newest ``limit`` messages of the window (None: all).
            before_seq: only messages with ``seq < before_seq`` (page backwards through history).
            after_seq: only messages with ``seq > after_seq`` (what is new since a known seq).

        Returns:
            The messages, oldest first; an empty list for a missing session.
        """
        check_id(session_id)
        limit = _check_limit(limit)
        before_seq, after_seq = _check_seq(before_seq, "before_seq"), _check_seq(after_seq, "after_seq")
        if limit == 0:
            return []
        return self._get_messages(session_id, limit, before_seq, after_seq)

    @_operation
    def iter_messages(self, session_id: str, *, after_seq: int = 0, batch_size: int = 500) -> Iterator[Message]:
        """Stream a session's messages in seq order, ``batch_size`` at a time (constant memory for any length).

        Reads windows of the (session_id, seq) index up to the newest seq when the stream started: messages
        appended meanwhile are not included, and seq gaps (a standalone MongoDB, a ClickHouse collision) are fine.

        Args:
            after_seq: start after this seq (resume a stream where it stopped).
            batch_size: messages per read, 1 to 10000.

        Raises:
            InputError: a bad argument. A missing session yields nothing.
        """
        check_id(session_id)
        start = _check_seq(after_seq, "after_seq") or 0
        size = _check_limit(batch_size, "batch_size", 10000)
        if not size:
            raise InputError("batch_size must be from 1 to 10000")
        return self._stream_messages(session_id, start, size)

    def _stream_messages(self, session_id: str, after_seq: int, size: int) -> Iterator[Message]:
        newest = self._read_op(self._get_messages, session_id, 1, None, None)
        if not newest:
            return
        # Windows of seqs (lo, lo + size]: `limit` picks the newest n of a window, so a window never holds more
        # than `size` seqs and a gap just makes it shorter; the newest seq at the start bounds the walk.
        last = newest[-1].seq
        lo = after_seq
        while lo < last:
            hi = min(lo + size, last)
            for m in self._read_op(self._get_messages, session_id, None, hi + 1, lo):
                yield m
            lo = hi

    @_operation
    def _read_op(self, primitive: Callable[..., Any], *args: Any) -> Any:
        """Run a primitive as a public call does (closed check, error translation): for streams read lazily."""
        return primitive(*args)

    def _import_messages(self, session_id: str, messages: list[Message], updated_at: datetime) -> int:
        """Store already-numbered messages (seq, id, created_at as given) after the session's last seq.

        Idempotent by id: a message whose id the session holds is not stored again. message_count moves with what
        is stored and updated_at to at least ``updated_at``. Returns how many were stored. IntegrityError if a
        seq is taken by another message; SessionNotFound if the session is missing.
        """
        raise ConfigError(f"{type(self).__name__} cannot import numbered messages; copy with a newer backend")

    def state_store(self) -> StateStore | None:
        """A StateStore in the same database sharing this store's connections, where the backend can make one
        (SQL, Redis, MongoDB); None elsewhere. ``db()`` uses it when no state_url is given."""
        return None

    def get_history(self, session_id: str, *, limit: int | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` messages as OpenAI chat messages, ready to send to a chat model.

        Of those messages, the ones a chat model takes are included (role system, developer, user, assistant or
        tool; no type or type "message"); typed items such as function calls and reasoning are left out (see
        :meth:`Message.to_openai`), so fewer than ``limit`` dicts can come back.
        """
        chat = (m.to_openai() for m in self.get_messages(session_id, limit=limit))
        return [m for m in chat if m is not None]

    @_operation
    def pop_message(self, session_id: str) -> Message | None:
        """Remove the session's newest message and return it; None when the session has none (or does not exist).

        Atomic: concurrent pops each get a different message. The next append takes the freed seq, so seqs stay
        1..n without gaps or repeats.
        """
        check_id(session_id)
        return self._pop(session_id, utcnow())

    @_operation
    def truncate(self, session_id: str, after_seq: int) -> int:
        """Remove every message with ``seq > after_seq``, atomically; the session stays. Returns how many were
        removed (0 for a missing session). The next append gets ``after_seq + 1``."""
        check_id(session_id)
        if isinstance(after_seq, bool) or not isinstance(after_seq, int) or after_seq < 0:
            raise InputError("after_seq must be a non-negative integer seq (0 removes every message)")
        return self._truncate(session_id, min(int(after_seq), MAX_INT64), utcnow())

    def clear_messages(self, session_id: str) -> int:
        """Remove every message of the session, atomically, and keep the session. Returns how many."""
        return self.truncate(session_id, 0)

    @_operation
    def count_messages(self, session_id: str) -> int:
        """How many messages the session has (0 for a missing session)."""
        check_id(session_id)
        return self._count_messages(session_id)

    # ---- export / import ----

    @_operation
    def export_session(self, session_id: str) -> dict[str, Any]:
        """The session and all its messages as a plain-JSON dict (``json.dumps`` works on it).

        Raises:
            SessionNotFound: no such session.
        """
        check_id(session_id)
        session = self._get_session(session_id)
        if session is None:
            raise SessionNotFound(f"session {session_id!r} does not exist")
        messages = self._get_messages(session_id, None, None, None)
        return {
            "format": EXPORT_FORMAT,
            "session": session.model_dump(mode="json"),
            "messages": [m.model_dump(mode="json") for m in messages],
        }

    @_operation
    def import_session(self, data: Mapping[str, Any]) -> Session:
        """Recreate a session from ``export_session`` output, on this or any other backend.

        Message ids, seqs, timestamps and the session's fields are kept as exported.

        Raises:
            SessionExists: a session with that id already exists here.
            InputError: ``data`` is not an export.
        """
        if not isinstance(data, Mapping) or data.get("format") != EXPORT_FORMAT:
            raise InputError(f"import_session expects the dict export_session returns (format {EXPORT_FORMAT!r})")
        try:
            session = Session.model_validate(data["session"])
            messages = [Message.model_validate(m) for m in data.get("messages", [])]
        except Exception as e:
            raise InputError(f"import_session: the export is not valid: {str(e).splitlines()[0]}") from None
        check_id(session.session_id)
        if len({m.id for m in messages}) != len(messages):
            raise InputError("import_session: message ids must be unique within the session")
        for field in ("user_id", "agent_id"):
            check_optional_id(getattr(session, field), field)
        check_optional_text(session.name, "name")
        check_json_dict(session.metadata)
        for m in messages:
            check_id(m.id, "message id")
            MessageDraft.coerce(m)
        seqs = [m.seq for m in messages]
        if seqs != list(range(1, len(messages) + 1)) or any(m.session_id != session.session_id for m in messages):
            raise InputError("import_session: messages must belong to the session and have seqs 1..n in order")
        session = session.model_copy(update={"message_count": len(messages)})
        if not self._import(session, messages):
            raise SessionExists(f"session {session.session_id!r} already exists; delete it first or import elsewhere")
        return session

    # ---- shared helpers ----

    @staticmethod
    def _new_session(
        session_id: Any, user_id: Any, agent_id: Any, session_type: Any, name: Any, metadata: Any
    ) -> Session:
        now = utcnow()
        return Session.trusted(
            session_id=check_id(session_id),
            user_id=check_optional_id(user_id, "user_id"),
            agent_id=check_optional_id(agent_id, "agent_id"),
            session_type=check_session_type(session_type),
            name=check_optional_text(name, "name"),
            metadata=check_json_dict(metadata),
            created_at=now,
            updated_at=now,
            message_count=0,
        )

    # ---- primitives every backend implements ----

    @abstractmethod
    def _insert_session(self, session: Session) -> bool:
        """Insert; False (and no change) if the id exists."""

    @abstractmethod
    def _get_or_insert_session(self, session: Session) -> Session:
        """Insert unless the id exists; return the stored session either way. Must be race-free."""

    @abstractmethod
    def _get_session(self, session_id: str) -> Session | None: ...

    @abstractmethod
    def _list_sessions(self, flt: SessionFilter, limit: int, after: tuple[datetime, str] | None) -> list[Session]:
        """Up to ``limit`` matching sessions ordered by (updated_at, session_id) descending, strictly after ``after``."""

    @abstractmethod
    def _update_session(self, session_id: str, changes: dict[str, Any], now: datetime) -> Session | None: ...

    @abstractmethod
    def _delete_session(self, session_id: str, user_id: str | None) -> bool: ...

    @abstractmethod
    def _delete_sessions(self, *, user_id: str | None = None, idle_before: datetime | None = None) -> int:
        """Delete the sessions of ``user_id`` or those with ``updated_at < idle_before``, with their messages."""

    @abstractmethod
    def _append(self, session_id: str, drafts: list[MessageDraft], now: datetime) -> list[Message]:
        """Store the drafts (each has an id; no id twice) and return their messages in order; SessionNotFound if missing.

        A draft whose id the session already holds is answered with the stored message and not stored again; the
        others get the next seqs, and updated_at/message_count move only if something was stored. The store
        itself must enforce this (a unique index, or a check under the lock that serialises appends), so that
        concurrent appends of one id store it once.
        """

    @abstractmethod
    def _get_messages(self, session_id: str, limit: int | None, before_seq: int | None, after_seq: int | None) -> list[Message]: ...

    @abstractmethod
    def _count_messages(self, session_id: str) -> int: ...

    @abstractmethod
    def _import(self, session: Session, messages: list[Message]) -> bool:
        """Store a whole session as given; False (and no change) if the id exists."""

    def _pop(self, session_id: str, now: datetime) -> Message | None:
        """Remove and return the newest message, atomically; None if there is none. message_count drops by one
        (the next append takes the freed seq) and updated_at moves to ``now``."""
        raise ConfigError(f"{type(self).__name__} cannot remove messages; use a backend that can")

    def _truncate(self, session_id: str, after_seq: int, now: datetime) -> int:
        """Remove the messages with ``seq > after_seq`` atomically and return how many; message_count drops by that
        many and updated_at moves to ``now`` when any went. 0 for a missing session."""
        raise ConfigError(f"{type(self).__name__} cannot remove messages; use a backend that can")


def missing_session(session_id: str) -> SessionNotFound:
    return SessionNotFound(f"session {session_id!r} does not exist; create it with get_or_create_session({session_id!r})")


def seq_taken(session_id: str, seq: int) -> IntegrityError:
    return IntegrityError(
        f"session {session_id!r} already holds another message at seq {seq}; delete the session there or import with on_conflict='replace'"
    )


def after_last(session_id: str, messages: list[Message], last: int) -> int:
    """Check that numbered messages continue a session whose newest seq is ``last``, in increasing order; return
    the new newest seq. A seq already taken (or out of order) is an IntegrityError naming it."""
    for m in messages:
        if m.seq <= last:
            raise seq_taken(session_id, m.seq)
        last = m.seq
    return last


def check_key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise InputError(f"state keys must be non-empty strings, got {type(key).__name__}")
    if len(key) > MAX_KEY_LENGTH:
        raise InputError(f"state key is {len(key)} characters long; use at most {MAX_KEY_LENGTH}")
    if "\x00" in key:
        raise InputError("state keys must not contain NUL characters")
    return check_text(key, "state key")


def check_prefix_text(prefix: Any) -> str:
    if not isinstance(prefix, str):
        raise InputError(f"prefix must be a string, got {type(prefix).__name__}")
    if "\x00" in prefix:
        raise InputError("prefix must not contain NUL characters (no key does)")
    return check_text(prefix, "prefix")


def check_ttl(ttl: Any) -> float | None:
    if ttl is None:
        return None
    seconds = check_finite(ttl, "ttl")
    if seconds <= 0:
        raise InputError("ttl must be a positive number of seconds (use delete() to remove a key)")
    if seconds > MAX_TTL_SECONDS:
        raise InputError(f"ttl must be at most {MAX_TTL_SECONDS:.0f} seconds (100 years); use ttl=None for no expiry")
    return seconds


def expiry(ttl: float | None) -> float | None:
    """Absolute expiry as a Unix timestamp: independent of time zones and daylight saving."""
    return None if ttl is None else time.time() + ttl


def loads(text: str | bytes) -> Any:
    return json.loads(text)


class StateStore(_Store, ABC):
    """Key-value state with optional TTL. Values are anything JSON can hold and come back with the same types.

    An expired key is gone for every read (``get``, ``exists``, ``get_many``, ``keys``, ``ttl``, ``incr``) the
    moment it expires, whether or not the backend has physically removed it yet.
    """

    _prefix: str = ""

    @_operation
    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` if it is missing or expired."""
        found = self._get_many([check_key(key)])
        return found.get(key, default)

    @_operation
    def set(self, key: str, value: Any, *, ttl: float | None = None) -> None:
        """Store ``value`` (JSON-serialisable) under ``key``, replacing any value and TTL; ``ttl`` in seconds."""
        self._set_many({check_key(key): encode_json(value)}, expiry(check_ttl(ttl)))

    @_operation
    def delete(self, key: str) -> bool:
        """Remove ``key``. Returns True if it existed (and had not expired)."""
        return self._delete(check_key(key))

    @_operation
    def exists(self, key: str) -> bool:
        return check_key(key) in self._get_many([key])

    @_operation
    def incr(self, key: str, amount: int = 1) -> int:
        """Atomically add ``amount`` to an integer value (a missing key counts as 0); keeps the key's TTL.

        Raises:
            InputError: the stored value is not an integer.
        """
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise InputError("incr amount must be an integer")
        if not -MAX_INT64 - 1 <= amount <= MAX_INT64:
            raise InputError("incr amount must fit in 64 bits (-2**63 to 2**63 - 1)")
        return self._incr(check_key(key), int(amount))

    def decr(self, key: str, amount: int = 1) -> int:
        return self.incr(key, -amount)

    @_operation
    def ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires; None if it has no expiry or does not exist."""
        expires_at = self._expires_at(check_key(key))
        return None if expires_at is None else max(0.0, expires_at - time.time())

    @_operation
    def expire(self, key: str, ttl: float | None) -> bool:
        """Set (or with None, remove) the TTL of an existing key. Returns False if the key does not exist."""
        return self._expire(check_key(key), expiry(check_ttl(ttl)))

    @_operation
    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The values of those keys that exist, as a dict."""
        if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable):
            raise InputError(f"get_many expects a list of keys, got {type(keys).__name__}")
        wanted = [check_key(k) for k in keys]
        return self._get_many(wanted) if wanted else {}

    @_operation
    def set_many(self, mapping: Mapping[str, Any], *, ttl: float | None = None) -> None:
        """Store several values at once (one round trip / transaction where the backend allows)."""
        if not isinstance(mapping, Mapping):
            raise InputError("set_many expects a dict of key -> value")
        encoded = {check_key(k): encode_json(v, f"value of {k!r}") for k, v in mapping.items()}
        if encoded:
            self._set_many(encoded, expiry(check_ttl(ttl)))

    @_operation
    def keys(self, prefix: str = "") -> Iterator[str]:
        """Live keys that start with ``prefix`` (incremental: SCAN or an indexed range, never a blocking KEYS)."""
        return self._translating(self._iter_keys(check_prefix_text(prefix)))

    def _translating(self, items: Iterator[str]) -> Iterator[str]:
        """Driver errors raised while the caller iterates (after keys() returned) become praison_db errors too, and
        a close() stops the iteration with StoreClosed."""
        try:
            for item in items:
                if self._closed:
                    raise _closed_error(self)
                yield item
        except Exception as e:
            _reraise(self, e)

    @_operation
    def clear(self, prefix: str = "") -> int:
        """Delete every key starting with ``prefix`` (all keys of this store when empty). Returns how many."""
        return self._clear(check_prefix_text(prefix))

    def scope(self, *parts: str) -> StateStore:
        """A view of this store whose keys are prefixed with ``"part1:part2:..."``, e.g. ``scope("session", sid)``.

        The view shares the connection; closing it does nothing.
        """
        if not parts or not all(isinstance(p, str) and p for p in parts):
            raise InputError("scope() takes one or more non-empty strings")
        return ScopedStateStore(self, check_prefix_text(":".join(parts) + ":"))

    def __getitem__(self, key: str) -> Any:
        sentinel = _UNSET
        value = self.get(key, sentinel)
        if value is sentinel:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self.set(key, value)

    def __delitem__(self, key: str) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.exists(key)

    # ---- primitives every backend implements (values arrive JSON-encoded; expiry is a Unix time or None) ----

    @abstractmethod
    def _get_many(self, keys: list[str]) -> dict[str, Any]:
        """Decoded values of the live keys among ``keys``."""

    @abstractmethod
    def _set_many(self, items: dict[str, str], expires_at: float | None) -> None: ...

    @abstractmethod
    def _delete(self, key: str) -> bool: ...

    @abstractmethod
    def _incr(self, key: str, amount: int) -> int: ...

    @abstractmethod
    def _expires_at(self, key: str) -> float | None:
        """Expiry of a live key (None if it has none or is missing)."""

    @abstractmethod
    def _expire(self, key: str, expires_at: float | None) -> bool: ...

    @abstractmethod
    def _iter_keys(self, prefix: str) -> Iterator[str]: ...

    @abstractmethod
    def _clear(self, prefix: str) -> int: ...


def not_an_integer(key: str) -> InputError:
    return InputError(f"incr: the value of {key!r} is not an integer")


_MISSING: Any = object()


def incremented(key: str, current: Any, amount: int) -> int:
    """The new value of an incr (``current`` is MISSING for an absent key); InputError for a non-integer value."""
    if current is _MISSING:
        return amount
    if isinstance(current, bool) or not isinstance(current, int):
        raise not_an_integer(key)
    return current + amount


MISSING = _MISSING


class ScopedStateStore(StateStore):
    """A prefixed view of another StateStore (what ``scope()`` returns)."""

    def __init__(self, parent: StateStore, prefix: str) -> None:
        self._parent = parent
        self._scope = prefix
        self.url = f"{parent.url} scope={prefix!r}"
        self.capabilities = parent.capabilities  # type: ignore[misc]

    @property
    def _closed(self) -> bool:  # type: ignore[override]
        return self._parent._closed

    def close(self) -> None:
        """A scope does not own the connection: closing it is a no-op."""

    def _translate_error(self, error: Exception) -> Error | None:
        return self._parent._translate_error(error)

    def _k(self, key: str) -> str:
        full = self._scope + key
        if len(full) > MAX_KEY_LENGTH:
            raise InputError(f"state key with its scope is longer than {MAX_KEY_LENGTH} characters")
        return full

    def _get_many(self, keys: list[str]) -> dict[str, Any]:
        found = self._parent._get_many([self._k(k) for k in keys])
        n = len(self._scope)
        return {k[n:]: v for k, v in found.items()}

    def _set_many(self, items: dict[str, str], expires_at: float | None) -> None:
        self._parent._set_many({self._k(k): v for k, v in items.items()}, expires_at)

    def _delete(self, key: str) -> bool:
        return self._parent._delete(self._k(key))

    def _incr(self, key: str, amount: int) -> int:
        return self._parent._incr(self._k(key), amount)

    def _expires_at(self, key: str) -> float | None:
        return self._parent._expires_at(self._k(key))

    def _expire(self, key: str, expires_at: float | None) -> bool:
        return self._parent._expire(self._k(key), expires_at)

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        n = len(self._scope)
        return (k[n:] for k in self._parent._iter_keys(self._scope + prefix))

    def _clear(self, prefix: str) -> int:
        return self._parent._clear(self._scope + prefix)


Store = _Store  # the lifecycle both protocols share (url, capabilities, close, context manager)


def closed_error(store: _Store) -> StoreClosed:
    """The StoreClosed a call on a closed ``store`` raises."""
    return _closed_error(store)
