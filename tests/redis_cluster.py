"""A private Redis Cluster on loopback: three masters started by this process, stopped by pid.

Each node is ``redis-server --cluster-enabled yes`` on a free port with its own folder, keeping nothing on disk;
``redis-cli --cluster create`` assigns the slots, and the cluster is handed out once every node reports
``cluster_state:ok``. Without a ``redis-server`` binary the caller's test is skipped loudly (failed in CI).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from praison_db.testing import ServerMissing
from tests.private_servers import free_port
from tests.servers import wait_until

__all__ = ["ClusterNode", "LocalCluster", "local_cluster", "redis_cluster_server"]


@dataclass
class ClusterNode:
    port: int
    process: subprocess.Popen[bytes]
    args: list[str]

    def kill(self) -> None:
        """SIGKILL, as a crashed machine: no shutdown, no goodbye to the other nodes."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def restart(self) -> None:
        """Start the node again with its own port, folder and nodes.conf: it rejoins the cluster it left."""
        self.process = _start(self.args)


def _start(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


@dataclass
class LocalCluster:
    nodes: list[ClusterNode]
    password: str | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis+cluster://{auth}" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def client(self, port: int) -> Any:
        """A plain client of one node."""
        import redis

        return redis.Redis(host="127.0.0.1", port=port, password=self.password, socket_connect_timeout=1, socket_timeout=5)

    def node_for_slot(self, slot: int) -> ClusterNode:
        """The node serving ``slot`` (slots are assigned once, at creation, and never move here)."""
        live = next(n for n in self.nodes if n.process.poll() is None)
        with self.client(live.port) as r:
            for first, last, master, *_ in r.execute_command("CLUSTER", "SLOTS"):
                if first <= slot <= last:
                    return next(n for n in self.nodes if n.port == int(master[1]))
        raise AssertionError(f"slot {slot} is not served")

    def wait_ok(self) -> None:
        """Poll every node until it reports cluster_state:ok."""
        for node in self.nodes:
            wait_until(lambda n=node: _ok(self, n.port), f"cluster_state:ok on port {node.port}", timeout=60)


def _ok(cluster: LocalCluster, port: int) -> bool:
    with cluster.client(port) as r:
        info = r.execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


@contextmanager
def local_cluster(masters: int = 3, *options: str, password: str | None = None) -> Iterator[LocalCluster]:
    """A fresh cluster of ``masters`` masters and no replicas; ``options`` go to every redis-server.

    Raises:
        ServerMissing: redis-server or redis-cli is not installed.
    """
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        raise ServerMissing("redis-server or redis-cli not found; install redis (7.0 or later)")
    tmp = Path(tempfile.mkdtemp(prefix="praison-cluster-"))
    nodes: list[ClusterNode] = []
    cluster = LocalCluster(nodes, password)
    auth = ["--requirepass", password, "--masterauth", password] if password else []
    try:
        for _ in range(masters):
            port, bus = free_port(), free_port()  # the bus port is explicit: port + 10000 may exceed 65535
            folder = tmp / str(port)
            folder.mkdir()
            args = [
                "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                "--cluster-port", str(bus), "--cluster-config-file", str(folder / "nodes.conf"), "--dir", str(folder),
                "--save", "", "--appendonly", "no", "--logfile", str(folder / "log"), *auth, *options,
            ]  # fmt: skip
            nodes.append(ClusterNode(port, _start(args), args))
        for node in nodes:
            wait_until(lambda n=node: _pong(cluster, n.port), f"cluster node on port {node.port}", timeout=30)
        create = ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes), "--cluster-replicas", "0", "--cluster-yes"]
        env = {**os.environ, "REDISCLI_AUTH": password} if password else None  # not on the command line
        subprocess.run(create, check=True, capture_output=True, timeout=60, env=env)
        cluster.wait_ok()
        yield cluster
    finally:
        for node in nodes:
            _stop(node.process)
        shutil.rmtree(tmp, ignore_errors=True)


def _pong(cluster: LocalCluster, port: int) -> bool:
    with cluster.client(port) as r:
        return bool(r.ping())


@contextmanager
def redis_cluster_server() -> Iterator[str]:
    """The conformance suite's cluster: started once per run, every test under its own key prefix."""
    with local_cluster() as cluster:
        yield cluster.url
