"""Benchmark the async API (praison_db.aio) against the raw async drivers, and async against sync under concurrency.

    python -m benchmarks.aio                        # smoke: seconds, proves it works (benchmarks/results/smoke/)
    python -m benchmarks.aio --size full            # the numbers in benchmarks/results/aio.md (minutes)
    python -m benchmarks.aio --backends postgresql,redis --out /tmp/bench

Per backend, in one process and one event loop:

1. durable append latency: ``await store.add_message(sid, "user", text)`` against the raw async driver doing the same
   durable work on the same schema (aiosqlite, psycopg's AsyncConnection, aiomysql, redis.asyncio, pymongo's
   AsyncMongoClient), with the sync store's own time alongside;
2. resume latency: ``await store.get_messages(sid, limit=20)`` on a long session, against the raw indexed read;
3. throughput: 64 sessions appended to at once, by 64 tasks on the async store (``asyncio.gather``) and by 64
   threads on the sync store (a ThreadPoolExecutor), the same number of appends on both.

Writes aio.md (tables) and aio.json (every number) into the output folder. What each number means:
benchmarks/README.md, section "The async API".
"""

from __future__ import annotations

import asyncio
import inspect
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python benchmarks/aio.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from praison_db import aio  # noqa: E402
from praison_db.facade import open_store  # noqa: E402

from . import raw  # noqa: E402
from .backends import BY_NAME, Backend, Location, Unavailable  # noqa: E402
from .harness import PRAISON, RAW, RESUME_N, call_order, content, export, fresh_id, messages  # noqa: E402
from .report import TARGETS, _mark, _table, _time, backends_and_machine, write_files  # noqa: E402
from .run import Run, comparison_main, log, recorded  # noqa: E402

ROOT = Path(__file__).resolve().parent
SYNC = "sync"  # the sync store, timed in the same rounds for reference
LIBRARIES = ("greenlet", "aiosqlite", "aiomysql")  # the async drivers not listed by report.machine_info


@dataclass(frozen=True)
class AioSizes:
    appends: int  # 1. durable appends to one session, per side
    resume_messages: int  # 2. length of the session whose newest 20 are read
    resume_reads: int
    tasks: int  # 3. sessions appended to at once (tasks on the async store, threads on the sync one)
    max_appends_per_task: int  # per throughput pass; fewer when a pass would take longer than pass_seconds
    pass_seconds: float
    passes: int  # throughput passes per side, alternating
    rounds: int  # alternations between the sides in 1. and 2.
    budget_s: float  # soft cap on one latency measurement of one backend


SIZES = {
    "smoke": AioSizes(
        appends=20, resume_messages=200, resume_reads=20, tasks=64, max_appends_per_task=1, pass_seconds=1.0, passes=1,
        rounds=2, budget_s=10,
    ),
    "full": AioSizes(
        appends=1000, resume_messages=10_000, resume_reads=1000, tasks=64, max_appends_per_task=50, pass_seconds=3.0,
        passes=3, rounds=10, budget_s=45,
    ),
}

# The raw async driver per backend; the others (memory, json, clickhouse) are measured against the sync store only.
RAW_ASYNC = {
    "sqlite": ("aiosqlite", "aiosqlite"),
    "postgresql": ("psycopg", "psycopg 3 AsyncConnection"),
    "mysql": ("aiomysql", "aiomysql"),
    "redis": ("redis.asyncio", "redis.asyncio"),
    "mongodb": ("pymongo.asynchronous", "pymongo AsyncMongoClient"),
}


# ---- the raw async drivers: the sync raw side's work (benchmarks/raw.py), awaited ----
#
# Each is made from the sync raw side on the same tables / keys / collections: that one creates the schema and the
# sessions and imports the long session (setup, not timed); the async one does the timed appends and reads with
# the very same statements, keys and documents.


