"""Benchmark PraisonSession against the OpenAI Agents SDK's own sessions, one process, one event loop.

    python -m benchmarks.openai_agents                     # smoke: seconds, proves it works (benchmarks/results/smoke/)
    python -m benchmarks.openai_agents --size full         # the numbers in benchmarks/results/openai_agents.md
    python -m benchmarks.openai_agents --backends sqlite --out /tmp/bench

Per backend, PraisonSession and the SDK's session for that database on the same place, alternating in rounds
(benchmarks/harness.py ``call_order``, each call awaited):

- sqlite: the SDK's ``SQLiteSession(sid, path)`` (its own file in the same folder as praison_db's);
- redis: its ``RedisSession(sid, redis_client=..., key_prefix=...)`` (redis.asyncio, one client for all sessions);
- postgresql: its ``SQLAlchemySession(sid, engine=..., create_tables=True)`` on one async engine over psycopg 3's
  async driver (``postgresql+psycopg://``), in the same fresh database as praison_db's tables.

PraisonSession runs twice: over ``praison_db.db(url)`` (column "PraisonSession": each call in a worker thread, what a
URL gives) and over ``await praison_db.aio.db(url)`` (column "on aio.db": the native async driver). Each side keeps
one store or engine or client (one pool) for all its sessions. Measured:

1. ``add_items([item])``: 1,000 calls, one item each, to one session (a user message and an assistant output message
   with list content in turn, about 200 characters of text each);
2. ``get_items(limit=20)`` on a 1,000-item session (filled with one ``add_items``, not timed);
3. ``pop_item()``: each call removes the newest item of a session filled with as many items as there are calls.

Same durability on both sides: on SQLite both are in WAL mode with synchronous=FULL (the SDK's connections keep
SQLite's default, FULL; praison_db sets it); on PostgreSQL and Redis both commit with the server's settings. Writes
openai_agents.md (tables) and openai_agents.json (every number) into the output folder.
"""

from __future__ import annotations

import asyncio
import sys
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

if __package__ in (None, ""):  # run as a script: python benchmarks/openai_agents.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from praison_db import aio, db  # noqa: E402

from .aio import interleaved_async  # noqa: E402
from .backends import BY_NAME, Backend, Location  # noqa: E402
from .harness import PRAISON, RESUME_N, Make, content, fresh_id  # noqa: E402
from .report import _table, _time, backends_and_machine, write_files  # noqa: E402
from .run import Run, comparison_main, log, recorded  # noqa: E402

NATIVE = "praison_db_aio"  # PraisonSession over praison_db.aio.db(url)
SDK = "sdk"  # the SDK's own session for the database
SIDES = (PRAISON, NATIVE, SDK)
BACKENDS = ("sqlite", "postgresql", "redis")
SDK_SESSION = {"sqlite": "SQLiteSession", "postgresql": "SQLAlchemySession (psycopg async)", "redis": "RedisSession"}
LIBRARIES = ("openai-agents", "aiosqlite", "greenlet")
TARGET = 1.2  # PraisonSession's median at most this many times the SDK session's


@dataclass(frozen=True)
class AgentsSizes:
    adds: int  # 1. add_items calls to one session, per side
    history: int  # 2. items in the session whose newest 20 are read
    reads: int  # reads per side in 2.
    pops: int  # 3. pop_item calls per side (the session holds as many items)
    rounds: int  # alternations between the sides
    budget_s: float  # soft cap on one measurement of one backend


SIZES = {
    "smoke": AgentsSizes(adds=20, history=100, reads=10, pops=20, rounds=2, budget_s=10),
    "full": AgentsSizes(adds=1000, history=1000, reads=1000, pops=1000, rounds=10, budget_s=120),
}


def item(i: int) -> dict[str, Any]:
    """A user message, or an assistant output message as the Responses API returns it."""
    if i % 2 == 0:
        return {"role": "user", "content": content(i)}
    return {
        "id": f"msg_{i}", "type": "message", "role": "assistant", "status": "completed",
        "content": [{"type": "output_text", "text": content(i), "annotations": [], "logprobs": []}],
    }


