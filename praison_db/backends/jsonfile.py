"""JSON files: the zero-config DefaultSessionStore, and a file-backed StateStore.

URL: ``json:///abs/dir``, ``file:///abs/dir`` or ``json://rel/dir``. Option: ``lock_timeout`` (seconds, default 30).

Layout of a session directory, per session::

    <name>.session.json   the session's header (owner, type, name, metadata); its presence means "exists"
    <name>.jsonl          the messages, one JSON object per line, append-only
    .locks/<name>.lock    the cross-process lock (filelock) taken by every write, delete included

``<name>`` is a readable slug of the id plus a SHA-256 digest of it, so different ids never share files and no
id (``../x``, ``a/b``, very long) can name a path outside the directory. Appends write one line and fsync: O(1) in
the session's length. ``message_count`` and activity are read from the last line, so the header is rewritten only
by ``update_session``. A line torn by a crash is ignored when reading and cut off before the next append: a crash
loses at most the message being written, never the session.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ..base import (
    Capabilities,
    MISSING,
    ConversationStore,
    Option,
    POSITIVE_SECONDS,
    SessionFilter,
    StateStore,
    activity_key,
    incremented,
    missing_session,
    resolve_options,
)
from ..errors import Error, StoreUnavailable
from ..models import Message, MessageDraft, Session, dumps
from ..url import StoreURL

__all__ = ["JsonConversationStore", "JsonStateStore", "DefaultSessionStore", "session_file_stem"]

log = logging.getLogger("praison_db")

_OPTIONS = {"lock_timeout": Option(POSITIVE_SECONDS, 30.0, "seconds to wait for another process's lock")}
# Tails are read backwards a block at a time, small first (most reads need one or two lines), then doubling.
_FIRST_BLOCK, _MAX_BLOCK = 4 * 1024, 1024 * 1024
_SLUG = re.compile(r"[^A-Za-z0-9_.-]")


# File times come from the kernel's coarse clock and may trail the time stamped into the data by a tick (1-10 ms).
_MTIME_SLACK_NS = 50_000_000


def _ns(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1_000


def session_file_stem(session_id: str) -> str:
    """File name stem for a session id: readable, collision-free, and confined to the directory."""
    digest = hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]
    slug = _SLUG.sub("_", session_id)[:48].lstrip(".") or "s"
    return f"{slug}-{digest}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that a reader or a crash sees the old or the new file, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _parse_line(line: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _tail_lines(path: Path, want: int, stop: Any = None, skip: Any = None) -> list[dict[str, Any]]:
    """The last ``want`` complete records of a JSON Lines file, newest first, reading backwards from the end.

    A torn last line (no newline) is skipped. ``stop(record)`` returning True ends the scan early;
    ``skip(record)`` returning True leaves a record out but goes on.
    Cost is proportional to what is read, not to the file's size.
    """
    out: list[dict[str, Any]] = []
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return out
    with f:
        end = f.seek(0, os.SEEK_END)
        pos = end
        carry = b""
        first = True
        block = _FIRST_BLOCK
        while pos > 0 and len(out) < want:
            size = min(block, pos)
            block = min(block * 2, _MAX_BLOCK)
            pos -= size
            f.seek(pos)
            chunk = f.read(size) + carry
            lines = chunk.split(b"\n")
            carry = lines[0] if pos > 0 else b""
            body = lines[1:] if pos > 0 else lines
            if first:
                # Whatever follows the last newline is a torn write (or empty): never a record.
                body = body[:-1]
                first = False
            for raw in reversed(body):
                if not raw:
                    continue
                record = _parse_line(raw)
                if record is None:
                    log.warning("praison_db: skipped an unreadable line in %s", path.name)
                    continue
                if stop is not None and stop(record):
                    return out
                if skip is not None and skip(record):
                    continue
                out.append(record)
                if len(out) >= want:
                    break
    return out


_ID_INDEXES = 256  # sessions whose message ids are kept in memory per store


@dataclass
class _IdIndex:
    """Message id -> (offset, length) of its line, for the first ``offset`` bytes of one messages file."""

    file_id: tuple[int, int]
    offset: int = 0
    tail: bytes = b""  # the last line read: if it is no longer where it was, the file is not the one indexed
    ids: dict[str, tuple[int, int]] = field(default_factory=dict)

    def still_fits(self, f: Any, file_id: tuple[int, int], size: int) -> bool:
        if file_id != self.file_id or size < self.offset:
            return False
        if not self.tail:
            return self.offset == 0
        f.seek(self.offset - len(self.tail))
        return f.read(len(self.tail)) == self.tail


class JsonConversationStore(ConversationStore):
    """The DefaultSessionStore: one append-only JSON Lines file per session, locked across processes."""

    OPTIONS = _OPTIONS
    capabilities = Capabilities(
        transactions=False,
        reason="JSON files have no transactions: a crash in the middle of add_messages may keep a prefix of the batch",
    )

    def __init__(self, directory: str | os.PathLike[str], *, lock_timeout: float = 30.0) -> None:
        self.directory = Path(directory).expanduser()
        self.url = f"json://{self.directory}"
        self._lock_timeout = lock_timeout
        self._locks = self.directory / ".locks"
        self._locks.mkdir(parents=True, exist_ok=True)
        self._lock_objects: dict[Path, FileLock] = {}
        self._id_indexes: dict[Path, _IdIndex] = {}

    @classmethod
    def from_url(cls, url: StoreURL, **options: Any) -> JsonConversationStore:
        opts, _ = resolve_options(f"{url.scheme}://", _OPTIONS, {**url.query, **options})
        return cls(_directory(url), **opts)

    # ---- files ----

    def _paths(self, session_id: str) -> tuple[Path, Path, Path]:
        stem = session_file_stem(session_id)
        return self.directory / f"{stem}.session.json", self.directory / f"{stem}.jsonl", self._locks / f"{stem}.lock"

    @contextmanager
    def _locked(self, lock_path: Path) -> Iterator[None]:
        lock = self._lock_objects.get(lock_path)
        if lock is None:
            # Lock objects are reused (making one costs more than an append's write); the cache stays bounded.
            if len(self._lock_objects) >= 1024:
                self._lock_objects.pop(next(iter(self._lock_objects)))
            lock = self._lock_objects[lock_path] = FileLock(lock_path, timeout=self._lock_timeout)
        try:
            lock.acquire()
        except Timeout:
            raise StoreUnavailable(
                f"another process has held the lock of {lock_path.name} for {self._lock_timeout:g} s; try again"
            ) from None
        try:
            yield
        finally:
            lock.release()

    def _translate_error(self, error: Exception) -> Error | None:
        if isinstance(error, OSError):
            return StoreUnavailable(f"cannot use the session directory {self.directory}: {error.strerror or error}")
        return None

    @staticmethod
    def _read_header(path: Path) -> dict[str, Any] | None:
        try:
            return json.loads(path.read_bytes())
        except FileNotFoundError:
            return None

    def _load(self, header_path: Path, messages_path: Path) -> Session | None:
        header = self._read_header(header_path)
        if header is None:
            return None
        last = _tail_lines(messages_path, 1)
        session = Session.model_validate(header)
        if last:
            updated = max(session.updated_at, datetime.fromisoformat(last[0]["created_at"]))
            session = session.model_copy(update={"message_count": last[0]["seq"], "updated_at": updated})
        return session

    @staticmethod
    def _header_text(session: Session) -> str:
        return json.dumps(session.model_dump(mode="json", exclude={"message_count"}), ensure_ascii=False)

    def _create_files(self, session: Session, messages: list[Message] | None = None) -> None:
        header_path, messages_path, _ = self._paths(session.session_id)
        # The header is written last: it is the commit point. Leftover messages of a half-created or
        # half-deleted session with this id are discarded first.
        with open(messages_path, "wb") as f:
            if messages:
                f.write(b"".join(self._line(m) for m in messages))
            f.flush()
            os.fsync(f.fileno())
        _write_atomic(header_path, self._header_text(session))
        stamped = _ns(max([session.updated_at, *(m.created_at for m in messages[-1:])] if messages else [session.updated_at]))
        if stamped > os.stat(header_path).st_mtime_ns:
            # An import stamped ahead of this machine's clock: keep "activity <= file time", which listing relies on.
            os.utime(header_path, ns=(stamped, stamped))

    @staticmethod
    def _line(message: Message) -> bytes:
        return (dumps(message.model_dump(mode="json")) + "\n").encode("utf-8")

    # ---- sessions ----

    def _insert_session(self, session: Session) -> bool:
        header_path, _, lock_path = self._paths(session.session_id)
        with self._locked(lock_path):
            if header_path.exists():
                return False
            self._create_files(session)
            return True

    def _get_or_insert_session(self, session: Session) -> Session:
        header_path, messages_path, lock_path = self._paths(session.session_id)
        with self._locked(lock_path):
            existing = self._load(header_path, messages_path)
            if existing is not None:
                return existing
            self._create_files(session)
            return session

    def _get_session(self, session_id: str) -> Session | None:
        header_path, messages_path, _ = self._paths(session_id)
        return self._load(header_path, messages_path)

    def _load_stem(self, stem: str) -> Session | None:
        try:
            return self._load(self.directory / f"{stem}.session.json", self.directory / f"{stem}.jsonl")
        except (ValueError, KeyError) as e:
            log.warning("praison_db: skipped unreadable session file %s.session.json: %s", stem, e)
            return None

    def _stems(self) -> list[str]:
        with os.scandir(self.directory) as entries:
            return [e.name[: -len(".session.json")] for e in entries if e.name.endswith(".session.json")]

    def _all_sessions(self) -> Iterator[Session]:
        """Every session, reading only headers and the last line of each messages file."""
        for stem in self._stems():
            session = self._load_stem(stem)
            if session is not None:
                yield session

    def _list_sessions(self, flt: SessionFilter, limit: int, after: tuple[datetime, str] | None) -> list[Session]:
        # Every write to a session touches one of its two files, so a session's activity (updated_at) is no later
        # than the newer of their modification times, give or take the coarse clock of file times (_MTIME_SLACK).
        # Sessions are read in that order, and reading stops once no unread session can beat the page's last one:
        # a page of the newest sessions costs a stat per session plus a read of only those it needs.
        headers: dict[str, int] = {}
        messages: dict[str, int] = {}
        with os.scandir(self.directory) as entries:
            for entry in entries:
                name = entry.name
                if name.endswith(".session.json"):
                    target, stem = headers, name[: -len(".session.json")]
                elif name.endswith(".jsonl"):
                    target, stem = messages, name[: -len(".jsonl")]
                else:
                    continue
                try:
                    target[stem] = entry.stat().st_mtime_ns
                except FileNotFoundError:  # deleted meanwhile
                    continue
        candidates = sorted(((max(t, messages.get(stem, 0)), stem) for stem, t in headers.items()), reverse=True)
        page: list[Session] = []
        for bound_ns, stem in candidates:
            if len(page) >= limit and bound_ns + _MTIME_SLACK_NS < _ns(page[-1].updated_at):
                break
            session = self._load_stem(stem)
            if session is None or not flt.matches(session) or (after is not None and activity_key(session) >= after):
                continue
            page.append(session)
            page.sort(key=activity_key, reverse=True)
            del page[limit:]
        return page

    def _update_session(self, session_id: str, changes: dict[str, Any], now: datetime) -> Session | None:
        header_path, messages_path, lock_path = self._paths(session_id)
        with self._locked(lock_path):
            current = self._load(header_path, messages_path)
            if current is None:
                return None
            updated = current.model_copy(update={**changes, "updated_at": max(now, current.updated_at)})
            _write_atomic(header_path, self._header_text(updated))
            return updated

    def _remove(self, session_id: str, user_id: str | None) -> bool:
        header_path, messages_path, lock_path = self._paths(session_id)
        with self._locked(lock_path):
            header = self._read_header(header_path)
            if header is None or (user_id is not None and header.get("user_id") != user_id):
                return False
            header_path.unlink()  # the session is gone from here on; the messages file is garbage
            messages_path.unlink(missing_ok=True)
            _fsync_dir(self.directory)
            return True

    def _delete_session(self, session_id: str, user_id: str | None) -> bool:
        return self._remove(session_id, user_id)

    def _delete_sessions(self, *, user_id: str | None = None, idle_before: datetime | None = None) -> int:
        count = 0
        for s in list(self._all_sessions()):
            if user_id is not None and s.user_id == user_id:
                count += self._remove(s.session_id, user_id)
            elif idle_before is not None and s.updated_at < idle_before:
                # Re-check under the lock: an append may have made it active since it was read.
                header_path, messages_path, lock_path = self._paths(s.session_id)
                with self._locked(lock_path):
                    fresh = self._load(header_path, messages_path)
                    if fresh is None or fresh.updated_at >= idle_before:
                        continue
                    header_path.unlink()
                    messages_path.unlink(missing_ok=True)
                count += 1
        if count:
            _fsync_dir(self.directory)
        return count

    # ---- messages ----

    def _append(self, session_id: str, drafts: list[MessageDraft], now: datetime) -> list[Message]:
        header_path, messages_path, lock_path = self._paths(session_id)
        with self._locked(lock_path):
            if not header_path.exists():
                raise missing_session(session_id)
            with open(messages_path, "r+b" if messages_path.exists() else "w+b") as f:
                last_seq = self._repair_tail(f)
                index = self._id_index(f, messages_path)
                known = {d.id: self._read_at(f, index.ids[d.id]) for d in drafts if d.id in index.ids}
                fresh = [d for d in drafts if d.id not in known]
                if fresh:
                    stored = [d.stamp(session_id, last_seq + 1 + i, now) for i, d in enumerate(fresh)]
                    lines = [self._line(m) for m in stored]
                    end = f.seek(0, os.SEEK_END)
                    f.write(b"".join(lines))
                    f.flush()
                    os.fsync(f.fileno())
                    # Indexed only once durable: an id never points at a line a failed write may not have left.
                    for m, line in zip(stored, lines):
                        index.ids[m.id] = (end, len(line))
                        end += len(line)
                    index.offset, index.tail = end, lines[-1]
                    known.update((m.id, m) for m in stored)
            return [known[d.id] for d in drafts]  # type: ignore[index]

    def _id_index(self, f: Any, path: Path) -> _IdIndex:
        """The ids in the messages file ``f`` (whose tail is repaired), kept per file and brought up to date by
        reading only what was appended since the last look: O(1) per append in the session's length."""
        st = os.fstat(f.fileno())
        file_id = (st.st_dev, st.st_ino)
        index = self._id_indexes.pop(path, None)
        if index is not None and not index.still_fits(f, file_id, st.st_size):
            index = None  # the file was replaced or cut (deleted and created again): read it afresh
        if index is None:
            index = _IdIndex(file_id)
        if len(self._id_indexes) >= _ID_INDEXES:
            self._id_indexes.pop(next(iter(self._id_indexes)))
        self._id_indexes[path] = index  # most recently used last
        if index.offset < st.st_size:
            f.seek(index.offset)
            data = f.read(st.st_size - index.offset)
            pos = index.offset
            for raw in data.split(b"\n")[:-1]:
                record = _parse_line(raw) if raw else None
                if record is not None and isinstance(record.get("id"), str):
                    index.ids[record["id"]] = (pos, len(raw) + 1)
                pos += len(raw) + 1
            index.offset = pos
            index.tail = data[data.rfind(b"\n", 0, len(data) - 1) + 1 :] if data else index.tail
        return index

    @staticmethod
    def _read_at(f: Any, where: tuple[int, int]) -> Message:
        f.seek(where[0])
        r = json.loads(f.read(where[1]))
        return Message.trusted(**{**r, "created_at": datetime.fromisoformat(r["created_at"])})

    def _repair_tail(self, f: Any) -> int:
        """Cut a torn last line off (a crash mid-write) and return the last stored seq."""
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return 0
        pos = end
        data = b""
        block = _FIRST_BLOCK
        while pos > 0:
            size = min(block, pos)
            block = min(block * 2, _MAX_BLOCK)
            pos -= size
            f.seek(pos)
            data = f.read(size) + data
            # We need the last newline and the one before it, to isolate the last complete line.
            if data.count(b"\n") >= 2 or (pos == 0 and b"\n" in data):
                break
        if not data.endswith(b"\n"):
            cut = data.rfind(b"\n")
            keep = pos + cut + 1 if cut >= 0 else 0
            log.warning("praison_db: removed a torn last line (%d bytes) left by a crash", end - keep)
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
            data = data[: cut + 1] if cut >= 0 else b""
        lines = [line for line in data.split(b"\n") if line]
        if not lines:
            return 0
        record = _parse_line(lines[-1])
        if record is None:  # only possible if the file was edited by hand
            last = _tail_lines(Path(f.name), 1)
            return last[0]["seq"] if last else 0
        return int(record["seq"])

    def _get_messages(self, session_id: str, limit: int | None, before_seq: int | None, after_seq: int | None) -> list[Message]:
        _, messages_path, _ = self._paths(session_id)
        if limit is None:
            records = self._read_all(messages_path)
            records = [
                r for r in records if (before_seq is None or r["seq"] < before_seq) and (after_seq is None or r["seq"] > after_seq)
            ]
        else:
            stop = (lambda r: r["seq"] <= after_seq) if after_seq is not None else None
            skip = (lambda r: r["seq"] >= before_seq) if before_seq is not None else None
            records = _tail_lines(messages_path, limit, stop, skip)
            records.reverse()
        return [Message.trusted(**{**r, "created_at": datetime.fromisoformat(r["created_at"])}) for r in records]

    @staticmethod
    def _read_all(path: Path) -> list[dict[str, Any]]:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return []
        lines = data.split(b"\n")
        lines.pop()  # after the last newline: empty, or a torn write
        out = []
        for raw in lines:
            if raw:
                record = _parse_line(raw)
                if record is not None:
                    out.append(record)
        return out

    def _count_messages(self, session_id: str) -> int:
        header_path, messages_path, _ = self._paths(session_id)
        if not header_path.exists():
            return 0
        last = _tail_lines(messages_path, 1)
        return int(last[0]["seq"]) if last else 0

    def _import(self, session: Session, messages: list[Message]) -> bool:
        header_path, _, lock_path = self._paths(session.session_id)
        with self._locked(lock_path):
            if header_path.exists():
                return False
            self._create_files(session, messages)
            return True


