"""Where a SQL call's time goes: the same call measured at each layer between the raw driver and the public API.

    python -m benchmarks.ladder [--backends sqlite,postgresql,mysql] [--calls 400] [--rounds 10]

Each rung adds one layer to the one before and runs in the same process, rounds alternating, so the difference
between two rungs is that layer's cost:

- ``raw``: the benchmark's raw side (benchmarks/raw.py), on a driver connection of its own;
- ``pool``: the raw side's own SQL text, on a connection checked out of praison_db's pool per call (SQLAlchemy's
  QueuePool, the idle-ping and reset hooks), in the transaction mode praison_db uses;
- ``prepared``: praison_db's own statements (prepared.py), values bound through the columns' processors, rows
  converted, on the same checkout; the arguments are built once, outside the timing;
- ``store``: the store method under the public one (the draft is built outside the timing, the message or rows
  become models inside);
- ``api``: the public call, with its argument checks and the draft built from the arguments.

Client CPU (``time.process_time``) per call is reported beside the wall time: the layers are client-side work, and
the CPU figure (of the least disturbed round) is steadier than the wall time, which also holds the server's and the
disk's share. Differences under ~10 µs are within what repeated runs on a 2-core machine move by.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from praison_db import db
from praison_db.models import MessageDraft, utcnow

from . import raw
from .backends import _mysql, _postgres

Rung = tuple[str, Callable[[], Any]]


@contextmanager
def _url(kind: str, home: Path) -> Iterator[str]:
    """A URL on an empty database for ``kind``, dropped afterwards (the benchmark's own servers, tests/servers.py)."""
    if kind == "sqlite":
        yield f"sqlite:///{home / 'ladder.db'}"
        return
    with (_postgres() if kind == "postgresql" else _mysql()) as url:
        yield url


def _rungs(kind: str, url: str, home: Path, calls: int) -> dict[str, list[Rung]]:
    prefix = "ladder_"
    side = db(f"{url}{'&' if '?' in url else '?'}table_prefix={prefix}", session_dir=home)
    conv, state = side.conversations, side.state
    base = raw.RawSql(kind, url, "ladder_raw_")
    twin = raw.RawSql(kind, url, prefix)  # the raw side's SQL text on praison_db's own tables
    engine = conv.db.engine  # type: ignore[attr-defined]
    for target in (base, conv):
        target.create_session("s")
    for _ in range(100):
        base.append("s", "hello")
        conv.add_message("s", "user", "hello")
    base.state_set("k", {"a": 1})
    state.set("k", {"a": 1})

    def on_pool(work: Callable[[Any], Any]) -> Callable[[], Any]:
        """``work`` with the twin's cursor on a connection checked out of praison_db's pool for the call; the cursor
        is got and let go as praison_db's prepared statements do (psycopg's is kept with the connection)."""
        transport = conv._newest_prepared  # type: ignore[attr-defined]

        def call() -> Any:
            connection = engine.raw_connection()
            try:
                twin.cur = transport._new_cursor(connection)
                return work(twin)
            finally:
                transport._release(connection, twin.cur)
                connection.close()

        return call

    store_db = conv.db  # type: ignore[attr-defined]
    now = utcnow()
    drafts = iter([MessageDraft.build("user", "hello") for _ in range(calls)])  # built outside the timing

    def prepared_append() -> Any:
        row = {"id": uuid.uuid4().hex, **fixed_row}
        if kind == "postgresql":
            with store_db.fast_read() as conn:
                return conv._append_one.scalar(conn, {**{f"m_{k}": v for k, v in row.items()}, "sid": "s", "now": now})  # type: ignore[attr-defined]
        with store_db.fast_write() as conn:
            seq = conv._bump(conn, "s", 1, now)  # type: ignore[attr-defined]
            conv._append_statements[2].rowcount(conn, {**row, "seq": seq})  # type: ignore[attr-defined]

    fixed_row = {
        "session_id": "s", "seq": 0, "role": "user", "content": "hello", "name": None, "tool_calls": None,
        "tool_call_id": None, "metadata": {}, "created_at": now, "type": None, "extra": None,
    }
    newest = conv._newest_prepared  # type: ignore[attr-defined]
    get_one = state._get_statements[0]  # type: ignore[attr-defined]

    def prepared_newest() -> Any:
        with store_db.fast_read() as conn:
            return newest.rows(conn, {"sid": "s", "n": 20})

    def prepared_get() -> Any:
        with store_db.fast_read() as conn:
            return get_one.rows(conn, {"key": "k", "now": time.time()})

    return {
        "append": [
            ("raw", lambda: base.append("s", "hello")),
            ("pool", on_pool(lambda r: r.append("s", "hello"))),
            ("prepared", prepared_append),
            ("store", lambda: conv._append("s", [next(drafts)], utcnow())),  # type: ignore[attr-defined]
            ("api", lambda: conv.add_message("s", "user", "hello")),
        ],
        "newest 20": [
            ("raw", lambda: base.newest("s", 20)),
            ("pool", on_pool(lambda r: r.newest("s", 20))),
            ("prepared", prepared_newest),
            ("store", lambda: conv._get_messages("s", 20, None, None)),  # type: ignore[attr-defined]
            ("api", lambda: conv.get_messages("s", limit=20)),
        ],
        "state get": [
            ("raw", lambda: base.state_get("k")),
            ("pool", on_pool(lambda r: r.state_get("k"))),
            ("prepared", prepared_get),
            ("store", lambda: state._get_many(["k"])),  # type: ignore[attr-defined]
            ("api", lambda: state.get("k")),
        ],
    }


def _measure(rungs: list[Rung], calls: int, rounds: int) -> list[tuple[str, float, float]]:
    wall: dict[str, list[float]] = {name: [] for name, _ in rungs}
    cpu: dict[str, list[float]] = {name: [] for name, _ in rungs}
    for _, call in rungs:  # warm up: caches, prepared statements, the pool
        for _ in range(20):
            call()
    for _ in range(rounds):
        for name, call in rungs:
            started, cpu_started = time.perf_counter(), time.process_time()
            for _ in range(calls):
                call()
            wall[name].append((time.perf_counter() - started) / calls * 1e6)
            cpu[name].append((time.process_time() - cpu_started) / calls * 1e6)
    # Wall: the median round. CPU: the least disturbed round (as timeit advises), since other processes on the
    # machine only ever add to it.
    return [(name, statistics.median(wall[name]), min(cpu[name])) for name, _ in rungs]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ladder", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgresql,mysql")
    parser.add_argument("--calls", type=int, default=400, help="calls per rung per round")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    for kind in args.backends.split(","):
        with tempfile.TemporaryDirectory() as tmp, _url(kind, Path(tmp)) as url:
            for op, rungs in _rungs(kind, url, Path(tmp), 20 + args.calls * args.rounds).items():
                print(f"\n{kind} {op} ({args.rounds} rounds of {args.calls} calls; µs per call: median wall, least CPU)")
                print(f"  {'rung':<9} {'wall':>7} {'cpu':>7} {'+cpu':>6}")
                before = None
                for name, wall, cpu in _measure(rungs, args.calls, args.rounds):
                    step = "" if before is None else f"{cpu - before:+6.0f}"
                    print(f"  {name:<9} {wall:7.0f} {cpu:7.0f} {step}")
                    before = cpu


if __name__ == "__main__":
    main()
