"""One model answer, put together from Mistral's stream (or from a whole completion).

A streamed answer arrives as ``chat.completion.chunk`` events; :class:`Assembler` joins their
deltas into the assistant message the loop puts back in the conversation:

- ``content`` deltas are text (a string) or chunks; ``thinking`` chunks of a reasoning model
  are joined into one ``ThinkChunk`` (text, ``signature``, ``closed``) that is kept, unchanged,
  in the message (its ``content`` is then a list: the thinking, then the text), because
  Mistral asks for the thinking back in multi-turn conversations;
- ``tool_calls`` deltas are joined by ``index``: the id and name come with the first delta of
  a call, ``arguments`` may be split over several.  Nothing here validates a call: the loop
  does that when the whole turn has arrived;
- the last chunk's ``finish_reason`` and ``usage`` are kept.

A whole (non-streamed) completion goes through the same assembler as one delta, so both paths
build the same message.  SDK objects and plain dicts are both accepted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ._sdk import _dump

__all__ = [
    "Assembler",
    "DeltaKind",
    "Reply",
    "StreamInterrupted",
    "Usage",
    "message_text",
    "message_thinking",
    "reply_from_response",
    "reply_from_unstreamed",
]

DeltaKind = Literal["text", "thinking"]
#: Told of every piece of text or thinking as it arrives: ``(kind, piece)``.
DeltaHook = Callable[[DeltaKind, str], None]


@dataclass(frozen=True)
class Usage:
    """Tokens billed for one model request (or summed over several)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.total_tokens + other.total_tokens,
        )

    def describe(self) -> str:
        """``"1,234 tokens (1,000 prompt + 234 completion)"``."""
        return (
            f"{self.total_tokens:,} tokens ({self.prompt_tokens:,} prompt + "
            f"{self.completion_tokens:,} completion)"
        )

    @classmethod
    def of(cls, value: Any) -> Usage | None:
        """From the SDK's ``UsageInfo`` (or its dict); ``None`` when absent or malformed."""
        data = _dump(value)
        if not isinstance(data, dict):
            return None
        numbers = []
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            number = data.get(key, 0)
            if not isinstance(number, int) or isinstance(number, bool) or number < 0:
                return None
            numbers.append(number)
        return cls(*numbers)


@dataclass
class Reply:
    """One model answer: the assistant message for the history, and what came with it."""

    message: dict[str, Any]
    finish_reason: str | None = None
    usage: Usage | None = None

    @property
    def text(self) -> str:
        return message_text(self.message)

    @property
    def thinking(self) -> str:
        return message_thinking(self.message)


class StreamInterrupted(KeyboardInterrupt):
    """The kernel was interrupted while a stream was read; ``partial`` is what had arrived."""

    def __init__(self, partial: Reply) -> None:
        super().__init__()
        self.partial = partial


_PLAIN = (str, int, list)


def _get(obj: Any, name: str) -> Any:
    """``obj.name`` or ``obj[name]``; the SDK's UNSET counts as missing (called per chunk)."""
    value = obj.get(name) if type(obj) is dict else getattr(obj, name, None)
    if value is None or type(value) in _PLAIN:
        return value
    return None if type(value).__name__ == "Unset" else value


def _chunk_texts(parts: Any) -> str:
    return "".join(
        str(_get(p, "text") or "") for p in parts or [] if _get(p, "type") in (None, "text")
    )


@dataclass
class _Call:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)
    whole: Any = None  # arguments sent as an object rather than a string


