"""Benchmark every reachable praison_db backend against its raw driver, in one process run.

    python -m benchmarks.run                      # smoke: seconds, proves it works (benchmarks/results/smoke/)
    python -m benchmarks.run --size full          # the numbers in benchmarks/results/ (minutes)
    python -m benchmarks.run --backends sqlite,json --out /tmp/bench
    python -m benchmarks.run --render benchmarks/results/results.json   # redraw README.md and the plot only

Writes README.md (tables), results.json (every number) and append_growth.png into the output folder.
What each number means: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python benchmarks/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from .backends import BACKENDS, BY_NAME, Backend, Location, PraisonSide, Unavailable  # noqa: E402
from .harness import (  # noqa: E402
    LIST_N, PRAISON, RAW, RESUME_N, SIZES, Make, Sizes, content, fresh_id, interleaved, messages, state_value, summarize,
)
from .report import machine_info, write_report  # noqa: E402

ROOT = Path(__file__).resolve().parent


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Run:
    """One backend's measurements: both sides, the sizes, and where the numbers go."""

    name: str
    sides: dict[str, Any]
    sizes: Sizes
    location: Location
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def time(self, key: str, makes: dict[str, Make], total: int, rounds: int | None = None) -> dict[str, list[float]]:
        samples = interleaved(makes, total, rounds or self.sizes.rounds, self.sizes.budget_s)
        self.record(key, samples, total)
        return samples

    def record(self, key: str, samples: dict[str, list[float]], total: int) -> None:
        entry: dict[str, Any] = {**summarize(samples), "requested": total}
        if PRAISON in entry and RAW in entry:
            entry["ratio"] = entry[PRAISON]["median_us"] / entry[RAW]["median_us"]
        short = min(len(v) for v in samples.values())
        if short < total:
            self.notes.append(f"{key}: {short} of {total} calls (time budget of {self.sizes.budget_s:g} s per measurement)")
        self.metrics[key] = entry
        ratio = f" ({entry['ratio']:.2f}x)" if "ratio" in entry else ""
        medians = ", ".join(f"{side} {entry[side]['median_us']:,.0f} µs" for side in self.sides if side in entry)
        log(f"[{self.name}] {key}: {medians}{ratio}")

    def appends(self, sids: dict[str, str], start: int) -> dict[str, Make]:
        def make(side: Any, sid: str) -> Make:
            return lambda i: partial(side.append, sid, content(start + i))

        return {name: make(side, sids[name]) for name, side in self.sides.items()}

    @staticmethod
    def bind(name: str, side: Any, method: str, args: tuple[Any, ...]) -> Callable[[], Any]:
        """``side.method(*args)``, taking an argument given as a dict keyed by side name from that dict."""
        return partial(getattr(side, method), *(a[name] if isinstance(a, dict) else a for a in args))

    def calls(self, method: str, *args: Any) -> dict[str, Make]:
        """The same call on each side (see ``bind``)."""

        def make(name: str, side: Any) -> Make:
            bound = self.bind(name, side, method, args)
            return lambda i: bound

        return {name: make(name, side) for name, side in self.sides.items()}

    def filled(self, kind: str, n: int) -> dict[str, str]:
        """A fresh session of ``n`` messages per side (bulk import: setup, not timed)."""
        sids = {}
        for name, side in self.sides.items():
            sid = sids[name] = fresh_id(kind)
            side.import_session(sid, messages(sid, n))
        return sids

    def check(self, what: str, method: str, *args: Any, expect: int) -> None:
        for name, side in self.sides.items():
            got = len(self.bind(name, side, method, args)())
            if got != expect:
                raise AssertionError(f"{what}: the {name} side returned {got} items, expected {expect}")

    # ---- the six measurements ----

    def append(self) -> None:
        sids = {name: fresh_id("append") for name in self.sides}
        for name, side in self.sides.items():
            side.create_session(sids[name])
        self.time("append", self.appends(sids, 1), self.sizes.appends)

    def growth(self, big: dict[str, str]) -> None:
        """Appends at every session length, all interleaved: a slow minute of the disk falls on every length alike.

        The longest length is the bulk-imported session (``big``); the others are imported here.
        """
        points = self.sizes.growth_points
        makes: dict[str, Make] = {}
        for n in points:
            sids = big if n == self.sizes.bulk_messages else self.filled(f"grow{n}", n)
            makes.update({f"{name}@{n}": make for name, make in self.appends(sids, n + 1).items()})
        total = self.sizes.growth_samples
        samples = interleaved(makes, total, self.sizes.rounds, self.sizes.budget_s)
        for n in points:
            self.record(f"append@{n}", {name: samples[f"{name}@{n}"] for name in self.sides}, total)

    def bulk_import(self) -> dict[str, str]:
        """Item 5; returns one imported session per side, for resume and for growth at the largest length."""
        first: dict[str, str] = {}
        n = self.sizes.bulk_messages

        def make(name: str, side: Any) -> Make:
            def prepare(i: int) -> Callable[[], None]:
                sid = fresh_id("bulk")
                first.setdefault(name, sid)
                return partial(side.import_session, sid, messages(sid, n))

            return prepare

        reps = self.sizes.bulk_repeats
        self.time("import", {name: make(name, side) for name, side in self.sides.items()}, reps, rounds=reps)
        return first

    def resume(self, sids: dict[str, str]) -> None:
        self.check("resume", "newest", sids, RESUME_N, expect=RESUME_N)
        self.time("resume", self.calls("newest", sids, RESUME_N), self.sizes.resume_reads)

    def list(self) -> None:
        n = self.sizes.list_sessions
        for name, side in self.sides.items():
            t0 = time.perf_counter()
            if name == PRAISON and self.location.praison_tables is not None:
                with ExitStack() as stack:
                    filler = self.location.praison_tables()
                    stack.callback(filler.close)
                    filler.add_sessions(n)  # the raw driver writes praison_db's own rows: setup only
            else:
                side.add_sessions(n)
            log(f"[{self.name}] list: {n:,} sessions created on the {name} side in {time.perf_counter() - t0:.1f} s")
        self.check("list", "list_recent", LIST_N, expect=LIST_N)
        self.time("list", self.calls("list_recent", LIST_N), self.sizes.list_reads)

    def state(self) -> None:
        def setter(side: Any) -> Make:
            return lambda i: partial(side.state_set, f"key:{i}", state_value(i))

        sets = self.time("state_set", {name: setter(side) for name, side in self.sides.items()}, self.sizes.state_keys)

        def getter(side: Any, count: int) -> Make:
            return lambda i: partial(side.state_get, f"key:{i % count}")

        gets = {name: getter(side, len(sets[name])) for name, side in self.sides.items()}
        self.time("state_get", gets, self.sizes.state_keys)


