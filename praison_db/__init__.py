"""praison_db: persistence for AI agents.

``db(database_url=..., state_url=...)`` turns connection URLs into an agent's memory: a ConversationStore for every
message of every session, a StateStore for key-value state with TTL, and the file-locked JSON DefaultSessionStore.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Capabilities, ConversationStore, StateStore
from .errors import (
    ConfigError,
    Error,
    InputError,
    IntegrityError,
    SchemaError,
    SessionExists,
    SessionNotFound,
    StoreClosed,
    StoreUnavailable,
)
from .facade import PraisonDB, db
from .models import Message, Page, Session
from .registry import register

if TYPE_CHECKING:
    from .agent import Agent
    from .backends.jsonfile import DefaultSessionStore

__version__ = "0.1.0"

__all__ = [
    "db",
    "PraisonDB",
    "Agent",
    "ConversationStore",
    "StateStore",
    "DefaultSessionStore",
    "Capabilities",
    "Message",
    "Session",
    "Page",
    "register",
    "Error",
    "ConfigError",
    "InputError",
    "StoreUnavailable",
    "StoreClosed",
    "SessionNotFound",
    "SessionExists",
    "IntegrityError",
    "SchemaError",
    "export",
    "import_",
    "copy",
]


def __getattr__(name: str) -> Any:
    # Imported on first use so that `import praison_db` stays light.
    if name == "Agent":
        from .agent import Agent

        return Agent
    if name == "DefaultSessionStore":
        from .backends.jsonfile import DefaultSessionStore

        return DefaultSessionStore
    if name in ("export", "import_", "copy"):
        from . import transfer

        return getattr(transfer, name)
    raise AttributeError(f"module 'praison_db' has no attribute {name!r}")