class Assembler:
    """Joins the deltas of one answer; ``on_delta`` is told of text and thinking as it comes."""

    def __init__(self, on_delta: DeltaHook | None = None) -> None:
        self.on_delta = on_delta
        self._text: list[str] = []
        self._parts: list[dict[str, Any]] = []  # thinking chunks (and the text after them)
        self._calls: dict[int, _Call] = {}
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.chunks = 0

    # -- feeding -----------------------------------------------------------------------------
    def feed(self, chunk: Any) -> None:
        """Take one ``CompletionChunk`` (``event.data``)."""
        self.chunks += 1
        usage = _get(chunk, "usage")
        if usage is not None:
            self.usage = Usage.of(usage) or self.usage
        for choice in _get(chunk, "choices") or []:
            if (_get(choice, "index") or 0) != 0:
                continue  # the loop asks for one choice
            delta = _get(choice, "delta")
            if delta is not None:
                self.feed_delta(delta)
            finish = _get(choice, "finish_reason")
            if finish is not None:
                self.finish_reason = str(getattr(finish, "value", finish))

    def feed_delta(self, delta: Any) -> None:
        """Take one ``DeltaMessage`` (or a whole assistant message)."""
        content = _get(delta, "content")
        if isinstance(content, str):
            self._add_text(content)
        elif isinstance(content, list):
            for chunk in content:
                kind = _get(chunk, "type")
                if kind == "thinking":
                    self._add_thinking(chunk)
                elif kind in (None, "text"):
                    self._add_text(str(_get(chunk, "text") or ""))
        for position, call in enumerate(_get(delta, "tool_calls") or []):
            self._add_call(call, position)

    def _add_text(self, piece: str) -> None:
        if not piece:
            return
        self._text.append(piece)
        if self._parts and self._parts[-1]["type"] == "text":
            self._parts[-1]["text"] += piece
        elif self._parts:
            self._parts.append({"type": "text", "text": piece})
        if self.on_delta is not None:
            self.on_delta("text", piece)

    def _add_thinking(self, chunk: Any) -> None:
        data = _dump(chunk)
        if not isinstance(data, dict):
            return
        piece = _chunk_texts(data.get("thinking"))
        last = self._parts[-1] if self._parts else None
        if last is not None and last["type"] == "thinking" and not last.get("closed"):
            last["thinking"][0]["text"] += piece
            for key in ("signature", "closed"):
                if data.get(key) is not None:
                    last[key] = data[key]
        else:
            if not self._parts and self._text:  # text came first: keep it first
                self._parts.append({"type": "text", "text": "".join(self._text)})
            merged: dict[str, Any] = {
                "type": "thinking", "thinking": [{"type": "text", "text": piece}]
            }
            for key in ("signature", "closed"):
                if data.get(key) is not None:
                    merged[key] = data[key]
            self._parts.append(merged)
        if piece and self.on_delta is not None:
            self.on_delta("thinking", piece)

    def _add_call(self, call: Any, position: int) -> None:
        index = _get(call, "index")
        if not isinstance(index, int) or isinstance(index, bool):
            index = position
        entry = self._calls.setdefault(index, _Call())
        call_id = _get(call, "id")
        if isinstance(call_id, str) and call_id not in ("", "null") and not entry.id:
            entry.id = call_id
        function = _get(call, "function")
        name = _get(function, "name") if function is not None else None
        if isinstance(name, str) and name and not entry.name:
            entry.name = name
        arguments = _get(function, "arguments") if function is not None else None
        if isinstance(arguments, str):
            entry.arguments.append(arguments)
        elif arguments is not None:
            entry.whole = _dump(arguments)

    # -- results -----------------------------------------------------------------------------
    def reply(self) -> Reply:
        """The whole answer (call when the stream has ended)."""
        message: dict[str, Any] = {"role": "assistant", "content": self._content()}
        calls = []
        for index in sorted(self._calls):
            entry = self._calls[index]
            arguments: Any = "".join(entry.arguments)
            if entry.whole is not None:
                arguments = entry.whole if not arguments else arguments + json.dumps(entry.whole)
            calls.append({"id": entry.id, "type": "function",
                          "function": {"name": entry.name, "arguments": arguments}})
        if calls:
            message["tool_calls"] = calls
        return Reply(message, self.finish_reason, self.usage)

    def partial(self) -> Reply:
        """What had arrived when the stream was cut: its text only (no half tool calls)."""
        return Reply({"role": "assistant", "content": "".join(self._text)}, None, self.usage)

    def _content(self) -> str | list[dict[str, Any]]:
        if not any(p["type"] == "thinking" for p in self._parts):
            return "".join(self._text)
        return [json.loads(json.dumps(p)) for p in self._parts]


def message_text(message: dict[str, Any]) -> str:
    """The text of an assistant message whose content is a string or a list of chunks."""
    content = message.get("content")
    if isinstance(content, list):
        return _chunk_texts(content)
    return str(content or "")


def message_thinking(message: dict[str, Any]) -> str:
    """The thinking of an assistant message ("" when there is none)."""
    content = message.get("content")
    if not isinstance(content, list):
        return ""
    return "".join(
        _chunk_texts(c.get("thinking")) for c in content
        if isinstance(c, dict) and c.get("type") == "thinking"
    )


def reply_from_response(response: Any) -> Reply:
    """A whole chat completion (SDK object or its JSON) as a :class:`Reply`."""
    from .errors import ModelError

    choices = _get(response, "choices") or []
    if not choices:
        raise ModelError("The model returned no choices; try the request again.")
    assembler = Assembler()
    message = _get(choices[0], "message")
    if message is not None:
        assembler.feed_delta(message)
    finish = _get(choices[0], "finish_reason")
    assembler.finish_reason = str(getattr(finish, "value", finish)) if finish else None
    assembler.usage = Usage.of(_get(response, "usage"))
    return assembler.reply()


def reply_from_unstreamed(exc: Exception) -> Reply | None:
    """The answer of a server (or proxy) that met ``stream: true`` with a plain JSON completion.

    The SDK raises for such an answer ("Unexpected response received", status 200); its body
    is a whole ``chat.completion``.  ``None`` when ``exc`` is anything else.
    """
    if getattr(exc, "status_code", None) != 200:
        return None
    raw = getattr(exc, "raw_response", None)
    kind = str(getattr(raw, "headers", {}).get("content-type", "")) if raw is not None else ""
    body = getattr(exc, "body", None)
    if "json" not in kind or not isinstance(body, str):
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        return None
    try:
        return reply_from_response(data)
    except Exception:
        return None
