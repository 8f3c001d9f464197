"""Server-side counters are 64-bit (Redis INCRBY, MongoDB $inc): beyond that, incr refuses instead of wrapping,
while plain values of any size still round-trip (the conformance suite checks those on every backend)."""

from __future__ import annotations

import pytest

from praison_db import InputError
from praison_db.facade import open_store
from tests.backends import BACKENDS

SIXTY_FOUR_BIT = [b for b in BACKENDS if b.name in ("redis", "mongodb")]


@pytest.mark.parametrize("backend", SIXTY_FOUR_BIT, ids=[b.name for b in SIXTY_FOUR_BIT])
def test_counters_are_64_bit(backend, make_url):
    with open_store(make_url(backend), "state") as state:
        for key, value, amount in (("huge", 2**70, 1), ("edge", 2**63 - 1, 1), ("n", None, 2**64)):
            if value is not None:
                state.set(key, value)
            with pytest.raises(InputError):
                state.incr(key, amount)
        assert state.get("huge") == 2**70 and state.get("edge") == 2**63 - 1 and not state.exists("n")
