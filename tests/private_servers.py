"""Private PostgreSQL, MariaDB and Redis servers for fault tests: a temp dir, a free loopback port, stopped by pid.

A fault test freezes (SIGSTOP) or reconfigures only these, never the machine's shared servers. Each server runs in
a process group of its own, so ``frozen()`` stops the postmaster and all its backends at once.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


from tests.servers import unavailable, wait_until

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass
class PrivateServer:
    url: str
    process: subprocess.Popen[bytes]

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Every process of the server stopped (SIGSTOP) inside the block, resumed (SIGCONT) after it.

        PostgreSQL backends leave the postmaster's process group (setsid), so the tree is walked by parent pid;
        the parent is stopped first so it forks nothing new meanwhile.
        """
        stopped = _signal_tree(self.process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in stopped:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _signal_tree(root: int, sig: int) -> list[int]:
    """Send ``sig`` to ``root`` and then to its descendants, parents first; returns the pids signalled."""
    done: list[int] = []
    pending = [root]
    while pending:
        pid = pending.pop(0)
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            continue
        done.append(pid)
        pending.extend(_children(pid))
    return done


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_user() -> dict[str, str]:
    """PostgreSQL and MariaDB refuse to run as root: run them as their own system user then."""
    return {"user": "postgres"} if os.geteuid() == 0 else {}


def _stop(process: subprocess.Popen[bytes], sig: int) -> None:
    try:
        _signal_tree(process.pid, signal.SIGCONT)  # a frozen server cannot shut down
        process.send_signal(sig)
        process.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        process.kill()
        process.wait(timeout=30)


@contextmanager
def _tempdir(prefix: str, owner: str | None) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    if owner and os.geteuid() == 0:
        entry = pwd.getpwnam(owner)
        os.chown(tmp, entry.pw_uid, entry.pw_gid)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def private_postgres(*extra: str) -> Iterator[PrivateServer]:
    """A PostgreSQL cluster of its own (initdb + postgres) with trust auth; yields its server and URL. ``extra``:
    more server settings, e.g. ``"-c", "synchronous_commit=remote_apply"``."""
    if not (PG_BIN / "initdb").exists():
        unavailable("a private PostgreSQL (initdb)", f"{PG_BIN}/initdb not found")
    user = _as_user()
    with _tempdir("praison-pg-", user.get("user")) as tmp:
        data = tmp / "data"
        subprocess.run(
            [str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
            check=True, capture_output=True, timeout=120, **user,
        )  # fmt: skip
        port = free_port()
        args = [str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port), "-k", str(tmp), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", *extra]
        log = open(tmp / "log", "wb")
        process = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True, **user)
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        try:
            import psycopg

            wait_until(lambda: psycopg.connect(url, connect_timeout=2).close() is None, "private PostgreSQL", timeout=60)
            yield PrivateServer(url, process)
        finally:
            _stop(process, signal.SIGINT)  # fast shutdown
            log.close()


@contextmanager
def streaming_replica(primary: PrivateServer) -> Iterator[PrivateServer]:
    """A hot standby of ``primary``: ``pg_basebackup`` into a temporary folder and a second postmaster on a free port."""
    user = _as_user()
    port = primary.url.rsplit(":", 1)[1].split("/")[0]
    with _tempdir("praison-pg-replica-", user.get("user")) as tmp:
        data = tmp / "data"
        subprocess.run(
            [str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-D", str(data), "-R", "-X", "stream", "--no-sync"],
            check=True, capture_output=True, timeout=120, **user,
        )  # fmt: skip
        replica_port = free_port()
        args = [str(PG_BIN / "postgres"), "-D", str(data), "-p", str(replica_port), "-k", str(tmp), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "hot_standby=on"]
        log = open(tmp / "log", "wb")
        process = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True, **user)
        url = f"postgresql://postgres@127.0.0.1:{replica_port}/postgres"
        try:
            import psycopg

            wait_until(lambda: psycopg.connect(url, connect_timeout=2).close() is None, "PostgreSQL replica", timeout=60)
            yield PrivateServer(url, process)
        finally:
            _stop(process, signal.SIGINT)
            log.close()


@contextmanager
def postgres_with_replica() -> Iterator[str]:
    """A PostgreSQL primary whose commits wait until its streaming replica has applied them (synchronous_commit =
    remote_apply), as the base URL of a db that reads from that replica: every read there sees every commit, so the
    whole conformance suite holds as on one server while listings and history reads go to the replica."""
    from urllib.parse import quote

    settings = ("-c", "synchronous_standby_names=*", "-c", "synchronous_commit=remote_apply")
    with private_postgres(*settings) as primary, streaming_replica(primary) as replica:
        yield f"{primary.url}?read_url={quote(replica.url, safe='')}"


@contextmanager
def private_mariadb(*extra: str) -> Iterator[PrivateServer]:
    """A MariaDB server of its own (no grant tables: any user connects); ``extra`` are mariadbd options."""
    if shutil.which("mariadbd") is None or shutil.which("mariadb-install-db") is None:
        unavailable("a private MariaDB (mariadbd)", "mariadbd or mariadb-install-db not found")
    owner = "mysql" if os.geteuid() == 0 else None
    with _tempdir("praison-maria-", owner) as tmp:
        data = tmp / "data"
        as_user = [f"--user={owner}"] if owner else []
        subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--skip-test-db", "--auth-root-authentication-method=normal", *as_user],
            check=True, capture_output=True, timeout=180,
        )  # fmt: skip
        port = free_port()
        args = [
            "mariadbd", "--no-defaults", f"--datadir={data}", f"--port={port}", "--bind-address=127.0.0.1",
            f"--socket={tmp}/sock", f"--pid-file={tmp}/pid", "--skip-grant-tables", "--skip-log-bin",
            "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=48M", "--innodb-flush-log-at-trx-commit=2",
            *as_user, *extra,
        ]  # fmt: skip
        log = open(tmp / "log", "wb")
        process = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
        url = f"mysql://root@127.0.0.1:{port}/test"
        try:
            import pymysql

            def up() -> bool:
                with pymysql.connect(host="127.0.0.1", port=port, user="root", connect_timeout=2) as conn, conn.cursor() as cur:
                    cur.execute("CREATE DATABASE IF NOT EXISTS test CHARACTER SET utf8mb4")
                return True

            wait_until(up, "private MariaDB", timeout=90)
            yield PrivateServer(url, process)
        finally:
            _stop(process, signal.SIGTERM)
            log.close()


@contextmanager
def private_redis() -> Iterator[PrivateServer]:
    """A Redis server of its own that keeps nothing on disk."""
    if shutil.which("redis-server") is None:
        unavailable("a private Redis (redis-server)", "redis-server not found")
    with _tempdir("praison-redis-", None) as tmp:
        port = free_port()
        args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            import redis

            wait_until(lambda: redis.Redis.from_url(url, socket_connect_timeout=1).ping(), "private Redis", timeout=30)
            yield PrivateServer(url, process)
        finally:
            _stop(process, signal.SIGTERM)


@contextmanager
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never reads or answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield int(listener.getsockname()[1])


__all__ = ["PrivateServer", "private_postgres", "private_mariadb", "private_redis", "silent_port", "free_port"]
