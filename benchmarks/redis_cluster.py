"""Redis Cluster: praison_db against raw redis-py's cluster client on the same private three-master cluster.

    python -m benchmarks.redis_cluster              # 300 calls per side and measurement
    python -m benchmarks.redis_cluster --calls 2000 --json

- append: ``add_message`` (the index step on the index slot, then the append script on the session's slot: two
  round trips, one after the other) against the raw pattern a hand-written client would use: a Lua script on the
  session's slot (``HINCRBY``, ``HSET``, ``RPUSH``) and a ``ZADD`` of the activity index on its own slot, sent in one
  cluster pipeline (the two nodes answer in parallel; nothing orders the two writes). ``raw, session only`` is the
  script alone: the floor, with no index at all.
- newest 20: ``get_messages(limit=20)`` (one script on the session's slot) against ``LRANGE -20 -1``.
- list 50: ``list_sessions(limit=50)`` of 2,000 sessions (the index walk, then the 50 hashes, read in one pipeline
  over the masters) against ``ZREVRANGE`` and the same pipeline of ``HGETALL``.
- state set / get: ``state.set`` / ``state.get`` against ``SET`` / ``GET`` of the same JSON text.

Both sides run in one process, alternating (benchmarks.harness), on a cluster started for the run
(tests.redis_cluster: three ``redis-server --cluster-enabled yes`` on free loopback ports, no persistence).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python benchmarks/redis_cluster.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from .harness import PRAISON, RAW, content, pair_main, interleaved, state_value, summarize  # noqa: E402

RESUME_N, LIST_N, SESSIONS, FILLED = 20, 50, 2_000, 1_000
FLOOR = "raw, session only"

_APPEND = """
local n = redis.call('HINCRBY', KEYS[1], 'message_count', 1)
redis.call('HSET', KEYS[1], 'updated_at', ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[1])
return n
"""


class RawCluster:
    """redis-py's RedisCluster on keys of its own: ``r:{s:<id>}`` hash and ``:m`` list, ``r:{i}:activity``."""

    def __init__(self, url: str) -> None:
        from redis.cluster import ClusterNode, RedisCluster

        hosts = url.split("://", 1)[1].split("?", 1)[0].split(",")
        self.r = RedisCluster(startup_nodes=[ClusterNode(h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1])) for h in hosts])
        self.script = self.r.register_script(_APPEND)
        self.activity = "r:{i}:activity"

    @staticmethod
    def keys(sid: str) -> list[str]:
        return [f"r:{{s:{sid}}}", f"r:{{s:{sid}}}:m"]

    def create(self, sid: str, now_us: int) -> None:
        self.r.hset(self.keys(sid)[0], mapping={"session_type": "agent", "metadata": "{}", "created_at": now_us, "updated_at": now_us, "message_count": 0})
        self.r.zadd(self.activity, {sid: now_us})

    def append(self, sid: str, text: str, now_us: int) -> None:
        body = json.dumps({"id": f"{sid}-{now_us}", "role": "user", "created_at": now_us, "content": text}, separators=(",", ":"))
        pipe = self.r.pipeline(transaction=False)
        self.script(keys=self.keys(sid), args=[body, now_us], client=pipe)
        pipe.zadd(self.activity, {sid: now_us})
        pipe.execute()

    def append_session_only(self, sid: str, text: str, now_us: int) -> None:
        body = json.dumps({"id": f"{sid}-{now_us}", "role": "user", "created_at": now_us, "content": text}, separators=(",", ":"))
        self.script(keys=self.keys(sid), args=[body, now_us])

    def newest(self, sid: str, n: int) -> list[Any]:
        return self.r.lrange(self.keys(sid)[1], -n, -1)

    def list_recent(self, n: int) -> list[Any]:
        ids = self.r.zrevrange(self.activity, 0, n - 1)
        pipe = self.r.pipeline(transaction=False)
        for sid in ids:
            pipe.hgetall(self.keys(sid.decode())[0])
        return pipe.execute()


def _now_us() -> int:
    import time

    return time.time_ns() // 1000


def run(calls: int) -> dict[str, Any]:
    from praison_db.facade import open_store
    from tests.redis_cluster import local_cluster

    results: dict[str, Any] = {}
    with local_cluster() as cluster:
        url = f"{cluster.url}?prefix=bench"
        conv, state = open_store(url, "conversations"), open_store(url, "state")
        raw = RawCluster(cluster.url)
        try:
            conv.create_session("bench")
            raw.create("bench", _now_us())
            raw.append_session_only("bench", "warm", _now_us())  # loads the script on its node (a pipeline cannot)
            appends = {
                PRAISON: lambda i: lambda: conv.add_message("bench", "user", content(i)),
                RAW: lambda i: lambda: raw.append("bench", content(i), _now_us()),
                FLOOR: lambda i: lambda: raw.append_session_only("bench", content(i), _now_us()),
            }
            results["append"] = summarize(interleaved(appends, calls, 10, 300))
            conv.create_session("long")
            conv.add_messages("long", [{"role": "user", "content": content(i)} for i in range(FILLED)])
            raw.create("long", _now_us())
            for i in range(FILLED):
                raw.append_session_only("long", content(i), _now_us())
            reads = {
                PRAISON: lambda i: lambda: conv.get_messages("long", limit=RESUME_N),
                RAW: lambda i: lambda: raw.newest("long", RESUME_N),
            }
            assert len(conv.get_messages("long", limit=RESUME_N)) == len(raw.newest("long", RESUME_N)) == RESUME_N
            results["newest_20"] = summarize(interleaved(reads, calls, 10, 300))
            for i in range(SESSIONS):
                conv.create_session(f"list-{i:05d}")
                raw.create(f"list-{i:05d}", _now_us())
            lists = {
                PRAISON: lambda i: lambda: conv.list_sessions(limit=LIST_N),
                RAW: lambda i: lambda: raw.list_recent(LIST_N),
            }
            assert len(conv.list_sessions(limit=LIST_N).items) == len(raw.list_recent(LIST_N)) == LIST_N
            results["list_50"] = summarize(interleaved(lists, calls, 10, 300))
            sets = {
                PRAISON: lambda i: lambda: state.set(f"k{i}", state_value(i)),
                RAW: lambda i: lambda: raw.r.set(f"r:kv:k{i}", json.dumps(state_value(i), separators=(",", ":"))),
            }
            results["state_set"] = summarize(interleaved(sets, calls, 10, 300))
            gets = {
                PRAISON: lambda i: lambda: state.get(f"k{i}"),
                RAW: lambda i: lambda: json.loads(raw.r.get(f"r:kv:k{i}") or "null"),
            }
            results["state_get"] = summarize(interleaved(gets, calls, 10, 300))
        finally:
            conv.close()
            state.close()
            raw.r.close()
    return results


def main(argv: list[str] | None = None) -> None:
    pair_main(argv, __doc__ or "", run, "raw redis-py cluster", floor=FLOOR)


if __name__ == "__main__":
    main()
