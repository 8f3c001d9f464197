"""The SingleStore server named by PRAISON_TEST_SINGLESTORE_URL, for the conformance suite (tests/backends.py).

No SingleStore server runs on the test machines: its backend runs only when that variable names one, e.g.
``singlestoredb://user:password@host:3306/database`` (the database must exist). Every test gets its own table prefix
starting with this run's id; at the end of the run the tables under it are dropped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.servers import RUN, ServerMissing


def singlestore_prefix(uid: str) -> str:
    return f"s{RUN}{uid}_"


def _connect(url: str) -> Any:
    import pymysql

    from praison_db.url import parse_url

    u = parse_url(url)
    return pymysql.connect(
        host=u.host or "127.0.0.1",
        port=u.port or 3306,
        user=u.username or "root",
        password=u.password or "",
        database=u.path.lstrip("/") or None,
        connect_timeout=10,
    )


@contextmanager
def singlestore_database() -> Iterator[str]:
    """The database of PRAISON_TEST_SINGLESTORE_URL; at the end, drop the tables this run made in it."""
    url = os.environ["PRAISON_TEST_SINGLESTORE_URL"]
    try:
        _connect(url).close()
    except Exception as e:
        raise ServerMissing(e) from e
    try:
        yield url
    finally:
        conn = _connect(url)
        with conn, conn.cursor() as cur:
            cur.execute("SHOW TABLES")
            for (name,) in cur.fetchall():
                if str(name).startswith(f"s{RUN}"):
                    cur.execute(f"DROP TABLE IF EXISTS `{name}`")
