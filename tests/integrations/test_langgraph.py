"""PraisonCheckpointSaver: LangGraph's own conformance suite on every supported backend and both faces, real graphs
across a restart, concurrent writers, metadata filters, paging, the schema and the errors a user sees."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.serde.types import ERROR, INTERRUPT
from langgraph.types import Command

from praison_db import ConfigError, InputError, SchemaError, StoreClosed, StoreUnavailable
from praison_db.integrations.langgraph import MIGRATIONS, PraisonCheckpointSaver
from tests.integrations.langgraph_support import BY_NAME, EXPECTED, SAVER_BACKENDS, approval_graph, blob_counts, chat_graph, conformance

SQL = ["sqlite", "postgresql", "mysql"]


@pytest.fixture(params=SAVER_BACKENDS)
def url(request: pytest.FixtureRequest, make_url: Any) -> str:
    """A fresh, isolated URL of one supported backend (its own tables, file or memory name)."""
    return make_url(BY_NAME[request.param])  # type: ignore[no-any-return]


@pytest.fixture(params=SQL)
def sql_url(request: pytest.FixtureRequest, make_url: Any) -> str:
    return make_url(BY_NAME[request.param])  # type: ignore[no-any-return]


def config(thread_id: str, checkpoint_id: str | None = None, ns: str = "") -> dict[str, Any]:
    inner: dict[str, Any] = {"thread_id": thread_id, "checkpoint_ns": ns}
    if checkpoint_id is not None:
        inner["checkpoint_id"] = checkpoint_id
    return {"configurable": inner}


def put(saver: PraisonCheckpointSaver, thread_id: str, parent: dict[str, Any] | None = None, **metadata: Any) -> dict[str, Any]:
    """Store an empty checkpoint (child of ``parent``) with this metadata; return the config naming it."""
    cfg = config(thread_id, parent["configurable"]["checkpoint_id"] if parent else None)
    return saver.put(cfg, empty_checkpoint(), {"source": "loop", "step": 0, **metadata}, {})  # type: ignore[arg-type]


# ---- LangGraph's conformance suite ----


@pytest.mark.parametrize("face", ["async", "sync"])
def test_conformance_every_capability_passes(url: str, face: str) -> None:
    report = conformance(url, face)
    results = report.results
    assert set(results) == set(EXPECTED)
    for capability, expected in EXPECTED.items():
        result = results[capability]
        assert result.detected, f"{capability} not detected"
        assert result.failures == [], f"{capability}: {result.failures}"
        assert (result.tests_passed, result.tests_failed) == (expected, 0), capability
    assert report.conformance_level() == "FULL"


# ---- real graphs, across a restart ----


def test_graph_resumes_its_thread_in_a_new_saver(url: str) -> None:
    thread = {"configurable": {"thread_id": f"user-{uuid.uuid4().hex[:8]}"}}
    with PraisonCheckpointSaver(url) as saver:
        first = chat_graph(saver).invoke({"messages": ["hi"]}, thread)
    assert first["messages"] == ["hi", "echo:hi"]
    with PraisonCheckpointSaver(url) as saver:  # a restarted process: a new saver on the same URL
        graph = chat_graph(saver)
        assert graph.get_state(thread).values["messages"] == ["hi", "echo:hi"]
        second = graph.invoke({"messages": ["again"]}, thread)
        assert second["messages"] == ["hi", "echo:hi", "again", "echo:again"]
        # The whole history, newest first, across both savers: input, then START and reply, per run.
        history = [(h.metadata["step"], h.metadata["source"], h.values["messages"]) for h in graph.get_state_history(thread)]
        assert history == [
            (4, "loop", ["hi", "echo:hi", "again", "echo:again"]),
            (3, "loop", ["hi", "echo:hi", "again"]),
            (2, "input", ["hi", "echo:hi"]),
            (1, "loop", ["hi", "echo:hi"]),
            (0, "loop", ["hi"]),
            (-1, "input", []),
        ]


def test_graph_resumes_async_in_a_new_saver(url: str) -> None:
    thread = {"configurable": {"thread_id": f"user-{uuid.uuid4().hex[:8]}"}}

    async def run(text: str) -> Any:
        async with PraisonCheckpointSaver(url) as saver:
            return await chat_graph(saver).ainvoke({"messages": [text]}, thread)

    assert asyncio.run(run("hi"))["messages"] == ["hi", "echo:hi"]
    assert asyncio.run(run("again"))["messages"] == ["hi", "echo:hi", "again", "echo:again"]


def test_interrupted_graph_is_resumed_by_a_new_saver(url: str) -> None:
    thread = {"configurable": {"thread_id": f"user-{uuid.uuid4().hex[:8]}"}}
    with PraisonCheckpointSaver(url) as saver:
        paused = approval_graph(saver).invoke({"messages": ["start"]}, thread)
    assert paused["__interrupt__"][0].value == "What is your name?"
    with PraisonCheckpointSaver(url) as saver:
        graph = approval_graph(saver)
        assert graph.get_state(thread).next == ("ask",)
        done = graph.invoke(Command(resume="Alice"), thread)
        assert done["messages"] == ["start", "hello Alice"]
        assert graph.get_state(thread).next == ()


# ---- concurrency ----


def test_concurrent_writers_store_each_write_once(url: str) -> None:
    """Eight threads on two savers (two connection pools, as two processes) write at once: the same regular write
    is stored once (the first stays), a special write once (one of them), and every checkpoint they add is there."""
    tid = f"t-{uuid.uuid4().hex[:8]}"
    savers = [PraisonCheckpointSaver(url), PraisonCheckpointSaver(url)]
    try:
        base = put(savers[0], tid)
        n, per_thread = 8, 5
        start = threading.Barrier(n)
        failures: list[BaseException] = []

        def writer(i: int) -> None:
            saver = savers[i % 2]
            try:
                start.wait()
                saver.put_writes(base, [("answer", f"value-{i}")], "task-1")
                saver.put_writes(base, [(ERROR, f"error-{i}")], "task-2")
                parent = base
                for _ in range(per_thread):
                    parent = put(saver, tid, parent, writer=i)
            except BaseException as e:  # noqa: BLE001 - reported below
                failures.append(e)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []
        got = savers[1].get_tuple(base)
        assert got is not None and got.pending_writes is not None
        regular = [w for w in got.pending_writes if w[0] == "task-1"]
        special = [w for w in got.pending_writes if w[0] == "task-2"]
        assert len(regular) == 1 and regular[0][2] in {f"value-{i}" for i in range(n)}
        assert len(special) == 1 and special[0][1] == ERROR and special[0][2] in {f"error-{i}" for i in range(n)}
        # A retried regular write (same task, same idx) keeps the stored value.
        savers[0].put_writes(base, [("answer", "late")], "task-1")
        again = savers[0].get_tuple(base)
        assert again is not None and [w for w in again.pending_writes or [] if w[0] == "task-1"] == regular
        listed = list(savers[0].list(config(tid)))
        assert len(listed) == 1 + n * per_thread
        latest = savers[1].get_tuple(config(tid))
        assert latest is not None
        assert latest.config["configurable"]["checkpoint_id"] == max(t.config["configurable"]["checkpoint_id"] for t in listed)
    finally:
        for saver in savers:
            saver.close()


def test_concurrent_async_writers(url: str) -> None:
    tid = f"t-{uuid.uuid4().hex[:8]}"

    async def main() -> Any:
        async with PraisonCheckpointSaver(url) as saver:
            base = await saver.aput(config(tid), empty_checkpoint(), {"source": "input", "step": -1}, {})
            await asyncio.gather(*(saver.aput_writes(base, [("answer", f"v{i}")], "task") for i in range(12)))
            await asyncio.gather(*(saver.aput_writes(base, [(INTERRUPT, f"i{i}")], "task") for i in range(12)))
            children = await asyncio.gather(
                *(saver.aput(base, empty_checkpoint(), {"source": "loop", "step": i}, {}) for i in range(12))
            )
            listed = [t async for t in saver.alist(config(tid))]
            return await saver.aget_tuple(base), children, listed

    got, children, listed = asyncio.run(main())
    assert [w[1] for w in got.pending_writes] in ([INTERRUPT, "answer"], ["answer", INTERRUPT])
    assert len({c["configurable"]["checkpoint_id"] for c in children}) == 12
    assert len(listed) == 13


# ---- list: filters, before, limit, paging ----


def test_list_pages_through_a_long_thread(url: str) -> None:
    tid = f"t-{uuid.uuid4().hex[:8]}"
    with PraisonCheckpointSaver(url) as saver:
        parent = None
        ids = []
        for i in range(230):  # more than two pages of 100
            parent = put(saver, tid, parent, step=i, source="input" if i % 3 == 0 else "loop")
            ids.append(parent["configurable"]["checkpoint_id"])
        newest_first = ids[::-1]
        assert [t.config["configurable"]["checkpoint_id"] for t in saver.list(config(tid))] == newest_first
        assert [t.metadata["step"] for t in saver.list(config(tid), limit=20)] == list(range(229, 209, -1))
        before = config(tid, ids[150])
        assert [t.config["configurable"]["checkpoint_id"] for t in saver.list(config(tid), before=before, limit=120)] == newest_first[80:200]
        inputs = list(saver.list(config(tid), filter={"source": "input"}, limit=50))
        assert [t.metadata["step"] for t in inputs] == [s for s in range(229, -1, -1) if s % 3 == 0][:50]
        assert list(saver.list(config(tid), limit=0)) == []
        assert list(saver.list(config(tid), filter={"step": 7, "source": "input"})) == []
        everyone = [t.config["configurable"]["thread_id"] for t in saver.list(None, filter={"step": 7})]
        assert everyone.count(tid) == 1


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([0.0, 1.0, 2.5, -1.5]),
    st.text(alphabet="aAb é\"'\\%_1", max_size=4),
)
_values = st.one_of(_scalars, st.lists(_scalars, max_size=2), st.dictionaries(st.sampled_from("xy"), _scalars, max_size=2))
_keys = st.sampled_from(["source", "step", "score", "run tag", "ключ"])


def _canonical(value: Any) -> Any:
    """A JSON value in a form where Python's == is JSON equality: numbers by value, booleans apart from numbers."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", float(value))
    if isinstance(value, (list, tuple)):
        return ("list", tuple(_canonical(v) for v in value))
    if isinstance(value, dict):
        return ("object", tuple(sorted((k, _canonical(v)) for k, v in value.items())))
    return value