DefaultSessionStore = JsonConversationStore


def _directory(url: StoreURL) -> Path:
    if url.host:  # json://rel/dir
        return Path(url.host + url.path)
    if not url.path or url.path == "/":
        from ..errors import ConfigError

        raise ConfigError(f"{url.scheme}:// needs a directory, e.g. {url.scheme}:///var/lib/agent/sessions")
    return Path(url.path)


class JsonStateStore(StateStore):
    """StateStore in one JSON file, rewritten atomically under a cross-process lock.

    Each write rewrites the file, so it suits the modest state of one agent machine; use Redis, MongoDB or SQL
    for large or busy state.
    """

    OPTIONS = _OPTIONS

    def __init__(self, path: str | os.PathLike[str], *, lock_timeout: float = 30.0) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.url = f"json://{self.path}"
        self._lock = FileLock(f"{self.path}.lock", timeout=lock_timeout)

    @classmethod
    def from_url(cls, url: StoreURL, **options: Any) -> JsonStateStore:
        opts, _ = resolve_options(f"{url.scheme}://", _OPTIONS, {**url.query, **options})
        return cls(_directory(url) / "state.json", **opts)

    def _translate_error(self, error: Exception) -> Error | None:
        if isinstance(error, Timeout):
            return StoreUnavailable(f"another process holds the lock of {self.path.name}; try again")
        if isinstance(error, OSError):
            return StoreUnavailable(f"cannot use the state file {self.path}: {error.strerror or error}")
        return None

    def _read(self) -> dict[str, list[Any]]:
        """key -> [value, expires_at or None], without expired entries."""
        try:
            items = json.loads(self.path.read_bytes())["items"]
        except FileNotFoundError:
            return {}
        now = time.time()
        return {k: v for k, v in items.items() if v[1] is None or v[1] > now}

    def _write(self, items: dict[str, list[Any]]) -> None:
        _write_atomic(self.path, json.dumps({"format": "praison_db.state/v1", "items": items}, ensure_ascii=False))

    def _get_many(self, keys: list[str]) -> dict[str, Any]:
        items = self._read()
        return {k: items[k][0] for k in keys if k in items}

    def _set_many(self, items: dict[str, str], expires_at: float | None) -> None:
        with self._lock:
            current = self._read()
            current.update({k: [json.loads(v), expires_at] for k, v in items.items()})
            self._write(current)

    def _delete(self, key: str) -> bool:
        with self._lock:
            current = self._read()
            if current.pop(key, None) is None:
                return False
            self._write(current)
            return True

    def _incr(self, key: str, amount: int) -> int:
        with self._lock:
            current = self._read()
            value, expires_at = current.get(key, [MISSING, None])
            new = incremented(key, value, amount)
            current[key] = [new, expires_at]
            self._write(current)
            return new

    def _expires_at(self, key: str) -> float | None:
        item = self._read().get(key)
        return item[1] if item else None

    def _expire(self, key: str, expires_at: float | None) -> bool:
        with self._lock:
            current = self._read()
            if key not in current:
                return False
            current[key][1] = expires_at
            self._write(current)
            return True

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        return iter(sorted(k for k in self._read() if k.startswith(prefix)))

    def _clear(self, prefix: str) -> int:
        with self._lock:
            current = self._read()
            doomed = [k for k in current if k.startswith(prefix)]
            if doomed:
                for k in doomed:
                    del current[k]
                self._write(current)
            return len(doomed)
