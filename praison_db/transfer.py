"""Move data between stores: streaming ``export`` to and ``import_`` from JSON Lines, and ``copy`` between two stores.

Everything streams: memory stays flat whatever the number of sessions and messages. Message ids, seqs, created_at
and the sessions' fields arrive exactly as they left. Import and copy are idempotent and resumable: run one again
after an interruption and it finishes, storing every message once (a session resumes after the destination's last
seq). A destination that holds different data under a session id is a conflict: ``on_conflict="fail"`` (default)
raises SessionExists, ``"skip"`` leaves that session alone, ``"replace"`` deletes it there and imports it again.

The file format (``praison_db.export`` version 1) is JSON Lines, UTF-8, gzip-compressed when the name ends in .gz::

    {"format": "praison_db.export", "version": 1, "created_at": "2026-01-01T00:00:00+00:00"}
    {"type": "session", "session": {<Session fields>}}
    {"type": "message", "message": {<Message fields>}}        (after their session, in seq order)
    {"type": "state", "key": "k", "value": <JSON>, "ttl": 12.5}  (seconds left at created_at, or null)
    {"type": "end", "sessions": 1, "messages": 1, "state": 1, "sha256": "<hex digest of every byte before this line>"}

A file whose checksum verifies was written by praison_db and is imported without validating each message again; a
file without a checksum is validated message by message. Either way the whole file is checked before anything is
written, so a truncated or damaged file (InputError naming the line) changes nothing.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal, Union, cast

from .base import ConversationStore, StateStore
from .errors import Error, InputError, IntegrityError, SessionExists
from .models import Message, Session, as_utc, check_id, utcnow

__all__ = ["export", "import_", "copy", "TransferReport", "FORMAT", "VERSION"]

FORMAT = "praison_db.export"
VERSION = 1
OnConflict = Literal["fail", "skip", "replace"]
# progress(phase, done, total): phase is "checking" (reading the file before an import), "messages" or "state".
Progress = Callable[[str, int, Union[int, None]], None]
Target = Union[str, "os.PathLike[str]", IO[bytes]]

_BATCH = 1000
_STATE_BATCH = 500


@dataclass
class TransferReport:
    """What an export, import or copy did."""

    sessions: int = 0  # sessions written (or already complete at the destination)
    messages: int = 0  # messages stored now
    messages_present: int = 0  # messages the destination already held (a resumed or repeated run)
    sessions_skipped: int = 0  # conflicting sessions left alone (on_conflict="skip")
    sessions_replaced: int = 0  # conflicting sessions deleted and imported again (on_conflict="replace")
    state: int = 0  # state keys written
    state_skipped: int = 0  # state keys left alone (conflict skipped, or expired on the way)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- what to move ----


def _stores(obj: Any) -> tuple[ConversationStore, StateStore | None]:
    """(conversations, state) of a PraisonDB, or a bare ConversationStore (no state)."""
    if isinstance(obj, ConversationStore):
        return obj, None
    conversations = getattr(obj, "conversations", None)
    if not isinstance(conversations, ConversationStore):
        raise InputError(f"expected a db(...) object or a ConversationStore, got {type(obj).__name__}")
    state = getattr(obj, "state", None)
    return conversations, state if isinstance(state, StateStore) else None


def _check_when(value: Any, what: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InputError(f"{what} must be a datetime")
    return as_utc(value)


def _selection(
    store: ConversationStore,
    session_ids: Any,
    user_id: str | None,
    agent_id: str | None,
    since: datetime | None,
    before: datetime | None,
) -> Callable[[], Iterator[Session]]:
    """A function that lists the chosen sessions again each time it is called (once to count, once to move)."""
    since, before = _check_when(since, "since"), _check_when(before, "before")
    ids = None
    if session_ids is not None:
        if isinstance(session_ids, str) or not all(isinstance(s, str) for s in session_ids):
            raise InputError("session_ids must be a list of session id strings")
        ids = [check_id(s) for s in dict.fromkeys(session_ids)]

    def wanted(s: Session) -> bool:
        return (
            (user_id is None or s.user_id == user_id)
            and (agent_id is None or s.agent_id == agent_id)
            and (since is None or s.updated_at >= since)
            and (before is None or s.updated_at < before)
        )

    def sessions() -> Iterator[Session]:
        if ids is not None:
            for sid in ids:
                s = store.get_session(sid)
                if s is not None and wanted(s):
                    yield s
            return
        filters = {k: v for k, v in (("user_id", user_id), ("agent_id", agent_id)) if v is not None}
        for s in store.iter_sessions(**filters):
            if wanted(s):
                yield s

    return sessions


def _with_state(state: bool | None, session_ids: Any, user_id: Any, agent_id: Any, since: Any, before: Any) -> bool:
    # State belongs to the whole store: by default it travels only when the whole store does.
    if state is not None:
        return bool(state)
    return session_ids is None and user_id is None and agent_id is None and since is None and before is None


def _iter_state(state: StateStore) -> Iterator[tuple[str, Any, float | None]]:
    """(key, value, seconds left or None) of every live key, read in batches."""

    def batch_out(keys: list[str]) -> Iterator[tuple[str, Any, float | None]]:
        # TTLs first: a key that expires in between is then missing from the values, never exported as permanent.
        ttls = {k: state.ttl(k) for k in keys}
        values = state.get_many(keys)
        for k in keys:
            if k in values:
                yield k, values[k], ttls[k]

    keys: list[str] = []
    for key in state.keys():
        keys.append(key)
        if len(keys) >= _STATE_BATCH:
            yield from batch_out(keys)
            keys = []
    if keys:
        yield from batch_out(keys)


# ---- landing one session at the destination (import and copy) ----


class _Conflict(Exception):
    pass


def _header_conflict(there: Session, session: Session) -> str | None:
    for field in ("user_id", "agent_id", "session_type"):
        if getattr(there, field) != getattr(session, field):
            return f"its {field} is {getattr(there, field)!r}, not {getattr(session, field)!r}"
    return None


def _land(
    dst: ConversationStore,
    session: Session,
    messages: Callable[[], Iterator[Message]],
    on_conflict: OnConflict,
    report: TransferReport,
    tick: Callable[[int], None],
) -> None:
    """Bring one session to the destination, resuming after what it already holds."""
    sid = session.session_id
    replaced = False
    for _ in range(8):  # bounded: each round creates, resumes or replaces the session
        there = dst.get_session(sid)
        if there is None:
            # The header first (no messages): from here on a cut-off run resumes after the last stored seq.
            dst._read_op(dst._import, session.model_copy(update={"message_count": 0}), [])
            continue  # read it back: another process may have created it first
        try:
            reason = _header_conflict(there, session)
            if reason is not None:
                raise _Conflict(reason)
            _feed(dst, session, there, messages(), report, tick)
        except _Conflict as c:
            if on_conflict == "skip":
                report.sessions_skipped += 1
                return
            if on_conflict != "replace" or replaced:
                raise SessionExists(
                    f"session {sid!r} already exists at the destination with different data ({c}); "
                    "pass on_conflict='skip' to keep it or 'replace' to overwrite it (--on-conflict)"
                ) from None
            dst.delete_session(sid)
            replaced = True
            report.sessions_replaced += 1
            continue
        report.sessions += 1
        return
    raise IntegrityError(f"session {sid!r} keeps disappearing at the destination while it is imported; try again")


def _feed(
    dst: ConversationStore, session: Session, there: Session, source: Iterator[Message],
    report: TransferReport, tick: Callable[[int], None],
) -> None:
    sid = session.session_id
    newest = dst.get_messages(sid, limit=1)
    last_seq, last_id = (newest[-1].seq, newest[-1].id) if newest else (0, None)
    matched = last_seq == 0
    batch: list[Message] = []
    for m in source:
        if m.seq <= last_seq:
            if m.seq == last_seq:
                if m.id != last_id:
                    raise _Conflict(f"another message is at seq {m.seq}")
                matched = True
            report.messages_present += 1
            if report.messages_present % _BATCH == 0:
                tick(_BATCH)
            continue
        if not matched:
            raise _Conflict(f"it holds a message at seq {last_seq} that the source does not")
        batch.append(m)
        if len(batch) >= _BATCH:
            _store(dst, sid, batch, session.updated_at, report, tick)
            batch = []
    if not matched:
        raise _Conflict("it holds more messages than the source")
    if batch or there.updated_at < session.updated_at:
        _store(dst, sid, batch, session.updated_at, report, tick)


def _store(dst: ConversationStore, sid: str, batch: list[Message], updated_at: datetime, report: TransferReport, tick: Callable[[int], None]) -> None:
    try:
        stored = dst._read_op(dst._import_messages, sid, batch, updated_at)
    except IntegrityError as e:
        raise _Conflict(str(e)) from None
    report.messages += stored
    report.messages_present += len(batch) - stored
    tick(len(batch))


def _land_state(
    dst: StateStore, items: Iterator[tuple[str, Any, float | None]], on_conflict: OnConflict, report: TransferReport,
    tick: Callable[[int], None],
) -> None:
    def flush(chunk: list[tuple[str, Any, float | None]]) -> None:
        there = dst.get_many([k for k, _, _ in chunk])
        for key, value, ttl in chunk:
            if key in there and there[key] != value:
                if on_conflict == "skip":
                    report.state_skipped += 1
                    continue
                if on_conflict == "fail":
                    raise IntegrityError(
                        f"state key {key!r} already holds a different value at the destination; "
                        "pass on_conflict='skip' to keep it or 'replace' to overwrite it (--on-conflict)"
                    )
            dst.set(key, value, ttl=ttl)
            report.state += 1
        tick(len(chunk))

    chunk: list[tuple[str, Any, float | None]] = []
    for item in items:
        if item[2] is not None and item[2] <= 0:
            report.state_skipped += 1  # expired on the way
            continue
        chunk.append(item)
        if len(chunk) >= _STATE_BATCH:
            flush(chunk)
            chunk = []
    if chunk:
        flush(chunk)


def _check_on_conflict(on_conflict: Any) -> OnConflict:
    if on_conflict not in ("fail", "skip", "replace"):
        raise InputError("on_conflict must be 'fail', 'skip' or 'replace'")
    return on_conflict  # type: ignore[no-any-return]


def _counter(progress: Progress | None, phase: str, total: int | None) -> Callable[..., None]:
    done = 0
    if progress is not None:
        progress(phase, 0, total)

    def tick(n: int, final: bool = False) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(phase, done, done if final and total is None else total)

    return tick


# ---- copy ----


def copy(
    source: Any,
    destination: Any,
    *,
    session_ids: list[str] | None = None,
    user_id: str | None = None,
    agent_id: str | None = None,
    since: datetime | None = None,
    before: datetime | None = None,
    state: bool | None = None,
    on_conflict: OnConflict = "fail",
    progress: Progress | None = None,
) -> TransferReport:
    """Copy sessions, their messages and state from one store to another, streaming.

    Args:
        source, destination: ``db(...)`` objects (or ConversationStores, which carry no state).
        session_ids, user_id, agent_id, since, before: copy only these sessions (``since``/``before`` compare
            with ``updated_at``; all given filters apply).
        state: copy the state store too, TTLs preserved; default: only when no session filter is given.
        on_conflict: what to do with a session the destination holds with different data: "fail", "skip",
            "replace".
        progress: called as ``progress(phase, done, total)`` while it runs.

    Returns:
        A TransferReport. Running the same copy again stores nothing new.

    Raises:
        SessionExists: a conflict with ``on_conflict="fail"``; IntegrityError: a conflicting state key.
    """
    started = time.monotonic()
    on_conflict = _check_on_conflict(on_conflict)
    src, src_state = _stores(source)
    dst, dst_state = _stores(destination)
    sessions = _selection(src, session_ids, user_id, agent_id, since, before)
    report = TransferReport()
    tick = _counter(progress, "messages", sum(s.message_count for s in sessions()))
    for s in sessions():
        _land(dst, s, functools.partial(src.iter_messages, s.session_id, batch_size=_BATCH), on_conflict, report, tick)
    if _with_state(state, session_ids, user_id, agent_id, since, before) and src_state is not None and dst_state is not None:
        state_tick = _counter(progress, "state", None)
        _land_state(dst_state, _iter_state(src_state), on_conflict, report, state_tick)
        state_tick(0, final=True)
    report.seconds = round(time.monotonic() - started, 3)
    return report


# ---- export ----


class _HashingWriter:
    """Writes lines to a binary file and keeps the SHA-256 of everything written."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.sha = hashlib.sha256()

    def line(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        self.sha.update(data)
        self.f.write(data)


def export(
    source: Any,
    destination: Target,
    *,
    session_ids: list[str] | None = None,
    user_id: str | None = None,
    agent_id: str | None = None,
    since: datetime | None = None,
    before: datetime | None = None,
    state: bool | None = None,
    progress: Progress | None = None,
) -> TransferReport:
    """Write sessions, messages and state to a JSON Lines export (see the module docstring for the format).

    Args:
        source: a ``db(...)`` object (or a ConversationStore).
        destination: a path (gzip-compressed when it ends in ``.gz``; written to a temporary name and renamed when
            complete) or a binary file object, which is left open.
        session_ids, user_id, agent_id, since, before, state, progress: as for :func:`copy`.

    Returns:
        A TransferReport of what was written.
    """
    started = time.monotonic()
    src, src_state = _stores(source)
    sessions = _selection(src, session_ids, user_id, agent_id, since, before)
    report = TransferReport()
    if isinstance(destination, (str, os.PathLike)):
        path = Path(destination)
        partial = path.with_name(path.name + ".partial")
        try:
            with open(partial, "wb") as raw:
                f: IO[bytes] = cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="wb", mtime=0)) if path.name.endswith(".gz") else raw
                try:
                    _write(src, src_state, sessions, f, report, progress, _with_state(state, session_ids, user_id, agent_id, since, before))
                finally:
                    if f is not raw:
                        f.close()
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    else:
        _write(src, src_state, sessions, destination, report, progress, _with_state(state, session_ids, user_id, agent_id, since, before))
        destination.flush()
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _write(
    src: ConversationStore, src_state: StateStore | None, sessions: Callable[[], Iterator[Session]], f: IO[bytes],
    report: TransferReport, progress: Progress | None, with_state: bool,
) -> None:
    w = _HashingWriter(f)
    w.line({"format": FORMAT, "version": VERSION, "created_at": utcnow().isoformat()})
    tick = _counter(progress, "messages", sum(s.message_count for s in sessions()))
    for s in sessions():
        w.line({"type": "session", "session": s.model_dump(mode="json")})
        report.sessions += 1
        n = 0
        for m in src.iter_messages(s.session_id, batch_size=_BATCH):
            w.line({"type": "message", "message": m.model_dump(mode="json")})
            n += 1
            if n % _BATCH == 0:
                tick(_BATCH)
        tick(n % _BATCH)
        report.messages += n
    if with_state and src_state is not None:
        state_tick = _counter(progress, "state", None)
        for key, value, ttl in _iter_state(src_state):
            w.line({"type": "state", "key": key, "value": value, "ttl": ttl})
            report.state += 1
            state_tick(1)
        state_tick(0, final=True)
    end = {"type": "end", "sessions": report.sessions, "messages": report.messages, "state": report.state}
    data = json.dumps({**end, "sha256": w.sha.hexdigest()}, separators=(",", ":")) + "\n"
    f.write(data.encode("utf-8"))


