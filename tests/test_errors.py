"""The shared wrapper around every public call: whatever a backend lets escape becomes a praison_db error.

A backend translates the driver errors it knows; these cases stand in for one it does not (a primitive raising
something unexpected), on the in-process store, to show what the caller sees then.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from praison_db import Error, InputError, StoreClosed
from praison_db.backends.memory import MemoryConversationStore, MemoryStateStore

SECRET = "s3cret-pw"


class Leaky(MemoryStateStore):
    """A state store whose primitives fail with exceptions no backend translates, quoting a URL with a password."""

    password = SECRET

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def _get_many(self, keys: list[str]) -> dict[str, Any]:
        raise self.error

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        yield "first"
        raise self.error


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (KeyError(f"postgresql://ai:{SECRET}@db/x\nsecond line"), Error),
        (ZeroDivisionError(f"lost {SECRET}"), Error),
        (OverflowError(f"int too big {SECRET}"), InputError),
        (UnicodeEncodeError("utf-8", "\ud83d", 0, 1, "surrogates not allowed"), InputError),
        (RecursionError("maximum recursion depth exceeded"), InputError),
    ],
)
def test_an_untranslated_exception_becomes_a_one_line_praison_db_error(error, kind):
    store = Leaky(error)
    for call in (lambda: store.get("k"), lambda: list(store.keys())):
        with pytest.raises(kind) as info:
            call()
        message = str(info.value)
        assert type(error).__name__ in message and "Leaky" in message
        assert SECRET not in message and "\n" not in message
        assert info.value.__cause__ is error  # kept for debugging, never shown as the message


def test_store_closed_is_raised_by_methods_a_backend_adds():
    class WithExtra(MemoryConversationStore):
        def summary(self) -> int:
            return 1

    store = WithExtra()
    assert store.summary() == 1
    store.close()
    with pytest.raises(StoreClosed):
        store.summary()


def test_a_ttl_option_beyond_a_century_is_a_config_error(make_url):
    from praison_db import ConfigError
    from praison_db.facade import open_store
    from tests.backends import BACKENDS

    redis = next(b for b in BACKENDS if b.name == "redis")
    with pytest.raises(ConfigError, match="at most 3155760000 seconds"):
        open_store(make_url(redis) + "&ttl=1e300", "state")


def test_a_postgresql_permission_error_is_a_praison_error_everywhere(make_url: Any) -> None:
    """A user without rights on the tables: opening, migrating and reading each raise a one-line praison_db error
    naming the cause, never the driver's exception (which no backend table lists)."""
    import uuid

    import psycopg

    from praison_db import db
    from praison_db.backends.sql import migrate, schema_version
    from praison_db.facade import open_store
    from tests.backends import BACKENDS

    url = make_url(next(b for b in BACKENDS if b.name == "postgresql"))
    with open_store(url, "conversations") as store:
        store.create_session("s")
    role = f"praison_limited_{uuid.uuid4().hex[:8]}"
    admin_url = url.split("?", 1)[0]
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        limited = url.replace("//postgres@", f"//{role}@", 1)
        assert limited != url
        for call in (lambda: migrate(limited), lambda: schema_version(limited), lambda: db(limited)):
            with pytest.raises(Error) as caught:
                call()
            assert type(caught.value).__module__ == "praison_db.errors"
            assert "permission denied" in str(caught.value) and "\n" not in str(caught.value)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP ROLE "{role}"')