def _same(expected: Any, actual: Any) -> bool:
    """The documented filter semantics, written out independently of the saver's."""
    return bool(_canonical(expected) == _canonical(actual))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stored=st.lists(st.dictionaries(_keys, _values, max_size=3), min_size=1, max_size=6), wanted=st.dictionaries(_keys, _values, min_size=1, max_size=2))
def test_metadata_filters_match_json_equality(url: str, stored: list[dict[str, Any]], wanted: dict[str, Any]) -> None:
    """Whatever the metadata and the filter, list() returns exactly the checkpoints whose metadata equals the filter's
    values as JSON, a missing key counting as None; the database's narrowing never drops a match."""
    tid = f"t-{uuid.uuid4().hex[:8]}"
    with PraisonCheckpointSaver(url) as saver:
        parent = None
        expected = []
        for metadata in stored:
            parent = saver.put(config(tid, parent["configurable"]["checkpoint_id"] if parent else None), empty_checkpoint(), metadata, {})  # type: ignore[arg-type]
            if all(_same(v, metadata.get(k)) for k, v in wanted.items()):
                expected.append(parent["configurable"]["checkpoint_id"])
        got = [t.config["configurable"]["checkpoint_id"] for t in saver.list(config(tid), filter=wanted)]
        assert got == expected[::-1]