# ---- import ----


class _Reader:
    """Numbered lines of an export file, with positions to come back to (a session replaced on conflict)."""

    def __init__(self, f: IO[bytes], name: str) -> None:
        self.f = f
        self.name = name
        self.number = 0
        self.pending: tuple[int, bytes] | None = None

    def fail(self, number: int, what: str) -> InputError:
        return InputError(f"{self.name} line {number}: {what}")

    def next(self) -> tuple[int, bytes] | None:
        if self.pending is not None:
            item, self.pending = self.pending, None
            return item
        try:
            raw = self.f.readline()
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise self.fail(self.number + 1, f"the file is damaged ({e})") from None
        if not raw:
            return None
        self.number += 1
        return self.number, raw

    def mark(self) -> tuple[int, int]:
        return self.f.tell(), self.number

    def rewind(self, mark: tuple[int, int]) -> None:
        self.f.seek(mark[0])
        self.number = mark[1]
        self.pending = None

    def record(self, number: int, raw: bytes) -> dict[str, Any]:
        if not raw.endswith(b"\n"):
            raise self.fail(number, "the line is cut off: the file is truncated")
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            raise self.fail(number, "not valid JSON: the file is damaged") from None
        if not isinstance(value, dict):
            raise self.fail(number, "not a JSON object: the file is damaged")
        return value


