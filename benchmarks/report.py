"""Machine information, and the outputs of a run: results.json, README.md (tables) and append_growth.png."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .harness import LIST_N, PRAISON, RAW, RESUME_N

LIBRARIES = (
    "sqlalchemy", "pydantic", "filelock", "psycopg", "psycopg-binary", "pymysql", "redis", "pymongo",
    "clickhouse-connect", "chdb", "secantusdb", "matplotlib",
)


def _first_line(path: str, key: str) -> str | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _filesystem(path: str) -> str:
    """The file system type holding ``path`` (longest matching mount point), for the fsync-bound numbers."""
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and path.startswith(parts[1]) and len(parts[1]) > len(best):
                    best, kind = parts[1], f"{parts[2]} ({parts[0]})"
    except OSError:
        pass
    return kind


def _checkout() -> str:
    """The praison_db code measured: its git commit (with '+changes' when praison_db/ differs from it)."""
    here = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "praison_db"], cwd=here, capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return "unknown"
    return f"praison_db at commit {commit}{' +changes' if dirty else ''}" if commit else "unknown"


def machine_info() -> dict[str, Any]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    mem = _first_line("/proc/meminfo", "MemTotal")
    tmp = tempfile.gettempdir()
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _first_line("/proc/cpuinfo", "model name") or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "ram": f"{int(mem.split()[0]) / 1024**2:.1f} GiB" if mem else "unknown",
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "temp_dir": f"{tmp} on {_filesystem(tmp)}",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "code": _checkout(),
        "libraries": versions,
    }


# ---- formatting ----

TARGETS = {"append": 1.3, "growth": 1.2, "resume": 1.5, "list": 1.5, "import": 2.0}


def _time(us: float) -> str:
    if us >= 1e6:
        return f"{us / 1e6:.2f} s"
    if us >= 1e3:
        return f"{us / 1e3:.2f} ms"
    return f"{us:.0f} µs" if us >= 10 else f"{us:.1f} µs"


def _mark(value: float | None, target: float | None) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.2f}x" if target is None or target != TARGETS["growth"] else f"{value:.2f}"
    if target is None:
        return text
    return f"{text} ✅" if value <= target else f"{text} ❌"


def growth_ratio(metrics: dict[str, Any], side: str, pair: tuple[int, int]) -> float | None:
    low, high = (metrics.get(f"append@{n}", {}).get(side) for n in pair)
    return high["median_us"] / low["median_us"] if low and high else None


def _median(metrics: dict[str, Any], key: str, side: str) -> str:
    entry = metrics.get(key, {}).get(side)
    return _time(entry["median_us"]) if entry else "—"


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]


def _label(name: str, result: dict[str, Any]) -> str:
    """The backend's name, starred when it ran with smaller sizes (explained under Notes)."""
    return f"{name}*" if "smaller" in result else name


def _ok(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in results["backends"].items() if r.get("metrics")}


def misses(results: dict[str, Any]) -> list[str]:
    """Every target missed, by how much."""
    pair = tuple(results["sizes"]["growth_pair"])
    out = []
    for name, r in _ok(results).items():
        m = r["metrics"]
        for key, target in TARGETS.items():
            value = growth_ratio(m, PRAISON, pair) if key == "growth" else m.get(key, {}).get("ratio")
            if value is not None and value > target:
                unit = "" if key == "growth" else "x"
                out.append(f"{name} {key}: {value:.2f}{unit} against a target of {target:g}{unit} ({(value / target - 1) * 100:.0f}% over)")
    return out


