"""The state store of the file backends (JSON, YAML): one file of keys, read lock-free, written under a cross-process
lock; the format is a :class:`~praison_db.backends.filestore.Codec`."""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from filelock import FileLock, Timeout

from ..base import MISSING, StateStore, incremented, resolve_options
from ..errors import Error, IntegrityError, StoreUnavailable
from ..files import PRIVATE_FILE, damage_of, is_link, make_private_dir, marked, open_private, private_lock, write_private
from ..url import StoreURL
from .filestore import _MTIME_SLACK_NS, OPTIONS, Codec, _directory

__all__ = ["FileStateStore"]


def _is_item(value: Any) -> bool:
    if not isinstance(value, list) or len(value) != 2:
        return False
    expires = value[1]
    return expires is None or (isinstance(expires, (int, float)) and not isinstance(expires, bool))


@dataclass
class _Parsed:
    """The state file as last read: its items and the file's identity (inode, size, times) when read."""

    signature: tuple[int, int, int, int]
    items: dict[str, list[Any]]
    settled: bool  # read well after its last change: any later write must show a different signature


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class FileStateStore(StateStore):
    """StateStore in one file, rewritten atomically under a cross-process lock; the format is the subclass's ``codec``.

    Each write rewrites the file, so it suits the modest state of one agent machine; use Redis, MongoDB or SQL
    for large or busy state. Reads keep the parsed file and parse it again only when the file has changed (one
    ``lstat`` per read): every write replaces the file, and a file read well after its last change is trusted only
    while its inode, size and times are unchanged.
    """

    OPTIONS = OPTIONS
    codec: ClassVar[Codec]

    def __init__(self, path: str | os.PathLike[str], *, lock_timeout: float = 30.0) -> None:
        self.path = Path(path).expanduser()
        make_private_dir(self.path.parent, own=False)
        self.url = f"{self.codec.scheme}://{self.path}"
        self._lock_path = Path(f"{self.path}.lock")
        self._lock_timeout = lock_timeout
        self._lock_object = FileLock(self._lock_path, timeout=lock_timeout, mode=PRIVATE_FILE)
        self._parsed: _Parsed | None = None

    def _locked(self) -> Any:
        return private_lock(self._lock_path, self._lock_timeout, root=self.path.parent, lock=self._lock_object)

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

    def _read(self) -> dict[str, list[Any]]:
        """key -> [value, expires_at or None], without expired entries (a new dict with new pairs: callers may
        change them; the values themselves are shared with the parsed copy and must not be changed)."""
        items = self._items()
        now = time.time()
        return {k: [v[0], v[1]] for k, v in items.items() if v[1] is None or v[1] > now}

    def _items(self) -> dict[str, list[Any]]:
        """The file's items, parsed again only when the file changed since the last (settled) read."""
        try:
            current = _signature(os.lstat(self.path))
        except FileNotFoundError:
            self._parsed = None
            return {}
        parsed = self._parsed
        if parsed is not None and parsed.settled and parsed.signature == current:
            return parsed.items
        try:
            with open_private(self.path, "rb", root=self.path.parent) as f:
                st = os.fstat(f.fileno())  # the identity of exactly what is read
                data = f.read()
        except FileNotFoundError:
            self._parsed = None
            return {}
        try:
            items = self.codec.load(data)["items"]
        except (ValueError, RecursionError, TypeError, KeyError, IndexError) as e:  # not UTF-8, not the format, no items
            raise self._damaged("empty" if not data.strip() else self.codec.why(e, "a state file")) from None
        if not isinstance(items, dict) or not all(_is_item(v) for v in items.values()):
            raise self._damaged("its items are not [value, expiry] pairs")
        # File times come from a coarse clock: a write within a tick of this one could leave the same times (and a
        # reused inode, the same size); only a file older than the slack is trusted to change its signature.
        settled = time.time_ns() - st.st_mtime_ns > _MTIME_SLACK_NS
        self._parsed = _Parsed(_signature(st), items, settled)
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
                self._read()
            except IntegrityError as e:
                found.append({"file": self.path.name, "problem": damage_of(e) or str(e)})
        return found

    def _write(self, items: dict[str, list[Any]]) -> None:
        write_private(self.path, self.codec.document({"format": "praison_db.state/v1", "items": items}))

    def _live(self, key: str, items: dict[str, list[Any]], now: float) -> list[Any] | None:
        item = items.get(key)
        return item if item is not None and (item[1] is None or item[1] > now) else None

    def _get_many(self, keys: list[str]) -> dict[str, Any]:
        items, now = self._items(), time.time()
        # Copies: a caller changing a returned dict or list must not change what later reads return.
        return {k: copy.deepcopy(item[0]) for k in keys if (item := self._live(k, items, now)) is not None}

    def _set_many(self, items: dict[str, str], expires_at: float | None) -> None:
        with self._locked():
            current = self._read()
            current.update({k: [json.loads(v), expires_at] for k, v in items.items()})
            self._write(current)

    def _delete(self, key: str) -> bool:
        with self._locked():
            current = self._read()
            if current.pop(key, None) is None:
                return False
            self._write(current)
            return True

    def _incr(self, key: str, amount: int) -> int:
        with self._locked():
            current = self._read()
            value, expires_at = current.get(key, [MISSING, None])
            new = incremented(key, value, amount)
            current[key] = [new, expires_at]
            self._write(current)
            return new

    def _expires_at(self, key: str) -> float | None:
        item = self._live(key, self._items(), time.time())
        return item[1] if item else None

    def _expire(self, key: str, expires_at: float | None) -> bool:
        with self._locked():
            current = self._read()
            if key not in current:
                return False
            current[key][1] = expires_at
            self._write(current)
            return True

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        return iter(sorted(k for k in self._read() if k.startswith(prefix)))

    def _clear(self, prefix: str) -> int:
        with self._locked():
            current = self._read()
            doomed = [k for k in current if k.startswith(prefix)]
            if doomed:
                for k in doomed:
                    del current[k]
                self._write(current)
            return len(doomed)