@pytest.mark.parametrize(
    ("stored", "wanted"),
    [(2**60, float(2**60)), (float(2**60), 2**60), (2**70, float(2**70)), (-(2**70), float(-(2**70))), ({"n": [2**60]}, {"n": [float(2**60)]})],
)
def test_filters_match_large_numbers_by_value(url: str, stored: Any, wanted: Any) -> None:
    """An integer and a float of the same value match whatever their size, though their JSON texts differ (2**60 is
    1152921504606846976 as an integer and 1.152921504606847e+18 as a float): no database narrowing drops the match."""
    tid = f"t-{uuid.uuid4().hex[:8]}"
    with PraisonCheckpointSaver(url) as saver:
        put(saver, tid, value=stored)
        put(saver, tid, value="other")
        assert [t.metadata["value"] for t in saver.list(config(tid), filter={"value": wanted})] == [stored]
        assert len(list(saver.list(None, filter={"value": wanted, "step": 0}))) == 1


# ---- storage: blobs, prune, delete_for_runs ----


def test_unchanged_channels_are_not_stored_again(url: str) -> None:
    """A run that changes one channel stores one blob; the checkpoint reads the others at their old versions."""
    tid = f"t-{uuid.uuid4().hex[:8]}"
    with PraisonCheckpointSaver(url) as saver:
        graph = chat_graph(saver)
        for text in ("a", "b", "c"):
            graph.invoke({"messages": [text]}, config(tid))
        # "messages" changes at every step (3 runs x 2 steps), not once per checkpoint per channel.
        assert blob_counts(saver, tid)["messages"] == 6
        assert graph.get_state(config(tid)).values["messages"] == ["a", "echo:a", "b", "echo:b", "c", "echo:c"]


