"""In-process stores: fast, thread-safe, gone when the process exits.

URL: ``memory://`` (a fresh, private store) or ``memory://name`` (every store opened with that name in this process
shares the same data). No options. Useful for tests and as the reference implementation of the protocols.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from ..base import (
    Capabilities,
    MISSING,
    ConversationStore,
    SessionFilter,
    StateStore,
    activity_key,
    incremented,
    loads,
    missing_session,
    seq_taken,
    newest_window,
    resolve_options,
)
from ..models import Message, MessageDraft, Session
from ..url import StoreURL

__all__ = ["MemoryConversationStore", "MemoryStateStore"]

_CAPS = Capabilities(multi_process=False, persistent=False, reason="memory:// lives inside one process")

M = TypeVar("M", Session, Message)


def _copy(model: M) -> M:
    """A detached copy: a caller editing a returned session's metadata must not edit the stored one (as with
    every other backend, which hands out freshly decoded objects). A model whose every field is immutable (text,
    numbers, times, None, empty dicts that are never the stored ones' to edit) is copied shallowly."""
    values = model.__dict__
    if all(type(v) in _IMMUTABLE or (type(v) is dict and not v) for v in values.values()):
        return type(model).adopt({k: ({} if type(v) is dict else v) for k, v in values.items()})
    return model.model_copy(deep=True)


_IMMUTABLE = frozenset({str, int, float, bool, type(None), datetime})


@dataclass
class _Data:
    lock: threading.RLock = field(default_factory=threading.RLock)
    sessions: dict[str, Session] = field(default_factory=dict)
    messages: dict[str, list[Message]] = field(default_factory=dict)
    ids: dict[str, dict[str, Message]] = field(default_factory=dict)  # session -> message id -> message
    state: dict[str, tuple[str, float | None]] = field(default_factory=dict)


_named: dict[str, _Data] = {}
_named_lock = threading.Lock()


def _data_for(url: StoreURL | None) -> _Data:
    name = (url.host or "") + (url.path or "").strip("/") if url is not None else ""
    if not name:
        return _Data()
    with _named_lock:
        return _named.setdefault(name, _Data())


class MemoryConversationStore(ConversationStore):
    """ConversationStore in a dict, guarded by a lock."""

    capabilities = _CAPS

    def __init__(self, url: StoreURL | None = None) -> None:
        self._d = _data_for(url)
        self.url = url.render() if url else "memory://"

    @classmethod
    def from_url(cls, url: StoreURL, **options: Any) -> MemoryConversationStore:
        resolve_options("memory://", {}, {**url.query, **options})
        return cls(url)

    def _insert_session(self, session: Session) -> bool:
        with self._d.lock:
            if session.session_id in self._d.sessions:
                return False
            self._d.sessions[session.session_id] = _copy(session)
            self._d.messages[session.session_id] = []
            self._d.ids[session.session_id] = {}
            return True

    def _get_or_insert_session(self, session: Session) -> Session:
        with self._d.lock:
            self._insert_session(session)
            return _copy(self._d.sessions[session.session_id])

    def _get_session(self, session_id: str) -> Session | None:
        with self._d.lock:
            session = self._d.sessions.get(session_id)
            return None if session is None else _copy(session)

    def _list_sessions(self, flt: SessionFilter, limit: int, after: tuple[datetime, str] | None) -> list[Session]:
        with self._d.lock:
            rows = [s for s in self._d.sessions.values() if flt.matches(s) and (after is None or activity_key(s) < after)]
        rows.sort(key=activity_key, reverse=True)
        return [_copy(s) for s in rows[:limit]]

    def _update_session(self, session_id: str, changes: dict[str, Any], now: datetime) -> Session | None:
        with self._d.lock:
            current = self._d.sessions.get(session_id)
            if current is None:
                return None
            # max(): an imported session can carry an updated_at ahead of this clock; activity never moves it back.
            updated = current.model_copy(update={**changes, "updated_at": max(now, current.updated_at)})
            self._d.sessions[session_id] = updated
            return _copy(updated)

    def _delete_session(self, session_id: str, user_id: str | None) -> bool:
        with self._d.lock:
            current = self._d.sessions.get(session_id)
            if current is None or (user_id is not None and current.user_id != user_id):
                return False
            del self._d.sessions[session_id]
            self._d.messages.pop(session_id, None)
            self._d.ids.pop(session_id, None)
            return True

    def _delete_sessions(self, *, user_id: str | None = None, idle_before: datetime | None = None) -> int:
        with self._d.lock:
            doomed = [
                sid
                for sid, s in self._d.sessions.items()
                if (user_id is not None and s.user_id == user_id) or (idle_before is not None and s.updated_at < idle_before)
            ]
            for sid in doomed:
                del self._d.sessions[sid]
                self._d.messages.pop(sid, None)
                self._d.ids.pop(sid, None)
            return len(doomed)

    def _append(self, session_id: str, drafts: list[MessageDraft], now: datetime) -> list[Message]:
        with self._d.lock:
            session = self._d.sessions.get(session_id)
            if session is None:
                raise missing_session(session_id)
            known = self._d.ids[session_id]
            seq = session.message_count
            out: list[Message] = []
            fresh: list[Message] = []
            for d in drafts:
                message = known.get(d.id)  # type: ignore[arg-type]
                if message is None:
                    seq += 1
                    message = d.stamp(session_id, seq, now)
                    fresh.append(message)
                out.append(message)
            if fresh:
                self._d.messages[session_id].extend(fresh)
                known.update((m.id, m) for m in fresh)
                self._d.sessions[session_id] = session.model_copy(update={"message_count": seq, "updated_at": max(now, session.updated_at)})
            return [_copy(m) for m in out]

    def _get_messages(self, session_id: str, limit: int | None, before_seq: int | None, after_seq: int | None) -> list[Message]:
        with self._d.lock:
            messages = self._d.messages.get(session_id, [])
            if before_seq is None and after_seq is None:
                picked = messages[-limit:] if limit is not None else messages
            else:
                picked = newest_window(messages, limit, before_seq, after_seq)
            return [_copy(m) for m in picked]

    def _count_messages(self, session_id: str) -> int:
        return len(self._d.messages.get(session_id, ()))

    def _pop(self, session_id: str, now: datetime) -> Message | None:
        with self._d.lock:
            messages = self._d.messages.get(session_id)
            if not messages:
                return None
            return self._drop(session_id, len(messages) - 1, now)[0]

    def _truncate(self, session_id: str, after_seq: int, now: datetime) -> int:
        with self._d.lock:
            messages = self._d.messages.get(session_id)
            if not messages:
                return 0
            keep = next((i for i in range(len(messages), 0, -1) if messages[i - 1].seq <= after_seq), 0)
            return len(self._drop(session_id, keep, now))

    def _drop(self, session_id: str, keep: int, now: datetime) -> list[Message]:
        """Remove the messages from index ``keep`` on (the lock is held); the removed ones, oldest first."""
        messages = self._d.messages[session_id]
        gone, messages[keep:] = messages[keep:], []
        known = self._d.ids[session_id]
        for m in gone:
            known.pop(m.id, None)
        if gone:
            session = self._d.sessions[session_id]
            self._d.sessions[session_id] = session.model_copy(
                update={"message_count": session.message_count - len(gone), "updated_at": max(now, session.updated_at)}
            )
        return gone

    def _import_messages(self, session_id: str, messages: list[Message], updated_at: datetime) -> int:
        with self._d.lock:
            session = self._d.sessions.get(session_id)
            if session is None:
                raise missing_session(session_id)
            known = self._d.ids[session_id]
            stored = self._d.messages[session_id]
            last = stored[-1].seq if stored else 0
            fresh = []
            for m in messages:
                if m.id in known:
                    continue
                if m.seq <= last:
                    raise seq_taken(session_id, m.seq)
                fresh.append(m)
                last = m.seq
            stored.extend(fresh)
            known.update((m.id, m) for m in fresh)
            self._d.sessions[session_id] = session.model_copy(
                update={"message_count": session.message_count + len(fresh), "updated_at": max(updated_at, session.updated_at)}
            )
            return len(fresh)

    def _import(self, session: Session, messages: list[Message]) -> bool:
        with self._d.lock:
            if session.session_id in self._d.sessions:
                return False
            self._d.sessions[session.session_id] = session
            self._d.messages[session.session_id] = list(messages)
            self._d.ids[session.session_id] = {m.id: m for m in messages}
            return True


class MemoryStateStore(StateStore):
    """StateStore in a dict of JSON strings (so values come back as fresh copies with JSON types)."""

    capabilities = _CAPS

    def __init__(self, url: StoreURL | None = None) -> None:
        self._d = _data_for(url)
        self.url = url.render() if url else "memory://"

    @classmethod
    def from_url(cls, url: StoreURL, **options: Any) -> MemoryStateStore:
        resolve_options("memory://", {}, {**url.query, **options})
        return cls(url)

    def _live(self, key: str, now: float) -> tuple[str, float | None] | None:
        item = self._d.state.get(key)
        if item is not None and item[1] is not None and item[1] <= now:
            del self._d.state[key]
            return None
        return item

    def _get_many(self, keys: list[str]) -> dict[str, Any]:
        now = time.time()
        with self._d.lock:
            found = {k: self._live(k, now) for k in keys}
        return {k: loads(v[0]) for k, v in found.items() if v is not None}

    def _set_many(self, items: dict[str, str], expires_at: float | None) -> None:
        with self._d.lock:
            for k, v in items.items():
                self._d.state[k] = (v, expires_at)

    def _delete(self, key: str) -> bool:
        with self._d.lock:
            return self._live(key, time.time()) is not None and self._d.state.pop(key, None) is not None

    def _incr(self, key: str, amount: int) -> int:
        with self._d.lock:
            item = self._live(key, time.time())
            value = incremented(key, loads(item[0]) if item else MISSING, amount)
            self._d.state[key] = (json.dumps(value), item[1] if item else None)
            return value

    def _expires_at(self, key: str) -> float | None:
        with self._d.lock:
            item = self._live(key, time.time())
        return item[1] if item else None

    def _expire(self, key: str, expires_at: float | None) -> bool:
        with self._d.lock:
            item = self._live(key, time.time())
            if item is None:
                return False
            self._d.state[key] = (item[0], expires_at)
            return True

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        now = time.time()
        with self._d.lock:
            live = [k for k in list(self._d.state) if k.startswith(prefix) and self._live(k, now) is not None]
        return iter(sorted(live))

    def _clear(self, prefix: str) -> int:
        now = time.time()
        with self._d.lock:
            doomed = [k for k in list(self._d.state) if k.startswith(prefix)]
            live = sum(1 for k in doomed if self._live(k, now) is not None)
            for k in doomed:
                self._d.state.pop(k, None)
            return live
