"""Benchmark PraisonCheckpointSaver against LangGraph's own savers doing the same work on the same database.

    python -m benchmarks.langgraph                      # smoke: seconds, proves it works (benchmarks/results/smoke/)
    python -m benchmarks.langgraph --size full          # the numbers in benchmarks/results/langgraph.md (minutes)
    python -m benchmarks.langgraph --backends sqlite,postgresql --out /tmp/bench
    python -m benchmarks.langgraph --backends redis,mongodb   # Redis (PRAISON_BENCH_REDIS_URL), MongoDB (PRAISON_BENCH_MONGODB_URL)

Per backend, in one process, the two savers alternating in rounds (benchmarks/harness.py), each on a thread of its
own, through the sync API that ``graph.invoke`` uses:

1. ``put``: checkpoints appended to one thread, each the child of the previous, as a running graph writes them:
   a ``messages`` channel that changes at every step (the last ten messages, about 2 KB) and a ``context`` channel
   written once and named by every checkpoint after;
2. ``get_tuple`` of the newest checkpoint of that thread (no checkpoint_id), which has three pending writes;
3. ``list(config, limit=20)``: the newest 20 checkpoints of that thread with their values and writes.

The reference savers: LangGraph's SqliteSaver (langgraph-checkpoint-sqlite) on a file of its own beside
praison_db's, with the same durability (WAL, synchronous=FULL), PostgresSaver (langgraph-checkpoint-postgres) on
the same fresh database (its tables beside praison_db's), MongoDBSaver (langgraph-checkpoint-mongodb, when it is
installed: it is not a dependency of praison-db) in the same database as praison_db's collections, and InMemorySaver
for memory://. MySQL has no LangGraph saver, and langgraph-checkpoint-redis needs Redis's search and JSON modules
(Redis 8 or Redis Stack), which plain Redis lacks: there praison_db's numbers are reported alone. Writes results to
langgraph.md and langgraph.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python benchmarks/langgraph.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from langgraph.checkpoint.base.id import uuid6  # noqa: E402

from praison_db.integrations.langgraph import PraisonCheckpointSaver  # noqa: E402

from .backends import BY_NAME as LOCATIONS  # noqa: E402
from .backends import Location, Unavailable  # noqa: E402
from .harness import PRAISON, content, interleaved, summarize  # noqa: E402
from .report import _table, _time, backends_and_machine, machine_info, write_files  # noqa: E402
from .run import log, recorded  # noqa: E402

ROOT = Path(__file__).resolve().parent
REFERENCE = "langgraph"
LIBRARIES = (
    "langgraph", "langgraph-checkpoint", "langgraph-checkpoint-sqlite", "langgraph-checkpoint-postgres", "langgraph-checkpoint-mongodb",
)


@dataclass(frozen=True)
class LgSizes:
    puts: int  # 1. checkpoints put to one thread, per side
    gets: int  # 2. get_tuple of the newest
    lists: int  # 3. list(limit=20)
    list_limit: int
    rounds: int  # alternations between the sides per measurement
    budget_s: float  # soft cap on one measurement of one backend


SIZES = {
    "smoke": LgSizes(puts=20, gets=20, lists=10, list_limit=20, rounds=2, budget_s=10),
    "full": LgSizes(puts=1000, gets=1000, lists=300, list_limit=20, rounds=10, budget_s=90),
}


@dataclass(frozen=True)
class Backend:
    name: str
    reference: str  # the LangGraph saver it is compared with ("" for none)
    reference_module: str  # importable when the reference can run
    optional: bool = False  # the reference is not a dev dependency: without it praison_db is measured alone
    alone: str = "no LangGraph saver"  # why there is no reference, when there is none


BACKENDS = [
    Backend("memory", "InMemorySaver", "langgraph.checkpoint.memory"),
    Backend("sqlite", "SqliteSaver", "langgraph.checkpoint.sqlite"),
    Backend("postgresql", "PostgresSaver", "langgraph.checkpoint.postgres"),
    Backend("mysql", "", ""),
    Backend("redis", "", "", alone="langgraph-checkpoint-redis needs Redis 8 or Redis Stack"),
    Backend("mongodb", "MongoDBSaver", "langgraph.checkpoint.mongodb", optional=True),
]
PACKAGES = {"sqlite": LIBRARIES[2], "postgresql": LIBRARIES[3], "mongodb": LIBRARIES[4]}
SECANTUS_NOTE = (
    "the server is SecantusDB (MongoDB's wire protocol on WiredTiger, in a process of its own), not MongoDB: its planner "
    "sorts a thread's checkpoints in memory for the newest instead of reading the index backwards, and scans for an "
    "`$in`, so both savers' reads grow with the thread here; set PRAISON_BENCH_MONGODB_URL to measure a MongoDB server"
)
BY_NAME = {b.name: b for b in BACKENDS}


@contextmanager
def reference_saver(backend: Backend, location: Location) -> Iterator[Any]:
    """LangGraph's saver for this backend on its isolated place, set up; None where there is none."""
    if backend.name == "memory":
        from langgraph.checkpoint.memory import InMemorySaver

        yield InMemorySaver()
    elif backend.name == "sqlite":
        from langgraph.checkpoint.sqlite import SqliteSaver

        with SqliteSaver.from_conn_string(str(location.tmp / "langgraph.db")) as saver:
            saver.setup()
            saver.conn.execute("PRAGMA synchronous=FULL")  # praison_db's durability (SQLite's default, said aloud)
            yield saver
    elif backend.name == "postgresql":
        from langgraph.checkpoint.postgres import PostgresSaver

        with PostgresSaver.from_conn_string(location.praison_url) as saver:
            saver.setup()
            yield saver
    elif backend.name == "mongodb":
        from langgraph.checkpoint.mongodb import MongoDBSaver

        database = location.praison_url.partition("?")[0].rsplit("/", 1)[1]
        with MongoDBSaver.from_conn_string(location.praison_url, db_name=database) as saver:
            yield saver
    else:
        yield None


