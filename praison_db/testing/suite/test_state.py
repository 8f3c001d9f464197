"""The StateStore contract, run on every backend in tests/backends.py."""

from __future__ import annotations

import time

import pytest

from praison_db import InputError, StoreClosed
from praison_db.facade import open_store
from praison_db.testing import require
from praison_db.testing import wait_past
from praison_db.testing.workers import incr_many, run_workers

VALUES = {
    "dict": {"a": 1, "nested": {"list": [1, 2.5, None, True, "x"]}},
    "list": [1, "two", {"three": 3}],
    "int": 42,
    "big_int": 2**62,
    "negative": -7,
    "float": 3.25,
    "float_whole": 2.0,
    "true": True,
    "false": False,
    "none": None,
    "str": "plain",
    "unicode": "🙂 日本 مرحبا",
    "empty_str": "",
    "empty_dict": {},
    "empty_list": [],
    # User data shaped like an internal wrapper must come back unchanged.
    "wrapper_v": {"v": 1, "e": None},
    "wrapper_value": {"value": "x", "expires_at": 123.0, "__praison__": True},
    "wrapper_list": [None, None],
}


def test_values_keep_their_types(state):
    for key, value in VALUES.items():
        state.set(key, value)
    for key, value in VALUES.items():
        got = state.get(key, "MISSING")
        assert got == value and type(got) is type(value), key
    assert state.get_many(list(VALUES)) == VALUES
    assert state.get("float_whole") == 2.0 and isinstance(state.get("float_whole"), float)
    state.set("tuple", (1, 2))
    assert state.get("tuple") == [1, 2]


def test_big_integers_and_digit_strings(state):
    state.set("huge", 2**70)
    state.set("digits", "5")
    assert state.get("huge") == 2**70 and state.get("digits") == "5"
    with pytest.raises(InputError):
        state.incr("digits")  # a string of digits is text, not a number
    assert state.get("digits") == "5"


def test_get_default_exists_delete(state):
    assert state.get("missing") is None and state.get("missing", 5) == 5
    state.set("k", None)
    assert state.exists("k") and state.get("k", "default") is None
    assert state.delete("k") is True and state.delete("k") is False
    assert not state.exists("k")
    state["m"] = {"x": 1}
    assert state["m"] == {"x": 1} and "m" in state
    del state["m"]
    with pytest.raises(KeyError):
        state["m"]


def test_keys_are_exact(state):
    for key in ["a", "A", "a ", "a\t", "ä", "a/b", "a_b", "a%", "a_"]:
        state.set(key, key)
    for key in ["a", "A", "a ", "a\t", "ä", "a/b", "a_b", "a%", "a_"]:
        assert state.get(key) == key
    assert sorted(state.keys("a_")) == ["a_", "a_b"]
    assert sorted(state.keys("a%")) == ["a%"]


def test_overwrite_replaces_value_and_ttl(state):
    state.set("o", 1, ttl=100)
    state.set("o", 2)
    assert state.get("o") == 2 and state.ttl("o") is None


def test_ttl_and_expire(state):
    state.set("t", "v", ttl=100)
    remaining = state.ttl("t")
    assert remaining is not None and 95 < remaining <= 100
    assert state.ttl("missing") is None
    state.set("forever", 1)
    assert state.ttl("forever") is None
    assert state.expire("forever", 50) is True and 45 < state.ttl("forever") <= 50
    assert state.expire("forever", None) is True and state.ttl("forever") is None
    assert state.expire("missing", 10) is False


def test_ttl_does_not_depend_on_the_local_time_zone(state, monkeypatch):
    for zone in ("Pacific/Kiritimati", "America/Anchorage", "UTC"):
        monkeypatch.setenv("TZ", zone)
        time.tzset()
        state.set("t", 1, ttl=100)
        assert 95 < state.ttl("t") <= 100, zone
    monkeypatch.undo()
    time.tzset()


def test_expired_key_is_gone_on_every_read_path(state):
    state.set("keep", "k")
    start = time.time()
    state.set("gone", {"v": 1}, ttl=0.3)
    state.set_many({"gone2": 1, "gone3": 2}, ttl=0.3)
    assert state.get("gone") == {"v": 1} and state.exists("gone2")
    wait_past(start + 0.35)
    assert state.get("gone", "default") == "default"
    assert not state.exists("gone")
    assert state.get_many(["gone", "gone2", "keep"]) == {"keep": "k"}
    assert sorted(state.keys()) == ["keep"]
    assert state.ttl("gone") is None
    assert state.expire("gone", 10) is False
    assert state.delete("gone2") is False
    assert state.incr("gone3") == 1 and state.ttl("gone3") is None  # starts over, without the old TTL
    assert state.clear() == 2  # keep, gone3


