"""SqlConversationStore and SqlStateStore: their statements, and the mapping between rows and models."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from sqlalchemy import BindParameter, and_, bindparam, case, delete, insert, or_, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from ...base import (
    ConnectedStore,
    MISSING,
    Capabilities,
    ConversationStore,
    Option,
    SessionFilter,
    StateStore,
    incremented,
    loads,
    missing_session,
    after_last,
)
from ...models import Message, MessageDraft, Session, dumps, packed_extra, unpacked_extra
from ...bridge import in_thread
from ...url import StoreURL
from .database import SqlDatabase
from .engine import OPTIONS, _insert_ignore, _upsert, retry_conflicts
from .prepared import Prepared, Runner
from .schema import MIGRATIONS

T = TypeVar("T")


def _open_database(url: StoreURL, options: dict[str, Any], *, asynchronous: bool) -> SqlDatabase:
    return SqlDatabase(url, asynchronous=asynchronous, **options)


class _SqlStore(ConnectedStore):
    """What both SQL stores share: opening, the database handle, error translation, close."""

    OPTIONS: ClassVar[Mapping[str, Option]] = OPTIONS
    capabilities = Capabilities()
    _connection_class = staticmethod(_open_database)
    db: SqlDatabase

    def __init__(self, database: SqlDatabase) -> None:
        self.db = database.acquire()
        self.url = database.url.render()
        self.t = database.tables

    @classmethod
    def from_url_async(cls, url: StoreURL, **options: Any) -> Any:
        """The store for praison_db.aio: on PostgreSQL and MySQL over the native async driver; on SQLite the sync
        store, which the async API runs in a worker thread. aiosqlite hops to its own thread once per statement (four
        per append), so one hop per call costs less (measured in the closing benchmarks), and a cancelled call
        finishes first either way."""
        if url.base_scheme == "sqlite":
            return in_thread(cls.from_url, url, **options)
        return super().from_url_async(url, **options)

    def _close(self) -> None:
        self.db.release()

    def _server_version(self) -> str | None:
        return self.db.server_version()

    def _schema_version(self) -> tuple[int, int] | None:
        return self.db.current_version(self.t), len(MIGRATIONS)


# Rows are unpacked by position (the tables' column order, see schema.py): attribute access on a Row costs more
# than building the model.


def _session_from_row(row: Any) -> Session:
    session_id, user_id, agent_id, session_type, name, metadata, created_at, updated_at, message_count = row
    return Session.adopt(
        {
            "session_id": session_id,
            "user_id": user_id,
            "agent_id": agent_id,
            "session_type": session_type,
            "name": name,
            "metadata": metadata or {},
            "created_at": created_at,
            "updated_at": updated_at,
            "message_count": message_count,
        }
    )


# Values bound in one IN list: PostgreSQL's protocol caps a statement at 65,535 parameters, SQLite's build may at
# 32,766; a batch of ids or keys larger than this is looked up a slice at a time.
_IN_CHUNK = 10_000


def _chunks(values: list[T]) -> Iterator[list[T]]:
    for start in range(0, len(values), _IN_CHUNK):
        yield values[start : start + _IN_CHUNK]


def _message_from_row(row: Any) -> Message:
    session_id, seq, id, role, content, name, tool_calls, tool_call_id, metadata, created_at, kind, packed = row
    content, extra = unpacked_extra(content, packed) if packed else (content, {})
    return Message.adopt(
        {
            "id": id,
            "session_id": session_id,
            "seq": seq,
            "role": role or None,  # "" is how the column holds "no role"
            "content": content,
            "type": kind,
            "name": name,
            "tool_calls": tool_calls,
            "tool_call_id": tool_call_id,
            "metadata": metadata or {},
            "extra": extra,
            "created_at": created_at,
        }
    )


def _message_row(m: Message) -> dict[str, Any]:
    return {
        "session_id": m.session_id,
        "seq": m.seq,
        "id": m.id,
        "role": m.role or "",
        "content": m.content if isinstance(m.content, str) else None,
        "name": m.name,
        "tool_calls": m.tool_calls,
        "tool_call_id": m.tool_call_id,
        "metadata": m.metadata,
        "created_at": m.created_at,
        "type": m.type,
        "extra": packed_extra(m),
    }


def _session_row(s: Session) -> dict[str, Any]:
    return s.model_dump()


def _later(column: Any, now: Any) -> Any:
    """``updated_at`` for an update at ``now``: never earlier than the stored value (an imported session can be dated
    ahead of this clock). CASE rather than GREATEST/MAX: it means the same on SQLite, PostgreSQL and MySQL."""
    return case((column > now, column), else_=now)


class SqlConversationStore(_SqlStore, ConversationStore):
    """ConversationStore over SQLAlchemy Core (SQLite, PostgreSQL, MySQL/MariaDB)."""

    def state_store(self) -> SqlStateStore:
        """A StateStore in the same database, sharing this store's connection pool."""
        return SqlStateStore(self.db)

    # ---- sessions ----

    @functools.cached_property
    def _session_statements(self) -> tuple[Prepared, Prepared]:
        """(insert a session unless its id exists, one session by id), prepared once."""
        s = self.t.sessions
        one = select(s).where(s.c.session_id == bindparam("sid"))
        return self.db.prepare(_insert_ignore(self.db.dialect, s)), self.db.prepare(one)

    @retry_conflicts
    def _insert_session(self, session: Session) -> bool:
        with self.db.fast_write() as conn:
            return self._session_statements[0].rowcount(conn, _session_row(session)) == 1

    def _get_or_insert_session(self, session: Session) -> Session:
        # Insert-or-nothing commits first; the read after it sees whichever process won.
        self._insert_session(session)
        found = self._get_session(session.session_id)
        if found is None:  # deleted in between by someone else: create again
            return self._get_or_insert_session(session)
        return found

    def _get_session(self, session_id: str) -> Session | None:
        one = self._session_statements[1]
        row = self.db.read_history(lambda conn: one.first(conn, {"sid": session_id}), prepared=True)
        return _session_from_row(row) if row else None

    def _list_statement(self, user: bool, agent: bool, kind: bool, after: bool) -> Any:
        """The listing query for one combination of filters, built once, with the values as bound parameters."""
        cache = self.__dict__.setdefault("_list_statements", {})
        shape = (user, agent, kind, after)
        if shape not in cache:
            cache[shape] = self.db.prepare(self._build_list_statement(*shape))
        return cache[shape]

    def _build_list_statement(self, user: bool, agent: bool, kind: bool, after: bool) -> Any:
        s = self.t.sessions.c
        query = select(self.t.sessions)
        if user:
            query = query.where(s.user_id == bindparam("user_id"))
        if agent:
            query = query.where(s.agent_id == bindparam("agent_id"))
        if kind:
            query = query.where(s.session_type == bindparam("session_type"))
        if after:
            sid: BindParameter[str]
            at, sid = bindparam("after_at", type_=s.updated_at.type), bindparam("after_id")
            query = query.where(or_(s.updated_at < at, and_(s.updated_at == at, s.session_id < sid)))
        return query.order_by(s.updated_at.desc(), s.session_id.desc()).limit(bindparam("n"))

    def _list_sessions(self, flt: SessionFilter, limit: int, after: tuple[datetime, str] | None) -> list[Session]:
        query = self._list_statement(flt.user_id is not None, flt.agent_id is not None, flt.session_type is not None, after is not None)
        params: dict[str, Any] = {"user_id": flt.user_id, "agent_id": flt.agent_id, "session_type": flt.session_type, "n": limit}
        if after is not None:
            params.update(after_at=after[0], after_id=after[1])
        return self.db.read_history(lambda conn: [_session_from_row(r) for r in query.rows(conn, params)], prepared=True)

    @retry_conflicts
    def _update_session(self, session_id: str, changes: dict[str, Any], now: datetime) -> Session | None:
        s = self.t.sessions.c
        with self.db.write() as conn:
            stamp = bindparam("now", now, type_=s.updated_at.type)
            result = conn.execute(update(self.t.sessions).where(s.session_id == session_id).values(**changes, updated_at=_later(s.updated_at, stamp)))
            if result.rowcount == 0:
                return None
            row = conn.execute(select(self.t.sessions).where(s.session_id == session_id)).first()
        return _session_from_row(row)

    @retry_conflicts
    def _delete_session(self, session_id: str, user_id: str | None) -> bool:
        s = self.t.sessions.c
        cond = s.session_id == session_id
        if user_id is not None:
            cond = and_(cond, s.user_id == user_id)
        with self.db.write() as conn:
            # Lock the session row first, as an append does: the same lock order means no deadlock between them.
            if conn.execute(select(s.session_id).where(cond).with_for_update()).first() is None:
                return False
            owned = select(s.session_id).where(cond)
            conn.execute(delete(self.t.messages).where(self.t.messages.c.session_id.in_(owned.scalar_subquery())))
            return conn.execute(delete(self.t.sessions).where(cond)).rowcount > 0

    @retry_conflicts
    def _delete_sessions(self, *, user_id: str | None = None, idle_before: datetime | None = None) -> int:
        s = self.t.sessions.c
        cond = s.user_id == user_id if user_id is not None else s.updated_at < idle_before
        with self.db.write() as conn:
            # One set-based statement per table; the foreign key cascades too, as a safety net.
            doomed = select(s.session_id).where(cond).scalar_subquery()
            conn.execute(delete(self.t.messages).where(self.t.messages.c.session_id.in_(doomed)))
            return conn.execute(delete(self.t.sessions).where(cond)).rowcount

    # ---- messages ----

    @functools.cached_property
    def _append_statements(self) -> tuple[Prepared, Prepared, Prepared]:
        """(counter bump, count read, message insert), prepared once per store."""
        s = self.t.sessions.c
        bump = update(self.t.sessions).where(s.session_id == bindparam("sid"))
        bump = bump.values(message_count=s.message_count + bindparam("n"), updated_at=_later(s.updated_at, bindparam("now", type_=s.updated_at.type)))
        if self.db.engine.dialect.update_returning:
            bump = bump.returning(s.message_count)
        count = select(s.message_count).where(s.session_id == bindparam("sid"))
        return self.db.prepare(bump), self.db.prepare(count), self.db.prepare(insert(self.t.messages))

    @retry_conflicts
    def _append(self, session_id: str, drafts: list[MessageDraft], now: datetime) -> list[Message]:
        try:
            return self._append_new(session_id, drafts, now)
        except sa_exc.IntegrityError:
            # The unique (session_id, id) index refused an id the session already holds (a retried append): that
            # transaction rolled back whole; sort the drafts into stored and new under the session's row lock.
            return self._append_known(session_id, drafts, now)

    def _bump(self, conn: Runner, session_id: str, n: int, now: datetime) -> int:
        """Add ``n`` to the session's message_count (taking its row lock); the new count."""
        bump, read_count, _ = self._append_statements
        params = {"sid": session_id, "n": n, "now": now}
        # The counter row is the lock: concurrent appenders to one session queue here, others don't wait.
        if self.db.engine.dialect.update_returning:
            count = bump.scalar(conn, params)
            if count is None:
                raise missing_session(session_id)
            return int(count)
        if bump.rowcount(conn, params) == 0:
            raise missing_session(session_id)
        return int(read_count.scalar(conn, params))

    @functools.cached_property
    def _append_one(self) -> Prepared:
        """PostgreSQL's append of one message as one statement: a CTE bumps the counter (taking the session's row
        lock) and the insert takes its seq from it; no row when the session is missing. Autocommitted, it is one
        round trip where a transaction takes four (BEGIN, bump, insert, COMMIT)."""
        s = self.t.sessions.c
        bump = (
            update(self.t.sessions)
            .where(s.session_id == bindparam("sid"))
            .values(message_count=s.message_count + 1, updated_at=_later(s.updated_at, bindparam("now", type_=s.updated_at.type)))
            .returning(s.message_count)
            .cte("bump")
        )
        columns = list(self.t.messages.columns)
        # Values named m_<column>: with echo on, SQLAlchemy runs this statement itself, and would take parameters
        # named like a sessions column as more SET values of the UPDATE.
        values = [bump.c.message_count if c.name == "seq" else bindparam(f"m_{c.name}", type_=c.type) for c in columns]
        statement = insert(self.t.messages).from_select([c.name for c in columns], select(*values).select_from(bump))
        return self.db.prepare(statement.returning(self.t.messages.c.seq))

    def _append_new(self, session_id: str, drafts: list[MessageDraft], now: datetime) -> list[Message]:
        insert_messages = self._append_statements[2]
        n = len(drafts)
        if n == 1 and self.db.dialect == "postgresql" and self.db.replica is None:
            row = {f"m_{k}": v for k, v in _message_row(drafts[0].stamp(session_id, 0, now)).items()}
            with self.db.fast_read() as conn:  # autocommit: the statement is its own transaction
                seq = self._append_one.scalar(conn, {**row, "sid": session_id, "now": now})
            if seq is None:
                raise missing_session(session_id)
            return [drafts[0].stamp(session_id, int(seq), now)]
        with self.db.fast_write() as conn:
            count = self._bump(conn, session_id, n, now)
            stored = [d.stamp(session_id, count - n + 1 + i, now) for i, d in enumerate(drafts)]
            if n == 1:
                insert_messages.rowcount(conn, _message_row(stored[0]))
            else:
                insert_messages.many(conn, [_message_row(m) for m in stored])
        return stored

    def _append_known(self, session_id: str, drafts: list[MessageDraft], now: datetime) -> list[Message]:
        s, m = self.t.sessions.c, self.t.messages.c
        with self.db.write() as conn:
            # Locking reads: the row lock queues us behind other appenders, and the messages read is the latest
            # committed state (not an older snapshot) on every isolation level.
            found = conn.execute(select(s.message_count).where(s.session_id == session_id).with_for_update()).first()
            if found is None:
                raise missing_session(session_id)
            ids = [d.id for d in drafts]
            known: dict[str, Message] = {}
            for chunk in _chunks(ids):
                query = select(self.t.messages).where(m.session_id == session_id, m.id.in_(chunk)).with_for_update()
                known.update((row.id, _message_from_row(row)) for row in conn.execute(query))
            fresh = [d for d in drafts if d.id not in known]
            if fresh:
                count = self._bump(conn, session_id, len(fresh), now)
                stored = [d.stamp(session_id, count - len(fresh) + 1 + i, now) for i, d in enumerate(fresh)]
                self._append_statements[2].many(conn, [_message_row(x) for x in stored])
                known.update((x.id, x) for x in stored)
        return [known[d.id] for d in drafts]  # type: ignore[index]

    @functools.cached_property
    def _newest(self) -> Any:
        """The resume query, built once: statement construction costs more than SQLite takes to run it."""
        m = self.t.messages.c
        return select(self.t.messages).where(m.session_id == bindparam("sid")).order_by(m.seq.desc()).limit(bindparam("n"))

    @functools.cached_property
    def _newest_prepared(self) -> Prepared:
        return self.db.prepare(self._newest)

    def _get_messages(self, session_id: str, limit: int | None, before_seq: int | None, after_seq: int | None) -> list[Message]:
        if limit is not None and before_seq is None and after_seq is None:
            params = {"sid": session_id, "n": limit}
            newest = self._newest_prepared
            rows = self.db.read_history(lambda conn: [_message_from_row(r) for r in newest.rows(conn, params)], prepared=True)
            rows.reverse()
            return rows
        m = self.t.messages.c
        query = select(self.t.messages).where(m.session_id == session_id)
        if before_seq is not None:
            query = query.where(m.seq < before_seq)
        if after_seq is not None:
            query = query.where(m.seq > after_seq)
        if limit is not None:
            # Newest N: walk the (session_id, seq) index backwards and stop after N rows.
            query = query.order_by(m.seq.desc()).limit(limit)
        else:
            query = query.order_by(m.seq)
        rows = self.db.read_history(lambda conn: [_message_from_row(r) for r in conn.execute(query)])
        if limit is not None:
            rows.reverse()
        return rows

    def _count_messages(self, session_id: str) -> int:
        count = self._append_statements[1]
        return int(self.db.read_history(lambda conn: count.scalar(conn, {"sid": session_id}), prepared=True) or 0)

    @retry_conflicts
    def _import_messages(self, session_id: str, messages: list[Message], updated_at: datetime) -> int:
        try:
            return self._import_numbered(session_id, messages, updated_at, known=False)
        except sa_exc.IntegrityError:
            # An id the session already holds (a repeated or resumed import): that transaction rolled back whole;
            # sort stored from new under the session's row lock.
            return self._import_numbered(session_id, messages, updated_at, known=True)

    def _import_numbered(self, session_id: str, messages: list[Message], updated_at: datetime, *, known: bool) -> int:
        s, m = self.t.sessions.c, self.t.messages.c
        with self.db.write() as conn:
            # The session row lock queues us behind appenders, as an append does.
            if conn.execute(select(s.message_count).where(s.session_id == session_id).with_for_update()).first() is None:
                raise missing_session(session_id)
            # The newest seq by walking the (session_id, seq) key backwards: one index entry.
            last = conn.execute(self._newest_seq, {"sid": session_id}).scalar() or 0
            fresh = messages
            if messages and (known or messages[0].seq <= last):
                held = set(conn.execute(select(m.id).where(m.session_id == session_id, m.id.in_([x.id for x in messages]))).scalars())
                fresh = [x for x in messages if x.id not in held]
            last = after_last(session_id, fresh, last)
            if fresh:
                self._append_statements[2].many(conn, [_message_row(x) for x in fresh])
            stamp = bindparam("at", updated_at, type_=s.updated_at.type)
            conn.execute(
                update(self.t.sessions)
                .where(s.session_id == session_id)
                .values(message_count=s.message_count + len(fresh), updated_at=_later(s.updated_at, stamp))
            )
        return len(fresh)

    @functools.cached_property
    def _removal_statements(self) -> tuple[Prepared, Prepared, Prepared, Prepared, Prepared]:
        """(session row lock, newest message locked, delete one seq, delete after a seq, lower the count), built once:
        building a statement costs more than SQLite takes to run it."""
        s, m = self.t.sessions.c, self.t.messages.c
        lock = select(s.message_count).where(s.session_id == bindparam("sid")).with_for_update()
        newest = self._newest.with_for_update()
        delete_one = delete(self.t.messages).where(m.session_id == bindparam("sid"), m.seq == bindparam("seq"))
        delete_after = delete(self.t.messages).where(m.session_id == bindparam("sid"), m.seq > bindparam("seq"))
        stamp = bindparam("now", type_=s.updated_at.type)
        # The next append takes the freed seqs; activity moves to now (never back: _later).
        lower = (
            update(self.t.sessions)
            .where(s.session_id == bindparam("sid"))
            .values(message_count=s.message_count - bindparam("removed"), updated_at=_later(s.updated_at, stamp))
        )
        return tuple(self.db.prepare(x) for x in (lock, newest, delete_one, delete_after, lower))  # type: ignore[return-value]

    @retry_conflicts
    def _pop(self, session_id: str, now: datetime) -> Message | None:
        lock, newest, delete_one, _, lower = self._removal_statements
        with self.db.fast_write() as conn:
            # The session's row lock queues removals behind appends; the locking read of the newest message is then
            # the latest committed one, not an older snapshot's (as in _append_known).
            if lock.first(conn, {"sid": session_id}) is None:
                return None
            row = newest.first(conn, {"sid": session_id, "n": 1})
            if row is None:
                return None
            message = _message_from_row(row)
            delete_one.rowcount(conn, {"sid": session_id, "seq": message.seq})
            lower.rowcount(conn, {"sid": session_id, "removed": 1, "now": now})
        return message

    @retry_conflicts
    def _truncate(self, session_id: str, after_seq: int, now: datetime) -> int:
        lock, _, _, delete_after, lower = self._removal_statements
        with self.db.fast_write() as conn:
            if lock.first(conn, {"sid": session_id}) is None:
                return 0
            removed = delete_after.rowcount(conn, {"sid": session_id, "seq": after_seq})
            if removed:
                lower.rowcount(conn, {"sid": session_id, "removed": removed, "now": now})
        return removed

    @functools.cached_property
    def _newest_seq(self) -> Any:
        m = self.t.messages.c
        return select(m.seq).where(m.session_id == bindparam("sid")).order_by(m.seq.desc()).limit(1)

    @retry_conflicts
    def _import(self, session: Session, messages: list[Message]) -> bool:
        insert_messages = self._append_statements[2]
        with self.db.fast_write() as conn:
            if self._session_statements[0].rowcount(conn, _session_row(session)) != 1:
                return False
            batch = 5000
            for start in range(0, len(messages), batch):
                insert_messages.many(conn, [_message_row(m) for m in messages[start : start + batch]])
        return True


