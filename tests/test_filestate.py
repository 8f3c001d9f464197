"""What is specific to the file state store (JSON and YAML): a snapshot then appended records, compaction, files of
the previous version, torn records, crashes and kills mid-write, several processes and threads on one file.
The contract itself runs on both as backends ``json`` and ``yaml`` in tests/conformance/test_state.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from praison_db import IntegrityError, StoreUnavailable
from praison_db.backends import filestate
from praison_db.backends.filestate import FileStateStore
from praison_db.backends.jsonfile import JsonStateStore
from praison_db.backends.yamlfile import YamlStateStore
from praison_db.testing.workers import incr_many, run_workers

ROOT = Path(__file__).resolve().parents[1]
KINDS = {"json": JsonStateStore, "yaml": YamlStateStore}


@pytest.fixture(params=list(KINDS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def path(tmp_path: Path, kind: str) -> Path:
    return tmp_path / f"state.{kind}"


def open_state(path: Path) -> FileStateStore:
    return KINDS[path.suffix[1:]](path)


@pytest.fixture
def state(path: Path) -> Iterator[FileStateStore]:
    with open_state(path) as s:
        yield s


def records(path: Path) -> list[Any]:
    """The file's records, read by the format's own parser: what a person or another tool sees."""
    if path.suffix == ".json":
        return [json.loads(line) for line in path.read_bytes().splitlines()]
    return list(yaml.safe_load_all(path.read_bytes()))


def contents(store: FileStateStore) -> dict[str, Any]:
    return store.get_many(list(store.keys()))


# ---- the layout ----


def test_a_snapshot_then_one_record_per_change(state, path):
    state.set("a", 1)
    state.set_many({"b": [2], "c": {"x": None}})
    assert state.incr("n", 5) == 5
    state.expire("b", 100)
    state.delete("a")
    state.clear("c")
    found = records(path)
    assert found[0] == {"format": "praison_db.state/v2", "items": {"a": [1, None]}}
    assert found[1:3] == [{"set": {"b": [[2], None], "c": [{"x": None}, None]}}, {"set": {"n": [5, None]}}]
    assert list(found[3]) == ["expire"] and found[4:] == [{"delete": ["a"]}, {"clear": "c"}]
    assert state.delete("a") is False and state.clear("zzz") == 0 and state.expire("gone", 1) is False
    assert len(records(path)) == 6  # nothing to change: nothing written
    with open_state(path) as again:
        assert contents(again) == {"b": [2], "n": 5} and 90 < again.ttl("b") <= 100


def test_a_file_of_the_previous_version_is_read_then_upgraded(path):
    """The previous version wrote one document, {"format": "praison_db.state/v1", "items": {...}}, replaced whole."""
    codec = KINDS[path.suffix[1:]].codec
    items = {"plan": [{"tier": "pro", "seats": 3}, None], "visits": [2, None], "soon": [1, 4e9], "old": ["x", 1.0]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(codec.document({"format": "praison_db.state/v1", "items": items}))
    with open_state(path) as state:
        assert contents(state) == {"plan": {"tier": "pro", "seats": 3}, "visits": 2, "soon": 1}
        assert state.get("old") is None and state.ttl("soon") > 1e9 and state.damaged_files() == []
        assert state.incr("visits") == 3  # the first write replaces it with a snapshot in the new layout
        upgraded = {"plan": [{"tier": "pro", "seats": 3}, None], "visits": [3, None], "soon": [1, 4e9]}
        assert records(path) == [{"format": "praison_db.state/v2", "items": upgraded}]  # the expired key is gone
        state.set("k", "v")
    with open_state(path) as state:
        assert contents(state) == {"plan": {"tier": "pro", "seats": 3}, "visits": 3, "soon": 1, "k": "v"}


def test_values_and_keys_that_look_like_the_layout_come_back_exactly(state, path):
    tricky = {
        "\n...\n": "\n...\n---\n", "---": {"set": {"a": [1, None]}}, "format": "praison_db.state/v2",
        "items": [1, None], "set": {"clear": ""}, "1": "yes", "~": None, "x" * 300: "\u2028\r\n\x85", "": 0,
    }
    tricky.pop("")  # keys are never empty
    state.set_many(tricky)
    state.set("{\"set\"", tricky)
    for key in tricky:
        state.incr(f"{key}:n")
    with open_state(path) as again:
        assert again.get_many(list(tricky)) == tricky and again.get("{\"set\"") == tricky
        assert again.get(f"{'x' * 300}:n") == 1 and again.damaged_files() == []


# ---- compaction ----


def test_compaction_bounds_the_file_and_every_reader_follows(path):
    pad = "p" * 400
    with open_state(path) as writer, open_state(path) as reader, open_state(path) as late:
        writer.set_many({f"fixed:{i}": i for i in range(50)})
        assert late.get("fixed:3") == 3  # reads now, then not again until the end: many compactions later
        sizes = []
        for i in range(1500):
            writer.set(f"k:{i % 40}", {"i": i, "pad": pad})
            if i % 7 == 0:
                writer.incr("count")
            if i % 97 == 0:
                writer.delete(f"k:{(i + 1) % 40}")
            sizes.append(path.stat().st_size)
            if i % 50 == 0:
                expected = writer.get_many(list(writer.keys()))
                assert contents(reader) == expected
        assert sum(1 for a, b in zip(sizes, sizes[1:]) if b < a) > 5  # compacted several times
        assert max(sizes) <= 2 * filestate._COMPACT_AT + 1024  # never more than the bound and one record
        assert contents(late) == contents(writer) == contents(open_state(path))
        assert writer.get("count") == 215 and late.get(f"k:{1499 % 40}")["i"] == 1499


def test_a_state_that_shrinks_is_compacted_to_its_new_size(state, path, monkeypatch):
    monkeypatch.setattr(filestate, "_COMPACT_AT", 1024)
    state.set_many({f"k{i}": "v" * 100 for i in range(200)})  # a large snapshot ...
    big = path.stat().st_size
    assert state.clear() == 200
    for i in range(1000):  # ... then a small state, written again and again
        state.set("small", i)
    assert path.stat().st_size <= 2 * 1024 + 100 < big
    assert contents(state) == {"small": 999} and contents(open_state(path)) == {"small": 999}


# ---- a model of the store ----

KEYS = st.sampled_from(["a", "b", "c", "p:1", "p:2", "q"])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), KEYS, st.integers(-5, 5) | st.text(max_size=60)),
        st.tuples(st.just("set_many"), st.dictionaries(KEYS, st.integers(0, 9), max_size=4), st.none()),
        st.tuples(st.just("delete"), KEYS, st.none()),
        st.tuples(st.just("incr"), KEYS, st.integers(-3, 3)),
        st.tuples(st.just("expire"), KEYS, st.sampled_from([None, 1000.0])),
        st.tuples(st.just("clear"), st.sampled_from(["", "p:", "a", "zz"]), st.none()),
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_any_sequence_of_changes_across_compactions_reads_back_like_a_dict(tmp_path_factory, kind, monkeypatch, ops):
    monkeypatch.setattr(filestate, "_COMPACT_AT", 64)  # compact once the records outgrow the snapshot
    path = tmp_path_factory.mktemp("model") / f"state.{kind}"
    model: dict[str, Any] = {}
    with open_state(path) as store, open_state(path) as reader:
        for op, key, arg in ops:
            if op == "set":
                store.set(key, arg)
                model[key] = arg
            elif op == "set_many":
                store.set_many(key)
                model.update(key)
            elif op == "delete":
                assert store.delete(key) is (model.pop(key, None) is not None)
            elif op == "incr":
                if isinstance(model.get(key, 0), int):
                    model[key] = model.get(key, 0) + arg
                    assert store.incr(key, arg) == model[key]
            elif op == "expire":
                assert store.expire(key, arg) is (key in model)
            else:
                doomed = [k for k in model if k.startswith(key)]
                assert store.clear(key) == len(doomed)
                for k in doomed:
                    del model[k]
            assert contents(reader) == model
        assert contents(store) == model
    with open_state(path) as again:
        assert contents(again) == model and again.damaged_files() == []


# ---- torn records, damage, failures ----


def test_a_torn_last_record_is_ignored_then_cut_off(state, path):
    state.set_many({"a": 1, "b": 2})
    whole = path.read_bytes()
    record = state.codec.encode({"set": {"a": [100, None], "c": [3, None]}})
    with open(path, "ab") as f:  # a crash in the middle of writing a set_many
        f.write(record[: len(record) - 2])
    for reader in (state, open_state(path)):
        assert contents(reader) == {"a": 1, "b": 2} and reader.damaged_files() == []
    state.set("d", 4)
    assert path.read_bytes() == whole + state.codec.encode({"set": {"d": [4, None]}})
    assert contents(open_state(path)) == {"a": 1, "b": 2, "d": 4}


def test_a_damaged_record_is_reported_and_nothing_is_written(state, path, kind):
    state.set("a", 1)
    state.set("b", 2)
    with open(path, "ab") as f:
        f.write(b"[1, 2]\n" if kind == "json" else b"---\n- 1\n- 2\n...\n")
    state_after = path.read_bytes()
    fresh = open_state(path)
    for store in (state, fresh):
        with pytest.raises(IntegrityError, match="is damaged") as info:
            store.get("a")
        assert str(path) in str(info.value)
        with pytest.raises(IntegrityError, match="is damaged"):
            store.set("c", 3)
        problem = f"{state.codec.record_kind} 3 is not a state change"
        assert store.damaged_files() == [{"file": path.name, "problem": problem}]
    assert path.read_bytes() == state_after


def test_a_failed_append_changes_nothing(state, path, monkeypatch):
    state.set("k", "before")
    whole = path.read_bytes()

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StoreUnavailable, match="Input/output error"):
        state.set("k", "after")
    monkeypatch.undo()
    assert path.read_bytes() == whole
    assert state.get("k") == "before" and open_state(path).get("k") == "before"


# ---- crashes and kills ----

CRASH = """
import os, sys
from praison_db.backends import filestate
from praison_db.backends.jsonfile import JsonStateStore
from praison_db.backends.yamlfile import YamlStateStore

