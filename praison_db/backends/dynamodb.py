"""DynamoDB stores through boto3, in one table (single-table design), without transactions.

URL: ``dynamodb://[access_key:secret_key@]region/[table_prefix]`` with options in the query string:

- ``endpoint``: the server's URL, e.g. ``http://127.0.0.1:8000`` for DynamoDB Local or dynalite (default: AWS).
- ``prefix`` (default empty): starts every partition key, so several applications (or tests) share one table.
- ``ttl`` (seconds, default none): sessions expire after this long without activity; default TTL of state keys.
- ``create_table`` (default true): create the table (on-demand billing) and switch its TTL on when it is missing.

The table is ``<table_prefix>praison``. Credentials come from the URL or from boto3's usual chain (environment,
``~/.aws``, instance roles); with an ``endpoint`` and no credentials anywhere, dummy ones are used (local servers
accept any). Every call waits at most 5 s to connect and 30 s for an answer; throttling is retried three times and
then raised as StoreUnavailable.

Items (``P`` is the prefix; ``inc`` is the session's incarnation, a random id drawn when it is created or imported):

- ``pk = P S#<session_id>``, ``sk = S``: the session header. Session fields, ``n`` (message_count, the newest seq),
  ``v`` (a version bumped by every write of the header), ``pend`` (map: commits not yet copied into message items),
  ``u``/``c`` (updated/created, integer microseconds), ``x``/``exp`` (exact expiry and the native TTL attribute),
  and the keys of three activity indexes (GSIs): everything, per user, per agent, ordered by ``u`` then the id.
- ``sk = M#<seq>#<version>#<inc>``: one message, its JSON text in ``b``, exact (-0.0, integers of any size). A
  message larger than an item may be is kept in ``sk = B#<token>#<part>`` items that it names.
- ``sk = I<inc>=<message id>``: the seq and version of the message that holds this id.
- ``pk = P K``, ``sk = <key>``: a state value (``i``: a 64-bit integer, ``incr`` adds to it on the server; ``j``: any
  other value as JSON text), with ``x``/``exp`` for its expiry.

How writes stay correct without transactions (DynamoDB Local has none, dynalite has none). Every change to a
session's messages is one conditional UpdateItem of its header (``v = :seen``): that write is the commit, and the
order of those writes is the order of history. An append's commit raises ``n`` and puts the new messages
themselves into ``pend`` (their JSON text, or the part items written just before); so once it succeeds the
messages are stored, whatever happens next. Then the appender copies them into message items and id items; its
next commit on the session removes the entry (or, if it dies first, any later writer that finds an entry older than
a few seconds copies it again and removes it: copying is idempotent). Readers resolve a seq from the items and
``pend`` together: of everything written for one seq, the highest version wins, and seqs above ``n`` do not exist.
A store commits on the header its own last commit returned, so a single writer's append is three requests (commit,
message item, id item); if anything changed meanwhile the commit is refused and made again on a fresh read. So:

- seqs are 1..n without gaps or repeats for any number of processes (a lost race on ``v`` re-reads and retries),
  and an append of several messages is stored whole or not at all;
- ``pop_message``/``truncate`` are one conditional write that lowers ``n`` (concurrent pops each win a different
  version); the removed items are deleted afterwards by their exact keys, so a seq taken again later, whose items
  carry a newer version in their key, is never touched;
- ids are unique per session: an appender looks its ids up (id items and ``pend``) after reading the header, and
  its commit holds only if the header has not changed since, i.e. if no other id was committed meanwhile.

Sessions created with ``ttl`` carry the native TTL attribute (AWS deletes expired headers in its own time); every
read also checks the exact expiry, so an expired session is gone at once. DynamoDB Local and dynalite do not sweep
TTL at all. The message items of an expired session are deleted when its id is created again or by ``prune``
(which finds it while its header exists); on AWS, once the header is swept they are left behind, unreachable.
Likewise an append whose copy runs while the session is deleted can leave items of the deleted incarnation: they are
never read (every item carries its incarnation) but take space.

Scale: GSIs are eventually consistent on AWS, so ``list_sessions`` can lag a just-made change by a moment; each
header write costs one write in each of the three indexes, and the index of all sessions has one partition key per
``prefix`` (a hot key past ~1,000 writes a second); state keys share one partition per ``prefix`` too, so that
``keys(prefix)`` is an ordered range read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar
from urllib.parse import urlsplit

import boto3  # type: ignore[import-untyped]
import botocore.exceptions as bx  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]

from .. import errors
from ..base import (
    BOOL,
    POSITIVE_SECONDS,
    ConnectedStore,
    ConversationStore,
    Option,
    SessionFilter,
    SharedConnection,
    StateStore,
    check_prefix,
    loads,
    missing_session,
    not_an_integer,
    resolve_options,
    seq_taken,
)
from ..models import Message, MessageDraft, Session, dumps, epoch_us, from_epoch_us, message_body, message_from_body
from ..url import StoreURL, redact_text

__all__ = ["DynamoConversationStore", "DynamoStateStore"]

log = logging.getLogger("praison_db")


def _table_prefix(value: Any) -> str:
    text = str(value)
    if len(text) > 200 or not all(c.isascii() and (c.isalnum() or c in "_.-") for c in text):
        raise ValueError("use at most 200 letters, digits, '_', '.' or '-'")
    return text


def _endpoint(value: Any) -> str:
    text = str(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("give the server's URL, e.g. http://127.0.0.1:8000")
    return text


OPTIONS: dict[str, Option] = {
    "endpoint": Option(_endpoint, None, "URL of the DynamoDB server (DynamoDB Local, dynalite); default AWS"),
    "prefix": Option(check_prefix, "", "start of every partition key: several stores share one table"),
    "ttl": Option(POSITIVE_SECONDS, None, "seconds of inactivity after which a session expires; default TTL of state keys"),
    "create_table": Option(BOOL, True, "create the table when it is missing"),
}
TABLE_SUFFIX = "praison"
HEADER = "S"
_INT64 = range(-(2**63), 2**63)
_BATCH_WRITE = 25  # DynamoDB's limit per BatchWriteItem
_BATCH_GET = 100  # and per BatchGetItem
_KEY_BYTES = 1024  # longest sort key
_ITEM_BYTES = 400 * 1024  # largest item
_PART_CHARS = 90_000  # at most 360 KB of UTF-8: one part item
_INLINE_BYTES = 16 * 1024  # message text a commit carries in the header itself; more goes to part items first
_INLINE_ITEM = 350 * 1024  # the longest text a message item holds itself
_COMMIT_ATTEMPTS = 500  # each retry means another writer committed first
_HELP_AFTER = 10.0  # seconds after which another writer copies a commit left in `pend`
_GSI = {"all": ("ga", "au"), "user": ("gu", "au"), "agent": ("gg", "au")}
_UNAVAILABLE = {
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
    "LimitExceededException",
    "TransactionInProgressException",
}
_CREDENTIALS = {
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "AccessDeniedException",
    "ExpiredTokenException",
    "MissingAuthenticationTokenException",
    "IncompleteSignature",
}


_us, _from_us = epoch_us, from_epoch_us


def _S(text: str) -> dict[str, str]:
    return {"S": text}


def _N(number: int | float) -> dict[str, str]:
    return {"N": repr(number) if isinstance(number, float) else str(number)}


def _token() -> str:
    return os.urandom(8).hex()


# ---- errors ----


def _code(error: BaseException) -> str:
    if isinstance(error, bx.ClientError):
        return str(error.response.get("Error", {}).get("Code", ""))
    return ""


def _detail(error: BaseException) -> str:
    if isinstance(error, bx.ClientError):
        text = str(error.response.get("Error", {}).get("Message", "")) or _code(error)
        return f"{_code(error)}: {text}"
    return str(error)


def _classify(error: BaseException, where: str, secrets: Iterable[str]) -> errors.Error | None:
    """A praison_db error for a boto3/botocore error; one line, no secret."""
    if not isinstance(error, (bx.BotoCoreError, bx.ClientError)):
        return None
    detail = " ".join(redact_text(_detail(error), list(secrets)).split())[:300]
    code = _code(error)
    if code == "ConditionalCheckFailedException":  # every condition is handled where it is written
        return errors.Error(f"{where}: an unexpected conditional write failed: {detail}")
    if code in _UNAVAILABLE or isinstance(
        error, (bx.EndpointConnectionError, bx.ConnectionError, bx.ReadTimeoutError, bx.ConnectTimeoutError, bx.HTTPClientError)
    ):
        return errors.StoreUnavailable(f"{where} is unavailable: {detail}")
    if code in _CREDENTIALS or isinstance(error, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return errors.ConfigError(f"{where}: the server refused the credentials; check the access key and secret ({detail})")
    if isinstance(error, bx.NoRegionError):
        return errors.ConfigError(f"{where}: name the region in the URL, e.g. dynamodb://us-east-1/")
    if code == "ResourceNotFoundException":
        return errors.ConfigError(f"{where}: the table does not exist; open the store with create_table=true ({detail})")
    if code == "ValidationException" or isinstance(error, bx.ParamValidationError):
        return errors.InputError(f"{where} cannot store this: {detail}")
    if code in ("ItemCollectionSizeLimitExceededException",):
        return errors.InputError(f"{where}: {detail}")
    return errors.Error(f"{where}: {detail}")


# ---- connection ----


@dataclass
class _Conditional:
    """What a conditional write answered: applied, or refused because its condition did not hold."""

    applied: bool
    attributes: dict[str, Any] = field(default_factory=dict)


_ensured: set[tuple[str | None, str, str]] = set()
_ensured_lock = threading.Lock()


class _Connection(SharedConnection):
    """One boto3 client and table shared by the conversation and state stores of a URL."""

    def __init__(self, url: StoreURL, options: Mapping[str, Any], *, asynchronous: bool = False) -> None:
        opts, _ = resolve_options(f"{url.scheme}://", OPTIONS, {**url.query, **options})
        path = url.path.strip("/")
        try:
            table_prefix = _table_prefix(path)
        except ValueError as e:
            raise errors.ConfigError(f"{url.render()}: the path is the table name prefix; {e}") from None
        self.table = table_prefix + TABLE_SUFFIX
        self.prefix: str = opts["prefix"]
        self.ttl: float | None = opts["ttl"]
        self.endpoint: str | None = opts["endpoint"]
        self.where = f"DynamoDB at {url.render()}"
        self.url = url.render()
        self.password = url.password
        self.secrets = tuple(url.secrets)
        self.asynchronous = asynchronous
        SharedConnection.__init__(self)
        region = url.host or boto3.session.Session().region_name
        if not region:
            raise errors.ConfigError(f"{self.url}: name the region as the URL's host, e.g. dynamodb://us-east-1/")
        self.region = region
        credentials: dict[str, str] = {}
        if url.username or url.password:
            if not (url.username and url.password):
                raise errors.ConfigError(f"{self.url}: give both the access key and the secret (key:secret@region)")
            credentials = {"aws_access_key_id": url.username, "aws_secret_access_key": url.password}
        elif self.endpoint and boto3.session.Session().get_credentials() is None:
            credentials = {"aws_access_key_id": "praison", "aws_secret_access_key": "praison"}  # local servers take any
        # No automatic retries: a timed-out conditional write may have happened, and sent again it would be refused
        # (or applied twice). `call` retries what is safe to retry.
        config = Config(connect_timeout=5, read_timeout=30, retries={"total_max_attempts": 1}, max_pool_connections=32)
        try:
            self.client: Any = boto3.client(
                "dynamodb", region_name=region, endpoint_url=self.endpoint, config=config, **credentials
            )
            self._ensure_table(bool(opts["create_table"]))
        except Exception as e:
            client = getattr(self, "client", None)
            if client is not None:
                client.close()
            if isinstance(e, errors.Error):
                raise
            if isinstance(e, ValueError):
                raise errors.ConfigError(f"{self.url}: {str(e).splitlines()[0][:200]}") from e
            raise self.translate(e) from e

    def classify(self, error: BaseException) -> errors.Error | None:
        return _classify(error, self.where, self.secrets)

    def _dispose(self) -> None:
        self.client.close()

    # -- requests --

    def call(self, operation: str, **kwargs: Any) -> Any:
        """One request. Throttling and a refused connection (nothing was sent) are retried with a short backoff."""
        method = getattr(self.client, operation)
        for attempt in range(4):
            try:
                return method(**kwargs)
            except (bx.ClientError, bx.EndpointConnectionError) as e:
                retry = _code(e) in _UNAVAILABLE or isinstance(e, bx.EndpointConnectionError)
                if not retry or attempt == 3:
                    raise
            time.sleep(0.05 * 2**attempt * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def conditional(self, operation: str, **kwargs: Any) -> _Conditional:
        """A conditional write; a failed condition is an answer, not an error."""
        try:
            answer = self.call(operation, **kwargs)
        except bx.ClientError as e:
            if _code(e) == "ConditionalCheckFailedException":
                return _Conditional(False)
            raise
        return _Conditional(True, answer.get("Attributes") or {})

    def batch_write(self, requests: list[dict[str, Any]]) -> None:
        """Unconditional puts and deletes, 25 a request; what the server leaves unprocessed is sent again."""
        for start in range(0, len(requests), _BATCH_WRITE):
            pending = {self.table: requests[start : start + _BATCH_WRITE]}
            for attempt in range(20):
                left = self.call("batch_write_item", RequestItems=pending).get("UnprocessedItems") or {}
                if not left:
                    break
                pending = left
                time.sleep(min(1.0, 0.02 * 2**attempt))
            else:
                raise errors.StoreUnavailable(f"{self.where}: the server kept refusing a batch write (throttled)")

    def batch_get(self, keys: list[dict[str, Any]], projection: str | None = None) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        unique = list({(k["pk"]["S"], k["sk"]["S"]): k for k in keys}.values())
        for start in range(0, len(unique), _BATCH_GET):
            request: dict[str, Any] = {"Keys": unique[start : start + _BATCH_GET], "ConsistentRead": True}
            if projection:
                request.update(ProjectionExpression=projection, ExpressionAttributeNames={"#pk": "pk", "#sk": "sk"})
            pending = {self.table: request}
            for attempt in range(20):
                answer = self.call("batch_get_item", RequestItems=pending)
                found += answer.get("Responses", {}).get(self.table, [])
                left = answer.get("UnprocessedKeys") or {}
                if not left:
                    break
                pending = left
                time.sleep(min(1.0, 0.02 * 2**attempt))
            else:
                raise errors.StoreUnavailable(f"{self.where}: the server kept refusing a batch read (throttled)")
        return found

    def query(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Every item a Query matches, a page at a time (keyset pagination)."""
        request = {"TableName": self.table, **kwargs}
        while True:
            answer = self.call("query", **request)
            yield from answer.get("Items", [])
            last = answer.get("LastEvaluatedKey")
            if not last:
                return
            request["ExclusiveStartKey"] = last

    # -- the table --

    def _ensure_table(self, create: bool) -> None:
        marker = (self.endpoint, self.region, self.table)
        with _ensured_lock:
            if marker in _ensured:
                return
        try:
            description = self.client.describe_table(TableName=self.table)["Table"]
        except bx.ClientError as e:
            if _code(e) != "ResourceNotFoundException":
                raise
            if not create:
                raise errors.ConfigError(f"{self.where}: table {self.table!r} does not exist; drop create_table=false to create it") from None
            description = self._create_table()
        self._check_table(description)
        self._enable_ttl()
        with _ensured_lock:
            _ensured.add(marker)

    def _create_table(self) -> dict[str, Any]:
        names = ["pk", "sk", "ga", "gu", "gg", "au"]
        indexes = [
            {
                "IndexName": name,
                "KeySchema": [{"AttributeName": hash_key, "KeyType": "HASH"}, {"AttributeName": range_key, "KeyType": "RANGE"}],
                "Projection": {"ProjectionType": "ALL"},
            }
            for name, (hash_key, range_key) in _GSI.items()
        ]
        try:
            self.client.create_table(
                TableName=self.table,
                AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n in names],
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
                GlobalSecondaryIndexes=indexes,
                BillingMode="PAY_PER_REQUEST",
            )
        except bx.ClientError as e:
            if _code(e) != "ResourceInUseException":  # another process is creating it: wait for it too
                raise
        deadline = time.monotonic() + 120
        while True:  # a new table takes from milliseconds (local servers) to seconds (AWS) to become usable
            description = self.client.describe_table(TableName=self.table)["Table"]
            if description.get("TableStatus") == "ACTIVE":
                return dict(description)
            if time.monotonic() > deadline:
                raise errors.StoreUnavailable(f"{self.where}: table {self.table!r} did not become ACTIVE within 120 s")
            time.sleep(0.05)

    def _check_table(self, description: Mapping[str, Any]) -> None:
        keys = {k["AttributeName"]: k["KeyType"] for k in description.get("KeySchema", [])}
        indexes = {i["IndexName"] for i in description.get("GlobalSecondaryIndexes", []) or []}
        if keys != {"pk": "HASH", "sk": "RANGE"} or not set(_GSI) <= indexes:
            raise errors.SchemaError(
                f"{self.where}: table {self.table!r} was not made by praison-db (it needs keys pk/sk and the indexes "
                f"{', '.join(_GSI)}); choose another table prefix in the URL path"
            )

    def _enable_ttl(self) -> None:
        try:
            status = self.client.describe_time_to_live(TableName=self.table)["TimeToLiveDescription"]
            if status.get("TimeToLiveStatus") in ("ENABLED", "ENABLING"):
                return
            self.client.update_time_to_live(TableName=self.table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "exp"})
        except bx.ClientError as e:
            # dynalite has no TTL operations; expiry is checked on every read anyway.
            if _code(e) not in ("UnknownOperationException", "ValidationException"):
                raise