def _parse_session(reader: _Reader, number: int, record: dict[str, Any]) -> Session:
    try:
        session = Session.model_validate(record["session"])
        check_id(session.session_id)
    except (Error, KeyError, TypeError, ValueError) as e:
        raise reader.fail(number, f"not a valid session: {str(e).splitlines()[0]}") from None
    return session


def _parse_message(reader: _Reader, number: int, record: dict[str, Any], trusted: bool) -> Message:
    data: Any = record.get("message")
    if trusted:
        return Message.trusted(**{**data, "created_at": as_utc(datetime.fromisoformat(data["created_at"]))})  # type: ignore[index]
    try:
        message = Message.model_validate(data)
        check_id(message.id, "message id")
    except (Error, KeyError, TypeError, ValueError) as e:
        raise reader.fail(number, f"not a valid message: {str(e).splitlines()[0]}") from None
    return message


def _check_header(reader: _Reader, number: int, record: dict[str, Any]) -> datetime:
    if record.get("format") != FORMAT:
        raise reader.fail(number, f"not a praison_db export (the first line must name the format {FORMAT!r})")
    version = record.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
        raise reader.fail(number, f"written by a newer praison-db (format version {version}; this one reads {VERSION}): upgrade praison-db")
    if version != VERSION:
        raise reader.fail(number, f"unsupported format version {version!r} (this praison-db reads version {VERSION})")
    try:
        return as_utc(datetime.fromisoformat(record["created_at"]))
    except (KeyError, TypeError, ValueError):
        raise reader.fail(number, "the first line has no valid created_at") from None