def markdown(results: dict[str, Any], plot_name: str, analysis: bool = False) -> str:
    sizes = results["sizes"]
    pair = tuple(sizes["growth_pair"])
    ok = _ok(results)
    machine = results["machine"]
    lines = [
        "# praison_db benchmarks: results",
        "",
        f"Generated by `{results['command']}` on {machine['date']} in {results['seconds']:.0f} s "
        f"(size `{results['size']}`). How to read this: [benchmarks/README.md](../README.md)."
        if results["size"] == "full" else f"Generated by `{results['command']}` on {machine['date']} (size `{results['size']}`).",
        "",
        "Every number is a median over many calls, praison_db and the raw driver alternating in rounds within one "
        "process; the ratio is praison_db's median over the raw driver's. ✅/❌: the published target met or missed.",
        "",
        "## Summary: praison_db / raw driver",
        "",
    ]
    header = [
        "backend", "append (≤1.3x)", f"growth {pair[1]:,}/{pair[0]:,} (≤1.2)", f"resume {RESUME_N} (≤1.5x)",
        f"list {LIST_N} (≤1.5x)", "bulk import (≤2x)", "state set", "state get",
    ]
    rows = []
    for name, r in ok.items():
        m = r["metrics"]
        rows.append([
            _label(name, r), _mark(m.get("append", {}).get("ratio"), TARGETS["append"]),
            _mark(growth_ratio(m, PRAISON, pair), TARGETS["growth"]),
            *(_mark(m.get(k, {}).get("ratio"), TARGETS[k]) for k in ("resume", "list", "import")),
            *(_mark(m.get(k, {}).get("ratio"), None) for k in ("state_set", "state_get")),
        ])
    lines += _table(header, rows)

    def section(title: str, key: str, what: str) -> None:
        lines.extend(["", f"## {title}", "", what, ""])
        body = []
        for name, r in ok.items():
            e = r["metrics"].get(key)
            if not e:
                continue
            ratio = f"{e['ratio']:.2f}x" if "ratio" in e else "n/a"
            p90 = " / ".join(_time(e[s]["p90_us"]) for s in (PRAISON, RAW) if s in e)
            n = " / ".join(str(e[s]["n"]) for s in (PRAISON, RAW) if s in e)
            body.append([_label(name, r), _median(r["metrics"], key, PRAISON), _median(r["metrics"], key, RAW), ratio, p90, n])
        lines.extend(_table(["backend", "praison_db", "raw driver", "ratio", "p90 (praison_db / raw)", "calls"], body))

    section("1. Durable single-message append", "append",
            f"Median time of one `add_message` that returns only once the backend has the message; "
            f"{sizes['appends']:,} appends to one session.")

    lines.extend(["", "## 2. Append cost against session length", "",
                  f"Median of {sizes['growth_samples']} appends to a session already holding N messages "
                  f"(the session is bulk-imported first). Growth = median at {pair[1]:,} / median at {pair[0]:,}. "
                  f"Plot: [{plot_name}]({plot_name}).", ""])
    points = sizes["growth_points"]
    body = []
    for name, r in ok.items():
        for side in (PRAISON, RAW):
            if any(side in r["metrics"].get(f"append@{n}", {}) for n in points):
                g = growth_ratio(r["metrics"], side, pair)
                body.append([_label(name, r), side, *(_median(r["metrics"], f"append@{n}", side) for n in points),
                             f"{g:.2f}" if g is not None else "—"])
    lines.extend(_table(["backend", "side", *(f"N = {n:,}" for n in points), "growth"], body))
    lines.extend(["", f"![append cost against session length]({plot_name})"])

    section(f"3. Resume: the newest {RESUME_N} messages of a {sizes['bulk_messages']:,}-message session", "resume",
            f"`get_messages(sid, limit={RESUME_N})` against the raw indexed query (driver rows, no model objects).")
    section(f"4. List the {LIST_N} most recently active of {sizes['list_sessions']:,} sessions", "list",
            f"`list_sessions(limit={LIST_N})` against the raw `ORDER BY updated_at DESC, session_id DESC LIMIT {LIST_N}` "
            "(or its equivalent).")
    section(f"5. Bulk import of a {sizes['bulk_messages']:,}-message session", "import",
            f"`import_session(export)` against the raw driver's batch insert (executemany / pipeline / insert_many / "
            f"one write + fsync), {sizes['bulk_repeats']} import(s) per side; time per whole import.")
    section(f"6a. State: set ({sizes['state_keys']:,} keys)", "state_set",
            "`state.set(key, value)`, each durable on return, against the raw upsert / SET / replace_one.")
    section("6b. State: get (the same keys)", "state_get", "`state.get(key)` against the raw read.")

    missed = misses(results)
    lines.extend(["", "## Targets missed", ""])
    lines.extend([f"- {m}" for m in missed] or ["None."])
    if analysis:
        lines.extend(["", "Why, and what would close each gap: [analysis.md](analysis.md)."])

    lines.extend(backends_and_machine(results, raw_header="raw driver", smaller_mark="*"))
    return "\n".join(lines)


