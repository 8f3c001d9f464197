"""The session browser: server-rendered pages over a PraisonDB, with a little script for live refresh and local time.

Pages: ``/`` sessions, ``/session?id=`` one session, ``/session/export?id=`` JSON Lines, ``/session/delete?id=``
(confirmation, then POST), ``/state``, ``/overview``; ``/api/...`` small JSON for live refresh. Session ids travel in
the query string because they may hold any character, ``/`` included.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message as ASGIMessage, Receive, Scope, Send

from ..errors import ConfigError, Error, InputError, SessionNotFound, StoreClosed, StoreUnavailable
from ..facade import PraisonDB
from ..models import Message
from ..url import mask_url
from .data import StoreData, listing_version, session_version

HERE = Path(__file__).resolve().parent
PAGE_SIZE = 50
MESSAGE_PAGE = 50
STATE_PAGE = 50
FOLD_CHARS = 600  # longer content starts folded
FOLD_LINES = 12
SHOWN_CHARS = 100_000  # beyond this a page shows a note instead: content may be up to 16 MB
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")

# Pages need nothing from elsewhere: no CDN, no inline script, no framing (the delete form must not be clickjacked).
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",  # "no-referrer" would make the browser send Origin: null on our own POST
    "cache-control": "no-store",
}


class _SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: ASGIMessage) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in SECURITY_HEADERS.items():
                    if name.encode() not in present:
                        headers.append((name.encode(), value.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


class _Pages:
    """Route handlers sharing the store, the templates and the CSRF secret."""

    def __init__(self, store: PraisonDB, read_only: bool) -> None:
        self.data = StoreData(store)
        self.read_only = read_only
        self.secret = secrets.token_bytes(32)  # per process: a restart invalidates open confirmation forms
        self.env = Environment(
            loader=FileSystemLoader(str(HERE / "templates")),
            autoescape=select_autoescape(["html"], default=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals.update(
            session_url=session_url,
            read_only=read_only,
            describe=self.describe,
        )
        self.env.filters.update(pretty=pretty, iso=iso, utc_text=utc_text, ttl_text=ttl_text, folded=folded, clip=clip)
        self.conversations_label = store.database_url or f"{store.conversations.url} (default JSON store)"
        self.state_label = store.state_url or str(store.state.url)

    def describe(self) -> str:
        return self.conversations_label

    # ---- rendering ----

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("active", "")
        html = self.env.get_template(name).render(request=request, **context)
        return HTMLResponse(html, status_code=status)

    def error_page(self, request: Request, status: int, message: str) -> HTMLResponse:
        return self.render(request, "error.html", status=status, message=self.clean(message), status_code=status)

    def clean(self, text: str) -> str:
        """One line, no password."""
        line = " ".join(str(text).split())[:500]
        for password in self.data.passwords():
            line = line.replace(password, "***")
        return mask_url(line)

    # ---- sessions ----

    async def sessions(self, request: Request) -> Response:
        q = request.query_params
        filters = _filters(q)
        find_id = q.get("id", "").strip()
        if find_id:
            session = await self.data.session(find_id)
            if session is not None:
                return RedirectResponse(session_url(find_id), status_code=303)
        cursor = q.get("cursor") or None
        page = await self.data.sessions(**filters, limit=PAGE_SIZE, cursor=cursor)
        name = q.get("name", "").strip()
        items = [s for s in page.items if name.casefold() in (s.name or "").casefold()] if name else page.items
        notice = f"No session with id {find_id!r}." if find_id else None
        live = None if cursor else "/api/sessions?" + urlencode({k: v for k, v in q.items() if k in ("user", "agent", "type")})
        next_url = "/?" + urlencode({**{k: v for k, v in q.items() if k != "cursor"}, "cursor": page.next_cursor}) if page.next_cursor else None
        first_url = "/?" + urlencode({k: v for k, v in q.items() if k != "cursor"}) if cursor else None
        return self.render(
            request,
            "sessions.html",
            status=404 if find_id else 200,
            active="sessions",
            sessions=items,
            form={"user": q.get("user", ""), "agent": q.get("agent", ""), "type": q.get("type", ""), "name": name, "id": find_id},
            notice=notice,
            deleted=q.get("deleted"),
            live_url=live,
            version=listing_version(page.items),
            next_url=next_url,
            first_url=first_url,
            filtered_by_name=bool(name),
        )

    async def sessions_api(self, request: Request) -> Response:
        version = await self.data.sessions_version(**_filters(request.query_params), limit=PAGE_SIZE, cursor=None)
        return JSONResponse({"version": version})

    # ---- one session ----

    async def session(self, request: Request) -> Response:
        session_id = _required(request, "id")
        before_seq = _optional_int(request, "before_seq")
        session = await self.data.session(session_id)
        if session is None:
            raise SessionNotFound(f"no session {session_id!r}")
        messages = await self.data.messages(session_id, limit=MESSAGE_PAGE, before_seq=before_seq)
        first_seq = messages[0].seq if messages else None
        last_seq = messages[-1].seq if messages else None
        older = await self.data.messages(session_id, limit=1, before_seq=first_seq) if first_seq is not None else []
        results = {m.tool_call_id: m for m in messages if m.tool_call_id}
        calls = {c.get("id"): (m, c) for m in messages for c in (m.tool_calls or []) if isinstance(c, dict) and c.get("id")}
        return self.render(
            request,
            "session.html",
            active="sessions",
            session=session,
            messages=messages,
            results=results,
            calls=calls,
            older_url=session_url(session_id, before_seq=first_seq) if older else None,
            newer_url=session_url(session_id, before_seq=last_seq + 1 + MESSAGE_PAGE) if before_seq is not None and last_seq is not None else None,
            newest_url=session_url(session_id) + "#newest",
            live_url=None if before_seq is not None else "/api/session?" + urlencode({"id": session_id}),
            version=session_version(session),
            export_url="/session/export?" + urlencode({"id": session_id}),
            delete_url=None if self.read_only else "/session/delete?" + urlencode({"id": session_id}),
            tool_name=tool_name,
            tool_arguments=tool_arguments,
            content_text=content_text,
            raw_json=lambda m: json.dumps(m.model_dump(mode="json"), indent=2, ensure_ascii=False),
        )

    async def session_api(self, request: Request) -> Response:
        return JSONResponse({"version": await self.data.session_version(_required(request, "id"))})

    async def export(self, request: Request) -> Response:
        session_id = _required(request, "id")
        stream = await self.data.export_lines(session_id)
        filename = "".join(c if c.isalnum() or c in "-_." else "_" for c in session_id)[:100] or "session"
        return StreamingResponse(
            stream, media_type="application/x-ndjson", headers={"content-disposition": f'attachment; filename="{filename}.jsonl"'}
        )

    # ---- delete ----

    def csrf_token(self, session_id: str) -> str:
        return hmac.new(self.secret, f"delete\0{session_id}".encode(), hashlib.sha256).hexdigest()

    async def delete(self, request: Request) -> Response:
        if self.read_only:
            return self.error_page(request, 403, "This viewer is read-only (started with --read-only): nothing can be deleted.")
        if request.method == "GET":
            session_id = _required(request, "id")
            session = await self.data.session(session_id)
            if session is None:
                raise SessionNotFound(f"no session {session_id!r}")
            return self.render(request, "delete.html", active="sessions", session=session, token=self.csrf_token(session_id))
        if not _same_origin(request):
            return self.error_page(request, 403, "Refused: the delete request did not come from this viewer's own page.")
        form = parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
        session_id = (form.get("id") or [""])[0]
        token = (form.get("token") or [""])[0]
        if not session_id or not hmac.compare_digest(token, self.csrf_token(session_id)):
            return self.error_page(request, 403, "Refused: the confirmation form is missing or stale; open the session and try again.")
        await self.data.delete_session(session_id)
        return RedirectResponse("/?" + urlencode({"deleted": session_id}), status_code=303)

    # ---- state ----

    async def state(self, request: Request) -> Response:
        q = request.query_params
        scope = q.get("scope", "").strip().strip(":")
        prefix = q.get("prefix", "")
        offset = _optional_int(request, "start") or 0
        full_prefix = f"{scope}:{prefix}" if scope else prefix
        entries, more = await self.data.state_page(full_prefix, offset, STATE_PAGE)
        keep = {k: v for k, v in q.items() if k in ("scope", "prefix")}
        return self.render(
            request,
            "state.html",
            active="state",
            entries=entries,
            form={"scope": scope, "prefix": prefix},
            full_prefix=full_prefix,
            offset=offset,
            next_url="/state?" + urlencode({**keep, "start": offset + STATE_PAGE}) if more else None,
            prev_url="/state?" + urlencode({**keep, "start": max(0, offset - STATE_PAGE)}) if offset else None,
            state_label=self.state_label,
        )

    # ---- overview ----

    async def overview(self, request: Request) -> Response:
        report = await self.data.overview(read_only=self.read_only)
        for s in report["stores"]:
            s["url"] = self.clean(s["url"])
            if s["error"]:
                s["error"] = self.clean(s["error"])
        return self.render(request, "overview.html", active="overview", report=report)

    # ---- errors ----

    async def on_error(self, request: Request, exc: Exception) -> Response:
        status = _status(exc)
        if isinstance(exc, HTTPException):
            message = exc.detail if exc.status_code != 404 else "No such page."
        elif isinstance(exc, Error):
            message = str(exc)
        else:  # a bug: the type is enough to report it; its text may hold anything
            message = f"Unexpected {type(exc).__name__} while reading the store."
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": self.clean(message)}, status_code=status)
        return self.error_page(request, status, message)


def create_app(store: PraisonDB, *, read_only: bool = False, allowed_hosts: Sequence[str] | None = LOOPBACK_HOSTS) -> Starlette:
    """The ASGI app browsing ``store``.

    Args:
        store: an open PraisonDB (from ``db()``); the app does not close it.
        read_only: hide and refuse every change (deleting a session).
        allowed_hosts: Host header values accepted (guards a loopback server against DNS rebinding); None: any.
    """
    if not isinstance(store, PraisonDB):
        raise ConfigError("create_app needs the PraisonDB that db() returns")
    pages = _Pages(store, read_only)
    routes = [
        Route("/", pages.sessions, name="sessions"),
        Route("/session", pages.session, name="session"),
        Route("/session/export", pages.export, name="export"),
        Route("/session/delete", pages.delete, methods=["GET", "POST"], name="delete"),
        Route("/state", pages.state, name="state"),
        Route("/overview", pages.overview, name="overview"),
        Route("/api/sessions", pages.sessions_api),
        Route("/api/session", pages.session_api),
        Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [Middleware(_SecurityHeaders)]
    if allowed_hosts is not None:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)))
    return Starlette(
        routes=routes,
        middleware=middleware,
        # praison_db errors and HTTP errors are answered here; anything else also gets the one-line page (and the
        # server's log gets the traceback, which the page never shows).
        exception_handlers={Error: pages.on_error, HTTPException: pages.on_error, Exception: pages.on_error},
    )


# ---- helpers used by routes and templates ----


def session_url(session_id: str, **extra: Any) -> str:
    params = {"id": session_id, **{k: v for k, v in extra.items() if v is not None}}
    return "/session?" + urlencode(params)


def _filters(q: Any) -> dict[str, str | None]:
    return {"user_id": q.get("user") or None, "agent_id": q.get("agent") or None, "session_type": q.get("type") or None}


def _required(request: Request, name: str) -> str:
    value = request.query_params.get(name, "")
    if not value:
        raise InputError(f"the {name} parameter is missing")
    return value


def _optional_int(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    if value in (None, ""):
        return None
    try:
        number = int(value)
    except ValueError:
        raise InputError(f"{name} must be a whole number") from None
    if number < 0:
        raise InputError(f"{name} must not be negative")
    return number


def _same_origin(request: Request) -> bool:
    """A browser names the page a POST came from; it must be this server (absent headers: a non-browser client)."""
    host = request.headers.get("host", "")
    origin = request.headers.get("origin") or request.headers.get("referer")
    if origin is None or origin == "null":
        return origin is None
    rest = origin.split("://", 1)[-1]
    return rest.split("/", 1)[0] == host


def _status(exc: Exception) -> int:
    if isinstance(exc, HTTPException):
        return exc.status_code
    if isinstance(exc, SessionNotFound):
        return 404
    if isinstance(exc, (InputError, ConfigError)):
        return 400
    if isinstance(exc, (StoreUnavailable, StoreClosed)):
        return 503
    return 500


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def iso(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def utc_text(value: datetime | None) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else ""


def ttl_text(seconds: float | None) -> str:
    if seconds is None:
        return "no expiry"
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def clip(text: str) -> str:
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS]}\n… {len(text) - SHOWN_CHARS:,} more characters not shown: export the session to see all of it"


def folded(text: str) -> bool:
    return len(text) > FOLD_CHARS or text.count("\n") >= FOLD_LINES


def content_text(message: Message) -> str:
    content: Any = message.content
    if content is None:
        return ""
    return content if isinstance(content, str) else pretty(content)


def tool_name(call: Any) -> str:
    if not isinstance(call, dict):
        return "?"
    function = call.get("function")
    if isinstance(function, dict) and function.get("name"):
        return str(function["name"])
    return str(call.get("name") or call.get("type") or "?")


def tool_arguments(call: Any) -> str:
    """The call's arguments, pretty-printed when they are JSON text."""
    function = call.get("function") if isinstance(call, dict) else None
    args = function.get("arguments") if isinstance(function, dict) else (call.get("arguments") if isinstance(call, dict) else None)
    if args is None:
        return ""
    if isinstance(args, str):
        try:
            return pretty(json.loads(args))
        except ValueError:
            return args
    return pretty(args)