path, where, compact = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if compact:
    filestate._COMPACT_AT = 0  # this write rewrites the file: the batch is larger than the snapshot
store = (JsonStateStore if path.endswith(".json") else YamlStateStore)(path)
store.get("x")
inode = os.stat(path).st_ino
real_write, real_fsync, fsyncs = os.write, os.fsync, []

def write(fd, data):
    if where == "mid-write" and os.fstat(fd).st_ino == inode:
        real_write(fd, bytes(data)[: len(data) // 2])
        os._exit(3)  # dies half way through the record
    return real_write(fd, data)

def fsync(fd):
    fsyncs.append(fd)
    if where == f"before-fsync-{len(fsyncs)}":
        os._exit(3)
    real_fsync(fd)

os.write, os.fsync = write, fsync
store.set_many({f"batch:{i}": "v" * 50 for i in range(20)})
os._exit(0)
"""


@pytest.mark.parametrize(
    ("where", "compact", "changed"),
    [
        ("mid-write", "0", False),
        ("before-fsync-1", "0", True),  # the record is whole in the file: a crash of the process loses nothing
        ("before-fsync-1", "1", False),  # the new file is not in place yet
        ("before-fsync-2", "1", True),  # in place, its folder not yet fsynced
        ("none", "0", True),
        ("none", "1", True),
    ],
)
def test_a_process_dying_mid_write_leaves_the_old_or_the_new_state(path, where, compact, changed):
    with open_state(path) as state:
        state.set_many({"a": 1, "b": {"c": [1]}})
        state.incr("n")
        proc = subprocess.run(
            [sys.executable, "-c", CRASH, str(path), where, compact],
            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, timeout=60,
        )
        assert proc.returncode == (0 if where == "none" else 3), proc.stderr.decode()
        expected = {"a": 1, "b": {"c": [1]}, "n": 1} | ({f"batch:{i}": "v" * 50 for i in range(20)} if changed else {})
        for reader in (state, open_state(path)):
            assert contents(reader) == expected and reader.damaged_files() == []
        assert state.incr("n") == 2
    assert not [p.name for p in path.parent.iterdir() if p.name.startswith(".tmp-")] or where == "before-fsync-1"
    with open_state(path) as again:
        assert contents(again) == expected | {"n": 2}


KILLED = """
import sys
from praison_db.backends.jsonfile import JsonStateStore
from praison_db.backends.yamlfile import YamlStateStore

path = sys.argv[1]
store = (JsonStateStore if path.endswith(".json") else YamlStateStore)(path)
pad = "x" * 2000
i = 0
while True:
    i += 1
    store.set_many({f"b{i}:{j}": [i, pad] for j in range(10)})
    print(i, flush=True)
"""


@pytest.mark.slow
def test_processes_killed_mid_write_leave_a_readable_state_with_whole_batches(path):
    """Writers killed (SIGKILL) at arbitrary moments, several times over, as they append and compact."""
    acknowledged = 0
    for round_ in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", KILLED, str(path)], env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        seen = 0
        for _ in range(15 + 7 * round_):
            seen = int(proc.stdout.readline())
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        with open_state(path) as reader:
            assert reader.damaged_files() == []
            batches: dict[int, int] = {}
            for key in reader.keys("b"):
                batch = int(key[1:].split(":")[0])
                batches[batch] = batches.get(batch, 0) + 1
            assert set(batches.values()) == {10}  # every batch whole, or not there at all
            assert set(batches) == set(range(1, max(batches) + 1)) and max(batches) >= seen  # none lost
            reader.clear()
            reader.set("after", round_)  # a write after the kill works, and cuts off a torn record
            acknowledged += seen
        with open_state(path) as again:
            assert contents(again) == {"after": round_}
    assert acknowledged > 0


@pytest.mark.slow
def test_processes_incrementing_one_key_end_with_the_exact_total(tmp_path, kind):
    """Four processes, 400 increments each, with records long enough that the file is compacted under them."""
    key = "hits:" + "h" * 200
    with KINDS[kind](tmp_path / f"state.{kind}") as state:
        state.set("before", 1)
        inode = (tmp_path / f"state.{kind}").stat().st_ino
        lasts = run_workers(incr_many, [(f"{kind}://{tmp_path}", key, 400)] * 4)
        assert state.get(key) == 1600 and max(lasts) == 1600 and state.get("before") == 1
        assert (tmp_path / f"state.{kind}").stat().st_ino != inode  # compacted meanwhile
        assert state.damaged_files() == []


def test_threads_sharing_one_store(state):
    """The async API runs a store's calls in worker threads: they share one parsed state."""
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            for _ in range(150):
                state.incr("n")
                state.set_many({"a": 1, "b": 2})
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def read() -> None:
        try:
            last = 0
            for _ in range(600):
                now = state.get("n", 0)
                assert now >= last and sorted(state.keys()) in ([], ["n"], ["a", "b", "n"])
                last = now
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=bump) for _ in range(3)] + [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and state.get("n") == 450