class PraisonSide:
    """PraisonSession over one praison_db store, opened with the sync or the async API."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def session(self, session_id: str) -> Any:
        from praison_db.integrations.openai_agents import PraisonSession

        return PraisonSession(session_id, self.store)


class SdkSide:
    """The SDK's session for the backend, each over one shared engine / client / file."""

    def __init__(self, kind: str, location: Location) -> None:
        self.kind, self.location = kind, location
        self.engine: Any = None
        self.client: Any = None
        self.sessions: list[Any] = []
        if kind == "postgresql":
            from sqlalchemy.ext.asyncio import create_async_engine

            self.engine = create_async_engine(location.praison_url.replace("postgresql://", "postgresql+psycopg://", 1))
        elif kind == "redis":
            import redis.asyncio

            url = location.praison_url.split("?", 1)[0]
            self.client = redis.asyncio.from_url(url)
            # Under the run's praison prefix, so the location's clean-up removes these keys too.
            self.prefix = parse_qs(urlsplit(location.praison_url).query)["prefix"][0] + "sdk"

    def session(self, session_id: str) -> Any:
        made: Any
        if self.kind == "sqlite":
            from agents import SQLiteSession

            made = SQLiteSession(session_id, self.location.tmp / "sdk.db")
        elif self.kind == "postgresql":
            from agents.extensions.memory.sqlalchemy_session import SQLAlchemySession

            made = SQLAlchemySession(session_id, engine=self.engine, create_tables=True)
        else:
            from agents.extensions.memory.redis_session import RedisSession

            made = RedisSession(session_id, redis_client=self.client, key_prefix=self.prefix)
        self.sessions.append(made)
        return made

    async def version(self) -> str:
        if self.kind == "sqlite":
            probe = self.session(fresh_id("probe"))
            conn = await asyncio.to_thread(probe._get_connection)  # the SDK's own connection and its settings
            mode, sync = conn.execute("PRAGMA journal_mode").fetchone()[0], conn.execute("PRAGMA synchronous").fetchone()[0]
            version = conn.execute("SELECT sqlite_version()").fetchone()[0]
            level = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(sync, sync)
            return f"SQLite {version} (SQLiteSession: journal_mode={mode}, synchronous={level})"
        if self.kind == "postgresql":
            from sqlalchemy import text

            async with self.engine.connect() as conn:
                version = (await conn.execute(text("SHOW server_version"))).scalar()
                commit = (await conn.execute(text("SHOW synchronous_commit"))).scalar()
            return f"PostgreSQL {version} (synchronous_commit={commit})"
        info = await self.client.info("server")
        try:
            fsync = (await self.client.config_get("appendfsync")).get("appendfsync")
        except Exception:  # noqa: BLE001 - CONFIG can be disabled on a managed server
            fsync = "unknown"
        return f"Redis {info.get('redis_version')} (appendfsync={fsync})"

    async def close(self) -> None:
        for session in self.sessions:
            close = getattr(session, "close", None)
            if close is not None and self.kind == "sqlite":
                close()
        if self.engine is not None:
            await self.engine.dispose()
        if self.client is not None:
            await self.client.aclose()


