"""The model layer of :class:`~praison_db.Agent`: what ``llm=`` may be, and the built-in offline model.

``llm`` is one of:

- ``None`` or ``"offline"``: :class:`OfflineModel`, a deterministic demo/test model that needs no network.
- a model name such as ``"gpt-4o-mini"``: :class:`OpenAIChatModel`, for any OpenAI-compatible endpoint through the
  ``openai`` package (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``); ``pip install 'praison-db[openai]'``.
- any callable that takes an OpenAI-style message list and returns a ``str`` or an assistant message dict
  (possibly with ``tool_calls``).
"""

from __future__ import annotations

import inspect
import json
import re
import typing
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ConfigError, InputError

__all__ = ["ChatModel", "OfflineModel", "OpenAIChatModel", "resolve_llm", "normalize_reply", "tool_spec"]

ChatModel = Callable[[list[dict[str, Any]]], Any]
"""A model: OpenAI-style messages in, a ``str`` or an assistant message dict out."""


def resolve_llm(llm: Any, tools: Mapping[str, Callable[..., Any]] | None = None) -> ChatModel:
    """Turn the ``llm`` argument of Agent into a callable model.

    Args:
        llm: None / ``"offline"``, a model name for an OpenAI-compatible endpoint, or a callable.
        tools: the agent's tools, described to a named model so that it can call them.

    Returns:
        A callable taking a message list.

    Raises:
        ConfigError: a model name without the ``openai`` package installed, or an ``llm`` of the wrong type.
    """
    if llm is None or (isinstance(llm, str) and llm.strip().lower() == "offline"):
        return OfflineModel()
    if isinstance(llm, str):
        specs = [tool_spec(name, fn) for name, fn in (tools or {}).items()]
        return OpenAIChatModel(llm, tools=specs or None)
    if callable(llm):
        return llm
    raise ConfigError(f"llm must be None, 'offline', a model name or a callable, not {type(llm).__name__}")


def normalize_reply(reply: Any) -> dict[str, Any]:
    """A model's answer as an assistant message dict: ``content`` (str or None) and, if any, ``tool_calls``.

    Tool calls get an ``id`` when the model gave none, and dict ``arguments`` are encoded as JSON text, as the
    OpenAI format has them.

    Raises:
        InputError: the model returned something other than a str or a message dict.
    """
    if isinstance(reply, str):
        return {"role": "assistant", "content": reply}
    if hasattr(reply, "model_dump") and not isinstance(reply, Mapping):  # an SDK message object
        reply = reply.model_dump(exclude_none=True)
    if not isinstance(reply, Mapping):
        raise InputError(f"the llm must return a str or an assistant message dict, not {type(reply).__name__}")
    content = reply.get("content")
    out: dict[str, Any] = {"role": "assistant", "content": content if content is None else str(content)}
    calls = []
    for call in reply.get("tool_calls") or []:
        function = dict(call.get("function") or {})
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            function["arguments"] = json.dumps(arguments if arguments is not None else {})
        calls.append({"id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": function})
    if calls:
        out["tool_calls"] = calls
    return out


_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


