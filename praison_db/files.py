"""Local files that others may share the disk with: what the JSON store and the Agent's spool build on.

Every file is opened without following a symbolic link at its path (``O_NOFOLLOW``) and must be a regular file; a
link or anything else planted where praison_db keeps a file raises IntegrityError naming it. Files created are
owner-only (0600), folders 0700, whatever the umask. Replacing a file is atomic (write, fsync, rename, fsync the
folder). Cross-process locks are filelock lock files, held under the same rules. File names derived from ids are a
readable slug plus a SHA-256 digest: no two ids share a name and no id names a path outside its folder.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from filelock import FileLock, Timeout, lock_descriptor, unlock_descriptor

from .errors import IntegrityError

__all__ = [
    "PRIVATE_DIR",
    "PRIVATE_FILE",
    "LockFiles",
    "check_folders",
    "damage_of",
    "damaged",
    "fsync_dir",
    "is_link",
    "make_private_dir",
    "marked",
    "open_private",
    "private_lock",
    "session_file_stem",
    "shown",
    "unsafe",
    "why_damaged",
    "write_private",
]

_SLUG = re.compile(r"[^A-Za-z0-9_.-]")


def session_file_stem(session_id: str) -> str:
    """File name stem for a session id: readable, collision-free, and confined to the directory."""
    digest = hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]
    slug = _SLUG.sub("_", session_id)[:48].lstrip(".") or "s"
    return f"{slug}-{digest}"


PRIVATE_FILE, PRIVATE_DIR = 0o600, 0o700
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# O_NONBLOCK: a FIFO planted at a file's path would otherwise block the open forever; regular files ignore it.
_OPEN_FLAGS = _NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
_MODES = {
    "rb": os.O_RDONLY,
    "r+b": os.O_RDWR | os.O_CREAT,
    "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "r": os.O_RDONLY,
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
}


def why_damaged(error: BaseException, what: str) -> str:
    """What is wrong with a file's content, in a few words."""
    if isinstance(error, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(error, json.JSONDecodeError):
        return f"not JSON: {error.msg} (byte {error.pos})"
    if isinstance(error, RecursionError):
        return "JSON nested too deeply"
    errors = getattr(error, "errors", None)  # pydantic's ValidationError
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "the top level"
        return f"not {what}: {where}: {first.get('msg', 'invalid')}"
    return f"not {what}"


def shown(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return str(path.relative_to(root))
        except ValueError:
            pass
    return str(path)


def unsafe(path: Path, root: Path | None, what: str) -> IntegrityError:
    where = f" in {root}" if root is not None else ""
    return IntegrityError(
        f"{shown(path, root)}{where} is {what}, where praison_db keeps a file of its own; it never reads or writes "
        "through it: remove it and retry"
    )


def damaged(path: Path, root: Path | None, why: str) -> IntegrityError:
    where = f" in {root}" if root is not None else ""
    return marked(IntegrityError(f"{shown(path, root)}{where} is damaged ({why}); restore it from a backup or delete it"), why)


def marked(error: IntegrityError, why: str) -> IntegrityError:
    # Marks "a regular file with the wrong content" (a session with one can still be deleted), unlike a planted link.
    error.damaged = why  # type: ignore[attr-defined]
    return error


def damage_of(error: IntegrityError) -> str | None:
    return getattr(error, "damaged", None)


def is_link(path: str | os.PathLike[str]) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def check_folders(path: str | os.PathLike[str], root: str | os.PathLike[str] | None) -> None:
    """Refuse a link at a folder of ours between ``root`` and ``path`` (O_NOFOLLOW covers only the last part)."""
    if root is None:
        return
    top = os.fspath(root)
    folder = os.path.dirname(path)  # strings, not pathlib: this runs on every read
    while len(folder) > len(top) and folder.startswith(top):
        if is_link(folder):
            raise unsafe(Path(folder), Path(root), "a symbolic link")
        folder = os.path.dirname(folder)


def _open_fd(path: str | os.PathLike[str], flags: int, root: str | os.PathLike[str] | None) -> tuple[int, os.stat_result]:
    """A descriptor of the regular file at ``path``, opened without following a link there, and its stat."""

    def refused(what: str) -> IntegrityError:
        return unsafe(Path(path), None if root is None else Path(root), what)

    check_folders(path, root)
    if not _NOFOLLOW and is_link(path):  # no O_NOFOLLOW on this OS: check first (a narrow race remains)
        raise refused("a symbolic link")
    try:
        fd = os.open(path, flags | _OPEN_FLAGS, PRIVATE_FILE)
    except FileNotFoundError:
        raise
    except OSError as e:
        # Linux says ELOOP for a link under O_NOFOLLOW, the BSDs EMLINK or EFTYPE: ask the file system instead.
        if e.errno == errno.ELOOP or is_link(path):
            raise refused("a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise refused("not a regular file")
        if flags & os.O_CREAT and stat.S_IMODE(st.st_mode) != PRIVATE_FILE and _owned(st):
            os.fchmod(fd, PRIVATE_FILE)  # the umask may have left group/other bits, or an older file kept them
        return fd, st
    except BaseException:
        os.close(fd)
        raise


def open_private(path: str | os.PathLike[str], mode: str, *, root: str | os.PathLike[str] | None = None, encoding: str | None = None) -> IO[Any]:
    """Open a store file without following a symbolic link at its path; a file it creates is owner-only (0600).

    ``mode`` is one of ``rb``, ``r+b`` (created if missing), ``wb``, ``ab``, ``r``, ``a``. Raises IntegrityError
    naming the file (relative to ``root``) when a link or anything but a regular file sits at ``path``, and
    FileNotFoundError when reading a missing file.
    """
    fd, _ = _open_fd(path, _MODES[mode], root)
    try:
        return os.fdopen(fd, mode) if "b" in mode else os.fdopen(fd, mode, encoding=encoding or "utf-8")
    except BaseException:
        os.close(fd)
        raise


def _owned(st: os.stat_result) -> bool:
    getuid = getattr(os, "getuid", None)
    return getuid is not None and hasattr(os, "fchmod") and st.st_uid == getuid()


def make_private_dir(path: Path, *, root: Path | None = None, own: bool = True) -> None:
    """Create ``path`` and its missing parents owner-only (0700), whatever the umask.

    With ``own`` (a folder of praison_db's own inside the store), a symbolic link or a file in its place raises
    IntegrityError; the store folder itself may be a link the user made.
    """
    missing: list[Path] = []
    cursor = path
    while not os.path.lexists(cursor) and cursor.parent != cursor:
        missing.append(cursor)
        cursor = cursor.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, PRIVATE_DIR)
        except FileExistsError:  # another process made it meanwhile
            continue
        os.chmod(folder, PRIVATE_DIR)
    if own:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise unsafe(path, root, "a symbolic link")
        if not stat.S_ISDIR(st.st_mode):
            raise unsafe(path, root, "not a folder")


@contextmanager
def private_lock(path: Path, timeout: float, *, root: Path | None = None, lock: FileLock | None = None) -> Iterator[None]:
    """Hold the cross-process lock file ``path`` (owner-only, never through a symbolic link).

    Raises IntegrityError for a link at ``path`` and filelock's Timeout when another process keeps it ``timeout`` s.
    """
    check_folders(path, root)
    if is_link(path):
        raise unsafe(path, root, "a symbolic link")
    lock = lock or FileLock(path, timeout=timeout, mode=PRIVATE_FILE)
    try:
        lock.acquire()
    except OSError as e:
        if e.errno == errno.ELOOP or is_link(path):  # planted between the check and the open
            raise unsafe(path, root, "a symbolic link") from None
        raise
    try:
        yield
    finally:
        lock.release()


class _Held:
    """One lock file of a LockFiles: its descriptor (kept open between holds), and who in this process holds it."""

    __slots__ = ("fd", "ident", "mutex", "depth", "users")

    def __init__(self) -> None:
        self.fd: int | None = None
        self.ident: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the file the descriptor is open on
        self.mutex = threading.RLock()  # the threads of this process, one at a time (flock is per descriptor)
        self.depth = 0  # nested holds by the thread that has the mutex
        self.users = 0  # threads holding or waiting: the descriptor is not closed under them


def _close_all(held: dict[str, _Held]) -> None:
    for entry in held.values():
        if entry.fd is not None:
            try:
                os.close(entry.fd)
            except OSError:
                pass
            entry.fd = None
    held.clear()


class LockFiles:
    """Cross-process locks on the lock files of a folder, with their descriptors kept open between holds.

    Opening a lock file and taking filelock's FileLock costs more than an append's write; this opens each lock file
    once (owner-only, never through a symbolic link, like :func:`private_lock`) and takes the same lock on it with
    filelock's ``lock_descriptor`` (``flock`` on Unix), so it excludes processes holding these files through
    FileLock, and the other way round. A hold is good only while the path still names the file the descriptor is open
    on (the lock file deleted, or a link planted there, while the descriptor stayed open): each hold checks that with
    one ``lstat`` and opens the file again if not. Threads of this process take turns on a reentrant mutex per file
    (a ``flock`` does not exclude holders of the same descriptor); a child process after ``fork`` opens its own.
    On a file system without ``flock`` it falls back to FileLock, which then uses its soft lock.
    """

    _CAPACITY = 256  # lock files kept open per folder; the least recently used idle one is closed past that
    _FIRST_POLL, _MAX_POLL = 0.001, 0.05  # seconds between attempts while another process holds a lock

    def __init__(self, root: str | os.PathLike[str], timeout: float) -> None:
        self.root = os.fspath(root)
        self.timeout = timeout
        self._held: dict[str, _Held] = {}
        self._guard = threading.Lock()
        self._pid = os.getpid()
        self._soft: dict[str, FileLock] | None = None  # FileLocks, once flock turned out to be missing here
        self._finalizer = weakref.finalize(self, _close_all, self._held)

    def close(self) -> None:
        """Close every lock file (a hold in progress keeps its own until it ends)."""
        with self._guard:
            _close_all({k: v for k, v in self._held.items() if not v.users})
            for key in [k for k, v in self._held.items() if v.fd is None]:
                del self._held[key]

    @contextmanager
    def hold(self, path: str) -> Iterator[None]:
        """Hold the lock file ``path`` (inside ``root``); filelock's Timeout after ``timeout`` s of waiting for it,
        IntegrityError for a link or a non-file at it or at a folder above it."""
        entry = self._acquire(path) if self._soft is None else None
        if entry is None:
            with self._soft_hold(path):
                yield
            return
        try:
            yield
        finally:
            self._release(entry)

    def _acquire(self, path: str) -> _Held | None:
        deadline = time.monotonic() + self.timeout
        entry = self._entry(path)
        try:
            if not entry.mutex.acquire(timeout=max(deadline - time.monotonic(), 0)):
                raise Timeout(path)
            try:
                if not entry.depth:
                    self._lock(entry, path, deadline)
            except BaseException:
                entry.mutex.release()
                raise
            entry.depth += 1
            return entry
        except _NoFlock:
            self._done(entry)
            return None
        except BaseException:
            self._done(entry)
            raise

    def _release(self, entry: _Held) -> None:
        try:
            entry.depth -= 1
            if not entry.depth and entry.fd is not None:
                unlock_descriptor(entry.fd)
        finally:
            entry.mutex.release()
            self._done(entry)

    def _done(self, entry: _Held) -> None:
        with self._guard:
            entry.users -= 1

    def _entry(self, path: str) -> _Held:
        with self._guard:
            if os.getpid() != self._pid:
                # A forked child shares the parent's descriptors, and with them its locks: start afresh.
                _close_all(self._held)
                self._held, self._pid = {}, os.getpid()
                self._finalizer.detach()
                self._finalizer = weakref.finalize(self, _close_all, self._held)
            held = self._held
            entry = held.pop(path, None)
            if entry is None:
                entry = _Held()
                if len(held) >= self._CAPACITY:
                    idle = next((k for k, v in held.items() if not v.users), None)
                    if idle is not None:
                        _close_all({idle: held.pop(idle)})
            held[path] = entry  # most recently used last
            entry.users += 1
            return entry

    def _lock(self, entry: _Held, path: str, deadline: float) -> None:
        poll = self._FIRST_POLL
        while True:
            check_folders(path, self.root)
            if entry.fd is None:
                entry.fd, st = _open_fd(path, os.O_RDWR | os.O_CREAT, self.root)
                entry.ident = (st.st_dev, st.st_ino)
            try:
                locked = lock_descriptor(entry.fd, blocking=False)
            except OSError as e:
                if e.errno != errno.ENOSYS:
                    raise
                self._soft = {}
                raise _NoFlock from None
            if locked:
                try:
                    st = os.lstat(path)
                    if (st.st_dev, st.st_ino) == entry.ident:
                        return
                except OSError:
                    pass
                # The file at the path is no longer the one locked (removed, replaced, a link planted): open it again.
                unlock_descriptor(entry.fd)
                os.close(entry.fd)
                entry.fd = None
                continue
            if time.monotonic() >= deadline:
                raise Timeout(path)
            time.sleep(poll)
            poll = min(poll * 2, self._MAX_POLL)

    @contextmanager
    def _soft_hold(self, path: str) -> Iterator[None]:
        soft = self._soft
        assert soft is not None
        with self._guard:
            lock = soft.get(path)
            if lock is None:
                if len(soft) >= self._CAPACITY:
                    soft.pop(next(iter(soft)))
                lock = soft[path] = FileLock(path, timeout=self.timeout, mode=PRIVATE_FILE)
        with private_lock(Path(path), self.timeout, root=Path(self.root), lock=lock):
            yield


class _NoFlock(Exception):
    """flock is missing on this file system (ENOSYS): the hold is taken again with FileLock."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (owner-only) so that a reader or a crash sees the old or the new file, never half.

    A symbolic link at ``path`` is replaced, never written through.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, PRIVATE_FILE)  # mkstemp's 0600 is still subject to the umask
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
    fsync_dir(path.parent)
