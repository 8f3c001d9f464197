"""The ``praison-db`` command line: demo, sessions, doctor, migrate, export, import, copy, prune, ui.

Global options ``--database-url/-d``, ``--state-url/-s`` and ``--session-dir`` mean what they mean for ``db()``
(unset: ``$PRAISON_DATABASE_URL``/``$DATABASE_URL``, ``$PRAISON_STATE_URL``, ``$PRAISON_HOME/sessions``).
Human output is Rich tables; ``--json`` prints JSON on stdout and nothing else there.

Exit codes: 0 success; 1 a check failed (``doctor``, ``demo``) or an unexpected error; 2 a praison_db error or a
usage error. Errors are one line on stderr: never a traceback (``PRAISON_DEBUG=1`` shows it), never a password.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

from . import __version__
from .errors import ConfigError, Error, IntegrityError, SessionNotFound
from .facade import DATABASE_URL_VARS, STATE_URL_VARS, PraisonDB, db, default_home, env_url
from .registry import entry_for
from .url import parse_url, redact_text

try:
    import typer
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text
except ImportError:  # the [cli] extra is missing: main() says so in one line
    typer = None  # type: ignore[assignment]

__all__ = ["main", "build_app"]

CLI_EXTRA_HINT = "the praison-db CLI needs: pip install 'praison-db[cli]'"
_argv: list[str] = []  # this run's arguments, searched for passwords to redact
_URL_ARGUMENT = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://.*", re.DOTALL)
DEMO_USER = "demo-user"
DEMO_INSTRUCTIONS = "You are a helpful assistant with a persistent memory."
DEMO_FIRST = ("My name is Alice", "My favourite colour is blue")
DEMO_RESUMED = ("What's my name?", "What's my favourite colour?")


@dataclass(frozen=True)
class Config:
    """The global options, handed to every command through the Typer context."""

    database_url: str | None
    state_url: str | None
    session_dir: Path | None

    def open(self, database_url: str | None = None, session_dir: Path | None = None) -> PraisonDB:
        return db(database_url or self.database_url, self.state_url, session_dir=session_dir or self.session_dir)


def _out() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")


def _fail(message: str, code: int) -> NoReturn:
    _err().print(Text(f"error: {_redact(message)}", style="red"))
    raise typer.Exit(code)


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


# ---- global options ----


def _root(
    ctx: typer.Context,
    database_url: Annotated[
        Optional[str],
        typer.Option("--database-url", "-d", help="Conversations URL. Default: $PRAISON_DATABASE_URL, $DATABASE_URL, else JSON files.", show_default=False),
    ] = None,
    state_url: Annotated[
        Optional[str],
        typer.Option("--state-url", "-s", help="State URL. Default: $PRAISON_STATE_URL, else the conversations database.", show_default=False),
    ] = None,
    session_dir: Annotated[
        Optional[Path],
        typer.Option("--session-dir", help="Folder of the JSON stores. Default: $PRAISON_HOME/sessions or ~/.praison/sessions.", show_default=False),
    ] = None,
) -> None:
    """praison-db: persistence for AI agents: conversations and state behind one URL."""
    ctx.obj = Config(database_url, state_url, session_dir)


# ---- demo ----


def demo(
    ctx: typer.Context,
    session_dir: Annotated[
        Optional[Path], typer.Option("--session-dir", help="Where the demo's JSON store lives. Default: a fresh folder under $PRAISON_HOME/demo or ~/.praison/demo.", show_default=False)
    ] = None,
    database_url: Annotated[
        Optional[str], typer.Option("--database-url", "-d", help="Run the demo on another backend, e.g. sqlite:///demo.db.", show_default=False)
    ] = None,
) -> None:
    """Show an agent's memory surviving a restart: chat in one process, resume the session in a second one."""
    cfg: Config = ctx.obj
    url = database_url or cfg.database_url
    directory = session_dir or cfg.session_dir or _fresh_demo_dir()
    session_id = f"demo-{uuid.uuid4().hex[:12]}"
    out = _out()
    from .agent import Agent

    with cfg.open(url, directory) as store:
        if not store.conversations.capabilities.persistent:
            raise ConfigError(f"the demo needs a store that outlives a process; {store.conversations.url} does not")
        out.print(Text("praison-db demo: an agent's memory survives a restart", style="bold"))
        out.print(Text(f"  conversations: {_describe(store)}"))
        out.print(Text(f"  state:         {store.state.url}"))
        out.print(Text(f"  session_id:    {session_id}"))
        out.print(Text("  model:         the offline demo model (deterministic, no LLM, no network)"))
        out.print()
        out.print(Text(f"Process 1 (pid {os.getpid()}): a new Agent starts the conversation", style="bold"))
        agent = Agent(name="Assistant", instructions=DEMO_INSTRUCTIONS, db=store, session_id=session_id, user_id=DEMO_USER)
        for text in DEMO_FIRST:
            _print_turn(out, text, agent.chat(text))
        stored = store.conversations.count_messages(session_id)
        where = f"-d '{store.database_url}'" if url else f"--session-dir {directory}"
        out.print(Text(f"  {stored} messages stored; process 1 closes its store.", style="dim"))
    out.print()

    result = _run_resume(url, cfg.state_url, directory, session_id)
    out.print(Text(f"Process 2 (pid {result['pid']}): a fresh Python process, a new Agent, the same session_id", style="bold"))
    out.print(Text(f"  restored {result['restored']} messages from the store", style="dim"))
    answers = []
    for turn in result["turns"]:
        _print_turn(out, turn["user"], turn["assistant"])
        answers.append(turn["assistant"])
    out.print()

    with cfg.open(url, directory) as store:
        page = store.conversations.list_sessions(limit=20)
        _print_sessions(out, page.items, f"sessions in {_describe(store)}")
    ok = len(answers) == 2 and "Alice" in answers[0] and "blue" in answers[1]
    if ok:
        out.print(Text("✓ process 2 answered from the history it restored from the store", style="bold green"))
        out.print(Text(f"  look inside: praison-db {where} sessions show {session_id}", style="dim"))
        return
    _fail("process 2 did not recall the name and colour: its history was not restored", 1)