class _DynamoStore(ConnectedStore):
    """What both DynamoDB stores share: the connection, error translation, close."""

    conn: _Connection
    _connection_class = _Connection
    # No async driver: praison_db.aio runs these stores in worker threads.
    from_url_async: ClassVar[None] = None  # type: ignore[assignment]

    def _bind(self, conn: _Connection) -> None:
        self.conn = conn.acquire()
        self.url = conn.url

    def _close(self) -> None:
        self.conn.release()


# ---- conversations: items ----


@dataclass
class _Record:
    """One message of a commit: its id and JSON text, or the token of the part items that hold the text."""

    id: str
    body: str | None
    parts: str | None = None
    count: int = 0

    def to_json(self) -> list[Any]:
        return [self.id, self.body, self.parts, self.count]

    @classmethod
    def from_json(cls, data: list[Any]) -> _Record:
        return cls(data[0], data[1], data[2], int(data[3]))


@dataclass
class _Commit:
    """An entry of the header's ``pend``: messages committed at seqs first.. with this version, not yet copied."""

    token: str
    first: int
    version: int
    at: float
    records: list[_Record]

    def to_json(self) -> str:
        return dumps({"f": self.first, "v": self.version, "at": self.at, "m": [r.to_json() for r in self.records]})

    @classmethod
    def from_json(cls, token: str, text: str) -> _Commit:
        d = json.loads(text)
        return cls(token, int(d["f"]), int(d["v"]), float(d["at"]), [_Record.from_json(r) for r in d["m"]])