class Chain:
    """One side's thread: the checkpoints it has put so far, and how to make the next one (untimed)."""

    def __init__(self, saver: Any, name: str) -> None:
        self.saver = saver
        self.thread_id = f"{name}-{uuid.uuid4().hex[:10]}"
        self.parent: dict[str, Any] = {"configurable": {"thread_id": self.thread_id, "checkpoint_ns": ""}}
        self.versions: dict[str, Any] = {}
        self.context = {"user": "alice", "preferences": {"tone": "friendly", "language": "en"}, "notes": content(0) * 4}
        self.run_id = str(uuid.uuid4())
        self.step = 0

    def next_put(self) -> Callable[[], Any]:
        step = self.step
        self.step += 1
        new_versions = {"messages": self.saver.get_next_version(self.versions.get("messages"), None)}
        if "context" not in self.versions:
            new_versions["context"] = self.saver.get_next_version(None, None)
        seen = {"reply": dict(self.versions)} if self.versions else {}
        self.versions.update(new_versions)
        checkpoint = {
            "v": 4, "id": str(uuid6(clock_seq=step)), "ts": datetime.now(timezone.utc).isoformat(),
            "channel_values": {"messages": [content(step - k) for k in range(10)], "context": self.context},
            "channel_versions": dict(self.versions), "versions_seen": seen, "updated_channels": ["messages"],
        }
        meta = {"source": "loop", "step": step, "parents": {}, "run_id": self.run_id}
        config = self.parent

        def put() -> None:
            self.parent = self.saver.put(config, checkpoint, meta, new_versions)

        return put

    def latest(self) -> dict[str, Any]:
        return {"configurable": {"thread_id": self.thread_id, "checkpoint_ns": ""}}