def test_prune_keeps_the_latest_and_what_it_needs(url: str) -> None:
    tid = f"t-{uuid.uuid4().hex[:8]}"
    with PraisonCheckpointSaver(url) as saver:
        graph = chat_graph(saver)
        for text in ("a", "b"):
            graph.invoke({"messages": [text]}, config(tid))
        before = graph.get_state(config(tid)).values
        saver.prune([tid])
        listed = list(saver.list(config(tid)))
        assert len(listed) == 1 and listed[0].parent_config is None
        assert graph.get_state(config(tid)).values == before
        assert graph.invoke({"messages": ["c"]}, config(tid))["messages"][-2:] == ["c", "echo:c"]
        count = sum(blob_counts(saver, tid).values())
        saver.prune([tid])
        assert sum(blob_counts(saver, tid).values()) < count  # the blobs only pruned checkpoints used are gone
        assert graph.get_state(config(tid)).values["messages"][-2:] == ["c", "echo:c"]


def test_prune_refuses_delta_channel_threads(url: str) -> None:
    tid = f"t-{uuid.uuid4().hex[:8]}"
    with PraisonCheckpointSaver(url) as saver:
        first = put(saver, tid, counters_since_delta_snapshot={"messages": [1, 1]})
        put(saver, tid, first)
        with pytest.raises(InputError, match="DeltaChannel"):
            saver.prune([tid])
        assert len(list(saver.list(config(tid)))) == 2  # nothing changed
        saver.prune([tid], strategy="delete")
        assert saver.get_tuple(config(tid)) is None


def test_delete_for_runs_leaves_other_threads_and_runs(url: str) -> None:
    a, b = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    with PraisonCheckpointSaver(url) as saver:
        first = put(saver, a, run_id="run-1")
        second = put(saver, a, first, run_id="run-2")
        put(saver, b, run_id="run-1")
        saver.put_writes(first, [("x", 1)], "task")
        saver.delete_for_runs(["run-1"])
        assert saver.get_tuple(config(b)) is None
        left = list(saver.list(config(a)))
        assert [t.config for t in left] == [saver.get_tuple(second).config]  # type: ignore[union-attr]
        assert left[0].parent_config is None
        saver.delete_for_runs([])
        saver.delete_for_runs(["no-such-run"])
        assert len(list(saver.list(config(a)))) == 1