@dataclass
class AgentsRun(Run):
    """``run.Run`` (recording, notes, log lines) with async timing; ratios against the SDK's session."""

    sizes: AgentsSizes  # type: ignore[assignment]

    async def measure(self, key: str, makes: dict[str, Make], total: int) -> None:
        samples = await interleaved_async(makes, total, self.sizes.rounds, self.sizes.budget_s)
        self.record(key, samples, total)
        entry = self.metrics[key]
        for side, field in ((PRAISON, "ratio"), (NATIVE, "ratio_aio")):
            if side in entry and SDK in entry:
                entry[field] = entry[side]["median_us"] / entry[SDK]["median_us"]
        log(f"[{self.name}] {key}: PraisonSession / SDK = {entry.get('ratio', 0):.2f}x, on aio.db {entry.get('ratio_aio', 0):.2f}x")

    def sessions(self, kind: str) -> dict[str, Any]:
        return {name: side.session(fresh_id(kind)) for name, side in self.sides.items()}

    async def add_items(self) -> None:
        sessions = self.sessions("add")

        def make(session: Any) -> Make:
            return lambda i: partial(session.add_items, [item(i)])

        await self.measure("add_items", {name: make(s) for name, s in sessions.items()}, self.sizes.adds)
        for name, session in sessions.items():
            held, calls = len(await session.get_items()), self.metrics["add_items"][name]["n"]
            if held != calls:
                raise AssertionError(f"add_items: the {name} side holds {held} items after {calls} calls")

    async def get_items(self) -> None:
        sessions, items = self.sessions("read"), [item(i) for i in range(self.sizes.history)]
        for name, session in sessions.items():
            await session.add_items(items)  # setup: one call
            if await session.get_items(limit=RESUME_N) != items[-RESUME_N:]:
                raise AssertionError(f"get_items: the {name} side did not return the newest {RESUME_N} items")

        def make(session: Any) -> Make:
            return lambda i: partial(session.get_items, limit=RESUME_N)

        await self.measure("get_items", {name: make(s) for name, s in sessions.items()}, self.sizes.reads)

    async def pop_item(self) -> None:
        sessions, items = self.sessions("pop"), [item(i) for i in range(self.sizes.pops)]
        for session in sessions.values():
            await session.add_items(items)

        def make(session: Any) -> Make:
            return lambda i: session.pop_item

        await self.measure("pop_item", {name: make(s) for name, s in sessions.items()}, self.sizes.pops)
        for name, session in sessions.items():
            left, calls = await session.get_items(), self.metrics["pop_item"][name]["n"]
            if left != items[: len(items) - calls]:
                raise AssertionError(f"pop_item: the {name} side holds {len(left)} items after {calls} pops of {len(items)}")


def _needs(backend: Backend) -> str | None:
    reason = backend.unavailable()
    if reason:
        return reason
    modules = {"sqlite": ("agents",), "postgresql": ("agents", "sqlalchemy"), "redis": ("agents", "redis")}[backend.name]
    for module in modules:
        if Backend(backend.name, backend.location, (module,)).unavailable() is not None:
            return f"{module} is not in this environment (pip install 'praison-db[openai-agents]')"
    return None


async def run_backend(backend: Backend, sizes: AgentsSizes) -> dict[str, Any]:
    reason = _needs(backend)
    if reason:
        log(f"[{backend.name}] not available: {reason}")
        return {"status": "not available", "reason": reason}
    result: dict[str, Any] = {"status": "ok", "raw_driver": SDK_SESSION[backend.name]}
    with recorded(backend.name, result):
        async with AsyncExitStack() as stack:
            location: Location = stack.enter_context(backend.location())
            store = db(location.praison_url, session_dir=location.tmp / "home")
            stack.callback(store.close)
            native = await aio.db(location.praison_url, session_dir=location.tmp / "home")
            stack.push_async_callback(native.aclose)
            sdk = SdkSide(backend.name, location)
            stack.push_async_callback(sdk.close)
            sides: dict[str, Any] = {PRAISON: PraisonSide(store), NATIVE: PraisonSide(native), SDK: sdk}
            result["server"] = await sdk.version()
            run = AgentsRun(backend.name, sides, sizes, location)  # type: ignore[arg-type]
            result["metrics"], result["notes"] = run.metrics, run.notes
            log(f"[{backend.name}] {result['server']}")
            await run.add_items()
            await run.get_items()
            await run.pop_item()
    return result


# ---- report ----


def _cell(entry: dict[str, Any] | None, side: str) -> str:
    return _time(entry[side]["median_us"]) if entry and side in entry else "—"


def _ratio(entry: dict[str, Any] | None, field: str = "ratio") -> str:
    if not entry or field not in entry:
        return "n/a"
    value = entry[field]
    return f"{value:.2f}x {'✅' if value <= TARGET else '❌'}"


KEYS = {"add_items": "add_items x1", "get_items": f"get_items({RESUME_N})", "pop_item": "pop_item"}


