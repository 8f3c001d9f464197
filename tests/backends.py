"""The one registry of backends the conformance suite runs on. A new backend joins with one entry here.

Each entry says which roles it plays and how to make a fresh, isolated URL for one test: ``url(ctx)`` gets a
per-test temporary folder and unique id, plus the per-run server URL from ``server`` (a context manager that
starts or finds the real server, yields its base URL and cleans up at the end of the run).
"""

from __future__ import annotations

import os

from praison_db.testing import Backend, TestContext, add_backend, for_role, require
from tests import servers
from tests.private_servers import postgres_with_replica
from tests.redis_cluster import redis_cluster_server

__all__ = ["BACKENDS", "Backend", "TestContext", "for_role", "require"]


def _with_query(base: str, query: str) -> str:
    return f"{base}{'&' if '?' in base else '?'}{query}"


BACKENDS: list[Backend] = [
    Backend("memory", lambda c: f"memory://{c.uid}"),
    Backend("json", lambda c: f"json://{c.tmp}/sessions"),
    Backend("yaml", lambda c: f"yaml://{c.tmp}/sessions"),
    Backend("sqlite", lambda c: f"sqlite:///{c.tmp}/praison.db"),
    Backend(
        "postgresql",
        lambda c: _with_query(c.server, f"table_prefix=t{c.uid}_"),
        server=servers.postgres_database,
        server_name="PostgreSQL (127.0.0.1:5432)",
    ),
    Backend(
        "mysql",
        lambda c: _with_query(c.server, f"table_prefix=t{c.uid}_"),
        server=servers.mysql_database,
        server_name="MariaDB/MySQL (127.0.0.1:3306)",
    ),
    # Listings and history reads from a streaming replica (read_url), which applies each commit before it returns.
    Backend(
        "postgresql-replica",
        lambda c: _with_query(c.server, f"table_prefix=t{c.uid}_"),
        server=postgres_with_replica,
        server_name="a private PostgreSQL primary with a streaming replica",
    ),
    Backend(
        "redis",
        lambda c: _with_query(c.server, f"prefix={servers.redis_prefix(c.uid)}"),
        server=servers.redis_server,
        server_name="Redis (127.0.0.1:6379)",
    ),
    Backend(
        "redis-cluster",
        lambda c: _with_query(c.server, f"prefix={servers.redis_prefix(c.uid)}"),
        server=redis_cluster_server,
        server_name="Redis Cluster (three private masters on loopback)",
    ),
    Backend(
        "mongodb",
        lambda c: servers.mongo_database_url(c.server, c.uid),
        server=servers.mongodb_server,
        server_name="MongoDB (SecantusDB, in-process)",
    ),
    Backend(
        "clickhouse-chdb",
        lambda c: _with_query(c.server, f"table_prefix=t{c.uid}_"),
        roles=("conversations",),
        server=servers.chdb_folder,
        server_name="chDB (in-process ClickHouse engine)",
    ),
]
BACKENDS.append(
    Backend(
        "dynamodb",
        lambda c: servers.dynamodb_url(c.server, c.uid),
        server=servers.dynalite_server,
        server_name="DynamoDB (dynalite from npm, started per run)",
    )
)
if os.environ.get("PRAISON_TEST_DYNAMODB_URL"):  # DynamoDB Local or AWS, when one is given
    BACKENDS.append(
        Backend(
            "dynamodb-env",
            lambda c: servers.dynamodb_url(c.server, c.uid),
            server=servers.dynamodb_env_server,
            server_name="DynamoDB (PRAISON_TEST_DYNAMODB_URL)",
        )
    )
if os.environ.get("PRAISON_TEST_MONGODB_URL"):
    BACKENDS.append(
        Backend(
            "mongodb-env",
            lambda c: servers.mongo_database_url(c.server, c.uid),
            server=servers.mongodb_env_server,
            server_name="MongoDB (PRAISON_TEST_MONGODB_URL)",
        )
    )
if os.environ.get("PRAISON_TEST_CLICKHOUSE_URL"):  # a real ClickHouse server over HTTP, when one is given
    BACKENDS.append(
        Backend(
            "clickhouse-http",
            lambda c: _with_query(c.server, f"table_prefix=t{c.uid}_"),
            roles=("conversations",),
            server=servers.clickhouse_database,
            server_name="ClickHouse server (PRAISON_TEST_CLICKHOUSE_URL)",
        )
    )

if os.environ.get("PRAISON_TEST_SINGLESTORE_URL"):  # a real SingleStore, when one is given (none runs here)
    from tests.singlestore_server import singlestore_database, singlestore_prefix

    BACKENDS.append(
        Backend(
            "singlestore-env",
            lambda c: _with_query(c.server, f"table_prefix={singlestore_prefix(c.uid)}"),
            server=singlestore_database,
            server_name="SingleStore (PRAISON_TEST_SINGLESTORE_URL)",
        )
    )


for _backend in BACKENDS:
    add_backend(_backend)  # the conformance suite (praison_db.testing) runs on each