class AsyncRawSql:
    """aiosqlite / psycopg AsyncConnection / aiomysql: ``BEGIN``, bump the session's counter row, insert the message,
    ``COMMIT`` (MariaDB: ``UPDATE`` then ``SELECT``); the newest N with one indexed query."""

    def __init__(self, sync: raw.RawSql, conn: Any, cur: Any) -> None:
        self.s, self.d, self.conn, self.cur = sync, sync.d, conn, cur

    @classmethod
    async def open(cls, sync: raw.RawSql, kind: str, url: str) -> AsyncRawSql:
        conn: Any
        if kind == "sqlite":
            import aiosqlite

            conn = await aiosqlite.connect(url.split(":///", 1)[1], isolation_level=None)
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=30000", "foreign_keys=ON"):
                await conn.execute(f"PRAGMA {pragma}")
            return cls(sync, conn, await conn.cursor())
        if kind == "postgresql":
            import psycopg

            conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
            return cls(sync, conn, conn.cursor())
        import aiomysql

        from praison_db.url import parse_url

        u = parse_url(url)
        conn = await aiomysql.connect(
            host=u.host or "127.0.0.1", port=u.port or 3306, user=u.username or "root", password=u.password or "",
            db=u.path.strip("/"), charset="utf8mb4", autocommit=True,
        )
        return cls(sync, conn, await conn.cursor())

    async def append(self, session_id: str, text: str) -> None:
        stamp = self.d.stamp(raw._now())
        cur = self.cur
        await cur.execute(self.d.begin)
        await cur.execute(self.s.sql_bump, (stamp, session_id))
        if not self.d.returning:
            await cur.execute(self.s.sql_count, (session_id,))
        seq = (await cur.fetchone())[0]
        await cur.execute(self.s.sql_message, (session_id, seq, uuid.uuid4().hex, "user", text, None, None, None, "{}", stamp))
        await cur.execute("COMMIT")

    async def newest(self, session_id: str, n: int) -> list[Any]:
        await self.cur.execute(self.s.sql_newest, (session_id, n))
        return list(await self.cur.fetchall())[::-1]

    async def close(self) -> None:
        result = self.conn.close()
        if inspect.isawaitable(result):  # aiomysql's close() is plain, the others' are coroutines
            await result


class AsyncRawRedis:
    """redis.asyncio: the sync raw side's Lua script (HINCRBY, HSET, RPUSH, ZADD) per append; LRANGE for the newest."""

    def __init__(self, sync: raw.RawRedis, url: str) -> None:
        import redis.asyncio

        self.s = sync
        self.r = redis.asyncio.Redis.from_url(url)
        self._append = self.r.register_script(raw._REDIS_APPEND)

    async def append(self, session_id: str, text: str) -> None:
        now = raw._now()
        body = raw._redis_body(raw._fresh_message(session_id, 0, text, now), raw._us(now))
        await self._append(keys=self.s._keys(session_id), args=[body, raw._us(now), session_id])

    async def newest(self, session_id: str, n: int) -> list[Any]:
        return await self.r.lrange(self.s._keys(session_id)[1], -n, -1)  # type: ignore[no-any-return,misc]

    async def close(self) -> None:
        await self.r.aclose()


class AsyncRawMongo:
    """pymongo's AsyncMongoClient: ``find_one_and_update($inc)`` + ``insert_one`` in one transaction; the newest N
    is the seq range after the session's length, known in-process (shared with the sync raw side's setup)."""

    def __init__(self, sync: raw.RawMongo, url: str) -> None:
        from pymongo import AsyncMongoClient, ReturnDocument

        self.s = sync
        self.client: Any = AsyncMongoClient(url)
        database = self.client.get_default_database("bench")
        self.sessions = database[sync.sessions.name]
        self.messages = database[sync.messages.name]
        self._after = ReturnDocument.AFTER

    async def append(self, session_id: str, text: str) -> None:
        now = raw._now()
        us = raw._us(now)
        async with self.client.start_session() as s, await s.start_transaction():
            doc: Any = await self.sessions.find_one_and_update(
                {"_id": session_id}, {"$inc": {"message_count": 1}, "$set": {"updated_us": us}},
                projection={"message_count": 1}, return_document=self._after, session=s,
            )
            message = raw._fresh_message(session_id, doc["message_count"], text, now)
            await self.messages.insert_one(self.s._message(message, us), session=s)
        self.s._count[session_id] = doc["message_count"]

    async def newest(self, session_id: str, n: int) -> list[Any]:
        last = self.s._count[session_id]
        cursor = self.messages.find({"session_id": session_id, "seq": {"$gt": last - n, "$lte": last}}, sort=[("seq", 1)])
        return await cursor.to_list()  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self.client.close()