def tool_spec(name: str, fn: Callable[..., Any]) -> dict[str, Any]:
    """An OpenAI tool description of a Python function, from its signature and the first line of its docstring."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: describe every parameter as a string
        hints = {}
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        hint = typing.get_origin(hints.get(param.name)) or hints.get(param.name)
        properties[param.name] = {"type": _JSON_TYPES.get(hint, "string")}  # type: ignore[arg-type]
        if param.default is param.empty:
            required.append(param.name)
    doc = (inspect.getdoc(fn) or name).strip().splitlines()[0]
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": doc,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


class OpenAIChatModel:
    """A chat model behind any OpenAI-compatible endpoint (OpenAI, Azure, Ollama, vLLM, LiteLLM, ...).

    The client reads ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL`` unless one is passed in.
    """

    def __init__(self, model: str, *, tools: list[dict[str, Any]] | None = None, client: Any = None, **create_args: Any) -> None:
        """
        Args:
            model: the model name, e.g. ``"gpt-4o-mini"``.
            tools: OpenAI tool descriptions sent with every request.
            client: an ``openai.OpenAI`` client to use instead of a default one.
            **create_args: passed to ``chat.completions.create`` (``temperature``, ...).

        Raises:
            ConfigError: the ``openai`` package is missing or the client cannot be configured (no API key).
        """
        self.model = model
        self.tools = tools
        self.create_args = create_args
        if client is None:
            try:
                import openai
            except ImportError as e:
                raise ConfigError(f"llm={model!r} needs the openai package: pip install 'praison-db[openai]'") from e
            try:
                client = openai.OpenAI()
            except openai.OpenAIError as e:
                raise ConfigError(f"cannot set up the OpenAI client for {model!r}: {str(e).splitlines()[0]}") from e
        self.client = client

    def __call__(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """One chat completion; returns the assistant message (with ``tool_calls`` when the model asks for tools)."""
        extra = {"tools": self.tools} if self.tools else {}
        response = self.client.chat.completions.create(model=self.model, messages=messages, **extra, **self.create_args)
        return normalize_reply(response.choices[0].message)

    def __repr__(self) -> str:
        return f"OpenAIChatModel({self.model!r})"


# ---- the offline model ----

_NAME_WORD = r"[^\W\d_][\w'’-]*"
# The trigger is case-insensitive; the name after "I'm"/"I am" must be capitalised, so "I'm tired" is not a name.
_NAME_STATEMENTS = (
    re.compile(rf"(?i:\bmy name is|\bmy name's|\bcall me)\s+(?P<name>{_NAME_WORD}(?:\s+[A-Z][\w'’-]*)?)"),
    re.compile(r"(?i:\bi(?:'m|’m| am))\s+(?P<name>[A-Z][\w'’-]*(?:\s+[A-Z][\w'’-]*)?)"),
)
_NOT_NAMES = {"a", "an", "the", "not", "sorry", "fine", "good", "here", "back", "done", "ready", "sure", "just", "so",
              "very", "really", "happy", "glad", "from", "in", "at", "going", "trying", "looking", "also", "still"}
_FACT = re.compile(
    r"\bmy\s+(?P<key>[a-z][a-z ]{0,40}?)\s+(?P<verb>is|are)\s+(?P<value>[^.!?,;\n]+?)(?=\s+and\s+my\b|[.!?,;\n]|$)",
    re.IGNORECASE,
)
_ASK_FACT = re.compile(
    r"(?i)\b(?:what(?:'s|’s| is| are| was| were)|do you (?:know|remember)|tell me)\s+my\s+(?P<key>[a-z][a-z ]{0,40}?)\s*[?.!]*$"
)
_ASK_WHO = re.compile(r"(?i)\bwho am i\b")
_ASK_ABOUT_ME = re.compile(r"(?i)\bwhat do you (?:know|remember) about me\b")
_ASK_COUNT = re.compile(r"(?i)\bhow many (?:messages|turns)\b")
_ASK_FIRST = re.compile(r"(?i)\b(?:what did i (?:say|write|ask) first|my first message|first thing i (?:said|wrote|asked))\b")
_ASK_LAST = re.compile(r"(?i)\b(?:what did i (?:just|last) (?:say|write|ask)|my (?:last|previous) message)\b")
_SPELLING = {"favorite": "favourite", "color": "colour", "colors": "colours"}


def _fact_key(text: str) -> str:
    words = text.lower().split()
    return " ".join(_SPELLING.get(w, w) for w in words)


def _name_in(text: str) -> str | None:
    for pattern in _NAME_STATEMENTS:
        for match in pattern.finditer(text):
            words = match["name"].split()
            if words[0].lower() in _NOT_NAMES:
                continue
            return " ".join(w[:1].upper() + w[1:] for w in words)
    return None


def _facts_in(text: str) -> dict[str, tuple[str, str, str]]:
    """normalised key -> (the user's wording, verb, value) of every "my X is Y" in a statement (not a question)."""
    if text.rstrip().endswith("?"):
        return {}
    found = {}
    for match in _FACT.finditer(text):
        wording = " ".join(match["key"].split())
        key = _fact_key(wording)
        if key != "name":
            found[key] = (wording, match["verb"].lower(), match["value"].strip())
    return found


def _quote(text: str | None, limit: int = 80) -> str:
    text = " ".join((text or "").split())
    return f"“{text if len(text) <= limit else text[: limit - 1] + '…'}”"


class OfflineModel:
    """A deterministic stand-in for a chat model, for demos and tests. It is not an LLM.

    It answers only from the messages it is given, so it shows whether a conversation's history really came
    back from the store:

    - "My name is Alice" (also "I'm Alice", "I am Alice", "call me Alice") → later "What's my name?" or
      "Who am I?" → "Your name is Alice."
    - "My favourite colour is blue" → "What's my favourite colour?" → "Your favourite colour is blue."
      (any "my X is Y"; favorite/color spellings match).
    - "What do you know about me?" lists the facts; "How many messages ...?", "What did I say first?" and
      "What did I just say?" are answered by counting and quoting the earlier messages.
    - After a tool result it reports the result; anything else gets an acknowledgement that says how many
      earlier messages it remembers.
    """

    def __call__(self, messages: list[dict[str, Any]]) -> str:
        """Answer the last user message from the earlier messages of ``messages`` only."""
        if messages and messages[-1].get("role") == "tool":
            return "The tool returned: " + (messages[-1].get("content") or "(nothing)")
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
        if last_user is None:
            return "Hello! Say something and I will remember it."
        text = str(messages[last_user].get("content") or "").strip()
        earlier = [m for m in messages[:last_user] if m.get("role") in ("user", "assistant")]
        said = [str(m.get("content") or "") for m in earlier if m.get("role") == "user"]
        name: str | None = None
        facts: dict[str, tuple[str, str, str]] = {}
        for past in said:
            name = _name_in(past) or name
            facts.update(_facts_in(past))
        return self._answer(text, earlier, said, name, facts)

    @staticmethod
    def _answer(text: str, earlier: list[dict[str, Any]], said: list[str], name: str | None, facts: dict[str, tuple[str, str, str]]) -> str:
        asked = _ASK_FACT.search(text)
        if _ASK_WHO.search(text) or (asked and _fact_key(asked["key"]) == "name"):
            return f"Your name is {name}." if name else "I don't know your name yet. Tell me: “My name is …”."
        if asked:
            wording = " ".join(asked["key"].split())
            fact = facts.get(_fact_key(wording))
            if fact:
                return f"Your {wording} {fact[1]} {fact[2]}."
            return f"I don't know your {wording} yet; you haven't told me in this conversation."
        if _ASK_ABOUT_ME.search(text):
            known = ([f"your name is {name}"] if name else []) + [f"your {w} {v} {x}" for w, v, x in facts.values()]
            return ("I know that " + "; ".join(known) + ".") if known else "You haven't told me anything about yourself yet."
        if _ASK_COUNT.search(text):
            mine = sum(1 for m in earlier if m.get("role") == "assistant")
            return (
                f"Before this one, our conversation has {len(earlier)} messages: "
                f"{len(said)} from you and {mine} from me."
            )
        if _ASK_FIRST.search(text):
            return f"Your first message was {_quote(said[0])}." if said else "This is your first message."
        if _ASK_LAST.search(text):
            return f"Your previous message was {_quote(said[-1])}." if said else "This is your first message."

        parts = []
        new_name = _name_in(text)
        if new_name:
            parts.append(f"Nice to meet you, {new_name}!")
        new_facts = _facts_in(text)
        if new_facts:
            parts.append("I'll remember that " + "; ".join(f"your {w} {v} {x}" for w, v, x in new_facts.values()) + ".")
        if not parts:
            parts.append(f"Noted: {_quote(text)}.")
        if earlier:
            parts.append(f"I remember {len(earlier)} earlier message{'s' if len(earlier) != 1 else ''} of this conversation.")
        else:
            parts.append("This is the start of our conversation.")
        return " ".join(parts)

    def __repr__(self) -> str:
        return "OfflineModel()"
