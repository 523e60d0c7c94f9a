"""Scripted answers ("turns") for :class:`~cheq_jupyter.testing.FakeMistral`.

A test scripts the model's side of a conversation as a list of turns, one per request that
reaches the fake and passes validation::

    [tool_call("lookup_account", {"email": "ada@example.com"}), text("Done.")]

Each constructor returns an immutable value; the server turns it into Mistral's wire format
(:func:`TextTurn` -> ``message.content``; :func:`ToolCallsTurn` -> ``message.tool_calls`` with
``content: ""`` and ``finish_reason: "tool_calls"``; :func:`HttpErrorTurn` -> an HTTP error).
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

__all__ = [
    "FinishReason",
    "HttpErrorTurn",
    "RawStreamTurn",
    "TextTurn",
    "ToolCallSpec",
    "ToolCallsTurn",
    "Turn",
    "call",
    "http_error",
    "json_reply",
    "new_tool_call_id",
    "raw_stream",
    "text",
    "tool_call",
    "tool_calls",
]

_ID_ALPHABET = string.ascii_letters + string.digits

#: ``finish_reason`` values the real API documents for a text answer.
FinishReason: TypeAlias = Literal["stop", "length", "model_length", "error"]
_TEXT_FINISH_REASONS = frozenset({"stop", "length", "model_length", "error"})


def new_tool_call_id() -> str:
    """Return a fresh tool-call id the way Mistral makes them: 9 characters of [a-zA-Z0-9]."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(9))


def _arguments_string(arguments: dict[str, Any] | str) -> str:
    """The API sends ``arguments`` as a JSON *string*; a str is kept verbatim (may be invalid)."""
    if isinstance(arguments, str):
        return arguments
    if not isinstance(arguments, dict):
        raise TypeError(
            f"Tool-call arguments must be a dict or a str, not {type(arguments).__name__}; "
            "pass a dict of arguments or the raw JSON text."
        )
    return json.dumps(arguments, ensure_ascii=False)


@dataclass(frozen=True)
class ToolCallSpec:
    """One function call inside an assistant turn (build it with :func:`call`)."""

    name: str
    arguments: str
    id: str | None = None


@dataclass(frozen=True)
class TextTurn:
    """The assistant answers with text (also used for JSON structured output)."""

    content: str
    finish_reason: FinishReason = "stop"
    #: A reasoning model's thinking before the text (sent as a ``thinking`` chunk).
    thinking: str | None = None
    signature: str | None = None


@dataclass(frozen=True)
class ToolCallsTurn:
    """The assistant asks for one or several (parallel) function calls.

    ``content`` is text the model wrote in the same turn (Mistral usually sends ``""``), and
    ``thinking`` a reasoning model's thinking before the calls.
    """

    calls: tuple[ToolCallSpec, ...]
    content: str = ""
    thinking: str | None = None
    signature: str | None = None


