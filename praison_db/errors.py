"""The exceptions praison_db raises.

Every error a user can see is a subclass of :class:`Error` with a one-line message that says what to do. Driver
exceptions are chained (``raise ... from e``) for debugging but never shown as the message, and no message ever
contains a password.
"""

from __future__ import annotations

__all__ = [
    "Error",
    "ConfigError",
    "InputError",
    "StoreUnavailable",
    "StoreClosed",
    "SessionNotFound",
    "SessionExists",
    "IntegrityError",
    "SchemaError",
]


class Error(Exception):
    """Base class of every praison_db error."""


class ConfigError(Error, ValueError):
    """A URL, option, driver extra or store role that cannot work as configured."""


class InputError(Error, ValueError):
    """An argument that a store cannot accept (empty session id, unknown role, non-JSON metadata, ...)."""


class StoreUnavailable(Error, ConnectionError):
    """The backend could not be reached or failed after retries."""


class StoreClosed(Error, RuntimeError):
    """The store (or the facade owning it) was used after ``close()``."""


class SessionNotFound(Error, KeyError):
    """The session does not exist (or is not visible to the given user)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SessionExists(Error):
    """``create_session`` or ``import_session`` named a session id that is already taken."""


class IntegrityError(Error):
    """Stored data breaks an invariant the store relies on (duplicate seq, corrupt record)."""


class SchemaError(Error):
    """The database schema is older or newer than this version of praison_db expects."""
