"""The state store of the file backends (JSON, YAML): one file of records, appended under a cross-process lock and
read without one; the format is a :class:`~praison_db.backends.filestore.Codec`.

Layout of the state file (``state.json``, ``state.yaml``): a sequence of the codec's records, each ended by its
terminator. The first is a snapshot, ``{"format": "praison_db.state/v2", "items": {key: [value, expiry or null]}}``;
each after it is one change, applied in order:

    {"set": {key: [value, expiry], ...}}   set, set_many (one record: all of it or none) and incr (its new value)
    {"delete": [key]}                       delete
    {"expire": {key: expiry}}               expire (a new expiry, or null for none)
    {"clear": prefix}                       clear: every key starting with prefix

The protocol:

- Every write takes the lock file ``<state file>.lock`` (filelock), reads what other processes appended since its
  last read, decides, appends one record and fsyncs before it returns: a set costs one small write and one fsync,
  whatever the number of keys. Bytes after the last terminator are a record torn by a crash: readers ignore them and
  the next write cuts them off before it appends, so a crash loses at most the record being written, never part of
  one (``set_many`` is one record).
- When the records after the snapshot outgrow it (and ``_COMPACT_AT``), the write that would append compacts instead:
  it writes the whole state, its own change included, as a new file holding one snapshot and moves it over the old
  one (``write_private``: a temporary file, fsync, rename, fsync the folder). A crash before the rename leaves the old
  file (with every record), after it the new one: both hold the same state, so nothing is lost at any point. Records
  are only ever appended to the file the path names, under the lock, so the old file is complete when it is replaced.
- Readers take no lock. A store keeps the state it parsed, the file it read it from held open, and how far it read
  (the end of its last complete record). A read ``lstat``s the path: the same inode and size means nothing changed
  (the inode cannot be reused while the file is held open); the same inode and a larger size, it parses only the new
  complete records; another inode (a compaction, or a file put there by hand), it parses the new file from the
  start. A reader that read the old file just before a compaction saw a complete, older state, and its next read
  finds the new inode: it never misses a record, and never sees half a change.

A file of the previous version (one document ``{"format": "praison_db.state/v1", "items": {...}}``) is read as
it is, and the first write replaces it with a snapshot in this layout. A file that cannot be read as either (not the
format, a record that is not a change) raises IntegrityError naming the file; ``damaged_files()`` (``praison-db
doctor``) reports it, and writes refuse to touch it.
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar, TypeVar

from filelock import Timeout

from ..base import MISSING, StateStore, incremented, resolve_options
from ..errors import Error, IntegrityError, StoreUnavailable
from ..files import LockFiles, damage_of, is_link, make_private_dir, marked, open_private, unsafe, write_private
from ..url import StoreURL
from .filestore import OPTIONS, Codec, _directory

__all__ = ["FileStateStore"]

T = TypeVar("T")

_FORMAT = "praison_db.state/v2"  # the previous version's files are one document of format praison_db.state/v1
# Records after the snapshot may grow to the snapshot's size, and at least this, before a write compacts them: each
# byte of snapshot written is paid for by as many bytes appended, and a small state is not rewritten every few sets.
_COMPACT_AT = 64 * 1024
# Appends open the file as it is, never create it (a missing file gets a snapshot) nor follow a link.
_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)

Items = dict[str, list[Any]]
Change = tuple[str, Any]  # ("set" | "delete" | "expire" | "clear", its argument)


def _is_item(value: Any) -> bool:
    if not isinstance(value, list) or len(value) != 2:
        return False
    expires = value[1]
    return expires is None or (isinstance(expires, (int, float)) and not isinstance(expires, bool))


def _is_expiry(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _change(record: Any) -> Change | None:
    """The change a record holds, None when it is not one."""
    if not isinstance(record, dict) or len(record) != 1:
        return None
    ((op, arg),) = record.items()
    if op == "set":
        ok = isinstance(arg, dict) and all(_is_item(v) for v in arg.values())
    elif op == "delete":
        ok = isinstance(arg, list) and all(isinstance(k, str) for k in arg)
    elif op == "expire":
        ok = isinstance(arg, dict) and all(_is_expiry(v) for v in arg.values())
    else:
        ok = op == "clear" and isinstance(arg, str)
    return (op, arg) if ok else None


def _apply(items: Items, change: Change) -> None:
    """Apply one change to ``items``; the pairs in ``items`` are replaced, never changed (readers share them)."""
    op, arg = change
    if op == "set":
        items.update(arg)
    elif op == "delete":
        for key in arg:
            items.pop(key, None)
    elif op == "expire":
        for key, expires_at in arg.items():
            item = items.get(key)
            if item is not None:
                items[key] = [item[0], expires_at]
    elif not arg:
        items.clear()
    else:
        for key in [k for k in items if k.startswith(arg)]:
            del items[key]


def _alive(item: list[Any] | None, now: float) -> bool:
    return item is not None and (item[1] is None or item[1] > now)


def _live(items: Items, now: float) -> Items:
    return {k: v for k, v in items.items() if v[1] is None or v[1] > now}


@dataclass
class _View:
    """What a store last read of the state file: the file, held open so that its inode is not reused; where its last
    complete record ends; the state there."""

    file: IO[bytes]
    ino: int
    dev: int
    end: int
    items: Items
    log: bool  # a file of records; False for a file of the previous version (the next write replaces it)
    snapshot: int  # the size of the snapshot record
    records: int  # complete records read, for damage reports


class _Replaced(Exception):
    """The state file changed outside the lock between a write's read and its append: read it again."""