# ---- the schema ----


def test_setup_is_idempotent_and_versioned(sql_url: str) -> None:
    with PraisonCheckpointSaver(sql_url) as saver:
        saver.setup()
        saver.setup()
        assert saver.schema_version() == (len(MIGRATIONS), len(MIGRATIONS))
    with PraisonCheckpointSaver(sql_url) as saver:
        assert saver.schema_version() == (len(MIGRATIONS), len(MIGRATIONS))


def test_fresh_database_without_auto_upgrade_is_refused(sql_url: str) -> None:
    saver = PraisonCheckpointSaver(sql_url, auto_upgrade=False)
    with pytest.raises(SchemaError, match="auto_upgrade"):
        saver.get_tuple(config("t"))
    saver.close()


def test_newer_schema_is_refused(sql_url: str) -> None:
    with PraisonCheckpointSaver(sql_url) as saver:
        saver.setup()
        storage = saver._storage()
        from sqlalchemy import insert

        from praison_db.models import utcnow

        with storage.db.write() as conn:  # type: ignore[attr-defined]
            conn.execute(insert(storage.t.version).values(version=99, applied_at=utcnow()))  # type: ignore[attr-defined]
    with PraisonCheckpointSaver(sql_url) as saver, pytest.raises(SchemaError, match="newer"):
        saver.setup()


def test_savers_opened_at_once_migrate_once(sql_url: str) -> None:
    n = 4
    start = threading.Barrier(n)
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            start.wait()
            with PraisonCheckpointSaver(sql_url) as saver:
                saver.setup()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=open_one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ---- errors a user sees ----


@pytest.mark.parametrize("bad", ["json:///tmp/x", "chdb:///tmp/x", "clickhouse://localhost/db"])
def test_unsupported_urls_are_a_one_line_config_error(bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        PraisonCheckpointSaver(bad)
    message = str(caught.value)
    assert "\n" not in message
    assert all(scheme in message for scheme in ("sqlite://", "redis://", "mongodb://", "memory://"))


def test_unknown_scheme_and_option_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="did you mean postgresql"):
        PraisonCheckpointSaver("postgressql://u:secret@localhost/db")
    with pytest.raises(ConfigError, match="table_prefix"):
        PraisonCheckpointSaver("sqlite:///x.db", tabel_prefix="x_")
    with pytest.raises(ConfigError, match="unknown option"):
        PraisonCheckpointSaver("memory://", pool_size=3)
    # Redis and MongoDB: praison_db's option names and the drivers', checked before any connection is made.
    with pytest.raises(ConfigError, match="prefix"):
        PraisonCheckpointSaver("redis://localhost:1/0?prefx=app")
    with pytest.raises(ConfigError, match="prefix"):
        PraisonCheckpointSaver("redis://localhost:1/0", prefix="no-dashes")
    with pytest.raises(ConfigError, match="ttl"):
        PraisonCheckpointSaver("redis://localhost:1/0", ttl=60)
    with pytest.raises(ConfigError, match="collection_prefix"):
        PraisonCheckpointSaver("mongodb://localhost:1/db?colection_prefix=x_")
    with pytest.raises(ConfigError, match="collection_prefix"):
        PraisonCheckpointSaver("mongodb://localhost:1/db", serverSelectionTimeoutMs="soon")


