"""``praison-db export | import | copy | prune``: move data between backends from the command line.

Long runs show Rich progress bars (counts, rate, ETA) on stderr when both stdout and stderr are terminals; with
``--json`` or when either is not a terminal the command is quiet and prints one JSON summary (on stderr when
stdout carries the export itself, ``-o -``).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text

from .errors import InputError
from .facade import PraisonDB, db
from .transfer import Progress as ProgressCallback
from .transfer import TransferReport, copy, export, import_

__all__ = ["register"]

_PHASES = {"checking": "checking the file", "messages": "messages", "state": "state keys"}


class _Rate(ProgressColumn):
    """Items per second (Rich's own speed column speaks of bytes)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f}/s" if speed else "", style="progress.data.speed")


def _interactive(as_json: bool) -> bool:
    return not as_json and sys.stdout.isatty() and sys.stderr.isatty()


@contextmanager
def _progress(show: bool) -> Iterator[ProgressCallback | None]:
    if not show:
        yield None
        return
    bars = Progress(
        TextColumn("{task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    tasks: dict[str, Any] = {}

    def update(phase: str, done: int, total: int | None) -> None:
        if phase not in tasks:
            tasks[phase] = bars.add_task(_PHASES.get(phase, phase), total=total)
        bars.update(tasks[phase], completed=done, total=total)

    with bars:
        yield update


def _summary(command: str, report: TransferReport, show: bool, *, to_stderr: bool = False, **extra: Any) -> None:
    data = {"command": command, **extra, **report.to_dict()}
    if show:
        parts = [f"{report.sessions} sessions", f"{report.messages} messages"]
        if report.messages_present:
            parts.append(f"{report.messages_present} already there")
        if report.sessions_skipped:
            parts.append(f"{report.sessions_skipped} conflicting sessions skipped")
        if report.sessions_replaced:
            parts.append(f"{report.sessions_replaced} replaced")
        parts.append(f"{report.state} state keys")
        Console(stderr=to_stderr, highlight=False).print(Text(f"{command}: {', '.join(parts)} in {report.seconds:.1f} s"))
        return
    (sys.stderr if to_stderr else sys.stdout).write(json.dumps(data, ensure_ascii=False) + "\n")


def _when(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InputError(f"{option} takes a date or time like 2026-01-01 or 2026-01-01T12:00:00+00:00") from None
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _duration(value: str) -> timedelta:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", value)
    if match is None:
        raise InputError("--older-than takes a number and a unit: 90d, 12h, 30m, 45s or 2w")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def _open(ctx: typer.Context, url: str, state_url: str | None) -> PraisonDB:
    cfg = ctx.obj
    return db(url, state_url or getattr(cfg, "state_url", None), session_dir=getattr(cfg, "session_dir", None))


_Json = Annotated[bool, typer.Option("--json", help="Print one JSON summary and no progress.")]
_OnConflict = Annotated[
    str,
    typer.Option("--on-conflict", help="A session the destination holds with different data: fail, skip or replace."),
]
_Sessions = Annotated[Optional[list[str]], typer.Option("--session", help="This session (repeatable).", show_default=False)]
_User = Annotated[Optional[str], typer.Option("--user", help="Only this user's sessions.", show_default=False)]
_Agent = Annotated[Optional[str], typer.Option("--agent", help="Only this agent's sessions.", show_default=False)]
_Since = Annotated[Optional[str], typer.Option("--since", help="Only sessions active since this date (UTC).", show_default=False)]
_Before = Annotated[Optional[str], typer.Option("--before", help="Only sessions last active before this date (UTC).", show_default=False)]
_State = Annotated[
    Optional[bool],
    typer.Option("--state/--no-state", help="Include the state store. Default: only when no session filter is given.", show_default=False),
]


def _filters(sessions: list[str] | None, user: str | None, agent: str | None, since: str | None, before: str | None) -> dict[str, Any]:
    return {
        "session_ids": sessions or None,
        "user_id": user,
        "agent_id": agent,
        "since": _when(since, "--since"),
        "before": _when(before, "--before"),
    }


def export_command(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="The store to export (conversations URL).")],
    output: Annotated[str, typer.Option("--output", "-o", help="File to write (.gz compresses); - for standard output.")],
    session: _Sessions = None,
    user: _User = None,
    agent: _Agent = None,
    since: _Since = None,
    before: _Before = None,
    state_url: Annotated[Optional[str], typer.Option("--state-url", help="The state store to export with it.", show_default=False)] = None,
    state: _State = None,
    as_json: _Json = False,
) -> None:
    """Export sessions, messages and state to a JSON Lines file (streaming; see README, "Moving data")."""
    filters = _filters(session, user, agent, since, before)
    show = _interactive(as_json) and output != "-"
    with _open(ctx, url, state_url) as store, _progress(show) as progress:
        target: Any = sys.stdout.buffer if output == "-" else Path(output)
        report = export(store, target, state=state, progress=progress, **filters)
    _summary("export", report, show, to_stderr=output == "-", output=output)


def import_command(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="The store to import into (conversations URL).")],
    file: Annotated[str, typer.Argument(help="An export file (gzip detected); - for standard input.")],
    on_conflict: _OnConflict = "fail",
    state_url: Annotated[Optional[str], typer.Option("--state-url", help="Where the file's state keys go.", show_default=False)] = None,
    as_json: _Json = False,
) -> None:
    """Import an export file; run it again after an interruption to finish (nothing is stored twice)."""
    show = _interactive(as_json)
    with _open(ctx, url, state_url) as store, _progress(show) as progress:
        report = import_(store, file, on_conflict=on_conflict, progress=progress)  # type: ignore[arg-type]
    _summary("import", report, show, file=file)


