"""``praison-db ui``: a local web app to browse sessions, messages and state (needs the ``ui`` extra).

``create_app(store, read_only=False)`` returns the ASGI app for an open PraisonDB; serve it with any ASGI server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from ..facade import PraisonDB

__all__ = ["create_app", "UI_EXTRA_HINT"]

UI_EXTRA_HINT = "praison-db ui needs Starlette, uvicorn and Jinja2: pip install 'praison-db[ui]'"


def create_app(store: PraisonDB, *, read_only: bool = False, **options: Any) -> Starlette:
    """The session browser for ``store`` (see :func:`praison_db.ui.app.create_app`)."""
    try:
        from .app import create_app as build
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in ("starlette", "jinja2", "markupsafe"):
            raise
        from ..errors import ConfigError

        raise ConfigError(UI_EXTRA_HINT) from e
    return build(store, read_only=read_only, **options)
