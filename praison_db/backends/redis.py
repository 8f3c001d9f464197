"""Redis stores on plain Redis (no modules), through redis-py: one server, or a Redis Cluster.

URLs: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS), ``unix:///path/to/redis.sock[?db=0]``;
for a Redis Cluster ``redis+cluster://[[user]:password@]host:port[,host:port...][/0]`` (``rediss+cluster://`` with
TLS), or ``?cluster=true`` on a ``redis://``/``rediss://`` URL. The hosts of a cluster URL are startup nodes: any
reachable one tells redis-py's cluster client where every slot lives.
Options (query string or keyword arguments):

- ``prefix`` (default ``praison``): every key starts with ``<prefix>:``, so two applications share one server
  without seeing each other.
- ``ttl`` (seconds, default none): sessions expire after this long without activity (every append or update
  refreshes it); state keys written by ``set``/``set_many`` without their own ``ttl`` get it as their default.
- ``cluster`` (default false; true with the ``+cluster`` schemes): talk to a Redis Cluster.
- redis-py's own URL options pass through: ``socket_timeout``, ``socket_connect_timeout``, ``health_check_interval``,
  ``max_connections``, ``client_name``, the ``ssl_*`` options, ... Anything else is a ConfigError listing them.
  Defaults here: ``socket_connect_timeout=5`` and ``socket_timeout=30`` (seconds), so a silent or frozen server
  raises StoreUnavailable instead of blocking (redis-py's own default is to wait forever).

Key layout on one server (``p`` is the prefix; ids are used verbatim, they are the last part of every key):

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

Redis Cluster. A Lua script runs on one node and may only touch keys of one hash slot, so the cluster layout puts
every key of a session in one slot with a hash tag, and the listing indexes of a prefix in one other slot:

- ``p:{s:<session_id>}``, ``p:{s:<session_id>}:m``, ``p:{s:<session_id>}:i``  the session's hash, message list and
  id index as above (the tag starts with ``s:``, so it is never empty, whatever the id holds).
- ``p:{i:p}:activity``, ``p:{i:p}:u:<user_id>``, ``p:{i:p}:g:<agent_id>``  the activity indexes; ``p:{i:p}:owners``
  (hash: session id -> user and agent id, so an index step needs no read of the session), ``p:{i:p}:expiring``
  (session ids by expiry) and ``p:{i:p}:ahead`` (sessions whose index entry was seen ahead of their hash).
- ``p:kv:<key>``  state, unchanged: a state value is one key, so it needs no tag; keys whose names share a
  ``{tag}`` share a slot.

Atomic in a cluster: everything a call does to one session's own keys (create with its fields, append with seq
allocation and the id check, pop, truncate, update, delete, import) is one script in the session's slot, exactly as
on one server; one state key's set, incr, expire and delete. Not atomic across slots: the activity indexes are
written in a second step, on the index slot, and ``set_many`` is atomic per slot, not across slots. The order of
the two steps keeps listings exact. A write first raises the session's index entries (ZADD GT: scores never go
down) and then runs the session's script, so an index score is never below the session's ``updated_at``; a session
is created between two index steps and deleted before its index entries are. A listing reads the hash of every
entry it walks and uses the hash: an entry whose session is gone is skipped and removed; an entry ahead of its
session (a write that changed nothing, such as an id already stored, or that failed after the index step) is placed
by the session's own ``updated_at`` and noted in the ``ahead`` set, which later pages also read, so it is never
skipped. Removing an index entry is conditional on its score (a newer write keeps it) and re-checks the session
afterwards, so a session created again under a deleted id stays listed. If the index slot's master is down, every
write fails before it changes anything (StoreUnavailable) and listings fail; reads of one session need only its own
slot. A call whose session lives on a master that is down fails with StoreUnavailable and stores nothing (its index
step may have raised an entry, which listings then place by the session's hash). A delete whose index step fails
after the session's keys are gone returns normally: the leftover entries are skipped and dropped by listings.

Durability is Redis's own (RDB/AOF configuration); a server restart costs the next call a reconnect, not an error
(redis-py retries connection errors with backoff). Timeouts are not retried, so a slow server never applies a write
twice. On one server, the scripts derive index key names from stored ids (the server may be a primary with replicas
or behind Sentinel). Give it a ``maxmemory-policy`` that never evicts keys without a TTL (``noeviction`` or a
``volatile-*`` policy): an evicted session hash or message list would lose data.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

import redis
from redis import exceptions as rx
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.connection import URL_QUERY_ARGUMENT_PARSERS
from redis.retry import Retry

from .. import errors
from ..base import (
    BOOL,
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
from ..models import Message, MessageDraft, Session, dumps, epoch_us, from_epoch_us, message_body, message_from_body, message_from_dict
from ..url import StoreURL, redacted

__all__ = ["RedisConversationStore", "RedisStateStore"]

OPTIONS: dict[str, Option] = {
    "prefix": Option(check_prefix, "praison", "first part of every key name"),
    "ttl": Option(POSITIVE_SECONDS, None, "seconds of inactivity after which a session expires; default TTL of state keys"),
    "cluster": Option(BOOL, False, "talk to a Redis Cluster (implied by redis+cluster://)"),
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
_SCAN_COUNT = 1000
_BATCH = 500


_us, _from_us = epoch_us, from_epoch_us


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
    if isinstance(error, rx.RedisClusterException):
        # The cluster client wraps what a node said (a refused password, a refused connection): that decides.
        if isinstance(error.__cause__, rx.RedisError):
            return _classify(error.__cause__, where, password)
        detail = redacted(error, password)
        unreachable = isinstance(error, (rx.SlotNotCoveredError, getattr(rx, "RedisClusterUnreachableError", ())))
        if unreachable or "cannot be connected" in detail:
            return errors.StoreUnavailable(f"{where} is unavailable: {detail}")
        return errors.Error(f"{where}: {detail}")
    if not isinstance(error, rx.RedisError):
        return None
    detail = redacted(error, password)
    if isinstance(error, rx.ClusterDownError):  # CLUSTERDOWN, MASTERDOWN: slots without a live master
        return errors.StoreUnavailable(f"{where} is unavailable: {detail}")
    if isinstance(error, rx.AskError) or (isinstance(error, rx.ResponseError) and detail.startswith(("MOVED", "ASK"))):
        return errors.ConfigError(f"{where}: the server is a node of a Redis Cluster; open it with redis+cluster://host:port ({detail})")
    if isinstance(error, rx.ResponseError) and "cluster support disabled" in detail:
        return errors.ConfigError(f"{where}: the server is not a Redis Cluster node; open it with redis:// ({detail})")
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

# Shared by every session script. Their KEYS are the session's hash, message list and id index (S, M, I), so in a
# cluster they run on the session's slot. ARGV starts with the same six values: prefix, session id, now (µs), the
# store's ttl (ms, 0 for none), now (ms), and the owner the caller expects ('' on one server; see owned()).
_LUA_COMMON = r"""
local S, M, I = KEYS[1], KEYS[2], KEYS[3]
local function later(up)
  local old = redis.call('HGET', S, 'updated_at')
  if old and tonumber(old) > tonumber(up) then return old end
  return up
end
-- The store's ttl when it has one (remembered in the hash), else the session's own: activity from any client keeps
-- a session alive. Returns the ttl in force.
local function expire(ttl)
  if ttl > 0 then
    redis.call('HSET', S, 'ttl_ms', ttl)
  else
    ttl = tonumber(redis.call('HGET', S, 'ttl_ms') or '0')
  end
  if ttl > 0 then
    redis.call('PEXPIRE', S, ttl)
    redis.call('PEXPIRE', M, ttl)
    redis.call('PEXPIRE', I, ttl)
  end
  return ttl