def _check(reader: _Reader, progress: Progress | None) -> tuple[bool, datetime, dict[str, int]]:
    """Read the whole file once: its structure, the final line's counts and checksum. (trusted, created_at, counts).

    A file without a checksum is validated message by message here, so that the import itself cannot fail half way.
    """
    sha = hashlib.sha256()
    first = reader.next()
    if first is None:
        raise reader.fail(1, "the file is empty")
    created_at = _check_header(reader, first[0], reader.record(*first))
    sha.update(first[1])
    counts = {"sessions": 0, "messages": 0, "state": 0}
    tick = _counter(progress, "checking", None)
    session_id: str | None = None
    seq = 0
    while True:
        item = reader.next()
        if item is None:
            raise reader.fail(reader.number, "the file ends without its final line: it is truncated")
        number, raw = item
        record = reader.record(number, raw)
        kind = record.get("type")
        if kind == "end":
            if reader.next() is not None:
                raise reader.fail(number + 1, "there is data after the final line")
            for name, n in counts.items():
                if record.get(name) != n:
                    raise reader.fail(number, f"the final line counts {record.get(name)!r} {name}, the file holds {n}: it is damaged")
            digest = record.get("sha256")
            if digest is not None and digest != sha.hexdigest():
                raise reader.fail(number, "checksum mismatch: the file was changed or damaged after it was written")
            return digest is not None, created_at, counts
        sha.update(raw)
        if kind == "session":
            session_id = _parse_session(reader, number, record).session_id
            seq = 0
            counts["sessions"] += 1
        elif kind == "message":
            m = record.get("message")
            if not isinstance(m, dict) or session_id is None or m.get("session_id") != session_id:
                raise reader.fail(number, "a message that does not follow its session: the file is damaged")
            s = m.get("seq")
            if not isinstance(s, int) or isinstance(s, bool) or s <= seq:
                raise reader.fail(number, "message seqs must be integers increasing within their session")
            seq = s
            counts["messages"] += 1
            if counts["messages"] % _BATCH == 0:
                tick(_BATCH)
        elif kind == "state":
            if not isinstance(record.get("key"), str) or "value" not in record:
                raise reader.fail(number, "a state line needs a key and a value")
            ttl = record.get("ttl")
            if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float))):
                raise reader.fail(number, "a state ttl must be a number of seconds or null")
            session_id = None
            counts["state"] += 1
        else:
            raise reader.fail(number, f"unknown line type {kind!r}")


