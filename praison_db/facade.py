"""``db()``: connection URLs in, an agent's memory out."""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any

from .bridge import in_thread
from .base import ConversationStore, StateStore
from .errors import ConfigError, Error, StoreClosed, StoreUnavailable
from .registry import StoreRole, entry_for, resolve
from .url import NETWORK_SCHEMES, StoreURL, parse_url, redacted, scrub_chain

__all__ = ["db", "PraisonDB", "default_home"]

log = logging.getLogger("praison_db")

DATABASE_URL_VARS = ("PRAISON_DATABASE_URL", "DATABASE_URL")
STATE_URL_VARS = ("PRAISON_STATE_URL",)
READ_URL_VARS = ("PRAISON_READ_URL",)  # a read replica of the conversations database (SQL: read_url)


def default_home() -> Path:
    """Where the zero-config stores live: ``$PRAISON_HOME`` or ``~/.praison``."""
    home = os.environ.get("PRAISON_HOME")
    return Path(home).expanduser() if home else Path.home() / ".praison"


def env_url(names: tuple[str, ...]) -> str | None:
    """The first non-empty environment variable of ``names`` (an empty variable counts as unset)."""
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


# How long a host name may take to resolve before opening a store gives up on it.
RESOLVE_TIMEOUT = 5.0


def _check_resolvable(url: StoreURL) -> None:
    """Give up on a host name the system resolver has not answered for within RESOLVE_TIMEOUT.

    Drivers resolve names with getaddrinfo, which no connect timeout covers: a slow or unreachable DNS server
    would block db() for the resolver's own retries. A name that resolves (or fails) in time goes on to the driver,
    which looks it up again (as quickly, normally) and reports any failure in its own words.
    """
    names = {h for h, _ in url.hosts if h and h != "localhost" and not _is_ip(h)}
    if url.scheme not in NETWORK_SCHEMES or not names:
        return
    done = threading.Event()
    current: list[str] = []

    def lookup() -> None:
        for name in sorted(names):
            current[:] = [name]
            try:
                socket.getaddrinfo(name, None)
            except (OSError, UnicodeError):
                pass  # the driver reports it, in its words
        done.set()

    threading.Thread(target=lookup, name="praison-db-resolve", daemon=True).start()
    if not done.wait(RESOLVE_TIMEOUT):
        raise StoreUnavailable(
            f"{url.render()}: the host {(current or sorted(names))[0]!r} did not resolve within {RESOLVE_TIMEOUT:g} s; check the host "
            "name and the DNS servers of this machine"
        )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    return True


def open_store(url: str | StoreURL, role: StoreRole, **options: Any) -> Any:
    """Open the store that plays ``role`` for ``url`` (through the scheme registry)."""
    return _open(url, role, options, asynchronous=False)


def _open(url: str | StoreURL, role: StoreRole, options: dict[str, Any], *, asynchronous: bool) -> Any:
    """Open a store; ``asynchronous`` (from praison_db.aio, inside a bridge greenlet) opens it on the backend's async
    driver where it has one, else opens the sync store in a worker thread (the async API then runs it in threads)."""
    parsed = parse_url(url)
    cls: Any = resolve(parsed.scheme, role)
    if asynchronous:
        in_thread(_check_resolvable, parsed)
        native = getattr(cls, "from_url_async", None)
        opener = native if native is not None else functools.partial(in_thread, cls.from_url)
    else:
        _check_resolvable(parsed)
        opener = cls.from_url
    try:
        return opener(parsed, **options)
    except Error as e:
        scrub_chain(e, parsed.secrets)  # drivers put URLs in messages that a traceback of the chain would print
        raise
    except Exception as e:  # noqa: BLE001 - a backend let a driver or parsing error through: still one typed line
        kind = StoreUnavailable if isinstance(e, OSError) else ConfigError
        detail = redacted(e, parsed.secrets, limit=200)
        error = kind(f"could not open {parsed.render()} as a {role} store: {type(e).__name__}: {detail}")
        error.__cause__, error.__suppress_context__ = e, True
        raise scrub_chain(error, parsed.secrets)  # noqa: B904 - not `from e`: that would put back a cause the scrub cut


