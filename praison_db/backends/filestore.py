"""Stores in a folder of plain files: the mechanics that the JSON and YAML stores share, written once over a codec.

A :class:`Codec` is the file format: how one record (a message, or a removal's cut record) is written and read, the
terminator that ends every record (and that no record holds), how a header or state file is written and read, and
the file names. Everything else is here: locks, appends, tail reads, removals, streams, damage reports.

Layout of a session directory, per session (the suffixes are the codec's)::

    <name><header suffix>     the session's header (owner, type, name, metadata); its presence means "exists"
    <name><messages suffix>   the messages, one record each, appended (removals cut the end off)
    .locks/<name>.lock        the cross-process lock (filelock) taken by every write, delete included

``<name>`` is a readable slug of the id plus a SHA-256 digest of it, so different ids never share files and no id
(``../x``, ``a/b``, very long) can name a path outside the directory. A record holds every field of the message
(type, extra and JSON content included) and reads back exactly. Appends write the new records and fsync: O(1) in the
session's length. ``message_count`` and activity are read from the last record, so appends never rewrite the header.
Records are found from the end of the file by their terminator; what follows the last one is a write torn by a crash:
it is ignored when reading and cut off before the next append, so a crash loses at most the message being written.

``pop_message``, ``truncate`` and ``clear_messages`` cut the newest records off the end of the file under the same
lock: a cut record appended and fsynced is the commit point, then the header takes the new activity and the file is
truncated at the cut (see ``_cut_newest``). A crash leaves the old messages or the new ones, never a mix; the file
never keeps removed records, so appends and newest-N reads cost what they did. Reads take no lock: a removal
replaces the header before it truncates, and a read that saw the header change under it reads again.

The folder may sit on a disk others can write to, so every file is opened without following a symbolic link at its
path (``O_NOFOLLOW``): a link planted where a header, messages, lock, state or spool file belongs makes the call
raise :class:`~praison_db.IntegrityError` naming the file, and nothing is read or written through it. Files this
module creates are owner-only (0600) and so are the folders it creates (0700), whatever the umask. A header or state
file that cannot be read as what it should be (empty, truncated, not the format, wrong shape) also raises
IntegrityError naming the file; listing skips such a session with a warning, ``delete_session`` still removes it,
and ``damaged_files()`` (shown by ``praison-db doctor``) lists every such file.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import stat
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, TypeVar

from filelock import Timeout

from ..base import (
    Capabilities,
    ConversationStore,
    Option,
    POSITIVE_SECONDS,
    SessionFilter,
    activity_key,
    missing_session,
    after_last,
    resolve_options,
)
from ..errors import ConfigError, Error, IntegrityError, StoreUnavailable
from ..files import (
    LockFiles,
    damage_of,
    damaged,
    fsync_dir,
    is_link,
    shown,
    unsafe,
    why_damaged,
    make_private_dir,
    open_private,
    session_file_stem,
    write_private,
)
from ..models import Message, MessageDraft, Session
from ..url import StoreURL

__all__ = ["Codec", "FileConversationStore", "records_before"]

log = logging.getLogger("praison_db")

OPTIONS = {"lock_timeout": Option(POSITIVE_SECONDS, 30.0, "seconds to wait for another process's lock")}
# Tails are read backwards a block at a time, small first (most reads need one or two records), then doubling.
_FIRST_BLOCK, _MAX_BLOCK = 4 * 1024, 1024 * 1024
# Streams read the file forwards this much at a time.
_STREAM_BLOCK = 256 * 1024
# Lock-free reads that met a removal this many times in a row take the session's lock (see _settled).
_READ_ATTEMPTS = 3

_MESSAGE_FIELDS = tuple(Message.model_fields)
# A field a record leaves out (one of an older version, or of a codec that skips empty fields) is None, or empty.
_DICT_FIELDS = frozenset({"metadata", "extra"})

T = TypeVar("T")
Record = dict[str, Any]


class Codec(ABC):
    """A file format for the file stores: records, their terminator, header and state documents, file names.

    The terminator ends every record, and the codec guarantees that no record holds it (JSON Lines: a newline, which
    compact JSON escapes; YAML: a document end marker line, which no emitted value can start a line with). Records
    are found from the end of a file by it, and what follows the last one is a torn write.
    """

    scheme: ClassVar[str]  # the URL scheme and the prefix of a store's url
    format_name: ClassVar[str]  # "JSON", in messages and errors
    header_suffix: ClassVar[str]
    messages_suffix: ClassVar[str]
    state_name: ClassVar[str]  # the state file's name in the folder
    terminator: ClassVar[bytes]
    record_kind: ClassVar[str] = "record"  # what a damage report counts ("line 2 is not a message")

    @abstractmethod
    def encode(self, record: Record) -> bytes:
        """One record (a message's fields, or a cut record) and its terminator."""

    @abstractmethod
    def decode(self, raw: bytes) -> Record | None:
        """The record ``raw`` (without its terminator) holds: a dict with an int ``seq`` and a str ``created_at``; None
        for anything else (a torn write, a record edited by hand, garbage). Never raises."""

    def encode_message(self, message: Message) -> bytes:
        return self.encode(message.model_dump(mode="json"))

    def message_id(self, raw: bytes) -> str | None:
        """The id of the message record ``raw`` (without its terminator), None when it is not a message. A store
        indexes every record's id on its first append to a session: a codec may tell them faster than ``decode``."""
        record = self.decode(raw)
        return record["id"] if record is not None and _is_message(record) else None

    def looks_like_message(self, raw: bytes) -> bool:
        """Whether ``raw`` is a message record as this codec writes them, told without parsing it (a False is
        checked by parsing)."""
        return False

    def records_before(self, f: Any, end: int) -> Iterator[tuple[int, bytes]]:
        return records_before(f, end, self.terminator)

    @abstractmethod
    def document(self, value: Any) -> str:
        """The text of a header or state file holding ``value`` (JSON data)."""

    @abstractmethod
    def load(self, data: bytes) -> Any:
        """What a header or state file holds; ValueError or RecursionError when it is not a document of this format."""

    def why(self, error: BaseException, what: str) -> str:
        """What is wrong with a header or state file that ``load`` or validation refused, in a few words."""
        return why_damaged(error, what)


class _Files(NamedTuple):
    header: Path
    messages: Path
    lock: Path


# File times come from the kernel's coarse clock and may trail the time stamped into the data by a tick (1-10 ms).
_MTIME_SLACK_NS = 50_000_000


def _ns(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1_000


def _cover(target: Path | int, stamp_ns: int) -> None:
    """Move a file's modification time (a path, never through a link, or an open fd) up to ``stamp_ns``, never back."""
    st = os.fstat(target) if isinstance(target, int) else os.lstat(target)
    if stamp_ns <= st.st_mtime_ns:
        return
    if isinstance(target, int):
        if os.utime in os.supports_fd:
            os.utime(target, ns=(st.st_atime_ns, stamp_ns))
    elif os.utime in os.supports_follow_symlinks:
        os.utime(target, ns=(st.st_atime_ns, stamp_ns), follow_symlinks=False)
    elif not stat.S_ISLNK(st.st_mode):
        os.utime(target, ns=(st.st_atime_ns, stamp_ns))


def _entry_problem(entry: os.DirEntry[str]) -> str | None:
    if entry.is_symlink():
        return "a symbolic link" if os.path.exists(entry.path) else "a dangling symbolic link"
    if not entry.is_file(follow_symlinks=False):
        return "not a regular file"
    return None


def _messages_problem(codec: Codec, path: Path) -> str | None:
    """The first record of a messages file that is not the next message, or None when it is sound (or missing)."""
    try:
        f = open_private(path, "rb")
    except FileNotFoundError:
        return None
    except IntegrityError:
        return "a symbolic link" if is_link(path) else "not a regular file"
    expected = 1
    with f:
        try:
            newest = _newest_record(codec, f, path.name)
        except _Moved:  # a removal is cutting it right now: it is being written, not damaged
            return None
        # A removal a crash cut short ends the file: the next write finishes it, so it is not damage.
        end = newest[2] if newest is not None and _cut_of(newest[1]) is not None else math.inf
        for number, (offset, raw) in enumerate(_records_from(f, 0, codec.terminator), start=1):
            if offset >= end:
                break  # past the messages: the next write cuts the rest off
            record = codec.decode(raw)
            if record is None or not _is_message(record):
                return f"{codec.record_kind} {number} is not a message"
            if record["seq"] < expected:
                return f"{codec.record_kind} {number} has seq {record['seq']}, after seq {expected - 1}"
            expected = record["seq"] + 1
    return None


def _is_message(record: Record) -> bool:
    return isinstance(record.get("id"), str)


def _cut_of(record: Record) -> int | None:
    """Where the messages end, for a cut record (the commit point of a removal); None for anything else."""
    cut = record.get("cut")
    return cut if type(cut) is int and cut >= 0 and "id" not in record else None


def _message(record: Record) -> Message:
    """The Message a stored record holds, made from the record itself (which is not used again). Its created_at must
    be valid ISO 8601: callers turn ValueError into damage."""
    record["created_at"] = datetime.fromisoformat(record["created_at"])
    if len(record) != len(_MESSAGE_FIELDS):  # a record that leaves fields out (an older version's: no type, no extra)
        record = {
            name: record[name] if name in record else {} if name in _DICT_FIELDS else None for name in _MESSAGE_FIELDS
        }
    return Message.adopt(record)  # record was decoded for this message alone


def records_before(f: Any, end: int, terminator: bytes) -> Iterator[tuple[int, bytes]]:
    """(offset, record) of the complete, non-empty records of ``f`` that end (with ``terminator``) before ``end``,
    newest first; a record is yielded without its terminator.

    Read backwards a block at a time, small first (most reads need one or two records), then doubling, so the cost
    follows what is read, not the file's size. What follows the last terminator before ``end`` is a torn write (or
    nothing) and is skipped. Raises _Moved when a block comes back short: the file was cut meanwhile.
    """
    pos, carry, block, width = end, b"", _FIRST_BLOCK, len(terminator)
    while pos > 0:
        size = min(block, pos)
        block = min(block * 2, _MAX_BLOCK)
        pos -= size
        f.seek(pos)
        chunk = f.read(size)
        if len(chunk) != size:
            raise _Moved
        chunk += carry
        pieces = chunk.split(terminator)
        # The first piece may begin before this block (a terminator may even straddle its start): it is joined
        # with the next block read.
        carry = pieces.pop(0) if pos > 0 else b""
        stop = pos + len(chunk)  # where the last piece ends
        for raw in reversed(pieces):
            start = stop - len(raw)
            if raw and stop != end:
                yield start, raw
            stop = start - width


def _records_from(f: Any, start: int, terminator: bytes) -> Iterator[tuple[int, bytes]]:
    """(offset, record) of the complete records of ``f`` from ``start`` on, forwards, a block at a time; what follows
    the last terminator (a torn write, or nothing) is not yielded."""
    width, pos, carry = len(terminator), start, b""
    f.seek(start)
    while block := f.read(_STREAM_BLOCK):
        pieces = (carry + block).split(terminator)
        carry = pieces.pop()
        for raw in pieces:
            yield pos, raw
            pos += len(raw) + width


def _after_last(f: Any, end: int, terminator: bytes) -> int:
    """The offset just after the last terminator before ``end`` (0 if none): where the last complete record ends."""
    pos, block, width = end, _FIRST_BLOCK, len(terminator)
    while pos > 0:
        size = min(block, pos)
        block = min(block * 2, _MAX_BLOCK)
        pos -= size
        f.seek(pos)
        # Reads into the block after this one by a terminator's length less one: a terminator may straddle them.
        found = f.read(min(size + width - 1, end - pos)).rfind(terminator)
        if found >= 0:
            return pos + found + width
    return 0


def _message_records(codec: Codec, f: Any, end: int) -> int:
    """How many messages the complete records before ``end`` hold; the codec's own records are recognised by how
    they look, without parsing them."""
    count, width = 0, len(codec.terminator)
    for offset, raw in _records_from(f, 0, codec.terminator):
        if offset + len(raw) + width > end:
            break
        if raw and (codec.looks_like_message(raw) or ((record := codec.decode(raw)) is not None and _is_message(record))):
            count += 1
    return count


def _take_back(f: Any, end: int) -> None:
    """Remove a cut record whose removal failed half way, so that the failed call changes nothing."""
    try:
        if os.fstat(f.fileno()).st_size > end:  # not once the file is cut: that removal is done
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        log.warning("praison_db: a removal failed half way and its cut record stayed (%s); the next write finishes it", e)


def _still_at(f: Any, offset: int, raw: bytes, terminator: bytes) -> bool:
    """Whether the record ``raw`` (and its terminator) is still at ``offset`` of ``f``."""
    f.seek(offset)
    return bool(f.read(len(raw) + len(terminator)) == raw + terminator)


class _Moved(Exception):
    """A read without the lock found the messages file shorter than it was a moment before: a removal cut it."""


def _again_if_moved(read: Callable[..., T], *args: Any) -> T:
    """A read of the last record alone, again while a removal cut the file under it: one record is never a mix of
    states (it is the old last message, the cut record, or the new last message), so the header is not checked."""
    while True:
        try:
            return read(*args)
        except _Moved:
            continue


_Generation = tuple[int, int, int]


def _counted(session: Session, last: tuple[int, datetime, int] | None) -> Session:
    if last is None:
        return session
    seq, created, _ = last
    return session.model_copy(update={"message_count": seq, "updated_at": max(session.updated_at, created)})


def _generation(header_path: Path) -> _Generation | None:
    """What changes whenever a session's header is replaced; every removal replaces it before it cuts the messages."""
    try:
        st = os.lstat(header_path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _unreadable(codec: Codec, name: str) -> None:
    log.warning("praison_db: skipped an unreadable %s in %s", codec.record_kind, name)


def _newest_record(codec: Codec, f: Any, name: str) -> tuple[int, Record, int] | None:
    """(offset, record, end of the messages) of the newest readable record, a message or a cut record."""
    width = len(codec.terminator)
    for offset, raw in codec.records_before(f, f.seek(0, os.SEEK_END)):
        record = codec.decode(raw)
        if record is None:
            _unreadable(codec, name)
            continue
        cut = _cut_of(record)
        return offset, record, min(cut, offset) if cut is not None else offset + len(raw) + width
    return None


def _messages_newest_first(codec: Codec, f: Any, name: str) -> Iterator[tuple[int, bytes, Record]]:
    """(offset, record bytes, record) of the messages of ``f``, newest first; a cut record ending the file (a removal
    in progress, or one a crash cut short) is followed: the messages end where it says."""
    decode = codec.decode
    records = codec.records_before(f, f.seek(0, os.SEEK_END))
    for offset, raw in records:
        record = decode(raw)
        if record is None:
            _unreadable(codec, name)
            continue
        cut = _cut_of(record)
        if cut is not None:
            records = codec.records_before(f, min(cut, offset))
        elif _is_message(record):
            yield offset, raw, record
        break
    for offset, raw in records:  # the hot loop of newest-N reads: kept lean
        record = decode(raw)
        if record is None:
            _unreadable(codec, name)
        elif isinstance(record.get("id"), str):
            yield offset, raw, record


def _tail(codec: Codec, path: Path, want: int, stop: Any = None, skip: Any = None, root: Path | None = None) -> list[Record]:
    """The last ``want`` messages of a messages file, newest first, reading backwards from the end.

    ``stop(record)`` returning True ends the scan early; ``skip(record)`` returning True leaves a record out but
    goes on. Cost is proportional to what is read, not to the file's size. Raises _Moved (see records_before).
    """
    out: list[Record] = []
    if want <= 0:
        return out
    try:
        f = open_private(path, "rb", root=root)
    except FileNotFoundError:
        return out
    with f:
        for _, _, record in _messages_newest_first(codec, f, path.name):
            if stop is not None and stop(record):
                break
            if skip is not None and skip(record):
                continue
            out.append(record)
            if len(out) >= want:
                break
    return out


_ID_INDEXES = 256  # sessions whose message ids are kept in memory per store
_CACHED_SESSIONS = 4096  # sessions whose file paths and parsed header are kept per store


@dataclass
class _IdIndex:
    """Message id -> (offset, length with the terminator) of its record, for the first ``offset`` bytes of one
    messages file."""

    file_id: tuple[int, int]
    offset: int = 0
    tail: bytes = b""  # the last record read (and its terminator): if it moved, the file is not the one indexed
    ids: dict[str, tuple[int, int]] = field(default_factory=dict)
    # The seq of the message whose record ``tail`` is, when this store wrote or kept it (None: not known). A file
    # that ends at ``offset`` with ``tail`` ends with a whole record, that message: its last seq is known unread.
    last_seq: int | None = None

    def still_fits(self, f: Any, file_id: tuple[int, int], size: int) -> bool:
        if file_id != self.file_id or size < self.offset:
            return False
        if not self.tail:
            return self.offset == 0
        f.seek(self.offset - len(self.tail))
        return f.read(len(self.tail)) == self.tail


def _directory(url: StoreURL) -> Path:
    if url.username is not None or url.password is not None:
        # A folder has no login: silently dropping the credentials would hide a URL meant for another backend.
        raise ConfigError(f"{url.scheme}:// names a folder and takes no user or password, e.g. {url.scheme}:///var/lib/agent/sessions")
    if url.host:  # json://rel/dir
        return Path(url.host + url.path)
    if not url.path or url.path == "/":
        raise ConfigError(f"{url.scheme}:// needs a directory, e.g. {url.scheme}:///var/lib/agent/sessions")
    return Path(url.path)


def file_capabilities(format_name: str) -> Capabilities:
    return Capabilities(
        transactions=False,
        reason=f"{format_name} files have no transactions: a crash in the middle of add_messages may keep a prefix of the batch",
    )


class FileConversationStore(ConversationStore):
    """A ConversationStore in a folder: one append-only messages file per session, locked across processes; the
    format is the subclass's ``codec``."""

    OPTIONS = OPTIONS
    codec: ClassVar[Codec]

    def __init__(self, directory: str | os.PathLike[str], *, lock_timeout: float = 30.0) -> None:
        self.directory = Path(directory).expanduser()
        self.url = f"{self.codec.scheme}://{self.directory}"
        self._lock_timeout = lock_timeout
        self._locks = self.directory / ".locks"
        make_private_dir(self.directory, own=False)
        make_private_dir(self._locks, root=self.directory)
        self._lock_files = LockFiles(self.directory, lock_timeout)
        self._id_indexes: dict[Path, _IdIndex] = {}
        self._files: dict[str, _Files] = {}
        self._headers: dict[Path, tuple[_Generation, Session]] = {}

    @classmethod
    def from_url(cls, url: StoreURL, **options: Any) -> Any:
        opts, _ = resolve_options(f"{url.scheme}://", OPTIONS, {**url.query, **options})
        return cls(_directory(url), **opts)

    # ---- files ----

    def _paths(self, session_id: str) -> _Files:
        files = self._files.get(session_id)
        if files is None:
            if len(self._files) >= _CACHED_SESSIONS:
                self._files.clear()
            files = self._files[session_id] = self._stem_paths(session_file_stem(session_id))
        return files

    def _stem_paths(self, stem: str) -> _Files:
        codec = self.codec
        return _Files(
            self.directory / f"{stem}{codec.header_suffix}", self.directory / f"{stem}{codec.messages_suffix}",
            self._locks / f"{stem}.lock",
        )

    def _settled(self, files: _Files, read: Callable[..., T], *args: Any) -> T:
        """Run a read that takes no lock until no removal overlapped it.

        Appends only add bytes after the end, so a read racing them sees a consistent prefix. A removal cuts the
        messages file, but only after it has replaced the header: the same header before and after the read (and
        no block read short) means nothing was cut under it. A read that keeps meeting removals takes the lock.
        """
        for _ in range(_READ_ATTEMPTS):
            before = _generation(files.header)
            try:
                result = read(*args)
            except _Moved:
                continue
            if _generation(files.header) == before:
                return result
        with self._locked(files.lock):
            return read(*args)

    @contextmanager
    def _locked(self, lock_path: Path) -> Iterator[None]:
        try:
            with self._lock_files.hold(os.fspath(lock_path)):
                yield
        except Timeout:
            raise StoreUnavailable(
                f"another process has held the lock of {lock_path.name} for {self._lock_timeout:g} s; try again"
            ) from None

    def _close(self) -> None:
        self._lock_files.close()

    def _translate_error(self, error: Exception) -> Error | None:
        if isinstance(error, OSError):
            return StoreUnavailable(f"cannot use the session directory {self.directory}: {error.strerror or error}")
        return None

    def _read_header(self, path: Path) -> Session | None:
        """The session a header file holds; None when there is none; IntegrityError naming it when it is damaged.

        Kept in memory while the file is the one read: every write replaces a header by a new file (a new inode and
        a later file time, see _write_header), so the same generation (see _generation) is the same content. For
        the store's own use: a session it returns is not shared with a caller.
        """
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        cached = self._headers.get(path)
        if cached is not None and cached[0] == (st.st_ino, st.st_mtime_ns, st.st_size) and stat.S_ISREG(st.st_mode):
            return cached[1]
        session, generation = self._header(path)
        if session is not None and generation is not None:
            if len(self._headers) >= _CACHED_SESSIONS:
                self._headers.clear()
            self._headers[path] = generation, session
        return session

    def _header(self, path: Path) -> tuple[Session | None, _Generation | None]:
        """The session a header file holds, and the generation (see _generation) of the very file read."""
        try:
            with open_private(path, "rb", root=self.directory) as f:
                st = os.fstat(f.fileno())
                data = f.read()
        except FileNotFoundError:
            return None, None
        try:
            session = Session.model_validate(self.codec.load(data))
        except (ValueError, RecursionError) as e:  # not UTF-8, not the format, or not the shape of a session
            why = "empty" if not data.strip() else self.codec.why(e, "a session header")
            raise damaged(path, self.directory, why) from None
        if session.updated_at.tzinfo is None or session_file_stem(session.session_id) + self.codec.header_suffix != path.name:
            raise damaged(path, self.directory, "it does not hold this session")
        return session, (st.st_ino, st.st_mtime_ns, st.st_size)

    def _exists(self, header_path: Path) -> bool:
        """Whether a session's header is there, refusing a link or a folder in its place."""
        try:
            mode = os.lstat(header_path).st_mode
        except FileNotFoundError:
            return False
        if stat.S_ISLNK(mode):
            raise unsafe(header_path, self.directory, "a symbolic link")
        if not stat.S_ISREG(mode):
            raise unsafe(header_path, self.directory, "not a regular file")
        return True

    def _last_record(self, messages_path: Path) -> tuple[int, datetime, int] | None:
        """(seq, created_at, where the messages end) of the last record: message_count and activity come from it."""
        try:
            f = open_private(messages_path, "rb", root=self.directory)
        except FileNotFoundError:
            return None
        with f:
            newest = _newest_record(self.codec, f, messages_path.name)
        if newest is None:
            return None
        _, record, end = newest
        return record["seq"], self._moment_of(record, messages_path), end

    def _load(self, files: _Files) -> Session | None:
        """The session with message_count and activity from the last record, read as one state (see _settled: the
        header read is the one whose file must still be there after the last record is read)."""
        for _ in range(_READ_ATTEMPTS):
            session, seen = self._header(files.header)
            if session is None:
                return None
            try:
                last = self._last_record(files.messages)
            except _Moved:
                continue
            if _generation(files.header) == seen:
                return _counted(session, last)
        with self._locked(files.lock):
            session = self._read_header(files.header)
            return None if session is None else _counted(session, self._last_record(files.messages))

    def _header_text(self, session: Session) -> str:
        return self.codec.document(session.model_dump(mode="json", exclude={"message_count"}))

    def _write_header(self, header_path: Path, session: Session, activity: datetime) -> None:
        before = _generation(header_path)
        write_private(header_path, self._header_text(session))
        # Listing relies on "activity <= the newer file time" (see _list_sessions). A session stamped ahead of this
        # machine's clock (an import, another machine's clock) would break that: move the file time up to it.
        # The time also moves past the old header's, so that no two headers in a row look alike to _settled (a
        # freed inode number can come back within one tick of the coarse file clock).
        _cover(header_path, max(_ns(activity), before[1] + 1 if before else 0))

    def _create_files(self, session: Session, messages: list[Message] | None = None) -> None:
        header_path, messages_path, _ = self._paths(session.session_id)
        # The header is written last: it is the commit point. Leftover messages of a half-created or
        # half-deleted session with this id are discarded first.
        with open_private(messages_path, "wb", root=self.directory) as f:
            if messages:
                f.write(b"".join([self.codec.encode_message(m) for m in messages]))
            f.flush()
            os.fsync(f.fileno())
        self._write_header(header_path, session, max([session.updated_at, *(m.created_at for m in messages or [])]))

    # ---- sessions ----

    def _insert_session(self, session: Session) -> bool:
        header_path, _, lock_path = self._paths(session.session_id)
        with self._locked(lock_path):
            if self._exists(header_path):
                return False
            self._create_files(session)
            return True

    def _get_or_insert_session(self, session: Session) -> Session:
        files = self._paths(session.session_id)
        with self._locked(files.lock):
            existing = self._load(files)
            if existing is not None:
                return existing
            self._create_files(session)
            return session

    def _get_session(self, session_id: str) -> Session | None:
        return self._load(self._paths(session_id))

    def _load_stem(self, stem: str) -> Session | None:
        try:
            return self._load(self._stem_paths(stem))
        except (IntegrityError, OSError) as e:
            # One damaged or unreadable session must not make listing fail for everyone; reading it directly says why.
            name = self._stem_paths(stem).header.name
            log.warning("praison_db: skipped session file %s: %s", name, getattr(e, "strerror", None) or e)
            return None

    def _kind_of(self, name: str) -> tuple[str, str] | None:
        """("header" or "messages", stem) for a file name of ours, None for anything else in the folder."""
        codec = self.codec
        if name.endswith(codec.header_suffix):
            return "header", name[: -len(codec.header_suffix)]
        if name.endswith(codec.messages_suffix):
            return "messages", name[: -len(codec.messages_suffix)]
        return None

    def _file_times(self) -> tuple[dict[str, int], dict[str, int]]:
        """The modification time of every header and of every messages file, by stem; anything else in the folder
        is not ours. One pass over the folder: listing stats every session's files."""
        codec = self.codec
        header_suffix, messages_suffix = codec.header_suffix, codec.messages_suffix
        header_cut, messages_cut = -len(header_suffix), -len(messages_suffix)
        headers: dict[str, int] = {}
        messages: dict[str, int] = {}
        with os.scandir(self.directory) as entries:
            for entry in entries:
                name = entry.name
                # The header suffix first: a YAML header's name also ends with the messages suffix.
                if name.endswith(header_suffix):
                    times, stem = headers, name[:header_cut]
                elif name.endswith(messages_suffix):
                    times, stem = messages, name[:messages_cut]
                else:
                    continue
                # Folders, links (dangling or not) and devices named like ours are ignored: never followed.
                if not stem or not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    times[stem] = entry.stat(follow_symlinks=False).st_mtime_ns
                except FileNotFoundError:  # deleted meanwhile
                    continue
        return headers, messages

    def _stems(self) -> list[str]:
        return list(self._file_times()[0])

    def _all_sessions(self) -> Iterator[Session]:
        """Every session, reading only headers and the last record of each messages file."""
        for stem in self._stems():
            session = self._load_stem(stem)
            if session is not None:
                yield session

    def _list_sessions(self, flt: SessionFilter, limit: int, after: tuple[datetime, str] | None) -> list[Session]:
        # Every write to a session touches one of its two files, and a write stamped ahead of the file system's clock
        # moves that file's time up to the stamp (_cover), so a session's activity (updated_at) is no later than the
        # newer of their modification times, give or take the coarse clock of file times (_MTIME_SLACK).
        # Sessions are read in that order, and reading stops once no unread session can beat the page's last one:
        # a page of the newest sessions costs a stat per session plus a read of only those it needs.
        headers, messages = self._file_times()
        for stem, mtime in messages.items():
            if headers.get(stem, mtime) < mtime:
                headers[stem] = mtime
        # A heap, not a sort: a page needs the newest few of many sessions.
        candidates = [(-mtime, stem) for stem, mtime in headers.items()]
        heapq.heapify(candidates)
        page: list[Session] = []
        while candidates:
            bound_ns, stem = heapq.heappop(candidates)
            bound_ns = -bound_ns
            if len(page) >= limit and bound_ns + _MTIME_SLACK_NS < _ns(page[-1].updated_at):
                break
            session = self._load_stem(stem)
            if session is None:
                continue
            if _ns(session.updated_at) > bound_ns + _MTIME_SLACK_NS:
                self._repair_file_time(session)
            if not flt.matches(session) or (after is not None and activity_key(session) >= after):
                continue
            page.append(session)
            page.sort(key=activity_key, reverse=True)
            del page[limit:]
        return page

    def _repair_file_time(self, session: Session) -> None:
        """Restore "activity <= file time" for a session whose files were copied or touched without their times.

        No lock (a listing must not wait for a writer): _cover only ever moves a file time forward, and a writer that
        replaces the header meanwhile covers its own stamp.
        """
        header_path = self._paths(session.session_id)[0]
        try:
            _cover(header_path, _ns(session.updated_at))
        except OSError as e:  # best effort (a read-only folder): the listing itself must not fail for it
            log.warning("praison_db: could not fix the file time of %s: %s", header_path.name, e.strerror or e)
        else:
            log.warning("praison_db: %s was older than its session's activity; moved it forward", header_path.name)

    def _update_session(self, session_id: str, changes: dict[str, Any], now: datetime) -> Session | None:
        files = self._paths(session_id)
        header_path = files.header
        with self._locked(files.lock):
            current = self._load(files)
            if current is None:
                return None
            updated = current.model_copy(update={**changes, "updated_at": max(now, current.updated_at)})
            self._write_header(header_path, updated, updated.updated_at)
            return updated

    def _remove(self, session_id: str, user_id: str | None) -> bool:
        header_path, messages_path, lock_path = self._paths(session_id)
        with self._locked(lock_path):
            if is_link(messages_path):  # refused before anything is removed
                raise unsafe(messages_path, self.directory, "a symbolic link")
            if not self._exists(header_path):
                return False
            try:
                header = self._read_header(header_path)
            except IntegrityError as e:
                if damage_of(e) is None:
                    raise
                if user_id is not None:
                    raise IntegrityError(
                        f"{header_path.name} in {self.directory} is damaged, so its owner is unknown; "
                        "delete the session without user_id"
                    ) from None
                header = None  # a damaged session can still be deleted
            if header is not None and user_id is not None and header.user_id != user_id:
                return False
            header_path.unlink()  # the session is gone from here on; the messages file is garbage
            messages_path.unlink(missing_ok=True)
            fsync_dir(self.directory)
            return True

    def _delete_session(self, session_id: str, user_id: str | None) -> bool:
        return self._remove(session_id, user_id)

    def _delete_sessions(self, *, user_id: str | None = None, idle_before: datetime | None = None) -> int:
        count = 0
        for s in list(self._all_sessions()):
            try:
                if user_id is not None and s.user_id == user_id:
                    count += self._remove(s.session_id, user_id)
                elif idle_before is not None and s.updated_at < idle_before:
                    # Re-check under the lock: an append may have made it active since it was read.
                    files = self._paths(s.session_id)
                    with self._locked(files.lock):
                        fresh = self._load(files)
                        if fresh is None or fresh.updated_at >= idle_before:
                            continue
                        files.header.unlink()
                        files.messages.unlink(missing_ok=True)
                    count += 1
            except IntegrityError as e:  # damaged or planted since listed: leave it, go on with the others
                log.warning("praison_db: skipped session %r: %s", s.session_id, e)
        if count:
            fsync_dir(self.directory)
        return count

    # ---- messages ----

    @contextmanager
    def _appending(self, files: _Files, session_id: str) -> Iterator[tuple[Any, int, _IdIndex]]:
        """Under the session's lock: its messages file ending with a whole record, the last stored seq, its ids."""
        with self._locked(files.lock):
            if self._read_header(files.header) is None:
                raise missing_session(session_id)
            with open_private(files.messages, "r+b", root=self.directory) as f:
                index = self._index_at_end(f, files.messages)
                if index is not None and index.last_seq is not None:
                    yield f, index.last_seq, index  # the file is as this store left it: nothing to repair or read
                    return
                last_seq = self._repair_tail(f, files)
                yield f, last_seq, self._id_index(f, files.messages)

    def _index_at_end(self, f: Any, path: Path) -> _IdIndex | None:
        """The id index of ``f`` when it covers the whole file (no one appended, cut or replaced it since)."""
        index = self._id_indexes.get(path)
        if index is None:
            return None
        st = os.fstat(f.fileno())
        if st.st_size != index.offset or not index.still_fits(f, (st.st_dev, st.st_ino), st.st_size):
            return None
        self._id_indexes.pop(path, None)
        self._id_indexes[path] = index  # most recently used last
        return index

    def _append(self, session_id: str, drafts: list[MessageDraft], now: datetime) -> list[Message]:
        files = self._paths(session_id)
        with self._appending(files, session_id) as (f, last_seq, index):
            known = {d.id: self._read_at(f, index.ids[d.id], files.messages) for d in drafts if d.id in index.ids}
            fresh = [d for d in drafts if d.id not in known]
            if fresh:
                stored = [d.stamp(session_id, last_seq + 1 + i, now) for i, d in enumerate(fresh)]
                self._write_indexed(f, index, stored, now)
                known.update((m.id, m) for m in stored)
        return [known[d.id] for d in drafts]  # type: ignore[index]

    def _write_indexed(self, f: Any, index: _IdIndex, messages: list[Message], activity: datetime) -> None:
        """Append the messages' records at the end of ``f``, fsync, then add their ids to ``index``."""
        records = [self.codec.encode_message(m) for m in messages]
        end = f.seek(0, os.SEEK_END)
        f.write(b"".join(records))
        f.flush()
        os.fsync(f.fileno())
        # Indexed only once durable: an id never points at a record a failed write may not have left.
        for m, record in zip(messages, records):
            index.ids[m.id] = (end, len(record))
            end += len(record)
        index.offset, index.tail, index.last_seq = end, records[-1], messages[-1].seq
        # A file server whose clock trails ours stamps the file before the messages: see _list_sessions.
        if os.fstat(f.fileno()).st_mtime_ns + _MTIME_SLACK_NS < _ns(activity):
            _cover(f.fileno(), _ns(activity))

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
            codec = self.codec
            terminator, width = codec.terminator, len(codec.terminator)
            f.seek(index.offset)
            data = f.read(st.st_size - index.offset)
            pos = index.offset
            for raw in data.split(terminator)[:-1]:
                message_id = codec.message_id(raw) if raw else None
                if message_id is not None:
                    index.ids[message_id] = (pos, len(raw) + width)
                pos += len(raw) + width
            index.offset, index.last_seq = pos, None
            if data:
                before = data.rfind(terminator, 0, len(data) - width)
                index.tail = data[before + width :] if before >= 0 else data
        return index

    def _read_at(self, f: Any, where: tuple[int, int], path: Path) -> Message:
        f.seek(where[0])
        record = self.codec.decode(f.read(where[1] - len(self.codec.terminator)))
        if record is None:
            raise damaged(path, self.directory, f"a message's {self.codec.record_kind} changed while the lock was held")
        return _message(record)

    def _repair_tail(self, f: Any, files: _Files) -> int:
        """Make the messages file end with a whole record (the lock is held) and return the last stored seq: a torn
        last record (a crash mid-write) is cut off, a removal a crash interrupted after its commit point is finished."""
        end = f.seek(0, os.SEEK_END)
        keep = _after_last(f, end, self.codec.terminator)
        if keep < end:
            log.warning("praison_db: removed a torn last %s (%d bytes) left by a crash", self.codec.record_kind, end - keep)
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        newest = _newest_record(self.codec, f, files.messages.name)
        if newest is None:
            return 0
        _, record, messages_end = newest
        if _cut_of(record) is not None:
            log.warning("praison_db: finishing a removal of messages that a crash interrupted in %s", files.messages.name)
            self._finish_cut(f, files, self._moment_of(record, files.messages), messages_end)
        return int(record["seq"])

    def _moment_of(self, record: Record, path: Path) -> datetime:
        try:
            moment = datetime.fromisoformat(record["created_at"])
        except ValueError:
            raise damaged(path, self.directory, "the last record has no valid created_at") from None
        if moment.tzinfo is None:
            raise damaged(path, self.directory, "the last record has no time zone")
        return moment

    # ---- removing messages ----
    #
    # A removal takes the newest messages off the end of the file, under the session's lock, in three durable steps:
    #   1. append a cut record {"seq": <newest seq kept>, "created_at": <now>, "cut": <byte offset>} and fsync: the
    #      commit point. A reader that finds it last reads the messages before the offset, and takes message_count
    #      and activity from it as it would from a last message; a crash before it is complete leaves a torn record,
    #      which readers skip and the next write cuts off, i.e. the old state;
    #   2. replace the header with updated_at moved to the cut's time (a reader without the lock sees the header
    #      change and reads again: see _settled);
    #   3. truncate the file at the offset: the cut record goes with the removed records.
    # A crash between 1 and 3 leaves the cut record last; the next write under the lock does 2 and 3 again. So
    # the file never keeps removed records or markers: appends stay one write at the end, newest-N reads stay a few
    # blocks from the end, and a freed seq or a removed message's id is simply free again.

    def _pop(self, session_id: str, now: datetime) -> Message | None:
        return self._cut_newest(session_id, None, now)[1]

    def _truncate(self, session_id: str, after_seq: int, now: datetime) -> int:
        return self._cut_newest(session_id, after_seq, now)[0]

    def _cut_newest(self, session_id: str, after_seq: int | None, now: datetime) -> tuple[int, Message | None]:
        """Remove the newest message (``after_seq`` None) or every message after ``after_seq``, atomically.

        Returns how many went and the newest of them.
        """
        files = self._paths(session_id)
        with self._locked(files.lock):
            if self._read_header(files.header) is None:
                return 0, None
            with open_private(files.messages, "r+b", root=self.directory) as f:
                self._repair_tail(f, files)
                end = f.seek(0, os.SEEK_END)
                st = os.fstat(f.fileno())
                index = self._id_indexes.get(files.messages)
                if index is not None and not index.still_fits(f, (st.st_dev, st.st_ino), end):
                    self._id_indexes.pop(files.messages, None)
                    index = None
                plan = self._plan_cut(f, files.messages.name, end, after_seq)
                if plan is None:
                    return 0, None
                cut, kept_seq, kept_record, gone, count = plan
                if gone:
                    newest: Record | None = gone[0]
                else:
                    found = _newest_record(self.codec, f, files.messages.name)
                    newest = found[1] if found else None
                # Activity never moves back, even past a message stamped ahead of this clock (an import).
                moment = max(now, self._moment_of(newest, files.messages)) if newest else now
                f.seek(end)
                f.write(self.codec.encode({"seq": kept_seq, "created_at": moment.isoformat(), "cut": cut}))
                f.flush()
                os.fsync(f.fileno())
                try:
                    self._finish_cut(f, files, moment, cut)
                except BaseException:
                    _take_back(f, end)
                    raise
                if index is not None and index.offset > cut:
                    # This store's ids stay exact without reading the file again: drop those of the removed records.
                    if gone is None:
                        index.ids.clear()
                    for record in gone or ():
                        index.ids.pop(record["id"], None)
                    index.offset, index.tail, index.last_seq = cut, kept_record, kept_seq
            popped = _message(gone[0]) if gone else None
        return count, popped

    def _plan_cut(self, f: Any, name: str, end: int, after_seq: int | None) -> tuple[int, int, bytes, list[Record] | None, int] | None:
        """Where a removal cuts the file: (offset, seq of the newest message kept or 0, that message's record with its
        terminator, the removed records newest first, how many), or None when nothing goes.

        Reads backwards only as far as the removal goes. Removing everything (``after_seq`` 0) parses no record of
        this codec's own: the cut is at 0 and the records are counted (the removed records are then None).
        """
        if after_seq == 0:
            count = _message_records(self.codec, f, end)
            return (0, 0, b"", None, count) if count else None
        gone: list[Record] = []
        terminator = self.codec.terminator
        for offset, raw, record in _messages_newest_first(self.codec, f, name):
            if gone if after_seq is None else record["seq"] <= after_seq:
                return (offset + len(raw) + len(terminator), record["seq"], raw + terminator, gone, len(gone)) if gone else None
            gone.append(record)
        return (0, 0, b"", gone, len(gone)) if gone else None

    def _finish_cut(self, f: Any, files: _Files, moment: datetime, cut: int) -> None:
        """Steps 2 and 3 of a removal whose cut record is durable (see above); the lock is held."""
        session = self._read_header(files.header)
        if session is not None:
            activity = max(session.updated_at, moment)
            self._write_header(files.header, session.model_copy(update={"updated_at": activity}), activity)
        # No fsync: the removal is durable since the cut record is. A crash that loses this truncation brings the cut
        # record back as the last record, which reads follow and the next write finishes; any later fsync of the file
        # (the next append's) makes the truncation durable with it.
        f.truncate(cut)
        f.flush()

    # ---- reading messages ----

    def _get_messages(self, session_id: str, limit: int | None, before_seq: int | None, after_seq: int | None) -> list[Message]:
        files = self._paths(session_id)
        if limit is None:
            records = self._settled(files, self._read_all, files.messages)
            records = [
                r for r in records if (before_seq is None or r["seq"] < before_seq) and (after_seq is None or r["seq"] > after_seq)
            ]
        else:
            stop = (lambda r: r["seq"] <= after_seq) if after_seq is not None else None
            skip = (lambda r: r["seq"] >= before_seq) if before_seq is not None else None
            records = self._settled(files, _tail, self.codec, files.messages, limit, stop, skip, self.directory)
            records.reverse()
        try:
            return [_message(r) for r in records]
        except ValueError:
            raise damaged(files.messages, self.directory, "a message has no valid created_at") from None

    def _read_all(self, path: Path) -> list[Record]:
        try:
            with open_private(path, "rb", root=self.directory) as f:
                size = os.fstat(f.fileno()).st_size
                data = f.read()
        except FileNotFoundError:
            return []
        if len(data) < size:
            raise _Moved
        decode, terminator = self.codec.decode, self.codec.terminator
        pieces = data.split(terminator)
        torn = pieces.pop()  # after the last terminator: nothing, or a torn write
        last = decode(pieces[-1]) if pieces and pieces[-1] else None
        cut = _cut_of(last) if last is not None else None
        if cut is not None:  # a removal in progress, or one a crash interrupted: the messages end where it says
            last_start = len(data) - len(torn) - len(terminator) - len(pieces[-1])
            pieces = data[: min(cut, last_start)].split(terminator)
            pieces.pop()
            last = None
        out = []
        for raw in pieces[:-1] if last is not None else pieces:
            if raw:
                record = decode(raw)
                if record is not None and isinstance(record.get("id"), str):
                    out.append(record)
        if last is not None and _is_message(last):
            out.append(last)
        return out

    def _count_messages(self, session_id: str) -> int:
        files = self._paths(session_id)
        if not self._exists(files.header):
            return 0
        last = _again_if_moved(self._last_record, files.messages)
        return last[0] if last else 0

    def _import_messages(self, session_id: str, messages: list[Message], updated_at: datetime) -> int:
        files = self._paths(session_id)
        with self._appending(files, session_id) as (f, last_seq, index):
            fresh = [m for m in messages if m.id not in index.ids]
            after_last(session_id, fresh, last_seq)
            if fresh:
                self._write_indexed(f, index, fresh, max(updated_at, fresh[-1].created_at))
            session = self._read_header(files.header)  # read again: finishing a removal may have replaced it
            if session is not None and updated_at > session.updated_at:
                self._write_header(files.header, session.model_copy(update={"updated_at": updated_at}), updated_at)
        return len(fresh)

    def _stream_messages(self, session_id: str, after_seq: int, size: int) -> Iterator[Message]:
        # One forward pass over the file, a block at a time: the windowed reads of the base class would each scan it.
        # The newest record when the stream starts bounds it, and seqs only ever go up.
        files = self._paths(session_id)
        generation = _generation(files.header)
        last = self._read_op(self._settled, files, self._last_record, files.messages)
        if last is None:
            return
        last_seq, _, end = last
        try:
            f = open_private(files.messages, "rb", root=self.directory)
        except FileNotFoundError:
            return
        decode, terminator = self.codec.decode, self.codec.terminator
        width = len(terminator)
        with f:
            previous, pos, carry = after_seq, 0, b""
            given: tuple[int, bytes] | None = None  # offset and record of the last message yielded
            while True:
                f.seek(pos)
                block = f.read(_STREAM_BLOCK)
                if _generation(files.header) != generation:
                    # A removal cut the file under the stream (it replaces the header first): go on after the last
                    # message given if its record is still where it was, else from the start (seqs already given are
                    # skipped), up to where the messages end now.
                    generation = _generation(files.header)
                    now = self._read_op(self._settled, files, self._last_record, files.messages)
                    end = now[2] if now else 0
                    carry = b""
                    pos = given[0] + len(given[1]) + width if given and _still_at(f, *given, terminator) else 0
                    continue
                if not block:
                    return
                pieces = (carry + block).split(terminator)
                start = pos - len(carry)
                carry = pieces.pop()  # torn, or continued in the next block
                pos += len(block)
                for raw in pieces:
                    offset, start = start, start + len(raw) + width
                    if offset >= end:
                        return  # past the messages (a cut record, or what was appended since the stream began)
                    record = decode(raw)
                    if record is None or not _is_message(record) or record["seq"] <= previous:
                        continue
                    if record["seq"] > last_seq:
                        return
                    previous, given = record["seq"], (offset, raw)
                    yield _message(record)

    def _import(self, session: Session, messages: list[Message]) -> bool:
        header_path, _, lock_path = self._paths(session.session_id)
        with self._locked(lock_path):
            if self._exists(header_path):
                return False
            self._create_files(session, messages)
            return True

    # ---- health ----

    def damaged_files(self) -> list[dict[str, str]]:
        """Files of this folder that the store cannot use, as ``{"file": path relative to the folder, "problem": ...}``.

        Reports links and non-files where the store keeps files (headers, messages, locks, the Agent's spool), headers
        that do not hold their session, and messages files with records that are not messages or seqs out of order (a
        torn last record left by a crash is repaired by the next append and not reported). Reads every messages file.
        """
        found: list[dict[str, str]] = []

        def report(path: Path, problem: str) -> None:
            found.append({"file": shown(path, self.directory), "problem": problem})

        headers: set[str] = set()
        with os.scandir(self.directory) as entries:
            listed = sorted(entries, key=lambda e: e.name)
        for entry in listed:
            path = Path(entry.path)
            if entry.name in (".locks", "unsaved"):
                if entry.is_symlink() or not entry.is_dir(follow_symlinks=False):
                    report(path, "a symbolic link" if entry.is_symlink() else "not a folder")
                else:
                    self._check_folder(path, report)
                continue
            kind = self._kind_of(entry.name)
            if kind is None:
                continue
            problem = _entry_problem(entry)
            if problem:
                report(path, problem)
            elif kind[0] == "header":
                headers.add(kind[1])
                try:
                    self._read_header(path)
                except IntegrityError as e:
                    report(path, damage_of(e) or str(e))
        reported = {d["file"] for d in found}
        for stem in sorted(headers):
            path = self._stem_paths(stem).messages
            problem = None if shown(path, self.directory) in reported else _messages_problem(self.codec, path)
            if problem:
                report(path, problem)
        return found

    @staticmethod
    def _check_folder(folder: Path, report: Any) -> None:
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                problem = _entry_problem(entry)
                if problem:
                    report(Path(entry.path), problem)