async def open_raw_async(location: Location, sync: Any) -> Any:
    """The raw async driver on the sync raw side's tables: its URL and prefix are the arguments ``location.raw``
    binds (``partial(RawSql, kind, url, prefix)``, ``partial(RawRedis, url, prefix)``, ``partial(RawMongo, url, prefix)``)."""
    assert isinstance(location.raw, partial)
    args = location.raw.args
    if isinstance(sync, raw.RawSql):
        return await AsyncRawSql.open(sync, args[0], args[1])
    if isinstance(sync, raw.RawRedis):
        return AsyncRawRedis(sync, args[0])
    if isinstance(sync, raw.RawMongo):
        return AsyncRawMongo(sync, args[0])
    raise Unavailable(f"no raw async driver for {type(sync).__name__}")


# ---- praison_db, both APIs, with the raw sides' method names ----


class AsyncSide:
    """``praison_db.aio.open_store(url, "conversations")``: every call awaited."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def append(self, session_id: str, text: str) -> Awaitable[Any]:
        return self.store.add_message(session_id, "user", text)  # type: ignore[no-any-return]

    def newest(self, session_id: str, n: int) -> Awaitable[Any]:
        return self.store.get_messages(session_id, limit=n)  # type: ignore[no-any-return]


class SyncSide:
    """``praison_db.facade.open_store(url, "conversations")``, the sync API, on the same URL."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def append(self, session_id: str, text: str) -> Any:
        return self.store.add_message(session_id, "user", text)

    def newest(self, session_id: str, n: int) -> Any:
        return self.store.get_messages(session_id, limit=n)


# A call under test: make(i) returns the thunk that is timed; an awaitable it returns is awaited inside the timing.
AMake = Callable[[int], Callable[[], Any]]


async def interleaved_async(makes: dict[str, AMake], total: int, rounds: int, budget_s: float) -> dict[str, list[float]]:
    """``harness.interleaved`` on the event loop: the same order of calls (``harness.call_order``), each awaited."""
    samples: dict[str, list[float]] = {name: [] for name in makes}
    for name, i in call_order(list(makes), total, rounds, budget_s):
        thunk = makes[name](i)
        t0 = time.perf_counter()
        result = thunk()
        if inspect.isawaitable(result):
            await result
        samples[name].append(time.perf_counter() - t0)
    return samples