@pytest.mark.parametrize(
    "unreachable",
    [
        "postgresql://ai:s3cret@127.0.0.1:1/ai?connect_timeout=1",
        "redis://:s3cret@127.0.0.1:1/0?socket_connect_timeout=1",
        "mongodb://ai:s3cret@127.0.0.1:1/ai?serverSelectionTimeoutMS=500",
    ],
)
def test_unreachable_server_is_store_unavailable_without_the_password(unreachable: str) -> None:
    saver = PraisonCheckpointSaver(unreachable)
    with pytest.raises(StoreUnavailable) as caught:
        saver.get_tuple(config("t"))
    assert "s3cret" not in str(caught.value)

    async def main() -> None:
        async with PraisonCheckpointSaver(unreachable) as asaver:
            with pytest.raises(StoreUnavailable) as caught:
                await asaver.aget_tuple(config("t"))
            assert "s3cret" not in str(caught.value)

    asyncio.run(main())


def test_bad_input_is_an_input_error_and_changes_nothing(url: str) -> None:
    tid = f"t-{uuid.uuid4().hex[:8]}"
    with PraisonCheckpointSaver(url) as saver:
        with pytest.raises(InputError, match="thread_id"):
            saver.get_tuple({"configurable": {}})
        with pytest.raises(InputError, match="thread_id"):
            saver.put({"configurable": {"thread_id": "x" * 300}}, empty_checkpoint(), {}, {})
        with pytest.raises(InputError, match="checkpoint_id"):
            saver.put_writes(config(tid), [("ch", 1)], "task")
        with pytest.raises(InputError, match="JSON"):
            saver.put(config(tid), empty_checkpoint(), {"when": object()}, {})  # type: ignore[dict-item]
        with pytest.raises(InputError, match="strategy"):
            saver.prune([tid], strategy="everything")
        with pytest.raises(InputError, match="list of ids"):
            saver.delete_for_runs("run-1")
        assert saver.get_tuple(config(tid)) is None


def test_closed_saver_refuses_calls(url: str) -> None:
    saver = PraisonCheckpointSaver(url)
    saver.setup()
    saver.close()
    saver.close()
    with pytest.raises(StoreClosed):
        saver.get_tuple(config("t"))

    async def main() -> None:
        asaver = PraisonCheckpointSaver(url)
        await asaver.asetup()
        await asaver.aclose()
        with pytest.raises(StoreClosed):
            await asaver.aget_tuple(config("t"))

    asyncio.run(main())


def test_latest_checkpoint_is_read_from_the_primary_key(make_url: Any) -> None:
    """get_tuple without a checkpoint_id is an index search on SQLite, not a scan of the table."""
    url = make_url(BY_NAME["sqlite"])
    with PraisonCheckpointSaver(url) as saver:
        saver.setup()
        storage = saver._storage()
        query = storage.q_latest  # type: ignore[attr-defined]
        with storage.db.read() as conn:  # type: ignore[attr-defined]
            compiled = query.compile(conn, compile_kwargs={"render_postcompile": True})
            plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + str(compiled), ("t", "", 1, 0)).all())
        # The primary key's own index (SQLite names it sqlite_autoindex_<table>_1), read backwards: no sort, no scan.
        assert f"SEARCH {storage.t.checkpoints.name} USING INDEX sqlite_autoindex_" in plan and "TEMP B-TREE" not in plan, plan  # type: ignore[attr-defined]


# ---- ids that hold the characters key layouts separate parts with ----

