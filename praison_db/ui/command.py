"""The ``praison-db ui`` command (registered by praison_db.cli; imports the web stack only when run)."""

from __future__ import annotations

import ipaddress
import socket
import sys
from typing import Annotated, Optional

import typer

from ..errors import ConfigError
from ..facade import db
from . import UI_EXTRA_HINT

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, opened before the store so a busy port is one line, not a uvicorn log.

    Connections made from here on wait in the backlog until the server accepts them, so "listening" is printed
    only when it is true.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e}): choose another with --port") from e
    return sock


def ui_command(
    ctx: typer.Context,
    database_url: Annotated[
        Optional[str], typer.Option("--database-url", "-d", help="Conversations URL (default: the global -d, then the environment).", show_default=False)
    ] = None,
    state_url: Annotated[Optional[str], typer.Option("--state-url", "-s", help="State URL (default: the global -s, then the environment).", show_default=False)] = None,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 8765,
    host: Annotated[str, typer.Option("--host", help="Address to listen on. Anything but loopback also needs --allow-remote.")] = "127.0.0.1",
    allow_remote: Annotated[bool, typer.Option("--allow-remote", help="Allow --host to be a non-loopback address (the app has no login).")] = False,
    read_only: Annotated[bool, typer.Option("--read-only", help="Hide and refuse deleting sessions.")] = False,
) -> None:
    """Serve a local web app to browse sessions, messages and state (needs the ui extra)."""
    try:
        import uvicorn

        from .app import LOOPBACK_HOSTS, create_app
    except ModuleNotFoundError as e:
        raise ConfigError(UI_EXTRA_HINT) from e
    remote = not is_loopback(host)
    if remote and not allow_remote:
        raise ConfigError(f"--host {host} would expose every conversation to the network without a login; add --allow-remote if you mean it")
    sock = _listen(host, port)
    cfg = ctx.obj
    try:
        with db(database_url or cfg.database_url, state_url or cfg.state_url, session_dir=cfg.session_dir) as store:
            # A loopback server accepts only loopback Host headers (a rebinding DNS name cannot reach it).
            app = create_app(store, read_only=read_only, allowed_hosts=None if remote else (*LOOPBACK_HOSTS, host))
            shown = f"[{host}]" if ":" in host else host
            where = store.database_url or f"{store.conversations.url} (default JSON store)"
            bound = sock.getsockname()[1]
            print(f"praison-db ui: browsing {where} at http://{shown}:{bound}/{' (read-only)' if read_only else ''}; Ctrl+C stops it", file=sys.stderr, flush=True)
            if remote:
                print(f"praison-db ui: WARNING: listening on {host}: anyone who can reach it can read{'' if read_only else ' and delete'} every conversation", file=sys.stderr, flush=True)
            server = uvicorn.Server(uvicorn.Config(app, log_level="warning", server_header=False, lifespan="off"))
            try:
                server.run(sockets=[sock])
            except KeyboardInterrupt:  # uvicorn re-raises the Ctrl+C it handled; stopping is the normal way out
                print("praison-db ui: stopped", file=sys.stderr)
    finally:
        sock.close()
