"""Redis stores on plain Redis (no modules), through redis-py.

URLs: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS), ``unix:///path/to/redis.sock[?db=0]``.
Options (query string or keyword arguments):

- ``prefix`` (default ``praison``): every key starts with ``<prefix>:``, so two applications share one server
  without seeing each other.
- ``ttl`` (seconds, default none): sessions expire after this long without activity (every append or update
  refreshes it); state keys written by ``set``/``set_many`` without their own ``ttl`` get it as their default.
- redis-py's own URL options pass through: ``socket_timeout``, ``socket_connect_timeout``, ``health_check_interval``,
  ``max_connections``, ``client_name``, the ``ssl_*`` options, ... Anything else is a ConfigError listing them.
  Defaults here: ``socket_connect_timeout=5`` and ``socket_timeout=30`` (seconds), so a silent or frozen server
  raises StoreUnavailable instead of blocking (redis-py's own default is to wait forever).

Key layout (``p`` is the prefix; ids are used verbatim, they are the last part of every key):

- ``p:s:<session_id>``  hash: user_id, agent_id, session_type, name, metadata (JSON), created_at and updated_at
  (integer microseconds since the epoch), message_count, ttl_ms.
- ``p:m:<session_id>``  list of message JSON (``id`` first, then the fields that are set: role, type, content of
  any JSON type, name, tool_calls, tool_call_id, metadata, extra); the message with seq ``n`` is at index ``n - 1``.
- ``p:i:<session_id>``  hash: message id -> seq; the append script checks it, so an id is stored once per session.
- ``p:activity``, ``p:u:<user_id>``, ``p:g:<agent_id>``  sorted sets of session ids scored by updated_at (µs):
  list-by-activity walks one of them, newest first, without touching other keys.
- ``p:expiring``  sorted set of sessions with a TTL, scored by their expiry (ms): lets a later call remove the index
  entries of a session Redis has expired.
- ``p:kv:<key>``  a state value as JSON text, with native Redis expiry.

Guarantees: an append is one Lua script (atomic on the server): it checks the session exists, bumps the counter,
pushes the messages, moves ``updated_at`` (never backwards) and the activity indexes, and refreshes the TTL, so seqs
are gap-free across any number of processes. Pop and truncate are scripts too: they cut the list's tail, drop the
removed ids from the id index and lower the counter to the list's length (the next append takes the freed seq), so
concurrent pops each get a different message. The newest N messages are one LRANGE. Scores are integer microseconds,
exact in a double up to 2**53, so the activity order keeps full timestamp precision; ties break on the session id,
descending, as Redis orders equal scores bytewise. ``incr`` is Redis INCRBY on the JSON text (a JSON integer *is*
its decimal text), limited to 64-bit integers. ``keys``/``clear`` use SCAN (never KEYS) and UNLINK in batches.

Durability is Redis's own (RDB/AOF configuration); a server restart costs the next call a reconnect, not an error
(redis-py retries connection errors with backoff). Timeouts are not retried, so a slow server never applies a write
twice. The scripts derive index key names from stored ids, so this backend targets a single Redis server (with or
without replicas/Sentinel), not Redis Cluster. Give it a ``maxmemory-policy`` that never evicts keys without a TTL
(``noeviction`` or a ``volatile-*`` policy): an evicted session hash or message list would lose data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

import redis
from redis import exceptions as rx
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.connection import URL_QUERY_ARGUMENT_PARSERS
from redis.retry import Retry

from .. import errors
from ..base import (
    ConnectedStore,
    SharedConnection,
    POSITIVE_SECONDS,
    Capabilities,
    ConversationStore,
    Option,
    SessionFilter,
    StateStore,
    check_prefix,
    loads,
    missing_session,
    not_an_integer,
    resolve_options,
)
from ..models import Message, MessageDraft, Session, dumps
from ..url import StoreURL, redacted

__all__ = ["RedisConversationStore", "RedisStateStore"]

OPTIONS: dict[str, Option] = {
    "prefix": Option(check_prefix, "praison", "first part of every key name"),
    "ttl": Option(POSITIVE_SECONDS, None, "seconds of inactivity after which a session expires; default TTL of state keys"),
}
# redis-py options that may ride in the URL; string-valued ones are those the SSL connection takes as text.
DRIVER_OPTIONS = frozenset(URL_QUERY_ARGUMENT_PARSERS) | {
    "client_name",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_certfile",
    "ssl_keyfile",
}
_DEFAULTS: dict[str, Any] = {
    "socket_connect_timeout": 5.0,
    "socket_timeout": 30.0,  # bounded, and long enough for a 16 MB message on a slow link
    "health_check_interval": 15,  # PING a connection idle that long before reusing it
}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SCAN_COUNT = 1000
_BATCH = 500


def _us(value: datetime) -> int:
    """Integer microseconds since the epoch: exact, and exact as a sorted-set score (below 2**53)."""
    return (value - _EPOCH) // timedelta(microseconds=1)


def _from_us(value: bytes | int | str) -> datetime:
    return _EPOCH + timedelta(microseconds=int(value))


def _ms(seconds: float) -> int:
    """A relative TTL in whole milliseconds, at least 1 (Redis rejects 0)."""
    return max(1, math.ceil(seconds * 1000))


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8")


# ---- errors ----


def _classify(error: BaseException, where: str, password: str | None) -> errors.Error | None:
    """A praison_db error for a redis-py error; one line, password masked."""
    if isinstance(error, UnicodeError):
        return errors.InputError(f"{where}: ids, keys and text must be valid Unicode (no lone surrogates)")
    if not isinstance(error, rx.RedisError):
        return None
    detail = redacted(error, password)
    if isinstance(error, (rx.AuthenticationError, rx.NoPermissionError, rx.AuthorizationError)) or (
        isinstance(error, rx.ResponseError) and detail.startswith(("NOAUTH", "WRONGPASS", "NOPERM"))
    ):
        return errors.ConfigError(f"{where}: the server refused the credentials; check the user and password in the URL ({detail})")
    if isinstance(error, (rx.ConnectionError, rx.TimeoutError, rx.ReadOnlyError, rx.TryAgainError, rx.OutOfMemoryError)):
        return errors.StoreUnavailable(f"{where} is unavailable: {detail}")
    if isinstance(error, rx.ResponseError) and detail.startswith("WRONGTYPE"):
        return errors.IntegrityError(f"{where}: a key under this prefix has an unexpected type; is another program using the prefix? ({detail})")
    if isinstance(error, rx.ResponseError) and detail.startswith("MISCONF"):
        return errors.StoreUnavailable(f"{where} refused the write: {detail}")
    return errors.Error(f"{where}: {detail}")


# ---- Lua scripts (atomic on the server) ----

# Shared helpers. `touch` re-indexes a session under its activity time and refreshes its TTL: the store's ttl when it
# has one (remembered in the hash), else the session's own, so activity from any client keeps a session alive.
_LUA_COMMON = r"""
local function member(sid, uid, aid)
  return sid .. '\0' .. (uid or '') .. '\0' .. (aid or '')
