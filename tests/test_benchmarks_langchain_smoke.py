"""The LangChain benchmark program works: a seconds-long smoke pass writes the table and positive numbers.

The real numbers come from ``python -m benchmarks.langchain --size full`` (benchmarks/results/langchain.md), never
from CI; speed is measured there, not asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests import servers

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["sqlite", "postgresql"]


def test_langchain_benchmark_smoke(tmp_path: Path) -> None:
    pytest.importorskip("langchain_community", reason="the benchmark's other side: pip install 'langchain-community>=0.4'")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.langchain", "--size", "smoke", "--backends", ",".join(NAMES), "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "langchain.json").read_text())
    table = (tmp_path / "langchain.md").read_text()
    missing = []
    for name in NAMES:
        result = results["backends"][name]
        if result["status"] == "not available" and name == "postgresql":
            missing.append((name, result["reason"]))
            continue
        assert result["status"] == "ok", result
        metrics = result["metrics"]
        for key in ("add_message", "messages"):
            for side in ("praison_db", "langchain"):
                assert metrics[key][side]["median_us"] > 0 and metrics[key][side]["n"] >= 1, (name, key, side)
            assert metrics[key]["ratio"] > 0
        assert metrics["window"]["praison_db"]["median_us"] > 0 and "langchain" not in metrics["window"]
        assert f"\n| {name} | " in table
    for name, reason in missing:
        servers.unavailable(name, reason)


def test_backends_without_sql_are_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.langchain", "--backends", "redis"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "sqlite, postgresql only" in done.stderr
