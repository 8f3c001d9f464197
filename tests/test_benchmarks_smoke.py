"""The benchmark program works: a seconds-long smoke pass writes the table, the plot and positive numbers.

The real numbers come from ``python -m benchmarks.run --size full`` (see benchmarks/README.md), never from CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import servers

ROOT = Path(__file__).resolve().parent.parent
METRICS = ("append", "import", "resume", "list", "state_set", "state_get")


def smoke(out: Path, backends: list[str]) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--size", "smoke", "--backends", ",".join(backends), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "append_growth.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return json.loads((out / "results.json").read_text())


def check_backend(results: dict, out: Path, name: str) -> None:
    result = results["backends"][name]
    assert result["status"] == "ok", result
    metrics = result["metrics"]
    expected = set(METRICS) - ({"state_set", "state_get"} if name == "clickhouse" else set())  # no state role
    assert expected <= set(metrics)
    assert {f"append@{n}" for n in results["sizes"]["growth_points"]} <= set(metrics)
    for key, entry in metrics.items():
        sides = ["praison_db"] + ([] if name == "memory" else ["raw"])
        for side in sides:
            assert entry[side]["median_us"] > 0 and entry[side]["n"] >= 1, (name, key, side)
        if name != "memory":
            assert entry["ratio"] > 0
    table = (out / "README.md").read_text()
    assert f"\n| {name} | " in table


def test_smoke_local_backends(tmp_path: Path) -> None:
    names = ["memory", "json", "sqlite"]
    results = smoke(tmp_path, names)
    for name in names:
        check_backend(results, tmp_path, name)


def test_smoke_server_backends(tmp_path: Path) -> None:
    names = ["postgresql", "mysql", "redis", "mongodb", "clickhouse"]
    results = smoke(tmp_path, names)
    for name in names:
        result = results["backends"][name]
        if result["status"] == "not available":
            servers.unavailable(name, result["reason"])
        check_backend(results, tmp_path, name)


@pytest.mark.parametrize("argv", [["--backends", "nosuch"], ["--size", "huge"]])
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "error" in done.stderr


def test_a_backend_without_its_store_module_is_reported_not_run() -> None:
    from benchmarks.backends import Backend
    from benchmarks.run import run_backend

    missing = Backend("nosuch", lambda: None, ("praison_db.backends.nosuch",))  # type: ignore[arg-type,return-value]
    assert run_backend(missing, None) == {  # type: ignore[arg-type]
        "status": "not available", "reason": "praison_db.backends.nosuch is not in this checkout"
    }


def test_transfer_benchmark_smoke() -> None:
    """The export/import/copy benchmark runs every phase in its own process and reports time, peak RSS and ratios."""
    admin = os.environ.get("PRAISON_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        with servers.postgres_database():
            pass
    except servers.ServerMissing as e:
        servers.unavailable("PostgreSQL (127.0.0.1:5432)", e)
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.transfer", "--messages", "400", "--json", "--postgres", admin],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    assert results["messages"] == 400
    for phase in ("export", "import", "raw_import", "copy", "raw_copy"):
        assert results[phase]["seconds"] > 0 and results[phase]["peak_rss_mb"] > 0, phase
    assert results["import_ratio"] > 0 and results["copy_ratio"] > 0