@dataclass
class _Head:
    """A session header as read."""

    item: dict[str, Any]
    inc: str
    n: int
    v: int
    u: int
    commits: list[_Commit]

    def expired(self, now: float) -> bool:
        return not _live(self.item, now)


def _head(item: dict[str, Any]) -> _Head:
    pend = item.get("pend", {}).get("M", {})
    commits = [_Commit.from_json(token, value["S"]) for token, value in pend.items()]
    return _Head(item, item["inc"]["S"], int(item["n"]["N"]), int(item["v"]["N"]), int(item["u"]["N"]), commits)


def _live(item: Mapping[str, Any], now: float) -> bool:
    """Not expired: no exact expiry ``x``, or one still ahead (the native TTL sweep can lag by days)."""
    x = item.get("x")
    return x is None or float(x["N"]) > now


def _text(item: Mapping[str, Any], name: str) -> str | None:
    value = item.get(name)
    return None if value is None else str(value["S"])


def _session(sid: str, item: Mapping[str, Any]) -> Session:
    return Session.trusted(
        session_id=sid,
        user_id=_text(item, "uid"),
        agent_id=_text(item, "aid"),
        session_type=item["st"]["S"],
        name=_text(item, "nm"),
        metadata=loads(item["md"]["S"]),
        created_at=_from_us(item["c"]["N"]),
        updated_at=_from_us(item["u"]["N"]),
        message_count=int(item["n"]["N"]),
    )


def _seq_key(seq: int) -> str:
    return f"M#{seq:020d}"


def _message_key(seq: int, version: int, inc: str) -> str:
    return f"M#{seq:020d}#{version:020d}#{inc}"


def _parse_message_key(sk: str) -> tuple[int, int, str]:
    _, seq, version, inc = sk.split("#", 3)
    return int(seq), int(version), inc


def _id_key(inc: str, message_id: str) -> str:
    key = f"I{inc}={message_id}"
    if len(key.encode("utf-8")) <= _KEY_BYTES:
        return key
    return f"I{inc}~{hashlib.sha256(message_id.encode('utf-8')).hexdigest()}"  # too long for a sort key


def _activity_key(updated_us: int, sid: str) -> str:
    """The index sort key: updated_at, then the id, as text that sorts like (updated_at, session_id)."""
    key = f"{max(updated_us, 0):020d}#{sid}"
    encoded = key.encode("utf-8")
    if len(encoded) <= _KEY_BYTES:
        return key
    return encoded[:_KEY_BYTES].decode("utf-8", "ignore")  # ids longer than a sort key: ordered by their start


