"""Connection URLs: parsed once into an immutable value whose repr never shows the password.

Multi-host URLs (``mongodb://a:1,b:2/db``) and schemes SQLAlchemy does not know are parsed with urllib; the
original text is kept (privately) for the driver, and every human-facing rendering masks the password.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from .errors import ConfigError

__all__ = ["StoreURL", "parse_url", "mask_url", "redacted"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# user:password@ inside the netloc; the password may itself contain ':' or an unencoded '@'.
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@?#]*):(?P<pw>[^/?#]*)@")
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def mask_url(text: str) -> str:
    """``text`` with the password of a URL (if any) replaced by ``***``; safe to log or put in an error."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text, count=1)


def redacted(error: BaseException, password: str | None, limit: int = 300) -> str:
    """A driver error as one line for a praison_db message: whitespace folded, cut short, no password, URLs masked."""
    text = " ".join(str(error).split())[:limit]
    if password:
        text = text.replace(password, "***")
    return mask_url(text)


@dataclass(frozen=True, repr=False)
class StoreURL:
    """A parsed connection URL.

    ``scheme`` is lower-case and includes any ``+driver`` suffix (``postgresql+psycopg``). ``query`` holds the
    query-string parameters, which backends split into their own options and driver options.
    """

    scheme: str
    username: str | None
    host: str | None
    port: int | None
    path: str
    query: Mapping[str, str]
    _raw: str = field(compare=False)
    _password: str | None = field(default=None, compare=False)

    @property
    def password(self) -> str | None:
        return self._password

    @property
    def base_scheme(self) -> str:
        """The scheme without a ``+driver`` suffix: ``postgresql`` for ``postgresql+psycopg``."""
        return self.scheme.split("+", 1)[0] if not self.scheme.endswith("+srv") else self.scheme

    def render(self, *, hide_password: bool = True) -> str:
        """The URL as text; the password is shown only when asked for (for handing to a driver)."""
        return mask_url(self._raw) if hide_password else self._raw

    def without_query(self, *names: str) -> StoreURL:
        """A copy without the given query parameters (used to strip praison_db's own options before the driver)."""
        kept = {k: v for k, v in self.query.items() if k not in names}
        raw = self._raw.split("?", 1)[0]
        if kept:
            raw = f"{raw}?{urlencode(kept)}"
        return StoreURL(self.scheme, self.username, self.host, self.port, self.path, MappingProxyType(kept), raw, self._password)

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
    if not isinstance(text, str):
        raise ConfigError(f"a database URL must be a string, got {type(text).__name__}")
    text = text.strip()
    if not text:
        raise ConfigError("the database URL is empty; pass e.g. 'sqlite:///conversations.db' or leave it unset")
    if not _SCHEME.match(text):
        if text.lower().endswith(_SQLITE_SUFFIXES):
            return StoreURL("sqlite", None, None, None, "/" + text, MappingProxyType({}), f"sqlite:///{text}")
        raise ConfigError(
            "could not parse the database URL: expected 'scheme://...' (e.g. 'sqlite:///conversations.db') "
            "or a path ending in .db/.sqlite"
        )
    try:
        parts = urlsplit(text)
        password = None
        username = None
        host = None
        port = None
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostinfo = netloc.rpartition("@")
            user, sep, pw = userinfo.partition(":")
            username = unquote(user) or None
            password = unquote(pw) if sep else None
        else:
            hostinfo = netloc
        if hostinfo and "," not in hostinfo:
            if hostinfo.startswith("["):  # IPv6 literal
                host, _, rest = hostinfo[1:].partition("]")
                port_text = rest[1:] if rest.startswith(":") else ""
            else:
                host, _, port_text = hostinfo.partition(":")
            port = int(port_text) if port_text else None
            if port is not None and not 0 < port < 65536:
                raise ValueError("port out of range")
            host = unquote(host) or None
        elif hostinfo:
            host = hostinfo  # several hosts: the driver parses them
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
    except ValueError:
        raise ConfigError(
            f"could not parse the database URL {mask_url(text)!r}: check the host, the port (a number) and "
            "percent-encode special characters in the password"
        ) from None
    return StoreURL(
        parts.scheme.lower(),
        username,
        host,
        port,
        unquote(parts.path),
        MappingProxyType(query),
        text,
        password,
    )