end
-- In a cluster the index step before this script used the owner the index slot knows; a session created again by
-- another owner makes it stale, and the caller repairs the index and retries (nothing is written before this check).
local function owned(expected)
  if expected == '' then return true end
  local o = redis.call('HMGET', S, 'user_id', 'agent_id')
  return (o[1] or '') .. '\0' .. (o[2] or '') == expected
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
"""

# One server: the index entries of a session, named from the prefix and the ids.
_LUA_UNINDEX = r"""
local function member(sid, uid, aid)
  return sid .. '\0' .. (uid or '') .. '\0' .. (aid or '')
end
local function unindex(p, sid, uid, aid)
  redis.call('ZREM', p .. ':activity', sid)
  if uid and uid ~= '' then redis.call('ZREM', p .. ':u:' .. uid, sid) end
  if aid and aid ~= '' then redis.call('ZREM', p .. ':g:' .. aid, sid) end
  redis.call('ZREM', p .. ':expiring', member(sid, uid, aid))
end
"""

# One server: `touch` re-indexes a session under its activity time and refreshes its TTL, in the same script.
_LUA_INDEX_HERE = _LUA_UNINDEX + r"""
local function touch(p, sid, up, ttl, now_ms)
  local owner = redis.call('HMGET', S, 'user_id', 'agent_id')
  redis.call('ZADD', p .. ':activity', up, sid)
  if owner[1] then redis.call('ZADD', p .. ':u:' .. owner[1], up, sid) end
  if owner[2] then redis.call('ZADD', p .. ':g:' .. owner[2], up, sid) end
  ttl = expire(ttl)
  if ttl > 0 then
    redis.call('ZADD', p .. ':expiring', string.format('%.0f', now_ms + ttl), member(sid, owner[1], owner[2]))
  end
end
"""

# Cluster: the indexes live in another slot and the caller updates them in steps of their own.
_LUA_INDEX_ELSEWHERE = r"""
local function touch(p, sid, up, ttl, now_ms)
  expire(ttl)
end
"""

# After messages were removed: the counter follows the list (the next append takes the freed seq), and removal is
# activity (updated_at, indexes, TTL).
_LUA_SHRUNK = r"""
local function shrunk(p, sid, count, now_us, ttl, now_ms)
  redis.call('HSET', S, 'message_count', count)
  local up = later(now_us)
  redis.call('HSET', S, 'updated_at', up)
  touch(p, sid, up, ttl, now_ms)
end
"""

# ARGV: head, field, value, ...  -> {1} created, or {0, HGETALL} if it existed.
_LUA_CREATE = r"""
local p, sid = ARGV[1], ARGV[2]
if redis.call('EXISTS', S) == 1 then return {0, redis.call('HGETALL', S)} end
redis.call('HSET', S, unpack(ARGV, 7))
touch(p, sid, ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]))
return {1}
"""

# ARGV: head, n, id x n, body x n  -> nil if the session is missing, else one entry per message: its seq, then ''
# for a message stored now or the stored body for an id the session already held.
_LUA_APPEND = r"""
local p, sid = ARGV[1], ARGV[2]
if redis.call('EXISTS', S) == 0 then return false end
if not owned(ARGV[6]) then return redis.error_reply('PRAISON_OWNER') end
local n = tonumber(ARGV[7])
local count = tonumber(redis.call('HGET', S, 'message_count'))
if count > 0 and redis.call('EXISTS', I) == 0 then
  -- messages written before ids were indexed: index them once
  local old = redis.call('LRANGE', M, 0, -1)
  for i = 1, #old do redis.call('HSET', I, body_id(old[i]), i) end
