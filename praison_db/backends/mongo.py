"""MongoDB stores through pymongo.

URLs: ``mongodb://[user:password@]host[:port][,host2...]/[database][?options]`` and ``mongodb+srv://...``; the
database comes from the URL path (default ``praison``). Every MongoDB connection-string option (``replicaSet``,
``w``, ``journal``, ``tls``, ``authSource``, ``serverSelectionTimeoutMS``, ...) stays in the URL for pymongo; an
unknown one is a ConfigError. praison_db's own option: ``collection_prefix`` (default ``praison_``), giving the
collections ``<prefix>sessions``, ``<prefix>messages`` and ``<prefix>state``.

Guarantees:

- Sessions are documents keyed by ``_id`` = session id, indexed on (updated_us, _id) and (user_id | agent_id,
  updated_us, _id) so list-by-activity is an index walk.
- Every session document carries an incarnation ``inc`` (an ObjectId drawn when it is created or imported), and each
  of its messages carries the same ``inc``, under a unique index on (session_id, inc, seq). Reads ask for the
  session's current incarnation only, so messages of a deleted session are never shown in a session re-created
  under the same id, and cannot collide with its seqs. Documents written before incarnations existed have none
  (``inc`` missing reads as null) and keep working.
- An append takes its seqs from one atomic ``$inc`` of the session's ``message_count`` (which also moves
  ``updated_us``, never backwards) and inserts the messages in the same multi-document transaction, so seqs are
  gap-free across processes and a failed append leaves nothing behind. Transactions need a replica set or a sharded
  cluster (Atlas, any production deployment, even a one-node replica set). On a standalone ``mongod`` the counter
  and the insert are two writes: a process dying between them leaves a gap in the seqs, and ``capabilities``
  says ``transactions=False``. There, a delete can also run between the two writes; the messages then land in the
  deleted incarnation (invisible), and the appender, which checks the session after inserting, removes them.
- ``pop_message`` and ``truncate`` delete the newest messages and lower ``message_count`` to the newest seq kept
  (a ``$min``, so the next append takes the first freed seq), in one transaction that also writes the session
  document, which orders them against appends. A pop claims the newest message by deleting it by ``_id``; one whose
  delete finds it gone looks again, so concurrent pops never take the same message, on a standalone server too.
  There, a pop or truncate landing between an append's counter bump and its insert can leave a gap in the seqs
  (the appender raises the counter past what it inserted), never two messages at one seq.
- A delete removes the session document first and then the messages of that incarnation, so a session is either
  listed with all its messages or not at all; an import inserts the messages first and the session document last.
- Timestamps are stored as integer microseconds since the epoch (``created_us``, ``updated_us``): BSON dates keep
  only milliseconds, and the stores promise exact round trips.
- A message's role, type, name and text content are BSON strings (null when absent); content that is not text
  goes, with the item's own fields (``extra``), into one JSON text field ``extra``. Messages written before items
  had a type and extra fields read back unchanged.
- User-supplied JSON (metadata, tool_calls, an item's own fields and non-text content, state values) is stored as
  JSON text: BSON cannot hold integers beyond 64 bits, and field names starting with ``$`` or containing ``.`` are
  restricted. Integer state values in the 64-bit range are stored as BSON integers so ``incr`` is a server-side
  ``$inc``.
- State expiry: a TTL index on ``e`` (``expireAfterSeconds=0``) lets the server delete expired keys, and every read
  also checks the exact expiry ``x`` (Unix seconds), so an expired key is gone at once, before the server's sweep.
- ``delete_user`` and ``prune`` delete in batches of ids with ``$in`` (never document by document).

Timeouts (each overridable in the URL): a server down or unreachable raises StoreUnavailable after
``serverSelectionTimeoutMS`` (default here 10 s; ``connectTimeoutMS`` 10 s), and one that stops answering a call
after ``socketTimeoutMS`` (default here 30 s).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

import pymongo
from bson import ObjectId
from bson.errors import BSONError, InvalidDocument
from pymongo import ReturnDocument
from pymongo import errors as px
from pymongo.client_session import ClientSession
from pymongo.uri_parser import split_options

from .. import errors
from ..base import (
    ConnectedStore,
    SharedConnection,
    Capabilities,
    ConversationStore,
    Option,
    SessionFilter,
    StateStore,
    check_prefix,
    loads,
    missing_session,
    after_last,
    not_an_integer,
    resolve_options,
)
from ..models import Message, MessageDraft, Session, dumps, packed_extra, unpacked_extra
from ..models import epoch_us as _us, from_epoch_us as _from_us  # the stored times: integer microseconds
from ..url import StoreURL, redacted

__all__ = ["MongoConversationStore", "MongoStateStore"]

T = TypeVar("T")

OPTIONS: dict[str, Option] = {
    "collection_prefix": Option(check_prefix, "praison_", "prefix of every collection name"),
}
# Bounded waits unless the URL says otherwise: a down server is a StoreUnavailable in seconds, not a hang, and a
# server that stops answering mid-call (socketTimeoutMS; pymongo's own default is to wait forever) too. 30 s is far
# above any single operation here, a 16 MB message included.
_DEFAULTS: dict[str, Any] = {"serverSelectionTimeoutMS": 10_000, "connectTimeoutMS": 10_000, "socketTimeoutMS": 30_000}
_BATCH = 1000
_INT = re.compile(r"-?(?:0|[1-9][0-9]*)\Z")
_INT64 = range(-(2**63), 2**63)
_DUPLICATE_KEY = {11000, 11001, 12582}  # the codes MongoDB has used for a unique-index violation
_INDEX_NOT_FOUND = 27


class _SessionTaken(Exception):
    """Raised inside an import transaction to abort it when the session id exists."""


class _LostRace:
    """What a pop's transaction body returns when another pop deleted the message it read first."""


