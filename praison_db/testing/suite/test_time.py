"""Time on every backend: ``updated_at`` never moves backwards, and a session dated in the future is listed once.

An imported session keeps its exported ``updated_at``, which can lie ahead of this machine's clock (an export from a
machine whose clock runs fast, or data from another time zone written as naive local time). Activity after that must
not move the session back in time: not on an append, not on an update.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from praison_db.base import EXPORT_FORMAT


def _future_export(session_id: str, ahead: timedelta, messages: int = 1) -> dict:
    stamp = datetime.now(timezone.utc) + ahead
    return {
        "format": EXPORT_FORMAT,
        "session": {
            "session_id": session_id,
            "user_id": "time-traveller",
            "session_type": "agent",
            "metadata": {},
            "created_at": stamp.isoformat(),
            "updated_at": stamp.isoformat(),
            "message_count": messages,
        },
        "messages": [
            {
                "id": uuid.uuid4().hex,
                "session_id": session_id,
                "seq": i,
                "role": "user",
                "content": f"from the future {i}",
                "created_at": stamp.isoformat(),
            }
            for i in range(1, messages + 1)
        ],
    }


def test_updated_at_never_moves_back_after_a_future_import(conv):
    data = _future_export("ahead", timedelta(days=1))
    imported = conv.import_session(data).updated_at
    assert imported > datetime.now(timezone.utc) + timedelta(hours=23)
    seen = [conv.get_session("ahead").updated_at]
    assert seen[0] == imported

    conv.add_message("ahead", "user", "now")
    seen.append(conv.get_session("ahead").updated_at)
    updated = conv.update_session("ahead", name="renamed", metadata={"k": 1})
    seen.append(updated.updated_at)
    seen.append(conv.get_session("ahead").updated_at)
    conv.add_messages("ahead", [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    seen.append(conv.get_session("ahead").updated_at)
    seen.append(conv.update_session("ahead", name="again").updated_at)
    seen.append(conv.update_session("ahead", name="again").updated_at)  # nothing changes but the clock
    seen.append(conv.update_session("ahead").updated_at)

    assert all(stamp >= imported for stamp in seen), seen
    assert seen == sorted(seen), seen
    after = conv.get_session("ahead")
    assert (after.name, after.metadata, after.message_count) == ("again", {"k": 1}, 4)
    assert [m.seq for m in conv.get_messages("ahead")] == [1, 2, 3, 4]
    # Still the most recently active session: a session touched now does not overtake it.
    conv.create_session("present")
    conv.add_message("present", "user", "hello")
    assert [s.session_id for s in conv.list_sessions(limit=2).items] == ["ahead", "present"]


def test_updated_at_is_monotonic_on_a_session_in_the_present(conv):
    conv.create_session("now")
    stamps = [conv.get_session("now").updated_at]
    for i in range(5):
        conv.add_message("now", "user", str(i))
        stamps.append(conv.get_session("now").updated_at)
        stamps.append(conv.update_session("now", name=str(i)).updated_at)
    assert stamps == sorted(stamps)


def test_prune_keeps_a_future_dated_session(conv):
    conv.import_session(_future_export("later", timedelta(days=1)))
    conv.add_message("later", "user", "x")
    assert conv.prune(older_than=timedelta(0)) == 0
    assert conv.get_session("later") is not None and conv.count_messages("later") == 2


@pytest.mark.parametrize("then", ["nothing", "append", "update"])
@pytest.mark.parametrize("page_size", [1, 2, 3])
def test_a_future_dated_session_is_listed_once_across_pages(conv, conv_backend, page_size, then):
    conv.import_session(_future_export("future", timedelta(days=1)))
    for i in range(4):
        conv.create_session(f"normal-{i}")
        conv.add_message(f"normal-{i}", "user", "x")
    if then == "append":
        conv.add_message("future", "user", "after import")
    elif then == "update":
        conv.update_session("future", name="touched")

    listed: list[str] = []
    cursor = None
    for _ in range(20):  # 5 sessions: at most 5 pages, bounded in case a cursor never ends
        page = conv.list_sessions(limit=page_size, cursor=cursor)
        assert len(page.items) <= page_size
        listed += [s.session_id for s in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert cursor is None
    assert listed[0] == "future" and listed.count("future") == 1
    assert sorted(listed) == sorted(["future", *(f"normal-{i}" for i in range(4))])
    assert listed[1:] == [f"normal-{i}" for i in reversed(range(4))]