def test_incr(state):
    assert state.incr("n") == 1
    assert state.incr("n", 10) == 11 and state.incr("n", -20) == -9 and state.decr("n") == -10
    assert state.get("n") == -10
    state.set("ttl_counter", 5, ttl=100)
    assert state.incr("ttl_counter") == 6 and 90 < state.ttl("ttl_counter") <= 100
    for bad in ["text", 1.5, True, {"a": 1}, None]:
        state.set("bad", bad)
        with pytest.raises(InputError):
            state.incr("bad")
        assert state.get("bad") == bad
    with pytest.raises(InputError):
        state.incr("n", 1.5)  # type: ignore[arg-type]


def test_many(state):
    state.set_many({"x": 1, "y": [2], "z": {"3": 3}})
    assert state.get_many(["x", "y", "z", "missing"]) == {"x": 1, "y": [2], "z": {"3": 3}}
    assert state.get_many([]) == {}
    state.set_many({"t1": 1, "t2": 2}, ttl=60)
    assert 50 < state.ttl("t2") <= 60


def test_keys_and_clear_by_prefix(state):
    state.set_many({f"user:{i:04d}": i for i in range(2500)})
    state.set_many({"job:1": 1, "job:2": 2, "other": 0})
    keys = state.keys("user:")
    assert iter(keys) is keys  # an iterator, consumed incrementally
    assert list(keys) == [f"user:{i:04d}" for i in range(2500)]
    assert sorted(state.keys("job:")) == ["job:1", "job:2"]
    assert state.clear("job:") == 2
    assert list(state.keys("job:")) == [] and state.get("other") == 0 and state.get("user:0007") == 7
    assert state.clear("nothing-here:") == 0
    assert state.clear() == 2501
    assert list(state.keys()) == []


def test_scope(state):
    sess = state.scope("session", "s1")
    other = state.scope("session", "s2")
    sess.set("step", 1)
    other.set("step", 2)
    state.set("step", 0)
    assert (sess.get("step"), other.get("step"), state.get("step")) == (1, 2, 0)
    assert state.get("session:s1:step") == 1
    assert list(sess.keys()) == ["step"]
    assert sess.incr("count") == 1 and state.get("session:s1:count") == 1
    nested = sess.scope("tool")
    nested.set("x", True)
    assert state.get("session:s1:tool:x") is True and sorted(sess.keys()) == ["count", "step", "tool:x"]
    assert sess.clear() == 3
    assert other.get("step") == 2 and state.get("step") == 0
    sess.close()  # a scope does not own the connection
    assert state.get("step") == 0


def test_bad_state_input_is_rejected_and_changes_nothing(state):
    state.set("k", "original")
    bad_calls = [
        lambda: state.set("", 1),
        lambda: state.set(5, 1),  # type: ignore[arg-type]
        lambda: state.set("k", {1, 2}),
        lambda: state.set("k", float("nan")),
        lambda: state.set("k", object()),
        lambda: state.set("k", "new", ttl=0),
        lambda: state.set("k", "new", ttl=-1),
        lambda: state.set("k", "new", ttl=float("inf")),
        lambda: state.set_many({"k": "new", "k2": {1}}),
        lambda: state.set("x" * 600, 1),
        lambda: state.get(None),  # type: ignore[arg-type]
        lambda: state.scope(""),
    ]
    for call in bad_calls:
        with pytest.raises(InputError) as info:
            call()
        assert "\n" not in str(info.value)
    assert state.get("k") == "original" and state.ttl("k") is None and not state.exists("k2")


def test_reopen_sees_the_same_state(state, state_url):
    state.set("durable", {"x": 1})
    state.close()
    with open_store(state_url, "state") as again:
        assert again.get("durable") == {"x": 1}


def test_closed_state_store_raises(state):
    state.close()
    with pytest.raises(StoreClosed):
        state.get("x")
    with pytest.raises(StoreClosed):
        state.scope("a").set("x", 1)


@pytest.mark.slow
def test_incr_is_atomic_across_processes(state, state_url):
    require(state, "multi_process")
    per, workers = 100, 4
    lasts = run_workers(incr_many, [(state_url, "hits", per)] * workers)
    assert state.get("hits") == per * workers
    assert max(lasts) == per * workers