@dataclass(frozen=True)
class HttpErrorTurn:
    """The server answers the request with an HTTP error instead of a completion."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class RawStreamTurn:
    """A streamed answer sent exactly as given (for hostile-stream tests): each item is a
    ``chat.completion.chunk`` dict sent as a ``data:`` event, or a str written verbatim.
    Nothing is added (no ``[DONE]`` unless an item says so)."""

    items: tuple[dict[str, Any] | str, ...]


Turn: TypeAlias = TextTurn | ToolCallsTurn | HttpErrorTurn | RawStreamTurn


def text(
    content: str,
    finish_reason: FinishReason = "stop",
    *,
    thinking: str | None = None,
    signature: str | None = None,
) -> TextTurn:
    """An assistant text answer, e.g. ``text("It is sunny.")``.

    ``finish_reason`` may be ``"stop"`` (default), ``"length"``, ``"model_length"`` or
    ``"error"``, to test how the caller handles a truncated or failed generation.
    ``thinking`` makes it a reasoning model's answer: a ``thinking`` chunk (with
    ``signature``, default a fresh one) comes before the text.
    """
    if finish_reason not in _TEXT_FINISH_REASONS:
        raise ValueError(
            f"finish_reason {finish_reason!r} is not one Mistral sends with text; use one of "
            f"{sorted(_TEXT_FINISH_REASONS)} (tool calls get 'tool_calls' automatically)."
        )
    return TextTurn(content=content, finish_reason=finish_reason, thinking=thinking,
                    signature=_signature(thinking, signature))


def _signature(thinking: str | None, signature: str | None) -> str | None:
    """Reasoning models sign their thinking; the fake makes up an opaque signature."""
    if thinking is None or signature is not None:
        return signature
    return "sig_" + secrets.token_hex(12)


def call(name: str, arguments: dict[str, Any] | str, *, id: str | None = None) -> ToolCallSpec:
    """One function call for :func:`tool_calls`.

    ``arguments`` is a dict (sent JSON-encoded, as the API does) or a raw string sent as-is,
    so a test can send invalid JSON. ``id`` defaults to a fresh 9-character id; pass one to
    make it predictable or to send an invalid id on purpose.
    """
    return ToolCallSpec(name=name, arguments=_arguments_string(arguments), id=id)


def tool_call(
    name: str,
    arguments: dict[str, Any] | str,
    *,
    id: str | None = None,
    content: str = "",
    thinking: str | None = None,
    signature: str | None = None,
) -> ToolCallsTurn:
    """An assistant turn calling one function: ``tool_call("get_weather", {"city": "Paris"})``.

    ``content`` and ``thinking`` are what the model wrote and reasoned in the same turn.
    """
    return ToolCallsTurn(calls=(call(name, arguments, id=id),), content=content,
                         thinking=thinking, signature=_signature(thinking, signature))


def tool_calls(
    *calls: ToolCallSpec,
    content: str = "",
    thinking: str | None = None,
    signature: str | None = None,
) -> ToolCallsTurn:
    """An assistant turn with parallel calls: ``tool_calls(call("a", {}), call("b", {}))``."""
    if not calls:
        raise ValueError("tool_calls() needs at least one call(...); use text(...) for no calls.")
    for item in calls:
        if not isinstance(item, ToolCallSpec):
            raise TypeError(
                f"tool_calls() takes call(name, arguments) values, not {type(item).__name__}."
            )
    return ToolCallsTurn(calls=tuple(calls), content=content, thinking=thinking,
                         signature=_signature(thinking, signature))


def json_reply(value: Any) -> TextTurn:
    """Structured output: a dict/list (or any JSON value) is JSON-encoded; a str is sent as-is.

    Sending a str lets a test return invalid JSON or JSON that breaks the schema.
    """
    content = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return TextTurn(content=content, finish_reason="stop")


def raw_stream(*items: dict[str, Any] | str) -> RawStreamTurn:
    """Answer a ``stream: true`` request with exactly these events (see :class:`RawStreamTurn`)."""
    return RawStreamTurn(items=tuple(items))


def _default_error_body(status: int) -> dict[str, Any]:
    if status == 429:
        # The body Mistral sends when a key exceeds its rate limit.
        return {
            "object": "error",
            "message": "Rate limit exceeded",
            "type": "rate_limited",
            "param": None,
            "code": "1300",
        }
    if status == 401:
        return {"detail": "Unauthorized"}
    kind = "internal_server_error" if status >= 500 else "invalid_request_error"
    return {
        "object": "error",
        "message": f"Scripted HTTP {status} error from FakeMistral.",
        "type": kind,
        "param": None,
        "code": None,
    }


def http_error(
    status: int,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> HttpErrorTurn:
    """Answer the request with an HTTP error, e.g. ``http_error(429)`` or ``http_error(500)``.

    Without ``body``: 429 gets Mistral's rate-limit body (``type: "rate_limited"``,
    ``code: "1300"``), 401 gets ``{"detail": "Unauthorized"}``, other statuses get an error
    body in Mistral's shape. ``headers`` (e.g. ``{"Retry-After": "1"}``) are added.
    """
    if not 400 <= status <= 599:
        raise ValueError(f"http_error() needs a 4xx or 5xx status, got {status}.")
    return HttpErrorTurn(
        status=status,
        body=dict(body) if body is not None else _default_error_body(status),
        headers=tuple((headers or {}).items()),
    )