def _fresh_demo_dir() -> Path:
    parent = default_home() / "demo"
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=time.strftime("run-%Y%m%d-%H%M%S-"), dir=parent))


def _run_resume(url: str | None, state_url: str | None, directory: Path, session_id: str) -> dict[str, Any]:
    """Run the second half of the demo in a new interpreter and return what it reports."""
    env = dict(os.environ)
    # URLs go through the environment, not argv, so that a password never shows in a process listing.
    if url:
        env["PRAISON_DATABASE_URL"] = url
    if state_url:
        env["PRAISON_STATE_URL"] = state_url
    package_root = str(Path(__file__).resolve().parent.parent)  # the child imports this same praison_db
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "praison_db.cli", "--session-dir", str(directory), "_demo-resume", session_id, *DEMO_RESUMED]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        reason = lines[-1].removeprefix("error: ") if lines else f"exit code {proc.returncode}"
        _fail(f"process 2 failed: {reason}", 1)
    return json.loads(proc.stdout)


def demo_resume(
    ctx: typer.Context,
    session_id: Annotated[str, typer.Argument()],
    questions: Annotated[list[str], typer.Argument()],
) -> None:
    """(internal) The demo's second process: resume SESSION_ID, ask QUESTIONS, print JSON."""
    cfg: Config = ctx.obj
    from .agent import Agent

    with cfg.open() as store:
        before = store.conversations.count_messages(session_id)
        agent = Agent(name="Assistant", instructions=DEMO_INSTRUCTIONS, db=store, session_id=session_id, user_id=DEMO_USER)
        turns = [{"user": q, "assistant": agent.chat(q)} for q in questions]
    restored = before if agent.history_limit is None else min(before, agent.history_limit)
    _emit_json({"pid": os.getpid(), "restored": restored, "turns": turns})


def _describe(store: PraisonDB) -> str:
    """The conversations store, password masked."""
    return store.database_url or f"{store.conversations.url} (the default JSON store)"


def _print_turn(out: Console, user: str, assistant: str) -> None:
    out.print(Text.assemble(("  you:       ", "cyan"), user))
    out.print(Text.assemble(("  assistant: ", "green"), assistant))


# ---- sessions ----


def _print_sessions(out: Console, sessions: list[Any], title: str) -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("session_id", overflow="fold")
    table.add_column("user", overflow="fold")
    table.add_column("agent", overflow="fold")
    table.add_column("type")
    table.add_column("messages", justify="right")
    table.add_column("updated (UTC)")
    for s in sessions:
        table.add_row(
            Text(s.session_id), Text(s.user_id or ""), Text(s.agent_id or ""), s.session_type, str(s.message_count), _when(s.updated_at)
        )
    out.print(table)
    if not sessions:
        out.print(Text("  (no sessions)", style="dim"))


