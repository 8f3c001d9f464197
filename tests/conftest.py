"""Fixtures shared by every test: the conformance suite's plugin (praison_db.testing.plugin) over the backends of
tests/backends.py: ``conv``, ``state`` (sync and async API), ``conv_backend``, ``state_backend``, ``make_url``."""

from __future__ import annotations

import tests.backends  # noqa: F401  - registers this repository's backends with the plugin

pytest_plugins = ["praison_db.testing.plugin"]
