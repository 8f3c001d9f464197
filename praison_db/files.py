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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from filelock import FileLock

from .errors import IntegrityError

__all__ = [
    "PRIVATE_DIR",
    "PRIVATE_FILE",
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


def is_link(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def check_folders(path: Path, root: Path | None) -> None:
    """Refuse a link at a folder of ours between ``root`` and ``path`` (O_NOFOLLOW covers only the last part)."""
    if root is None:
        return
    top = os.fspath(root)
    folder = os.path.dirname(path)  # strings, not pathlib: this runs on every read
    while len(folder) > len(top) and folder.startswith(top):
        if is_link(Path(folder)):
            raise unsafe(Path(folder), root, "a symbolic link")
        folder = os.path.dirname(folder)


def open_private(path: Path, mode: str, *, root: Path | None = None, encoding: str | None = None) -> IO[Any]:
    """Open a store file without following a symbolic link at its path; a file it creates is owner-only (0600).

    ``mode`` is one of ``rb``, ``r+b`` (created if missing), ``wb``, ``ab``, ``r``, ``a``. Raises IntegrityError
    naming the file (relative to ``root``) when a link or anything but a regular file sits at ``path``, and
    FileNotFoundError when reading a missing file.
    """
    check_folders(path, root)
    if not _NOFOLLOW and is_link(path):  # no O_NOFOLLOW on this OS: check first (a narrow race remains)
        raise unsafe(path, root, "a symbolic link")
    try:
        fd = os.open(path, _MODES[mode] | _OPEN_FLAGS, PRIVATE_FILE)
    except FileNotFoundError:
        raise
    except OSError as e:
        # Linux says ELOOP for a link under O_NOFOLLOW, the BSDs EMLINK or EFTYPE: ask the file system instead.
        if e.errno == errno.ELOOP or is_link(path):
            raise unsafe(path, root, "a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise unsafe(path, root, "not a regular file")
        if _MODES[mode] & os.O_CREAT and stat.S_IMODE(st.st_mode) != PRIVATE_FILE and _owned(st):
            os.fchmod(fd, PRIVATE_FILE)  # the umask may have left group/other bits, or an older file kept them
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