_LOST_RACE = _LostRace()


# ---- errors ----


def _classify(error: BaseException, where: str, password: str | None) -> errors.Error | None:
    """A praison_db error for a pymongo/bson error; one line, password masked."""
    if isinstance(error, UnicodeError):
        return errors.InputError(f"{where}: ids, keys and text must be valid Unicode (no lone surrogates)")
    if not isinstance(error, (px.PyMongoError, BSONError)):
        return None
    detail = redacted(error, password)
    code = getattr(error, "code", None)
    if _is_duplicate_key(error):
        return errors.IntegrityError(f"{where}: duplicate key: {detail}")
    if isinstance(error, px.OperationFailure) and code in (18, 13, 8000):
        return errors.ConfigError(f"{where}: the server refused the credentials or the action; check the user, password and authSource ({detail})")
    if isinstance(error, (px.ConnectionFailure, px.ExecutionTimeout, px.WaitQueueTimeoutError, px.WTimeoutError)):
        return errors.StoreUnavailable(f"{where} is unavailable: {detail}")
    if isinstance(error, (px.ConfigurationError, px.InvalidURI, px.InvalidName)):
        return errors.ConfigError(f"{where}: {detail}")
    if isinstance(error, (px.DocumentTooLarge, InvalidDocument)) or code in _TOO_LARGE or _bulk_codes(error) & _TOO_LARGE:
        return errors.InputError(f"{where} cannot store this document: {detail}")
    return errors.Error(f"{where}: {detail}")


_TOO_LARGE = {10334, 17419, 17420}  # BSONObjectTooLarge and the "document too large" codes of older servers


def _bulk_codes(error: Exception) -> set[Any]:
    """The codes of the individual write errors of an insert_many (BulkWriteError carries them in its details)."""
    if not isinstance(error, px.BulkWriteError):
        return set()
    return {e.get("code") for e in (error.details or {}).get("writeErrors", [])}


def _is_duplicate_message_id(error: Exception) -> bool:
    """A unique-index violation on (session_id, inc, id): another writer stored one of our message ids first."""
    details = getattr(error, "details", None) or {}
    for write_error in details.get("writeErrors") or [details]:
        pattern = write_error.get("keyPattern") or {}
        if "id" in pattern or "index: session_inc_id " in str(write_error.get("errmsg", "")):
            return True
    return False


def _is_duplicate_key(error: Exception) -> bool:
    """A unique-index violation, however it arrives: DuplicateKeyError from single writes, BulkWriteError (code 65)
    from insert_many, or a plain OperationFailure with the code from inside a transaction."""
    if isinstance(error, px.DuplicateKeyError) or getattr(error, "code", None) in _DUPLICATE_KEY:
        return True
    if isinstance(error, px.BulkWriteError):
        return any(e.get("code") in _DUPLICATE_KEY for e in (error.details or {}).get("writeErrors", []))
    return False


# ---- connection ----


def _split_url(url: StoreURL, ours: Mapping[str, Any]) -> tuple[str, str]:
    """(URL for pymongo without praison_db's options, database name). Repeated driver options are kept as written."""
    raw = url.render(hide_password=False)
    head, _, query = raw.partition("?")
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in ours]
    database = url.path.strip("/") or "praison"
    return (f"{head}?{urlencode(kept)}" if kept else head), database