def run_backend(backend: Backend, sizes: LgSizes) -> dict[str, Any]:
    reason = LOCATIONS[backend.name].unavailable()
    missing = ""
    if not reason and backend.reference_module:
        try:
            __import__(backend.reference_module)
        except ImportError as e:
            missing = f"{backend.reference} is not installed ({e.name}): pip install {PACKAGES[backend.name]}"
    if missing and not backend.optional:
        reason = missing
    if reason:
        log(f"[{backend.name}] not available: {reason}")
        return {"status": "not available", "reason": reason}
    if missing:
        log(f"[{backend.name}] measuring praison_db alone: {missing}")
        backend = Backend(backend.name, "", "")
    result: dict[str, Any] = {"status": "ok", "raw_driver": backend.reference or f"none ({backend.alone})"}
    if missing:
        result["raw_driver"] = f"none ({PACKAGES[backend.name]} not installed)"
    metrics: dict[str, Any] = {}
    result["metrics"] = metrics
    with recorded(backend.name, result), LOCATIONS[backend.name].location() as location, ExitStack() as stack:
        ours = stack.enter_context(PraisonCheckpointSaver(location.praison_url))
        ours.setup()
        theirs = stack.enter_context(reference_saver(backend, location))
        chains = {PRAISON: Chain(ours, "praison")}
        if theirs is not None:
            chains[REFERENCE] = Chain(theirs, "langgraph")
        budget = sizes.budget_s

        def record(key: str, samples: dict[str, list[float]], requested: int) -> None:
            entry: dict[str, Any] = {**summarize(samples), "requested": requested}
            if REFERENCE in entry:
                entry["ratio"] = entry[PRAISON]["median_us"] / entry[REFERENCE]["median_us"]
            metrics[key] = entry
            ratio = f" ({entry['ratio']:.2f}x)" if "ratio" in entry else ""
            log(f"[{backend.name}] {key}: " + ", ".join(f"{s} {entry[s]['median_us']:,.0f} µs" for s in chains if s in entry) + ratio)

        samples = interleaved({s: (lambda i, c=c: c.next_put()) for s, c in chains.items()}, sizes.puts, sizes.rounds, budget)
        record("put", samples, sizes.puts)
        for side, chain in chains.items():  # pending writes on the newest checkpoint, as a running step leaves them
            chain.saver.put_writes(chain.parent, [("messages", [content(1)]), ("tool", {"ok": True}), ("branch:to:reply", None)], "task-1")
            got = chain.saver.get_tuple(chain.latest())
            if got is None or got.checkpoint["id"] != chain.parent["configurable"]["checkpoint_id"] or len(got.pending_writes) != 3:
                raise AssertionError(f"get_tuple: the {side} side did not return its newest checkpoint with its writes")
            listed = list(chain.saver.list(chain.latest(), limit=sizes.list_limit))
            if len(listed) != min(sizes.list_limit, chain.step) or listed[0].checkpoint["channel_values"]["context"] != chain.context:
                raise AssertionError(f"list: the {side} side returned {len(listed)} checkpoints or lost a value")
        samples = interleaved(
            {s: (lambda i, c=c: lambda: c.saver.get_tuple(c.latest())) for s, c in chains.items()}, sizes.gets, sizes.rounds, budget
        )
        record("get_tuple", samples, sizes.gets)
        samples = interleaved(
            {s: (lambda i, c=c: lambda: list(c.saver.list(c.latest(), limit=sizes.list_limit))) for s, c in chains.items()},
            sizes.lists, sizes.rounds, budget,
        )
        record("list", samples, sizes.lists)
        result["checkpoints_in_thread"] = {s: c.step for s, c in chains.items()}
        notes = [f"{k}: {min(v[s]['n'] for s in chains if s in v):.0f} of {v['requested']} calls (time budget of {budget:g} s)"
                 for k, v in metrics.items() if min(v[s]["n"] for s in chains if s in v) < v["requested"]]
        if backend.name == "mongodb" and not os.environ.get("PRAISON_BENCH_MONGODB_URL"):
            notes.append(SECANTUS_NOTE)
        if notes:
            result["notes"] = notes
    return result


# ---- report ----


def _cells(entry: dict[str, Any] | None) -> list[str]:
    if not entry:
        return ["—", "—", "—"]
    ref = entry.get(REFERENCE)
    return [_time(entry[PRAISON]["median_us"]), _time(ref["median_us"]) if ref else "—", f"{entry['ratio']:.2f}x" if "ratio" in entry else "n/a"]


