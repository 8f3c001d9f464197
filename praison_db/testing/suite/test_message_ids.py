"""Caller-given message ids: unique in their session, and re-adding one stores nothing (idempotent retries)."""

from __future__ import annotations

import uuid

import pytest

from praison_db import InputError, SessionExists, SessionNotFound
from praison_db.facade import open_store
from praison_db.testing import require
from praison_db.testing.workers import run_workers

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


def sid() -> str:
    return "s-" + uuid.uuid4().hex[:12]


def test_given_id_is_kept_and_returned_on_every_read(conv):
    s = sid()
    conv.create_session(s)
    long_id = "x" * 255
    m = conv.add_message(s, "user", "hi", id="turn-1")
    n = conv.add_message(s, "assistant", "hello", id=long_id)
    assert (m.id, m.seq, n.id, n.seq) == ("turn-1", 1, long_id, 2)
    assert [x.id for x in conv.get_messages(s)] == ["turn-1", long_id]
    assert [x.id for x in conv.get_messages(s, limit=1)] == [long_id]
    assert [x["id"] for x in conv.export_session(s)["messages"]] == ["turn-1", long_id]


@pytest.mark.parametrize("bad", ["", "a\x00b", "y" * 256, 7])
def test_bad_ids_are_input_errors_and_store_nothing(conv, bad):
    s = sid()
    conv.create_session(s)
    with pytest.raises(InputError):
        conv.add_message(s, "user", "x", id=bad)
    with pytest.raises(InputError):
        conv.add_messages(s, [{"role": "user", "content": "a"}, {"role": "user", "content": "b", "id": bad}])
    assert conv.count_messages(s) == 0


def test_readding_an_id_returns_the_stored_message_and_changes_nothing(conv):
    s = sid()
    conv.create_session(s)
    first = conv.add_message(s, "user", "original", id="m1", metadata={"k": 1})
    conv.add_message(s, "assistant", "reply", id="m2")
    before = conv.get_session(s)
    again = conv.add_message(s, "user", "a different text", id="m1", metadata={"k": 2})
    assert again == first
    after = conv.get_session(s)
    assert after.message_count == 2 and after.updated_at == before.updated_at
    assert conv.count_messages(s) == 2
    assert [(m.seq, m.id, m.content) for m in conv.get_messages(s)] == [(1, "m1", "original"), (2, "m2", "reply")]
    # The next new message continues the numbering without a gap.
    assert conv.add_message(s, "user", "next", id="m3").seq == 3


def test_batch_mixes_stored_and_new_ids(conv):
    s = sid()
    conv.create_session(s)
    conv.add_messages(s, [{"role": "user", "content": "a", "id": "a"}, {"role": "user", "content": "b", "id": "b"}])
    out = conv.add_messages(
        s,
        [
            {"role": "user", "content": "B again", "id": "b"},
            {"role": "user", "content": "c", "id": "c"},
            {"role": "user", "content": "no id"},
            {"role": "user", "content": "c twice", "id": "c"},
            {"role": "user", "content": "a again", "id": "a"},
            {"role": "user", "content": "d", "id": "d"},
        ],
    )
    assert [(m.id, m.seq, m.content) for m in out if m.id != out[2].id] == [
        ("b", 2, "b"), ("c", 3, "c"), ("c", 3, "c"), ("a", 1, "a"), ("d", 5, "d")
    ]
    assert out[2].seq == 4 and out[2].content == "no id"
    stored = conv.get_messages(s)
    assert [m.seq for m in stored] == [1, 2, 3, 4, 5]
    assert [m.content for m in stored] == ["a", "b", "c", "no id", "d"]
    assert conv.get_session(s).message_count == 5


def test_a_batch_of_only_stored_ids_changes_nothing(conv):
    s = sid()
    conv.create_session(s)
    conv.add_messages(s, [{"role": "user", "content": "a", "id": "a"}, {"role": "user", "content": "b", "id": "b"}])
    before = conv.get_session(s)
    out = conv.add_messages(s, [{"role": "user", "content": "?", "id": "b"}, {"role": "user", "content": "?", "id": "a"}])
    assert [(m.id, m.content) for m in out] == [("b", "b"), ("a", "a")]
    assert conv.get_session(s) == before


