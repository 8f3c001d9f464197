"""Every store call the web app makes, in one place.

The stores are synchronous; each call runs in Starlette's thread pool so a slow backend never blocks the event
loop. When an async API exists, only this module changes.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from .. import __version__
from ..errors import SessionNotFound
from ..facade import PraisonDB
from ..models import Message, Page, Session

# Counts on the overview stop here: counting everything would be a full scan on a large store.
COUNT_CAP = 1000
EXPORT_BATCH = 500


@dataclass(frozen=True)
class StateEntry:
    key: str
    value: Any
    ttl: float | None


class StoreData:
    """Read (and, unless read-only, delete) through a PraisonDB's two stores."""

    def __init__(self, store: PraisonDB) -> None:
        self.store = store
        self.conversations = store.conversations
        self.state = store.state

    def passwords(self) -> list[str]:
        """The passwords of the configured URLs, so that no page ever shows one."""
        found = []
        for url in (getattr(self.store, "_database_url", None), getattr(self.store, "_state_url", None)):
            password = getattr(url, "password", None)
            if password:
                found.append(password)
        return found

    # ---- sessions ----

    async def sessions(
        self, *, user_id: str | None, agent_id: str | None, session_type: str | None, limit: int, cursor: str | None
    ) -> Page[Session]:
        return await run_in_threadpool(
            self.conversations.list_sessions, user_id=user_id, agent_id=agent_id, session_type=session_type, limit=limit, cursor=cursor
        )

    async def session(self, session_id: str) -> Session | None:
        return await run_in_threadpool(self.conversations.get_session, session_id)

    async def messages(self, session_id: str, *, limit: int, before_seq: int | None) -> list[Message]:
        return await run_in_threadpool(self.conversations.get_messages, session_id, limit=limit, before_seq=before_seq)

    async def delete_session(self, session_id: str) -> bool:
        return await run_in_threadpool(self.conversations.delete_session, session_id)

    async def export_lines(self, session_id: str) -> AsyncIterator[bytes]:
        """JSON Lines: the session first, then every message in seq order, streamed (never all in memory)."""
        session = await self.session(session_id)
        if session is None:
            raise SessionNotFound(f"no session {session_id!r}")
        return self._export_stream(session)

    async def _export_stream(self, session: Session) -> AsyncIterator[bytes]:
        yield _line({"session": session.model_dump(mode="json")})
        async for message in iterate_in_threadpool(self._all_messages(session.session_id)):
            yield _line({"message": message.model_dump(mode="json")})

    def _all_messages(self, session_id: str) -> Iterator[Message]:
        """Every message up to the newest at the start, read in seq windows of EXPORT_BATCH (each O(batch))."""
        newest = self.conversations.get_messages(session_id, limit=1)
        if not newest:
            return
        last = newest[-1].seq
        # Windows by seq, not by count: a gap left by pop_message or truncate only makes a window smaller.
        for start in range(0, last, EXPORT_BATCH):
            yield from self.conversations.get_messages(session_id, after_seq=start, before_seq=min(start + EXPORT_BATCH, last) + 1)

    # ---- state ----

    async def state_page(self, prefix: str, offset: int, limit: int) -> tuple[list[StateEntry], bool]:
        """``limit`` live keys starting with ``prefix`` after skipping ``offset``, and whether more follow."""

        def read() -> tuple[list[StateEntry], bool]:
            keys_iter = self.state.keys(prefix)
            try:
                keys = list(islice(keys_iter, offset, offset + limit + 1))
            finally:
                close = getattr(keys_iter, "close", None)
                if close is not None:
                    close()  # releases a server-side cursor at once
            more = len(keys) > limit
            keys = sorted(keys[:limit])
            values = self.state.get_many(keys) if keys else {}
            # A key may expire between listing and reading: show only what is still there.
            return [StateEntry(k, values[k], self.state.ttl(k)) for k in keys if k in values], more

        return await run_in_threadpool(read)

    # ---- overview ----

    async def overview(self, *, read_only: bool) -> dict[str, Any]:
        """What ``praison-db doctor`` reports, plus capped counts."""
        from .. import cli  # the doctor's own checks, so the page and the command never disagree

        def read() -> dict[str, Any]:
            stores = [cli._check_store("conversations", self.conversations)]
            if read_only:  # the doctor's state probe writes a temporary key; a read-only viewer must not
                url = str(self.state.url)
                stores.append(
                    {
                        "role": "state",
                        "backend": url.split("://", 1)[0] if "://" in url else "?",
                        "store": type(self.state).__name__,
                        "url": url,
                        "versions": cli._versions(self.state),
                        "server_version": None,
                        "schema": None,
                        "probe": "skipped (read-only)",
                        "latency_ms": None,
                        "ok": True,
                        "error": None,
                    }
                )
            else:
                stores.append(cli._check_store("state", self.state))
            page = self.conversations.list_sessions(limit=COUNT_CAP)
            keys_iter = self.state.keys("")
            try:
                keys = sum(1 for _ in islice(keys_iter, COUNT_CAP + 1))
            finally:
                close = getattr(keys_iter, "close", None)
                if close is not None:
                    close()
            return {
                "praison_db": __version__,
                "python": platform.python_version(),
                "session_dir": str(self.store.session_dir),
                "stores": stores,
                "sessions": _capped(len(page.items), page.next_cursor is not None),
                "state_keys": _capped(min(keys, COUNT_CAP), keys > COUNT_CAP),
            }

        return await run_in_threadpool(read)

    # ---- live refresh ----

    async def sessions_version(self, **filters: Any) -> str:
        page = await self.sessions(**filters)
        return listing_version(page.items)

    async def session_version(self, session_id: str) -> str:
        session = await self.session(session_id)
        return session_version(session)


def listing_version(items: list[Session]) -> str:
    """Changes whenever a listed session gains a message, is renamed, appears or disappears."""
    digest = hashlib.sha256()
    for s in items:
        digest.update(f"{s.session_id}\0{s.updated_at.isoformat()}\0{s.message_count}\0{s.name}\n".encode())
    return digest.hexdigest()[:16]


def session_version(session: Session | None) -> str:
    if session is None:
        return "gone"
    return f"{session.message_count}:{session.updated_at.isoformat()}"


def _capped(count: int, more: bool) -> str:
    return f"{count}+" if more else str(count)


def _line(value: dict[str, Any]) -> bytes:
    return (json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