def markdown(results: dict[str, Any]) -> str:
    ok = {name: r for name, r in results["backends"].items() if r.get("metrics")}
    sizes, machine = results["sizes"], results["machine"]
    took = f" in {results['seconds']:.0f} s" if results["size"] == "full" else ""
    lines = [
        "# LangGraph checkpointer benchmarks: results",
        "",
        f"Generated by `{results['command']}` on {machine['date']}{took} (size `{results['size']}`). The program and "
        "what it does: [benchmarks/langgraph.py](../langgraph.py).",
        "",
        "PraisonCheckpointSaver against LangGraph's own saver for the same database (SqliteSaver, PostgresSaver, "
        "MongoDBSaver; InMemorySaver for memory://), through the sync API a running graph uses. Each number is the median time of "
        "one call, the two savers alternating in rounds in one process; ratio = PraisonCheckpointSaver's median / "
        "LangGraph's (below 1: faster).",
        "",
        f"- put: {sizes['puts']:,} checkpoints appended to one thread, each the child of the previous: a `messages` "
        "channel (about 2 KB) that changes at every step and a `context` channel (about 1 KB) written once;",
        f"- get_tuple: the newest checkpoint of that {sizes['puts']:,}-checkpoint thread (no checkpoint_id), with its "
        f"values and 3 pending writes, {sizes['gets']:,} reads;",
        f"- list: `list(config, limit={sizes['list_limit']})` on the same thread, {sizes['lists']:,} reads.",
        "",
        "## Summary",
        "",
    ]
    body = []
    for name, r in ok.items():
        m = r["metrics"]
        body.append([name, r["raw_driver"], *_cells(m.get("put")), *_cells(m.get("get_tuple")), *_cells(m.get("list"))])
    lines += _table(
        ["backend", "LangGraph saver", "put: praison_db", "put: LangGraph", "ratio", "get_tuple: praison_db", "get_tuple: LangGraph",
         "ratio", f"list({sizes['list_limit']}): praison_db", f"list({sizes['list_limit']}): LangGraph", "ratio"],
        body,
    )
    lines.extend(["", "## Spread", "", "p90 of each measurement and the calls timed, praison_db / LangGraph.", ""])
    spread = []
    for name, r in ok.items():
        row = [name]
        for key in ("put", "get_tuple", "list"):
            e = r["metrics"].get(key)
            sides = [s for s in (PRAISON, REFERENCE) if e and s in e]
            row.append(" / ".join(_time(e[s]["p90_us"]) for s in sides) if e else "—")
            row.append(" / ".join(str(e[s]["n"]) for s in sides) if e else "—")
        spread.append(row)
    lines += _table(["backend", "put p90", "put calls", "get_tuple p90", "get_tuple calls", "list p90", "list calls"], spread)
    lines.extend(backends_and_machine(results, raw_header="LangGraph saver"))
    return "\n".join(lines)


def write_report(results: dict[str, Any], out: Path) -> list[Path]:
    return write_files(results, out / "langgraph.md", out / "langgraph.json", markdown)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.langgraph", description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="smoke", help="smoke: seconds (CI); full: the published numbers")
    parser.add_argument("--backends", default="", help=f"comma-separated subset of {','.join(BY_NAME)} (default: all reachable)")
    parser.add_argument("--out", type=Path, help="output folder (default benchmarks/results, or benchmarks/results/smoke for smoke)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.backends.split(",") if n.strip()] or list(BY_NAME)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BY_NAME)}")
    out = args.out or (ROOT / "results" if args.size == "full" else ROOT / "results" / "smoke")
    sizes = SIZES[args.size]
    command = "python -m benchmarks.langgraph " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = machine_info()
    for name in LIBRARIES:
        try:
            machine["libraries"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    results: dict[str, Any] = {"size": args.size, "sizes": asdict(sizes), "command": command.strip(), "machine": machine}
    started = time.perf_counter()
    backends: dict[str, Any] = {}
    for name in names:
        try:
            backends[name] = run_backend(BY_NAME[name], sizes)
        except Unavailable as e:
            backends[name] = {"status": "not available", "reason": str(e)}
    results["backends"] = backends
    results["seconds"] = round(time.perf_counter() - started, 1)
    written = write_report(results, out)
    log(f"wrote {', '.join(str(p) for p in written)}")
    return 1 if any(r["status"] == "failed" for r in backends.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