def copy_command(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="The store to copy from.")],
    destination: Annotated[str, typer.Argument(help="The store to copy to.")],
    on_conflict: _OnConflict = "fail",
    session: _Sessions = None,
    user: _User = None,
    agent: _Agent = None,
    since: _Since = None,
    before: _Before = None,
    state_url: Annotated[Optional[str], typer.Option("--state-url", help="The source's state store.", show_default=False)] = None,
    to_state_url: Annotated[Optional[str], typer.Option("--to-state-url", help="The destination's state store.", show_default=False)] = None,
    state: _State = None,
    as_json: _Json = False,
) -> None:
    """Copy sessions, messages and state from one store to another; run it again to resume."""
    filters = _filters(session, user, agent, since, before)
    show = _interactive(as_json)
    with _open(ctx, source, state_url) as src, _open(ctx, destination, to_state_url) as dst, _progress(show) as progress:
        report = copy(src, dst, on_conflict=on_conflict, state=state, progress=progress, **filters)  # type: ignore[arg-type]
    _summary("copy", report, show)


def prune_command(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="The store to prune (conversations URL).")],
    older_than: Annotated[str, typer.Option("--older-than", help="Idle time, e.g. 90d, 12h, 2w.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what would be deleted.")] = False,
    as_json: _Json = False,
) -> None:
    """Delete sessions (and their messages) idle for longer than --older-than."""
    idle = _duration(older_than)
    show = _interactive(as_json)
    with _open(ctx, url, None) as store:
        if dry_run:
            cutoff = datetime.now(timezone.utc) - idle
            count = messages = 0
            for s in store.conversations.iter_sessions():
                if s.updated_at < cutoff:
                    count, messages = count + 1, messages + s.message_count
        else:
            count, messages = store.conversations.prune(older_than=idle), None  # type: ignore[assignment]
    result = {"command": "prune", "older_than": older_than, "dry_run": dry_run, "sessions": count}
    if messages is not None:
        result["messages"] = messages
    if not show:
        sys.stdout.write(json.dumps(result) + "\n")
    elif dry_run:
        Console(highlight=False).print(Text(f"prune --dry-run: {count} sessions ({messages} messages) idle for more than {older_than} would be deleted"))
    else:
        Console(highlight=False).print(Text(f"prune: deleted {count} sessions idle for more than {older_than}"))


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
    app.command("import")(import_command)
    app.command("copy")(copy_command)
    app.command("prune")(prune_command)