class _Missing(Exception):
    """A seq at or below ``n`` with neither an item nor a pending commit: the reads crossed a concurrent write."""


class DynamoConversationStore(_DynamoStore, ConversationStore):
    """ConversationStore on DynamoDB: one partition per session, its header as the commit point."""

    OPTIONS = OPTIONS

    def __init__(self, conn: _Connection) -> None:
        self._bind(conn)
        # Per session: the header our last commit wrote (a commit made on it holds only if nothing changed since, so a
        # stale copy costs one retry, never correctness) and our commits already copied, whose `pend` entries our
        # next commit removes: a single writer's append is then three requests instead of five.
        self._heads: dict[str, dict[str, Any]] = {}
        self._copied: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def state_store(self) -> DynamoStateStore:
        """A StateStore in the same table, sharing this store's client."""
        return DynamoStateStore(self.conn)

    # -- keys and reads --

    def _pk(self, sid: str) -> dict[str, str]:
        return _S(f"{self.conn.prefix}S#{sid}")

    def _key(self, sid: str, sk: str) -> dict[str, Any]:
        return {"pk": self._pk(sid), "sk": _S(sk)}

    def _read_head(self, sid: str) -> _Head | None:
        """The live header (None when missing or expired)."""
        item = self.conn.call("get_item", TableName=self.conn.table, Key=self._key(sid, HEADER), ConsistentRead=True).get("Item")
        if item is None:
            return None
        head = _head(item)
        return None if head.expired(time.time()) else head

    def _items_between(self, sid: str, lo: int, hi: int, projection: str | None = None) -> list[dict[str, Any]]:
        """The message items of seqs lo..hi (every version, every incarnation)."""
        kwargs: dict[str, Any] = {
            "KeyConditionExpression": "pk = :pk AND sk BETWEEN :lo AND :hi",
            "ExpressionAttributeValues": {":pk": self._pk(sid), ":lo": _S(_seq_key(lo)), ":hi": _S(_seq_key(hi) + "#~")},
            "ConsistentRead": True,
        }
        if projection:
            kwargs.update(ProjectionExpression=projection, ExpressionAttributeNames={"#pk": "pk", "#sk": "sk"})
        return list(self.conn.query(**kwargs))

    def _parts(self, sid: str, token: str) -> str:
        items = self.conn.query(
            KeyConditionExpression="pk = :pk AND begins_with(sk, :b)",
            ExpressionAttributeValues={":pk": self._pk(sid), ":b": _S(f"B#{token}#")},
            ConsistentRead=True,
        )
        return "".join(i["b"]["S"] for i in sorted(items, key=lambda i: i["sk"]["S"]))

    def _winners(self, head: _Head, items: Iterable[dict[str, Any]], lo: int, hi: int) -> dict[int, tuple[int, Any]]:
        """For each seq in lo..hi (capped at n): the highest version written for it, item or pending commit."""
        hi = min(hi, head.n)
        best: dict[int, tuple[int, Any]] = {}
        for item in items:
            seq, version, inc = _parse_message_key(item["sk"]["S"])
            if inc == head.inc and lo <= seq <= hi and version <= head.v and version >= best.get(seq, (-1, None))[0]:
                best[seq] = (version, item)
        for commit in head.commits:
            for i, record in enumerate(commit.records):
                seq = commit.first + i
                if lo <= seq <= hi and commit.version >= best.get(seq, (-1, None))[0]:
                    best[seq] = (commit.version, record)
        return best

    def _resolve(self, sid: str, head: _Head, items: Iterable[dict[str, Any]], lo: int, hi: int) -> list[Message]:
        hi = min(hi, head.n)
        best = self._winners(head, items, lo, hi)
        out: list[Message] = []
        for seq in range(lo, hi + 1):
            found = best.get(seq)
            if found is None:
                raise _Missing(seq)
            out.append(message_from_body(sid, seq, self._text_of(sid, found[1])))
        return out

    def _text_of(self, sid: str, source: Any) -> str:
        if isinstance(source, _Record):
            return source.body if source.parts is None else self._parts(sid, source.parts)  # type: ignore[return-value]
        if "b" in source:
            return str(source["b"]["S"])
        return self._parts(sid, source["p"]["S"])

    def _window(self, sid: str, limit: int | None, before: int | None, after: int | None) -> tuple[_Head | None, list[Message]]:
        if limit is not None and before is None:
            fast = self._newest(sid, limit, after)
            if fast is not None:
                return fast
        for attempt in range(3):
            head = self._read_head(sid)
            if head is None:
                return None, []
            hi = head.n if before is None else min(head.n, before - 1)
            lo = max(1, (after or 0) + 1)
            if limit is not None:
                lo = max(lo, hi - limit + 1)
            if hi < lo:
                return head, []
            try:
                return head, self._resolve(sid, head, self._items_between(sid, lo, hi), lo, hi)
            except _Missing as e:
                if attempt == 2:
                    raise errors.IntegrityError(f"{self.conn.where}: session {sid!r} has no message at seq {e.args[0]}") from None
        raise AssertionError("unreachable")

    def _newest(self, sid: str, limit: int, after: int | None) -> tuple[_Head | None, list[Message]] | None:
        """The newest ``limit`` messages in one Query: the header sorts after every message item, so a descending
        read returns it first and then the messages from the newest down. None: fall back to two reads."""
        answer = self.conn.call(
            "query",
            TableName=self.conn.table,
            KeyConditionExpression="pk = :pk AND sk BETWEEN :lo AND :hi",
            ExpressionAttributeValues={":pk": self._pk(sid), ":lo": _S("M#"), ":hi": _S(HEADER)},
            ScanIndexForward=False,
            Limit=min(limit, 1000) + 2,
            ConsistentRead=True,
        )
        items = answer.get("Items", [])
        if not items or items[0]["sk"]["S"] != HEADER:
            return None, []
        head = _head(items[0])
        if head.expired(time.time()):
            return None, []
        lo = max(1, (after or 0) + 1, head.n - limit + 1)
        if head.n < lo:
            return head, []
        try:
            return head, self._resolve(sid, head, items[1:], lo, head.n)
        except _Missing:
            return None  # more than one page (large items, old versions) or a write in between: read again

    # -- sessions --

    def _header_item(self, s: Session, inc: str, version: int, pend: dict[str, Any] | None = None) -> dict[str, Any]:
        p = self.conn.prefix
        updated = _us(s.updated_at)
        item: dict[str, Any] = {
            "pk": self._pk(s.session_id),
            "sk": _S(HEADER),
            "inc": _S(inc),
            "n": _N(s.message_count),
            "v": _N(version),
            "pend": {"M": pend or {}},
            "st": _S(s.session_type),
            "md": _S(dumps(s.metadata)),
            "c": _N(_us(s.created_at)),
            "u": _N(updated),
            "ga": _S(f"{p}A"),
            "au": _S(_activity_key(updated, s.session_id)),
        }
        if s.user_id is not None:
            item["uid"], item["gu"] = _S(s.user_id), _S(f"{p}U#{s.user_id}")
        if s.agent_id is not None:
            item["aid"], item["gg"] = _S(s.agent_id), _S(f"{p}G#{s.agent_id}")
        if s.name is not None:
            item["nm"] = _S(s.name)
        if self.conn.ttl is not None:
            item.update(self._expiry(self.conn.ttl))
            item["tl"] = _N(self.conn.ttl)
        return item

    @staticmethod
    def _expiry(ttl: float) -> dict[str, Any]:
        at = time.time() + ttl
        return {"x": _N(at), "exp": _N(math.ceil(at))}

    def _put_header(self, item: dict[str, Any]) -> bool:
        """Write a new header unless a live one exists; an expired one is replaced and its items deleted."""
        answer = self.conn.conditional(
            "put_item",
            TableName=self.conn.table,
            Item=item,
            ConditionExpression="attribute_not_exists(pk) OR (attribute_exists(x) AND x <= :now)",
            ExpressionAttributeValues={":now": _N(time.time())},
            ReturnValues="ALL_OLD",
        )
        if answer.applied and answer.attributes:
            self._purge(item["pk"], answer.attributes["inc"]["S"])  # the expired session's messages
        return answer.applied

    def _insert_session(self, session: Session) -> bool:
        return self._put_header(self._header_item(session, _token()[:12], 0))

    def _get_or_insert_session(self, session: Session) -> Session:
        for _ in range(10):  # the existing one can be deleted between our insert and our read: try again
            if self._insert_session(session):
                return session
            found = self._get_session(session.session_id)
            if found is not None:
                return found
        raise errors.StoreUnavailable(f"{self.conn.where}: session {session.session_id!r} keeps being created and deleted")

    def _get_session(self, session_id: str) -> Session | None:
        head = self._read_head(session_id)
        return None if head is None else _session(session_id, head.item)

    def _sid(self, item: Mapping[str, Any]) -> str:
        return str(item["pk"]["S"])[len(self.conn.prefix) + 2 :]

    def _list_sessions(self, flt: SessionFilter, limit: int, after: tuple[datetime, str] | None) -> list[Session]:
        p = self.conn.prefix
        if flt.user_id is not None:
            index, value = "user", f"{p}U#{flt.user_id}"
        elif flt.agent_id is not None:
            index, value = "agent", f"{p}G#{flt.agent_id}"
        else:
            index, value = "all", f"{p}A"
        hash_key, range_key = _GSI[index]
        condition = f"{hash_key} = :h"
        values: dict[str, Any] = {":h": _S(value)}
        if after is not None:
            condition += f" AND {range_key} < :a"
            values[":a"] = _S(_activity_key(_us(after[0]), after[1]))
        request = {
            "TableName": self.conn.table,
            "IndexName": index,
            "KeyConditionExpression": condition,
            "ExpressionAttributeValues": values,
            "ScanIndexForward": False,
        }
        now = time.time()
        out: list[Session] = []
        while len(out) < limit:
            answer = self.conn.call("query", **request, Limit=max(limit - len(out), 10))
            for item in answer.get("Items", []):
                if not _live(item, now):
                    continue
                s = _session(self._sid(item), item)
                if flt.matches(s):
                    out.append(s)
            if not answer.get("LastEvaluatedKey"):
                break
            request["ExclusiveStartKey"] = answer["LastEvaluatedKey"]
        return out[:limit]

    def _update_session(self, session_id: str, changes: dict[str, Any], now: datetime) -> Session | None:
        sets: dict[str, Any] = {}
        removes: list[str] = []
        if "name" in changes:
            if changes["name"] is None:
                removes.append("nm")
            else:
                sets["nm"] = _S(changes["name"])
        if "metadata" in changes:
            sets["md"] = _S(dumps(changes["metadata"]))
        for _ in range(_COMMIT_ATTEMPTS):
            head = self._read_head(session_id)
            if head is None:
                return None
            item = self._cas(session_id, head, sets, removes, now)
            if item is not None:
                return _session(session_id, item)
        raise self._contended(session_id)

    def _delete_session(self, session_id: str, user_id: str | None) -> bool:
        condition = "attribute_exists(pk)"
        values: dict[str, Any] = {}
        if user_id is not None:
            condition += " AND uid = :uid"
            values[":uid"] = _S(user_id)
        return self._delete_header(session_id, condition, values)

    def _delete_header(self, sid: str, condition: str, values: dict[str, Any]) -> bool:
        """Delete the header if ``condition`` holds, then its incarnation's items; True if it was live."""
        request: dict[str, Any] = {
            "TableName": self.conn.table,
            "Key": self._key(sid, HEADER),
            "ConditionExpression": condition,
            "ReturnValues": "ALL_OLD",
        }
        if values:
            request["ExpressionAttributeValues"] = values
        with self._lock:
            self._heads.pop(sid, None)
        # The header first: from then on no read shows the session, whatever happens next.
        answer = self.conn.conditional("delete_item", **request)
        if not answer.applied or not answer.attributes:
            return False
        self._purge(self._pk(sid), answer.attributes["inc"]["S"])
        return not _head(answer.attributes).expired(time.time())

    def _purge(self, pk: dict[str, str], inc: str) -> None:
        """Delete every item of one incarnation of a session (its header is gone or replaced)."""
        items = self.conn.query(
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": pk},
            ProjectionExpression="#pk, #sk, inc",
            ExpressionAttributeNames={"#pk": "pk", "#sk": "sk"},
            ConsistentRead=True,
        )
        doomed = [i for i in items if i["sk"]["S"] != HEADER and i.get("inc", {}).get("S") == inc]
        self.conn.batch_write([{"DeleteRequest": {"Key": {"pk": i["pk"], "sk": i["sk"]}}} for i in doomed])

    def _delete_sessions(self, *, user_id: str | None = None, idle_before: datetime | None = None) -> int:
        p = self.conn.prefix
        if user_id is not None:
            index, key_condition = "user", "gu = :h"
            values: dict[str, Any] = {":h": _S(f"{p}U#{user_id}")}
            condition, cond_values = "attribute_exists(pk) AND uid = :uid", {":uid": _S(user_id)}
        else:
            cut = _us(idle_before)  # type: ignore[arg-type]
            index, key_condition = "all", "ga = :h AND au < :a"
            values = {":h": _S(f"{p}A"), ":a": _S(f"{max(cut, 0):020d}")}
            condition, cond_values = "attribute_exists(pk) AND u < :cut", {":cut": _N(cut)}
        found = self.conn.query(IndexName=index, KeyConditionExpression=key_condition, ExpressionAttributeValues=values)
        # The index is eventually consistent on AWS: each delete checks the header itself.
        return sum(self._delete_header(self._sid(item), condition, cond_values) for item in list(found))

    # -- the commit: one conditional write of the header --

    def _cas(
        self, sid: str, head: _Head, sets: dict[str, Any], removes: Iterable[str], now: datetime, updated: datetime | None = None
    ) -> dict[str, Any] | None:
        """Write the header if it is still the version read (``v``, ``inc``); moves updated_at (never backwards), the
        activity keys and the expiry, and removes the `pend` entries of our commits copied since. The new header, or
        None if another write came first."""
        present = {c.token for c in head.commits}
        with self._lock:
            copied = self._copied.get(sid, set()) & present
        removes = [*removes, *(f"pend.{token}" for token in sorted(copied))]
        stamp = max(head.u, _us(updated or now))
        values: dict[str, Any] = dict(sets)
        values.update({"v": _N(head.v + 1), "u": _N(stamp), "au": _S(_activity_key(stamp, sid))})
        if "tl" in head.item:
            values.update(self._expiry(float(head.item["tl"]["N"])))
        names: dict[str, str] = {}

        def path(name: str, tag: str) -> str:  # every part through a name placeholder: no reserved-word clashes
            for j, part in enumerate(name.split(".")):
                names[f"#{tag}_{j}"] = part
            return ".".join(f"#{tag}_{j}" for j in range(len(name.split("."))))

        update = "SET " + ", ".join(f"{path(name, f'n{i}')} = :v{i}" for i, name in enumerate(values))
        if removes:
            update += " REMOVE " + ", ".join(path(name, f"r{i}") for i, name in enumerate(removes))
        answer = self.conn.conditional(
            "update_item",
            TableName=self.conn.table,
            Key=self._key(sid, HEADER),
            UpdateExpression=update,
            ConditionExpression="#v = :seen AND #inc = :inc",
            ExpressionAttributeNames={**names, "#v": "v", "#inc": "inc"},
            ExpressionAttributeValues={
                **{f":v{i}": value for i, value in enumerate(values.values())},
                ":seen": _N(head.v),
                ":inc": _S(head.inc),
            },
            ReturnValues="ALL_NEW",
        )
        with self._lock:
            if not answer.applied:
                self._heads.pop(sid, None)
                return None
            if len(self._heads) > 4096:  # a bounded cache: long-lived stores touch many sessions
                self._heads.clear()
                self._copied.clear()
            self._heads[sid] = answer.attributes
            if sid in self._copied:  # keep only entries still in the header (a helper may have removed some)
                self._copied[sid] &= set(answer.attributes.get("pend", {}).get("M", {}))
        return answer.attributes

    def _contended(self, sid: str) -> errors.StoreUnavailable:
        return errors.StoreUnavailable(f"{self.conn.where}: session {sid!r}: too many concurrent writers, try again")

    def _head_for_write(self, sid: str, *, cached: bool = True) -> tuple[_Head, bool]:
        """The header to commit on and whether it was read now (else it is the one our last commit wrote), after
        copying any commit its writer left in ``pend`` long ago (it died or hung)."""
        with self._lock:
            item = self._heads.get(sid) if cached else None
            copied = set(self._copied.get(sid, ()))
        head = _head(item) if item is not None else None
        fresh = head is None or head.expired(time.time())
        if fresh:
            head = self._read_head(sid)
        if head is None:
            raise missing_session(sid)
        stale = [c for c in head.commits if c.at < time.time() - _HELP_AFTER and c.token not in copied]
        for commit in stale:
            self._copy(sid, head.inc, commit)
        return head, fresh

    def _message_item(self, sid: str, inc: str, commit: _Commit, i: int) -> dict[str, Any]:
        record = commit.records[i]
        item: dict[str, Any] = {
            "pk": self._pk(sid),
            "sk": _S(_message_key(commit.first + i, commit.version, inc)),
            "inc": _S(inc),
            "i": _S(record.id),
        }
        if record.parts is None:
            item["b"] = _S(record.body)  # type: ignore[arg-type]
        else:
            item.update(p=_S(record.parts), pn=_N(record.count))
        return item

    def _id_item(self, sid: str, inc: str, commit: _Commit, i: int) -> dict[str, Any]:
        return {
            "pk": self._pk(sid),
            "sk": _S(_id_key(inc, commit.records[i].id)),
            "inc": _S(inc),
            "s": _N(commit.first + i),
            "v": _N(commit.version),
        }

    def _copy(self, sid: str, inc: str, commit: _Commit, *, remove: bool = True) -> None:
        """Write a commit's messages as message items and id items, then remove it from ``pend`` (``remove``; the
        committer leaves that to its next commit).

        Idempotent, so the committer and any helper may run it at once. Message items get keys of their own (seq,
        version, incarnation): an unconditional write cannot land on another commit's item. An id item is
        only replaced by a newer version, so a late copy of an old commit cannot hide a newer message's id.
        """
        count = len(commit.records)
        self.conn.batch_write([{"PutRequest": {"Item": self._message_item(sid, inc, commit, i)}} for i in range(count)])
        for i in range(count):
            self.conn.conditional(
                "put_item",
                TableName=self.conn.table,
                Item=self._id_item(sid, inc, commit, i),
                ConditionExpression="attribute_not_exists(pk) OR v < :v",
                ExpressionAttributeValues={":v": _N(commit.version)},
            )
        if not remove:
            return
        # Removing the entry changes nothing a reader or writer relies on (the items hold the same messages), so it
        # does not bump the version: no concurrent commit has to start over because of it.
        removed = self.conn.conditional(
            "update_item",
            TableName=self.conn.table,
            Key=self._key(sid, HEADER),
            UpdateExpression="REMOVE #p.#t",
            ConditionExpression="attribute_exists(#p.#t) AND #inc = :inc",
            ExpressionAttributeNames={"#p": "pend", "#t": commit.token, "#inc": "inc"},
            ExpressionAttributeValues={":inc": _S(inc)},
        )
        if not removed.applied:  # a helper removed it, or the session was deleted while we copied
            header = self.conn.call("get_item", TableName=self.conn.table, Key=self._key(sid, HEADER), ConsistentRead=True)
            if header.get("Item", {}).get("inc", {}).get("S") != inc:
                self._purge(self._pk(sid), inc)  # what we just wrote belongs to no session any more

    def _stored_ids(self, sid: str, head: _Head, ids: list[str]) -> dict[str, Message]:
        """The messages the session holds under any of ``ids``; read after the header, so a commit that holds when
        its condition (the header unchanged) does has seen every id committed before it."""
        if not ids:
            return {}
        wanted = set(ids)
        places: dict[str, tuple[int, int]] = {}
        for commit in head.commits:
            for i, record in enumerate(commit.records):
                if record.id in wanted:
                    places[record.id] = max(places.get(record.id, (0, -1)), (commit.first + i, commit.version), key=lambda p: p[1])
        by_key = {_id_key(head.inc, i): i for i in wanted}
        for item in self.conn.batch_get([self._key(sid, k) for k in by_key]):
            message_id = by_key.get(item["sk"]["S"])
            if message_id is None or item.get("inc", {}).get("S") != head.inc:
                continue
            place = (int(item["s"]["N"]), int(item["v"]["N"]))
            if place[1] > places.get(message_id, (0, -1))[1]:
                places[message_id] = place
        found: dict[str, Message] = {}
        for message_id, (seq, version) in places.items():
            if seq > head.n:
                continue  # popped or truncated since
            winner = self._winners(head, self._items_between(sid, seq, seq), seq, seq).get(seq)
            if winner is None or winner[0] != version:
                continue  # the seq was taken again by another message
            message = message_from_body(sid, seq, self._text_of(sid, winner[1]))
            if message.id == message_id:
                found[message_id] = message
        return found

    def _records(self, sid: str, inc: str, messages: list[Message], budget: int = _INLINE_BYTES) -> list[_Record]:
        """The records of ``messages``: texts within ``budget`` (bytes, in all) are kept in the record, any other
        text in part items written now (before the commit that names them)."""
        records: list[_Record] = []
        parts: list[dict[str, Any]] = []
        for m in messages:
            text = message_body(m)
            size = len(text.encode("utf-8"))
            if size <= min(budget, _INLINE_ITEM):
                budget -= size
                records.append(_Record(m.id, text))
                continue
            token = _token()
            chunks = [text[i : i + _PART_CHARS] for i in range(0, len(text), _PART_CHARS)]
            for k, chunk in enumerate(chunks):
                item = {"pk": self._pk(sid), "sk": _S(f"B#{token}#{k:06d}"), "inc": _S(inc), "b": _S(chunk)}
                parts.append({"PutRequest": {"Item": item}})
            records.append(_Record(m.id, None, token, len(chunks)))
        self.conn.batch_write(parts)
        return records

    def _commit(
        self,
        sid: str,
        plan: Callable[[_Head], tuple[list[Message], dict[str, Message], datetime | None]],
        now: datetime,
    ) -> dict[str, Message]:
        """Append what ``plan(head)`` returns (messages numbered from head.n + 1, the stored messages it found, and
        an updated_at to move to) as one commit, retried until the header did not change under it."""
        staged: dict[tuple[Any, ...], list[_Record]] = {}
        budget = _INLINE_BYTES
        cached = True
        for attempt in range(_COMMIT_ATTEMPTS):
            head, read_now = self._head_for_write(sid, cached=cached)
            try:
                fresh, known, updated = plan(head)
            except errors.Error:
                if read_now:
                    raise
                cached = False  # refused on a remembered header: decide on one read now
                continue
            if known and not read_now:
                # "Already stored" is an answer no commit confirms: give it from a header read now, not a remembered
                # one (the session may have been deleted and created again since).
                cached = False
                continue
            if not fresh:
                return known
            key = (head.inc, budget, tuple(m.id for m in fresh))
            if key not in staged:
                staged[key] = self._records(sid, head.inc, fresh, budget)
            commit = _Commit(_token(), head.n + 1, head.v + 1, time.time(), staged[key])
            sets = {"n": _N(head.n + len(fresh)), f"pend.{commit.token}": _S(commit.to_json())}
            try:
                written = self._cas(sid, head, sets, (), now, updated)
            except bx.ClientError as e:
                if _code(e) != "ValidationException" or budget == 0:
                    raise
                budget = 0  # the header would grow past an item's size: every text goes to part items
                continue
            if written is None:
                if attempt > 2:  # contention: spread the retries out
                    time.sleep(random.random() * min(0.05, 0.002 * attempt))
                continue
            try:
                self._copy(sid, head.inc, commit, remove=False)
                with self._lock:
                    self._copied.setdefault(sid, set()).add(commit.token)
            except Exception as e:  # noqa: BLE001 - committed already: any later writer copies it
                log.debug("praison_db: %s: copying commit %s of %r failed: %s", self.conn.where, commit.token, sid, e)
            known.update((m.id, m) for m in fresh)
            return known
        raise self._contended(sid)

    # -- messages --

    def _append(self, session_id: str, drafts: list[MessageDraft], now: datetime) -> list[Message]:
        given = [d.id for d in drafts if not d.generated]  # a fresh random id cannot be stored yet

        def plan(head: _Head) -> tuple[list[Message], dict[str, Message], datetime | None]:
            known = self._stored_ids(session_id, head, given)  # type: ignore[arg-type]
            fresh = [d for d in drafts if d.id not in known]
            return [d.stamp(session_id, head.n + 1 + i, now) for i, d in enumerate(fresh)], known, None

        by_id = self._commit(session_id, plan, now)
        return [by_id[d.id] for d in drafts]  # type: ignore[index]

    def _import_messages(self, session_id: str, messages: list[Message], updated_at: datetime) -> int:
        stored = 0

        def plan(head: _Head) -> tuple[list[Message], dict[str, Message], datetime | None]:
            nonlocal stored
            known = self._stored_ids(session_id, head, [m.id for m in messages])
            fresh = [m for m in messages if m.id not in known]
            for i, m in enumerate(fresh):
                if m.seq != head.n + 1 + i:  # a seq is the position here: taken, or a gap
                    raise seq_taken(session_id, m.seq)
            stored = len(fresh)
            if not fresh and updated_at > _from_us(head.u):
                self._touch(session_id, head, updated_at)
            return fresh, known, updated_at

        self._commit(session_id, plan, datetime.now(timezone.utc))
        return stored

    def _touch(self, sid: str, head: _Head, updated_at: datetime) -> None:
        self._cas(sid, head, {}, (), updated_at)

    def _get_messages(self, session_id: str, limit: int | None, before_seq: int | None, after_seq: int | None) -> list[Message]:
        return self._window(session_id, limit, before_seq, after_seq)[1]

    def _count_messages(self, session_id: str) -> int:
        head = self._read_head(session_id)
        return 0 if head is None else head.n

    def _pop(self, session_id: str, now: datetime) -> Message | None:
        for _ in range(_COMMIT_ATTEMPTS):
            head, newest = self._window(session_id, 1, None, None)
            if head is None or not newest:
                return None
            if self._cas(session_id, head, {"n": _N(head.n - 1)}, (), now) is not None:
                self._forget(session_id, head, head.n)
                return newest[0]
        raise self._contended(session_id)

    def _truncate(self, session_id: str, after_seq: int, now: datetime) -> int:
        for _ in range(_COMMIT_ATTEMPTS):
            head = self._read_head(session_id)
            if head is None or head.n <= after_seq:
                return 0
            if self._cas(session_id, head, {"n": _N(after_seq)}, (), now) is not None:
                self._forget(session_id, head, after_seq + 1)
                return head.n - after_seq
        raise self._contended(session_id)

    def _forget(self, sid: str, head: _Head, first: int) -> None:
        """After a commit lowered ``n`` below ``first``: delete the items of seqs from ``first`` up written before it
        (by their exact keys, so items of later commits stay), and their id items that still point at them."""
        try:
            items = self._items_between(sid, first, 10**20 - 1, projection="#pk, #sk, inc, i")
            doomed = []
            for item in items:
                seq, version, inc = _parse_message_key(item["sk"]["S"])
                if inc == head.inc and version <= head.v:
                    doomed.append(item)
            self.conn.batch_write([{"DeleteRequest": {"Key": {"pk": i["pk"], "sk": i["sk"]}}} for i in doomed])
            for item in doomed:
                seq, version, _ = _parse_message_key(item["sk"]["S"])
                self.conn.conditional(
                    "delete_item",
                    TableName=self.conn.table,
                    Key=self._key(sid, _id_key(head.inc, item["i"]["S"])),
                    ConditionExpression="s = :s AND v = :v",
                    ExpressionAttributeValues={":s": _N(seq), ":v": _N(version)},
                )
        except Exception as e:  # noqa: BLE001 - the removal holds already; leftovers are invisible and harmless
            log.debug("praison_db: %s: cleaning up removed messages of %r failed: %s", self.conn.where, sid, e)

    def _import(self, session: Session, messages: list[Message]) -> bool:
        inc = _token()[:12]
        sid = session.session_id
        pk = self._pk(sid)
        # Messages first, under a new incarnation no read asks for yet; the header last, so the session appears
        # complete or not at all. Version 0: the session's first commit will be version 1.
        try:
            records = self._records(sid, inc, messages, budget=2**62)
            puts = []
            for m, record in zip(messages, records):
                commit = _Commit("", m.seq, 0, 0.0, [record])
                puts.append({"PutRequest": {"Item": self._message_item(sid, inc, commit, 0)}})
                puts.append({"PutRequest": {"Item": self._id_item(sid, inc, commit, 0)}})
            self.conn.batch_write(puts)
            if self._put_header(self._header_item(session, inc, 0)):
                return True
        except BaseException:
            self._quietly(lambda: self._purge(pk, inc))
            raise
        self._purge(pk, inc)
        return False

    def _quietly(self, work: Callable[[], Any]) -> None:
        try:
            work()
        except Exception:  # noqa: BLE001 - cleanup while another error is raised: that one is reported
            pass