@dataclass
class AioRun(Run):
    """``run.Run`` (recording, ratios, notes, log lines) with async timing. Sides: PRAISON = the async store,
    RAW = the raw async driver (where there is one), SYNC = the sync store."""

    sizes: AioSizes  # type: ignore[assignment]

    async def atime(self, key: str, makes: dict[str, AMake], total: int) -> None:
        samples = await interleaved_async(makes, total, self.sizes.rounds, self.sizes.budget_s)
        self.record(key, samples, total)
        entry = self.metrics[key]
        if SYNC in entry:
            entry["vs_sync"] = entry[PRAISON]["median_us"] / entry[SYNC]["median_us"]

    async def append_latency(self, setup: dict[str, Any]) -> None:
        sids = {name: fresh_id("append") for name in self.sides}
        for name in self.sides:
            setup[name].create_session(sids[name])
        await self.atime("append", self.appends(sids, 1), self.sizes.appends)

    async def resume_latency(self, setup: dict[str, Any], n: int) -> None:
        sid, raw_sid = fresh_id("resume"), fresh_id("resume")
        setup[PRAISON].import_session(sid, messages(sid, n))  # one session, read by both praison_db APIs
        if RAW in self.sides:
            setup[RAW].import_session(raw_sid, messages(raw_sid, n))
        sids = {PRAISON: sid, SYNC: sid, RAW: raw_sid}
        for name, side in self.sides.items():
            got = side.newest(sids[name], RESUME_N)
            got = await got if inspect.isawaitable(got) else got
            if len(got) != RESUME_N:
                raise AssertionError(f"resume: the {name} side returned {len(got)} items, expected {RESUME_N}")
        await self.atime("resume", self.calls("newest", sids, RESUME_N), self.sizes.resume_reads)

    async def throughput(self, astore: Any, store: Any) -> None:
        """``tasks`` sessions appended to at once: tasks on the async store against threads on the sync store.

        A first pass of one append per session on each side opens the connection pools and the threads, a second
        one prices a warm append; then ``passes`` timed passes per side, alternating, each of the same number of
        appends (as many per session as make a pass last about ``pass_seconds``, at most ``max_appends_per_task``).
        """
        tasks = self.sizes.tasks
        async_sids = [fresh_id("conc-a") for _ in range(tasks)]
        sync_sids = [fresh_id("conc-s") for _ in range(tasks)]
        for a, s in zip(async_sids, sync_sids):
            await astore.create_session(a)
            store.create_session(s)
        pool = ThreadPoolExecutor(max_workers=tasks, thread_name_prefix="bench-sync")
        done = {"async": 0, "sync": 0}
        cpu: dict[str, list[float]] = {"async": [], "sync": []}  # this process's CPU time (all its threads) per pass

        async def async_pass(k: int) -> float:
            async def worker(sid: str) -> None:
                for j in range(k):
                    await astore.add_message(sid, "user", content(j))

            c0, t0 = time.process_time(), time.perf_counter()
            await asyncio.gather(*(worker(sid) for sid in async_sids))
            done["async"] += k
            cpu["async"].append(time.process_time() - c0)
            return time.perf_counter() - t0

        def sync_pass(k: int) -> float:
            def worker(sid: str) -> None:
                for j in range(k):
                    store.add_message(sid, "user", content(j))

            c0, t0 = time.process_time(), time.perf_counter()
            list(pool.map(worker, sync_sids))  # list(): raises the first failure
            done["sync"] += k
            cpu["sync"].append(time.process_time() - c0)
            return time.perf_counter() - t0

        try:
            first = {"async": await async_pass(1), "sync": sync_pass(1)}  # opens connections and threads
            slowest = max(await async_pass(1), sync_pass(1))  # prices a warm pass
            k = max(1, min(self.sizes.max_appends_per_task, int(self.sizes.pass_seconds / slowest)))
            seconds: dict[str, list[float]] = {"async": [], "sync": []}
            for p in range(self.sizes.passes):
                order = ("async", "sync") if p % 2 == 0 else ("sync", "async")
                for side in order:
                    seconds[side].append(await async_pass(k) if side == "async" else sync_pass(k))
        finally:
            pool.shutdown(wait=True)
        for sids, side, counter in ((async_sids, "async", astore.count_messages), (sync_sids, "sync", store.count_messages)):
            for sid in sids:
                got = counter(sid)
                got = await got if inspect.isawaitable(got) else got
                if got != done[side]:
                    raise AssertionError(f"throughput: {side} session {sid} holds {got} messages, expected {done[side]}")
        total = tasks * k
        entry: dict[str, Any] = {"tasks": tasks, "appends_per_task": k, "appends_per_pass": total, "passes": self.sizes.passes}
        for side, values in seconds.items():
            rates = [total / s for s in values]
            entry[side] = {
                "appends_per_s": statistics.median(rates), "passes_appends_per_s": rates, "first_pass_appends_per_s": tasks / first[side],
                "cpu_us_per_append": statistics.median(cpu[side][2:]) / total * 1e6,  # [0] and [1]: warm-up, pricing
            }
        entry["ratio"] = entry["async"]["appends_per_s"] / entry["sync"]["appends_per_s"]
        self.metrics["throughput"] = entry
        log(
            f"[{self.name}] throughput, {tasks} sessions x {k} appends: async {entry['async']['appends_per_s']:,.0f}/s, "
            f"sync {entry['sync']['appends_per_s']:,.0f}/s ({entry['ratio']:.2f}x)"
        )


def _needs(backend: Backend) -> str | None:
    reason = backend.unavailable()
    if reason or backend.name not in RAW_ASYNC:
        return reason
    module = RAW_ASYNC[backend.name][0]
    return None if Backend(backend.name, backend.location, (module,)).unavailable() is None else f"{module} is not in this environment"


