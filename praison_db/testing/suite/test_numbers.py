"""Numbers come back exactly as given, on every backend: floats stay floats (sign of zero included), big ints stay
ints, in session and message metadata, tool-call arguments and state values."""

from __future__ import annotations

import math
from typing import Any

import pytest

from praison_db import InputError
from praison_db.facade import open_store
from praison_db.models import MAX_JSON_DEPTH

NUMBERS: dict[str, Any] = {
    "big_float": 1e20,
    "tiny_float": 5e-324,
    "negative_zero": -0.0,
    "sum": 0.1 + 0.2,
    "max_float": 1.7976931348623157e308,
    "whole_float": 3.0,
    "two_to_64": 2**64,
    "ten_to_30": 10**30,
    "minus_two_to_70": -(2**70),
    "int64_max": 2**63 - 1,
    "int64_min": -(2**63),
    "zero": 0,
    "nested": {"list": [1e20, -0.0, 2**64, 0.1 + 0.2, 7]},
}


def same(a: Any, b: Any) -> bool:
    """Deep equality that also compares types and the sign of zero (``==`` says 0 == 0.0 == -0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def _reopen(store: Any, conv_url: str, conv_backend: Any) -> Any:
    """A second store on the same data (persistent backends), so the numbers are read back from storage."""
    if not store.capabilities.persistent:
        return None
    return open_store(conv_url, "conversations", **conv_backend.options)


def test_numbers_in_metadata_and_tool_calls_round_trip(conv, conv_url, conv_backend):
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": dict(NUMBERS)}}]
    conv.create_session("n", metadata=NUMBERS)
    conv.add_message("n", "assistant", None, tool_calls=calls, metadata=NUMBERS)
    conv.add_messages("n", [{"role": "user", "content": "x", "metadata": NUMBERS}])
    updated = conv.update_session("n", metadata={"again": NUMBERS})
    assert same(updated.metadata, {"again": NUMBERS})
    readers = [conv]
    other = _reopen(conv, conv_url, conv_backend)
    if other is not None:
        readers.append(other)
    try:
        for store in readers:
            assert same(store.get_session("n").metadata, {"again": NUMBERS})
            first, second = store.get_messages("n")
            assert same(first.metadata, NUMBERS) and same(second.metadata, NUMBERS)
            assert same(first.tool_calls, calls)
            exported = store.export_session("n")
            assert same(exported["messages"][0]["metadata"], NUMBERS)
    finally:
        if other is not None:
            other.close()


def test_numbers_in_state_values_round_trip(state):
    for key, value in NUMBERS.items():
        state.set(key, value)
    state.set_many({f"many_{k}": v for k, v in NUMBERS.items()})
    for key, value in NUMBERS.items():
        assert same(state.get(key), value), key
        assert same(state.get(f"many_{key}"), value), key
    assert same(state.get_many(list(NUMBERS)), NUMBERS)


def nested(depth: int) -> Any:
    """A dict whose outermost level is 1 and whose innermost list is at ``depth``."""
    value: Any = [1]
    for _ in range(depth - 2):
        value = [value]
    return {"deep": value}


def test_json_nesting_limit_in_metadata(conv):
    deepest = nested(MAX_JSON_DEPTH)
    conv.create_session("deep", metadata=deepest)
    assert conv.get_session("deep").metadata == deepest
    assert conv.add_message("deep", "user", "x", metadata=deepest).metadata == deepest
    assert conv.get_messages("deep")[0].metadata == deepest
    for depth in (MAX_JSON_DEPTH + 1, 10_000):
        with pytest.raises(InputError, match="levels deep"):
            conv.add_message("deep", "user", "x", metadata=nested(depth))
        with pytest.raises(InputError, match="levels deep"):
            conv.update_session("deep", metadata=nested(depth))
    assert conv.count_messages("deep") == 1 and conv.get_session("deep").metadata == deepest


def test_json_nesting_limit_in_state(state):
    deepest = nested(MAX_JSON_DEPTH)
    state.set("deep", deepest)
    assert state.get("deep") == deepest
    for depth in (MAX_JSON_DEPTH + 1, 10_000):
        with pytest.raises(InputError, match="levels deep"):
            state.set("deep", nested(depth))
    assert state.get("deep") == deepest


def test_an_int_with_more_digits_than_python_writes_is_refused(state):
    state.set("k", 1)
    with pytest.raises(InputError, match="cannot be written as JSON"):
        state.set("k", 10**5000)
    assert state.get("k") == 1