_awkward = st.text(alphabet=":}{%\\\x01é/a", min_size=1, max_size=5)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    threads=st.lists(_awkward, min_size=2, max_size=2, unique=True),
    spaces=st.lists(st.text(alphabet=":}{%a", max_size=4), min_size=2, max_size=2, unique=True),
    channel=_awkward,
)
def test_ids_with_separator_characters_never_collide(url: str, threads: list[str], spaces: list[str], channel: str) -> None:
    """Threads, namespaces, checkpoint ids, channels and tasks made of ':', '}', '{', '%' and the like keep apart:
    each reads back its own value and writes, and deleting one thread leaves the other whole."""
    run = uuid.uuid4().hex[:6]
    with PraisonCheckpointSaver(url) as saver:
        for t in threads:
            for ns in spaces:
                checkpoint = empty_checkpoint()
                checkpoint.update(id=f"{ns}:{t}", channel_values={channel: f"{t}|{ns}"}, channel_versions={channel: "1"})
                saved = saver.put(config(run + t, ns=ns), checkpoint, {"source": "input", "step": -1}, {channel: "1"})
                saver.put_writes(saved, [(channel, f"w:{t}|{ns}")], "task:}%")
        for t in threads:
            for ns in spaces:
                got = saver.get_tuple(config(run + t, ns=ns))
                assert got is not None and got.checkpoint["id"] == f"{ns}:{t}"
                assert got.checkpoint["channel_values"] == {channel: f"{t}|{ns}"}
                assert got.pending_writes == [("task:}%", channel, f"w:{t}|{ns}")]
            listed = saver.list({"configurable": {"thread_id": run + t}})
            assert sorted(c.config["configurable"]["checkpoint_ns"] for c in listed) == sorted(spaces)
        saver.delete_thread(run + threads[0])
        assert all(saver.get_tuple(config(run + threads[0], ns=ns)) is None for ns in spaces)
        assert all(saver.get_tuple(config(run + threads[1], ns=ns)) is not None for ns in spaces)


# ---- Redis: one slot per thread, nothing left behind, the newest from its index ----


def _redis_keys(saver: PraisonCheckpointSaver) -> list[bytes]:
    storage: Any = saver._storage()
    return sorted(k for batch in _scan(storage.r, f"{storage.prefix}:*") for k in batch)


def _scan(client: Any, pattern: str) -> Any:
    from praison_db.backends.redis import scan_batches

    return scan_batches(client, pattern)


def test_redis_keeps_each_thread_in_one_slot_and_deletes_leave_no_key(make_url: Any) -> None:
    from redis.crc import key_slot

    url = make_url(BY_NAME["redis"])
    with PraisonCheckpointSaver(url) as saver:
        graph = chat_graph(saver)
        threads = ["user:{42}%", "other}", "plain"]
        for tid in threads:
            graph.invoke({"messages": ["hi"]}, {"configurable": {"thread_id": tid, "run_id": f"run-{tid}"}})
        saver.copy_thread("plain", "copy")
        base = saver._storage().prefix + ":lg:"  # type: ignore[attr-defined]
        keys = _redis_keys(saver)
        assert keys and all(k.startswith(base.encode()) for k in keys)
        by_tag: dict[bytes, set[int]] = {}
        for k in keys:
            if k.startswith(f"{base}{{".encode()):
                by_tag.setdefault(k.split(b"}")[0], set()).add(key_slot(k))
        assert len(by_tag) == 4 and all(len(slots) == 1 for slots in by_tag.values())
        assert graph.get_state(config("copy")).values == {"messages": ["hi", "echo:hi"]}
        saver.delete_for_runs(["run-plain"])  # the copy's checkpoints carry the run id too
        assert not [k for k in _redis_keys(saver) if b"{plain}" in k or b"{copy}" in k or b":run-plain" in k]
        saver.prune(["other}"])
        saver.delete_thread("user:{42}%")
        assert [t.config["configurable"]["thread_id"] for t in saver.list(None)] == ["other}"]
        saver.prune(["other}", "copy", "plain"], strategy="delete")
        assert _redis_keys(saver) == []  # no index entry, run set or orphan write outlives its thread


def test_redis_list_skips_index_entries_of_failed_puts(make_url: Any) -> None:
    """A put that stopped after the cross-thread index step (the process died) never shows up in list(None), and
    list still returns as many checkpoints as the limit asks for."""
    url = make_url(BY_NAME["redis"])
    with PraisonCheckpointSaver(url) as saver:
        ids = []
        parent = None
        for i in range(6):
            parent = put(saver, "a" if i % 2 else "b", parent if i > 1 else None, step=i)
            ids.append(parent["configurable"]["checkpoint_id"])
        storage: Any = saver._storage()
        ghosts = {f"{cid}0\0ghost\0": 0 for cid in ids} | {"~\0ghost\0": 0}  # newer than each real one
        storage.r.zadd(storage.all_key, ghosts)
        assert [t.config["configurable"]["checkpoint_id"] for t in saver.list(None, limit=4)] == ids[::-1][:4]
        assert [t.config["configurable"]["checkpoint_id"] for t in saver.list(None)] == ids[::-1]
        assert [t.metadata["step"] for t in saver.list(None, filter={"step": 1})] == [1]


