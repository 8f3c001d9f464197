"""Benchmark PraisonChatMessageHistory against LangChain's SQLChatMessageHistory (langchain-community), one process.

    python -m benchmarks.langchain                     # smoke: seconds, proves it works (benchmarks/results/smoke/)
    python -m benchmarks.langchain --size full         # the numbers in benchmarks/results/langchain.md
    python -m benchmarks.langchain --backends sqlite --out /tmp/bench

Per backend, both histories on the same place (SQLite: two files in one folder; PostgreSQL: one fresh database, two
sets of tables), each through its one shared connection pool, alternating in rounds (benchmarks/harness.py):

1. ``history.add_message(message)``: 1,000 durable appends to one session, alternately a HumanMessage and an
   AIMessage of about 200 characters;
2. ``history.messages``: every message of a 1,000-message session (filled with one ``add_messages``, not timed);
3. the newest 20 of that session: ``PraisonChatMessageHistory(..., limit=20).messages``. SQLChatMessageHistory has
   no window: it reads the whole session (2.), so this row has praison_db's side only.

Same durability on both sides: on SQLite, LangChain's engine gets the PRAGMAs praison_db's has (WAL, synchronous=FULL),
so the ratio is the libraries' cost and not a journal mode; on PostgreSQL both commit with the server's default
``synchronous_commit=on``. Writes langchain.md (tables) and langchain.json (every number) into the output folder.
"""

from __future__ import annotations

import sys
import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python benchmarks/langchain.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from praison_db.facade import open_store  # noqa: E402

from .backends import BY_NAME, Backend, Location  # noqa: E402
from .harness import PRAISON, RESUME_N, Make, content, fresh_id  # noqa: E402
from .report import _table, _time, backends_and_machine, write_files  # noqa: E402
from .run import Run, comparison_main, log, recorded  # noqa: E402

LANGCHAIN = "langchain"
BACKENDS = ("sqlite", "postgresql")  # where SQLChatMessageHistory runs (SQLAlchemy) and praison_db does too
LIBRARIES = ("langchain-core", "langchain-community")
REQUIREMENT = "pip install 'langchain-community>=0.4'"


@dataclass(frozen=True)
class LangChainSizes:
    appends: int  # 1. add_message calls to one session, per side
    history: int  # 2. and 3. the length of the session that is read
    reads: int  # reads per side in 2. and 3.
    rounds: int  # alternations between the sides
    budget_s: float  # soft cap on one measurement of one backend


SIZES = {
    "smoke": LangChainSizes(appends=20, history=100, reads=10, rounds=2, budget_s=10),
    "full": LangChainSizes(appends=1000, history=1000, reads=300, rounds=10, budget_s=120),
}


def message(i: int) -> Any:
    from langchain_core.messages import AIMessage, HumanMessage

    return HumanMessage(content(i)) if i % 2 == 0 else AIMessage(content(i))


class PraisonSide:
    """PraisonChatMessageHistory over one conversations store (one pool), as ``PraisonChatMessageHistory(sid, db)``."""

    def __init__(self, url: str) -> None:
        self.store = open_store(url, "conversations")

    def history(self, session_id: str, limit: int | None = None) -> Any:
        from praison_db.integrations.langchain import PraisonChatMessageHistory

        return PraisonChatMessageHistory(session_id, self.store, limit=limit)

    def close(self) -> None:
        self.store.close()


class LangChainSide:
    """SQLChatMessageHistory over one SQLAlchemy engine (one pool), as ``SQLChatMessageHistory(sid, connection=engine)``."""

    def __init__(self, url: str) -> None:
        from sqlalchemy import create_engine, event

        self.kind = "sqlite" if url.startswith("sqlite") else "postgresql"
        # psycopg 3, the driver praison_db uses, rather than SQLAlchemy's default psycopg2 (not installed here).
        self.engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        if self.kind == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)

    def history(self, session_id: str) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # langchain-community announces its sunset
            from langchain_community.chat_message_histories import SQLChatMessageHistory

        return SQLChatMessageHistory(session_id, connection=self.engine, table_name="langchain_message_store")

    def version(self) -> str:
        queries = {
            "sqlite": ("SELECT 'SQLite ' || sqlite_version()", "PRAGMA journal_mode", "PRAGMA synchronous"),
            "postgresql": ("SELECT 'PostgreSQL ' || current_setting('server_version')", "SHOW synchronous_commit", "SHOW fsync"),
        }[self.kind]
        labels = {"sqlite": ("journal_mode", "synchronous"), "postgresql": ("synchronous_commit", "fsync")}[self.kind]
        from sqlalchemy import text

        with self.engine.connect() as conn:
            values = [str(conn.execute(text(q)).scalar()) for q in queries]
        if self.kind == "sqlite":
            values[2] = {"2": "FULL", "3": "EXTRA"}.get(values[2], values[2])
        return f"{values[0]} ({labels[0]}={values[1]}, {labels[1]}={values[2]})"

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(conn: Any, record: Any) -> None:
    """What praison_db sets on every SQLite connection: the same durability on both sides."""
    cur = conn.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=30000"):
        cur.execute(f"PRAGMA {pragma}")
    cur.close()