class _Connection(SharedConnection):
    """One MongoClient shared by the conversation and state stores of a URL; closed with the last of them."""

    def __init__(self, url: StoreURL, options: Mapping[str, Any], *, asynchronous: bool = False) -> None:
        opts, _ = resolve_options(f"{url.scheme}://", OPTIONS, {**url.query, **options}, passthrough=True)
        self.prefix: str = opts["collection_prefix"]
        self.where = f"MongoDB at {url.render()}"
        self.password = url.password
        self.url = url.render()
        self.asynchronous = asynchronous
        SharedConnection.__init__(self)
        uri, database = _split_url(url, OPTIONS)
        kwargs = {k: v for k, v in options.items() if k not in OPTIONS}
        query = uri.partition("?")[2]
        try:
            # pymongo only warns about unknown connection-string options; check them so a typo is an error.
            given = {k.lower() for k in split_options(query, validate=True, warn=False)} if query else set()
        except (px.ConfigurationError, ValueError) as e:
            valid = ", ".join(sorted(OPTIONS))
            raise errors.ConfigError(
                f"invalid option for {url.scheme}://: {str(e).split('. ')[0][:200]}; valid options: {valid}, "
                "or any MongoDB connection-string option"
            ) from None
        given |= {k.lower() for k in kwargs}
        defaults = {k: v for k, v in _DEFAULTS.items() if k.lower() not in given}
        try:
            # The async API runs this same code on AsyncMongoClient (see praison_db.bridge): only the client differs.
            client_class: Any = _async_client() if asynchronous else pymongo.MongoClient
            self.client: pymongo.MongoClient[dict[str, Any]] = client_class(uri, **{"tz_aware": True, **defaults, **kwargs})
            self.db = self.client[database]
            hello = self.client.admin.command("hello")
        except Exception as e:
            client = getattr(self, "client", None)
            if client is not None:
                client.close()
            translated = self.classify(e)
            if isinstance(e, (TypeError, ValueError)) and translated is None:
                translated = errors.ConfigError(f"invalid option for {url.render()}: {str(e).splitlines()[0][:200]}")
            raise (translated or self.translate(e)) from e
        # Multi-document transactions exist on replica sets (setName) and sharded clusters (mongos).
        self.transactions = bool(hello.get("setName")) or hello.get("msg") == "isdbgrid"

    disposed = False

    def collection(self, name: str) -> Any:
        return self.db[self.prefix + name]

    def transaction(self, work: Callable[[ClientSession | None], T]) -> T:
        """Run ``work`` in a transaction (retried on write conflicts) where the server has them, else directly."""
        if not self.transactions:
            return work(None)
        def attempt(session: ClientSession) -> T:
            # with_transaction retries transient failures for up to two minutes; a closed client fails every retry.
            if self.disposed:
                raise errors.StoreClosed(f"{self.where} was closed; open a new one with db(...)")
            return work(session)

        with self.client.start_session() as session:
            return session.with_transaction(attempt)

    def classify(self, error: BaseException) -> errors.Error | None:
        return _classify(error, self.where, self.password)

    def _dispose(self) -> None:
        self.disposed = True
        self.client.close()


def _async_client() -> Any:
    from pymongo import AsyncMongoClient

    from ..bridge import Bridged

    return Bridged(AsyncMongoClient)


class _MongoStore(ConnectedStore):
    """What both MongoDB stores share: the connection, error translation, close."""

    conn: _Connection
    _connection_class = _Connection

    def _bind(self, conn: _Connection) -> None:
        self.conn = conn.acquire()
        self.url = conn.url
        if not conn.transactions:
            self.capabilities = Capabilities(  # type: ignore[misc]
                transactions=False,
                reason="a standalone mongod has no multi-document transactions (a process dying mid-append can leave "
                "a seq gap); run it as a replica set",
            )

    def _close(self) -> None:
        self.conn.release()

    def _server_version(self) -> str | None:
        return str(self.conn.client.server_info().get("version", "?"))


# ---- conversations ----


def _session_doc(s: Session, inc: ObjectId) -> dict[str, Any]:
    return {
        "_id": s.session_id,
        "inc": inc,
        "user_id": s.user_id,
        "agent_id": s.agent_id,
        "session_type": s.session_type,
        "name": s.name,
        "metadata": dumps(s.metadata),
        "created_us": _us(s.created_at),
        "updated_us": _us(s.updated_at),
        "message_count": s.message_count,
    }


def _session_from_doc(d: Mapping[str, Any]) -> Session:
    return Session.trusted(
        session_id=d["_id"],
        user_id=d.get("user_id"),
        agent_id=d.get("agent_id"),
        session_type=d["session_type"],
        name=d.get("name"),
        metadata=loads(d["metadata"]),
        created_at=_from_us(d["created_us"]),
        updated_at=_from_us(d["updated_us"]),
        message_count=int(d["message_count"]),
    )


def _message_doc(m: Message, inc: ObjectId | None) -> dict[str, Any]:
    # Text content stays a BSON string (as before the open message model); any other content goes, with the item's
    # own fields, into one JSON text field: BSON cannot hold integers beyond 64 bits, and the item's keys may
    # start with "$" or hold dots.
    packed = packed_extra(m)
    doc: dict[str, Any] = {
        "session_id": m.session_id,
        "inc": inc,
        "seq": m.seq,
        "id": m.id,
        "role": m.role,
        "content": m.content if isinstance(m.content, str) else None,
        "created_us": _us(m.created_at),
    }
    if m.type is not None:
        doc["type"] = m.type
    if packed is not None:
        doc["extra"] = dumps(packed)
    if m.name is not None:
        doc["name"] = m.name
    if m.tool_calls is not None:
        doc["tool_calls"] = dumps(m.tool_calls)
    if m.tool_call_id is not None:
        doc["tool_call_id"] = m.tool_call_id
    if m.metadata:
        doc["metadata"] = dumps(m.metadata)
    return doc


