"""Models shared by every store: Message, Session, Page, and the validation of what users pass in.

Everything here is plain JSON when stored: datetimes are ISO-8601 UTC strings, dicts and lists stay dicts and lists.
"""

from __future__ import annotations

import functools

import json
import math
import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Generic, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import InputError

__all__ = [
    "Message",
    "MessageDraft",
    "Session",
    "Page",
    "Role",
    "SessionType",
    "CHAT_ROLES",
    "MAX_ID_LENGTH",
    "MAX_ROLE_LENGTH",
    "MAX_CONTENT_BYTES",
    "MAX_JSON_DEPTH",
]

# Any short name is a role ("developer", "critic", a framework's own); these are the ones chat models take.
Role = str
CHAT_ROLES: tuple[str, ...] = ("system", "developer", "user", "assistant", "tool")
SessionType = Literal["agent", "team", "workflow"]
SESSION_TYPES: tuple[str, ...] = get_args(SessionType)

MAX_ID_LENGTH = 255
# Roles and item types are short names; 64 characters leaves room for namespaced ones ("ai.example/critic").
MAX_ROLE_LENGTH = 64
# Fields of a message that are not part of an item's own fields: they come from the store or name a column.
MESSAGE_FIELDS = frozenset({"id", "role", "type", "content", "name", "tool_calls", "tool_call_id", "metadata"})
# Content up to 16 MB is accepted everywhere (MySQL LONGTEXT and MongoDB's 16 MB document cap set the bound).
MAX_CONTENT_BYTES = 16 * 1024 * 1024 - 64 * 1024
# Nesting of user JSON (metadata, tool_calls, state values), the outermost list or dict counting as 1. MariaDB's
# JSON_VALID check refuses 32 levels, so this is the most every backend can store.
MAX_JSON_DEPTH = 31


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# Naive and aware UTC convert by adding the epochs' difference: exact, and an eighth of the cost of
# value.replace(tzinfo=...), whose keyword handling dominates reads and writes of many rows.
_NAIVE_EPOCH = datetime(1970, 1, 1)
_UTC_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def as_utc(value: datetime) -> datetime:
    """Aware UTC datetime; naive values are taken to be UTC already (that is how SQL drivers return them)."""
    zone = value.tzinfo
    if zone is None:
        return _UTC_EPOCH + (value - _NAIVE_EPOCH)
    return value if zone is timezone.utc else value.astimezone(timezone.utc)


def naive_utc(value: datetime) -> datetime:
    """The naive UTC datetime of ``value`` (naive values are taken to be UTC already)."""
    if value.tzinfo is None:
        return value
    return _NAIVE_EPOCH + (value - _UTC_EPOCH)


# The slots every pydantic model has, set through their descriptors: a third cheaper than object.__setattr__, which
# looks each one up on the class first (reads of many rows build a model per row).
_new_object = object.__new__
_set_dict, _set_fields_set, _set_extra, _set_private = (
    BaseModel.__dict__[name].__set__ for name in ("__dict__", "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__")
)


def _adopted(cls: type[BaseModel], values: dict[str, Any]) -> Any:
    """A model of ``cls`` whose fields are ``values`` (every field, already valid), built without validation or a
    copy: what ``model_construct`` does for a complete set of fields, without its per-field default handling."""
    model = _new_object(cls)
    _set_dict(model, values)
    _set_fields_set(model, set(values))
    _set_extra(model, None)
    _set_private(model, None)
    return model


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def trusted(cls, **values: Any) -> Any:
        """Build from values the store has already validated (every field given), skipping validation.

        The hot read paths build thousands of these; this does what ``model_construct`` does for a complete set of
        fields, without its per-field default handling (which costs more than the rest of a row).
        """
        if len(values) != cls._field_count():
            return cls.model_construct(**values)
        return cls.adopt(values)

    @classmethod
    def adopt(cls, values: dict[str, Any]) -> Any:
        """:meth:`trusted` for a dict holding exactly every field, which becomes the model's own (no copy): the
        caller must not use or change it afterwards. For rows and records decoded from the store's own data."""
        return _adopted(cls, values)

    @classmethod
    @functools.cache
    def _field_count(cls) -> int:
        return len(cls.model_fields)  # pydantic computes this property on every access

    @field_validator("created_at", "updated_at", check_fields=False)
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return as_utc(value)


