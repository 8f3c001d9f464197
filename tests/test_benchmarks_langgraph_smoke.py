"""The LangGraph checkpointer benchmark program works: a seconds-long smoke pass writes the table and positive numbers.

The real numbers come from ``python -m benchmarks.langgraph --size full`` (benchmarks/results/langgraph.md), never from
CI; speed is measured there, not asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests import servers

ROOT = Path(__file__).resolve().parent.parent
WITH_REFERENCE = ["memory", "sqlite", "postgresql"]  # a LangGraph saver to compare with
SERVERS = {"postgresql", "mysql"}


def test_langgraph_benchmark_smoke(tmp_path: Path) -> None:
    names = WITH_REFERENCE + ["mysql"]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.langgraph", "--size", "smoke", "--backends", ",".join(names), "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "langgraph.json").read_text())
    table = (tmp_path / "langgraph.md").read_text()
    missing = []
    for name in names:
        result = results["backends"][name]
        if result["status"] == "not available" and name in SERVERS:
            missing.append((name, result["reason"]))
            continue
        assert result["status"] == "ok", result
        sides = ["praison_db"] + (["langgraph"] if name in WITH_REFERENCE else [])
        for key in ("put", "get_tuple", "list"):
            entry = result["metrics"][key]
            for side in sides:
                assert entry[side]["median_us"] > 0 and entry[side]["n"] >= 1, (name, key, side)
            assert (entry["ratio"] > 0) if name in WITH_REFERENCE else ("ratio" not in entry)
        assert result["checkpoints_in_thread"]["praison_db"] == results["sizes"]["puts"]
        assert f"\n| {name} | " in table
    for name, reason in missing:
        servers.unavailable(name, reason)


def test_bad_arguments_are_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.langgraph", "--backends", "nosuch"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "error" in done.stderr
