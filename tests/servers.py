"""Real servers for the tests: find them, give each test run its own database, clean up.

Outside CI an unreachable server skips its backend with a loud reason; with CI=true it fails the run.
Override a server with PRAISON_TEST_<NAME>_URL (e.g. PRAISON_TEST_POSTGRES_URL).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager


from praison_db.testing import ServerMissing, in_ci, unavailable, wait_past

__all__ = ["ServerMissing", "unavailable", "wait_past"]

IN_CI = in_ci()


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


# Every Redis key prefix and MongoDB database this test run creates starts with this, so cleanup at the end of the
# run touches only what this run made (other runs may share the server).
RUN = run_id()
REDIS_URL = os.environ.get("PRAISON_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_prefix(uid: str) -> str:
    """A key prefix for one test (``prefix`` allows 32 letters, digits and underscores)."""
    return f"r{RUN}{uid}"


@contextmanager
def redis_server() -> Iterator[str]:
    """The machine's Redis (or PRAISON_TEST_REDIS_URL); at the end, delete every key of this run's prefixes."""
    import redis

    try:
        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3, socket_timeout=5) as client:
            client.ping()
    except Exception as e:
        raise ServerMissing(e) from e
    try:
        yield REDIS_URL
    finally:
        from praison_db.backends.redis import unlink_matching

        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3, socket_timeout=30) as client:
            unlink_matching(client, f"r{RUN}*")


def mongo_database_url(base: str, uid: str) -> str:
    """``base`` (a MongoDB URL) pointing at a database of its own for one test."""
    head, sep, query = base.partition("?")
    scheme, _, rest = head.partition("://")
    hosts = rest.split("/", 1)[0]
    return f"{scheme}://{hosts}/m{RUN}{uid}{sep}{query}"


@contextmanager
def mongodb_server(ttl_sweep_seconds: float = 0) -> Iterator[str]:
    """SecantusDB (a MongoDB wire-protocol server) started in this process on a free port, storage in a temp dir.

    The run's shared server sweeps no TTL index (``ttl_sweep_seconds=0``): its sweeper is a thread of the test process
    that walks every database the run has made, holding the GIL for 50-80 ms a second by the time the event-loop
    timing tests run. The stores hide expired documents themselves; the test of the sweep starts a server of its own."""
    import tempfile

    try:
        from secantus import SecantusDBServer
    except ImportError as e:
        raise ServerMissing(f"secantusdb is not installed ({e}); pip install 'secantusdb==0.7.0b3'") from e
    with tempfile.TemporaryDirectory(prefix="praison-mongo-") as tmp:
        with SecantusDBServer(host="127.0.0.1", port=0, storage_path=tmp, ttl_sweep_seconds=ttl_sweep_seconds) as server:
            yield server.uri


@contextmanager
def mongodb_env_server() -> Iterator[str]:
    """The MongoDB server named by PRAISON_TEST_MONGODB_URL; at the end, drop this run's databases."""
    import pymongo

    url = os.environ["PRAISON_TEST_MONGODB_URL"]
    client: pymongo.MongoClient = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
    try:
        client.admin.command("ping")
    except Exception as e:
        client.close()
        raise ServerMissing(e) from e
    try:
        yield url
    finally:
        for name in client.list_database_names():
            if name.startswith(f"m{RUN}"):
                client.drop_database(name)
        client.close()


def wait_until(check, what: str, timeout: float = 60.0) -> None:
    """Poll ``check()`` until it returns True (bounded): used to wait for a restarted server to accept clients."""
    import time

    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as e:  # not up yet
            last = e
        time.sleep(0.2)
    raise AssertionError(f"{what} did not come back within {timeout:g} s ({last})")


def restart_postgres() -> None:
    """Restart the machine's PostgreSQL cluster (the same command that starts it)."""
    import subprocess

    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=True, timeout=120)

    def up() -> bool:
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=2):
            return True

    wait_until(up, "PostgreSQL")


def restart_mariadb() -> None:
    """Stop MariaDB and start it again with the command the machine uses."""
    import subprocess

    import pymysql

    subprocess.run(["mariadb-admin", "-uroot", "shutdown"], check=True, timeout=120)

    def down() -> bool:
        try:
            pymysql.connect(host="127.0.0.1", user="root", connect_timeout=1).close()
            return False
        except pymysql.err.OperationalError:
            return True

    wait_until(down, "MariaDB shutdown")
    subprocess.run(["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", "/usr/sbin/mariadbd"], check=True, timeout=60)

    def up() -> bool:
        pymysql.connect(host="127.0.0.1", user="root", connect_timeout=2).close()
        return True

    wait_until(up, "MariaDB")