def scaled_down(sizes: Sizes, caps: Mapping[str, int]) -> Sizes:
    """``sizes`` with the given fields capped; session lengths beyond the bulk import are dropped."""
    smaller = replace(sizes, **{k: min(v, getattr(sizes, k)) for k, v in caps.items()})
    return replace(smaller, growth_points=tuple(n for n in smaller.growth_points if n <= smaller.bulk_messages))


@contextmanager
def recorded(name: str, result: dict[str, Any]) -> Iterator[None]:
    """Time one backend's run into ``result``; its failure becomes its status there instead of ending the whole run."""
    started = time.perf_counter()
    try:
        yield
    except Unavailable as e:
        log(f"[{name}] not available: {e}")
        result.clear()
        result.update(status="not available", reason=str(e))
        return
    except Exception as e:
        log(f"[{name}] FAILED: {type(e).__name__}: {e}")
        result.update(status="failed", reason=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}", traceback=traceback.format_exc())
    result["seconds"] = round(time.perf_counter() - started, 1)


def run_backend(backend: Backend, sizes: Sizes) -> dict[str, Any]:
    reason = backend.unavailable()
    if reason:
        log(f"[{backend.name}] not available: {reason}")
        return {"status": "not available", "reason": reason}
    result: dict[str, Any] = {"status": "ok", "raw_driver": backend.raw_label}
    with recorded(backend.name, result), backend.location() as location, ExitStack() as stack:
        sides: dict[str, Any] = {PRAISON: PraisonSide(location.praison_url, location.tmp / "home")}
        stack.callback(sides[PRAISON].close)
        if location.raw is not None:
            sides[RAW] = location.raw()
            stack.callback(sides[RAW].close)
            result["server"] = sides[RAW].version()
        smaller = scaled_down(sizes, location.smaller)
        if smaller != sizes:
            sizes = smaller
            result["sizes"] = asdict(sizes)
            caps = ", ".join(f"{k}={v:,}" for k, v in location.smaller.items())
            result["smaller"] = f"run with {caps}: {location.why_smaller}"
        run = Run(backend.name, sides, sizes, location)
        result["metrics"], result["notes"] = run.metrics, run.notes
        log(f"[{backend.name}] {result.get('server', 'in-process')}")
        run.append()
        big = run.bulk_import()
        run.resume(big)  # before growth appends to the same session: exactly bulk_messages long
        run.growth(big)
        run.list()
        if backend.state:
            run.state()
    return result


