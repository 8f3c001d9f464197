"""The async benchmark program works: a seconds-long smoke pass writes the table and positive numbers.

The real numbers come from ``python -m benchmarks.aio --size full`` (see benchmarks/README.md), never from CI; speed
is measured there, not asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests import servers

ROOT = Path(__file__).resolve().parent.parent
WITH_RAW = ["sqlite", "postgresql", "mysql", "redis", "mongodb"]  # a raw async driver to compare with
WITHOUT_RAW = ["memory", "json"]  # async against sync only (chDB is left to the full run: ~50 ms an append)
SERVERS = {"postgresql", "mysql", "redis", "mongodb"}


def test_async_benchmark_smoke(tmp_path: Path) -> None:
    names = WITH_RAW + WITHOUT_RAW
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.aio", "--size", "smoke", "--backends", ",".join(names), "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "aio.json").read_text())
    table = (tmp_path / "aio.md").read_text()
    tasks = results["sizes"]["tasks"]
    assert tasks == 64
    missing = []
    for name in names:
        result = results["backends"][name]
        if result["status"] == "not available" and name in SERVERS:
            missing.append((name, result["reason"]))
            continue
        assert result["status"] == "ok", result
        metrics = result["metrics"]
        for key in ("append", "resume"):
            entry = metrics[key]
            sides = ["praison_db", "sync"] + (["raw"] if name in WITH_RAW else [])
            for side in sides:
                assert entry[side]["median_us"] > 0 and entry[side]["n"] >= 1, (name, key, side)
            assert entry["vs_sync"] > 0
            assert (entry["ratio"] > 0) if name in WITH_RAW else ("ratio" not in entry)
        throughput = metrics["throughput"]
        assert throughput["tasks"] == tasks and throughput["appends_per_task"] >= 1
        for side in ("async", "sync"):
            assert throughput[side]["appends_per_s"] > 0, (name, side)
        assert throughput["ratio"] > 0
        assert f"\n| {name} | " in table
    for name, reason in missing:
        servers.unavailable(name, reason)


def test_bad_arguments_are_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.aio", "--backends", "nosuch"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "error" in done.stderr
