"""Closed means closed: after close(), every public method of every store raises StoreClosed, and so does every
iterator made before the close. The methods are found by introspection, so a new one cannot be forgotten."""

from __future__ import annotations

import inspect
from datetime import timedelta
from typing import Any

import pytest

from praison_db import StoreClosed, db

# A plausible value for each parameter name a public method takes. A method with a parameter missing here fails
# the test until its argument is added, which is the point: no method escapes the check.
ARGUMENTS: dict[str, Any] = {
    "session_id": "s",
    "role": "user",
    "content": "hello",
    "messages": [{"role": "user", "content": "hello"}],
    "data": {},
    "user_id": "u",
    "older_than": timedelta(days=1),
    "after_seq": 0,
    "key": "k",
    "value": 1,
    "keys": ["k"],
    "mapping": {"k": 1},
    "ttl": 5,
    "parts": "scope",
}
NOT_CALLS = {"close"}  # idempotent by contract


def public_methods(store: Any) -> list[str]:
    names = []
    for name, member in inspect.getmembers(type(store)):
        if name.startswith("_") or name in NOT_CALLS:
            continue
        if inspect.isfunction(member):  # skips properties, classmethods (from_url) and plain attributes
            names.append(name)
    return sorted(names)


def call(store: Any, name: str) -> Any:
    method = getattr(store, name)
    args = []
    for param in inspect.signature(method).parameters.values():
        if param.kind in (param.VAR_KEYWORD,) or param.default is not param.empty:
            continue
        assert param.name in ARGUMENTS, f"{type(store).__name__}.{name}: give test_closed an argument for {param.name!r}"
        args.append(ARGUMENTS[param.name])
    result = method(*args)
    if inspect.isgenerator(result) or hasattr(result, "__next__"):
        next(result)  # an iterator must refuse at its first item at the latest
    return result


def assert_all_refuse(store: Any) -> list[str]:
    names = public_methods(store)
    assert len(names) >= 10, names
    for name in names:
        with pytest.raises(StoreClosed):
            call(store, name)
    with pytest.raises(StoreClosed):
        store["k"]
    with pytest.raises(StoreClosed):
        store["k"] = 1
    if hasattr(store, "__delitem__"):
        with pytest.raises(StoreClosed):
            del store["k"]
    return names


def test_conversation_store_refuses_everything_after_close(conv):
    conv.create_session("s")
    for i in range(3):
        conv.create_session(f"other{i}")
    before = conv.iter_sessions()
    assert next(before) is not None
    conv.close()
    conv.close()  # idempotent
    assert conv.closed
    names = public_methods(conv)
    assert {"add_message", "get_messages", "iter_sessions", "export_session", "get_history"} <= set(names)
    for name in names:
        with pytest.raises(StoreClosed):
            call(conv, name)
    with pytest.raises(StoreClosed):
        next(before)


def _state_refuses(state: Any, keys_before: Any, scoped: Any, scoped_keys: Any) -> None:
    names = assert_all_refuse(state)
    assert {"get", "set", "incr", "keys", "scope", "get_many", "set_many", "expire"} <= set(names)
    with pytest.raises(StoreClosed):
        _ = "k" in state
    for it in (keys_before, scoped_keys):
        with pytest.raises(StoreClosed):
            next(it)
    assert_all_refuse(scoped)


def test_state_store_and_its_scopes_refuse_everything_after_close(state):
    for i in range(3):
        state.set(f"k{i}", i)
        state.scope("scope").set(f"k{i}", i)
    scoped = state.scope("scope")
    keys_before, scoped_keys = state.keys(), scoped.keys()
    assert next(keys_before) and next(scoped_keys)
    state.close()
    _state_refuses(state, keys_before, scoped, scoped_keys)


def test_closing_the_facade_closes_every_store(conv_backend, make_url, tmp_path):
    store = db(make_url(conv_backend), session_dir=tmp_path / "sessions", **conv_backend.options)
    conversations, state, sessions = store.conversations, store.state, store.sessions
    conversations.create_session("s")
    state.set("k", 1)
    state.set("k2", 2)
    scoped = state.scope("a")
    scoped.set("x", 1)
    scoped.set("y", 2)
    keys_before, scoped_keys = state.keys(), scoped.keys()
    assert next(keys_before) and next(scoped_keys)
    store.close()
    assert store.closed and conversations.closed and state.closed and sessions.closed
    for conversation_store in (conversations, sessions):
        for name in public_methods(conversation_store):
            with pytest.raises(StoreClosed):
                call(conversation_store, name)
    _state_refuses(state, keys_before, scoped, scoped_keys)


def test_a_closed_facade_opens_nothing_new(tmp_path, make_url, conv_backend):
    store = db(make_url(conv_backend), session_dir=tmp_path / "sessions", **conv_backend.options)
    store.close()
    with pytest.raises(StoreClosed):
        store.sessions.get_session("s")  # the JSON sessions store was never opened: it is not opened now