end
local function unindex(p, sid, uid, aid)
  redis.call('ZREM', p .. ':activity', sid)
  if uid and uid ~= '' then redis.call('ZREM', p .. ':u:' .. uid, sid) end
  if aid and aid ~= '' then redis.call('ZREM', p .. ':g:' .. aid, sid) end
  redis.call('ZREM', p .. ':expiring', member(sid, uid, aid))
end
local function later(S, up)
  local old = redis.call('HGET', S, 'updated_at')
  if old and tonumber(old) > tonumber(up) then return old end
  return up
end
local function touch(p, sid, up, ttl, now_ms)
  local S, M = p .. ':s:' .. sid, p .. ':m:' .. sid
  local owner = redis.call('HMGET', S, 'user_id', 'agent_id')
  redis.call('ZADD', p .. ':activity', up, sid)
  if owner[1] then redis.call('ZADD', p .. ':u:' .. owner[1], up, sid) end
  if owner[2] then redis.call('ZADD', p .. ':g:' .. owner[2], up, sid) end
  if ttl > 0 then
    redis.call('HSET', S, 'ttl_ms', ttl)
  else
    ttl = tonumber(redis.call('HGET', S, 'ttl_ms') or '0')
  end
  if ttl > 0 then
    redis.call('PEXPIRE', S, ttl)
    redis.call('PEXPIRE', M, ttl)
    redis.call('PEXPIRE', p .. ':i:' .. sid, ttl)
    redis.call('ZADD', p .. ':expiring', string.format('%.0f', now_ms + ttl), member(sid, owner[1], owner[2]))
  end
end
local function push(M, first)
  -- unpack() is limited by the Lua stack: push in chunks
  for i = first, #ARGV, 1000 do
    redis.call('RPUSH', M, unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
end
local function body_id(body)
  -- Every body starts with {"id":"...": decode that one JSON string, not a body that may hold 16 MB of content.
  if string.sub(body, 1, 7) ~= '{"id":"' then return cjson.decode(body)['id'] end
  local i = 8
  while true do
    local c = string.byte(body, i)
    if c == 34 then return cjson.decode(string.sub(body, 7, i)) end
    if c == 92 then i = i + 2 else i = i + 1 end
  end
end
-- After messages were removed: the counter follows the list (the next append takes the freed seq), and removal is
-- activity (updated_at, indexes, TTL).
local function shrunk(p, sid, count, now_us, ttl, now_ms)
  local S = p .. ':s:' .. sid
  redis.call('HSET', S, 'message_count', count)
  local up = later(S, now_us)
  redis.call('HSET', S, 'updated_at', up)
  touch(p, sid, up, ttl, now_ms)
end
"""

# ARGV: prefix, sid, updated_us, ttl_ms, now_ms, field, value, ...  -> {1} created, or {0, HGETALL} if it existed.
_LUA_CREATE = _LUA_COMMON + r"""
local p, sid = ARGV[1], ARGV[2]
local S = p .. ':s:' .. sid
if redis.call('EXISTS', S) == 1 then return {0, redis.call('HGETALL', S)} end
redis.call('HSET', S, unpack(ARGV, 6))
touch(p, sid, ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]))
return {1}
"""

# ARGV: prefix, sid, now_us, ttl_ms, now_ms, n, id x n, body x n  -> nil if the session is missing, else one entry
# per message: its seq, then '' for a message stored now or the stored body for an id the session already held.
_LUA_APPEND = _LUA_COMMON + r"""
local p, sid = ARGV[1], ARGV[2]
local S, M, I = p .. ':s:' .. sid, p .. ':m:' .. sid, p .. ':i:' .. sid
if redis.call('EXISTS', S) == 0 then return false end
local n = tonumber(ARGV[6])
local count = tonumber(redis.call('HGET', S, 'message_count'))
if count > 0 and redis.call('EXISTS', I) == 0 then
  -- messages written before ids were indexed: index them once
  local old = redis.call('LRANGE', M, 0, -1)
  for i = 1, #old do redis.call('HSET', I, body_id(old[i]), i) end