@dataclass
class LangChainRun(Run):
    """``run.Run`` (interleaved timing, recording, notes, log lines); sides: PRAISON and LANGCHAIN."""

    sizes: LangChainSizes  # type: ignore[assignment]

    def measure(self, key: str, makes: dict[str, Make], total: int) -> None:
        self.time(key, makes, total)
        entry = self.metrics[key]
        if PRAISON in entry and LANGCHAIN in entry:
            entry["ratio"] = entry[PRAISON]["median_us"] / entry[LANGCHAIN]["median_us"]
            log(f"[{self.name}] {key}: praison_db / LangChain = {entry['ratio']:.2f}x")

    def add_message(self) -> None:
        histories = {name: side.history(fresh_id("append")) for name, side in self.sides.items()}

        def make(history: Any) -> Make:
            return lambda i: partial(history.add_message, message(i))

        self.measure("add_message", {name: make(h) for name, h in histories.items()}, self.sizes.appends)
        for name, h in histories.items():
            held, calls = len(h.messages), self.metrics["add_message"][name]["n"]
            if held != calls:
                raise AssertionError(f"add_message: the {name} side holds {held} messages after {calls} calls")

    def reads(self) -> None:
        n = self.sizes.history
        sids = {name: fresh_id("read") for name in self.sides}
        full: dict[str, Any] = {}
        for name, side in self.sides.items():
            full[name] = side.history(sids[name])
            full[name].add_messages([message(i) for i in range(n)])  # setup, one transaction
            got = full[name].messages
            if len(got) != n or got[-1] != message(n - 1):
                raise AssertionError(f"messages: the {name} side returned {len(got)} messages, expected {n}")
        self.measure("messages", {name: _reader(h) for name, h in full.items()}, self.sizes.reads)

        window = self.sides[PRAISON].history(sids[PRAISON], limit=RESUME_N)
        if window.messages != full[PRAISON].messages[-RESUME_N:]:
            raise AssertionError("window: PraisonChatMessageHistory(limit=20) did not return the newest 20")
        self.measure("window", {PRAISON: _reader(window)}, self.sizes.reads)


def _reader(history: Any) -> Make:
    def read() -> Any:
        return history.messages

    return lambda i: read


def _needs(backend: Backend) -> str | None:
    reason = backend.unavailable()
    if reason:
        return reason
    for module in ("langchain_core", "langchain_community"):
        if Backend(backend.name, backend.location, (module,)).unavailable() is not None:
            return f"{module.replace('_', '-')} is not in this environment ({REQUIREMENT})"
    return None


def run_backend(backend: Backend, sizes: LangChainSizes) -> dict[str, Any]:
    reason = _needs(backend)
    if reason:
        log(f"[{backend.name}] not available: {reason}")
        return {"status": "not available", "reason": reason}
    result: dict[str, Any] = {"status": "ok", "raw_driver": f"SQLChatMessageHistory (langchain-community {metadata.version('langchain-community')})"}
    with recorded(backend.name, result), backend.location() as location, ExitStack() as stack:
        sides: dict[str, Any] = {PRAISON: PraisonSide(location.praison_url), LANGCHAIN: LangChainSide(_their_url(backend, location))}
        for side in sides.values():
            stack.callback(side.close)
        result["server"] = sides[LANGCHAIN].version()
        run = LangChainRun(backend.name, sides, sizes, location)  # type: ignore[arg-type]
        result["metrics"], result["notes"] = run.metrics, run.notes
        log(f"[{backend.name}] {result['server']}")
        run.add_message()
        run.reads()
    return result


