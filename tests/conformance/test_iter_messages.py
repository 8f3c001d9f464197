"""The iter_messages cases of the conformance suite (praison_db.testing), on every backend in tests/backends.py."""

from praison_db.testing.suite.test_iter_messages import *  # noqa: F403