def sessions_list(
    ctx: typer.Context,
    user_id: Annotated[Optional[str], typer.Option("--user-id", help="Only this user's sessions.", show_default=False)] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="How many sessions (newest activity first).")] = 50,
    cursor: Annotated[Optional[str], typer.Option("--cursor", help="next_cursor of a previous --json page.", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List sessions, most recently active first."""
    cfg: Config = ctx.obj
    with cfg.open() as store:
        page = store.conversations.list_sessions(user_id=user_id, limit=limit, cursor=cursor)
        title = f"sessions in {_describe(store)}"
    if as_json:
        _emit_json({"sessions": [s.model_dump(mode="json") for s in page], "next_cursor": page.next_cursor})
        return
    out = _out()
    _print_sessions(out, page.items, title)
    if page.next_cursor:
        out.print(Text(f"  more: --cursor {page.next_cursor}", style="dim"))


def sessions_show(
    ctx: typer.Context,
    session_id: Annotated[str, typer.Argument(help="The session to show.")],
    limit: Annotated[int, typer.Option("--limit", min=0, help="How many of the newest messages.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a session and its newest messages."""
    cfg: Config = ctx.obj
    with cfg.open() as store:
        session = store.conversations.get_session(session_id)
        if session is None:
            raise SessionNotFound(f"no session {session_id!r} in {_describe(store)}")
        messages = store.conversations.get_messages(session_id, limit=limit)
    if as_json:
        _emit_json({"session": session.model_dump(mode="json"), "messages": [m.model_dump(mode="json") for m in messages]})
        return
    out = _out()
    out.print(Text(f"session {session.session_id}", style="bold"))
    for label, value in (
        ("user", session.user_id),
        ("agent", session.agent_id),
        ("type", session.session_type),
        ("name", session.name),
        ("created", _when(session.created_at)),
        ("updated", _when(session.updated_at)),
        ("messages", f"{session.message_count} (showing the newest {len(messages)})"),
    ):
        if value:
            out.print(Text(f"  {label + ':':<10}{value}"))
    if session.metadata:
        out.print(Text(f"  {'metadata:':<10}{json.dumps(session.metadata, ensure_ascii=False)}"))
    table = Table(show_header=True)
    table.add_column("seq", justify="right")
    table.add_column("role")
    table.add_column("content", overflow="fold")
    table.add_column("at (UTC)")
    for m in messages:
        content = m.content if isinstance(m.content, str) else ("" if m.content is None else json.dumps(m.content, ensure_ascii=False))
        if m.extra:
            content = f"{content}\n{json.dumps(m.extra, ensure_ascii=False)}".strip()
        if m.tool_calls:
            calls = ", ".join(f"{c.get('function', {}).get('name')}({c.get('function', {}).get('arguments', '')})" for c in m.tool_calls)
            content = f"{content}\n→ {calls}".strip()
        if m.tool_call_id:
            content = f"[{m.tool_call_id}] {content}"
        table.add_row(str(m.seq), m.role or f"({m.type})", Text(content), _when(m.created_at))
    out.print(table)


def sessions_delete(
    ctx: typer.Context,
    session_id: Annotated[str, typer.Argument(help="The session to delete, with all its messages.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Delete a session and all its messages (deleting a missing session is a no-op)."""
    cfg: Config = ctx.obj
    with cfg.open() as store:
        count = store.conversations.count_messages(session_id)
        if not yes and store.conversations.get_session(session_id) is not None:
            typer.confirm(f"Delete session {session_id!r} and its {count} messages?", abort=True, err=True)
        deleted = store.conversations.delete_session(session_id)
    if as_json:
        _emit_json({"session_id": session_id, "deleted": deleted, "messages": count if deleted else 0})
    elif deleted:
        _out().print(Text(f"deleted session {session_id} ({count} messages)"))
    else:
        _out().print(Text(f"no session {session_id}: nothing deleted"))


# ---- doctor ----

def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _versions(store: Any) -> dict[str, str]:
    """Versions of the packages the store's scheme runs on (facts of the registry)."""
    scheme = str(store.url).split("://", 1)[0]
    try:
        entry = entry_for(scheme)
    except Error:
        return {}
    found = {}
    for name in entry.distributions:
        version = _dist_version(name)
        if version:
            found[name] = version
    if entry.driver == "sqlite3":
        import sqlite3

        found["sqlite3"] = sqlite3.sqlite_version
    return found


def _error_text(error: Exception) -> str:
    if isinstance(error, Error):  # what every public call raises
        return str(error)
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def _check_store(role: str, store: Any) -> dict[str, Any]:
    """Describe one store and time a real round trip against it."""
    url = str(store.url)
    report: dict[str, Any] = {
        "role": role,
        "backend": url.split("://", 1)[0] if "://" in url else "?",
        "store": type(store).__name__,
        "url": url,
        "versions": _versions(store),
        "server_version": None,
        "schema": None,
        "probe": None,
        "latency_ms": None,
        "damaged_files": None,
        "ok": False,
        "error": None,
    }
    try:
        report["server_version"] = store.server_version()
        schema = store.schema_version()
        if schema is not None:
            report["schema"] = {"current": schema[0], "expected": schema[1]}
        probe_id = f"praison-doctor-{uuid.uuid4().hex}"
        started = time.perf_counter()
        if role == "state":
            report["probe"] = "set+get+delete of a temporary key"
            value = {"probe": probe_id}
            store.set(probe_id, value, ttl=60)  # the TTL cleans up if the delete never happens
            if store.get(probe_id) != value:
                raise IntegrityError("the state store returned a different value than was written")
            store.delete(probe_id)
        else:
            report["probe"] = "get_session of a missing id"
            if store.get_session(probe_id) is not None:
                raise IntegrityError("the conversation store returned a session that was never created")
        report["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
        report["ok"] = True
    except Exception as e:  # noqa: BLE001 - every failure becomes one line of the report
        report["error"] = _redact(_error_text(e))
    damaged_files = getattr(store, "damaged_files", None)  # file-backed stores: scan their folder, even after a failure
    if callable(damaged_files):
        try:
            damaged = report["damaged_files"] = damaged_files()
        except Exception as e:  # noqa: BLE001
            damaged = []
            report["ok"], report["error"] = False, report["error"] or _redact(_error_text(e))
        if damaged:
            shown = "; ".join(f"{d['file']}: {d['problem']}" for d in damaged[:3])
            more = f" and {len(damaged) - 3} more" if len(damaged) > 3 else ""
            summary = f"{len(damaged)} damaged file{'s' if len(damaged) != 1 else ''} ({shown}{more})"
            report["ok"], report["error"] = False, report["error"] or _redact(summary)
    return report


def doctor(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Connect to the configured stores and report backend, versions, schema and round-trip latency."""
    cfg: Config = ctx.obj
    report: dict[str, Any] = {
        "ok": False,
        "praison_db": __version__,
        "python": platform.python_version(),
        "session_dir": None,
        "stores": [],
        "error": None,
    }
    try:
        store = cfg.open()
    except Error as e:
        report["error"] = _redact(str(e))
    else:
        with store:
            report["session_dir"] = str(store.session_dir)
            report["stores"] = [_check_store("conversations", store.conversations), _check_store("state", store.state)]
        report["ok"] = all(s["ok"] for s in report["stores"])
    if as_json:
        _emit_json(report)
    else:
        _print_doctor(report)
    if not report["ok"]:
        failures = [report["error"]] if report["error"] else [f"{s['role']}: {s['error']}" for s in report["stores"] if not s["ok"]]
        _fail("; ".join(failures), 1)


def _print_doctor(report: dict[str, Any]) -> None:
    out = _out()
    out.print(Text(f"praison-db {report['praison_db']} on Python {report['python']}", style="bold"))
    if report.get("session_dir"):
        out.print(Text(f"  session_dir: {report['session_dir']}"))
    if not report["stores"]:
        return
    table = Table()  # one row per fact, one column per store: readable in 80 columns
    table.add_column("")
    for s in report["stores"]:
        table.add_column(s["role"], overflow="fold")

    def row(label: str, render: Any) -> None:
        table.add_row(label, *(render(s) for s in report["stores"]))

    row("backend", lambda s: f"{s['backend']} ({s['store']})")
    row("url", lambda s: Text(s["url"]))
    row("libraries", lambda s: Text(", ".join(f"{k} {v}" for k, v in s["versions"].items()) or "-"))
    row("server", lambda s: Text(s["server_version"] or "-"))
    row("schema", lambda s: "-" if s["schema"] is None else f"{s['schema']['current']} (expected {s['schema']['expected']})")
    row("round trip", lambda s: "-" if s["latency_ms"] is None else f"{s['latency_ms']:.1f} ms ({s['probe']})")
    row("damaged files", _damaged_cell)
    row("status", lambda s: Text("ok", style="green") if s["ok"] else Text(f"FAILED: {s['error']}", style="red"))
    out.print(table)


def _damaged_cell(report: dict[str, Any]) -> Any:
    damaged = report.get("damaged_files")
    if damaged is None:
        return "-"
    if not damaged:
        return Text("none", style="green")
    return Text("\n".join(f"{d['file']}: {d['problem']}" for d in damaged), style="red")


# ---- migrate ----


def migrate_command(
    ctx: typer.Context,
    url: Annotated[Optional[str], typer.Argument(help="SQL database URL. Default: --database-url or $PRAISON_DATABASE_URL / $DATABASE_URL.", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Bring a SQL database's schema up to date (idempotent)."""
    from .backends.sql import migrate

    cfg: Config = ctx.obj
    target = url or cfg.database_url or env_url(DATABASE_URL_VARS)
    if not target:
        raise ConfigError("migrate needs a SQL database URL, e.g. praison-db migrate sqlite:///conversations.db")
    shown = parse_url(target).render()
    before, after = migrate(target)
    if as_json:
        _emit_json({"url": shown, "before": before, "after": after, "changed": after != before})
        return
    note = "already up to date" if before == after else f"applied {after - before} migration{'s' if after - before != 1 else ''}"
    _out().print(Text(f"schema of {shown}: version {before} → {after} ({note})"))


# ---- plumbing ----


def _redact(text: str) -> str:
    """Remove every secret of a URL given on the command line or in the environment from ``text``.

    Passwords are masked wherever they appear (not only inside a URL); an argument that does not parse as a URL
    but looks like one is replaced as a whole, since any part of it could be a password.
    """
    candidates = list(_argv) + [os.environ.get(n, "") for n in (*DATABASE_URL_VARS, *STATE_URL_VARS)]
    secrets: list[str] = []
    for candidate in candidates:
        found = _URL_ARGUMENT.search(candidate)  # also inside --database-url=URL or -dURL
        if found is None:
            continue
        value = found.group(0)
        try:
            secrets.extend(parse_url(value).secrets)
        except Error:
            masked = f"{found.group(1)}://***"
            text = text.replace(value, masked).replace(value.strip(), masked)
    return redact_text(text, secrets)


def _usage_errors() -> tuple[type[Exception], ...]:
    """Click's error classes: Typer's own copy of Click (recent Typer) and Click itself (older Typer)."""
    found: list[type[Exception]] = []
    for module, name in (("typer.exceptions", "TyperException"), ("click.exceptions", "ClickException")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def build_app() -> typer.Typer:
    """The Typer application (needs the ``cli`` extra)."""
    app = typer.Typer(
        name="praison-db",
        add_completion=False,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        help="praison-db: persistence for AI agents: conversations and state behind one URL.",
    )
    app.callback()(_root)
    app.command("demo")(demo)
    app.command("_demo-resume", hidden=True)(demo_resume)
    sessions = typer.Typer(no_args_is_help=True, help="List, show and delete sessions.")
    sessions.command("list")(sessions_list)
    sessions.command("show")(sessions_show)
    sessions.command("delete")(sessions_delete)
    app.add_typer(sessions, name="sessions")
    app.command("doctor")(doctor)
    app.command("migrate")(migrate_command)
    from .cli_transfer import register as register_transfer

    register_transfer(app)
    from .ui.command import ui_command

    app.command("ui")(ui_command)
    return app


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``praison-db`` command."""
    if typer is None:
        print(CLI_EXTRA_HINT, file=sys.stderr)
        sys.exit(1)
    debug = os.environ.get("PRAISON_DEBUG", "") not in ("", "0")
    _argv[:] = sys.argv[1:] if argv is None else argv
    try:
        # Not standalone: Click would print usage errors itself, and they quote the arguments (URLs included).
        code = build_app()(args=argv, prog_name="praison-db", standalone_mode=False)
    except _usage_errors() as e:
        _err().print(Text(f"error: {_redact(e.format_message())} (see praison-db --help)", style="red"))  # type: ignore[attr-defined]
        sys.exit(getattr(e, "exit_code", 2))
    except typer.Abort:
        _err().print(Text("error: aborted", style="red"))
        sys.exit(1)
    except Error as e:
        if debug:
            raise
        _err().print(Text(f"error: {_redact(str(e))}", style="red"))
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - a bug, but the user still gets one line and no secrets
        if debug:
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        _err().print(Text(f"error: unexpected {type(e).__name__}: {_redact(first)} (PRAISON_DEBUG=1 shows the traceback)", style="red"))
        sys.exit(1)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