async def run_backend(backend: Backend, sizes: AioSizes) -> dict[str, Any]:
    reason = _needs(backend)
    if reason:
        log(f"[{backend.name}] not available: {reason}")
        return {"status": "not available", "reason": reason}
    raw_label = RAW_ASYNC.get(backend.name, ("", "none (no raw async side)"))[1]
    result: dict[str, Any] = {"status": "ok", "raw_driver": raw_label}
    with recorded(backend.name, result):
        async with AsyncExitStack() as stack:
            location: Location = stack.enter_context(backend.location())
            astore = await aio.open_store(location.praison_url, "conversations")
            stack.push_async_callback(astore.aclose)
            store = open_store(location.praison_url, "conversations")
            stack.callback(store.close)
            sides: dict[str, Any] = {PRAISON: AsyncSide(astore)}
            setup: dict[str, Any] = {PRAISON: _SyncSetup(store)}
            if backend.name in RAW_ASYNC and location.raw is not None:
                setup[RAW] = location.raw()
                stack.callback(setup[RAW].close)
                result["server"] = setup[RAW].version()
                sides[RAW] = await open_raw_async(location, setup[RAW])
                stack.push_async_callback(sides[RAW].close)
            sides[SYNC] = SyncSide(store)
            setup[SYNC] = setup[PRAISON]
            n = min(sizes.resume_messages, location.smaller.get("bulk_messages", sizes.resume_messages))
            if n != sizes.resume_messages:
                result["smaller"] = f"resume on a {n:,}-message session: {location.why_smaller}"
            run = AioRun(backend.name, sides, sizes, location)
            result["metrics"], result["notes"], result["resume_messages"] = run.metrics, run.notes, n
            log(f"[{backend.name}] {result.get('server', 'in-process')}")
            await run.append_latency(setup)
            await run.resume_latency(setup, n)
            await run.throughput(astore, store)
    return result


