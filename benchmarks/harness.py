"""What every measurement shares: the sizes of a run, the data, the interleaved timer and the statistics.

Both sides of a comparison (praison_db and the raw driver) run in the same process, in alternating rounds, so slow
drift of the machine (other jobs, a checkpoint, the page cache) falls on both alike.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from praison_db.base import EXPORT_FORMAT

PRAISON, RAW = "praison_db", "raw"


@dataclass(frozen=True)
class Sizes:
    """How much work one run does. ``full`` gives the published numbers; ``smoke`` proves the program works; ``medium``
    checks a change in minutes."""

    appends: int  # 1. durable single-message appends, one session
    growth_points: tuple[int, ...]  # 2. session lengths at which append cost is sampled (the plot)
    growth_samples: int  # appends timed at each point
    growth_pair: tuple[int, int]  # the two points whose ratio is "growth"
    bulk_messages: int  # 5. messages per import; that session is also the one 3. resumes
    bulk_repeats: int
    resume_reads: int  # 3. reads of the newest 20
    list_sessions: int  # 4. sessions present when listing the 50 most recently active
    list_reads: int
    state_keys: int  # 6. keys set, then read
    rounds: int  # alternations between praison_db and raw per measurement
    budget_s: float  # soft cap on one measurement of one backend (slow paths take fewer samples; reported)


SIZES = {
    "smoke": Sizes(
        appends=20, growth_points=(10, 100), growth_samples=10, growth_pair=(10, 100), bulk_messages=300,
        bulk_repeats=1, resume_reads=20, list_sessions=200, list_reads=5, state_keys=30, rounds=2, budget_s=10,
    ),
    # Minutes for every backend: a quick before/after check of one change; the published numbers are "full".
    "medium": Sizes(
        appends=300, growth_points=(100, 1_000, 10_000), growth_samples=100, growth_pair=(100, 10_000),
        bulk_messages=10_000, bulk_repeats=2, resume_reads=300, list_sessions=10_000, list_reads=50,
        state_keys=2_000, rounds=6, budget_s=30,
    ),
    "full": Sizes(
        appends=1000, growth_points=(100, 1_000, 10_000, 100_000), growth_samples=200, growth_pair=(100, 10_000),
        bulk_messages=100_000, bulk_repeats=3, resume_reads=1000, list_sessions=100_000, list_reads=200,
        state_keys=10_000, rounds=10, budget_s=120,
    ),
}

RESUME_N = 20
LIST_N = 50
_LOREM = (
    "The quick brown fox jumps over the lazy dog while the assistant explains, step by step, how to persist a "
    "conversation so that a restarted agent picks up exactly where it left off."
)


def content(i: int) -> str:
    """A message body of about 200 characters."""
    return f"message {i}: {_LOREM}"


def fresh_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:12]}"


def messages(session_id: str, n: int) -> list[dict[str, Any]]:
    """``n`` messages in export form (plain JSON: ISO timestamps), oldest first, alternating user/assistant."""
    start = datetime.now(timezone.utc) - timedelta(milliseconds=n + 1)
    return [
        {
            "id": uuid.uuid4().hex,
            "session_id": session_id,
            "seq": seq,
            "role": "user" if seq % 2 else "assistant",
            "content": content(seq),
            "name": None,
            "tool_calls": None,
            "tool_call_id": None,
            "metadata": {},
            "created_at": (start + timedelta(milliseconds=seq)).isoformat(),
        }
        for seq in range(1, n + 1)
    ]


def export(session_id: str, msgs: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``export_session`` returns, for ``import_session``."""
    first = msgs[0]["created_at"] if msgs else datetime.now(timezone.utc).isoformat()
    last = msgs[-1]["created_at"] if msgs else first
    session = {
        "session_id": session_id, "user_id": None, "agent_id": None, "session_type": "agent", "name": None,
        "metadata": {}, "created_at": first, "updated_at": last, "message_count": len(msgs),
    }
    return {"format": EXPORT_FORMAT, "session": session, "messages": msgs}


def state_value(i: int) -> dict[str, Any]:
    return {"step": i, "done": False, "note": "agent scratch state"}


# A call under test: make(i) does any untimed preparation and returns the thunk whose run is timed.
Make = Callable[[int], Callable[[], Any]]


def call_order(names: list[str], total: int, rounds: int, budget_s: float) -> Iterator[tuple[str, int]]:
    """The calls of one interleaved measurement, in order, as (side, call index) pairs.

    Call 0 of each side comes first and prices a call: when ``total`` calls would not fit in ``budget_s``, fewer
    are made (never fewer than ``rounds``). Then up to ``total`` calls per side follow in ``rounds`` alternating
    blocks, and the run also stops after any round that ends past the budget. The caller makes each call before
    asking for the next one (the generator reads the clock in between), so the same order drives the sync timer
    below and the async one of ``benchmarks.aio``.
    """
    gc.collect()
    start = time.perf_counter()
    for name in names:
        yield name, 0
    per_call = time.perf_counter() - start
    total = min(total, max(rounds, int(budget_s / max(per_call, 1e-9))))
    per_round = max(1, math.ceil((total - 1) / max(1, rounds)))
    i, r = 1, 0
    while i < total and time.perf_counter() - start <= budget_s:
        block = range(i, min(i + per_round, total))
        for name in names if r % 2 else list(reversed(names)):
            for j in block:
                yield name, j
        i, r = block.stop, r + 1


def interleaved(makes: dict[str, Make], total: int, rounds: int, budget_s: float) -> dict[str, list[float]]:
    """Time up to ``total`` calls per side in ``rounds`` alternating blocks (see ``call_order``); seconds per call,
    per side."""
    samples: dict[str, list[float]] = {name: [] for name in makes}
    for name, i in call_order(list(makes), total, rounds, budget_s):
        thunk = makes[name](i)
        t0 = time.perf_counter()
        thunk()
        samples[name].append(time.perf_counter() - t0)
    return samples


def summary(seconds: list[float]) -> dict[str, float]:
    """Median and spread in microseconds."""
    data = sorted(seconds)
    us = [s * 1e6 for s in data]
    p90 = us[min(len(us) - 1, int(round(0.9 * (len(us) - 1))))]
    return {"median_us": statistics.median(us), "p90_us": p90, "min_us": us[0], "n": len(us)}


def summarize(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {name: summary(values) for name, values in samples.items() if values}


def pair_main(argv: list[str] | None, doc: str, run: Callable[[int], dict[str, Any]], raw_name: str, floor: str = "") -> None:
    """The command line of a quick two-sided benchmark: ``--calls`` per side, the ratios printed (or ``--json``).

    ``run(calls)`` returns, per measurement, the PRAISON and RAW summaries (and, optionally, a ``floor`` one)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per side and measurement")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args(argv)
    results = run(args.calls)
    for entry in results.values():
        entry["ratio"] = entry[PRAISON]["median_us"] / entry[RAW]["median_us"]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for name, entry in results.items():
        p, r = entry[PRAISON], entry[RAW]
        line = (
            f"{name}: praison_db median {p['median_us']:,.0f} µs (p90 {p['p90_us']:,.0f}), "
            f"{raw_name} {r['median_us']:,.0f} µs (p90 {r['p90_us']:,.0f}), ratio {entry['ratio']:.2f}x, n={p['n']}"
        )
        if floor and floor in entry:
            line += f"; {floor} {entry[floor]['median_us']:,.0f} µs"
        print(line)