def markdown(results: dict[str, Any], analysis: bool = False) -> str:
    ok = {name: r for name, r in results["backends"].items() if r.get("metrics")}
    sizes, machine = results["sizes"], results["machine"]
    took = f" in {results['seconds']:.0f} s" if results["size"] == "full" else ""
    lines = [
        "# PraisonSession against the OpenAI Agents SDK's own sessions",
        "",
        f"Generated by `{results['command']}` on {machine['date']}{took} (size `{results['size']}`). What is measured "
        "and how: the docstring of [benchmarks/openai_agents.py](../openai_agents.py).",
        "",
        "Each number is the median time of one awaited call, the sides alternating in rounds on one event loop, each "
        "over one shared store, engine or client; ratio = PraisonSession's median / the SDK session's (below 1: "
        f"praison_db is faster; ✅ at most {TARGET}x). \"PraisonSession\" runs over `praison_db.db(url)` (worker "
        "threads, as a URL does); \"on aio.db\" over `await praison_db.aio.db(url)` (the native async driver).",
        "",
        "## Summary: PraisonSession / the SDK's session",
        "",
    ]
    rows = []
    for name, r in ok.items():
        m = r["metrics"]
        rows.append([name, r["raw_driver"], *(_ratio(m.get(k)) for k in KEYS), *(_ratio(m.get(k), "ratio_aio") for k in KEYS)])
    lines += _table(
        ["backend", "SDK session", *(f"{label}" for label in KEYS.values()), *(f"{label} on aio.db" for label in KEYS.values())],
        rows,
    )

    def section(title: str, key: str, what: str) -> None:
        lines.extend(["", f"## {title}", "", what, ""])
        body = []
        for name, r in ok.items():
            e = r["metrics"].get(key)
            if not e:
                continue
            sides = [s for s in SIDES if s in e]
            body.append([
                name, _cell(e, PRAISON), _cell(e, NATIVE), _cell(e, SDK), _ratio(e), _ratio(e, "ratio_aio"),
                " / ".join(_time(e[s]["p90_us"]) for s in sides), " / ".join(str(e[s]["n"]) for s in sides),
            ])
        lines.extend(_table(
            ["backend", "PraisonSession", "on aio.db", "SDK session", "ratio", "ratio on aio.db", "p90 (same order)", "calls"],
            body,
        ))

    section("1. add_items, one item per call", "add_items",
            f"`await session.add_items([item])`, {sizes['adds']:,} calls to one session per side, durable on return.")
    section(f"2. get_items(limit={RESUME_N}) on a {sizes['history']:,}-item session", "get_items",
            f"The newest {RESUME_N} items, oldest first, {sizes['reads']:,} reads per side.")
    section("3. pop_item", "pop_item",
            f"`await session.pop_item()`, {sizes['pops']:,} calls per side, each removing the newest item of a "
            f"{sizes['pops']:,}-item session.")
    if analysis:
        lines.extend(["", "Where the time goes, and what would close each gap: [openai_agents_analysis.md](openai_agents_analysis.md)."])
    lines.extend(backends_and_machine(results, raw_header="SDK session"))
    return "\n".join(lines)


def write_report(results: dict[str, Any], out: Path) -> list[Path]:
    # openai_agents_analysis.md is written by hand after a full run: where the time goes.
    analysis = (out / "openai_agents_analysis.md").exists()
    return write_files(results, out / "openai_agents.md", out / "openai_agents.json", lambda r: markdown(r, analysis))


async def run_all(names: list[str], sizes: AgentsSizes) -> dict[str, Any]:
    from agents import set_tracing_disabled

    set_tracing_disabled(True)
    return {name: await run_backend(BY_NAME[name], sizes) for name in names}


def main(argv: list[str] | None = None) -> int:
    return comparison_main(
        argv, module="openai_agents", doc=__doc__ or "", sizes=SIZES, libraries=LIBRARIES,
        run=lambda names, sizes: asyncio.run(run_all(names, sizes)),
        write=write_report, only=tuple(BACKENDS), refusal="the SDK has sessions for",
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