# ---- state ----


_INT = re.compile(r"-?(?:0|[1-9][0-9]*)\Z")


def _state_fields(text: str) -> dict[str, Any]:
    """A value as attributes: a 64-bit integer as a number (``incr`` adds to it), anything else as JSON text."""
    if len(text) < 21 and _INT.match(text) and int(text) in _INT64:
        return {"i": _N(int(text))}
    return {"j": _S(text)}


def _state_value(item: Mapping[str, Any]) -> Any:
    return int(item["i"]["N"]) if "i" in item else loads(item["j"]["S"])


_LIVE = "(attribute_not_exists(x) OR x > :now)"


class DynamoStateStore(_DynamoStore, StateStore):
    """StateStore in one partition of the table: keys are sort keys (ordered, so ``keys(prefix)`` is a range read)."""

    OPTIONS = OPTIONS

    def __init__(self, conn: _Connection) -> None:
        self._bind(conn)
        self._pk = _S(f"{conn.prefix}K")

    def _key(self, key: str) -> dict[str, Any]:
        if len(key.encode("utf-8")) > _KEY_BYTES:
            raise errors.InputError(f"state key is {len(key.encode('utf-8'))} bytes in UTF-8; DynamoDB takes at most {_KEY_BYTES}")
        return {"pk": self._pk, "sk": _S(key)}

    def _item(self, key: str, text: str, expires_at: float | None) -> dict[str, Any]:
        item = {**self._key(key), **_state_fields(text)}
        if len(text.encode("utf-8")) + len(key.encode("utf-8")) > _ITEM_BYTES - 1024:
            raise errors.InputError(f"the value of {key[:40]!r} is larger than DynamoDB's 400 KB item; store it elsewhere")
        expires_at = expires_at if expires_at is not None else (time.time() + self.conn.ttl if self.conn.ttl else None)
        if expires_at is not None:
            item.update(x=_N(expires_at), exp=_N(math.ceil(expires_at)))
        return item

    def _get_many(self, keys: list[str]) -> dict[str, Any]:
        now = time.time()
        found = self.conn.batch_get([self._key(k) for k in keys])
        return {i["sk"]["S"]: _state_value(i) for i in found if _live(i, now)}

    def _set_many(self, items: dict[str, str], expires_at: float | None) -> None:
        built = [self._item(k, v, expires_at) for k, v in items.items()]  # every check before the first write
        if len(built) == 1:
            self.conn.call("put_item", TableName=self.conn.table, Item=built[0])
        else:
            self.conn.batch_write([{"PutRequest": {"Item": item}} for item in built])

    def _delete(self, key: str) -> bool:
        answer = self.conn.call("delete_item", TableName=self.conn.table, Key=self._key(key), ReturnValues="ALL_OLD")
        old = answer.get("Attributes")
        return bool(old) and _live(old, time.time())

    def _incr(self, key: str, amount: int) -> int:
        for _ in range(100):  # each retry means another writer changed the key meanwhile
            now = time.time()
            lo, hi = -(2**63) - min(amount, 0), 2**63 - 1 - max(amount, 0)
            added = self.conn.conditional(
                "update_item",
                TableName=self.conn.table,
                Key=self._key(key),
                UpdateExpression="ADD i :a",
                ConditionExpression=f"attribute_exists(i) AND i BETWEEN :lo AND :hi AND {_LIVE}",
                ExpressionAttributeValues={":a": _N(amount), ":lo": _N(lo), ":hi": _N(hi), ":now": _N(now)},
                ReturnValues="UPDATED_NEW",
            )
            if added.applied:
                return int(added.attributes["i"]["N"])
            current = self.conn.call("get_item", TableName=self.conn.table, Key=self._key(key), ConsistentRead=True).get("Item")
            if current is None or not _live(current, now):
                # Missing, or expired (replace exactly the item we saw): starts over at `amount`, without the old TTL.
                condition = "attribute_not_exists(pk)" if current is None else "x = :x"
                values = {} if current is None else {":x": current["x"]}
                request: dict[str, Any] = {"ExpressionAttributeValues": values} if values else {}
                put = self.conn.conditional(
                    "put_item", TableName=self.conn.table, Item={**self._key(key), "i": _N(amount)}, ConditionExpression=condition, **request
                )
                if put.applied:
                    return amount
                continue
            if "i" in current:
                value = int(current["i"]["N"])
                if value + amount not in _INT64:
                    raise errors.InputError(f"incr: {key!r} would leave the 64-bit integer range")
                continue  # it changed between our two reads
            value = _state_value(current)
            if type(value) is int:
                raise errors.InputError(f"incr: the value of {key!r} is beyond the 64-bit integer range DynamoDB counts in")
            raise not_an_integer(key)
        raise errors.StoreUnavailable(f"{self.conn.where}: incr of {key!r} kept losing races with other writers")

    def _expires_at(self, key: str) -> float | None:
        item = self.conn.call("get_item", TableName=self.conn.table, Key=self._key(key), ConsistentRead=True).get("Item")
        if item is None or not _live(item, time.time()) or "x" not in item:
            return None
        return float(item["x"]["N"])

    def _expire(self, key: str, expires_at: float | None) -> bool:
        values: dict[str, Any] = {":now": _N(time.time())}
        if expires_at is None:
            update = "REMOVE x, exp"
        else:
            update = "SET x = :x, exp = :e"
            values.update({":x": _N(expires_at), ":e": _N(math.ceil(expires_at))})
        answer = self.conn.conditional(
            "update_item",
            TableName=self.conn.table,
            Key=self._key(key),
            UpdateExpression=update,
            ConditionExpression=f"attribute_exists(pk) AND {_LIVE}",
            ExpressionAttributeValues=values,
        )
        return answer.applied

    def _scan(self, prefix: str, projection: str = "#sk, x") -> Iterator[dict[str, Any]]:
        """The items whose key starts with ``prefix``, in key order, a page at a time."""
        if len(prefix.encode("utf-8")) > _KEY_BYTES:
            return iter(())
        condition = "pk = :pk" + (" AND begins_with(#sk, :p)" if prefix else "")
        values: dict[str, Any] = {":pk": self._pk}
        if prefix:
            values[":p"] = _S(prefix)
        return self.conn.query(
            KeyConditionExpression=condition,
            ExpressionAttributeValues=values,
            ExpressionAttributeNames={"#sk": "sk"},
            ProjectionExpression=projection,
            ConsistentRead=True,
        )

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        return (i["sk"]["S"] for i in self._scan(prefix) if _live(i, time.time()))

    def _clear(self, prefix: str) -> int:
        now = time.time()
        found = list(self._scan(prefix))
        self.conn.batch_write([{"DeleteRequest": {"Key": {"pk": self._pk, "sk": i["sk"]}}} for i in found])
        return sum(_live(i, now) for i in found)