@contextmanager
def chdb_folder() -> Iterator[str]:
    """A chDB data folder for this test run (the real ClickHouse engine, in this process); yields its URL.

    A client stays open on the folder for the whole run, so the engine starts once rather than once per test
    (chDB shuts its engine down when the last client closes). chDB hosts one folder per process, so every
    ClickHouse test in this process uses this folder, each with its own table prefix.
    """
    import shutil
    import tempfile

    try:
        import chdb  # noqa: F401
        import clickhouse_connect
    except ModuleNotFoundError as e:
        raise ServerMissing(f"{e.name} is not installed: pip install 'praison-db[chdb]'") from e
    folder = tempfile.mkdtemp(prefix="praison_chdb_")
    keeper = clickhouse_connect.get_client(dsn=f"chdb://{folder}")
    try:
        yield f"chdb://{folder}"
    finally:
        keeper.close()
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def clickhouse_database() -> Iterator[str]:
    """A fresh database on the ClickHouse server named by PRAISON_TEST_CLICKHOUSE_URL, dropped afterwards."""
    import clickhouse_connect

    from praison_db.url import parse_url

    admin = os.environ["PRAISON_TEST_CLICKHOUSE_URL"]
    u = parse_url(admin)
    secure = u.scheme == "clickhouses"
    name = f"praison_test_{run_id()}"
    try:
        client = clickhouse_connect.get_client(
            host=u.host or "localhost",
            port=u.port or (8443 if secure else 8123),
            username=u.username or "default",
            password=u.password or "",
            secure=secure,
            connect_timeout=5,
        )
    except Exception as e:
        raise ServerMissing(e) from e
    client.command(f"CREATE DATABASE `{name}`")
    base = admin.split("?", 1)[0]
    scheme, rest = base.split("://", 1)
    netloc = rest.split("/", 1)[0]
    try:
        yield f"{scheme}://{netloc}/{name}"
    finally:
        client.command(f"DROP DATABASE IF EXISTS `{name}`")
        client.close()


DYNALITE_HOME = os.environ.get("PRAISON_DYNALITE_HOME") or os.path.join(
    os.path.expanduser("~"), ".cache", "praison-db", "dynalite"
)


def dynalite_cli() -> str:
    """dynalite's command-line entry point, installed from the npm registry into DYNALITE_HOME on first use."""
    import shutil
    import subprocess

    cli = os.path.join(DYNALITE_HOME, "node_modules", "dynalite", "cli.js")
    if os.path.exists(cli):
        return cli
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        raise ServerMissing("node and npm are needed to run dynalite (DynamoDB's API for the tests): apt-get install nodejs npm")
    os.makedirs(DYNALITE_HOME, exist_ok=True)
    done = subprocess.run(
        [npm, "install", "--prefix", DYNALITE_HOME, "--no-audit", "--no-fund", "dynalite@4"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if done.returncode != 0 or not os.path.exists(cli):
        raise ServerMissing(f"npm install dynalite@4 failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return cli


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dynamodb_url(base: str, uid: str) -> str:
    """``base`` (a dynamodb:// URL) with a key prefix of its own for one test."""
    return f"{base}{'&' if '?' in base else '?'}prefix=d{uid}"


@contextmanager
def dynalite_server() -> Iterator[str]:
    """dynalite (DynamoDB's API over an in-memory LevelDB, from npm) on a free loopback port; yields a dynamodb:// URL
    whose table is made on first use. Stopped at the end of the run."""
    import subprocess

    import boto3

    cli = dynalite_cli()
    port = free_port()
    command = ["node", cli, "--host", "127.0.0.1", "--port", str(port), "--createTableMs", "0", "--deleteTableMs", "0", "--updateTableMs", "0"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client(
            "dynamodb", region_name="us-east-1", endpoint_url=endpoint, aws_access_key_id="x", aws_secret_access_key="x"
        )

        def up() -> bool:
            if server.poll() is not None:
                raise ServerMissing(f"dynalite exited: {server.stderr.read().decode(errors='replace')[-300:] if server.stderr else ''}")
            client.list_tables()
            return True

        try:
            wait_until(up, "dynalite", timeout=60)
        except AssertionError as e:
            raise ServerMissing(e) from e
        yield f"dynamodb://us-east-1/praison_test_{RUN}_?endpoint={endpoint}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@contextmanager
def dynamodb_env_server() -> Iterator[str]:
    """The DynamoDB named by PRAISON_TEST_DYNAMODB_URL (DynamoDB Local, AWS); this run's table is deleted at the end."""
    import boto3

    url = os.environ["PRAISON_TEST_DYNAMODB_URL"]
    base, sep, query = url.partition("?")
    scheme, _, rest = base.partition("://")
    authority = rest.split("/", 1)[0]  # [key:secret@]region
    run_url = f"{scheme}://{authority}/praison_test_{RUN}_{sep}{query}"
    from praison_db.url import parse_url

    parsed = parse_url(run_url)
    keys = {"aws_access_key_id": parsed.username, "aws_secret_access_key": parsed.password} if parsed.password else {}
    client = boto3.client("dynamodb", region_name=parsed.host, endpoint_url=parsed.query.get("endpoint"), **keys)
    try:
        client.list_tables(Limit=1)
    except Exception as e:
        raise ServerMissing(e) from e
    try:
        yield run_url
    finally:
        try:
            client.delete_table(TableName=f"praison_test_{RUN}_praison")
        except Exception:  # noqa: BLE001 - never made (no test opened a store) or already gone
            pass


REDIS_START = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379", "--save", "",
    "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip


def restart_redis() -> None:
    """Stop the machine's Redis and start it with the command the machine uses; it is up again on return."""
    import subprocess

    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    def client() -> redis.Redis:  # no retries: redis-py's default backoff would hide the restart
        return redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1, socket_timeout=5, retry=Retry(NoBackoff(), 0))

    def down() -> bool:
        try:
            with client() as r:
                r.ping()
            return False
        except redis.ConnectionError:
            return True

    try:
        try:
            with client() as r:
                r.shutdown(nosave=True)
        except redis.ConnectionError:
            pass  # the server drops our connection as it stops
        wait_until(down, "Redis shutdown", timeout=20)
    finally:
        if down():
            subprocess.run(REDIS_START, check=True, timeout=30, capture_output=True)
    with client() as r:
        wait_until(r.ping, "Redis", timeout=20)