def test_same_id_in_two_sessions_is_two_messages(conv):
    s1, s2 = sid(), sid()
    conv.create_session(s1)
    conv.create_session(s2)
    conv.add_message(s1, "user", "one", id="same")
    conv.add_message(s2, "user", "pre")
    m = conv.add_message(s2, "user", "two", id="same")
    assert (m.session_id, m.seq, m.content) == (s2, 2, "two")
    assert [x.content for x in conv.get_messages(s1)] == ["one"]


def test_unknown_session_is_still_session_not_found(conv):
    with pytest.raises(SessionNotFound):
        conv.add_message(sid(), "user", "x", id="m1")


def test_deleting_a_session_forgets_its_ids(conv):
    s = sid()
    conv.create_session(s, user_id="u-" + s)
    conv.add_message(s, "user", "old", id="m1")
    conv.delete_session(s)
    conv.create_session(s)
    m = conv.add_message(s, "user", "new", id="m1")
    assert (m.seq, m.content) == (1, "new")
    assert [x.content for x in conv.get_messages(s)] == ["new"]


def test_delete_user_forgets_ids(conv):
    s = sid()
    conv.create_session(s, user_id="gone-" + s)
    conv.add_message(s, "user", "old", id="m1")
    assert conv.delete_user("gone-" + s) == 1
    conv.create_session(s)
    assert conv.add_message(s, "user", "new", id="m1").content == "new"


def test_import_keeps_ids_and_refuses_duplicates(conv):
    s = sid()
    conv.create_session(s)
    conv.add_messages(s, [{"role": "user", "content": "a", "id": "a"}, {"role": "assistant", "content": "b", "id": "b"}])
    data = conv.export_session(s)
    target = sid()
    data["session"]["session_id"] = target
    for m in data["messages"]:
        m["session_id"] = target
    conv.import_session(data)
    assert [m.id for m in conv.get_messages(target)] == ["a", "b"]
    again = conv.add_message(target, "user", "retry", id="b")
    assert (again.seq, again.content) == (2, "b") and conv.count_messages(target) == 2
    assert conv.add_message(target, "user", "c", id="c").seq == 3
    dup = conv.export_session(s)
    dup["session"]["session_id"] = "dup-" + s
    for m in dup["messages"]:
        m["session_id"] = "dup-" + s
        m["id"] = "same"
    with pytest.raises(InputError):
        conv.import_session(dup)
    assert conv.get_session("dup-" + s) is None
    with pytest.raises(SessionExists):
        conv.import_session(data)


def add_same_ids(barrier, url: str, session_id: str, ids: list[str], worker: int) -> list[tuple[str, int]]:
    with open_store(url, "conversations") as store:
        store.get_session(session_id)
        barrier.wait()
        out = []
        for i, message_id in enumerate(ids):
            if i % 3 == 2:  # some in batches, overlapping the single appends
                batch = [{"role": "user", "content": f"w{worker}", "id": x} for x in ids[i - 1 : i + 1]]
                out += [(m.id, m.seq) for m in store.add_messages(session_id, batch)]
            else:
                m = store.add_message(session_id, "user", f"w{worker}", id=message_id)
                out.append((m.id, m.seq))
        return out


def test_processes_adding_the_same_ids_store_each_once(conv, conv_url):
    require(conv, "multi_process")
    s = sid()
    conv.create_session(s)
    ids = [f"turn-{i}" for i in range(40)]
    results = run_workers(add_same_ids, [(conv_url, s, ids, w) for w in range(4)])
    stored = conv.get_messages(s)
    assert sorted(m.id for m in stored) == sorted(ids)
    assert [m.seq for m in stored] == list(range(1, len(ids) + 1))
    assert conv.count_messages(s) == len(ids) == conv.get_session(s).message_count
    by_id = {m.id: m.seq for m in stored}
    for answers in results:  # every process was told the one stored seq of each id
        assert all(by_id[i] == seq for i, seq in answers)


def test_threads_adding_the_same_ids_store_each_once(conv):
    from concurrent.futures import ThreadPoolExecutor

    s = sid()
    conv.create_session(s)
    ids = [f"t-{i}" for i in range(30)]

    def work(worker: int) -> list[tuple[str, int]]:
        return [(m.id, m.seq) for m in (conv.add_message(s, "user", f"w{worker}", id=i) for i in ids)]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(4)))
    stored = conv.get_messages(s)
    assert [m.seq for m in stored] == list(range(1, len(ids) + 1))
    assert sorted(m.id for m in stored) == sorted(ids)
    by_id = {m.id: m.seq for m in stored}
    assert all(by_id[i] == seq for answers in results for i, seq in answers)