class _SyncSetup:
    """Untimed setup through the sync store: sessions and the bulk import of the long session."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def create_session(self, session_id: str) -> None:
        self.store.create_session(session_id)

    def import_session(self, session_id: str, msgs: list[dict[str, Any]]) -> None:
        self.store.import_session(export(session_id, msgs))


# ---- report ----


def _cell(entry: dict[str, Any], side: str) -> str:
    return _time(entry[side]["median_us"]) if side in entry else "—"


def markdown(results: dict[str, Any]) -> str:
    ok = {name: r for name, r in results["backends"].items() if r.get("metrics")}
    sizes, machine = results["sizes"], results["machine"]
    full = results["size"] == "full"
    took = f" in {results['seconds']:.0f} s" if full else ""
    lines = [
        "# praison_db.aio benchmarks: results",
        "",
        f"Generated by `{results['command']}` on {machine['date']}{took} (size `{results['size']}`). "
        "How to read this: [benchmarks/README.md](../README.md#the-async-api).",
        "",
        "Latency: median of one awaited call, praison_db.aio and the raw async driver alternating in rounds on one "
        "event loop; ratio = praison_db.aio's median / the raw async driver's; ✅/❌: the target met or missed. The "
        "sync store's median, timed in the same rounds, is alongside. Throughput: appends per second with "
        f"{sizes['tasks']} sessions appended to at once (median of {sizes['passes']} pass(es) per side).",
        "",
        "## Summary",
        "",
    ]
    rows = []
    for name, r in ok.items():
        m = r["metrics"]
        t = m.get("throughput", {})
        rows.append([
            name, r["raw_driver"], _mark(m.get("append", {}).get("ratio"), TARGETS["append"]),
            _mark(m.get("resume", {}).get("ratio"), TARGETS["resume"]),
            f"{t['async']['appends_per_s']:,.0f}" if t else "—", f"{t['sync']['appends_per_s']:,.0f}" if t else "—",
            f"{t['ratio']:.2f}x" if t else "—",
        ])
    lines += _table(
        ["backend", "raw async driver", "append (≤1.3x raw)", f"resume {RESUME_N} (≤1.5x raw)",
         f"async: {sizes['tasks']} tasks (appends/s)", f"sync: {sizes['tasks']} threads (appends/s)", "async / sync"],
        rows,
    )

    def latency(title: str, key: str, what: str) -> None:
        lines.extend(["", f"## {title}", "", what, ""])
        body = []
        for name, r in ok.items():
            e = r["metrics"].get(key)
            if not e:
                continue
            sides = [s for s in (PRAISON, RAW, SYNC) if s in e]
            body.append([
                name, _cell(e, PRAISON), _cell(e, RAW), f"{e['ratio']:.2f}x" if "ratio" in e else "n/a", _cell(e, SYNC),
                f"{e['vs_sync']:.2f}x" if "vs_sync" in e else "n/a",
                " / ".join(_time(e[s]["p90_us"]) for s in sides), " / ".join(str(e[s]["n"]) for s in sides),
            ])
        lines.extend(_table(
            ["backend", "praison_db.aio", "raw async driver", "ratio", "praison_db sync", "aio / sync",
             "p90 (aio / raw / sync)", "calls"],
            body,
        ))

    latency("1. Durable single-message append", "append",
            f"`await store.add_message(sid, \"user\", text)`, {sizes['appends']:,} appends to one session per side, "
            "against the raw async driver's transaction (or Lua script) doing the same durable work.")
    latency(f"2. Resume: the newest {RESUME_N} messages of a {sizes['resume_messages']:,}-message session", "resume",
            f"`await store.get_messages(sid, limit={RESUME_N})` against the raw async driver's indexed read (driver "
            "rows, no model objects).")

    lines.extend(["", f"## 3. Throughput: {sizes['tasks']} sessions at once", "",
                  f"The async store with {sizes['tasks']} tasks (`asyncio.gather`), each appending to its own session, "
                  f"against the sync store driven by a ThreadPoolExecutor of {sizes['tasks']} threads, the same appends "
                  "on both; the two alternate pass by pass. Default connection pools on both sides (SQL: 5 + 10 "
                  "overflow connections); JSON, memory and chDB run each async call in asyncio's default worker threads. "
                  "CPU per append: this process's CPU time (all its threads) over a pass, per append; with the GIL, a "
                  "CPU-bound pass on either side runs at about one core.",
                  ""])
    body = []
    for name, r in ok.items():
        t = r["metrics"].get("throughput")
        if t:
            body.append([
                name, f"{t['async']['appends_per_s']:,.0f}", f"{t['sync']['appends_per_s']:,.0f}", f"{t['ratio']:.2f}x",
                _time(t["async"]["cpu_us_per_append"]), _time(t["sync"]["cpu_us_per_append"]),
                f"{t['tasks']} x {t['appends_per_task']}", t["passes"],
            ])
    lines.extend(_table(
        ["backend", "async (appends/s)", "sync (appends/s)", "async / sync", "CPU per append: async", "CPU per append: sync",
         "appends per pass", "passes"],
        body,
    ))

    missed = [
        f"{name} {key}: {r['metrics'][key]['ratio']:.2f}x against a target of {TARGETS[key]:g}x"
        for name, r in ok.items() for key in ("append", "resume")
        if r["metrics"].get(key, {}).get("ratio", 0) > TARGETS[key]
    ]
    lines.extend(["", "## Targets missed", "", *([f"- {m}" for m in missed] or ["None."])])

    lines.extend(backends_and_machine(results, raw_header="raw async driver"))
    return "\n".join(lines)


def write_report(results: dict[str, Any], out: Path) -> list[Path]:
    return write_files(results, out / "aio.md", out / "aio.json", markdown)


async def run_all(names: list[str], sizes: AioSizes) -> dict[str, Any]:
    return {name: await run_backend(BY_NAME[name], sizes) for name in names}


def main(argv: list[str] | None = None) -> int:
    return comparison_main(
        argv, module="aio", doc=__doc__ or "", sizes=SIZES, libraries=LIBRARIES,
        run=lambda names, sizes: asyncio.run(run_all(names, sizes)),
        write=write_report, machine_extra={"event_loop": "asyncio (default policy)"},
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