class FileStateStore(StateStore):
    """StateStore in one file of records, appended under a cross-process lock; the format is the subclass's ``codec``.

    A write appends one record and fsyncs: its cost does not grow with the number of keys (the file is compacted
    now and then, its cost spread over the writes that grew it). Reads keep the parsed state and read only what other
    stores appended since (one ``lstat`` per read when nothing changed). It suits the state of one agent machine;
    use Redis, MongoDB or SQL for state shared between machines.
    """

    OPTIONS = OPTIONS
    codec: ClassVar[Codec]

    def __init__(self, path: str | os.PathLike[str], *, lock_timeout: float = 30.0) -> None:
        self.path = Path(path).expanduser()
        make_private_dir(self.path.parent, own=False)
        self.url = f"{self.codec.scheme}://{self.path}"
        self._lock_path = Path(f"{self.path}.lock")
        self._lock_timeout = lock_timeout
        # The lock file stays open between writes (the same flock as filelock's FileLock, which other processes may
        # hold): opening it and taking a FileLock cost more than the append itself.
        self._locks = LockFiles(self.path.parent, lock_timeout)
        self._view: _View | None = None
        # Threads of one process share the view: reads and the view's updates take this (never across I/O waits
        # longer than a read of the file; a write's fsync runs outside it).
        self._mutex = threading.Lock()

    def _locked(self) -> Any:
        return self._locks.hold(os.fspath(self._lock_path))

    @classmethod
    def from_url(cls, url: StoreURL, **options: Any) -> Any:
        opts, _ = resolve_options(f"{url.scheme}://", OPTIONS, {**url.query, **options})
        return cls(_directory(url) / cls.codec.state_name, **opts)

    def _translate_error(self, error: Exception) -> Error | None:
        if isinstance(error, Timeout):
            return StoreUnavailable(f"another process holds the lock of {self.path.name}; try again")
        if isinstance(error, OSError):
            return StoreUnavailable(f"cannot use the state file {self.path}: {error.strerror or error}")
        return None

    def _close(self) -> None:
        with self._mutex:
            self._forget()
        self._locks.close()

    # ---- reading ----

    def _forget(self) -> None:
        if self._view is not None:
            self._view.file.close()
            self._view = None

    def _current(self) -> _View | None:
        """The view of the file as it is now (None: no file); call with the mutex held."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            self._forget()
            return None
        view = self._view
        if view is not None and st.st_ino == view.ino and st.st_dev == view.dev:
            if st.st_size == view.end:
                return view
            if view.log and st.st_size > view.end and self._catch_up(view, st.st_size):
                return view
        return self._load()

    def _catch_up(self, view: _View, size: int) -> bool:
        """Apply the complete records appended since ``view.end``; False when the file was not appended to (it was
        changed in place: it is read again from the start)."""
        width = len(self.codec.terminator)
        data = _read_at(view.file, size - view.end + width, view.end - width)
        if not data.startswith(self.codec.terminator):
            return False
        stop = data.rfind(self.codec.terminator)
        if stop > 0:  # else only a torn record follows
            raws = data[width:stop].split(self.codec.terminator)
            for change in self._changes(raws, view.records):
                _apply(view.items, change)
            view.end += stop
            view.records += len(raws)
        return True

    def _changes(self, raws: list[bytes], before: int) -> list[Change]:
        """The changes the records ``raws`` hold; the first is record ``before + 1`` of the file. Every record is
        parsed before any is applied: a damaged one leaves the view as it was."""
        changes = []
        for number, raw in enumerate(raws, start=before + 1):
            if not raw:
                continue  # an empty line or document: nothing to apply
            try:
                change = _change(self.codec.load(raw))
            except (ValueError, RecursionError, TypeError):
                change = None
            if change is None:
                raise self._damaged(f"{self.codec.record_kind} {number} is not a state change")
            changes.append(change)
        return changes

    def _load(self) -> _View | None:
        """Read the file from the start (a new file, or the first read)."""
        self._forget()
        try:
            f = open_private(self.path, "rb", root=self.path.parent)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(f.fileno())  # the identity of exactly what is read
            data = f.read()
            view = self._parse(f, st, data)
        except BaseException:
            f.close()
            raise
        self._view = view
        return view

    def _parse(self, f: IO[bytes], st: os.stat_result, data: bytes) -> _View:
        terminator, width = self.codec.terminator, len(self.codec.terminator)
        first = data.find(terminator)
        snapshot = self._snapshot(data[:first]) if first >= 0 else None
        if snapshot is None:  # not a file of records: a document of the previous version, or damage
            return _View(f, st.st_ino, st.st_dev, len(data), self._document(data), False, len(data), 0)
        end = first + width
        stop = data.rfind(terminator)
        if stop > first:
            for change in self._changes(data[end:stop].split(terminator), 1):
                _apply(snapshot, change)
            end = stop + width
        return _View(f, st.st_ino, st.st_dev, end, snapshot, True, first + width, data.count(terminator, 0, end))

    def _snapshot(self, raw: bytes) -> Items | None:
        """The items of a snapshot record; None when ``raw`` is not one (then the file is read as a document)."""
        try:
            record = self.codec.load(raw)
        except (ValueError, RecursionError, TypeError):
            return None
        if not isinstance(record, dict) or record.get("format") != _FORMAT:
            return None
        items = record.get("items")
        if not isinstance(items, dict) or not all(_is_item(v) for v in items.values()):
            raise self._damaged("its snapshot's items are not [value, expiry] pairs")
        return items

    def _document(self, data: bytes) -> Items:
        """The items of a state file of the previous version: one document (format praison_db.state/v1)."""
        try:
            items = self.codec.load(data)["items"]
        except (ValueError, RecursionError, TypeError, KeyError, IndexError) as e:  # not UTF-8, not the format, no items
            raise self._damaged("empty" if not data.strip() else self.codec.why(e, "a state file")) from None
        if not isinstance(items, dict) or not all(_is_item(v) for v in items.values()):
            raise self._damaged("its items are not [value, expiry] pairs")
        return items

    def _damaged(self, why: str) -> IntegrityError:
        return marked(
            IntegrityError(
                f"the state file {self.path} is damaged ({why}); restore it from a backup, or move it aside to start empty"
            ),
            why,
        )

    def damaged_files(self) -> list[dict[str, str]]:
        """The state file or its lock file when the store cannot use them, as ``{"file": ..., "problem": ...}``."""
        found = []
        for path in (self.path, self._lock_path):
            if is_link(path):
                found.append({"file": path.name, "problem": "a symbolic link"})
            elif path.exists() and not path.is_file():
                found.append({"file": path.name, "problem": "not a regular file"})
        if not found:
            try:
                self._live_items()
            except IntegrityError as e:
                found.append({"file": self.path.name, "problem": damage_of(e) or str(e)})
        return found

    def _live_items(self) -> Items:
        """key -> [value, expires_at or None] of the live keys (a new dict; the pairs are shared and not to be
        changed)."""
        with self._mutex:
            view = self._current()
            return _live(view.items, time.time()) if view is not None else {}

    # ---- writing ----

    def _write(self, decide: Callable[[Items, float], tuple[dict[str, Any] | None, T]]) -> T:
        """Under the lock: ``decide(items, now)`` returns (the record of a change, or None for none; the result), and
        the record is appended and fsynced, or written with the whole state as a new snapshot (see the module)."""
        with self._locked():
            for _ in range(3):
                with self._mutex:
                    view = self._current()
                    items, now = (view.items if view is not None else {}), time.time()
                    record, result = decide(items, now)
                    if record is None:
                        return result
                    change: Change = next(iter(record.items()))  # a record holds one change
                    data = self.codec.encode(record)
                    if view is None or not view.log or view.end + len(data) - view.snapshot > max(view.snapshot, _COMPACT_AT):
                        live = _live(items, now)  # expired keys are left out of the new snapshot
                        _apply(live, change)
                        view = None
                if view is None:
                    self._compact(live)
                    return result
                try:
                    self._append(view, data, change)
                except _Replaced:
                    continue  # the next round reads the file again
                return result
            raise StoreUnavailable(f"the state file {self.path} keeps being replaced by something outside praison_db")

    def _append(self, view: _View, data: bytes, change: Change) -> None:
        try:
            fd = os.open(self.path, _APPEND_FLAGS)
        except FileNotFoundError:
            raise _Replaced from None
        except OSError:
            if is_link(self.path):
                raise unsafe(self.path, self.path.parent, "a symbolic link") from None
            raise
        start = view.end
        try:
            st = os.fstat(fd)
            if st.st_ino != view.ino or st.st_dev != view.dev or st.st_size < start:
                raise _Replaced
            if st.st_size > start:
                os.ftruncate(fd, start)  # a record torn by a crash: never followed by a record
            try:
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
                os.fsync(fd)
            except BaseException:
                _take_back(fd, start)
                raise
        finally:
            os.close(fd)
        with self._mutex:
            if self._view is view and view.end == start:  # else a read in another thread has applied it already
                _apply(view.items, change)
                view.end += len(data)
                view.records += 1

    def _compact(self, items: Items) -> None:
        """Replace the file with one holding ``items`` as its snapshot (under the lock; readers go on meanwhile)."""
        data = self.codec.encode({"format": _FORMAT, "items": items})
        write_private(self.path, data.decode("utf-8"))
        f = open_private(self.path, "rb", root=self.path.parent)
        st = os.fstat(f.fileno())
        with self._mutex:
            self._forget()
            if st.st_size != len(data):  # replaced again by something outside the lock: read it when next asked
                f.close()
                return
            self._view = _View(f, st.st_ino, st.st_dev, len(data), items, True, len(data), 1)

    # ---- the primitives ----

    def _get_many(self, keys: list[str]) -> dict[str, Any]:
        with self._mutex:
            view = self._current()
            items = view.items if view is not None else {}
            found = {k: item for k in keys if (item := items.get(k)) is not None}
        now = time.time()
        # Copies: a caller changing a returned dict or list must not change what later reads return.
        return {k: copy.deepcopy(item[0]) for k, item in found.items() if _alive(item, now)}

    def _set_many(self, items: dict[str, str], expires_at: float | None) -> None:
        record = {"set": {k: [json.loads(v), expires_at] for k, v in items.items()}}
        self._write(lambda current, now: (record, None))

    def _delete(self, key: str) -> bool:
        def decide(items: Items, now: float) -> tuple[dict[str, Any] | None, bool]:
            return ({"delete": [key]}, True) if _alive(items.get(key), now) else (None, False)

        return self._write(decide)

    def _incr(self, key: str, amount: int) -> int:
        def decide(items: Items, now: float) -> tuple[dict[str, Any], int]:
            item = items.get(key)
            value, expires_at = item if item is not None and _alive(item, now) else (MISSING, None)
            new = incremented(key, value, amount)
            return {"set": {key: [new, expires_at]}}, new

        return self._write(decide)

    def _expires_at(self, key: str) -> float | None:
        with self._mutex:
            view = self._current()
            item = view.items.get(key) if view is not None else None
        return item[1] if item is not None and _alive(item, time.time()) else None

    def _expire(self, key: str, expires_at: float | None) -> bool:
        def decide(items: Items, now: float) -> tuple[dict[str, Any] | None, bool]:
            return ({"expire": {key: expires_at}}, True) if _alive(items.get(key), now) else (None, False)

        return self._write(decide)

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        return iter(sorted(k for k in self._live_items() if k.startswith(prefix)))

    def _clear(self, prefix: str) -> int:
        def decide(items: Items, now: float) -> tuple[dict[str, Any] | None, int]:
            doomed = sum(1 for k, item in items.items() if k.startswith(prefix) and _alive(item, now))
            return ({"clear": prefix} if doomed else None), doomed

        return self._write(decide)


def _read_at(f: IO[bytes], size: int, offset: int) -> bytes:
    # pread leaves the file offset alone, which a process forked from this one shares.
    if hasattr(os, "pread"):
        return os.pread(f.fileno(), size, offset)
    f.seek(offset)
    return f.read(size)


def _take_back(fd: int, start: int) -> None:
    """Cut a record whose write or fsync failed, so that the failed call changes nothing (best effort: what stays is
    a torn or an unacknowledged record)."""
    try:
        os.ftruncate(fd, start)
        os.fsync(fd)
    except OSError:
        pass
