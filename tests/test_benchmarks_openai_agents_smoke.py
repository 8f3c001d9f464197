"""The OpenAI Agents SDK benchmark program works: a seconds-long smoke pass writes the table and positive numbers.

The real numbers come from ``python -m benchmarks.openai_agents --size full`` (benchmarks/results/openai_agents.md),
never from CI; speed is measured there, not asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests import servers

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["sqlite", "postgresql", "redis"]
SERVERS = {"postgresql", "redis"}
SIDES = ("praison_db", "praison_db_aio", "sdk")


def test_openai_agents_benchmark_smoke(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.openai_agents", "--size", "smoke", "--backends", ",".join(NAMES), "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "openai_agents.json").read_text())
    table = (tmp_path / "openai_agents.md").read_text()
    missing = []
    for name in NAMES:
        result = results["backends"][name]
        if result["status"] == "not available" and name in SERVERS:
            missing.append((name, result["reason"]))
            continue
        assert result["status"] == "ok", result
        for key in ("add_items", "get_items", "pop_item"):
            entry = result["metrics"][key]
            for side in SIDES:
                assert entry[side]["median_us"] > 0 and entry[side]["n"] >= 1, (name, key, side)
            assert entry["ratio"] > 0 and entry["ratio_aio"] > 0
        assert f"\n| {name} | " in table
    for name, reason in missing:
        servers.unavailable(name, reason)


def test_backends_without_an_sdk_session_are_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.openai_agents", "--backends", "mysql"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "sqlite, postgresql, redis only" in done.stderr
