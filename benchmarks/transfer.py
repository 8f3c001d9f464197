"""Moving data: time and peak memory of export, import and copy against raw-driver pipelines.

    python -m benchmarks.transfer --messages 1000000          # SQLite source, PostgreSQL destination
    python -m benchmarks.transfer --messages 2000 --json       # a smoke-sized pass (the tests run this)

The source is a SQLite database of ``--messages`` messages in four sessions. Each phase runs in its own process, so
its peak RSS (``ru_maxrss``) is its own: praison_db's export to ``.jsonl.gz``, its import of that file into
PostgreSQL, its copy SQLite -> PostgreSQL, and the raw pipelines doing the same work with the same durability:
``json.loads`` of the same file or ``sqlite3`` reads, then psycopg ``executemany`` of 1,000 rows and the session's
counter bump in one transaction. Each side writes to its own tables of a database created for the run and dropped
after it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

SESSIONS = 4
BATCH = 1_000
ADMIN_URL = os.environ.get("PRAISON_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PHASES = ("seed", "export", "import", "raw_import", "copy", "raw_copy")
_MESSAGE_COLUMNS = "session_id, seq, id, role, content, name, tool_calls, tool_call_id, metadata, created_at"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _raw_target(pg: str, prefix: str) -> Any:
    """A psycopg cursor on tables praison_db created with ``prefix`` (so both sides write the same schema)."""
    import psycopg

    from praison_db.facade import open_store

    open_store(f"{pg}?table_prefix={prefix}", "conversations").close()
    return psycopg.connect(pg, autocommit=True).cursor()


def _raw_write(cur: Any, prefix: str, session_id: str, rows: list[tuple[Any, ...]]) -> None:
    """One durable batch, as praison_db writes one: the messages and the counter bump in one transaction."""
    placeholders = ", ".join(["%s"] * 10)
    cur.execute("BEGIN")
    cur.executemany(f"INSERT INTO {prefix}messages ({_MESSAGE_COLUMNS}) VALUES ({placeholders})", rows)
    cur.execute(f"UPDATE {prefix}sessions SET message_count = message_count + %s WHERE session_id = %s", (len(rows), session_id))
    cur.execute("COMMIT")


def _raw_session(cur: Any, prefix: str, values: tuple[Any, ...]) -> None:
    cur.execute(
        f"INSERT INTO {prefix}sessions (session_id, user_id, agent_id, session_type, name, metadata, created_at, "
        "updated_at, message_count) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 0)",
        values,
    )


def run_phase(name: str, work: Path, messages: int, pg: str) -> dict[str, Any]:
    from praison_db import copy, db, export, import_

    source, backup = f"sqlite:///{work}/source.db", work / "backup.jsonl.gz"
    started = time.perf_counter()
    if name == "seed":
        per = messages // SESSIONS
        with db(source, session_dir=work) as s:
            for k in range(SESSIONS):
                sid = f"s{k}"
                s.conversations.create_session(sid, user_id="u")
                for a in range(0, per, 20_000):
                    batch = [{"role": "user", "content": f"message {a + i} " + "x" * 80, "metadata": {"i": a + i}} for i in range(min(20_000, per - a))]
                    s.conversations.add_messages(sid, batch)
    elif name == "export":
        with db(source, session_dir=work) as s:
            export(s, backup, state=False)
    elif name == "import":
        with db(f"{pg}?table_prefix=imp_", session_dir=work) as d:
            import_(d, backup)
    elif name == "copy":
        with db(source, session_dir=work) as s, db(f"{pg}?table_prefix=cpy_", session_dir=work) as d:
            copy(s, d, state=False)
    elif name == "raw_import":
        cur, rows, sid = _raw_target(pg, "rawi_"), [], ""
        with gzip.open(backup, "rb") as f:
            for line in f:
                record = json.loads(line)
                if record.get("type") == "session":
                    if rows:
                        _raw_write(cur, "rawi_", sid, rows)
                        rows = []
                    s = record["session"]
                    sid = s["session_id"]
                    _raw_session(cur, "rawi_", (sid, s["user_id"], s["agent_id"], s["session_type"], s["name"], json.dumps(s["metadata"]), s["created_at"], s["updated_at"]))
                elif record.get("type") == "message":
                    m = record["message"]
                    tool_calls = None if m["tool_calls"] is None else json.dumps(m["tool_calls"])
                    rows.append((sid, m["seq"], m["id"], m["role"], m["content"], m["name"], tool_calls, m["tool_call_id"], json.dumps(m["metadata"]), datetime.fromisoformat(m["created_at"])))
                    if len(rows) >= BATCH:
                        _raw_write(cur, "rawi_", sid, rows)
                        rows = []
        if rows:
            _raw_write(cur, "rawi_", sid, rows)
    elif name == "raw_copy":
        import sqlite3

        cur = _raw_target(pg, "rawc_")
        src = sqlite3.connect(work / "source.db")
        heads = src.execute("SELECT session_id, user_id, agent_id, session_type, name, metadata, created_at, updated_at FROM praison_sessions").fetchall()
        for head in heads:
            _raw_session(cur, "rawc_", head)
            low = 0
            while rows := src.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM praison_messages WHERE session_id = ? AND seq > ? AND seq <= ? ORDER BY seq",
                (head[0], low, low + BATCH),
            ).fetchall():
                _raw_write(cur, "rawc_", head[0], rows)
                low += BATCH
    else:
        raise SystemExit(f"unknown phase {name!r}; one of {', '.join(PHASES)}")
    return {"phase": name, "seconds": round(time.perf_counter() - started, 2), "peak_rss_mb": round(_peak_rss_mb(), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--postgres", default=ADMIN_URL, help="an admin URL; the run creates and drops its own database")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--pg", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:  # one phase, in its own process
        print(json.dumps(run_phase(args.phase, Path(args.work), args.messages, args.pg)), flush=True)
        return 0

    import psycopg

    name = f"praison_transfer_{uuid.uuid4().hex[:8]}"
    base, _, _ = args.postgres.rpartition("/")
    results: dict[str, Any] = {"messages": args.messages}
    with psycopg.connect(args.postgres, autocommit=True) as admin, tempfile.TemporaryDirectory() as work:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            for phase in PHASES:
                done = subprocess.run(
                    [sys.executable, "-m", "benchmarks.transfer", "--phase", phase, "--work", work, "--pg", f"{base}/{name}",
                     "--messages", str(args.messages)],
                    capture_output=True, text=True, check=False,
                )
                if done.returncode != 0:
                    raise SystemExit(f"phase {phase} failed: {done.stderr.strip().splitlines()[-1:]}")
                results[phase] = json.loads(done.stdout.strip().splitlines()[-1])
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    results["import_ratio"] = round(results["import"]["seconds"] / max(results["raw_import"]["seconds"], 1e-9), 2)
    results["copy_ratio"] = round(results["copy"]["seconds"] / max(results["raw_copy"]["seconds"], 1e-9), 2)
    if args.json:
        print(json.dumps(results))
    else:
        print(f"{args.messages:,} messages, SQLite -> PostgreSQL")
        for phase in PHASES[1:]:
            r = results[phase]
            print(f"  {phase:<11} {r['seconds']:>9.2f} s   peak RSS {r['peak_rss_mb']:>7.1f} MB")
        print(f"  import / raw: {results['import_ratio']}x   copy / raw: {results['copy_ratio']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
