"""iter_messages streams a session in seq order, in windows; _import_messages lands numbered messages exactly."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from praison_db import InputError, IntegrityError, Message, SessionNotFound
from praison_db.models import utcnow


def sid() -> str:
    return "s-" + uuid.uuid4().hex[:12]


def fill(conv, s: str, n: int) -> list[Message]:
    conv.create_session(s)
    return conv.add_messages(s, [{"role": "user" if i % 2 else "assistant", "content": f"m{i}"} for i in range(n)])


@pytest.mark.parametrize("batch_size", [1, 3, 7, 500])
def test_streams_every_message_once_in_seq_order(conv, batch_size):
    s = sid()
    stored = fill(conv, s, 23)
    streamed = list(conv.iter_messages(s, batch_size=batch_size))
    assert streamed == stored
    assert [m.seq for m in streamed] == list(range(1, 24))


def test_after_seq_resumes_and_other_sessions_untouched(conv):
    s, other = sid(), sid()
    fill(conv, s, 10)
    fill(conv, other, 4)
    assert [m.seq for m in conv.iter_messages(s, after_seq=7, batch_size=2)] == [8, 9, 10]
    assert list(conv.iter_messages(s, after_seq=10)) == []
    assert all(m.session_id == s for m in conv.iter_messages(s))


def test_missing_or_empty_session_yields_nothing(conv):
    assert list(conv.iter_messages(sid())) == []
    s = sid()
    conv.create_session(s)
    assert list(conv.iter_messages(s)) == []


def test_messages_appended_while_streaming_are_not_included(conv):
    s = sid()
    fill(conv, s, 5)
    stream = conv.iter_messages(s, batch_size=2)
    first = next(stream)
    conv.add_message(s, "user", "late")
    assert [first.seq] + [m.seq for m in stream] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"batch_size": 10001}, {"batch_size": "5"}, {"after_seq": "1"}])
def test_bad_arguments_are_input_errors(conv, bad):
    with pytest.raises(InputError):
        conv.iter_messages(sid(), **bad)


def numbered(s: str, seqs: list[int], start: datetime) -> list[Message]:
    return [
        Message(id=f"id-{q}", session_id=s, seq=q, role="user", content=f"c{q}", metadata={"q": q}, created_at=start + timedelta(seconds=q))
        for q in seqs
    ]


def test_import_messages_keeps_seq_id_created_at_and_is_idempotent(conv):
    s = sid()
    conv.create_session(s)
    start = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
    later = utcnow() + timedelta(days=1)
    batch = numbered(s, [1, 2, 3], start)
    assert conv._import_messages(s, batch, later) == 3
    assert conv._import_messages(s, batch, later) == 0  # the same ids again: nothing stored
    assert conv._import_messages(s, numbered(s, [3, 4], start), later) == 1
    got = conv.get_messages(s)
    assert got == numbered(s, [1, 2, 3, 4], start)
    assert list(conv.iter_messages(s, batch_size=3)) == got
    session = conv.get_session(s)
    assert session.message_count == 4 and session.updated_at == later
    assert conv.add_message(s, "user", "next").seq == 5


def test_import_messages_refuses_a_taken_seq_and_stores_nothing(conv):
    s = sid()
    fill(conv, s, 2)
    with pytest.raises(IntegrityError):
        conv._import_messages(s, numbered(s, [3, 2], utcnow()), utcnow())
    assert [m.seq for m in conv.get_messages(s)] == [1, 2]
    assert conv.count_messages(s) == 2


def test_import_messages_to_a_missing_session(conv):
    with pytest.raises(SessionNotFound):
        conv._import_messages(sid(), numbered("x", [1], utcnow()), utcnow())