def _validate_all(reader: _Reader) -> None:
    """Validate every session and message of a file without a checksum (its structure is already checked)."""
    while (item := reader.next()) is not None:
        record = reader.record(*item)
        if record.get("type") == "session":
            _parse_session(reader, item[0], record)
        elif record.get("type") == "message":
            _parse_message(reader, item[0], record, trusted=False)


def import_(
    destination: Any,
    source: Target,
    *,
    on_conflict: OnConflict = "fail",
    progress: Progress | None = None,
) -> TransferReport:
    """Import an export file into a store: every session, message and state key in it.

    Args:
        destination: a ``db(...)`` object (or a ConversationStore; state lines are then ignored).
        source: a path (gzip detected from the content), ``"-"`` for standard input, or a binary file object.
        on_conflict: "fail", "skip" or "replace" (see the module docstring).
        progress: called as ``progress(phase, done, total)``.

    Returns:
        A TransferReport. Importing a file again stores nothing new; an import cut off half way finishes when run
        again.

    Raises:
        InputError: the file is not a complete, undamaged export of a supported version (names the line).
        SessionExists, IntegrityError: a conflict with ``on_conflict="fail"``.
    """
    started = time.monotonic()
    on_conflict = _check_on_conflict(on_conflict)
    dst, dst_state = _stores(destination)
    with _open_source(source) as (f, name):
        reader = _Reader(f, name)
        trusted, created_at, counts = _check(reader, progress)
        if not trusted:
            reader.rewind((0, 0))
            _validate_all(reader)
        reader.rewind((0, 0))
        reader.next()  # the first line, checked
        report = TransferReport()
        tick = _counter(progress, "messages", counts["messages"])
        state_items: list[tuple[str, Any, float | None]] = []
        elapsed = max(0.0, (utcnow() - created_at).total_seconds())
        while (item := reader.next()) is not None:
            number, raw = item
            record = reader.record(number, raw)
            kind = record["type"]
            if kind == "session":
                session = _parse_session(reader, number, record)
                start = reader.mark()
                _land(dst, session, functools.partial(_file_messages, reader, start, trusted), on_conflict, report, tick)
                _skip_messages(reader)
            elif kind == "state" and dst_state is not None:
                ttl = record.get("ttl")
                state_items.append((record["key"], record["value"], None if ttl is None else ttl - elapsed))
                if len(state_items) >= _STATE_BATCH:
                    _land_state(dst_state, iter(state_items), on_conflict, report, lambda n: None)
                    state_items = []
        if state_items and dst_state is not None:
            _land_state(dst_state, iter(state_items), on_conflict, report, lambda n: None)
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _file_messages(reader: _Reader, start: tuple[int, int], trusted: bool) -> Iterator[Message]:
    reader.rewind(start)
    while (item := reader.next()) is not None:
        record = reader.record(*item)
        if record.get("type") != "message":
            reader.pending = item
            return
        yield _parse_message(reader, item[0], record, trusted)


