"""JSON files: message ids are checked without reading the whole session on every append, and crashes or other
writers never leave an id pointing at the wrong line."""

from __future__ import annotations

import pytest

from praison_db.backends import jsonfile
from praison_db.backends.jsonfile import JsonConversationStore, session_file_stem


@pytest.fixture
def directory(tmp_path):
    return tmp_path / "sessions"


def count_parses(monkeypatch) -> list[bytes]:
    parsed: list[bytes] = []
    real = jsonfile._parse_line
    monkeypatch.setattr(jsonfile, "_parse_line", lambda line: parsed.append(line) or real(line))
    return parsed


def test_appends_read_only_what_is_new(directory, monkeypatch):
    with JsonConversationStore(directory) as writer:
        writer.create_session("big")
        writer.add_messages("big", [{"role": "user", "content": f"m{i}", "id": f"id-{i}"} for i in range(2000)])
    with JsonConversationStore(directory) as store, JsonConversationStore(directory) as other:
        assert store.add_message("big", "user", "retry", id="id-1500").seq == 1501  # a new store reads the file once
        parsed = count_parses(monkeypatch)
        for i in range(20):
            assert store.add_message("big", "user", f"n{i}", id=f"new-{i}").seq == 2001 + i
        assert len(parsed) <= 20 * 2  # the last line (tail repair), never the 2000 older ones
        # Another writer's appends are read from where this store stopped: its ids are known here too.
        other.add_message("big", "user", "from other", id="other-1")
        parsed.clear()
        again = store.add_message("big", "user", "retry", id="other-1")
        assert (again.seq, again.content) == (2021, "from other") and len(parsed) <= 3
        assert store.count_messages("big") == 2021


def test_a_torn_line_never_counts_as_a_stored_id(directory):
    with JsonConversationStore(directory) as store:
        store.create_session("crash")
        store.add_message("crash", "user", "one", id="a")
        path = directory / f"{session_file_stem('crash')}.jsonl"
        with open(path, "ab") as f:  # a crash in the middle of writing message "b"
            f.write(b'{"id":"b","session_id":"crash","seq":2,"role":"user","cont')
        m = store.add_message("crash", "user", "two", id="b")
        assert (m.seq, m.content) == (2, "two")
        assert [(x.id, x.content) for x in store.get_messages("crash")] == [("a", "one"), ("b", "two")]
        assert store.add_message("crash", "user", "retry", id="b").content == "two"


def test_a_session_deleted_and_created_elsewhere_is_read_afresh(directory):
    with JsonConversationStore(directory) as store, JsonConversationStore(directory) as other:
        store.create_session("s")
        store.add_message("s", "user", "first life", id="m1")
        store.add_message("s", "user", "first life 2", id="m2")
        other.delete_session("s")
        other.create_session("s")
        other.add_message("s", "user", "second life", id="m2")
        assert store.add_message("s", "user", "retry", id="m2").content == "second life"
        m = store.add_message("s", "user", "new", id="m1")
        assert (m.seq, m.content) == (2, "new")
