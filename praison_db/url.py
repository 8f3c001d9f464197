"""Connection URLs: parsed once into an immutable value whose repr never shows the password.

Parsing is strict (a URL that cannot be read is a ConfigError that never repeats it) and lenient in one place:
a password written without percent-encoding may contain ``:``, ``@``, ``/``, ``?`` or ``#`` (``user:ab/c?d@host``),
as SQLAlchemy accepts. Every human-facing rendering masks the password and query values that hold secrets
(``password=``, ``sslpassword=``, ...); the text handed to a driver has the credentials percent-encoded.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import parse_qsl, quote, unquote

from .errors import ConfigError

__all__ = ["StoreURL", "parse_url", "mask_url", "redacted", "redact_text", "scrub_chain"]

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]{0,31})://")
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?\Z")
_PORT = re.compile(r"[0-9]{1,5}\Z")
_MAX_LENGTH = 8_192  # far above any real URL; keeps the '@' search below cheap
# Schemes whose authority is a name or a folder rather than a network host (json://rel/dir, yaml://rel/dir, memory://name).
_NAME_SCHEMES = frozenset({"sqlite", "sqlite+pysqlite", "json", "file", "yaml", "memory", "chdb", "unix"})
# Built-in schemes whose hosts are resolved by the driver with the system resolver (not mongodb+srv: SRV records).
NETWORK_SCHEMES = frozenset(
    {
        "postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2", "mysql", "mysql+pymysql", "mariadb",
        "mariadb+pymysql", "redis", "rediss", "mongodb", "clickhouse", "clickhouses", "singlestoredb", "singlestore",
        "redis+cluster", "rediss+cluster",
    }
)  # fmt: skip
# Query keys whose values are secrets (libpq password/sslpassword/oauth_client_secret/scram_*, PyMySQL password and
# ssl_key_password, MongoDB authMechanismProperties) or URLs that may hold one (read_url): masked like the password.
_SECRET_KEY = re.compile(r"pass|secret|token|credential|scram_|authmechanismproperties|_url$", re.IGNORECASE)
# Query keys that may repeat: libpq multi-host (?host=a&host=b, as SQLAlchemy documents) and MongoDB's
# readPreferenceTags. Any other repeated key is a mistake.
_REPEATABLE = frozenset({"host", "port", "readpreferencetags"})
# A URL in free text (a driver's message): scheme:// up to whitespace or a quote.
_URL_IN_TEXT = re.compile(r"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]{0,31}://[^\s'\"<>`]*")


class _Unreadable(Exception):
    """Why a URL cannot be parsed (said without repeating any part of it)."""

    def __init__(self, reason: str, *, misread: bool = False) -> None:
        super().__init__(reason)
        self.misread = misread  # the likely cause is an unencoded character in the password


@dataclass(frozen=True)
class _Parts:
    scheme: str
    user_raw: str | None  # as written, None without userinfo
    password_raw: str | None  # as written, None without ':'
    hostinfo: str  # as written
    path_raw: str  # as written, with its leading '/'
    query_raw: str  # as written, without '?'


def _authority_ok(hostinfo: str) -> bool:
    """Whether ``host[:port]`` text reads as one host and a numeric port (the standard reading is plausible)."""
    if not hostinfo or "," in hostinfo:
        return bool(hostinfo)
    try:
        _host_port(hostinfo)
    except _Unreadable:
        return False
    return True


def _split(text: str) -> _Parts:
    match = _SCHEME.match(text)
    if match is None:
        raise _Unreadable("expected 'scheme://...'")
    scheme = match.group(1).lower()
    rest = text[match.end():]
    user_raw = password_raw = None
    if "@" in rest and not rest.startswith("/"):
        cut = _userinfo_end(rest, network=scheme not in _NAME_SCHEMES)
        if cut is not None:
            userinfo, rest = rest[:cut], rest[cut + 1:]
            user_raw, sep, pw = userinfo.partition(":")
            password_raw = pw if sep else None
    end = len(rest)
    for delimiter in "/?#":
        index = rest.find(delimiter)
        if index != -1:
            end = min(end, index)
    hostinfo, rest = rest[:end], rest[end:]
    path_raw, _, query_raw = rest.partition("?")
    if "#" in path_raw or "#" in query_raw:
        raise _Unreadable("a '#' outside the password; percent-encode it as %23")
    return _Parts(scheme, user_raw, password_raw, hostinfo, path_raw, query_raw)


def _userinfo_end(rest: str, *, network: bool) -> int | None:
    """Index of the '@' that ends the userinfo in ``rest`` (the URL after ``scheme://``), or None.

    The standard reading (userinfo inside the authority, which ends at the first '/', '?' or '#'; the last '@'
    there wins so a password may hold '@') is taken when it is plausible. Otherwise a ``user:`` start means the
    password runs past an unencoded '/', '?' or '#': it ends at the first '@' after which a host follows and no
    '@' is left before the query.
    """
    authority_end = min((i for i in (rest.find(d) for d in "/?#") if i != -1), default=len(rest))
    authority = rest[:authority_end]
    standard = authority.rfind("@")
    path_part, _, query_part = rest[authority_end:].partition("?")
    # An '@' in the path, or in a query parameter's name, cannot be the standard reading of a real URL; one in a
    # query value (?application_name=me@host) can.
    stray = "@" in path_part or any("@" in piece.partition("=")[0] for piece in query_part.split("&"))
    if standard != -1 and not stray:
        return standard
    plausible = _authority_ok(authority) if network else ":" not in authority
    if standard == -1 and not stray and plausible:
        return None
    user_end = re.match(r"[^:/?#@]*", rest).end()  # type: ignore[union-attr]
    if user_end >= len(rest) or rest[user_end] != ":":
        return standard if standard != -1 else None
    for index in [i for i, c in enumerate(rest) if c == "@" and i > user_end][:64]:
        after = rest[index + 1:]
        host_end = min((i for i in (after.find(d) for d in "/?#") if i != -1), default=len(after))
        if "@" in after[:host_end] or any(c.isspace() for c in after[:host_end]):
            continue
        path_after, _, query_after = after[host_end:].partition("?")
        if "@" in path_after or any("@" in piece.partition("=")[0] for piece in query_after.split("&")):
            continue
        return index
    return standard if standard != -1 else None


def _host_port(hostinfo: str) -> tuple[str, int | None]:
    """(host, port) of one ``host[:port]`` or ``[v6][:port]``; raises _Unreadable."""
    port_text: str | None
    if hostinfo.startswith("["):
        host, bracket, after = hostinfo[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise _Unreadable("an IPv6 host must be written [address] or [address]:port")
        try:
            ipaddress.IPv6Address(unquote(host).partition("%")[0])
        except ValueError:
            raise _Unreadable("the IPv6 host is not a valid address") from None
        port_text = after[1:] if after else None
    else:
        host, colon, port_text = hostinfo.partition(":")
        _check_hostname(host)
        if not colon:
            port_text = None
    if port_text is None:
        return host, None
    if not _PORT.match(port_text) or not 0 < int(port_text) < 65536:
        raise _Unreadable("the port must be a number from 1 to 65535", misread=True)
    return host, int(port_text)


def _check_hostname(host: str) -> None:
    if not host:
        raise _Unreadable("the host is empty", misread=True)
    if not host.isascii():
        try:
            hint = f" ({host.encode('idna').decode('ascii')})"
        except UnicodeError:
            hint = ""
        raise _Unreadable(f"the host is not ASCII; write it in its IDNA form{hint}")
    if len(host) > 253:
        raise _Unreadable("the host is longer than 253 characters")
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise _Unreadable(
            "the host must be a name of letters, digits, '-' and '.' (labels of at most 63) or an IP address", misread=True
        )


def _decode(text: str, what: str) -> str:
    try:
        decoded = unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise _Unreadable(f"the {what} has percent-escapes that are not UTF-8") from None
    if "\x00" in decoded:
        raise _Unreadable(f"the {what} contains a NUL character (%00)")
    return decoded


def _masked_query(query_raw: str) -> str:
    pieces = []
    for piece in query_raw.split("&"):
        key, eq, _ = piece.partition("=")
        pieces.append(f"{key}=***" if eq and _SECRET_KEY.search(unquote(key)) else piece)
    return "&".join(pieces)


def _display(parts: _Parts) -> str:
    userinfo = ""
    if parts.user_raw is not None:
        userinfo = f"{parts.user_raw}:***@" if parts.password_raw is not None else f"{parts.user_raw}@"
    query = f"?{_masked_query(parts.query_raw)}" if parts.query_raw else ""
    return f"{parts.scheme}://{userinfo}{parts.hostinfo}{parts.path_raw}{query}"


def _unreadable(text: str, error: _Unreadable) -> ConfigError:
    hint = " (percent-encode special characters in the user and password, e.g. '/' as %2F)" if error.misread else ""
    return ConfigError(f"could not parse the database URL {_scheme_only(text)}: {error}{hint}")


def _scheme_only(text: str) -> str:
    match = _SCHEME.match(text)
    return f"'{match.group(1).lower()}://***'" if match else "'***'"


def mask_url(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``; safe to log or put in an error.

    A URL that cannot be parsed is reduced to its scheme (``redis://***``): any part of it could be a password.
    """

    def mask(match: re.Match[str]) -> str:
        candidate = match.group(0)
        try:
            return _display(_parse_parts(candidate))
        except _Unreadable:
            return _scheme_only(candidate).strip("'")

    return _URL_IN_TEXT.sub(mask, text)


def _parse_parts(text: str) -> _Parts:
    if _CONTROL.search(text):
        raise _Unreadable("it contains a control character (NUL, tab or newline)")
    if len(text) > _MAX_LENGTH:
        raise _Unreadable(f"it is longer than {_MAX_LENGTH} characters")
    parts = _split(text)
    for piece, what in (
        (parts.user_raw or "", "user"),
        (parts.password_raw or "", "password"),
        (parts.path_raw, "path"),
        (parts.query_raw, "query string"),
        (parts.hostinfo, "host"),
    ):
        if _BAD_PERCENT.search(piece):
            raise _Unreadable(f"a '%' in the {what} is not followed by two hex digits; write '%' as %25")
    return parts


def redacted(error: BaseException, password: str | Iterable[str] | None, limit: int = 300) -> str:
    """A driver error as one line for a praison_db message: whitespace folded, cut short, no password, URLs masked."""
    return redact_text(" ".join(str(error).split()), password)[:limit]


def redact_text(text: str, secrets: str | Iterable[str] | None) -> str:
    """``text`` with URL passwords masked and each of ``secrets`` (as written or percent-encoded) replaced by ``***``."""
    text = mask_url(text)
    for secret in [secrets] if isinstance(secrets, str) else (secrets or ()):
        if secret:
            text = text.replace(secret, "***")
            encoded = quote(secret, safe="")
            if encoded != secret:
                text = text.replace(encoded, "***")
    return text


def scrub_chain(error: BaseException, secrets: str | Iterable[str] | None) -> BaseException:
    """Remove ``secrets`` (and URL passwords) from the exceptions chained under ``error``; returns ``error``.

    Drivers put URLs in their messages (SQLAlchemy, redis-py), and a traceback prints every ``__cause__`` and
    ``__context__``. Each chained exception's string arguments are redacted; one whose text still shows a secret
    afterwards (a custom ``__str__``) is cut from the chain.
    """
    wanted = [secrets] if isinstance(secrets, str) else [s for s in (secrets or ()) if s]

    def leaks(exc: BaseException) -> bool:
        try:
            text = str(exc)
        except Exception:  # noqa: BLE001 - a broken __str__ shows nothing
            return False
        return redact_text(text, wanted) != text

    def scrub(exc: BaseException) -> None:
        exc.args = tuple(redact_text(a, wanted) if isinstance(a, str) else a for a in exc.args)

    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending and len(seen) < 100:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if leaks(current):
            scrub(current)
            inner = getattr(current, "orig", None)  # SQLAlchemy keeps the driver's error aside and prints it
            if isinstance(inner, BaseException) and leaks(inner):
                scrub(inner)
        for link in ("__cause__", "__context__"):
            child = getattr(current, link)
            if child is None:
                continue
            if leaks(child):
                scrub(child)
                inner = getattr(child, "orig", None)
                if isinstance(inner, BaseException) and leaks(inner):
                    scrub(inner)
            if leaks(child):  # its text does not come from its args: drop it from the chain
                setattr(current, link, None)
                if link == "__context__":
                    current.__suppress_context__ = True
                continue
            pending.append(child)
    return error


@dataclass(frozen=True, repr=False)
class StoreURL:
    """A parsed connection URL.

    ``scheme`` is lower-case and includes any ``+driver`` suffix (``postgresql+psycopg``). ``query`` holds the
    query-string parameters (the value of a key given twice is its last), ``query_pairs`` all of them in order;
    backends split them into their own options and driver options. ``hosts`` lists every ``(host, port)`` of a
    multi-host URL (``mongodb://a:1,b:2``); ``host``/``port`` are those of a single-host URL.
    """

    scheme: str
    username: str | None
    host: str | None
    port: int | None
    path: str
    query: Mapping[str, str]
    query_pairs: tuple[tuple[str, str], ...] = ()
    hosts: tuple[tuple[str, int | None], ...] = ()
    _display: str = field(default="", compare=False)
    _driver: str = field(default="", compare=False)
    _password: str | None = field(default=None, compare=False)
    _secrets: tuple[str, ...] = field(default=(), compare=False)

    @property
    def password(self) -> str | None:
        return self._password

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret in the URL (the password, secret query values), for redacting driver messages."""
        return self._secrets

    @property
    def base_scheme(self) -> str:
        """The scheme without a ``+driver`` suffix: ``postgresql`` for ``postgresql+psycopg``."""
        return self.scheme.split("+", 1)[0] if not self.scheme.endswith("+srv") else self.scheme

    def render(self, *, hide_password: bool = True) -> str:
        """The URL as text; the password is shown only when asked for (for handing to a driver), percent-encoded."""
        return self._display if hide_password else self._driver

    def __repr__(self) -> str:
        return f"StoreURL({self.render()!r})"

    def __str__(self) -> str:
        return self.render()


def parse_url(text: str | os.PathLike[str] | StoreURL) -> StoreURL:
    """Parse a connection URL (or a bare ``*.db`` / ``*.sqlite`` path, which means SQLite).

    Raises:
        ConfigError: the text is not a URL; the message never repeats it (it may hold a password).
    """
    if isinstance(text, StoreURL):
        return text
    if isinstance(text, os.PathLike):
        text = os.fspath(text)
    if isinstance(text, (bytes, bytearray)):
        raise ConfigError("a database URL must be a str, not bytes; decode it first (e.g. url.decode())")
    if not isinstance(text, str):
        raise ConfigError(f"a database URL must be a string, got {type(text).__name__}")
    text = text.strip()
    if not text:
        raise ConfigError("the database URL is empty; pass e.g. 'sqlite:///conversations.db' or leave it unset")
    if not _SCHEME.match(text):
        if _CONTROL.search(text):
            raise ConfigError("could not parse the database URL: it contains a control character (NUL, tab or newline)")
        if text.lower().endswith(_SQLITE_SUFFIXES):
            path = "/" + text
            return StoreURL("sqlite", None, None, None, path, MappingProxyType({}), _display=f"sqlite:///{text}", _driver=f"sqlite:///{text}")
        raise ConfigError(
            "could not parse the database URL: expected 'scheme://...' (e.g. 'sqlite:///conversations.db') "
            "or a path ending in .db/.sqlite"
        )
    try:
        parts = _parse_parts(text)
        return _build(parts)
    except _Unreadable as e:
        raise _unreadable(text, e) from None


def _build(parts: _Parts) -> StoreURL:
    username = _decode(parts.user_raw, "user") or None if parts.user_raw is not None else None
    password = _decode(parts.password_raw, "password") if parts.password_raw is not None else None
    network = parts.scheme not in _NAME_SCHEMES
    host: str | None = None
    port: int | None = None
    hosts: list[tuple[str, int | None]] = []
    if parts.hostinfo:
        if network:
            for item in parts.hostinfo.split(","):
                if not item:
                    raise _Unreadable("a host in the comma-separated list is empty")
                hosts.append(_host_port(item))
            if len(hosts) == 1:
                host, port = hosts[0]
            else:
                host = parts.hostinfo  # several hosts: the driver connects to them (see ``hosts``)
        else:
            host = _decode(parts.hostinfo, "host")
            hosts.append((host, None))
    try:
        pairs = parse_qsl(parts.query_raw, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise _Unreadable("the query string has percent-escapes that are not UTF-8") from None
    seen: set[str] = set()
    for key, value in pairs:
        if not key:
            raise _Unreadable("the query string has a value without a name ('=value' or a stray '&')")
        if "\x00" in key or "\x00" in value:
            raise _Unreadable("the query string contains a NUL character (%00)")
        if key in seen and key.lower() not in _REPEATABLE:
            raise ConfigError(f"option {key!r} is given twice in the URL; give it once")
        seen.add(key)
    secrets = [password] if password else []
    secrets += [v for k, v in pairs if v and _SECRET_KEY.search(k)]
    userinfo = ""
    if parts.user_raw is not None:
        userinfo = quote(username or "", safe="")
        if password is not None:
            userinfo += ":" + quote(password, safe="")
        userinfo += "@"
    query = f"?{parts.query_raw}" if parts.query_raw else ""
    driver = f"{parts.scheme}://{userinfo}{parts.hostinfo}{parts.path_raw}{query}"
    return StoreURL(
        parts.scheme,
        username,
        host,
        port,
        _decode(parts.path_raw, "path"),
        MappingProxyType(dict(pairs)),
        tuple(pairs),
        tuple(hosts),
        _display=_display(parts),
        _driver=driver,
        _password=password,
        _secrets=tuple(dict.fromkeys(secrets)),
    )