class PraisonDB:
    """An agent's memory: ``conversations``, ``state`` and the JSON ``sessions`` store, closed together.

    Build it with :func:`db`. Usable as a context manager.
    """

    def __init__(
        self,
        conversations: ConversationStore,
        state: StateStore,
        *,
        session_dir: Path,
        database_url: StoreURL | None = None,
        state_url: StoreURL | None = None,
        strict: bool = True,
    ) -> None:
        self.conversations = conversations
        self.state = state
        self.session_dir = session_dir
        self.strict = strict
        self._database_url = database_url
        self._state_url = state_url
        self._sessions: ConversationStore | None = None
        self._closed = False

    @property
    def database_url(self) -> str | None:
        """The conversations URL with its password masked (None for the zero-config default)."""
        return self._database_url.render() if self._database_url else None

    @property
    def state_url(self) -> str | None:
        """The state URL with its password masked (None when state shares the conversations backend)."""
        return self._state_url.render() if self._state_url else None

    @property
    def sessions(self) -> ConversationStore:
        """The file-locked JSON DefaultSessionStore in ``session_dir`` (the conversations store when that is it)."""
        from .backends.jsonfile import JsonConversationStore

        if isinstance(self.conversations, JsonConversationStore) and self.conversations.directory == self.session_dir:
            return self.conversations
        if self._sessions is None:
            if self._closed:  # never open a new store on behalf of a closed facade
                raise StoreClosed("this PraisonDB is closed; open a new one with db(...)")
            self._sessions = JsonConversationStore(self.session_dir)
        return self._sessions

    def close(self) -> None:
        """Close every store this object opened. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for store in (self.conversations, self.state, self._sessions):
            if store is not None:
                store.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> PraisonDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        conv = self.database_url or f"json default ({self.session_dir})"
        state = self.state_url or self.state.url
        return f"<PraisonDB conversations={conv} state={state}>"

    __str__ = __repr__


def db(
    database_url: str | os.PathLike[str] | None = None,
    state_url: str | None = None,
    *,
    session_dir: str | os.PathLike[str] | None = None,
    strict: bool = True,
    **options: Any,
) -> PraisonDB:
    """Open an agent's memory from connection URLs.

    Args:
        database_url: where conversations go. Defaults to ``$PRAISON_DATABASE_URL``, then ``$DATABASE_URL``,
            then the JSON DefaultSessionStore in ``session_dir``.
        state_url: where key-value state goes. Defaults to ``$PRAISON_STATE_URL``, then the conversations
            database when it can hold state, else a JSON file in ``session_dir``.
        session_dir: folder of the JSON stores; default ``$PRAISON_HOME/sessions`` or ``~/.praison/sessions``.
        strict: raise on storage errors (default). With False, the Agent logs a warning, keeps running and keeps
            any message it could not write locally until a later write succeeds.
        **options: backend options (same names as in the URL query string, e.g. ``table_prefix``, ``ttl``).

    Raises:
        ConfigError: unknown scheme, missing driver extra, unknown option or a role the backend cannot play.
        StoreUnavailable: the server could not be reached.
    """
    return assemble(database_url, state_url, session_dir=session_dir, strict=strict, options=options, asynchronous=False)


def assemble(
    database_url: str | os.PathLike[str] | None,
    state_url: str | None,
    *,
    session_dir: str | os.PathLike[str] | None,
    strict: bool,
    options: dict[str, Any],
    asynchronous: bool,
) -> PraisonDB:
    """What ``db()`` does, for the sync API and (with ``asynchronous``, in a bridge greenlet) for praison_db.aio."""
    if not isinstance(strict, bool):  # strict="no" would be truthy, strict=None falsy: neither says what it means
        raise ConfigError(f"strict must be True or False, got {type(strict).__name__}")
    if session_dir is not None and (not isinstance(session_dir, (str, os.PathLike)) or "\x00" in os.fspath(session_dir)):
        raise ConfigError("session_dir must be a folder path (a str or pathlib.Path, without NUL characters)")
    directory = Path(session_dir).expanduser() if session_dir is not None else default_home() / "sessions"
    conv_text = database_url if database_url is not None else env_url(DATABASE_URL_VARS)
    state_text = state_url if state_url is not None else env_url(STATE_URL_VARS)

    # An explicit argument is parsed even when empty (that is a mistake worth reporting); unset means default.
    conv_url = parse_url(conv_text) if conv_text is not None else None
    state_parsed = parse_url(state_text) if state_text is not None else None
    if conv_url is None and state_parsed is None and options:
        raise ConfigError(f"options {sorted(options)} need a database_url or state_url to apply to")
    read_text = env_url(READ_URL_VARS) if "read_url" not in options and "read_url" not in (conv_url.query if conv_url else {}) else None

    opened: list[Any] = []
    try:
        if conv_url is not None:
            conv_options = {**options, "read_url": read_text} if read_text is not None else options
            conversations = _open(conv_url, "conversations", conv_options, asynchronous=asynchronous)
        else:
            from .backends.jsonfile import JsonConversationStore

            conversations = in_thread(JsonConversationStore, directory)
        opened.append(conversations)

        if state_parsed is not None:
            state_options = options if conv_url is None or state_parsed.scheme == conv_url.scheme else {}
            state = _open(state_parsed, "state", state_options, asynchronous=asynchronous)
        elif conv_url is not None and entry_for(conv_url.scheme).state is not None:
            state = _state_alongside(conversations, conv_url, options, asynchronous)
        else:
            from .backends.jsonfile import JsonStateStore

            state = in_thread(JsonStateStore, directory / "state.json")
        opened.append(state)
    except BaseException:
        for store in opened:
            store.close()
        raise
    return PraisonDB(conversations, state, session_dir=directory, database_url=conv_url, state_url=state_parsed, strict=strict)


def _state_alongside(conversations: ConversationStore, url: StoreURL, options: dict[str, Any], asynchronous: bool) -> StateStore:
    """State in the conversations database, sharing its connection pool where the backend can."""
    try:
        shared = conversations.state_store()
    except Error as e:
        scrub_chain(e, url.secrets)
        raise
    if shared is not None:
        return shared
    return _open(url, "state", options, asynchronous=asynchronous)
