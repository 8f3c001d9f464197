"""JSON files: the zero-config DefaultSessionStore, and a file-backed StateStore.

URL: ``json:///abs/dir``, ``file:///abs/dir`` or ``json://rel/dir``. Option: ``lock_timeout`` (seconds, default 30).

Layout of a session directory, per session::

    <name>.session.json   the session's header (owner, type, name, metadata); its presence means "exists"
    <name>.jsonl          the messages, one JSON object per line, appended (removals cut the end off)
    .locks/<name>.lock    the cross-process lock (filelock) taken by every write, delete included
    state.json            the state store's file: a snapshot line, then one line per change (see filestate.py)

A message line holds every field of the message (type, extra and JSON content included) as compact JSON, ``id``
first and ``created_at`` last, and reads back exactly; lines written before type and extra existed read as messages
without them. A removal's cut record is a line ``{"seq":...,"created_at":...,"cut":...}``. Compact JSON escapes
every newline inside a string, so a newline ends a record and nothing else: a line torn by a crash is what follows
the last newline.

The guarantees (O(1) appends under a cross-process lock, newest-N reads from the end of the file, torn-write
recovery, removals that cut the file in place behind a durable commit record, lock-free reads, files never opened
through a symbolic link, owner-only files, damage reports) are those of every file store: see
:mod:`praison_db.backends.filestore`, which this module gives its format (:class:`JsonLines`).
"""

from __future__ import annotations

import json
import json.scanner
from collections.abc import Iterator
from typing import Any

from ..files import open_private as open_private, session_file_stem as session_file_stem  # imported from here too
from ..models import Message, dumps
from .filestate import FileStateStore
from .filestore import Codec, FileConversationStore, Record, file_capabilities, records_before
from .filestore import _ns as _ns  # imported from here too

__all__ = ["JsonConversationStore", "JsonStateStore", "DefaultSessionStore", "JsonLines"]

# Lines this module writes for messages start and end so (the id is the first field, created_at the last): they
# are counted without parsing them.
_MESSAGE_START, _MESSAGE_END = b'{"id":"', b'"}'


# json's own C scanner: what json.loads runs once it has found the text and skipped white space.
_scan = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def _parse_line(line: bytes) -> Record | None:
    """A stored record (a message or a cut), or None for a line that is not one (torn, edited by hand, garbage)."""
    # A line as this module writes it is UTF-8 text holding one object from its first byte to its last: the scanner
    # reads it without json.loads's checks of encoding and white space (a newest-N read parses a few dozen lines).
    # Anything else goes through json.loads.
    try:
        text = line.decode("utf-8")
        value, end = _scan(text, 0)
    except (ValueError, StopIteration, RecursionError):
        return _parse_other(line)
    if end != len(text):
        return _parse_other(line)
    return _record(value)


def _parse_other(line: bytes) -> Record | None:
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return _record(value)


def _record(value: Any) -> Record | None:
    if not isinstance(value, dict):
        return None
    seq = value.get("seq")
    return value if type(seq) is int and isinstance(value.get("created_at"), str) else None


def _lines_before(f: Any, end: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of the complete, non-empty lines of ``f`` that end before ``end``, newest first."""
    return records_before(f, end, b"\n")


class JsonLines(Codec):
    """JSON Lines: one compact JSON object per record (messages, state changes), ended by a newline; headers as one
    JSON object.

    ``decode`` and ``records_before`` go through this module's ``_parse_line`` and ``_lines_before``, looked up
    when called, so that what a read parses can be counted from outside.
    """

    scheme, format_name, record_kind = "json", "JSON", "line"
    header_suffix, messages_suffix, state_name = ".session.json", ".jsonl", "state.json"
    terminator = b"\n"

    def encode(self, record: Record) -> bytes:
        return (dumps(record) + "\n").encode("utf-8")

    def encode_message(self, message: Message) -> bytes:
        # pydantic writes the same compact JSON as json.dumps of the model's JSON dump (field order, UTF-8, escapes;
        # a float's exponent may be spelled 1e-7 rather than 1e-07, the same number), in a quarter of the time.
        return message.model_dump_json().encode("utf-8") + b"\n"

    def decode(self, raw: bytes) -> Record | None:
        return _parse_line(raw)

    def looks_like_message(self, raw: bytes) -> bool:
        return raw.startswith(_MESSAGE_START) and raw.endswith(_MESSAGE_END)

    def records_before(self, f: Any, end: int) -> Iterator[tuple[int, bytes]]:
        return _lines_before(f, end)

    def document(self, value: Any) -> str:
        return json.dumps(value, ensure_ascii=False)

    def load(self, data: bytes) -> Any:
        return json.loads(data)


class JsonConversationStore(FileConversationStore):
    """The DefaultSessionStore: one append-only JSON Lines file per session, locked across processes."""

    codec = JsonLines()
    capabilities = file_capabilities("JSON")

    @staticmethod
    def _line(message: Message) -> bytes:
        """The line an append writes for ``message``."""
        return JsonConversationStore.codec.encode_message(message)


DefaultSessionStore = JsonConversationStore


class JsonStateStore(FileStateStore):
    """StateStore in one JSON Lines file (``state.json``): a snapshot, then one appended line per change, compacted
    now and then (see :mod:`praison_db.backends.filestate`)."""

    codec = JsonLines()
