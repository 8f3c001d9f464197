"""What the LangGraph checkpointer tests share: the backends it runs on, the published conformance suite run on either
face of the saver, and two small graphs (one that appends to a message list, one that asks a human and waits)."""

from __future__ import annotations

import asyncio
import operator
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any, TypedDict

from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES
from langgraph.checkpoint.conformance.report import CapabilityReport
from langgraph.checkpoint.conformance.spec import (
    test_copy_thread,
    test_delete_for_runs,
    test_delete_thread,
    test_get_tuple,
    test_list,
    test_prune,
    test_put,
    test_put_writes,
)
from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt

from praison_db.integrations.langgraph import PraisonCheckpointSaver, _esc, _MemoryStorage, _MongoStorage, _RedisStorage
from tests.backends import BACKENDS

# The backends PraisonCheckpointSaver supports, by their names in tests/backends.py.
SAVER_BACKENDS = ["memory", "sqlite", "postgresql", "mysql", "redis", "redis-cluster", "mongodb"]
BY_NAME = {b.name: b for b in BACKENDS}

# How many cases the installed conformance suite has per capability: a report must count exactly these as passed.
EXPECTED = {
    "put": len(test_put.ALL_PUT_TESTS),
    "put_writes": len(test_put_writes.ALL_PUT_WRITES_TESTS),
    "get_tuple": len(test_get_tuple.ALL_GET_TUPLE_TESTS),
    "list": len(test_list.ALL_LIST_TESTS),
    "delete_thread": len(test_delete_thread.ALL_DELETE_THREAD_TESTS),
    "delete_for_runs": len(test_delete_for_runs.ALL_DELETE_FOR_RUNS_TESTS),
    "copy_thread": len(test_copy_thread.ALL_COPY_THREAD_TESTS),
    "prune": len(test_prune.ALL_PRUNE_TESTS),
}
assert set(EXPECTED) == {c.value for c in ALL_CAPABILITIES}, "the conformance suite has capabilities these tests do not know"


class SyncFace(PraisonCheckpointSaver):
    """The saver with its async methods answered by its sync ones in a worker thread, so that the conformance suite
    (which calls only the async methods) checks the sync face, its statements and its engine."""

    async def aget_tuple(self, config: Any) -> Any:
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(self, config: Any, *, filter: Any = None, before: Any = None, limit: Any = None) -> AsyncIterator[Any]:
        items = await asyncio.to_thread(lambda: list(self.list(config, filter=filter, before=before, limit=limit)))
        for item in items:
            yield item

    async def aput(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(self, config: Any, writes: Any, task_id: str, task_path: str = "") -> None:
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await asyncio.to_thread(self.prune, thread_ids, strategy=strategy)


def conformance(url: str, face: str) -> CapabilityReport:
    """Run langgraph-checkpoint-conformance on a fresh saver of ``url`` per capability, on the ``face`` API."""
    kind = SyncFace if face == "sync" else PraisonCheckpointSaver

    @checkpointer_test(name=f"PraisonCheckpointSaver[{face}]")
    async def factory() -> AsyncIterator[PraisonCheckpointSaver]:
        saver = kind(url)
        yield saver
        await saver.aclose()

    return asyncio.run(validate(factory))


def blob_counts(saver: PraisonCheckpointSaver, thread_id: str, ns: str = "") -> dict[str, int]:
    """How many channel values the saver holds for (thread, namespace), per channel, read from its storage directly."""
    storage: Any = saver._storage()
    counts: dict[str, int] = {}
    if isinstance(storage, _MemoryStorage):
        channels = [k[2] for k in storage.d.blobs if k[:2] == (thread_id, ns)]
    elif isinstance(storage, _RedisStorage):
        fields = storage.r.hkeys(f"{storage._base(thread_id)}:b:{_esc(ns)}")
        channels = [f.decode().split("\0")[0] for f in fields]
    elif isinstance(storage, _MongoStorage):
        channels = [b["channel"] for b in storage.b.find({"thread_id": thread_id, "checkpoint_ns": ns}, {"channel": 1})]
    else:
        from sqlalchemy import select

        blobs = storage.t.blobs
        with storage.db.read() as conn:
            query = select(blobs.c.channel).where(blobs.c.thread_id == thread_id, blobs.c.checkpoint_ns == ns)
            channels = list(conn.execute(query).scalars())
    for channel in channels:
        counts[channel] = counts.get(channel, 0) + 1
    return counts


# ---- graphs ----


class Chat(TypedDict):
    messages: Annotated[list[str], operator.add]


def _reply(state: Chat) -> dict[str, Any]:
    return {"messages": [f"echo:{state['messages'][-1]}"]}


def chat_graph(saver: Any) -> Any:
    """START -> reply -> END over a message list that each run appends to."""
    builder = StateGraph(Chat)
    builder.add_node("reply", _reply)
    builder.add_edge(START, "reply")
    builder.add_edge("reply", END)
    return builder.compile(checkpointer=saver)


def _ask_name(state: Chat) -> dict[str, Any]:
    name = interrupt("What is your name?")
    return {"messages": [f"hello {name}"]}


def approval_graph(saver: Any) -> Any:
    """START -> ask (waits for a human: interrupt) -> END."""
    builder = StateGraph(Chat)
    builder.add_node("ask", _ask_name)
    builder.add_edge(START, "ask")
    builder.add_edge("ask", END)
    return builder.compile(checkpointer=saver)