def backends_and_machine(results: dict[str, Any], *, raw_header: str, smaller_mark: str = "") -> list[str]:
    """The closing sections of a results page: each backend's status, server and notes; the machine; the sizes."""
    ok, machine = _ok(results), results["machine"]
    lines = ["", "## Backends", ""]
    body = []
    for name, r in results["backends"].items():
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('reason', '')}"
        body.append([name, status, r.get("raw_driver", "—"), r.get("server", "—"), f"{r['seconds']:.0f} s" if "seconds" in r else "—"])
    lines.extend(_table(["backend", "status", raw_header, "server (durability settings)", "run time"], body))
    notes = [f"- {name}{smaller_mark}: {r['smaller']}" for name, r in ok.items() if "smaller" in r]
    notes += [f"- {name}: {n}" for name, r in ok.items() for n in r.get("notes", [])]
    if notes:
        lines.extend(["", "Notes:", "", *notes])

    lines.extend(["", "## Machine", ""])
    for key in ("code", "cpu", "cores", "ram", "os", "python", "temp_dir", "load_average_at_start", "load_average_at_end"):
        if key in machine:
            lines.append(f"- {key.replace('_', ' ')}: {machine[key]}")
    lines.append("- libraries: " + ", ".join(f"{k} {v}" for k, v in machine["libraries"].items()))
    lines.extend(["", f"Sizes: `{json.dumps(results['sizes'])}`", ""])
    return lines


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    points = results["sizes"]["growth_points"]
    fig, ax = plt.subplots(figsize=(11, 6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, r) in enumerate(_ok(results).items()):
        for side, style in ((PRAISON, "-"), (RAW, "--")):
            xs = [n for n in points if side in r["metrics"].get(f"append@{n}", {})]
            if xs:
                ys = [r["metrics"][f"append@{n}"][side]["median_us"] for n in xs]
                label = f"{name} ({'praison_db' if side == PRAISON else 'raw driver'})"
                ax.plot(xs, ys, style, marker="o", color=colors[i % len(colors)], label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(points, [f"{n:,}" for n in points])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: _time(v)))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("messages already in the session")
    ax.set_ylabel("median time of one durable append")
    ax.set_title("Append cost against session length (solid: praison_db, dashed: raw driver)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_files(results: dict[str, Any], md: Path, data: Path, report: Callable[[dict[str, Any]], str]) -> list[Path]:
    """Write a run's report (``md``, from ``report(results)``) and every number (``data``, JSON); the load average
    at the end of the run goes into both."""
    md.parent.mkdir(parents=True, exist_ok=True)
    results["machine"].setdefault("load_average_at_end", [round(x, 2) for x in os.getloadavg()])
    md.write_text(report(results), encoding="utf-8")
    data.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    return [md, data]


def write_report(results: dict[str, Any], out: Path) -> list[Path]:
    png = out / "append_growth.png"
    out.mkdir(parents=True, exist_ok=True)
    plot(results, png)
    # analysis.md is written by hand after a full run: why each target was missed.
    written = write_files(results, out / "README.md", out / "results.json", lambda r: markdown(r, png.name, (out / "analysis.md").exists()))
    return [written[0], png, written[1]]
