"""Real servers for the tests: find them, give each test run its own database, clean up.

Outside CI an unreachable server skips its backend with a loud reason; with CI=true it fails the run.
Override a server with PRAISON_TEST_<NAME>_URL (e.g. PRAISON_TEST_POSTGRES_URL).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


class ServerMissing(Exception):
    """The server a backend needs cannot be reached."""


def unavailable(what: str, why: object) -> None:
    """Fail in CI, skip loudly elsewhere."""
    message = f"{what} is unreachable ({str(why).splitlines()[0][:200]})"
    if IN_CI:
        pytest.fail(f"{message}; CI requires every backend's real server", pytrace=False)
    pytest.skip(f"SKIPPED BACKEND: {message}; start it (see README, 'Running the tests')")


def run_id() -> str:
    return uuid.uuid4().hex[:10]


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, dropped afterwards; yields its URL."""
    import psycopg

    admin = os.environ.get("PRAISON_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"praison_test_{run_id()}"
    try:
        conn = psycopg.connect(admin, autocommit=True, connect_timeout=5)
    except Exception as e:
        raise ServerMissing(e) from e
    with conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def mysql_database() -> Iterator[str]:
    """A fresh MySQL/MariaDB database for this test run, dropped afterwards; yields its URL."""
    import pymysql

    admin = os.environ.get("PRAISON_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
    from praison_db.url import parse_url

    u = parse_url(admin)
    name = f"praison_test_{run_id()}"
    try:
        conn = pymysql.connect(
            host=u.host or "127.0.0.1", port=u.port or 3306, user=u.username or "root", password=u.password or "", connect_timeout=5
        )
    except Exception as e:
        raise ServerMissing(e) from e
    with conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    scheme = admin.split("://", 1)[0]
    rest = admin.split("://", 1)[1].rsplit("/", 1)[0]
    try:
        yield f"{scheme}://{rest}/{name}"
    finally:
        conn = pymysql.connect(host=u.host or "127.0.0.1", port=u.port or 3306, user=u.username or "root", password=u.password or "")
        with conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