def chosen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[list[str], Path]:
    """The backends named by --backends (all when none) and the output folder (--out, else by --size)."""
    names = [n.strip() for n in args.backends.split(",") if n.strip()] or [b.name for b in BACKENDS]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BY_NAME)}")
    return names, args.out or (ROOT / "results" if args.size == "full" else ROOT / "results" / args.size)


def comparison_main(
    argv: list[str] | None,
    *,
    module: str,
    doc: str,
    sizes: Mapping[str, Any],
    libraries: tuple[str, ...],
    run: Callable[[list[str], Any], dict[str, Any]],
    write: Callable[[dict[str, Any], Path], list[Path]],
    only: tuple[str, ...] = (),
    refusal: str = "",
    machine_extra: Mapping[str, Any] | None = None,
) -> int:
    """``main()`` of a benchmark module: its command line, a run of the chosen backends, the report written.

    ``only``: the backends the other side exists on (``refusal`` says so for any other); ``libraries``: the packages
    whose versions the report records.
    """
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{module}", description=doc.split("\n")[0])
    parser.add_argument("--size", choices=sorted(sizes), default="smoke", help="smoke: seconds (CI); medium: minutes (a before/after check); full: the published numbers")
    choices = ",".join(only) if only else f"{','.join(BY_NAME)} (default: all reachable)"
    parser.add_argument("--backends", default=",".join(only), help=f"comma-separated subset of {choices}")
    parser.add_argument("--out", type=Path, help="output folder (default benchmarks/results, or benchmarks/results/smoke for smoke)")
    args = parser.parse_args(argv)
    names, out = chosen(parser, args)
    other = [name for name in names if only and name not in only]
    if other:
        parser.error(f"{refusal} {', '.join(only)} only, not {', '.join(other)}")
    size = sizes[args.size]
    machine = machine_info()
    for name in libraries:
        try:
            machine["libraries"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    machine.update(machine_extra or {})
    command = f"python -m benchmarks.{module} " + " ".join(argv if argv is not None else sys.argv[1:])
    results: dict[str, Any] = {"size": args.size, "sizes": asdict(size), "command": command.strip(), "machine": machine}
    started = time.perf_counter()
    results["backends"] = run(names, size)
    results["seconds"] = round(time.perf_counter() - started, 1)
    written = write(results, out)
    log(f"wrote {', '.join(str(p) for p in written)}")
    return 1 if any(r["status"] == "failed" for r in results["backends"].values()) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="smoke", help="smoke: seconds (CI); medium: minutes (a before/after check); full: the published numbers")
    parser.add_argument("--backends", default="", help=f"comma-separated subset of {','.join(BY_NAME)} (default: all reachable)")
    parser.add_argument("--out", type=Path, help="output folder (default benchmarks/results, or benchmarks/results/smoke for smoke)")
    parser.add_argument("--render", type=Path, metavar="RESULTS_JSON", help="measure nothing: redraw the table and plot of a results.json")
    args = parser.parse_args(argv)
    if args.render:
        written = write_report(json.loads(args.render.read_text(encoding="utf-8")), args.out or args.render.parent)
        log(f"wrote {', '.join(str(p) for p in written)}")
        return 0
    names, out = chosen(parser, args)
    sizes = SIZES[args.size]

    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    results: dict[str, Any] = {"size": args.size, "sizes": asdict(sizes), "command": command.strip(), "machine": machine_info()}
    started = time.perf_counter()
    results["backends"] = {name: run_backend(BY_NAME[name], sizes) for name in names}
    results["seconds"] = round(time.perf_counter() - started, 1)
    written = write_report(results, out)
    log(f"wrote {', '.join(str(p) for p in written)}")
    return 1 if any(r["status"] == "failed" for r in results["backends"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
