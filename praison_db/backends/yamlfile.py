"""YAML files: the file stores of :mod:`praison_db.backends.filestore` in documents a person can read and edit.

URL: ``yaml:///abs/dir`` or ``yaml://rel/dir`` (extra ``[yaml]``: PyYAML). Option: ``lock_timeout`` (seconds,
default 30). Both roles: conversations in the folder, state in ``state.yaml`` beside them.

Layout of a session directory, per session::

    <name>.session.yaml   the session's header, one YAML mapping; its presence means "exists"
    <name>.yaml           the messages, one YAML document each, appended (removals cut the end off)
    .locks/<name>.lock    the cross-process lock taken by every write
    state.yaml            the state store's file: a snapshot document, then one document per change (filestate.py)

A message document is a block mapping of the message's fields, in the model's order, leaving out the fields that
are None and an empty ``metadata`` or ``extra``; a removal's cut record is a document of ``seq``, ``created_at`` and
``cut``::

    ---
    id: 5f0c...
    session_id: user-123
    seq: 1
    role: user
    content: |
      My name is Alice.
      And yours?
    created_at: '2025-01-01T12:00:00.123456+00:00'
    ...

Every value comes back exactly: PyYAML's safe representer quotes a string its resolver would read as something else
(``'yes'``, ``'1e3'``, ``'2024-01-01'``, ``'~'``, ``''``), ints are written in full and floats as ``repr`` gives them
(``-0.0`` included); strings with line breaks other than ``\\n`` (CR, NEL, U+2028, U+2029) or a BOM are written
double-quoted, where they are escapes; other multi-line strings are literal blocks where YAML allows one (else
double-quoted). No anchors or aliases are written. PyYAML's C loader and dumper (libyaml) are used; without libyaml
the pure-Python ones are, with a warning.

Why the end marker line ``...`` is a safe record terminator: the codec always dumps a mapping whose keys are the
message's field names, in block style. The emitter puts at column 0 only the ``---`` that starts the document, those
keys, the ``- `` items of a sequence that is the value of one of them (YAML's indentless sequences), and the ``...``
that ends the document. Everything else a value can produce is indented by the emitter: nested mappings and
sequences, long plain or quoted scalars continued on the next line, the lines of a literal block (an empty line of a
block stays empty). It writes no comments or directives, and every break inside a quoted scalar is an escape. So no
line of a document starts with ``...`` or ``---`` except its own markers, whatever the message holds (an id, a role,
a key or a value of ``"\\n...\\n"``, ``"---"``, ``"#"``, tabs, CR, NEL, a BOM, U+2028): ``\\n...\\n`` ends exactly
one record, as a newline does in JSON Lines, and reading backwards from the end finds records by it.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import yaml

from ..files import why_damaged
from ..models import Message
from .filestate import FileStateStore
from .filestore import Codec, FileConversationStore, Record, file_capabilities

try:
    from yaml import CSafeDumper as _SafeDumper, CSafeLoader as _Loader
except ImportError:  # PyYAML built without libyaml
    from yaml import SafeDumper as _SafeDumper, SafeLoader as _Loader  # type: ignore[assignment]

    warnings.warn(
        "praison_db: PyYAML has no libyaml here, so the YAML stores use its pure-Python loader and dumper, several "
        "times slower; install libyaml (e.g. apt install libyaml-dev) and reinstall PyYAML for speed",
        RuntimeWarning,
        stacklevel=2,
    )

__all__ = ["YamlConversationStore", "YamlStateStore", "YamlDocuments"]

# Line breaks YAML knows besides "\n", and the BOM: written as escapes in a double-quoted scalar, never raw.
_ESCAPED = re.compile("[\r\x85\u2028\u2029\ufeff]")
_STR = "tag:yaml.org,2002:str"
# Fields a message document always holds; the others are left out when None (metadata and extra when empty).
_ALWAYS = frozenset({"id", "session_id", "seq", "created_at"})
_EMPTY_DICTS = frozenset({"metadata", "extra"})
# An id written as a plain scalar of these characters on the document's first line can be read without parsing the
# document, once the resolver confirms that YAML reads it as a string (not 123, 1.5, true, null).
_PLAIN_ID = re.compile(rb"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_RESOLVER = yaml.resolver.Resolver()


class _Dumper(_SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # a value seen twice is written twice: documents stay self-contained and readable


def _represent_str(dumper: Any, text: str) -> Any:
    style = '"' if _ESCAPED.search(text) else "|" if "\n" in text else None
    return dumper.represent_scalar(_STR, text, style=style)


_Dumper.add_representer(str, _represent_str)


class _NotYaml(ValueError):
    """A header or state file that YAML cannot parse; says where."""


def _dump(value: Any, *, record: bool) -> str:
    return yaml.dump(
        value, Dumper=_Dumper, explicit_start=record, explicit_end=record, allow_unicode=True,
        default_flow_style=False, sort_keys=False,
    )  # fmt: skip


class YamlDocuments(Codec):
    """One YAML document per record (messages, state changes: ``---`` ... ``...``), ended by the ``...`` line;
    headers as one YAML mapping."""

    scheme, format_name, record_kind = "yaml", "YAML", "document"
    header_suffix, messages_suffix, state_name = ".session.yaml", ".yaml", "state.yaml"
    terminator = b"\n...\n"  # the end marker line of a document: see the module docstring for why it is safe

    def encode(self, record: Record) -> bytes:
        return _dump(record, record=True).encode("utf-8")

    def encode_message(self, message: Message) -> bytes:
        fields = message.model_dump(mode="json")
        return self.encode(
            {
                name: value
                for name, value in fields.items()
                if name in _ALWAYS or not (value is None or (name in _EMPTY_DICTS and not value))
            }
        )

    def decode(self, raw: bytes) -> Record | None:
        try:
            value = yaml.load(raw, Loader=_Loader)
        except (yaml.YAMLError, ValueError, RecursionError, TypeError):
            return None
        if not isinstance(value, dict):
            return None
        seq = value.get("seq")
        return value if type(seq) is int and isinstance(value.get("created_at"), str) else None

    def message_id(self, raw: bytes) -> str | None:
        # The id index of a long session is built from every document once per store: parsing each would cost a
        # first append to a 100,000-message session seconds; the id on the first line costs microseconds.
        end = raw.find(b"\n", 8)
        if raw.startswith(b"---\nid: ") and raw.startswith(b"session_id: ", end + 1) and self.looks_like_message(raw):
            token = raw[8:end]
            if _PLAIN_ID.fullmatch(token):
                text = token.decode("ascii")
                if _RESOLVER.resolve(yaml.ScalarNode, text, (True, False)) == _STR:
                    return text
        return super().message_id(raw)

    def looks_like_message(self, raw: bytes) -> bool:
        # The id is the first field and created_at the last of every message document this codec writes.
        return raw.startswith(b"---\nid: ") and raw.startswith(b"created_at: ", raw.rfind(b"\n") + 1)

    def document(self, value: Any) -> str:
        return _dump(value, record=False)

    def load(self, data: bytes) -> Any:
        text = data.decode("utf-8")
        try:
            return yaml.load(text, Loader=_Loader)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise _NotYaml(f"not YAML: {problem}{where}") from None

    def why(self, error: BaseException, what: str) -> str:
        return str(error) if isinstance(error, _NotYaml) else why_damaged(error, what)


class YamlConversationStore(FileConversationStore):
    """Conversations in YAML files: one append-only file of YAML documents per session, locked across processes."""

    codec = YamlDocuments()
    capabilities = file_capabilities("YAML")


class YamlStateStore(FileStateStore):
    """StateStore in one YAML file (``state.yaml``): a snapshot document, then one appended document per change,
    compacted now and then (see :mod:`praison_db.backends.filestate`)."""

    codec = YamlDocuments()