def _live(table: Any, now: float) -> Any:
    return or_(table.c.expires_at.is_(None), table.c.expires_at > now)


def _prefix_range(column: Any, prefix: str) -> Any:
    """``column`` starts with ``prefix``, as an index range (keys use binary collations on every dialect)."""
    last = ord(prefix[-1])
    if last >= 0x10FFFF:
        return column.startswith(prefix, autoescape=True)
    nxt = last + 1 if last + 1 not in range(0xD800, 0xE000) else 0xE000
    return and_(column >= prefix, column < prefix[:-1] + chr(nxt))


class SqlStateStore(_SqlStore, StateStore):
    """StateStore in the ``<prefix>state`` table: JSON text values, expiry as a Unix time checked on every read."""

    def __init__(self, database: SqlDatabase) -> None:
        super().__init__(database)
        # Reads already ignore expired rows; removing them on open keeps the table from growing without bound.
        try:
            self.purge_expired()
        except Exception as e:
            self.db.release()
            raise self.db.translate(e) from e

    @functools.cached_property
    def _get_statements(self) -> tuple[Prepared, Any]:
        """(one key, prepared; several keys), built once; expiry is checked against a bound ``now``."""
        st = self.t.state
        live = or_(st.c.expires_at.is_(None), st.c.expires_at > bindparam("now"))
        one = select(st.c.key, st.c.value).where(st.c.key == bindparam("key"), live)
        many = select(st.c.key, st.c.value).where(st.c.key.in_(bindparam("keys", expanding=True)), live)
        return self.db.prepare(one), many

    @functools.cached_property
    def _set_statement(self) -> Prepared:
        return self.db.prepare(_upsert(self.db.dialect, self.t.state, ["value", "expires_at"]))

    def _get_many(self, keys: list[str]) -> dict[str, Any]:
        one, many = self._get_statements
        now = time.time()
        if len(keys) == 1:
            with self.db.fast_read() as raw:
                rows = one.rows(raw, {"key": keys[0], "now": now})
            return {key: loads(value) for key, value in rows}
        with self.db.read() as conn:
            found: dict[str, Any] = {}
            for chunk in _chunks(list(set(keys))):
                found.update((key, loads(value)) for key, value in conn.execute(many, {"keys": chunk, "now": now}))
            return found

    @retry_conflicts
    def _set_many(self, items: dict[str, str], expires_at: float | None) -> None:
        rows = [{"key": k, "value": v, "expires_at": expires_at} for k, v in items.items()]
        with self.db.fast_write(history=False) as conn:
            if len(rows) == 1:
                self._set_statement.rowcount(conn, rows[0])
            else:
                self._set_statement.many(conn, rows)

    @retry_conflicts
    def _delete(self, key: str) -> bool:
        st = self.t.state
        with self.db.write(history=False) as conn:
            live = conn.execute(delete(st).where(st.c.key == key, _live(st, time.time()))).rowcount > 0
            if not live:
                conn.execute(delete(st).where(st.c.key == key))  # an expired leftover
            return live

    def _incr(self, key: str, amount: int) -> int:
        st = self.t.state

        def work(conn: Connection) -> int:
            row = conn.execute(select(st.c.value, st.c.expires_at).where(st.c.key == key).with_for_update()).first()
            expired = row is not None and row.expires_at is not None and row.expires_at <= time.time()
            current = MISSING if row is None or expired else loads(row.value)
            value = incremented(key, current, amount)
            keep = None if row is None or expired else row.expires_at
            if row is None:
                conn.execute(insert(st).values(key=key, value=dumps(value), expires_at=None))
            else:
                conn.execute(update(st).where(st.c.key == key).values(value=dumps(value), expires_at=keep))
            return value

        # A missing key raced by two processes: one insert wins, the other retries and updates.
        return self.db.retrying(work, history=False)

    def _expires_at(self, key: str) -> float | None:
        st = self.t.state
        with self.db.read() as conn:
            return conn.execute(select(st.c.expires_at).where(st.c.key == key, _live(st, time.time()))).scalar()

    @retry_conflicts
    def _expire(self, key: str, expires_at: float | None) -> bool:
        st = self.t.state
        with self.db.write(history=False) as conn:
            return conn.execute(update(st).where(st.c.key == key, _live(st, time.time())).values(expires_at=expires_at)).rowcount > 0

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        st = self.t.state
        last: str | None = None
        while True:  # keyset pages: no long-lived cursor, no full scan held in memory
            query = select(st.c.key).where(_live(st, time.time()))
            if prefix:
                query = query.where(_prefix_range(st.c.key, prefix))
            if last is not None:
                query = query.where(st.c.key > last)
            with self.db.read() as conn:
                page = list(conn.execute(query.order_by(st.c.key).limit(1000)).scalars())
            yield from page
            if len(page) < 1000:
                return
            last = page[-1]

    @retry_conflicts
    def _clear(self, prefix: str) -> int:
        st = self.t.state
        now = time.time()
        cond = _prefix_range(st.c.key, prefix) if prefix else st.c.key.isnot(None)
        with self.db.write(history=False) as conn:
            live = conn.execute(delete(st).where(cond, _live(st, now))).rowcount
            conn.execute(delete(st).where(cond))
            return live

    @retry_conflicts
    def purge_expired(self) -> int:
        """Physically remove expired keys (they are already invisible to every read). Returns how many."""
        st = self.t.state
        with self.db.write(history=False) as conn:
            return conn.execute(delete(st).where(st.c.expires_at <= time.time())).rowcount
