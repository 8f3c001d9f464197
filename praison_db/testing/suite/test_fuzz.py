"""Property-based fuzzing of every public argument, on every backend.

Each generated call either succeeds and the data comes back exactly (deep-equal, types included: an int stays an
int, a float a float, -0.0 keeps its sign), or raises a praison_db.Error with a one-line message. Either way the
data stored before the call is unchanged. Any other exception (UnicodeEncodeError, OverflowError, a raw driver
error...) fails the test.

One store per backend serves all the examples of a test; each example works in a fresh session id or key.
``PRAISON_FUZZ_EXAMPLES=N`` runs N examples per test instead of the quick default; in CI the run is derandomized.
"""

from __future__ import annotations

import base64
import collections
import itertools
import json
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import praison_db
from praison_db.base import MAX_TTL_SECONDS
from praison_db.models import MAX_JSON_DEPTH
from praison_db.testing.suite.test_numbers import same

EXAMPLES = int(os.environ.get("PRAISON_FUZZ_EXAMPLES", "30"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("CI", "").lower() == "true" or "PRAISON_FUZZ_SEED" in os.environ,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Examples run and untyped exceptions seen, per test and backend; printed at the end of the module.
RUNS: collections.Counter[str] = collections.Counter()
UNTYPED: collections.Counter[str] = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or capture is None or not RUNS:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        for name in sorted(RUNS):
            reporter.write_line(f"fuzz {name}: {RUNS[name]} calls, {UNTYPED[name]} untyped exceptions")


class Outcome:
    """What a call did: its result, or the praison_db error it raised."""

    def __init__(self, result: Any = None, error: praison_db.Error | None = None) -> None:
        self.result, self.error = result, error

    @property
    def ok(self) -> bool:
        return self.error is None


def attempt(request: pytest.FixtureRequest, fn: Callable[[], Any]) -> Outcome:
    """Run ``fn``; a praison_db.Error is an outcome, anything else fails the example (and is counted)."""
    RUNS[request.node.name] += 1
    try:
        return Outcome(result=fn())
    except praison_db.Error as e:
        message = str(e)
        assert message and "\n" not in message, f"{type(e).__name__} message is not one line: {message!r}"
        return Outcome(error=e)
    except Exception as e:
        UNTYPED[request.node.name] += 1
        raise AssertionError(f"untyped exception escaped: {type(e).__name__}: {str(e)[:200]}") from e


def plain(value: Any) -> Any:
    """The value as it must come back: tuples are stored as lists."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def fresh() -> str:
    return "fz" + uuid.uuid4().hex[:12]


# ---- strategies ----

SURROGATES = ["\ud83d", "a\udc00b", "\ud83d\ude00" [0], "\udfff"]
awkward_text = st.one_of(
    st.text(max_size=12),  # valid Unicode
    st.text(st.characters(), max_size=12),  # anything, lone surrogates included
    st.sampled_from(["", " ", "\x00", "a\x00b", "🙂", "x" * 300, "é" * 256, *SURROGATES]),
)
huge_ints = st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**30, -(2**70), 10**4000])
ints = st.one_of(st.integers(), huge_ints)
floats = st.one_of(st.floats(), st.sampled_from([1e20, -0.0, 0.1 + 0.2, 5e-324, 1.7976931348623157e308]))
json_scalars = st.one_of(st.none(), st.booleans(), ints, floats, awkward_text)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(awkward_text, inner, max_size=4),
    ),
    max_leaves=12,
)
# Values that must be accepted: most examples should succeed, or round trips would rarely be checked.
valid_text = st.text(max_size=12).filter(lambda t: "\x00" not in t)
exact_numbers = st.one_of(
    st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([2**64, 10**30, -(2**70), -0.0, 1e20])
)
valid_json = st.recursive(
    st.one_of(st.none(), st.booleans(), exact_numbers, valid_text),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(valid_text, inner, max_size=4)),
    max_leaves=12,
)
valid_dicts = st.dictionaries(valid_text, valid_json, max_size=4)


def _nested(depth: int) -> Any:
    value: Any = {}
    for _ in range(depth - 1):
        value = {"d": value}
    return value


non_json = st.one_of(
    st.sampled_from(
        [
            {1, 2},
            b"bytes",
            bytearray(b"x"),
            object(),
            {(1, 2): "tuple key"},
            {1: "int key"},
            {None: "none key"},
            {"x": float("nan")},
            {"x": [float("inf")]},
            {"x": {1, 2}},
            {"when": timedelta(1)},
        ]
    ),
    # Built when drawn: a strategy holding a 10,000-deep dict could not even be printed.
    st.builds(_nested, st.sampled_from([MAX_JSON_DEPTH + 1, 10_000])),
    st.builds(lambda v: {"x": v}, st.sampled_from([b"", object(), {3}, float("-inf")])),
)
metadata_values = st.one_of(
    st.none(), valid_dicts, valid_dicts, valid_dicts, st.dictionaries(awkward_text, json_values, max_size=4), non_json, json_values
)
wrong_types = st.sampled_from([None, 0, 1.5, True, b"id", ["list"], {"a": 1}, {"set"}, object()])
valid_ids = st.text(min_size=1, max_size=20).filter(lambda t: "\x00" not in t)
ids = st.one_of(valid_ids, valid_ids, awkward_text, wrong_types)
optional_ids = st.one_of(st.none(), valid_ids, st.none(), valid_ids, awkward_text, wrong_types)
roles = st.one_of(st.sampled_from(["user", "assistant", "system", "tool"]), awkward_text, wrong_types)
contents = st.one_of(st.none(), valid_text, valid_text, awkward_text, wrong_types, st.just("🙂" * 1000))
tool_calls = st.one_of(
    st.none(),
    st.none(),
    st.lists(st.fixed_dictionaries({"id": valid_ids, "type": st.just("function"), "function": st.fixed_dictionaries({"name": valid_ids, "arguments": valid_dicts})}), min_size=1, max_size=2),
    st.lists(
        st.fixed_dictionaries(
            {"id": awkward_text, "type": st.just("function"), "function": st.fixed_dictionaries({"name": awkward_text, "arguments": json_values})}
        ),
        max_size=2,
    ),
    st.lists(json_values, max_size=2),
    non_json,
    wrong_types,
)
counts = st.one_of(st.none(), ints, st.booleans(), st.floats(), st.sampled_from(["5", [1], {}]))
ttls = st.one_of(
    st.none(),
    st.sampled_from([1e12, 1e300, 1e-300, 5e-324, -1, 0, 0.0, float("nan"), float("inf"), float("-inf"), True, False, "10", 2**64, 10**400, 86400, 3600.5]),
    st.floats(),
    st.integers(),
)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


cursors = st.one_of(
    st.none(),
    awkward_text,
    wrong_types,
    st.builds(lambda v: _b64(json.dumps(v).encode()), json_values),
    st.builds(
        lambda stamp, sid: _b64(json.dumps([stamp, sid]).encode()),
        st.sampled_from(["0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59+00:00", "2026-01-01T00:00:00", "2026-01-01T00:00:00+14:00", "nonsense"]),
        awkward_text,
    ),
    st.builds(lambda raw: _b64(raw), st.binary(max_size=40)),
)
timedeltas = st.one_of(
    st.sampled_from([timedelta.max, timedelta(days=999999999), timedelta(days=10**6), timedelta(days=-1), timedelta.min]),
    st.timedeltas(min_value=timedelta(days=3650)),
    wrong_types,
    st.integers(),
)


# ---- snapshots: what was stored before an example must be there after it ----


def seed_conversation(conv: Any) -> str:
    sid = fresh()
    conv.create_session(sid, user_id="owner", name="base", metadata={"n": 1e20, "big": 2**64})
    conv.add_messages(sid, [{"role": "user", "content": f"m{i}", "metadata": {"i": i}} for i in range(5)])
    return sid


def conv_snapshot(conv: Any, sid: str) -> Any:
    exported = conv.export_session(sid)
    exported["session"].pop("updated_at")
    return exported


def message_fields(m: Any) -> dict[str, Any]:
    return {k: getattr(m, k) for k in ("role", "content", "name", "tool_calls", "tool_call_id", "metadata")}


# ---- conversations ----


@FUZZ
@given(sid=st.one_of(st.none(), ids), user_id=optional_ids, agent_id=optional_ids, session_type=st.one_of(st.sampled_from(["agent", "team", "workflow"]), awkward_text, wrong_types), name=optional_ids, metadata=metadata_values, new_name=optional_ids, new_metadata=metadata_values)
def test_fuzz_sessions(conv, request, sid, user_id, agent_id, session_type, name, metadata, new_name, new_metadata):
    base = request.node.stash.setdefault(_BASE, seed_conversation(conv))
    before = conv_snapshot(conv, base)
    if isinstance(sid, str) and sid:
        sid = sid + fresh()  # fresh per example, still awkward
    created = attempt(request, lambda: conv.create_session(sid, user_id=user_id, agent_id=agent_id, session_type=session_type, name=name, metadata=metadata))
    if created.ok:
        session = created.result
        stored = conv.get_session(session.session_id)
        expected = {"user_id": user_id, "agent_id": agent_id, "session_type": session_type, "name": name, "metadata": plain(metadata) or {}}
        for got in (session, stored):
            assert same({k: getattr(got, k) for k in expected}, expected)
        if sid is not None:
            assert session.session_id == sid
        updated = attempt(request, lambda: conv.update_session(session.session_id, name=new_name, metadata=new_metadata))
        after = conv.get_session(session.session_id)
        if updated.ok:
            assert same((after.name, after.metadata), (new_name, plain(new_metadata) or {}))
        else:
            assert same((after.name, after.metadata), (name, plain(metadata) or {}))
    elif isinstance(sid, str) and attempt(request, lambda: conv.get_session(sid)).ok:
        assert conv.get_session(sid) is None  # a refused create stores nothing
    assert conv_snapshot(conv, base) == before


_BASE = pytest.StashKey[str]()


@FUZZ
@given(role=roles, content=contents, name=optional_ids, calls=tool_calls, call_id=optional_ids, metadata=metadata_values, other_sid=st.one_of(st.none(), ids), message_id=optional_ids)
def test_fuzz_add_message(conv, request, role, content, name, calls, call_id, metadata, other_sid, message_id):
    base = request.node.stash.setdefault(_BASE, seed_conversation(conv))
    before = conv_snapshot(conv, base)
    sid = fresh()
    conv.create_session(sid)
    target = sid if other_sid is None else other_sid
    added = attempt(request, lambda: conv.add_message(target, role, content, id=message_id, name=name, tool_calls=calls, tool_call_id=call_id, metadata=metadata))
    if added.ok:
        assert message_id is None or added.result.id == message_id
        assert target == sid or conv.get_session(target) is not None
        expected = {"role": role, "content": content, "name": name, "tool_calls": plain(calls), "tool_call_id": call_id, "metadata": plain(metadata) or {}}
        (stored,) = conv.get_messages(target, limit=1)
        assert same(message_fields(added.result), expected) and same(message_fields(stored), expected)
        assert stored.seq == added.result.seq
    else:
        assert conv.count_messages(sid) == 0
    assert conv_snapshot(conv, base) == before


def _generated(items: list[Any]) -> Iterator[Any]:
    yield from items


message_dicts = st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(["user", "assistant"]), roles), "content": contents},
    optional={"id": optional_ids, "name": optional_ids, "metadata": metadata_values, "tool_calls": tool_calls, "tool_call_id": optional_ids},
)
def _id_of(message: dict[str, Any]) -> Any:
    """Batches keep their ids distinct (a repeated id is stored once, which the expectations below do not model)."""
    given_id = message.get("id")
    return given_id if isinstance(given_id, str) else object()


message_lists = st.lists(message_dicts, max_size=4, unique_by=_id_of)
batches = st.one_of(
    message_lists,
    message_lists.map(_generated),
    message_lists.map(tuple),
    st.sampled_from([None, "text", b"bytes", 5, {"role": "user", "content": "a dict, not a list"}, [None], ["text"], [[("role", "user")]]]),
)


@FUZZ
@given(messages=batches)
def test_fuzz_add_messages(conv, request, messages):
    base = request.node.stash.setdefault(_BASE, seed_conversation(conv))
    before = conv_snapshot(conv, base)
    sid = fresh()
    conv.create_session(sid)
    conv.add_message(sid, "user", "first")
    items = list(messages) if isinstance(messages, Iterator) else messages
    if isinstance(messages, Iterator):
        messages = _generated(items)
    added = attempt(request, lambda: conv.add_messages(sid, messages))
    stored = conv.get_messages(sid)
    if added.ok:
        expected = [
            {"role": m["role"], "content": m.get("content"), "name": m.get("name"), "tool_calls": plain(m.get("tool_calls")), "tool_call_id": m.get("tool_call_id"), "metadata": plain(m.get("metadata")) or {}}
            for m in items
        ]
        assert same([message_fields(m) for m in added.result], expected)
        assert same([message_fields(m) for m in stored[1:]], expected)
        assert [m.seq for m in stored] == list(range(1, len(items) + 2))
    else:
        assert [m.content for m in stored] == ["first"]  # all or nothing
        assert conv.get_session(sid).message_count == 1
    assert conv_snapshot(conv, base) == before


@FUZZ
@given(limit=counts, before_seq=counts, after_seq=counts, page_limit=counts, cursor=cursors, user_id=optional_ids, older_than=timedeltas, sid=ids)
def test_fuzz_reads(conv, request, limit, before_seq, after_seq, page_limit, cursor, user_id, older_than, sid):
    base = request.node.stash.setdefault(_BASE, seed_conversation(conv))
    before = conv_snapshot(conv, base)
    read = attempt(request, lambda: conv.get_messages(base, limit=limit, before_seq=before_seq, after_seq=after_seq))
    if read.ok:
        picked = [m for m in before["messages"] if (before_seq is None or m["seq"] < before_seq) and (after_seq is None or m["seq"] > after_seq)]
        if limit is not None:
            picked = picked[-limit:] if limit else []
        assert [m.seq for m in read.result] == [m["seq"] for m in picked]
    kwargs = {"limit": page_limit} if page_limit is not None else {}
    page = attempt(request, lambda: conv.list_sessions(user_id=user_id, cursor=cursor, **kwargs))
    if page.ok and user_id is not None:
        assert all(s.user_id == user_id for s in page.result)
    walked = attempt(request, lambda: list(itertools.islice(conv.iter_sessions(user_id=user_id), 3)))
    if walked.ok and user_id is not None:
        assert all(s.user_id == user_id for s in walked.result)
    pruned = attempt(request, lambda: conv.prune(older_than=older_than))
    if pruned.ok:
        assert pruned.result == 0  # every session here was active within the last few minutes
    for call in (lambda: conv.get_session(sid), lambda: conv.count_messages(sid), lambda: conv.get_messages(sid), lambda: conv.export_session(sid), lambda: conv.delete_session(sid + "-missing" if isinstance(sid, str) else sid), lambda: conv.delete_user(sid + "-missing" if isinstance(sid, str) else sid)):
        outcome = attempt(request, call)
        if outcome.ok and call is not None and outcome.result not in (None, 0, False, []):
            pytest.fail(f"a made-up id found something: {outcome.result!r:.80}")
    assert conv_snapshot(conv, base) == before


# ---- state ----


def seed_state(state: Any) -> dict[str, Any]:
    values = {f"base-{uuid.uuid4().hex[:8]}-{i}": v for i, v in enumerate([1, 2**64, 1e20, -0.0, {"a": [1, "x"]}, "text", None])}
    state.set_many(values)
    return values


_STATE = pytest.StashKey[dict]()


def state_unchanged(state: Any, values: dict[str, Any]) -> None:
    assert same(state.get_many(list(values)), values)


@FUZZ
@given(key=ids, value=st.one_of(json_values, non_json), ttl=ttls, many=st.dictionaries(st.one_of(awkward_text, st.integers()), st.one_of(json_values, non_json), max_size=3))
def test_fuzz_state_values(state, request, key, value, ttl, many):
    base = request.node.stash.setdefault(_STATE, seed_state(state))
    if isinstance(key, str) and key:
        key = key + fresh()
    stored = attempt(request, lambda: state.set(key, value, ttl=ttl))
    if stored.ok:
        lives = ttl is None or ttl >= 60  # a short TTL may legitimately expire before the read
        if lives:
            assert same(state.get(key, "<missing>"), plain(value))
            remaining = state.ttl(key)
            assert (remaining is None) == (ttl is None) and (remaining is None or remaining <= ttl)
        assert state.delete(key) in (True, False)
    elif isinstance(key, str) and attempt(request, lambda: state.exists(key)).ok:
        assert not state.exists(key)
    # A batch with one bad entry stores nothing, and never touches the keys it would have overwritten.
    victim = next(iter(base))
    mapping = {victim: "overwritten", **{(k + fresh() if isinstance(k, str) else k): v for k, v in many.items()}}
    batch = attempt(request, lambda: state.set_many(mapping, ttl=ttl))
    if batch.ok:
        assert same(state.get(victim), "overwritten") or (ttl is not None and ttl < 60)
        expected = {k: plain(v) for k, v in mapping.items() if k != victim}
        if ttl is None or ttl >= 60:
            assert same(state.get_many(list(expected)), expected)
        state.set(victim, base[victim])
        for k in expected:
            state.delete(k)
    state_unchanged(state, base)


@FUZZ
@given(amount=st.one_of(ints, st.booleans(), st.floats(), st.just("1")), start=st.one_of(st.none(), ints, floats, awkward_text), ttl=ttls, keys=st.one_of(st.lists(ids, max_size=3), ids, st.none()), prefix=st.one_of(awkward_text, wrong_types), scope=st.lists(st.one_of(awkward_text, wrong_types), max_size=2))
def test_fuzz_state_operations(state, request, amount, start, ttl, keys, prefix, scope):
    base = request.node.stash.setdefault(_STATE, seed_state(state))
    key = fresh()
    if start is not None:
        attempt(request, lambda: state.set(key, start))
    had = state.get(key, "<missing>")
    counted = attempt(request, lambda: state.incr(key, amount))
    now = state.get(key, "<missing>")
    if counted.ok:
        assert same(now, counted.result) and same(now, (0 if had == "<missing>" else had) + amount)
    else:
        assert same(now, had)
    expired = attempt(request, lambda: state.expire(key, ttl))
    if expired.ok and ttl is not None and ttl >= 60 and expired.result:
        assert 0 < state.ttl(key) <= ttl
    got = attempt(request, lambda: state.get_many(keys))
    if got.ok:
        assert set(got.result) <= set(keys)
    # keys()/clear() with any prefix, inside a scope of this example only: nothing outside it may change.
    scoped = attempt(request, lambda: state.scope(fresh(), *scope))
    if scoped.ok:
        view = scoped.result
        stored = attempt(request, lambda: view.set_many({"a": 1, "ab": 2, "b": 3}))  # refused if the scope is too long
        listed = attempt(request, lambda: sorted(view.keys(prefix)))
        if listed.ok:
            assert listed.result == (sorted(k for k in ("a", "ab", "b") if k.startswith(prefix)) if stored.ok else [])
        cleared = attempt(request, lambda: view.clear(prefix))
        if cleared.ok and prefix:
            assert cleared.result == len(listed.result) if listed.ok else True
        attempt(request, lambda: view.clear())
    state.delete(key)
    state_unchanged(state, base)


# ---- the known bad inputs, each tried on every backend (the fuzzing above finds these only by chance) ----

HALF_EMOJI = "\ud83d"


def _calls_on_conversations(sid: str) -> dict[str, Callable[[Any], Any]]:
    return {
        "surrogate content": lambda c: c.add_message(sid, "user", HALF_EMOJI),
        "surrogate name": lambda c: c.add_message(sid, "user", "x", name=HALF_EMOJI),
        "surrogate tool_call_id": lambda c: c.add_message(sid, "tool", "x", tool_call_id=HALF_EMOJI),
        "surrogate session id": lambda c: c.create_session("s" + HALF_EMOJI),
        "surrogate message id": lambda c: c.add_message(sid, "user", "x", id=HALF_EMOJI),
        "surrogate user id": lambda c: c.create_session(fresh(), user_id=HALF_EMOJI),
        "surrogate session name": lambda c: c.update_session(sid, name=HALF_EMOJI),
        "surrogate metadata key": lambda c: c.add_message(sid, "user", "x", metadata={HALF_EMOJI: 1}),
        "surrogate metadata value": lambda c: c.update_session(sid, metadata={"k": [HALF_EMOJI]}),
        "surrogate tool call": lambda c: c.add_message(sid, "assistant", None, tool_calls=[{"id": HALF_EMOJI}]),
        "metadata 10,000 deep": lambda c: c.add_message(sid, "user", "x", metadata=_nested(10_000)),
        "NaN metadata": lambda c: c.create_session(fresh(), metadata={"x": float("nan")}),
        "inf metadata": lambda c: c.add_message(sid, "user", "x", metadata={"x": float("inf")}),
        "bytes metadata": lambda c: c.add_message(sid, "user", "x", metadata={"x": b"raw"}),
        "set metadata": lambda c: c.add_message(sid, "user", "x", metadata={"x": {1}}),
        "object metadata": lambda c: c.add_message(sid, "user", "x", metadata={"x": object()}),
        "tuple-keyed metadata": lambda c: c.add_message(sid, "user", "x", metadata={(1, 2): "x"}),
        "int-keyed metadata": lambda c: c.add_message(sid, "user", "x", metadata={1: "x"}),
        "dict as session id": lambda c: c.add_message({"id": 1}, "user", "x"),
        "bytes inside list content": lambda c: c.add_message(sid, "user", ["x", b"raw"]),
        "role 65 characters long": lambda c: c.add_message(sid, "r" * 65, "x"),
        "no role and no type": lambda c: c.add_message(sid, None, "x"),
        "limit 2**64": lambda c: c.get_messages(sid, limit=2**64),
        "before_seq 2**63": lambda c: c.get_messages(sid, before_seq=2**63),
        "after_seq 2**63": lambda c: c.get_messages(sid, after_seq=2**63),
        "after_seq -2**63 - 1": lambda c: c.get_messages(sid, after_seq=-(2**63) - 1),
        "before_seq -2**64": lambda c: c.get_messages(sid, before_seq=-(2**64)),
        "page limit 2**64": lambda c: c.list_sessions(limit=2**64),
        "garbage cursor": lambda c: c.list_sessions(cursor="!!not a cursor!!"),
        "forged cursor, year 1": lambda c: c.list_sessions(cursor=_b64(json.dumps(["0001-01-01T00:00:00+00:00", "x"]).encode())),
        "forged cursor, year 9999": lambda c: c.list_sessions(cursor=_b64(json.dumps(["9999-12-31T23:59:59+00:00", "x"]).encode())),
        "forged cursor, surrogate id": lambda c: c.list_sessions(cursor=_b64(json.dumps(["2026-01-01T00:00:00+00:00", HALF_EMOJI]).encode())),
        "forged cursor, not a pair": lambda c: c.list_sessions(cursor=_b64(b'{"a": 1}')),
        "cursor of the wrong type": lambda c: c.list_sessions(cursor=12),
        "prune 999999999 days": lambda c: c.prune(older_than=timedelta(days=999999999)),
        "prune timedelta.max": lambda c: c.prune(older_than=timedelta.max),
        "add_messages(None)": lambda c: c.add_messages(sid, None),
        "add_messages(text)": lambda c: c.add_messages(sid, "text"),
        "add_messages(generator with a bad item)": lambda c: c.add_messages(sid, (m for m in [{"role": "user", "content": "ok"}, {"role": "user", "content": HALF_EMOJI}])),
        "iter_sessions with a bad filter": lambda c: next(c.iter_sessions(user_id=HALF_EMOJI)),
    }


def _calls_on_state(key: str) -> dict[str, Callable[[Any], Any]]:
    return {
        "surrogate key": lambda s: s.set("k" + HALF_EMOJI, 1),
        "surrogate value": lambda s: s.set(key, {"v": HALF_EMOJI}),
        "surrogate get": lambda s: s.get(HALF_EMOJI),
        "surrogate prefix": lambda s: list(s.keys(HALF_EMOJI)),
        "surrogate scope": lambda s: s.scope(HALF_EMOJI).get("x"),
        "NUL prefix": lambda s: s.clear("a\x00"),
        "value 10,000 deep": lambda s: s.set(key, _nested(10_000)),
        "NaN value": lambda s: s.set(key, float("nan")),
        "inf value": lambda s: s.set(key, [float("-inf")]),
        "bytes value": lambda s: s.set(key, b"raw"),
        "set value": lambda s: s.set(key, {1, 2}),
        "tuple-keyed value": lambda s: s.set(key, {(1, 2): 1}),
        "ttl 1e12": lambda s: s.set(key, 1, ttl=1e12),
        "ttl 1e300": lambda s: s.set(key, 1, ttl=1e300),
        "ttl 10**400": lambda s: s.set(key, 1, ttl=10**400),
        "ttl tiny": lambda s: s.set(key + "-tiny", 1, ttl=5e-324),
        "ttl negative": lambda s: s.set(key, 1, ttl=-1),
        "ttl NaN": lambda s: s.set(key, 1, ttl=float("nan")),
        "ttl inf": lambda s: s.set(key, 1, ttl=float("inf")),
        "ttl bool": lambda s: s.set(key, 1, ttl=True),
        "expire 1e300": lambda s: s.expire(key, 1e300),
        "incr by 2**63": lambda s: s.incr(key, 2**63),
        "incr by -2**63 - 1": lambda s: s.incr(key, -(2**63) - 1),
        "incr by a float": lambda s: s.incr(key, 1.5),
        "get_many(None)": lambda s: s.get_many(None),
        "get_many(text)": lambda s: s.get_many("abc"),
        "set_many(None)": lambda s: s.set_many(None),
        "set_many with one bad value": lambda s: s.set_many({key: 2, key + "-new": float("nan")}),
        "dict as key": lambda s: s.get({"k": 1}),
    }


def test_known_bad_conversation_inputs(conv):
    sid = seed_conversation(conv)
    before = conv_snapshot(conv, sid)
    refused = []
    for label, call in _calls_on_conversations(sid).items():
        try:
            call(conv)
        except praison_db.Error as e:
            assert str(e) and "\n" not in str(e), label
            refused.append(label)
        except Exception as e:  # noqa: BLE001 - the point is that nothing else escapes
            pytest.fail(f"{label}: untyped {type(e).__name__}: {str(e)[:200]}")
        assert conv_snapshot(conv, sid) == before, label
    # Out-of-range numbers are clamped to their meaning ("all", "none"), never refused; bad values are refused.
    assert not {"limit 2**64", "before_seq 2**63", "after_seq 2**63", "prune 999999999 days", "prune timedelta.max"} & set(refused)
    assert len(refused) == len(_calls_on_conversations(sid)) - 7, refused
    assert [m.seq for m in conv.get_messages(sid, limit=2**64, before_seq=2**63)] == [1, 2, 3, 4, 5]
    assert conv.get_messages(sid, after_seq=2**63) == [] and conv.get_messages(sid, before_seq=-(2**64)) == []
    assert len(conv.get_messages(sid, after_seq=-(2**63) - 1)) == 5
    assert conv.prune(older_than=timedelta.max) == 0 and conv.get_session(sid) is not None


def test_known_bad_state_inputs(state):
    key = fresh()
    state.set(key, 1)
    accepted = []
    for label, call in _calls_on_state(key).items():
        try:
            call(state)
            accepted.append(label)
        except praison_db.Error as e:
            assert str(e) and "\n" not in str(e), label
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"{label}: untyped {type(e).__name__}: {str(e)[:200]}")
        assert state.get(key) == 1 and state.ttl(key) is None, label
        assert not state.exists(key + "-new"), label
    assert accepted == ["ttl tiny"], accepted  # a TTL too short to observe is still a valid TTL
    state.set(key, 2, ttl=MAX_TTL_SECONDS)  # the longest TTL fits every backend's expiry type
    assert state.get(key) == 2 and MAX_TTL_SECONDS - 60 < state.ttl(key) <= MAX_TTL_SECONDS
    assert state.expire(key, MAX_TTL_SECONDS) and state.ttl(key) > MAX_TTL_SECONDS - 60