end
local out, fresh = {}, {}
for i = 1, n do
  local seq = redis.call('HGET', I, ARGV[6 + i])
  if seq then
    out[#out + 1] = tonumber(seq)
    out[#out + 1] = redis.call('LINDEX', M, tonumber(seq) - 1)
  else
    count = count + 1
    redis.call('HSET', I, ARGV[6 + i], count)
    fresh[#fresh + 1] = ARGV[6 + n + i]
    out[#out + 1] = count
    out[#out + 1] = ''
  end
end
if #fresh == 0 then return out end
for i = 1, #fresh, 1000 do
  redis.call('RPUSH', M, unpack(fresh, i, math.min(i + 999, #fresh)))
end
redis.call('HSET', S, 'message_count', count)
local up = later(S, ARGV[3])
redis.call('HSET', S, 'updated_at', up)
touch(p, sid, up, tonumber(ARGV[4]), tonumber(ARGV[5]))
return out
"""

# ARGV: prefix, sid, now_us, ttl_ms, now_ms  -> {seq, body} of the newest message, removed; nil if there is none.
_LUA_POP = _LUA_COMMON + r"""
local p, sid = ARGV[1], ARGV[2]
local M, I = p .. ':m:' .. sid, p .. ':i:' .. sid
if redis.call('EXISTS', p .. ':s:' .. sid) == 0 then return false end
local body = redis.call('RPOP', M)
if not body then return false end
redis.call('HDEL', I, body_id(body))
local count = redis.call('LLEN', M)
shrunk(p, sid, count, ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]))
return {count + 1, body}
"""

# ARGV: prefix, sid, now_us, ttl_ms, now_ms, after_seq  -> how many messages were removed (0 if the session is missing).
_LUA_TRUNCATE = _LUA_COMMON + r"""
local p, sid = ARGV[1], ARGV[2]
local M, I = p .. ':m:' .. sid, p .. ':i:' .. sid
if redis.call('EXISTS', p .. ':s:' .. sid) == 0 then return 0 end
local n, keep = redis.call('LLEN', M), tonumber(ARGV[6])
if keep >= n then return 0 end
if keep == 0 then
  redis.call('UNLINK', M, I)
else
  -- the ids of the removed messages leave the index; read in windows, so a long tail never sits in memory at once
  for first = keep, n - 1, 200 do
    local bodies = redis.call('LRANGE', M, first, math.min(first + 199, n - 1))
    local ids = {}
    for i = 1, #bodies do ids[i] = body_id(bodies[i]) end
    redis.call('HDEL', I, unpack(ids))
  end
  redis.call('LTRIM', M, 0, keep - 1)
end
shrunk(p, sid, keep, ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]))
return n - keep
"""

# ARGV: prefix, sid, now_us, ttl_ms, now_ms, (field, 's'|'d', value)...  -> HGETALL after, or nil if missing.
_LUA_UPDATE = _LUA_COMMON + r"""
local p, sid = ARGV[1], ARGV[2]
local S = p .. ':s:' .. sid
if redis.call('EXISTS', S) == 0 then return false end
for i = 6, #ARGV, 3 do
  if ARGV[i + 1] == 's' then redis.call('HSET', S, ARGV[i], ARGV[i + 2]) else redis.call('HDEL', S, ARGV[i]) end
end
local up = later(S, ARGV[3])
redis.call('HSET', S, 'updated_at', up)
touch(p, sid, up, tonumber(ARGV[4]), tonumber(ARGV[5]))
return redis.call('HGETALL', S)
"""

# ARGV: prefix, sid, ttl_ms, now_ms, field count n, n fields/values..., bodies...  -> 1 imported, 0 if it existed.
_LUA_IMPORT = _LUA_COMMON + r"""
local p, sid = ARGV[1], ARGV[2]
local S = p .. ':s:' .. sid
if redis.call('EXISTS', S) == 1 then return 0 end
local n = tonumber(ARGV[5])
redis.call('HSET', S, unpack(ARGV, 6, 5 + n))
if #ARGV > 5 + n then
  push(p .. ':m:' .. sid, 6 + n)
  for i = 6 + n, #ARGV do redis.call('HSET', p .. ':i:' .. sid, body_id(ARGV[i]), i - 5 - n) end
end
touch(p, sid, redis.call('HGET', S, 'updated_at'), tonumber(ARGV[3]), tonumber(ARGV[4]))
return 1
"""

# ARGV: prefix, sid, updated_us, ttl_ms, now_ms, n, id x n, seq x n, body x n  -> how many were stored, nil if the
# session is missing, or {-1, seq} when a seq is taken or would leave a gap (a list position is the seq here).
_LUA_IMPORT_MESSAGES = _LUA_COMMON + r"""
local p, sid = ARGV[1], ARGV[2]
local S, M, I = p .. ':s:' .. sid, p .. ':m:' .. sid, p .. ':i:' .. sid
if redis.call('EXISTS', S) == 0 then return false end
local n = tonumber(ARGV[6])
local count = redis.call('LLEN', M)
local fresh = {}
for i = 1, n do
  if not redis.call('HGET', I, ARGV[6 + i]) then
    if tonumber(ARGV[6 + n + i]) ~= count + #fresh + 1 then return {-1, ARGV[6 + n + i]} end
    fresh[#fresh + 1] = i
  end
end
for _, i in ipairs(fresh) do
  redis.call('RPUSH', M, ARGV[6 + 2 * n + i])
  redis.call('HSET', I, ARGV[6 + i], ARGV[6 + n + i])
end
if #fresh > 0 then redis.call('HSET', S, 'message_count', count + #fresh) end
local up = later(S, ARGV[3])
redis.call('HSET', S, 'updated_at', up)
touch(p, sid, up, tonumber(ARGV[4]), tonumber(ARGV[5]))
return #fresh
"""

# KEYS: the index the ids were read from. ARGV: prefix, user ('' any), cutoff_us ('' none), sid, ...
# Deletes the sessions that still match; drops index entries of sessions that are gone (expired), and, when deleting
# by user, entries of that user's index whose session now belongs to someone else. Returns how many were deleted.
_LUA_DELETE = _LUA_COMMON + r"""
local p, user, cutoff = ARGV[1], ARGV[2], ARGV[3]
local deleted = 0
for i = 4, #ARGV do
  local sid = ARGV[i]
  local S = p .. ':s:' .. sid
  local h = redis.call('HMGET', S, 'user_id', 'agent_id', 'updated_at')
  if not h[3] then
    redis.call('ZREM', KEYS[1], sid)
    redis.call('ZREM', p .. ':activity', sid)
    redis.call('UNLINK', p .. ':m:' .. sid, p .. ':i:' .. sid)
  elseif (user == '' or h[1] == user) and (cutoff == '' or tonumber(h[3]) < tonumber(cutoff)) then
    redis.call('UNLINK', S, p .. ':m:' .. sid, p .. ':i:' .. sid)
    unindex(p, sid, h[1], h[2])
    deleted = deleted + 1
  elseif user ~= '' and KEYS[1] == p .. ':u:' .. user then
    redis.call('ZREM', KEYS[1], sid)
  end
end
return deleted
"""

# ARGV: prefix, now_ms, batch. Removes the index entries of TTL'd sessions that Redis has expired.
_LUA_SWEEP = _LUA_COMMON + r"""
local p, now_ms = ARGV[1], tonumber(ARGV[2])
local X = p .. ':expiring'
local due = redis.call('ZRANGE', X, '-inf', ARGV[2], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[3]))
for _, m in ipairs(due) do
  local a = string.find(m, '\0', 1, true)
  local b = string.find(m, '\0', a + 1, true)
  local sid, uid, aid = string.sub(m, 1, a - 1), string.sub(m, a + 1, b - 1), string.sub(m, b + 1)
  local left = redis.call('PTTL', p .. ':s:' .. sid)
  if left == -2 then
    redis.call('UNLINK', p .. ':m:' .. sid, p .. ':i:' .. sid)
    unindex(p, sid, uid, aid)
  elseif left == -1 then
    redis.call('ZREM', X, m)
  else
    -- our clock and the server's disagree: look again when the server will have expired it
    redis.call('ZADD', X, string.format('%.0f', now_ms + left), m)
  end
end
return #due
"""

# KEYS: the message list. ARGV: limit, before_seq, after_seq ('' = none).  -> {index of the first, messages}.
_LUA_READ = r"""
local n = redis.call('LLEN', KEYS[1])
local lo, hi = 0, n - 1
if ARGV[3] ~= '' then lo = math.max(lo, tonumber(ARGV[3])) end
if ARGV[2] ~= '' then hi = math.min(hi, tonumber(ARGV[2]) - 2) end
if ARGV[1] ~= '' then lo = math.max(lo, hi - tonumber(ARGV[1]) + 1) end
if hi < lo then return {0, {}} end
return {lo, redis.call('LRANGE', KEYS[1], lo, hi)}
"""


def scan_batches(client: Any, pattern: str) -> Iterator[list[bytes]]:
    """Key names matching a glob ``pattern``, a SCAN batch at a time (never KEYS: the server is never blocked)."""
    cursor = 0
    while True:
        cursor, found = client.scan(cursor, match=pattern, count=_SCAN_COUNT)
        if found:
            yield found
        if cursor == 0:
            return


def unlink_matching(client: Any, pattern: str) -> int:
    """Delete every key matching ``pattern``, a batch at a time; returns how many were removed.

    UNLINK frees memory off the main thread and counts only keys it removed (not expired or already gone ones).
    """
    return sum(client.unlink(*batch) for batch in scan_batches(client, pattern))


class _Connection(SharedConnection):
    """One redis-py client shared by the conversation and state stores of a URL; closed with the last of them."""

    def __init__(self, url: StoreURL, options: Mapping[str, Any], *, asynchronous: bool = False) -> None:
        opts, driver = resolve_options(f"{url.scheme}://", OPTIONS, {**url.query, **options}, passthrough=True)
        unknown = sorted(set(driver) - DRIVER_OPTIONS)
        if unknown:
            valid = ", ".join(sorted(OPTIONS)) + "; redis-py options: " + ", ".join(sorted(DRIVER_OPTIONS))
            raise errors.ConfigError(f"unknown option {unknown[0]!r} for {url.scheme}://; valid options: {valid}")
        if len(url.hosts) > 1:
            raise errors.ConfigError(f"{url.render()}: a Redis URL names one server (use Sentinel or a proxy for several)")
        number = url.path.strip("/")
        if url.scheme != "unix" and number and not (number.isascii() and number.isdigit()):
            # redis-py quietly falls back to database 0 for a path it cannot read (a typo like /O or /db1).
            raise errors.ConfigError(f"{url.render()}: the path names a Redis database by number (e.g. /0), not {number[:40]!r}")
        self.prefix: str = opts["prefix"]
        self.ttl: float | None = opts["ttl"]
        self.where = f"Redis at {url.render()}"
        self.password = url.password
        self.url = url.render()
        self.asynchronous = asynchronous
        SharedConnection.__init__(self)
        base = url.render(hide_password=False).split("?", 1)[0]
        query = {k: _query_text(v) for k, v in driver.items()}
        target = f"{base}?{urlencode(query)}" if query else base
        kwargs = {k: v for k, v in _DEFAULTS.items() if k not in query}
        # The async API runs this same code on redis.asyncio (see praison_db.bridge): only the client differs.
        client_class, retry_class = _async_driver() if asynchronous else (redis.Redis, Retry)
        try:
            self.client: Any = client_class.from_url(
                target,
                **kwargs,
                # A restarted server costs the next call a reconnect. Only connection errors are retried: a timeout
                # may mean the server ran the command, and re-sending an append would store it twice.
                retry=retry_class(ExponentialBackoff(cap=1.0, base=0.05), retries=4, supported_errors=(rx.ConnectionError,)),
            )
        except (ValueError, TypeError) as e:
            raise errors.ConfigError(f"invalid Redis URL or option for {url.render()}: {redacted(e, url.secrets, limit=200)}") from None
        # The first contact goes through a client of its own that waits no longer than the connect timeout and does
        # not retry: a server that is down, silent, or not speaking TLS to rediss:// fails within seconds, instead of
        # after the 30 s read timeout (the TLS handshake runs under it) or once per retry.
        limit = self.client.get_connection_kwargs().get("socket_connect_timeout") or _DEFAULTS["socket_connect_timeout"]
        try:
            with client_class.from_url(target, **{**kwargs, "socket_timeout": limit, "retry": retry_class(NoBackoff(), 0)}) as first:
                first.ping()
        except Exception as e:
            self._dispose()
            raise self.translate(e) from e

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def classify(self, error: BaseException) -> errors.Error | None:
        return _classify(error, self.where, self.password)

    def _dispose(self) -> None:
        if self.asynchronous:
            self.client.aclose()
            return
        # Idle connections close now; one another thread is using finishes its command and is closed with the pool.
        # Closing a connection under another thread's feet races redis-py's reconnect (a recv on a reused file
        # descriptor that waits out the socket timeout), so a call in flight during close() could hang for 30 s.
        self.client.connection_pool.disconnect(inuse_connections=False)


def _async_driver() -> tuple[Any, Any]:
    from redis.asyncio import Redis as AsyncRedis
    from redis.asyncio.retry import Retry as AsyncRetry

    from ..bridge import Bridged

    return Bridged(AsyncRedis), AsyncRetry


def _query_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class _RedisStore(ConnectedStore):
    """What both Redis stores share: the connection, error translation, close."""

    conn: _Connection
    _connection_class = _Connection

    def _bind(self, conn: _Connection) -> None:
        self.conn = conn.acquire()
        self.url = conn.url
        self.r: Any = conn.client  # a redis.Redis, or a bridged redis.asyncio client for the async API

    def _close(self) -> None:
        self.conn.release()

    def _server_version(self) -> str | None:
        return str(self.r.info("server").get("redis_version", "?"))


_CAPS = Capabilities()


# ---- conversations ----


def _session_fields(s: Session) -> list[str]:
    """The hash fields of a session (None values are left out, so they read back as None)."""
    fields: dict[str, str] = {
        "session_type": s.session_type,
        "metadata": dumps(s.metadata),
        "created_at": str(_us(s.created_at)),
        "updated_at": str(_us(s.updated_at)),
        "message_count": str(s.message_count),
    }
    for name in ("user_id", "agent_id", "name"):
        value = getattr(s, name)
        if value is not None:
            fields[name] = value
    return [x for pair in fields.items() for x in pair]


def _session_from_hash(session_id: str, h: Mapping[bytes, bytes]) -> Session:
    return Session.trusted(
        session_id=session_id,
        user_id=_text(h.get(b"user_id")),
        agent_id=_text(h.get(b"agent_id")),
        session_type=h[b"session_type"].decode(),
        name=_text(h.get(b"name")),
        metadata=loads(h[b"metadata"]),
        created_at=_from_us(h[b"created_at"]),
        updated_at=_from_us(h[b"updated_at"]),
        message_count=int(h[b"message_count"]),
    )


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2]))


def _message_body(m: Message) -> str:
    """A message as stored: JSON without seq and session_id (both follow from where it is stored).

    "id" comes first: the scripts read it from the start of the body. Fields at their default are left out, so a
    body of the previous layout (always a role, never a type or extra) is simply a message without them.
    """
    body: dict[str, Any] = {"id": m.id}
    if m.role is not None:
        body["role"] = m.role
    body["created_at"] = _us(m.created_at)
    for name in ("type", "content", "name", "tool_calls", "tool_call_id"):
        value = getattr(m, name)
        if value is not None:
            body[name] = value
    if m.metadata:
        body["metadata"] = m.metadata
    if m.extra:
        body["extra"] = m.extra
    return dumps(body)


def _message_from_body(session_id: str, seq: int, raw: bytes) -> Message:
    d = loads(raw)
    return Message.trusted(
        id=d["id"],
        session_id=session_id,
        seq=seq,
        role=d.get("role"),
        content=d.get("content"),
        type=d.get("type"),
        name=d.get("name"),
        tool_calls=d.get("tool_calls"),
        tool_call_id=d.get("tool_call_id"),
        metadata=d.get("metadata") or {},
        extra=d.get("extra") or {},
        created_at=_from_us(d["created_at"]),
    )


class RedisConversationStore(_RedisStore, ConversationStore):
    """ConversationStore on plain Redis: a hash per session, a list of messages, sorted sets for listing."""

    OPTIONS = OPTIONS
    capabilities = _CAPS

    def __init__(self, conn: _Connection) -> None:
        self._bind(conn)
        r = self.r
        self._create = r.register_script(_LUA_CREATE)
        self._append_script = r.register_script(_LUA_APPEND)
        self._update = r.register_script(_LUA_UPDATE)
        self._import_script = r.register_script(_LUA_IMPORT)
        self._import_messages_script = r.register_script(_LUA_IMPORT_MESSAGES)
        self._delete = r.register_script(_LUA_DELETE)
        self._sweep = r.register_script(_LUA_SWEEP)
        self._read = r.register_script(_LUA_READ)
        self._pop_script = r.register_script(_LUA_POP)
        self._truncate_script = r.register_script(_LUA_TRUNCATE)

    def state_store(self) -> RedisStateStore:
        """A StateStore with the same prefix, sharing this store's connection pool."""
        return RedisStateStore(self.conn)

    # ---- helpers ----

    def _ttl_ms(self) -> str:
        return str(_ms(self.conn.ttl)) if self.conn.ttl else "0"

    def _script_head(self, session_id: str, now: datetime) -> list[str]:
        return [self.conn.prefix, session_id, str(_us(now)), self._ttl_ms(), str(int(time.time() * 1000))]

    def _sweep_expired(self) -> None:
        """Drop index entries of sessions Redis has expired (bounded work per call)."""
        self._sweep(args=[self.conn.prefix, str(int(time.time() * 1000)), "1000"])

    def _hashes(self, sids: list[bytes]) -> list[dict[bytes, bytes]]:
        pipe = self.r.pipeline(transaction=False)
        for sid in sids:
            pipe.hgetall(self.conn.key("s", sid.decode()))
        return pipe.execute()

    # ---- sessions ----

    def _insert_session(self, session: Session) -> bool:
        head = self._script_head(session.session_id, session.updated_at)
        return self._create(args=head + _session_fields(session))[0] == 1

    def _get_or_insert_session(self, session: Session) -> Session:
        head = self._script_head(session.session_id, session.updated_at)
        result = self._create(args=head + _session_fields(session))
        return session if result[0] == 1 else _session_from_hash(session.session_id, _pairs(result[1]))

    def _get_session(self, session_id: str) -> Session | None:
        h = self.r.hgetall(self.conn.key("s", session_id))
        return _session_from_hash(session_id, h) if h else None

    def _walk(self, index: str, after: tuple[int, bytes] | None) -> Iterator[tuple[bytes, int]]:
        """(session id, score) of an activity index, newest first, strictly after ``after``; a page at a time.

        Each page re-anchors on the last (score, id) seen, so concurrent activity never makes the walk skip or repeat.
        """
        page = 200
        while True:
            if after is None:
                rows = self.r.zrange(index, 0, page - 1, desc=True, withscores=True)
            else:
                score, sid = after
                pipe = self.r.pipeline(transaction=True)
                pipe.zscore(index, sid)
                pipe.zrevrank(index, sid)
                now_score, rank = pipe.execute()
                if now_score is not None and int(now_score) == score:
                    rows = self.r.zrange(index, rank + 1, rank + page, desc=True, withscores=True)
                else:
                    # The anchor moved or went: take the rest of its tie group (rare, small), then lower scores.
                    ties = self.r.zrange(index, score, score, byscore=True, desc=True, withscores=True)
                    rows = [(m, s) for m, s in ties if m < sid]
                    rows += self.r.zrange(index, f"({score}", "-inf", byscore=True, desc=True, offset=0, num=page, withscores=True)
            if not rows:
                return
            for member, score_f in rows:
                yield member, int(score_f)
            after = (int(rows[-1][1]), rows[-1][0])

    def _list_sessions(self, flt: SessionFilter, limit: int, after: tuple[datetime, str] | None) -> list[Session]:
        self._sweep_expired()
        # Walk the most selective index; the remaining filters are checked on the sessions read.
        if flt.user_id is not None:
            index = self.conn.key("u", flt.user_id)
        elif flt.agent_id is not None:
            index = self.conn.key("g", flt.agent_id)
        else:
            index = self.conn.key("activity")
        anchor = (_us(after[0]), after[1].encode("utf-8")) if after is not None else None
        found: list[Session] = []
        batch: list[bytes] = []

        def flush() -> None:
            for sid, h in zip(batch, self._hashes(batch)):
                if not h:  # expired just now; the sweep drops its index entries
                    continue
                s = _session_from_hash(sid.decode("utf-8"), h)
                if flt.matches(s) and len(found) < limit:
                    found.append(s)
            batch.clear()

        for sid, _score in self._walk(index, anchor):
            batch.append(sid)
            if len(batch) >= max(limit - len(found), 20):
                flush()
                if len(found) >= limit:
                    break
        flush()
        return found

    def _update_session(self, session_id: str, changes: dict[str, Any], now: datetime) -> Session | None:
        ops: list[str] = []
        if "name" in changes:
            ops += ["name", "d", ""] if changes["name"] is None else ["name", "s", changes["name"]]
        if "metadata" in changes:
            ops += ["metadata", "s", dumps(changes["metadata"])]
        flat = self._update(args=self._script_head(session_id, now) + ops)
        return _session_from_hash(session_id, _pairs(flat)) if flat else None

    def _delete_session(self, session_id: str, user_id: str | None) -> bool:
        args = [self.conn.prefix, user_id or "", "", session_id]
        return self._delete(keys=[self.conn.key("activity")], args=args) > 0

    def _delete_sessions(self, *, user_id: str | None = None, idle_before: datetime | None = None) -> int:
        self._sweep_expired()
        total = 0
        if user_id is not None:
            index = self.conn.key("u", user_id)
            # Every batch leaves the user's index (deleted, or stale and dropped), so this loop ends; the check on a
            # repeated batch only guards against data this code did not write.
            previous: list[bytes] = []
            while (sids := self.r.zrange(index, 0, _BATCH - 1)) and sids != previous:
                total += self._delete(keys=[index], args=[self.conn.prefix, user_id, "", *sids])
                previous = sids
            return total
        assert idle_before is not None
        index, cutoff = self.conn.key("activity"), _us(idle_before)
        # Every batch leaves the range: deleted, stale and dropped, or re-scored by new activity.
        previous = []
        while (sids := self.r.zrange(index, "-inf", f"({cutoff}", byscore=True, offset=0, num=_BATCH)) and sids != previous:
            total += self._delete(keys=[index], args=[self.conn.prefix, "", str(cutoff), *sids])
            previous = sids
        return total

    # ---- messages ----

    def _append(self, session_id: str, drafts: list[MessageDraft], now: datetime) -> list[Message]:
        # Timestamps are made here; the script checks the ids against the session's id -> seq hash and assigns the
        # seqs of the new ones (their list positions), atomically.
        drafted = [d.stamp(session_id, 0, now) for d in drafts]
        head = self._script_head(session_id, now) + [str(len(drafted))]
        flat = self._append_script(args=head + [m.id for m in drafted] + [_message_body(m) for m in drafted])
        if flat is None:
            raise missing_session(session_id)
        out = []
        for m, seq, body in zip(drafted, flat[::2], flat[1::2]):
            out.append(m.model_copy(update={"seq": int(seq)}) if body == b"" else _message_from_body(session_id, int(seq), body))
        return out

    def _get_messages(self, session_id: str, limit: int | None, before_seq: int | None, after_seq: int | None) -> list[Message]:
        args = ["" if v is None else str(v) for v in (limit, before_seq, after_seq)]
        first, raw = self._read(keys=[self.conn.key("m", session_id)], args=args)
        return [_message_from_body(session_id, int(first) + 1 + i, body) for i, body in enumerate(raw)]

    def _count_messages(self, session_id: str) -> int:
        return int(self.r.hget(self.conn.key("s", session_id), "message_count") or 0)

    def _pop(self, session_id: str, now: datetime) -> Message | None:
        result = self._pop_script(args=self._script_head(session_id, now))
        return None if result is None else _message_from_body(session_id, int(result[0]), result[1])

    def _truncate(self, session_id: str, after_seq: int, now: datetime) -> int:
        return int(self._truncate_script(args=self._script_head(session_id, now) + [str(after_seq)]))

    def _import_messages(self, session_id: str, messages: list[Message], updated_at: datetime) -> int:
        head = self._script_head(session_id, updated_at) + [str(len(messages))]
        args = head + [m.id for m in messages] + [str(m.seq) for m in messages] + [_message_body(m) for m in messages]
        result = self._import_messages_script(args=args)
        if result is None:
            raise missing_session(session_id)
        if isinstance(result, list):
            raise errors.IntegrityError(
                f"session {session_id!r}: seq {int(result[1])} is taken or leaves a gap, and Redis numbers messages by "
                "their position; import the source's messages in order without gaps"
            )
        return int(result)

    def _import(self, session: Session, messages: list[Message]) -> bool:
        fields = _session_fields(session)
        head = [self.conn.prefix, session.session_id, self._ttl_ms(), str(int(time.time() * 1000)), str(len(fields))]
        return self._import_script(args=head + fields + [_message_body(m) for m in messages]) == 1


# ---- state ----


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a SCAN MATCH pattern."""
    return "".join("\\" + c if c in "\\*?[]" else c for c in text)


class RedisStateStore(_RedisStore, StateStore):
    """StateStore on plain Redis: one string key per value (its JSON text), native expiry."""

    OPTIONS = OPTIONS
    capabilities = _CAPS

    def __init__(self, conn: _Connection) -> None:
        self._bind(conn)
        self._base = conn.key("kv", "")

    def _k(self, key: str) -> str:
        return self._base + key

    def _get_many(self, keys: list[str]) -> dict[str, Any]:
        values = self.r.mget([self._k(k) for k in keys])
        return {k: loads(v) for k, v in zip(keys, values) if v is not None}

    def _set_many(self, items: dict[str, str], expires_at: float | None) -> None:
        if expires_at is None and self.conn.ttl:
            expires_at = time.time() + self.conn.ttl
        # Relative expiry from the absolute time: the server's clock may differ from ours.
        px = None if expires_at is None else _ms(expires_at - time.time())
        pipe = self.r.pipeline(transaction=True)  # MULTI/EXEC: all keys or none
        for k, v in items.items():
            pipe.set(self._k(k), v, px=px)  # a plain SET also drops any previous TTL
        pipe.execute()

    def _delete(self, key: str) -> bool:
        return self.r.delete(self._k(key)) > 0

    def _incr(self, key: str, amount: int) -> int:
        # INCRBY works on the JSON text directly; it refuses floats, booleans, strings, null and anything outside
        # 64 bits, and keeps the key's TTL. An expired key counts as missing.
        if not -(2**63) <= amount < 2**63:
            raise errors.InputError("incr amount must fit in 64 bits on Redis")
        try:
            return int(self.r.incrby(self._k(key), amount))
        except rx.ResponseError as e:
            if "overflow" in str(e):
                raise errors.InputError(f"incr: {key!r} would leave the 64-bit range Redis counters support") from None
            if "not an integer" in str(e):
                raise not_an_integer(key) from None
            raise

    def _expires_at(self, key: str) -> float | None:
        left = self.r.pttl(self._k(key))
        return None if left < 0 else time.time() + left / 1000

    def _expire(self, key: str, expires_at: float | None) -> bool:
        if expires_at is not None:
            return bool(self.r.pexpire(self._k(key), _ms(expires_at - time.time())))
        pipe = self.r.pipeline(transaction=True)
        pipe.exists(self._k(key))
        pipe.persist(self._k(key))
        return bool(pipe.execute()[0])

    def _scan(self, prefix: str) -> Iterator[list[bytes]]:
        return scan_batches(self.r, _glob_escape(self._base + prefix) + "*")

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        # SCAN may return a key twice and in no particular order: collect the names (not the values), then hand them
        # out sorted, the order every backend gives. The server is never blocked. Collecting here, inside the public
        # call, also means a connection error surfaces as StoreUnavailable rather than midway through iteration.
        n = len(self._base.encode("utf-8"))
        seen: set[str] = set()
        for batch in self._scan(prefix):
            seen.update(k[n:].decode("utf-8") for k in batch)
        return iter(sorted(seen))

    def _clear(self, prefix: str) -> int:
        return unlink_matching(self.r, _glob_escape(self._base + prefix) + "*")