def _seq_of(d: Mapping[str, Any]) -> int:
    return int(d["seq"])


def _message_from_doc(d: Mapping[str, Any]) -> Message:
    # Documents written before the open message model have no type and no extra: they read as before.
    content, extra = unpacked_extra(d.get("content"), loads(d["extra"]) if "extra" in d else None)
    return Message.trusted(
        id=d["id"],
        session_id=d["session_id"],
        seq=int(d["seq"]),
        role=d.get("role"),
        content=content,
        type=d.get("type"),
        name=d.get("name"),
        tool_calls=loads(d["tool_calls"]) if "tool_calls" in d else None,
        tool_call_id=d.get("tool_call_id"),
        metadata=loads(d["metadata"]) if "metadata" in d else {},
        extra=extra,
        created_at=_from_us(d["created_us"]),
    )


log = logging.getLogger("praison_db")
_ID_RACE_ATTEMPTS = 5
_POP_ATTEMPTS = 100  # each retry means another pop took the message this one read, so the session shrank
_POP_WINDOW = 16

_ACTIVITY = [("updated_us", pymongo.DESCENDING), ("_id", pymongo.DESCENDING)]


def _pairs(id_field: str, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A filter for documents of these (session id, incarnation) pairs, as two ``$in``s (index ranges, where an
    ``$or`` of many pairs makes some servers scan). The cross product matches no more: an incarnation is an ObjectId
    drawn for one session id. Only "no incarnation" (null, documents from before incarnations) is shared, and a
    session created since then always has one."""
    return {id_field: {"$in": sorted({p[0] for p in pairs})}, "inc": {"$in": list({p[1] for p in pairs})}}


class MongoConversationStore(_MongoStore, ConversationStore):
    """ConversationStore on MongoDB: a sessions collection and a messages collection."""

    OPTIONS = OPTIONS

    def __init__(self, conn: _Connection) -> None:
        self._bind(conn)
        self.sessions = conn.collection("sessions")
        self.messages = conn.collection("messages")
        # Idempotent; cheap when the indexes exist.
        self.sessions.create_index(_ACTIVITY, name="activity")
        self.sessions.create_index([("user_id", 1), *_ACTIVITY], name="user_activity")
        self.sessions.create_index([("agent_id", 1), *_ACTIVITY], name="agent_activity")
        self.messages.create_index([("session_id", 1), ("inc", 1), ("seq", 1)], unique=True, name="session_inc_seq")
        try:
            # The index before incarnations, unique on (session_id, seq): it would make a re-created session's
            # seqs collide with messages of a deleted incarnation.
            self.messages.drop_index("session_seq")
        except px.OperationFailure as e:
            if e.code != _INDEX_NOT_FOUND:
                raise
        # A message id is stored once per session incarnation, whoever races to add it.
        try:
            self.messages.create_index([("session_id", 1), ("inc", 1), ("id", 1)], unique=True, name="session_inc_id")
        except px.DuplicateKeyError:
            # Data from an older version with an id twice in a session (only imports could do that): keep working;
            # appends still look the ids up first, only the race between two writers of one id is not closed.
            log.warning("praison_db: %s has a message id twice in a session; ids are not enforced unique", conn.where)

    def state_store(self) -> MongoStateStore:
        """A StateStore in the same database, sharing this store's connection pool."""
        return MongoStateStore(self.conn)

    # ---- sessions ----

    def _insert_session(self, session: Session) -> bool:
        try:
            self.sessions.insert_one(_session_doc(session, ObjectId()))
            return True
        except px.DuplicateKeyError:
            return False

    def _get_or_insert_session(self, session: Session) -> Session:
        for _ in range(10):  # the existing one can be deleted between our insert and our read: try again
            if self._insert_session(session):
                return session
            found = self._get_session(session.session_id)
            if found is not None:
                return found
        raise errors.StoreUnavailable(f"{self.conn.where}: session {session.session_id!r} keeps being created and deleted")

    def _get_session(self, session_id: str) -> Session | None:
        doc = self.sessions.find_one({"_id": session_id})
        return _session_from_doc(doc) if doc else None

    def _list_sessions(self, flt: SessionFilter, limit: int, after: tuple[datetime, str] | None) -> list[Session]:
        query: dict[str, Any] = {}
        if flt.user_id is not None:
            query["user_id"] = flt.user_id
        if flt.agent_id is not None:
            query["agent_id"] = flt.agent_id
        if flt.session_type is not None:
            query["session_type"] = flt.session_type
        if after is not None:
            stamp, sid = _us(after[0]), after[1]
            query["$or"] = [{"updated_us": {"$lt": stamp}}, {"updated_us": stamp, "_id": {"$lt": sid}}]
        cursor = self.sessions.find(query).sort(_ACTIVITY).limit(limit)
        return [_session_from_doc(d) for d in cursor]

    def _update_session(self, session_id: str, changes: dict[str, Any], now: datetime) -> Session | None:
        update: dict[str, Any] = {"$max": {"updated_us": _us(now)}}  # never moves backwards
        fields = {k: (dumps(v) if k == "metadata" else v) for k, v in changes.items()}
        if fields:
            update["$set"] = fields
        doc = self.sessions.find_one_and_update({"_id": session_id}, update, return_document=ReturnDocument.AFTER)
        return _session_from_doc(doc) if doc else None

    def _drop_incarnations(self, pairs: list[tuple[str, Any]], s: ClientSession | None = None) -> None:
        """Delete the messages of these (session id, incarnation) pairs, whose session documents are gone."""
        if pairs:
            self.messages.delete_many(_pairs("session_id", pairs), session=s)

    def _purge(self, found: list[tuple[str, Any]], cond: dict[str, Any], s: ClientSession | None) -> int:
        """Delete the sessions of these (id, incarnation) pairs that still match ``cond``, then the messages of the
        incarnations that are gone. By incarnation: a session deleted and re-created by someone else since ``found``
        was read is not touched."""
        deleted = self.sessions.delete_many({**_pairs("_id", found), **cond}, session=s).deleted_count
        if deleted:
            alive = {(d["_id"], d.get("inc")) for d in self.sessions.find({"_id": {"$in": [p[0] for p in found]}}, {"inc": 1}, session=s)}
            self._drop_incarnations([p for p in found if p not in alive], s)
        return deleted

    def _delete_session(self, session_id: str, user_id: str | None) -> bool:
        cond = {} if user_id is None else {"user_id": user_id}

        def work(s: ClientSession | None) -> bool:
            # The session document first: from then on no read shows the session, whatever happens next.
            doc = self.sessions.find_one_and_delete({"_id": session_id, **cond}, projection={"inc": 1}, session=s)
            if doc is None:
                return False
            self._drop_incarnations([(session_id, doc.get("inc"))], s)
            return True

        return self.conn.transaction(work)

    def _delete_sessions(self, *, user_id: str | None = None, idle_before: datetime | None = None) -> int:
        cond: dict[str, Any] = {"user_id": user_id} if user_id is not None else {"updated_us": {"$lt": _us(idle_before)}}  # type: ignore[arg-type]
        total = 0
        # Batches of ids from the index; each batch leaves the match (deleted, or refreshed by new activity). The
        # check on a repeated batch only guards against a server that fails to delete without an error.
        previous: list[tuple[str, Any]] = []
        while (found := [(d["_id"], d.get("inc")) for d in self.sessions.find(cond, {"inc": 1}).limit(_BATCH)]) and found != previous:
            total += self.conn.transaction(lambda s: self._purge(found, cond, s))  # noqa: B023 - called at once
            previous = found
        return total

    # ---- messages ----

    def _append(self, session_id: str, drafts: list[MessageDraft], now: datetime) -> list[Message]:
        # Ids drawn here are new to every session: only ids the caller gave need looking up first.
        asked = [d.id for d in drafts if not d.generated]

        def work(s: ClientSession | None) -> list[Message]:
            where: dict[str, Any] = {"_id": session_id}
            known: dict[str, Message] = {}
            if asked:
                head = self.sessions.find_one(where, {"inc": 1}, session=s)
                if head is None:
                    raise missing_session(session_id)
                # Filtered by incarnation from here on: if the session was deleted (and maybe re-created) since
                # this lookup, this append's session is gone.
                where["inc"] = head.get("inc")
                found = self.messages.find({"session_id": session_id, "inc": where["inc"], "id": {"$in": asked}}, session=s)
                known = {m.id: m for m in map(_message_from_doc, found)}
            fresh = [d for d in drafts if d.id not in known]
            if fresh:
                n = len(fresh)
                # The counter bump is the seq allocation: atomic on the session document, and the transaction's
                # write lock on it queues concurrent appenders to this session only. It also answers the
                # incarnation the messages belong to, read in the same atomic step.
                doc = self.sessions.find_one_and_update(
                    where,
                    {"$inc": {"message_count": n}, "$max": {"updated_us": _us(now)}},
                    projection={"message_count": 1, "inc": 1},
                    return_document=ReturnDocument.AFTER,
                    session=s,
                )
                if doc is None:
                    raise missing_session(session_id)
                inc = doc.get("inc")
                first = int(doc["message_count"]) - n + 1
                stored = [d.stamp(session_id, first + i, now) for i, d in enumerate(fresh)]
                if s is None:
                    self._insert_unguarded(session_id, inc, stored)
                elif n == 1:
                    self.messages.insert_one(_message_doc(stored[0], inc), session=s)
                else:
                    self.messages.insert_many([_message_doc(m, inc) for m in stored], session=s)
                known.update((m.id, m) for m in stored)
            return [known[d.id] for d in drafts]  # type: ignore[index]

        for attempt in range(_ID_RACE_ATTEMPTS):
            try:
                return self.conn.transaction(work)
            except (px.DuplicateKeyError, px.BulkWriteError) as e:
                if not _is_duplicate_message_id(e):
                    raise  # a seq collision is another writer's document at our seq: IntegrityError, no retry
                # Another writer stored one of these ids since we looked (the unique index refused ours). In a
                # transaction nothing of ours was kept: look again. Without transactions the counter bump stays,
                # leaving a seq gap, as a crash mid-append can on a standalone server.
                if attempt + 1 == _ID_RACE_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _insert_unguarded(self, session_id: str, inc: Any, stored: list[Message]) -> None:
        """The insert half of an append without a transaction (standalone server)."""
        try:
            self.messages.insert_many([_message_doc(m, inc) for m in stored])
        except Exception:
            # Remove what this call did insert (matched by message id, never another writer's documents); the
            # counter has moved and stays moved: a gap in the seqs, as documented for standalone servers.
            ids = [m.id for m in stored]
            self._quietly(lambda: self.messages.delete_many({"session_id": session_id, "inc": inc, "id": {"$in": ids}}))
            raise
        # A delete may have run between the counter bump and the insert: the messages then belong to a deleted
        # incarnation, which no read shows. A delete removes the session document before the messages, so either
        # its message removal ran after this insert, or the session is gone by now and this cleans up. A pop or
        # truncate in between lowered the counter below these seqs: raise it again, so the next append cannot
        # take a seq stored here (the seqs they freed stay a gap).
        raised = self.sessions.update_one({"_id": session_id, "inc": inc}, {"$max": {"message_count": stored[-1].seq}})
        if raised.matched_count == 0:
            self._drop_incarnations([(session_id, inc)])

    @staticmethod
    def _quietly(work: Callable[[], Any]) -> None:
        """Best-effort cleanup while another error is being raised: that error is the one to report."""
        try:
            work()
        except (px.PyMongoError, BSONError):
            pass

    def _get_messages(self, session_id: str, limit: int | None, before_seq: int | None, after_seq: int | None) -> list[Message]:
        # No projections here: some servers (SecantusDB) apply them document by document, which costs more than
        # the few fields they would leave out.
        head = self.sessions.find_one({"_id": session_id})
        if head is None:
            return []
        # Only the current incarnation: messages left by a deleted session of the same id are not this session's.
        query: dict[str, Any] = {"session_id": session_id, "inc": head.get("inc")}
        seq: dict[str, int] = {}
        if before_seq is not None:
            seq["$lt"] = before_seq
        if after_seq is not None:
            seq["$gt"] = after_seq
        if seq:
            # BSON integers stop at 64 bits; a bound beyond that is the same as no bound.
            seq = {op: max(min(v, 2**63 - 1), -(2**63)) for op, v in seq.items()}
            query["seq"] = seq
        if limit is None:
            return [_message_from_doc(d) for d in self.messages.find(query).sort("seq", 1)]
        # Newest N. Seqs are contiguous, so they are the index range (hi - N, hi]: exactly N index entries and
        # documents on any server (some servers, SecantusDB among them, sort all of a session's messages for a
        # sort-plus-limit query even with the index). At most N documents: sorted here, not by the server.
        hi = min(before_seq - 1, 2**63 - 1) if before_seq is not None else int(head["message_count"])
        lo = max(hi - limit, after_seq if after_seq is not None else -(2**63))
        if hi <= lo:
            return []
        window = {"session_id": session_id, "inc": head.get("inc"), "seq": {"$gt": lo, "$lte": hi}}
        docs = list(self.messages.find(window))
        if len(docs) == hi - lo:
            docs.sort(key=_seq_of)
            return [_message_from_doc(d) for d in docs]
        # Seqs missing from the range (before_seq beyond the end, or a gap left on a standalone server): walk the
        # (session_id, seq) index backwards instead.
        newest = [_message_from_doc(d) for d in self.messages.find(query).sort("seq", -1).limit(limit)]
        newest.reverse()
        return newest

    def _count_messages(self, session_id: str) -> int:
        doc = self.sessions.find_one({"_id": session_id}, {"message_count": 1})
        return int(doc["message_count"]) if doc else 0

    def _pop(self, session_id: str, now: datetime) -> Message | None:
        def work(s: ClientSession | None) -> Message | None | _LostRace:
            head = self.sessions.find_one({"_id": session_id}, {"inc": 1, "message_count": 1}, session=s)
            if head is None:
                return None
            inc = head.get("inc")
            doc = self._newest(session_id, inc, int(head["message_count"]), s)
            if doc is None:
                return None
            # Deleting by _id is the claim: of two pops that read the same message, one deletes it and the other
            # (without a transaction) sees deleted_count 0 and looks again. In a transaction the loser gets a write
            # conflict, and the whole transaction is retried. (A find-and-delete would claim in one call, but
            # SecantusDB runs it as a collection scan.)
            if self.messages.delete_one({"_id": doc["_id"]}, session=s).deleted_count == 0:
                return _LOST_RACE
            popped = _message_from_doc(doc)
            self._lower_count(session_id, inc, popped.seq - 1, now, s)
            return popped

        for _ in range(_POP_ATTEMPTS):
            result = self.conn.transaction(work)
            if not isinstance(result, _LostRace):
                return result
        raise errors.StoreUnavailable(f"{self.conn.where}: pop_message on {session_id!r} kept losing races with other writers")

    def _newest(self, session_id: str, inc: Any, count: int, s: ClientSession | None) -> dict[str, Any] | None:
        """The session's newest message document. It sits at the counter's seq, or just below it while another pop
        has not lowered the counter yet: a short index range first, where a sort over the whole session makes
        some servers (SecantusDB) sort every message of it; the whole session only when that range is empty (a
        gap left on a standalone server)."""
        mine = {"session_id": session_id, "inc": inc}
        for query in ({**mine, "seq": {"$gt": count - _POP_WINDOW}}, mine):
            doc = self.messages.find_one(query, sort=[("seq", -1)], session=s)
            if doc is not None:
                return dict(doc)
        return None

    def _truncate(self, session_id: str, after_seq: int, now: datetime) -> int:
        def work(s: ClientSession | None) -> int:
            head = self.sessions.find_one({"_id": session_id}, {"inc": 1}, session=s)
            if head is None:
                return 0
            inc = head.get("inc")
            gone = self.messages.delete_many({"session_id": session_id, "inc": inc, "seq": {"$gt": after_seq}}, session=s)
            if gone.deleted_count:
                self._lower_count(session_id, inc, after_seq, now, s)
            return int(gone.deleted_count)

        return self.conn.transaction(work)

    def _lower_count(self, session_id: str, inc: Any, last: int, now: datetime, s: ClientSession | None) -> None:
        """The counter down to ``last``, the newest seq kept, so the next append takes the first freed seq.

        ``$min`` rather than a decrement: pops that run without a transaction lower it to the same value whatever
        order their updates land in. In a transaction this write to the session document also orders the removal
        against appends, which write the same document.
        """
        self.sessions.update_one(
            {"_id": session_id, "inc": inc}, {"$min": {"message_count": last}, "$max": {"updated_us": _us(now)}}, session=s
        )

    def _import_messages(self, session_id: str, messages: list[Message], updated_at: datetime) -> int:
        ids = [m.id for m in messages]

        def work(s: ClientSession | None) -> int:
            head = self.sessions.find_one({"_id": session_id}, {"inc": 1, "message_count": 1}, session=s)
            if head is None:
                raise missing_session(session_id)
            inc = head.get("inc")
            known = {d["id"] for d in self.messages.find({"session_id": session_id, "inc": inc, "id": {"$in": ids}}, {"id": 1}, session=s)}
            newest = self.messages.find_one({"session_id": session_id, "inc": inc}, {"seq": 1}, sort=[("seq", -1)], session=s)
            last = int(newest["seq"]) if newest else 0
            fresh = [m for m in messages if m.id not in known]
            last = after_last(session_id, fresh, last)
            if fresh:
                self.messages.insert_many([_message_doc(m, inc) for m in fresh], session=s)
            # message_count is the seq counter here (reads take it as the newest seq): it follows the last seq.
            self.sessions.update_one(
                {"_id": session_id, "inc": inc}, {"$max": {"message_count": last, "updated_us": _us(updated_at)}}, session=s
            )
            return len(fresh)

        return self.conn.transaction(work)

    def _import(self, session: Session, messages: list[Message]) -> bool:
        inc = ObjectId()

        def work(s: ClientSession | None) -> None:
            if self.sessions.find_one({"_id": session.session_id}, {"_id": 1}, session=s) is not None:
                raise _SessionTaken
            # Messages first, under a new incarnation no read asks for yet; the session document last, so without a
            # transaction too the session appears complete or not at all.
            for start in range(0, len(messages), _BATCH):
                self.messages.insert_many([_message_doc(m, inc) for m in messages[start : start + _BATCH]], session=s)
            try:
                self.sessions.insert_one(_session_doc(session, inc), session=s)
            except px.DuplicateKeyError:
                raise _SessionTaken from None

        try:
            self.conn.transaction(work)
        except Exception as e:
            if not self.conn.transactions and messages:
                self._quietly(lambda: self._drop_incarnations([(session.session_id, inc)]))
            if isinstance(e, _SessionTaken):
                return False
            raise
        return True


# ---- state ----


def _value_fields(text: str) -> dict[str, Any]:
    """An encoded value as document fields: 64-bit integers natively (for $inc), anything else as its JSON text."""
    if _INT.match(text):
        number = int(text)
        if number in _INT64:
            return {"i": number}
    return {"v": text}


def _decode(doc: Mapping[str, Any]) -> Any:
    return int(doc["i"]) if "i" in doc else loads(doc["v"])


def _live(now: float) -> dict[str, Any]:
    """Documents without an expiry or not yet expired (the TTL index deletes the rest, but only every minute)."""
    return {"$or": [{"x": None}, {"x": {"$gt": now}}]}


def _expiry_fields(expires_at: float | None) -> dict[str, Any]:
    if expires_at is None:
        return {}
    return {"e": datetime.fromtimestamp(expires_at, timezone.utc), "x": expires_at}


def _prefix_query(prefix: str) -> dict[str, Any]:
    """``_id`` starts with ``prefix``, as an index range (strings compare by UTF-8 bytes, i.e. by code point)."""
    if not prefix:
        return {}
    last = ord(prefix[-1])
    if last >= 0x10FFFF:
        return {"_id": {"$regex": "^" + re.escape(prefix)}}
    nxt = last + 1 if last + 1 not in range(0xD800, 0xE000) else 0xE000
    return {"_id": {"$gte": prefix, "$lt": prefix[:-1] + chr(nxt)}}


class MongoStateStore(_MongoStore, StateStore):
    """StateStore in the ``<prefix>state`` collection: one document per key, TTL index plus exact expiry checks."""

    OPTIONS = OPTIONS

    def __init__(self, conn: _Connection) -> None:
        self._bind(conn)
        self.state = conn.collection("state")
        self.state.create_index("e", expireAfterSeconds=0, name="expiry")

    def _get_many(self, keys: list[str]) -> dict[str, Any]:
        # Look up by _id alone and check expiry here: an $or on the expiry next to the _id lookup can make a
        # server scan the collection instead of using the _id index.
        now = time.time()
        docs = self.state.find({"_id": {"$in": list(set(keys))}})
        return {d["_id"]: _decode(d) for d in docs if d.get("x") is None or d["x"] > now}

    def _set_many(self, items: dict[str, str], expires_at: float | None) -> None:
        docs = [{"_id": k, **_value_fields(v), **_expiry_fields(expires_at)} for k, v in items.items()]
        if len(docs) == 1:
            self.state.replace_one({"_id": docs[0]["_id"]}, docs[0], upsert=True)
            return
        ops = [pymongo.ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in docs]
        self.conn.transaction(lambda s: self.state.bulk_write(ops, ordered=False, session=s))  # all or nothing

    def _delete(self, key: str) -> bool:
        if self.state.delete_one({"_id": key, **_live(time.time())}).deleted_count:
            return True
        self.state.delete_one({"_id": key})  # an expired leftover the server has not swept yet
        return False

    def _incr(self, key: str, amount: int) -> int:
        if amount not in _INT64:
            raise errors.InputError("incr amount must fit in 64 bits on MongoDB")
        for _ in range(100):  # each retry means another writer changed the key meanwhile
            now = time.time()
            try:
                doc = self.state.find_one_and_update(
                    {"_id": key, "i": {"$type": ["int", "long"]}, **_live(now)},
                    {"$inc": {"i": amount}},
                    return_document=ReturnDocument.AFTER,
                )
            except px.OperationFailure as e:
                if "$inc" in str(e) or "overflow" in str(e).lower():
                    raise errors.InputError(f"incr: {key!r} would leave the 64-bit integer range") from None
                raise
            if doc is not None:
                return int(doc["i"])
            current = self.state.find_one({"_id": key})
            if current is None:
                try:
                    self.state.insert_one({"_id": key, "i": amount})
                    return amount
                except px.DuplicateKeyError:
                    continue
            expired = current.get("x") is not None and current["x"] <= now
            if expired:
                # Replace exactly the expired document we saw (compare-and-swap on all its fields): starts over at
                # ``amount`` without the old TTL.
                if self.state.replace_one(dict(current), {"_id": key, "i": amount}).matched_count:
                    return amount
                continue
            if "i" in current:
                continue  # it became an integer between our two reads
            raise not_an_integer(key)
        raise errors.StoreUnavailable(f"{self.conn.where}: incr of {key!r} kept losing races with other writers")

    def _expires_at(self, key: str) -> float | None:
        doc = self.state.find_one({"_id": key, **_live(time.time())}, {"x": 1})
        return None if doc is None else doc.get("x")

    def _expire(self, key: str, expires_at: float | None) -> bool:
        fields = _expiry_fields(expires_at)
        update = {"$set": fields} if fields else {"$unset": {"e": "", "x": ""}}
        return self.state.update_one({"_id": key, **_live(time.time())}, update).matched_count > 0

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        return self._key_pages(prefix)

    def _key_pages(self, prefix: str) -> Iterator[str]:
        last: str | None = None
        while True:  # keyset pages: no server cursor left open between pages of a slow consumer
            query: dict[str, Any] = {**_prefix_query(prefix), **_live(time.time())}
            if last is not None:
                query = {"$and": [query, {"_id": {"$gt": last}}]}
            page = [d["_id"] for d in self.state.find(query, {"_id": 1}).sort("_id", 1).limit(_BATCH)]
            yield from page
            if len(page) < _BATCH:
                return
            last = page[-1]

    def _clear(self, prefix: str) -> int:
        query = _prefix_query(prefix)
        live = self.state.delete_many({**query, **_live(time.time())}).deleted_count
        self.state.delete_many(query)  # expired leftovers
        return live