class Message(_Model):
    """One turn of a conversation, or any item a framework keeps in one (a function call, a reasoning item), as
    stored.

    ``seq`` numbers the messages of one session from 1 without gaps, in the order they were appended.

    - ``role``: any short name ("user", "developer", a framework's own), or None for a typed item without one.
    - ``type``: the item's type where it has one ("message", "function_call", "reasoning", ...).
    - ``content``: a string, None, or any JSON value (a list of content parts, a dict).
    - ``extra``: the item's other fields, kept as given (``status``, ``call_id``, ``arguments``, ...). When the
      item carried its own ``id`` it is kept here too, so :meth:`to_item` gives back exactly what was added.
    """

    id: str
    session_id: str
    seq: int
    role: str | None = None
    content: Any = None
    type: str | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime

    def to_item(self) -> dict[str, Any]:
        """The item as it was added: its own fields, no store fields (seq, session_id, created_at).

        ``content`` is present when the item has a role or a content; ``name``, ``type``, ``tool_calls`` and
        ``tool_call_id`` when set; ``metadata`` when not empty; ``id`` when the item carried one.
        """
        out: dict[str, Any] = dict(self.extra)
        if self.type is not None:
            out["type"] = self.type
        if self.role is not None:
            out["role"] = self.role
        if self.role is not None or self.content is not None:
            out["content"] = self.content
        if self.name is not None:
            out["name"] = self.name
        if self.tool_calls is not None:
            out["tool_calls"] = self.tool_calls
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.metadata:
            out["metadata"] = self.metadata
        return out

    def to_openai(self) -> dict[str, Any] | None:
        """The message as an OpenAI chat message dict (only the fields that are set), or None for an item a chat
        model does not take.

        Included: messages whose role is system, developer, user, assistant or tool and whose type is None or
        "message". Content parts written in the Responses API's form (``input_text``, ``output_text``) become chat
        ``text`` parts; other content is passed as stored. Left out: typed items (function calls, reasoning) and
        other roles; :meth:`to_item` returns those.
        """
        if self.role not in CHAT_ROLES or self.type not in (None, "message"):
            return None
        content = self.content
        if isinstance(content, list):
            content = [_chat_part(part) for part in content]
        out: dict[str, Any] = {"role": self.role, "content": content}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


def _chat_part(part: Any) -> Any:
    """A Responses API text part as the chat API's text part; any other part unchanged."""
    if isinstance(part, dict) and part.get("type") in ("input_text", "output_text") and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    return part


class Session(_Model):
    """A conversation's header: who owns it, what it is, and when it was last active."""

    session_id: str
    user_id: str | None = None
    agent_id: str | None = None
    session_type: SessionType = "agent"
    name: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime
    message_count: int = 0


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a listing. Pass ``next_cursor`` back as ``cursor`` to get the next page; None means the end."""

    model_config = ConfigDict(frozen=True)

    items: list[T]
    next_cursor: str | None = None

    def __iter__(self) -> Iterator[T]:  # type: ignore[override]
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> T:
        return self.items[index]


# ---- validation of user input (one place, used by every backend through the shared base) ----


def check_text(value: str, what: str) -> str:
    """``value`` unchanged if it can be stored as UTF-8 text; a lone surrogate (half an emoji) cannot."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(
                f"{what} is not valid Unicode: it holds a lone surrogate (half of an emoji?); join or drop it first"
            ) from None
    return value


def check_id(value: object, what: str = "session_id") -> str:
    if not isinstance(value, str) or not value:
        raise InputError(f"{what} must be a non-empty string, got {type(value).__name__}")
    if len(value) > MAX_ID_LENGTH:
        raise InputError(f"{what} is {len(value)} characters long; use at most {MAX_ID_LENGTH}")
    if "\x00" in value:
        raise InputError(f"{what} must not contain NUL characters")
    return check_text(value, what)


def check_optional_id(value: object, what: str) -> str | None:
    return None if value is None else check_id(value, what)


