"""The items cases of the conformance suite (praison_db.testing), on every backend in tests/backends.py."""

from praison_db.testing.suite.test_items import *  # noqa: F403
