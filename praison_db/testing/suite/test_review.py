"""Edge cases across every backend: a close() racing calls in flight, and other inputs a careless or hostile
caller sends."""

from __future__ import annotations

import threading
import time
from typing import Any

from praison_db import Error, InputError, StoreClosed

WRITERS = 4
ROUNDS = 300  # bounded: a writer stops at its first failure or after this many appends
# For every call to end after close(): far below a driver's own retry budget (pymongo retries a transaction for
# 120 s) and a third of the 30 s socket timeout of the Redis and SQL stores, so a call left waiting one out fails it.
JOIN_SECONDS = 10.0


def test_close_while_calls_are_in_flight_raises_store_closed_promptly(conv: Any) -> None:
    """Threads appending while another thread closes the store: each stops with StoreClosed, not a driver's
    complaint about its closed pool, and none is left retrying against the closed client."""
    conv.create_session("busy")
    started = threading.Event()
    failures: list[BaseException] = []

    def writer() -> None:
        for _ in range(ROUNDS):
            try:
                conv.add_message("busy", "user", "hello")
            except BaseException as e:
                failures.append(e)
                return
            started.set()

    threads = [threading.Thread(target=writer, daemon=True) for _ in range(WRITERS)]
    for t in threads:
        t.start()
    assert started.wait(30), "no append succeeded"
    closed_at = time.monotonic()
    conv.close()
    for t in threads:
        t.join(max(0.0, closed_at + JOIN_SECONDS - time.monotonic()))
    late = sum(t.is_alive() for t in threads)
    assert not late, f"{late} of {WRITERS} calls kept running more than {JOIN_SECONDS:g} s after close()"
    wrong = [f"{type(e).__name__}: {e}" for e in failures if not isinstance(e, StoreClosed)]
    assert not wrong, wrong


def test_scoped_keys_iterator_made_before_close_raises_store_closed(state: Any) -> None:
    scoped = state.scope("session", "s1")
    for i in range(3):
        scoped.set(f"k{i}", i)
    keys = scoped.keys()
    state.close()
    try:
        next(keys)
    except Error as e:
        assert isinstance(e, StoreClosed), f"{type(e).__name__}: {e}"
    else:
        raise AssertionError("a keys() iterator yielded after its store was closed")


def test_metadata_beyond_a_document_limit_is_stored_exactly_or_refused_as_input(conv: Any) -> None:
    """20 MB of metadata on one message: the backend keeps it exactly or refuses it with InputError (not a generic
    Error), and a refusal stores nothing."""
    conv.create_session("big")
    metadata = {"m": "y" * (20 << 20)}
    try:
        conv.add_message("big", "user", "x", metadata=metadata)
    except Error as e:
        assert isinstance(e, InputError), f"{type(e).__name__}: {e}"
        assert conv.count_messages("big") == 0 and conv.get_session("big").message_count == 0
    else:
        (stored,) = conv.get_messages("big")
        assert stored.metadata == metadata


def test_editing_returned_objects_does_not_edit_what_is_stored(conv: Any) -> None:
    created = conv.create_session("a", metadata={"tags": ["x"]})
    created.metadata["tags"].append("edited")
    conv.get_session("a").metadata["tags"].append("edited")
    conv.list_sessions().items[0].metadata["new"] = 1
    tool_calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    added = conv.add_message("a", "assistant", None, tool_calls=tool_calls, metadata={"n": [1]})
    added.metadata["n"].append(2)
    added.tool_calls[0]["id"] = "edited"
    conv.get_messages("a")[0].metadata["n"].append(3)
    conv.get_history("a")[0]["tool_calls"][0]["id"] = "edited"
    assert conv.get_session("a").metadata == {"tags": ["x"]}
    (stored,) = conv.get_messages("a")
    assert stored.metadata == {"n": [1]} and stored.tool_calls == tool_calls
