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