def check_optional_text(value: object, what: str) -> str | None:
    """A short text field (name, tool_call_id): None or a string without NUL or lone surrogates."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f"{what} must be a string or None, got {type(value).__name__}")
    if "\x00" in value:
        raise InputError(f"{what} must not contain NUL characters")
    return check_text(value, what)


def check_name(value: object, what: str) -> str | None:
    """A role or an item type: None or a non-empty string of at most MAX_ROLE_LENGTH characters."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InputError(f"{what} must be a non-empty string or None, got {_preview(value)}")
    if len(value) > MAX_ROLE_LENGTH:
        raise InputError(f"{what} is {len(value)} characters long; use at most {MAX_ROLE_LENGTH}")
    if "\x00" in value:
        raise InputError(f"{what} must not contain NUL characters")
    return check_text(value, what)


def check_role(value: object, kind: str | None = None) -> str | None:
    """Any short role name; None only for a typed item (one with a ``type``)."""
    role = check_name(value, "role")
    if role is None and kind is None:
        raise InputError("a message needs a role (e.g. 'user'); an item without one needs a type (e.g. 'function_call')")
    return role


def check_session_type(value: object) -> str:
    if not isinstance(value, str) or value not in SESSION_TYPES:
        raise InputError(f"session_type must be one of {', '.join(SESSION_TYPES)}; got {_preview(value)}")
    return value


def _preview(value: object) -> str:
    """A short, printable, one-line rendering of a bad argument for an error message."""
    if isinstance(value, str):
        return ascii(value[:40])
    return type(value).__name__


# One encoder for every compact JSON text: json.dumps with options builds a new encoder on every call.
_ENCODE = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def dumps(value: Any, what: str = "value") -> str:
    """Compact JSON of data that has already been checked (see :func:`encode_json` for user input)."""
    try:
        return _ENCODE(value)
    except (TypeError, ValueError, RecursionError) as e:
        raise InputError(f"{what} must be JSON-serialisable (dict, list, str, int, float, bool, None): {e}") from None