def test_redis_newest_is_one_script_call_and_survives_a_script_flush() -> None:
    """get_tuple of the newest is one EVALSHA (no SCAN, no KEYS); a server that lost its scripts (restart, SCRIPT
    FLUSH) costs a reload, not an error. On a private Redis, whose statistics are this test's alone."""
    import redis

    from tests.private_servers import private_redis

    with private_redis() as server, PraisonCheckpointSaver(server.url) as saver:
        graph = chat_graph(saver)
        for text in ("a", "b"):
            graph.invoke({"messages": [text]}, config("t"))
        client = redis.Redis.from_url(server.url)
        client.config_resetstat()
        assert saver.get_tuple(config("t")) is not None
        stats = client.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] == 1
        assert not {"cmdstat_scan", "cmdstat_keys", "cmdstat_eval"} & set(stats)
        client.script_flush()
        assert graph.invoke({"messages": ["c"]}, config("t"))["messages"][-2:] == ["c", "echo:c"]
        client.script_flush()
        assert len(list(saver.list(None))) == 9  # three runs of three checkpoints
        client.close()


# ---- MongoDB: its indexes, the newest from the key index, binary values ----


def test_mongodb_reads_the_newest_from_the_key_index(make_url: Any) -> None:
    from praison_db.integrations.langgraph import _KEY_INDEX

    url = make_url(BY_NAME["mongodb"])
    with PraisonCheckpointSaver(url) as saver:
        graph = chat_graph(saver)
        for text in ("a", "b"):
            graph.invoke({"messages": [text]}, config("t"))
        storage: Any = saver._storage()
        indexes = {name: info for c in (storage.c, storage.b, storage.w) for name, info in c.index_information().items()}
        assert indexes[_KEY_INDEX]["unique"] and indexes[_KEY_INDEX]["key"] == [("thread_id", 1), ("checkpoint_ns", 1), ("checkpoint_id", 1)]
        assert all(indexes[n]["unique"] for n in ("thread_ns_channel_version", "thread_ns_checkpoint_task_idx"))
        query = storage.c.find({"thread_id": "t", "checkpoint_ns": ""}).sort([("checkpoint_id", -1)]).limit(1).hint(_KEY_INDEX)
        plan = str(query.explain())
        assert "IXSCAN" in plan and _KEY_INDEX in plan and "COLLSCAN" not in plan
        document = storage.c.find_one({"thread_id": "t"})
        blob = storage.b.find_one({"thread_id": "t", "channel": "messages"})
        assert isinstance(document["checkpoint"], bytes) and isinstance(blob["blob"], bytes)  # BSON binary, not text
        assert graph.get_state(config("t")).values["messages"] == ["a", "echo:a", "b", "echo:b"]


def test_mongodb_before_8_puts_blobs_then_the_checkpoint(make_url: Any) -> None:
    """Servers before MongoDB 8.0 have no bulkWrite across collections: a put writes its blobs, then its checkpoint,
    and graphs work the same."""
    url = make_url(BY_NAME["mongodb"])
    with PraisonCheckpointSaver(url) as saver:
        saver._storage().client_bulk = False  # type: ignore[attr-defined]
        graph = chat_graph(saver)
        for text in ("a", "b"):
            graph.invoke({"messages": [text]}, config("t"))
        assert graph.get_state(config("t")).values["messages"] == ["a", "echo:a", "b", "echo:b"]
        assert blob_counts(saver, "t")["messages"] == 4