def _their_url(backend: Backend, location: Location) -> str:
    """SQLite: a file of its own beside praison_db's; PostgreSQL: praison_db's database (tables of its own)."""
    return f"sqlite:///{location.tmp}/langchain.db" if backend.name == "sqlite" else location.praison_url


# ---- report ----


def _cell(entry: dict[str, Any] | None, side: str) -> str:
    return _time(entry[side]["median_us"]) if entry and side in entry else "—"


def _ratio(entry: dict[str, Any] | None) -> str:
    return f"{entry['ratio']:.2f}x" if entry and "ratio" in entry else "n/a"


def markdown(results: dict[str, Any]) -> str:
    ok = {name: r for name, r in results["backends"].items() if r.get("metrics")}
    sizes, machine = results["sizes"], results["machine"]
    took = f" in {results['seconds']:.0f} s" if results["size"] == "full" else ""
    n = f"{sizes['history']:,}"
    lines = [
        "# PraisonChatMessageHistory against LangChain's SQLChatMessageHistory",
        "",
        f"Generated by `{results['command']}` on {machine['date']}{took} (size `{results['size']}`). What is measured "
        "and how: the docstring of [benchmarks/langchain.py](../langchain.py).",
        "",
        "Each number is the median time of one call, the two histories alternating in rounds in one process, each over "
        "one shared connection pool; ratio = PraisonChatMessageHistory's median / SQLChatMessageHistory's (below 1: "
        "praison_db is faster). Same durability on both sides (SQLite: WAL, synchronous=FULL; PostgreSQL: "
        "synchronous_commit=on).",
        "",
        "## Summary: praison_db / LangChain",
        "",
    ]
    rows = []
    for name, r in ok.items():
        m = r["metrics"]
        rows.append([
            name, _ratio(m.get("add_message")), _ratio(m.get("messages")), _cell(m.get("window"), PRAISON),
            _cell(m.get("messages"), LANGCHAIN),
        ])
    lines += _table(
        ["backend", "add_message", f"messages ({n})", f"newest {RESUME_N}: praison_db (limit={RESUME_N})",
         f"newest {RESUME_N}: LangChain (no window: all {n})"],
        rows,
    )

    def section(title: str, key: str, what: str) -> None:
        lines.extend(["", f"## {title}", "", what, ""])
        body = []
        for name, r in ok.items():
            e = r["metrics"].get(key)
            if not e:
                continue
            sides = [s for s in (PRAISON, LANGCHAIN) if s in e]
            body.append([
                name, _cell(e, PRAISON), _cell(e, LANGCHAIN), _ratio(e),
                " / ".join(_time(e[s]["p90_us"]) for s in sides), " / ".join(str(e[s]["n"]) for s in sides),
            ])
        lines.extend(_table(["backend", "PraisonChatMessageHistory", "SQLChatMessageHistory", "ratio", "p90", "calls"], body))

    section("1. add_message", "add_message",
            f"`history.add_message(message)`, {sizes['appends']:,} durable appends to one session per side, a "
            "HumanMessage and an AIMessage in turn (about 200 characters each).")
    section(f"2. messages: a {n}-message session", "messages",
            f"`history.messages`: every message of the session as LangChain objects, {sizes['reads']:,} reads per side.")
    section(f"3. The newest {RESUME_N} of that session", "window",
            f"`PraisonChatMessageHistory(sid, db, limit={RESUME_N}).messages`: one indexed read of the newest "
            f"{RESUME_N}. SQLChatMessageHistory has no window; its way to the newest {RESUME_N} is reading all {n} (2.).")
    lines.extend(backends_and_machine(results, raw_header="LangChain side"))
    return "\n".join(lines)


def write_report(results: dict[str, Any], out: Path) -> list[Path]:
    return write_files(results, out / "langchain.md", out / "langchain.json", markdown)


def main(argv: list[str] | None = None) -> int:
    return comparison_main(
        argv, module="langchain", doc=__doc__ or "", sizes=SIZES, libraries=LIBRARIES,
        run=lambda names, sizes: {name: run_backend(BY_NAME[name], sizes) for name in names},
        write=write_report, only=tuple(BACKENDS), refusal="SQLChatMessageHistory runs on",
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