def _check_plain_json(value: Any, what: str, depth: int) -> None:
    """Refuse what would not come back exactly from JSON text: NaN, non-string keys, sets, bytes, objects, lone
    surrogates, nesting deeper than MAX_JSON_DEPTH. Tuples are accepted and come back as lists."""
    kind = type(value)
    if kind is str:
        check_text(value, what)
    elif value is None or kind is bool or kind is int:
        return
    elif kind is float:
        if not math.isfinite(value):
            raise InputError(f"{what} holds {value!r}; JSON has no NaN or infinity (store None or a string)")
    elif kind is dict or kind is list or kind is tuple or isinstance(value, (Mapping, list, tuple)):
        if depth >= MAX_JSON_DEPTH:
            raise InputError(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep; flatten it")
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise InputError(f"{what} has a {type(key).__name__} key; JSON object keys must be strings")
                check_text(key, f"a key of {what}")
                _check_plain_json(item, what, depth + 1)
        else:
            for item in value:
                _check_plain_json(item, what, depth + 1)
    elif isinstance(value, str):
        check_text(value, what)
    elif isinstance(value, int):  # IntEnum and friends: stored as their number
        return
    elif isinstance(value, float):  # numpy.float64 and friends: stored as their number
        if not math.isfinite(value):
            raise InputError(f"{what} holds {float(value)!r}; JSON has no NaN or infinity (store None or a string)")
    else:
        raise InputError(
            f"{what} holds a {type(value).__name__}; use JSON types only (dict, list, str, int, float, bool, None)"
        )


def encode_json(value: Any, what: str = "value") -> str:
    """User JSON as compact text, refused with InputError unless it will come back exactly (see _check_plain_json)."""
    _check_plain_json(value, what, 0)
    try:
        return _ENCODE(value)
    except (TypeError, ValueError) as e:  # e.g. an int of more digits than Python converts to text
        raise InputError(f"{what} cannot be written as JSON: {str(e).splitlines()[0][:120]}") from None


def check_json_dict(value: object, what: str = "metadata") -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InputError(f"{what} must be a dict, got {type(value).__name__}")
    if not value:
        return {}  # the usual metadata and extra: nothing to check or copy
    # A round trip both validates and detaches the stored copy from the caller's object.
    return json.loads(encode_json(dict(value), what))


def _too_large(what: str) -> InputError:
    return InputError(f"{what} is larger than {MAX_CONTENT_BYTES // (1024 * 1024)} MB; store it elsewhere and keep a reference")


def check_content(value: object) -> Any:
    """A string (no NUL: PostgreSQL cannot store it), None, or any JSON value (a list of parts, a dict); a detached
    copy of JSON content."""
    if value is None:
        return None
    if isinstance(value, str):
        if len(value) > MAX_CONTENT_BYTES // 4 and len(value.encode("utf-8", "surrogatepass")) > MAX_CONTENT_BYTES:
            raise _too_large("content")
        if "\x00" in value:
            raise InputError("content must not contain NUL characters (PostgreSQL cannot store them); strip them first")
        return check_text(value, "content")
    text = encode_json(value, "content")
    if len(text) > MAX_CONTENT_BYTES // 4 and len(text.encode("utf-8")) > MAX_CONTENT_BYTES:
        raise _too_large("content")
    return json.loads(text)


def check_extra(value: object) -> dict[str, Any]:
    """An item's own fields beyond the message model: a JSON dict whose keys are not message fields."""
    extra = check_json_dict(value, "extra")
    clash = sorted(MESSAGE_FIELDS.intersection(extra).difference({"id"}))
    if clash:
        raise InputError(f"extra must not hold {', '.join(clash)}: pass them as the message's own arguments")
    return extra


def check_tool_calls(value: object) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not all(isinstance(c, Mapping) for c in value):
        raise InputError("tool_calls must be a list of dicts (OpenAI-style tool calls)")
    return json.loads(encode_json(list(value), "tool_calls"))


def check_finite(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{what} must be a finite number of seconds, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        raise InputError(f"{what} must be a finite number of seconds") from None
    if not math.isfinite(number):
        raise InputError(f"{what} must be a finite number of seconds")
    return number


def new_id() -> str:
    return uuid.uuid4().hex


class MessageDraft(BaseModel):
    """A validated message that has no seq/created_at yet; the store assigns those when it appends.

    ``id`` is the caller's (it makes a retried append a no-op) or, when the caller gave none, a new random one
    (``generated``); a draft made some other way with ``id=None`` gets one from the shared base.
    """

    model_config = ConfigDict(frozen=True)

    id: str | None = None
    # True when the shared base drew the id: a fresh random id cannot be stored yet, so a store without a unique
    # index (ClickHouse) can skip looking it up.
    generated: bool = False
    role: str | None = None
    content: Any = None
    type: str | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def build(
        cls,
        role: object,
        content: object,
        *,
        id: object = None,
        type: object = None,
        name: object = None,
        tool_calls: object = None,
        tool_call_id: object = None,
        metadata: object = None,
        extra: object = None,
    ) -> MessageDraft:
        kind = check_name(type, "type")
        given = check_optional_id(id, "message id")
        values = {
            "id": given or new_id(),
            "generated": given is None,
            "role": check_role(role, kind),
            "content": check_content(content),
            "type": kind,
            "name": check_optional_text(name, "name"),
            "tool_calls": check_tool_calls(tool_calls),
            "tool_call_id": check_optional_text(tool_call_id, "tool_call_id"),
            "metadata": check_json_dict(metadata),
            "extra": check_extra(extra),
        }
        return _adopted(cls, values)

    @classmethod
    def coerce(cls, item: object) -> MessageDraft:
        """Accept a Message, a draft, or an item dict: an OpenAI chat message, a Responses API item, any framework's.

        The message fields (role, content, type, name, tool_calls, tool_call_id, metadata, id) are read from the
        item; every other field is kept in ``extra``. An item's own ``id`` is the message id and is kept in
        ``extra`` too, so :meth:`Message.to_item` returns the item as given.
        """
        if isinstance(item, MessageDraft):
            return item
        if isinstance(item, Message):
            return cls.build(
                item.role,
                item.content,
                id=item.id,
                type=item.type,
                name=item.name,
                tool_calls=item.tool_calls,
                tool_call_id=item.tool_call_id,
                metadata=item.metadata,
                extra=item.extra,
            )
        if not isinstance(item, Mapping):
            raise InputError(f"each message must be a dict with 'role' and 'content', got {type(item).__name__}")
        if item.get("role") is None and item.get("type") is None:
            raise InputError("each message needs a 'role' (e.g. 'user'), or a 'type' for an item without one")
        extra = {k: v for k, v in item.items() if k not in MESSAGE_FIELDS}
        if "id" in item:
            extra["id"] = item["id"]
        item_id = item.get("id")
        return cls.build(
            item.get("role"),
            item.get("content"),
            id=item_id if isinstance(item_id, str) or item_id is None else _bad_id(item_id),
            type=item.get("type"),
            name=item.get("name"),
            tool_calls=item.get("tool_calls"),
            tool_call_id=item.get("tool_call_id"),
            metadata=item.get("metadata"),
            extra=extra,
        )

    def with_new_id(self) -> MessageDraft:
        return self.model_copy(update={"id": new_id(), "generated": True})

    def stamp(self, session_id: str, seq: int, created_at: datetime) -> Message:
        return Message.trusted(
            id=self.id or new_id(),
            session_id=session_id,
            seq=seq,
            role=self.role,
            content=self.content,
            type=self.type,
            name=self.name,
            tool_calls=self.tool_calls,
            tool_call_id=self.tool_call_id,
            metadata=self.metadata,
            extra=self.extra,
            created_at=created_at,
        )


def _bad_id(value: object) -> str:
    raise InputError(f"message id must be a non-empty string, got {type(value).__name__}")


# ---- how tables with a fixed set of columns keep the open fields (SQL, ClickHouse) ----


def packed_extra(message: Message) -> dict[str, Any] | None:
    """The one JSON column a table keeps for the open fields: ``extra``, plus the content when it is not text (the
    text column holds strings). "content" is never a key of ``extra``, so the two cannot be confused."""
    if message.content is None or isinstance(message.content, str):
        return message.extra or None
    return {**message.extra, "content": message.content}


def unpacked_extra(content: str | None, packed: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
    """(content, extra) from the text column and the JSON column :func:`packed_extra` wrote."""
    if not packed:
        return content, {}
    if "content" in packed:
        packed = dict(packed)
        return packed.pop("content"), packed
    return content, packed


# ---- how key-value stores keep a message: one compact JSON text (Redis, DynamoDB) ----

def epoch_us(value: datetime) -> int:
    """Integer microseconds since the epoch: exact, and exact as a double (a sorted-set score) below 2**53."""
    return (value - _UTC_EPOCH) // timedelta(microseconds=1)


def from_epoch_us(value: bytes | int | str) -> datetime:
    return _UTC_EPOCH + timedelta(microseconds=int(value))


def message_body(m: Message) -> str:
    """A message as a key-value store keeps it: JSON without seq and session_id (where it is stored says both).

    "id" comes first (a Redis script reads it from the start of the body). Fields at their default are left out, so
    a body written before the open message model (always a role, never a type or extra) is a message without them.
    """
    body: dict[str, Any] = {"id": m.id}
    if m.role is not None:
        body["role"] = m.role
    body["created_at"] = epoch_us(m.created_at)
    for name in ("type", "content", "name", "tool_calls", "tool_call_id"):
        value = getattr(m, name)
        if value is not None:
            body[name] = value
    if m.metadata:
        body["metadata"] = m.metadata
    if m.extra:
        body["extra"] = m.extra
    return dumps(body)


def message_from_body(session_id: str, seq: int, raw: str | bytes) -> Message:
    return message_from_dict(session_id, seq, json.loads(raw))


def message_from_dict(session_id: str, seq: int, d: dict[str, Any]) -> Message:
    """The message a parsed body holds (a store that parses many bodies at once calls this per body)."""
    get = d.get
    return _adopted(
        Message,
        {
            "id": d["id"],
            "session_id": session_id,
            "seq": seq,
            "role": get("role"),
            "content": get("content"),
            "type": get("type"),
            "name": get("name"),
            "tool_calls": get("tool_calls"),
            "tool_call_id": get("tool_call_id"),
            "metadata": get("metadata") or {},
            "extra": get("extra") or {},
            "created_at": from_epoch_us(d["created_at"]),
        },
    )