"""Functions run in child processes by the multi-process conformance cases (spawned, so importable by path)."""

from __future__ import annotations

import multiprocessing as mp
import traceback
from typing import Any

from praison_db.testing.blocking import open_for_api


def run_workers(target: Any, args_list: list[tuple[Any, ...]], timeout: float = 300) -> list[Any]:
    """Run ``target(barrier, *args)`` in one spawned process per args tuple, all released at once by a barrier.

    Returns each worker's result in order; a worker's exception fails the caller with its traceback.
    """
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(args_list))
    results = ctx.Queue()
    procs = [ctx.Process(target=_wrap, args=(i, results, target, barrier, args)) for i, args in enumerate(args_list)]
    for p in procs:
        p.start()
    out: dict[int, Any] = {}
    try:
        for _ in procs:
            index, ok, value = results.get(timeout=timeout)
            if not ok:
                raise AssertionError(f"worker {index} failed:\n{value}")
            out[index] = value
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return [out[i] for i in range(len(procs))]


def _wrap(index: int, results: Any, target: Any, barrier: Any, args: tuple[Any, ...]) -> None:
    try:
        results.put((index, True, target(barrier, *args)))
    except BaseException:
        results.put((index, False, traceback.format_exc()))


def append_many(barrier: Any, url: str, session_id: str, count: int, worker: int) -> list[int]:
    with open_for_api(url, "conversations") as store:
        store.get_session(session_id)  # connect before the start line, so the race is on the appends
        barrier.wait()
        return [store.add_message(session_id, "user", f"w{worker}-{i}").seq for i in range(count)]


def get_or_create(barrier: Any, url: str, session_id: str, worker: int) -> str:
    with open_for_api(url, "conversations") as store:
        store.get_session(session_id)
        barrier.wait()
        session = store.get_or_create_session(session_id, user_id="racer", name=f"by worker {worker}")
        return session.name or ""


def incr_many(barrier: Any, url: str, key: str, count: int) -> int:
    with open_for_api(url, "state") as store:
        store.exists(key)
        barrier.wait()
        last = 0
        for _ in range(count):
            last = store.incr(key)
        return last


def pop_many(barrier: Any, url: str, session_id: str, count: int) -> list[int | None]:
    with open_for_api(url, "conversations") as store:
        store.get_session(session_id)
        barrier.wait()
        return [None if (m := store.pop_message(session_id)) is None else m.seq for _ in range(count)]