def _skip_messages(reader: _Reader) -> None:
    """Move past the rest of a session's messages (a session skipped on conflict stops reading early)."""
    while (item := reader.next()) is not None:
        if b'"type":"message"' not in item[1][:40] and reader.record(*item).get("type") != "message":
            reader.pending = item
            return


class _open_source:
    """The export file as a seekable binary stream: a path (gzip detected), '-' (standard input, spooled), or a file."""

    def __init__(self, source: Target) -> None:
        self.source = source
        self.closing: list[Any] = []

    def __enter__(self) -> tuple[IO[bytes], str]:
        src = self.source
        if isinstance(src, (str, os.PathLike)) and os.fspath(src) == "-":
            # Standard input is read twice (checked, then imported): keep a copy in a temporary file.
            spool = tempfile.TemporaryFile()
            self.closing.append(spool)
            shutil.copyfileobj(sys.stdin.buffer, spool, 1 << 20)
            spool.seek(0)
            raw: IO[bytes] = spool
            name = "<stdin>"
        elif isinstance(src, (str, os.PathLike)):
            try:
                raw = open(src, "rb")
            except OSError as e:
                raise InputError(f"cannot read {os.fspath(src)}: {e.strerror or e}") from None
            self.closing.append(raw)
            name = os.fspath(src)
        else:
            raw = src
            name = getattr(src, "name", None) or "<file>"
            if not raw.seekable():
                spool = tempfile.TemporaryFile()
                self.closing.append(spool)
                shutil.copyfileobj(raw, spool, 1 << 20)
                spool.seek(0)
                raw = spool
        start = raw.tell()
        magic = raw.read(2)
        raw.seek(start)
        if magic == b"\x1f\x8b":
            unzipped = gzip.GzipFile(fileobj=raw, mode="rb")
            self.closing.append(unzipped)
            return unzipped, name  # type: ignore[return-value]
        return raw, name

    def __exit__(self, *exc: object) -> None:
        for f in reversed(self.closing):
            f.close()