end
local out, fresh = {}, {}
for i = 1, n do
  local seq = redis.call('HGET', I, ARGV[7 + i])
  if seq then
    out[#out + 1] = tonumber(seq)
    out[#out + 1] = redis.call('LINDEX', M, tonumber(seq) - 1)
  else
    count = count + 1
    redis.call('HSET', I, ARGV[7 + i], count)
    fresh[#fresh + 1] = ARGV[7 + n + i]
    out[#out + 1] = count
    out[#out + 1] = ''
  end
end
if #fresh == 0 then return out end
for i = 1, #fresh, 1000 do
  redis.call('RPUSH', M, unpack(fresh, i, math.min(i + 999, #fresh)))
end
redis.call('HSET', S, 'message_count', count)
local up = later(ARGV[3])
redis.call('HSET', S, 'updated_at', up)
touch(p, sid, up, tonumber(ARGV[4]), tonumber(ARGV[5]))
return out
"""

# ARGV: head  -> {seq, body} of the newest message, removed; nil if there is none.
_LUA_POP = r"""
if redis.call('EXISTS', S) == 0 then return false end
if not owned(ARGV[6]) then return redis.error_reply('PRAISON_OWNER') end
local body = redis.call('RPOP', M)
if not body then return false end
redis.call('HDEL', I, body_id(body))
local count = redis.call('LLEN', M)
shrunk(ARGV[1], ARGV[2], count, ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]))
return {count + 1, body}
"""

# ARGV: head, after_seq  -> how many messages were removed (0 if the session is missing).
_LUA_TRUNCATE = r"""
if redis.call('EXISTS', S) == 0 then return 0 end
if not owned(ARGV[6]) then return redis.error_reply('PRAISON_OWNER') end
local n, keep = redis.call('LLEN', M), tonumber(ARGV[7])
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
shrunk(ARGV[1], ARGV[2], keep, ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]))
return n - keep
"""

# ARGV: head, (field, 's'|'d', value)...  -> HGETALL after, or nil if missing.
_LUA_UPDATE = r"""
if redis.call('EXISTS', S) == 0 then return false end
if not owned(ARGV[6]) then return redis.error_reply('PRAISON_OWNER') end
for i = 7, #ARGV, 3 do
  if ARGV[i + 1] == 's' then redis.call('HSET', S, ARGV[i], ARGV[i + 2]) else redis.call('HDEL', S, ARGV[i]) end
end
local up = later(ARGV[3])
redis.call('HSET', S, 'updated_at', up)
touch(ARGV[1], ARGV[2], up, tonumber(ARGV[4]), tonumber(ARGV[5]))
return redis.call('HGETALL', S)
"""

# ARGV: head, field count n, n fields/values..., message count m, id x m, body x m (seqs 1..m)  -> 1 imported, 0 if
# it existed. The ids come apart from the bodies, so none is read back out of its body.
_LUA_IMPORT = r"""
if redis.call('EXISTS', S) == 1 then return 0 end
local n = tonumber(ARGV[7])
redis.call('HSET', S, unpack(ARGV, 8, 7 + n))
local m = tonumber(ARGV[8 + n])
local ids, bodies = 8 + n, 8 + n + m
-- unpack() is limited by the Lua stack: a thousand messages at a time
for first = 1, m, 1000 do
  local last = math.min(first + 999, m)
  local seqs = {}
  for i = first, last do
    seqs[#seqs + 1] = ARGV[ids + i]
    seqs[#seqs + 1] = i
  end
  redis.call('HSET', I, unpack(seqs))
  redis.call('RPUSH', M, unpack(ARGV, bodies + first, bodies + last))
end
touch(ARGV[1], ARGV[2], redis.call('HGET', S, 'updated_at'), tonumber(ARGV[4]), tonumber(ARGV[5]))
return 1
"""

# ARGV: head, n, id x n, seq x n, body x n  -> how many were stored, nil if the session is missing, or {-1, seq}
# when a seq is taken or would leave a gap (a list position is the seq here).
_LUA_IMPORT_MESSAGES = r"""
if redis.call('EXISTS', S) == 0 then return false end
if not owned(ARGV[6]) then return redis.error_reply('PRAISON_OWNER') end
local n = tonumber(ARGV[7])
local count = redis.call('LLEN', M)
local fresh = {}
for i = 1, n do
  if not redis.call('HGET', I, ARGV[7 + i]) then
    if tonumber(ARGV[7 + n + i]) ~= count + #fresh + 1 then return {-1, ARGV[7 + n + i]} end
    fresh[#fresh + 1] = i
  end
end
for _, i in ipairs(fresh) do
  redis.call('RPUSH', M, ARGV[7 + 2 * n + i])
  redis.call('HSET', I, ARGV[7 + i], ARGV[7 + n + i])
end
if #fresh > 0 then redis.call('HSET', S, 'message_count', count + #fresh) end
local up = later(ARGV[3])
redis.call('HSET', S, 'updated_at', up)
touch(ARGV[1], ARGV[2], up, tonumber(ARGV[4]), tonumber(ARGV[5]))
return #fresh
"""

# One server. KEYS: the index the ids were read from. ARGV: prefix, user ('' any), cutoff_us ('' none), sid, ...
# Deletes the sessions that still match; drops index entries of sessions that are gone (expired), and, when deleting
# by user, entries of that user's index whose session now belongs to someone else. Returns how many were deleted.
_LUA_DELETE = _LUA_UNINDEX + r"""
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

# One server. ARGV: prefix, now_ms, batch. Removes the index entries of TTL'd sessions that Redis has expired.
_LUA_SWEEP_COMMON = _LUA_UNINDEX + r"""
local function sweep()
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
end
"""
_LUA_SWEEP = _LUA_SWEEP_COMMON + "return sweep()"

# One server: the first page of a listing in one call. KEYS: the index. ARGV: prefix, now_ms, sweep batch, count.
# Sweeps, then returns the newest ``count`` entries of the index as one JSON array text of rows
# [session id, score, the fields of its hash _session_from_row takes (false where missing)].
_LUA_LIST = _LUA_SWEEP_COMMON + r"""
sweep()
local entries = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[4]) - 1, 'REV', 'WITHSCORES')
if #entries == 0 then return '[]' end
local rows = {}
for i = 1, #entries, 2 do
  local h = redis.call('HMGET', ARGV[1] .. ':s:' .. entries[i], 'user_id', 'agent_id', 'session_type', 'name', 'metadata',
    'created_at', 'updated_at', 'message_count')
  rows[#rows + 1] = {entries[i], entries[i + 1], h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8]}
end
return cjson.encode(rows)
"""

# KEYS: the message list. ARGV: limit, before_seq, after_seq ('' = none).  -> {index of the first, messages}: the
# bodies as one JSON array text when they are small together (one reply and one parse instead of one per message;
# each body is a JSON object), else as a list of bodies.
_LUA_READ = r"""
local n = redis.call('LLEN', KEYS[1])
local lo, hi = 0, n - 1
if ARGV[3] ~= '' then lo = math.max(lo, tonumber(ARGV[3])) end
if ARGV[2] ~= '' then hi = math.min(hi, tonumber(ARGV[2]) - 2) end
if ARGV[1] ~= '' then lo = math.max(lo, hi - tonumber(ARGV[1]) + 1) end
if hi < lo then return {0, '[]'} end
local bodies = redis.call('LRANGE', KEYS[1], lo, hi)
local size = 0
for i = 1, #bodies do size = size + #bodies[i] end
if size > 1048576 then return {lo, bodies} end
return {lo, '[' .. table.concat(bodies, ',') .. ']'}
"""

# ---- cluster: the scripts of the index slot ----

# Cluster, on the session's slot. KEYS: S, M, I. ARGV: user ('' any), cutoff_us ('' none).
# -> {1, user, agent, updated_us} deleted; {-1, user, agent, updated_us} kept (another owner or newer); {0} missing.
_LUA_DELETE_ONE = r"""
local h = redis.call('HMGET', KEYS[1], 'user_id', 'agent_id', 'updated_at')
if not h[3] then
  redis.call('UNLINK', KEYS[2], KEYS[3])
  return {0}
end
local out = {1, h[1] or '', h[2] or '', h[3]}
if (ARGV[1] ~= '' and h[1] ~= ARGV[1]) or (ARGV[2] ~= '' and tonumber(h[3]) >= tonumber(ARGV[2])) then
  out[1] = -1
  return out
end
redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3])
return out
"""

# KEYS: activity, owners, expiring, ahead (one slot); a user's or agent's index is ARGV[1] .. 'u:' / 'g:' .. id, in
# the same slot. An owner is "user\0agent" ('' for none). Scores only go up (ZADD GT).
_LUA_INDEX_COMMON = r"""
local base = ARGV[1]
local function parts(owner)
  local cut = string.find(owner, '\0', 1, true)
  return string.sub(owner, 1, cut - 1), string.sub(owner, cut + 1)
end
local function raise(sid, owner, up, ttl, now_ms)
  redis.call('ZADD', KEYS[1], 'GT', up, sid)
  local uid, aid = parts(owner)
  if uid ~= '' then redis.call('ZADD', base .. 'u:' .. uid, 'GT', up, sid) end
  if aid ~= '' then redis.call('ZADD', base .. 'g:' .. aid, 'GT', up, sid) end
  if ttl > 0 then redis.call('ZADD', KEYS[3], 'GT', string.format('%.0f', now_ms + ttl), sid) end
end
"""

# ARGV: base, sid, up_us, ttl_ms, now_ms  -> the owner the entries were raised for, or nil when the index slot does
# not know the session (the caller then reads the owner from the session).
_LUA_INDEX_RAISE = _LUA_INDEX_COMMON + r"""
local owner = redis.call('HGET', KEYS[2], ARGV[2])
if not owner then return false end
raise(ARGV[2], owner, ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]))
return owner
"""

# ARGV: base, sid, up_us, ttl_ms, now_ms, owner  -> 1. Records the owner and raises the entries.
_LUA_INDEX_ADD = _LUA_INDEX_COMMON + r"""
redis.call('HSET', KEYS[2], ARGV[2], ARGV[6])
raise(ARGV[2], ARGV[6], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]))
return 1
"""

# ARGV: base, then (sid, bound_us, owner or '') triples  -> the ids whose entries were removed. An entry scored above
# its bound is kept: a write newer than what the caller saw raised it.
_LUA_INDEX_DROP = _LUA_INDEX_COMMON + r"""
local removed = {}
for i = 2, #ARGV, 3 do
  local sid = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], sid)
  if not score or tonumber(score) <= tonumber(ARGV[i + 1]) then
    for _, owner in ipairs({ARGV[i + 2], redis.call('HGET', KEYS[2], sid) or ''}) do
      if owner ~= '' then
        local uid, aid = parts(owner)
        if uid ~= '' then redis.call('ZREM', base .. 'u:' .. uid, sid) end
        if aid ~= '' then redis.call('ZREM', base .. 'g:' .. aid, sid) end
      end
    end
    redis.call('ZREM', KEYS[1], sid)
    redis.call('HDEL', KEYS[2], sid)
    redis.call('ZREM', KEYS[3], sid)
    redis.call('ZREM', KEYS[4], sid)
    removed[#removed + 1] = sid
  end
end
return removed
"""

# ARGV: base, then (sid, updated_us) pairs: forget the ahead note of a session whose entry is no longer ahead.
_LUA_INDEX_SETTLE = _LUA_INDEX_COMMON + r"""
for i = 2, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if not score or tonumber(score) <= tonumber(ARGV[i + 1]) then redis.call('ZREM', KEYS[4], ARGV[i]) end
end
return 1
"""

# KEYS[5]: a user's index. ARGV: base, then (sid, bound_us) pairs: remove entries of sessions another user owns.
_LUA_INDEX_FORGET = r"""
for i = 2, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[5], ARGV[i])
  if score and tonumber(score) <= tonumber(ARGV[i + 1]) then redis.call('ZREM', KEYS[5], ARGV[i]) end
end
return 1
"""

# Cluster state: the keys of one slot set together. KEYS: keys. ARGV: px ('' for none), value per key.
_LUA_SET_MANY = r"""
for i = 1, #KEYS do
  if ARGV[1] == '' then redis.call('SET', KEYS[i], ARGV[i + 1]) else redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ARGV[1]) end
end
return #KEYS
"""


def _session_script(body: str, cluster: bool) -> str:
    """A session script's full text: the shared helpers, the index hooks of the deployment, then its body."""
    return _LUA_COMMON + (_LUA_INDEX_ELSEWHERE if cluster else _LUA_INDEX_HERE) + _LUA_SHRUNK + body


def scan_batches(client: Any, pattern: str, nodes: list[Any] | None = None) -> Iterator[list[bytes]]:
    """Key names matching a glob ``pattern``, a SCAN batch at a time (never KEYS: the server is never blocked).

    ``nodes``: a cluster client's primaries, each scanned in turn (a key lives on exactly one of them).
    """
    for node in nodes or [None]:
        cursor = 0
        while True:
            if node is None:
                cursor, found = client.scan(cursor, match=pattern, count=_SCAN_COUNT)
            else:
                cursors, found = client.scan(cursor, match=pattern, count=_SCAN_COUNT, target_nodes=node)
                cursor = next(iter(cursors.values()))
            if found:
                yield found
            if cursor == 0:
                break


def unlink_matching(client: Any, pattern: str, nodes: list[Any] | None = None) -> int:
    """Delete every key matching ``pattern``, a batch at a time; returns how many were removed.

    UNLINK frees memory off the main thread and counts only keys it removed (not expired or already gone ones).
    """
    return sum(client.unlink(*batch) for batch in scan_batches(client, pattern, nodes))


class _Script:
    """A Lua script run by its SHA1 (EVALSHA); a node that does not know it yet gets the text once (EVAL, which also
    caches it there). redis-py's own Script would first load it into every primary of a cluster, which fails while
    any master is down, also for keys of the live ones."""

    def __init__(self, client: Any, text: str) -> None:
        self.client, self.text = client, text
        self.sha = hashlib.sha1(text.encode("utf-8")).hexdigest()

    def __call__(self, keys: list[str] | tuple[()] = (), args: list[Any] | tuple[()] = ()) -> Any:
        try:
            return self.client.evalsha(self.sha, len(keys), *keys, *args)
        except rx.NoScriptError:
            return self.client.eval(self.text, len(keys), *keys, *args)


class _Layout:
    """Key names (see the module docstring): the one-server layout, or the cluster one with hash tags."""

    def __init__(self, prefix: str, cluster: bool) -> None:
        self.prefix, self.cluster = prefix, cluster
        self.index = f"{prefix}:{{i:{prefix}}}:" if cluster else f"{prefix}:"
        self.kv = f"{prefix}:kv:"
        self.activity = self.index + "activity"
        # The index slot's keys every index script declares: activity, owners, expiring, ahead.
        self.index_keys = [self.activity, self.index + "owners", self.index + "expiring", self.index + "ahead"]

    def session(self, session_id: str) -> list[str]:
        """The session's hash, message list and id index, in that order (one slot in a cluster)."""
        if self.cluster:
            tagged = f"{self.prefix}:{{s:{session_id}}}"
            return [tagged, tagged + ":m", tagged + ":i"]
        return [f"{self.prefix}:{kind}:{session_id}" for kind in "smi"]

    def user(self, user_id: str) -> str:
        return f"{self.index}u:{user_id}"

    def agent(self, agent_id: str) -> str:
        return f"{self.index}g:{agent_id}"


class _Connection(SharedConnection):
    """One redis-py client shared by the conversation and state stores of a URL; closed with the last of them."""

    def __init__(self, url: StoreURL, options: Mapping[str, Any], *, asynchronous: bool = False) -> None:
        given = {**url.query, **options}
        opts, driver = resolve_options(f"{url.scheme}://", OPTIONS, given, passthrough=True)
        unknown = sorted(set(driver) - DRIVER_OPTIONS)
        if unknown:
            valid = ", ".join(sorted(OPTIONS)) + "; redis-py options: " + ", ".join(sorted(DRIVER_OPTIONS))
            raise errors.ConfigError(f"unknown option {unknown[0]!r} for {url.scheme}://; valid options: {valid}")
        self.cluster: bool = _wants_cluster(url, opts["cluster"], "cluster" in given)
        number = url.path.strip("/")
        if self.cluster:
            if number not in ("", "0"):
                raise errors.ConfigError(f"{url.render()}: a Redis Cluster has only database 0; drop /{number[:40]} from the URL")
        elif len(url.hosts) > 1:
            raise errors.ConfigError(
                f"{url.render()}: a Redis URL names one server; for a Redis Cluster use redis+cluster://host:port,host:port "
                "(Sentinel or a proxy for a primary with replicas)"
            )
        elif url.scheme != "unix" and number and not (number.isascii() and number.isdigit()):
            # redis-py quietly falls back to database 0 for a path it cannot read (a typo like /O or /db1).
            raise errors.ConfigError(f"{url.render()}: the path names a Redis database by number (e.g. /0), not {number[:40]!r}")
        self.prefix: str = opts["prefix"]
        self.ttl: float | None = opts["ttl"]
        self.layout = _Layout(self.prefix, self.cluster)
        self.where = f"Redis {'Cluster ' if self.cluster else ''}at {url.render()}"
        self.password = url.password
        self.url = url.render()
        self.asynchronous = asynchronous
        SharedConnection.__init__(self)
        query = {k: _query_text(v) for k, v in driver.items()}
        if self.cluster:
            targets = [_node_url(url, host, port) for host, port in url.hosts]
        else:
            targets = [url.render(hide_password=False).split("?", 1)[0]]
        targets = [f"{t}?{urlencode(query)}" if query else t for t in targets]
        kwargs = {k: v for k, v in _DEFAULTS.items() if k not in query}
        # The async API runs this same code on redis.asyncio (see praison_db.bridge): only the client differs.
        plain, retry_class = _async_driver() if asynchronous else (redis.Redis, Retry)
        # A restarted server costs the next call a reconnect. Only connection errors are retried: a timeout may mean
        # the server ran the command, and re-sending a pop or an incr would apply it twice.
        retry = retry_class(ExponentialBackoff(cap=1.0, base=0.05), retries=4, supported_errors=(rx.ConnectionError,))
        try:
            first: Any = plain.from_url(targets[0], **kwargs, retry=retry)
        except (ValueError, TypeError) as e:
            raise errors.ConfigError(f"invalid Redis URL or option for {url.render()}: {redacted(e, url.secrets, limit=200)}") from None
        self.client: Any = first
        self._contact(plain, targets, kwargs, retry_class)
        if self.cluster:
            first.aclose() if asynchronous else first.close()
            try:
                self.client = _cluster_client(asynchronous, targets, url.hosts, kwargs, retry_class)
            except Exception as e:
                raise self.translate(e) from e

    def _contact(self, plain: Any, targets: list[str], kwargs: dict[str, Any], retry_class: Any) -> None:
        """The first contact, through a client of its own that waits no longer than the connect timeout and does not
        retry: a server that is down, silent, or not speaking TLS to rediss:// fails within seconds, instead of after
        the 30 s read timeout (the TLS handshake runs under it) or once per retry. A cluster needs one live node."""
        limit = self.client.get_connection_kwargs().get("socket_connect_timeout") or _DEFAULTS["socket_connect_timeout"]
        failure: Exception | None = None
        for target in targets:
            try:
                with plain.from_url(target, **{**kwargs, "socket_timeout": limit, "retry": retry_class(NoBackoff(), 0)}) as probe:
                    probe.ping()
                    if self.cluster:
                        probe.execute_command("CLUSTER", "INFO")  # a server without cluster support refuses it
                return
            except Exception as e:  # noqa: BLE001 - another startup node may answer
                failure = e
                if isinstance(e, rx.ResponseError):
                    break
        assert failure is not None
        self.client.aclose() if self.asynchronous else self.client.close()  # the one-server client, nothing in flight
        raise self.translate(failure) from failure

    def classify(self, error: BaseException) -> errors.Error | None:
        return _classify(error, self.where, self.password)

    def primaries(self) -> list[Any] | None:
        """A cluster client's primaries (each holds a share of the keys), None on one server."""
        return list(self.client.get_primaries()) if self.cluster else None

    def _dispose(self) -> None:
        # Idle connections close now; one a call in flight is using is closed when that call hands it back. Closing
        # it under the call's feet (what redis-py's close() and aclose() do) races the driver's reconnect: a read on
        # a reused socket, or two readers on one, then waits out the 30 s socket timeout, so a call in flight during
        # close() could hang that long instead of finishing or raising StoreClosed.
        if not self.cluster:
            pools = [self.client.connection_pool]
        elif self.asynchronous:  # redis.asyncio's cluster nodes hold their connections themselves
            from ..bridge import Bridged

            pools = [Bridged(_AsyncNodePool(node)) for node in self.client.get_nodes()]
        else:
            pools = [node.redis_connection.connection_pool for node in self.client.get_nodes() if node.redis_connection]
        for pool in pools:
            pool.disconnect(inuse_connections=False)
            if hasattr(pool, "update_active_connections_for_reconnect"):  # closes each one as it is handed back
                pool.update_active_connections_for_reconnect()
            else:  # an older redis-py cannot close a connection on its return: close it now
                pool.disconnect()


def _wants_cluster(url: StoreURL, option: bool, given: bool) -> bool:
    by_scheme = url.scheme.endswith("+cluster")
    if by_scheme and given and not option:
        raise errors.ConfigError(f"{url.render()}: cluster=false contradicts the {url.scheme}:// scheme; drop one of them")
    if (by_scheme or option) and url.scheme == "unix":
        raise errors.ConfigError(f"{url.render()}: redis-py reaches a Redis Cluster over TCP; give host:port startup nodes")
    return by_scheme or option


def _node_url(url: StoreURL, host: str, port: int | None) -> str:
    """A one-node redis:// or rediss:// URL with the credentials of ``url``: how redis-py takes a cluster's options."""
    scheme = "rediss" if url.scheme.startswith("rediss") else "redis"
    auth = ""
    if url.username is not None or url.password is not None:
        auth = quote(url.username or "", safe="")
        if url.password is not None:
            auth += ":" + quote(url.password, safe="")
        auth += "@"
    where = f"[{host}]" if ":" in host else host
    return f"{scheme}://{auth}{where}:{port or 6379}"


def _cluster_client(asynchronous: bool, targets: list[str], hosts: tuple[tuple[str, int | None], ...], kwargs: dict[str, Any], retry_class: Any) -> Any:
    """redis-py's cluster client, with every host of the URL as a startup node; it finds the slots' owners itself."""
    base, node_class = _cluster_classes(asynchronous)
    others = [node_class(host, port or 6379) for host, port in hosts[1:]]
    # Failover and resharding: MOVED/ASK are followed, CLUSTERDOWN and connection errors retried a few times with
    # backoff (a master that is down fails the call within about a second); timeouts are not retried (see above).
    retry = retry_class(ExponentialBackoff(cap=1.0, base=0.05), retries=3)
    client = base.from_url(targets[0], startup_nodes=others, retry=retry, **kwargs)
    if not asynchronous:
        return client  # it has read the slot map already
    from ..bridge import Bridged

    bridged = Bridged(client)
    bridged.initialize()
    return bridged


_CLUSTER_CLASSES: dict[bool, tuple[Any, Any]] = {}


def _cluster_classes(asynchronous: bool) -> tuple[Any, Any]:
    """redis-py's cluster client class (sync or asyncio) retrying what is safe to retry, and its node class."""
    if asynchronous not in _CLUSTER_CLASSES:
        if asynchronous:
            import redis.asyncio.cluster as module
        else:
            import redis.cluster as module  # type: ignore[no-redef]
        Base, Node = module.RedisCluster, module.ClusterNode

        # redis-py retries timeouts too; a timed-out pop or incr may have run, so only what never ran is retried.
        safe = type("PraisonRedisCluster", (Base,), {"__module__": __name__, "ERRORS_ALLOW_RETRY": (rx.ConnectionError, rx.ClusterDownError, rx.SlotNotCoveredError)})
        _CLUSTER_CLASSES[asynchronous] = (safe, Node)
    return _CLUSTER_CLASSES[asynchronous]


def _async_driver() -> tuple[Any, Any]:
    from redis.asyncio import Redis as AsyncRedis
    from redis.asyncio.retry import Retry as AsyncRetry

    from ..bridge import Bridged

    return Bridged(AsyncRedis), AsyncRetry


class _AsyncNodePool:
    """A redis.asyncio cluster node seen as a connection pool, for :meth:`_Connection._dispose`."""

    def __init__(self, node: Any) -> None:
        self.node = node
        if hasattr(node, "update_active_connections_for_reconnect"):
            self.update_active_connections_for_reconnect = node.update_active_connections_for_reconnect

    async def disconnect(self, inuse_connections: bool = True) -> None:
        if inuse_connections or not hasattr(self.node, "disconnect_free_connections"):
            await self.node.disconnect()
        else:
            await self.node.disconnect_free_connections()


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
        self.layout = conn.layout
        self.r: Any = conn.client  # a redis.Redis or RedisCluster, or a bridged redis.asyncio one for the async API

    def _close(self) -> None:
        self.conn.release()

    def _server_version(self) -> str | None:
        info = self.r.info("server")
        if info and all(isinstance(v, dict) for v in info.values()):  # a cluster answers per node
            info = next(iter(info.values()))
        return str(info.get("redis_version", "?"))


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


_message = message_from_dict  # a read parses many bodies at once, then builds each message


def _session_from_row(row: list[Any]) -> Session | None:
    """A session from a row of _LUA_LIST (false for a missing field); None if the session is gone."""
    sid, _, user_id, agent_id, session_type, name, metadata, created, updated, count = row
    if updated is False:
        return None
    return Session.trusted(
        session_id=sid,
        user_id=None if user_id is False else user_id,
        agent_id=None if agent_id is False else agent_id,
        session_type=session_type,
        name=None if name is False else name,
        metadata=loads(metadata),
        created_at=_from_us(created),
        updated_at=_from_us(updated),
        message_count=int(count),
    )


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2]))


class RedisConversationStore(_RedisStore, ConversationStore):
    """ConversationStore on plain Redis: a hash per session, a list of messages, sorted sets for listing."""

    OPTIONS = OPTIONS
    capabilities = _CAPS

    def __init__(self, conn: _Connection) -> None:
        self._bind(conn)
        r, cluster = self.r, conn.cluster

        def session_script(body: str) -> Any:
            return _Script(r, _session_script(body, cluster))

        self._create = session_script(_LUA_CREATE)
        self._append_script = session_script(_LUA_APPEND)
        self._update = session_script(_LUA_UPDATE)
        self._import_script = session_script(_LUA_IMPORT)
        self._import_messages_script = session_script(_LUA_IMPORT_MESSAGES)
        self._pop_script = session_script(_LUA_POP)
        self._truncate_script = session_script(_LUA_TRUNCATE)
        self._read = _Script(r, _LUA_READ)
        if cluster:
            self._index = _ClusterIndex(self)
        else:
            self._delete = _Script(r, _LUA_DELETE)
            self._sweep = _Script(r, _LUA_SWEEP)
            self._list_first = _Script(r, _LUA_LIST)

    def state_store(self) -> RedisStateStore:
        """A StateStore with the same prefix, sharing this store's connection pool."""
        return RedisStateStore(self.conn)

    # ---- helpers ----

    def _ttl_ms(self) -> str:
        return str(_ms(self.conn.ttl)) if self.conn.ttl else "0"

    def _script_head(self, session_id: str, now: datetime, owner: str = "") -> list[str]:
        return [self.conn.prefix, session_id, str(_us(now)), self._ttl_ms(), str(int(time.time() * 1000)), owner]

    def _sweep_expired(self) -> None:
        """Drop index entries of sessions Redis has expired (bounded work per call)."""
        if self.conn.cluster:
            self._index.sweep()
            return
        self._sweep(args=[self.conn.prefix, str(int(time.time() * 1000)), "1000"])

    def _hashes(self, sids: list[bytes]) -> list[dict[bytes, bytes]]:
        pipe = self.r.pipeline(transaction=False)
        for sid in sids:
            pipe.hgetall(self.layout.session(sid.decode())[0])
        return pipe.execute()

    def _write(self, session_id: str, now: datetime, run: Callable[[str], Any], changed: Callable[[Any], bool]) -> Any:
        """``run(owner)`` runs a session script that may move updated_at; in a cluster, after the index step (see
        ``_ClusterIndex.write``). Returns the script's result, or None when the session does not exist."""
        if not self.conn.cluster:
            return run("")
        return self._index.write(session_id, _us(now), run, changed)

    # ---- sessions ----

    def _create_session(self, session: Session) -> Any:
        """The create script's result: {1} created, or {0, HGETALL of the session that was there}."""

        def run() -> Any:
            head = self._script_head(session.session_id, session.updated_at)
            return self._create(keys=self.layout.session(session.session_id), args=head + _session_fields(session))

        if not self.conn.cluster:
            return run()
        return self._index.create(session, run, lambda result: result[0] == 1)

    def _insert_session(self, session: Session) -> bool:
        return self._create_session(session)[0] == 1

    def _get_or_insert_session(self, session: Session) -> Session:
        if self.conn.cluster:
            # Look first: creating raises the index entries, which an existing session should not see moved.
            existing = self._get_session(session.session_id)
            if existing is not None:
                return existing
        result = self._create_session(session)
        return session if result[0] == 1 else _session_from_hash(session.session_id, _pairs(result[1]))

    def _get_session(self, session_id: str) -> Session | None:
        h = self.r.hgetall(self.layout.session(session_id)[0])
        return _session_from_hash(session_id, h) if h else None

    def _index_of(self, flt: SessionFilter) -> str:
        """The most selective index for a filter; the remaining filters are checked on the sessions read."""
        if flt.user_id is not None:
            return self.layout.user(flt.user_id)
        if flt.agent_id is not None:
            return self.layout.agent(flt.agent_id)
        return self.layout.activity

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
        anchor = (_us(after[0]), after[1].encode("utf-8")) if after is not None else None
        index = self._index_of(flt)
        found: list[Session] = []
        if anchor is None and not self.conn.cluster:
            # The first page, sweep included, is one script; the walk goes on below only if filters or expired
            # sessions left it short.
            rows = json.loads(self._list_first(keys=[index], args=[self.conn.prefix, str(int(time.time() * 1000)), "1000", str(limit)]))
            for row in rows:
                s = _session_from_row(row)
                if s is not None and flt.matches(s):
                    found.append(s)
            if len(found) >= limit or len(rows) < limit:
                return found[:limit]
            anchor = (int(float(rows[-1][1])), rows[-1][0].encode("utf-8"))
        else:
            self._sweep_expired()
        if self.conn.cluster:
            return self._index.page(index, flt, limit, anchor)
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
        keys = self.layout.session(session_id)

        def run(owner: str) -> Any:
            return self._update(keys=keys, args=self._script_head(session_id, now, owner) + ops)

        flat = self._write(session_id, now, run, lambda flat: flat is not None)
        return _session_from_hash(session_id, _pairs(flat)) if flat else None

    def _delete_session(self, session_id: str, user_id: str | None) -> bool:
        if self.conn.cluster:
            return self._index.delete_session(session_id, user_id)
        args = [self.conn.prefix, user_id or "", "", session_id]
        return self._delete(keys=[self.layout.activity], args=args) > 0

    def _delete_sessions(self, *, user_id: str | None = None, idle_before: datetime | None = None) -> int:
        self._sweep_expired()
        if self.conn.cluster:
            return self._index.delete_sessions(user_id, None if idle_before is None else _us(idle_before))
        total = 0
        if user_id is not None:
            index = self.layout.user(user_id)
            # Every batch leaves the user's index (deleted, or stale and dropped), so this loop ends; the check on a
            # repeated batch only guards against data this code did not write.
            previous: list[bytes] = []
            while (sids := self.r.zrange(index, 0, _BATCH - 1)) and sids != previous:
                total += self._delete(keys=[index], args=[self.conn.prefix, user_id, "", *sids])
                previous = sids
            return total
        assert idle_before is not None
        index, cutoff = self.layout.activity, _us(idle_before)
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
        tail = [str(len(drafted))] + [m.id for m in drafted] + [message_body(m) for m in drafted]
        keys = self.layout.session(session_id)

        def run(owner: str) -> Any:
            return self._append_script(keys=keys, args=self._script_head(session_id, now, owner) + tail)

        flat = self._write(session_id, now, run, lambda flat: flat is not None and b"" in flat[1::2])
        if flat is None:
            raise missing_session(session_id)
        out = []
        for m, seq, body in zip(drafted, flat[::2], flat[1::2]):
            out.append(m.model_copy(update={"seq": int(seq)}) if body == b"" else message_from_body(session_id, int(seq), body))
        return out

    def _get_messages(self, session_id: str, limit: int | None, before_seq: int | None, after_seq: int | None) -> list[Message]:
        args = ["" if v is None else str(v) for v in (limit, before_seq, after_seq)]
        first, raw = self._read(keys=[self.layout.session(session_id)[1]], args=args)
        seq = int(first) + 1
        if isinstance(raw, bytes):  # the bodies as one JSON array
            return [_message(session_id, seq + i, d) for i, d in enumerate(json.loads(raw))]
        return [message_from_body(session_id, seq + i, body) for i, body in enumerate(raw)]

    def _count_messages(self, session_id: str) -> int:
        return int(self.r.hget(self.layout.session(session_id)[0], "message_count") or 0)

    def _pop(self, session_id: str, now: datetime) -> Message | None:
        keys = self.layout.session(session_id)

        def run(owner: str) -> Any:
            return self._pop_script(keys=keys, args=self._script_head(session_id, now, owner))

        result = self._write(session_id, now, run, lambda result: result is not None)
        return None if result is None else message_from_body(session_id, int(result[0]), result[1])

    def _truncate(self, session_id: str, after_seq: int, now: datetime) -> int:
        keys = self.layout.session(session_id)

        def run(owner: str) -> Any:
            return self._truncate_script(keys=keys, args=self._script_head(session_id, now, owner) + [str(after_seq)])

        return int(self._write(session_id, now, run, lambda removed: bool(removed)) or 0)

    def _import_messages(self, session_id: str, messages: list[Message], updated_at: datetime) -> int:
        tail = [str(len(messages))] + [m.id for m in messages] + [str(m.seq) for m in messages] + [message_body(m) for m in messages]
        keys = self.layout.session(session_id)

        def run(owner: str) -> Any:
            return self._import_messages_script(keys=keys, args=self._script_head(session_id, updated_at, owner) + tail)

        # Storing nothing still moves updated_at (never back), as on one server: only a refused seq changes nothing.
        result = self._write(session_id, updated_at, run, lambda result: result is not None and not isinstance(result, list))
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

        def run() -> Any:
            head = self._script_head(session.session_id, session.updated_at) + [str(len(fields)), *fields, str(len(messages))]
            args = head + [m.id for m in messages] + [message_body(m) for m in messages]
            return self._import_script(keys=self.layout.session(session.session_id), args=args)

        if not self.conn.cluster:
            return bool(run() == 1)
        return bool(self._index.create(session, run, lambda result: result == 1) == 1)


def _owner(user_id: str | None, agent_id: str | None) -> str:
    """How the cluster's index slot names a session's owner: "user\\0agent" ('' for none; ids never hold NUL)."""
    return f"{user_id or ''}\0{agent_id or ''}"


class _ClusterIndex:
    """A Redis Cluster's listing indexes: one slot per prefix, written in steps of their own around the session's
    script, in the order that keeps listings exact (see the module docstring)."""

    def __init__(self, store: RedisConversationStore) -> None:
        self.store, self.r, self.layout, self.conn = store, store.r, store.layout, store.conn
        self.ahead = self.layout.index_keys[3]
        self.expiring = self.layout.index_keys[2]
        r = self.r
        self._raise = _Script(r, _LUA_INDEX_RAISE)
        self._add = _Script(r, _LUA_INDEX_ADD)
        self._drop = _Script(r, _LUA_INDEX_DROP)
        self._settle = _Script(r, _LUA_INDEX_SETTLE)
        self._forget = _Script(r, _LUA_INDEX_FORGET)
        self._delete_one = _Script(r, _LUA_DELETE_ONE)

    # ---- the index slot's primitives ----

    def _run(self, script: Any, args: list[Any], extra_key: str | None = None) -> Any:
        keys = self.layout.index_keys + ([extra_key] if extra_key else [])
        return script(keys=keys, args=[self.layout.index, *args])

    def _clock(self) -> list[str]:
        return [self.store._ttl_ms(), str(int(time.time() * 1000))]

    def raise_entries(self, sid: str, up: int) -> str | None:
        """Raise the session's entries to ``up``; the owner the index slot knows, or None if it knows none."""
        owner = self._run(self._raise, [sid, str(up), *self._clock()])
        return None if owner is None else owner.decode("utf-8")

    def add(self, sid: str, up: int, owner: str) -> None:
        """Record the owner and raise the entries to ``up`` (adding them if missing)."""
        self._run(self._add, [sid, str(up), *self._clock(), owner])

    def note_ahead(self, sid: str | bytes, score: int) -> None:
        """Remember a session whose entry may be ahead of it, for pages after the first (a hint, never wrong to add)."""
        self.r.zadd(self.ahead, {sid: score}, gt=True)

    def owners(self, sids: list[str]) -> list[tuple[str, int] | None]:
        """(owner, updated_us) of each session from its own hash, None for one that does not exist."""
        pipe = self.r.pipeline(transaction=False)
        for sid in sids:
            pipe.hmget(self.layout.session(sid)[0], "user_id", "agent_id", "updated_at")
        found: list[tuple[str, int] | None] = []
        for uid, aid, up in pipe.execute():
            found.append(None if up is None else (_owner(_text(uid), _text(aid)), int(up)))
        return found

    def drop(self, items: list[tuple[str, int, str]]) -> None:
        """Remove the entries of (session id, bound, known owner): only where the score is at most the bound, since a
        higher one is a newer write. Then look at the sessions once more: one created again meanwhile (its index step
        may have come before the removal) gets its entries back, so a live session is never left out."""
        if not items:
            return
        removed = self._run(self._drop, [x for sid, bound, owner in items for x in (sid, str(bound), owner)])
        sids = [sid.decode("utf-8") for sid in removed]
        for sid, found in zip(sids, self.owners(sids) if sids else []):
            if found is not None:
                self.add(sid, found[1], found[0])

    def delete_one(self, sid: str, *, user: str = "", cutoff: str = "") -> tuple[int, str, int]:
        """Delete the session if it matches: (1 deleted / -1 kept / 0 missing, its owner, its updated_us)."""
        out = self._delete_one(keys=self.layout.session(sid), args=[user, cutoff])
        if int(out[0]) == 0:
            return 0, "", 0
        return int(out[0]), _owner(_text(out[1]) or None, _text(out[2]) or None), int(out[3])

    # ---- writes ----

    def write(self, sid: str, up: int, run: Callable[[str], Any], changed: Callable[[Any], bool]) -> Any:
        """Index step, then the session's script. The entries are raised first, so they are never behind the session;
        a script that then changes nothing (an id already stored, nothing to pop) or fails leaves them ahead, and the
        session is noted so that later pages find it. The script refuses to run for an owner other than the one the
        index slot named (a session created again by someone else): the slot is corrected and the script retried."""
        owner = self.raise_entries(sid, up)
        for _ in range(3):
            if owner is None:
                found = self.owners([sid])[0]
                if found is None:
                    return None  # nothing written anywhere
                owner = found[0]
                self.add(sid, up, owner)
            try:
                result = run(owner)
            except rx.ResponseError as e:
                if str(e).startswith("PRAISON_OWNER"):
                    owner = None
                    continue
                self._note_quietly(sid, up)
                raise
            except Exception:
                self._note_quietly(sid, up)
                raise
            if not changed(result):
                self.note_ahead(sid, up)
            return result
        raise errors.IntegrityError(f"session {sid!r} changed owner three times during one call; try again")

    def _note_quietly(self, sid: str, up: int) -> None:
        try:
            self.note_ahead(sid, up)
        except Exception:  # noqa: BLE001 - the call fails with its own error; listings find the entry themselves
            pass

    def create(self, session: Session, run: Callable[[], Any], created: Callable[[Any], bool]) -> Any:
        """Index step, the session's create script, index step again. The first step makes every created session
        listed from the moment it exists; the second restores entries a concurrent removal of a session deleted
        under the same id may have taken in between."""
        sid, up = session.session_id, _us(session.updated_at)
        owner = _owner(session.user_id, session.agent_id)
        self.add(sid, up, owner)
        result = run()
        if created(result):
            self.add(sid, up, owner)
            return result
        # The id was taken: give the index slot the real owner back; our raise may have put the entry ahead.
        found = self.owners([sid])[0]
        if found is not None:
            self.add(sid, found[1], found[0])
        self.note_ahead(sid, up)
        return result

    def delete_session(self, sid: str, user_id: str | None) -> bool:
        status, owner, up = self.delete_one(sid, user=user_id or "")
        if status != 1:
            return False
        try:
            self.drop([(sid, up, owner)])
        except (rx.ConnectionError, rx.TimeoutError, rx.ClusterDownError, rx.RedisClusterException):
            pass  # the session is gone; listings skip and drop the entries left behind
        return True

    def delete_sessions(self, user_id: str | None, cutoff: int | None) -> int:
        """delete_user (``user_id``) or prune (``cutoff``, µs): batches from the index, each session deleted by its own
        script when it still matches; entries of sessions that are gone are dropped, entries behind their session
        raised, so every batch leaves the range and the loop ends."""
        index = self.layout.user(user_id) if user_id is not None else self.layout.activity
        total = 0
        if cutoff is not None:  # an entry ahead of its session lies above the range: the noted ones are looked at too
            total += self._delete_batch(index, [(sid, 2**53) for sid in self.r.zrange(self.ahead, 0, _BATCH - 1)], "", str(cutoff))
        previous: list[Any] = []
        while True:
            if user_id is not None:
                rows = self.r.zrange(index, 0, _BATCH - 1, withscores=True)
            else:
                rows = self.r.zrange(index, "-inf", f"({cutoff}", byscore=True, offset=0, num=_BATCH, withscores=True)
            if not rows or rows == previous:
                return total
            total += self._delete_batch(index, [(sid, int(score)) for sid, score in rows], user_id or "", "" if cutoff is None else str(cutoff))
            previous = rows

    def _delete_batch(self, index: str, rows: list[tuple[bytes, int]], user: str, cutoff: str) -> int:
        deleted, drops, foreign, behind = 0, [], [], []
        for raw, score in rows:
            sid = raw.decode("utf-8")
            status, owner, up = self.delete_one(sid, user=user, cutoff=cutoff)
            if status == 1:
                deleted += 1
                drops.append((sid, up, owner))
            elif status == 0:
                drops.append((sid, score, ""))
            elif user:
                foreign.append((sid, score))  # in this user's index, but another owner's session
            elif up > score:
                behind.append((sid, up, owner))  # newer than its entry says: raise it, it leaves the range
        self.drop(drops)
        if foreign:
            self._run(self._forget, [x for sid, score in foreign for x in (sid, str(score))], index)
        for sid, up, owner in behind:
            self.add(sid, up, owner)
        return deleted

    # ---- reads ----

    def page(self, index: str, flt: SessionFilter, limit: int, anchor: tuple[int, bytes] | None) -> list[Session]:
        """Walk the index newest first and place every session by its own hash: a session whose entry is ahead is held
        back until the walk passes its real position. Any session not walked yet has an entry, and so a real
        position, below the walk's, so the sessions above it are final: the walk stops once ``limit`` of them are."""
        found: dict[bytes, tuple[tuple[int, bytes], Session]] = {}
        junk: list[tuple[str, int, str]] = []
        ahead: list[tuple[bytes, int]] = []
        behind: list[Session] = []
        if anchor is not None:
            self._noted(anchor, flt, found)
        batch: list[tuple[bytes, int]] = []

        def flush() -> None:
            for (sid, score), h in zip(batch, self.store._hashes([sid for sid, _ in batch])):
                if not h:
                    junk.append((sid.decode("utf-8"), score, ""))
                    continue
                s = _session_from_hash(sid.decode("utf-8"), h)
                up = _us(s.updated_at)
                if up < score:
                    ahead.append((sid, score))
                elif up > score:
                    behind.append(s)
                self._consider(s, sid, anchor, flt, found)
            batch.clear()

        def final(position: tuple[int, bytes]) -> int:
            return sum(1 for key, _ in found.values() if key >= position)

        for sid, score in self.store._walk(index, anchor):
            batch.append((sid, score))
            if len(batch) >= max(limit - final((score, sid)), 20):
                flush()
                if final((score, sid)) >= limit:
                    break
        flush()
        self._repair(junk, ahead, behind)
        ordered = sorted(found.values(), key=lambda item: item[0], reverse=True)
        return [s for _, s in ordered[:limit]]

    @staticmethod
    def _consider(s: Session, sid: bytes, anchor: tuple[int, bytes] | None, flt: SessionFilter, found: dict[bytes, Any]) -> None:
        key = (_us(s.updated_at), sid)
        if (anchor is None or key < anchor) and flt.matches(s):
            found[sid] = (key, s)

    def _noted(self, anchor: tuple[int, bytes], flt: SessionFilter, found: dict[bytes, Any]) -> None:
        """A page after the first also takes the noted sessions whose entry lies above the anchor (the walk starts
        below it) while the session itself belongs below; notes no longer ahead are forgotten."""
        noted = self.r.zrange(self.ahead, anchor[0], "+inf", byscore=True, offset=0, num=1000)
        if not noted:
            return
        settled: list[str] = []
        for sid, h in zip(noted, self.store._hashes(noted)):
            if not h:
                settled += [sid.decode("utf-8"), "0"]
                continue
            s = _session_from_hash(sid.decode("utf-8"), h)
            settled += [s.session_id, str(_us(s.updated_at))]
            self._consider(s, sid, anchor, flt, found)
        self._run(self._settle, settled)

    def _repair(self, junk: list[tuple[str, int, str]], ahead: list[tuple[bytes, int]], behind: list[Session]) -> None:
        """What a walk saw, put right: entries of sessions that are gone dropped (if no newer write raised them),
        entries ahead noted, entries behind raised (raising is always safe: a newer write raises them further)."""
        self.drop(junk)
        for sid, score in ahead:
            self.note_ahead(sid, score)
        for s in behind:
            self.add(s.session_id, _us(s.updated_at), _owner(s.user_id, s.agent_id))

    def sweep(self) -> None:
        """Drop the entries of sessions Redis has expired (bounded work per call): the cluster twin of _LUA_SWEEP."""
        now_ms = int(time.time() * 1000)
        due = self.r.zrange(self.expiring, "-inf", now_ms, byscore=True, offset=0, num=1000, withscores=True)
        if not due:
            return
        pipe = self.r.pipeline(transaction=False)
        for sid, _ in due:
            pipe.pttl(self.layout.session(sid.decode("utf-8"))[0])
        gone, persisted, alive = [], [], {}
        for (sid, when), left in zip(due, pipe.execute()):
            if left == -2:
                gone.append((sid.decode("utf-8"), int(when) * 1000, ""))
            elif left == -1:
                persisted.append(sid)
            else:  # our clock and the server's disagree: look again when the server will have expired it
                alive[sid] = now_ms + left
        for sid, _, _ in gone:
            self.r.unlink(*self.layout.session(sid)[1:])
        self.drop(gone)
        if persisted:
            self.r.zrem(self.expiring, *persisted)
        if alive:
            self.r.zadd(self.expiring, alive, gt=True)


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
        self._base = conn.layout.kv
        self._set_slot: Any = _Script(self.r, _LUA_SET_MANY) if conn.cluster else None

    def _k(self, key: str) -> str:
        return self._base + key

    def _get_many(self, keys: list[str]) -> dict[str, Any]:
        if len(keys) == 1:  # get() and exists()
            value = self.r.get(self._k(keys[0]))
            return {} if value is None else {keys[0]: loads(value)}
        names = [self._k(k) for k in keys]
        # A cluster reads the keys of each slot with one MGET; values of different slots are read one after another.
        values = self.r.mget_nonatomic(names) if self.conn.cluster else self.r.mget(names)
        return {k: loads(v) for k, v in zip(keys, values) if v is not None}

    def _set_many(self, items: dict[str, str], expires_at: float | None) -> None:
        if expires_at is None and self.conn.ttl:
            expires_at = time.time() + self.conn.ttl
        # Relative expiry from the absolute time: the server's clock may differ from ours.
        px = None if expires_at is None else _ms(expires_at - time.time())
        if len(items) == 1:  # set(): one SET is atomic on its own, in a cluster too
            [(k, v)] = items.items()
            self.r.set(self._k(k), v, px=px)
            return
        if self._set_slot is not None:
            self._set_in_slots(items, px)
            return
        pipe = self.r.pipeline(transaction=True)  # MULTI/EXEC: all keys or none
        for k, v in items.items():
            pipe.set(self._k(k), v, px=px)  # a plain SET also drops any previous TTL
        pipe.execute()

    def _set_in_slots(self, items: dict[str, str], px: int | None) -> None:
        """Cluster: one script per hash slot, so the keys of a slot are set together; slots one after another."""
        slots: dict[int, list[tuple[str, str]]] = {}
        for k, v in items.items():
            name = self._k(k)
            slots.setdefault(self.r.keyslot(name), []).append((name, v))
        for pairs in slots.values():
            self._set_slot(keys=[name for name, _ in pairs], args=["" if px is None else str(px), *(v for _, v in pairs)])

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
        return scan_batches(self.r, _glob_escape(self._base + prefix) + "*", self.conn.primaries())

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
        return unlink_matching(self.r, _glob_escape(self._base + prefix) + "*", self.conn.primaries())
