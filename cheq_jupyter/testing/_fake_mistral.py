"""FakeMistral: a loopback HTTP server that speaks Mistral's chat-completions wire format.

Tests drive the REAL ``mistralai`` SDK against it (``fake.client()``), so the SDK's request
serialisation, error classes and retry logic are exercised exactly as in production. The fake
refuses what Mistral's servers refuse, with the same status and body (rules from
``notes/mistral-api-rules.md`` and from Mistral's open-source validator, mistral-common), and
answers valid requests with scripted turns (see :mod:`cheq_jupyter.testing._turns`) or with a
responder function.

Order of checks for ``POST /v1/chat/completions`` (first failure wins)::

    path / method      404 {"detail": "Not Found"}, 405 {"detail": "Method Not Allowed"}
    bearer key         401 {"detail": "Unauthorized"}
    JSON body          400 invalid_request_error (body is not JSON)
    request schema     422 {"detail": [{"type": "extra_forbidden" | "missing" | ..., "loc": [...],
                            "msg": ..., "input": ...}]}   (FastAPI/pydantic shape)
    tools              400 invalid_request_error      function names [a-zA-Z0-9_-]{1,64}
    response_format    400 invalid_request_error      JSON format together with tools; json_schema
                                                      type without a json_schema object
    message contents   400 invalid_function_call 3280 tool-call ids (9 x [a-zA-Z0-9]) in assistant
                                                      tool_calls and tool messages, missing ids,
                                                      function names in calls and tool messages
                       400 invalid_request_error      system message without content
    message structure  400 invalid_request_message_order 3230  empty list, last role, role order
                                                      (e.g. user after tool), prefix not last,
                                                      calls vs. results, unknown/duplicate ids

Error bodies for 400s are ``{"object": "error", "message", "type", "param": null, "code"}``.
Confirmed by real error text: 401, 422 ``extra_forbidden``, the id message with
``invalid_function_call``/``"3280"``, the role-order messages with
``invalid_request_message_order``/``"3230"``, 429 ``rate_limited``/``"1300"``. Chosen here
(the real codes are unknown): ``invalid_request_error`` with ``code: null`` for tool
definitions, ``response_format`` and non-JSON bodies (older real bodies have this shape);
"Tool call id has to be defined." is filed under ``invalid_function_call``/``"3280"``; the
calls-vs-results messages under ``invalid_request_message_order``/``"3230"``. The message
contents are checked before the structure so a missing or malformed id is reported as such.

Problems with the *script* rather than the request (script exhausted, a scripted tool call
when ``tool_choice`` is ``"none"`` or no tools were offered, text when a tool call is required,
a responder that raised) are answered with HTTP 500 and a body whose message starts with
``FakeMistral script error`` and are recorded in :attr:`FakeMistral.script_errors`;
:meth:`FakeMistral.check` raises them.
A scripted call may name a tool that was not offered: real models do that, and the caller
has to cope.

``stream: true`` is validated exactly like a plain request (refusals are plain JSON errors,
sent before any event) and answered as ``text/event-stream`` the way the real API streams:
``data: {chat.completion.chunk}`` events (the role in the first delta, then thinking chunks
when the turn has thinking, content deltas, tool-call deltas with their ``index``, and
``finish_reason`` with ``usage`` in the last chunk), then ``data: [DONE]``.  Tests tune it
with ``chunk_pause`` (seconds between events), ``split_arguments`` (a tool call's
``arguments`` over that many deltas) and :meth:`FakeMistral.hold` (stop after N events until
the test releases them); ``streaming=False`` makes the fake a proxy that answers
``stream: true`` with a plain JSON completion.  ``reasoning_effort`` is accepted only for the
models in ``reasoning_models`` (others get a 400, as the real API refuses it; the message
text is chosen here).
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import json
import re
import secrets
import socket
import socketserver
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeAlias

from .._sdk import mistral_class
from ._turns import (
    HttpErrorTurn,
    RawStreamTurn,
    TextTurn,
    ToolCallsTurn,
    Turn,
    new_tool_call_id,
)

#: The values mistralai 3.x accepts for ``reasoning_effort``.
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
#: Models the fake treats as reasoning models (``reasoning_effort`` accepted).
DEFAULT_REASONING_MODELS = ("magistral-medium-latest", "magistral-small-latest")

__all__ = [
    "CHAT_COMPLETIONS_PATH",
    "REASONING_EFFORTS",
    "REQUEST_FIELDS",
    "FakeMistral",
    "FakeMistralScriptError",
    "Hold",
    "Responder",
    "Script",
]

CHAT_COMPLETIONS_PATH = "/v1/chat/completions"

#: Every top-level field of a chat-completions request, as declared by the SDKs'
#: ``ChatCompletionRequest`` models (mistralai 1.12.4 and 3.7.0; 1.x sends a subset).
#: Anything else is refused with 422 ``extra_forbidden`` like the real API does.
REQUEST_FIELDS: frozenset[str] = frozenset(
    {
        "model",
        "messages",
        "temperature",
        "top_p",
        "max_tokens",
        "stream",
        "stop",
        "random_seed",
        "metadata",
        "response_format",
        "tools",
        "tool_choice",
        "presence_penalty",
        "frequency_penalty",
        "min_tokens",
        "repetition_penalty",
        "top_k",
        "logprobs",
        "top_logprobs",
        "prompt_logprobs",
        "top_prompt_logprobs",
        "n",
        "prediction",
        "parallel_tool_calls",
        "reasoning_effort",
        "prompt_mode",
        "guardrails",
        "prompt_cache_key",
        "service_tier",
        "safe_prompt",
    }
)

_ROLES = ("assistant", "system", "tool", "user")
_TOOL_CALL_ID = re.compile(r"[a-zA-Z0-9]{9}")
_FUNCTION_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_TOOL_CHOICES = ("auto", "none", "any", "required")
_JSON_FORMATS = ("json_object", "json_schema")
_RESPONSE_FORMATS = ("text", *_JSON_FORMATS)

Responder: TypeAlias = Callable[[dict[str, Any]], Turn]
Script: TypeAlias = Sequence[Turn] | Responder
JSONDict: TypeAlias = dict[str, Any]


class FakeMistralScriptError(AssertionError):
    """The test's script did not fit the requests the code under test made."""


# --------------------------------------------------------------------------------------------
# Error answers, all in one place.
# --------------------------------------------------------------------------------------------


@dataclass
class _Answer(Exception):
    """An HTTP answer other than a completion; raised by the checks, sent by the handler."""

    status: int
    body: JSONDict
    headers: tuple[tuple[str, str], ...] = field(default=())
    events: list[JSONDict | str] | None = None


#: Marks the events of a :class:`RawStreamTurn` (sent as given, no ``[DONE]`` added).
_RAW = "\x00raw"
#: Where ``_handle`` hands the handler the events of a streamed answer (never sent as JSON).
_STREAM_KEY = "\x00stream-events"


def _mistral_error(status: int, message: str, type_: str, code: str | None) -> _Answer:
    return _Answer(
        status,
        {"object": "error", "message": message, "type": type_, "param": None, "code": code},
    )


def _not_found() -> _Answer:
    return _Answer(404, {"detail": "Not Found"})


def _method_not_allowed() -> _Answer:
    return _Answer(405, {"detail": "Method Not Allowed"}, (("Allow", "POST"),))


def _unauthorized() -> _Answer:
    return _Answer(401, {"detail": "Unauthorized"})


def _unprocessable(errors: list[JSONDict]) -> _Answer:
    """422 in FastAPI's shape: one entry per problem, like pydantic reports them."""
    return _Answer(422, {"detail": errors})


def _field_error(kind: str, loc: Sequence[str | int], msg: str, value: Any) -> JSONDict:
    return {"type": kind, "loc": ["body", *loc], "msg": msg, "input": value}


def _invalid_request(message: str) -> _Answer:
    return _mistral_error(400, message, "invalid_request_error", None)


def _invalid_function_call(message: str) -> _Answer:
    return _mistral_error(400, message, "invalid_function_call", "3280")


def _invalid_message_order(message: str) -> _Answer:
    return _mistral_error(400, message, "invalid_request_message_order", "3230")


def _script_error(message: str) -> _Answer:
    return _mistral_error(500, message, "fake_mistral_script_error", None)


def _bad_id_message(value: Any) -> str:
    return f"Tool call id was {value} but must be a-z, A-Z, 0-9, with a length of 9."


def _bad_name_message(value: Any) -> str:
    return (
        f"Function name was {value} but must be a-z, A-Z, 0-9, "
        "or contain underscores and dashes, with a maximum length of 64."
    )


# --------------------------------------------------------------------------------------------
# Validation: one function per rule family, in the order the server applies them.
# --------------------------------------------------------------------------------------------


def _check_auth(authorization: str | None, api_key: str) -> None:
    """401 unless the request carries ``Authorization: Bearer <api_key>``."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), api_key):
        raise _unauthorized()


def _decode_json(raw: bytes) -> tuple[Any, _Answer | None]:
    """The parsed body, or the 400 to send (after the auth check) when it is not JSON."""
    try:
        return json.loads(raw.decode("utf-8")), None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, _invalid_request(f"Request body is not valid JSON: {exc}.")


def _check_schema(body: Any) -> None:
    """422 for what the API's request model refuses: unknown fields, missing or mistyped ones."""
    if not isinstance(body, dict):
        raise _unprocessable(
            [
                _field_error(
                    "model_attributes_type",
                    [],
                    "Input should be a valid dictionary or object to extract fields from",
                    body,
                )
            ]
        )
    errors: list[JSONDict] = []
    for name in ("model", "messages"):
        if name not in body:
            errors.append(_field_error("missing", [name], "Field required", body))
    for name, value in body.items():
        if name not in REQUEST_FIELDS:
            errors.append(
                _field_error("extra_forbidden", [name], "Extra inputs are not permitted", value)
            )
    if "model" in body and not isinstance(body["model"], str):
        errors.append(
            _field_error("string_type", ["model"], "Input should be a valid string", body["model"])
        )
    messages = body.get("messages")
    if "messages" in body and not isinstance(messages, list):
        errors.append(
            _field_error("list_type", ["messages"], "Input should be a valid list", messages)
        )
    elif isinstance(messages, list):
        errors.extend(_message_schema_errors(messages))
    tools = body.get("tools")
    if tools is not None:
        errors.extend(_tools_schema_errors(tools))
    errors.extend(_tool_choice_schema_errors(body.get("tool_choice")))
    errors.extend(_response_format_schema_errors(body.get("response_format")))
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in REASONING_EFFORTS:
        allowed = ", ".join(f"'{e}'" for e in REASONING_EFFORTS)
        errors.append(
            _field_error("enum", ["reasoning_effort"], f"Input should be {allowed}", effort)
        )
    if errors:
        raise _unprocessable(errors)


def _message_schema_errors(messages: list[Any]) -> list[JSONDict]:
    errors: list[JSONDict] = []
    for i, message in enumerate(messages):
        loc: list[str | int] = ["messages", i]
        if not isinstance(message, dict) or "role" not in message:
            errors.append(
                _field_error(
                    "union_tag_not_found",
                    loc,
                    "Unable to extract tag using discriminator 'role'",
                    message,
                )
            )
            continue
        if message["role"] not in _ROLES:
            expected = ", ".join(f"'{r}'" for r in _ROLES)
            errors.append(
                _field_error(
                    "union_tag_invalid",
                    loc,
                    f"Input tag '{message['role']}' found using 'role' does not match any of "
                    f"the expected tags: {expected}",
                    message,
                )
            )
            continue
        calls = message.get("tool_calls") if message["role"] == "assistant" else None
        if calls is None:
            continue
        if not isinstance(calls, list):
            errors.append(
                _field_error(
                    "list_type", [*loc, "tool_calls"], "Input should be a valid list", calls
                )
            )
            continue
        for j, tool_call in enumerate(calls):
            function = tool_call.get("function") if isinstance(tool_call, dict) else None
            call_loc = [*loc, "tool_calls", j, "function"]
            if not isinstance(function, dict):
                errors.append(_field_error("missing", call_loc, "Field required", tool_call))
                continue
            for key in ("name", "arguments"):
                if key not in function:
                    errors.append(
                        _field_error("missing", [*call_loc, key], "Field required", function)
                    )
            arguments = function.get("arguments")
            if "arguments" in function and not isinstance(arguments, (str, dict)):
                errors.append(
                    _field_error(
                        "string_type",
                        [*call_loc, "arguments"],
                        "Input should be a valid string or dictionary",
                        arguments,
                    )
                )
    return errors


def _tools_schema_errors(tools: Any) -> list[JSONDict]:
    if not isinstance(tools, list):
        return [_field_error("list_type", ["tools"], "Input should be a valid list", tools)]
    errors: list[JSONDict] = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict):
            errors.append(_field_error("missing", ["tools", i, "function"], "Field required", tool))
        elif not isinstance(function.get("name"), str):
            errors.append(
                _field_error(
                    "missing", ["tools", i, "function", "name"], "Field required", function
                )
            )
    return errors


def _tool_choice_schema_errors(choice: Any) -> list[JSONDict]:
    if choice is None or choice in _TOOL_CHOICES:
        return []
    if isinstance(choice, dict):
        function = choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return []
    return [
        _field_error(
            "union_tag_invalid",
            ["tool_choice"],
            "Input should be 'auto', 'none', 'any', 'required' or "
            '{"type": "function", "function": {"name": ...}}',
            choice,
        )
    ]


def _response_format_schema_errors(response_format: Any) -> list[JSONDict]:
    if response_format is None:
        return []
    if not isinstance(response_format, dict):
        return [
            _field_error(
                "model_type", ["response_format"], "Input should be an object", response_format
            )
        ]
    kind = response_format.get("type")
    if kind is not None and kind not in _RESPONSE_FORMATS:
        return [
            _field_error(
                "enum",
                ["response_format", "type"],
                "Input should be 'text', 'json_object' or 'json_schema'",
                kind,
            )
        ]
    schema = response_format.get("json_schema")
    if schema is None:
        return []
    loc: list[str | int] = ["response_format", "json_schema"]
    if not isinstance(schema, dict):
        return [_field_error("model_type", loc, "Input should be an object", schema)]
    return [
        _field_error("missing", [*loc, key], "Field required", schema)
        for key in ("name", "schema")
        if key not in schema
    ]


def _check_tools(tools: list[JSONDict] | None) -> None:
    """400 for tool definitions Mistral refuses (function names, parameter schemas)."""
    for tool in tools or []:
        function = tool["function"]
        name = function["name"]
        if not _FUNCTION_NAME.fullmatch(name):
            raise _invalid_request(_bad_name_message(name))
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise _invalid_request(
                f"Invalid tool schema: parameters of {name} must be a JSON schema object."
            )


def _check_response_format(response_format: JSONDict | None, tools: list[JSONDict] | None) -> None:
    """400 for a JSON response_format sent with tools, or json_schema without its schema."""
    if response_format is None:
        return
    kind = response_format.get("type")
    if kind in _JSON_FORMATS and tools:
        raise _invalid_request(
            f"response_format of type {kind} cannot be used together with tools; "
            "send either tools or a JSON response_format."
        )
    if kind == "json_schema" and response_format.get("json_schema") is None:
        raise _invalid_request(
            "response_format of type json_schema needs a json_schema object with a schema."
        )


def _check_message_contents(messages: list[JSONDict]) -> None:
    """400 for a malformed message: ids and names of calls and results, system content, prefix."""
    last = len(messages) - 1
    for index, message in enumerate(messages):
        role = message["role"]
        if role == "assistant":
            for tool_call in message.get("tool_calls") or []:
                _check_call_id(tool_call.get("id", "null"))
                name = tool_call["function"]["name"]
                if not isinstance(name, str) or not _FUNCTION_NAME.fullmatch(name):
                    raise _invalid_function_call(_bad_name_message(name))
            if message.get("prefix") and index != last:
                raise _invalid_message_order(
                    "Assistant message with prefix True must be last message"
                )
        elif role == "tool":
            name = message.get("name")
            if name is not None and not _FUNCTION_NAME.fullmatch(str(name)):
                raise _invalid_function_call(_bad_name_message(name))
            tool_call_id = message.get("tool_call_id")
            if tool_call_id is None:
                raise _invalid_function_call("Tool call id has to be defined.")
            if not isinstance(tool_call_id, str) or not _TOOL_CALL_ID.fullmatch(tool_call_id):
                raise _invalid_function_call(_bad_id_message(tool_call_id))
        elif role == "system" and message.get("content") is None:
            raise _invalid_request("System prompt must have content")


def _check_call_id(value: Any) -> None:
    # The SDKs send "null" when the caller gave no id (their default), as the real API expects.
    if value is None or value == "null":
        raise _invalid_function_call("Tool call id has to be defined in serving mode.")
    if not isinstance(value, str) or not _TOOL_CALL_ID.fullmatch(value):
        raise _invalid_function_call(_bad_id_message(value))


_NEXT_ROLES = {
    "system": {"user", "assistant", "system"},
    "user": {"assistant", "system", "user"},
    "assistant": {"assistant", "user", "tool"},
    "tool": {"assistant", "tool"},
}


def _check_message_structure(messages: list[JSONDict]) -> None:
    """400 for a conversation in an order the API refuses (roles, last role, calls vs. results)."""
    if not messages:
        raise _invalid_message_order("Conversation must have at least one message")
    if len(messages) == 1 and messages[0]["role"] not in ("user", "system"):
        raise _invalid_message_order(
            "Conversation must start with a user message or system message"
        )
    last = messages[-1]
    if (
        len(messages) > 1
        and last["role"] not in ("user", "tool")
        and not (last["role"] == "assistant" and last.get("prefix"))
    ):
        raise _invalid_message_order(
            "Expected last role User or Tool (or Assistant with prefix True) for serving but "
            f"got {last['role']}"
        )
    for previous, current in itertools.pairwise(messages):
        if current["role"] not in _NEXT_ROLES[previous["role"]]:
            raise _invalid_message_order(
                f"Unexpected role '{current['role']}' after role '{previous['role']}'"
            )
    _check_calls_answered(messages)


def _check_calls_answered(messages: list[JSONDict]) -> None:
    """Each call of an assistant turn needs exactly one tool result before the next turn."""
    expected: set[str] = set()
    observed: set[str] = set()
    for message in messages[1:] if messages else []:
        if message["role"] == "tool":
            call_id = message.get("tool_call_id")
            if call_id in observed:
                raise _invalid_message_order(f"Duplicate tool call id {call_id} in tool results")
            if call_id not in expected:
                raise _invalid_message_order(f"Unexpected tool call id {call_id} in tool results")
            observed.add(call_id)
        elif message["role"] == "assistant":
            if len(expected) != len(observed):
                raise _invalid_message_order("Not the same number of function calls and responses")
            expected.clear()
            observed.clear()
            for tool_call in message.get("tool_calls") or []:
                call_id = tool_call.get("id")
                if call_id in expected:
                    raise _invalid_message_order(
                        f"Duplicate tool call id {call_id} in assistant message"
                    )
                expected.add(call_id)
    if len(expected) != len(observed):
        raise _invalid_message_order("Not the same number of function calls and responses")


def _validate_chat_request(body: Any) -> None:
    """Raise ``_Answer`` for a request body the real API would refuse (after auth and JSON)."""
    _check_schema(body)
    tools = body.get("tools")
    _check_tools(tools)
    _check_response_format(body.get("response_format"), tools)
    _check_message_contents(body["messages"])
    _check_message_structure(body["messages"])


def _turn_mismatch(turn: Turn, body: JSONDict) -> str | None:
    """Why the scripted ``turn`` could not be the real model's answer to ``body``, if it can't."""
    choice = body.get("tool_choice")
    forced = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if isinstance(turn, ToolCallsTurn):
        names = [c.name for c in turn.calls]
        if not body.get("tools"):
            return (
                f"the script answers with a tool call to {names} but the request offered no tools."
            )
        if choice == "none":
            return f"the script answers with a tool call to {names} but tool_choice is 'none'."
        if forced is not None and any(name != forced for name in names):
            return f"the script calls {names} but tool_choice forces {forced!r}."
    elif isinstance(turn, TextTurn) and (choice in ("any", "required") or forced is not None):
        return f"the script answers with text but tool_choice {choice!r} requires a tool call."
    return None


# --------------------------------------------------------------------------------------------
# Successful answers.
# --------------------------------------------------------------------------------------------


def _estimate_tokens(value: Any) -> int:
    """A stable, rough token count (about 4 characters a token), good enough for ``usage``."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return max(1, (len(text) + 3) // 4)


def _completion(body: JSONDict, turn: TextTurn | ToolCallsTurn) -> JSONDict:
    """The chat.completion object Mistral returns for ``turn``."""
    if isinstance(turn, ToolCallsTurn):
        calls: list[JSONDict] | None = [
            {
                "id": c.id if c.id is not None else new_tool_call_id(),
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
                "index": i,
            }
            for i, c in enumerate(turn.calls)
        ]
        content, finish_reason = turn.content, "tool_calls"
    else:
        calls, content, finish_reason = None, turn.content, turn.finish_reason
    prompt_tokens = _estimate_tokens(body["messages"])
    completion_tokens = _estimate_tokens(content if calls is None else calls)
    message_content: str | list[JSONDict] = content
    if turn.thinking is not None:
        completion_tokens += _estimate_tokens(turn.thinking)
        message_content = [_think_chunk(turn.thinking, turn.signature)]
        if content:
            message_content.append({"type": "text", "text": content})
    return {
        "id": uuid.uuid4().hex,
        "object": "chat.completion",
        "model": body["model"],
        "created": int(time.time()),
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant", "content": message_content, "tool_calls": calls
                },
                "finish_reason": finish_reason,
            }
        ],
    }


def _think_chunk(thinking: str, signature: str | None, *, closed: bool = True) -> JSONDict:
    chunk: JSONDict = {"type": "thinking", "thinking": [{"type": "text", "text": thinking}]}
    if signature is not None:
        chunk["signature"] = signature
    chunk["closed"] = closed
    return chunk


_PIECE = re.compile(r"\S*\s*|\s+")


def _pieces(text: str) -> list[str]:
    """``text`` cut into word-sized deltas (each word with the spaces after it), in order."""
    return [p for p in _PIECE.findall(text) if p]


def _split(text: str, parts: int) -> list[str]:
    """``text`` in ``parts`` consecutive slices of about equal length (at least one)."""
    parts = max(1, min(parts, len(text)))
    size = -(-len(text) // parts) if text else 0
    return [text[i:i + size] for i in range(0, len(text), size)] if text else [""]


def _stream_events(
    completion: JSONDict, turn: TextTurn | ToolCallsTurn, split_arguments: int
) -> list[JSONDict]:
    """The ``chat.completion.chunk`` events that stream ``completion`` (the same answer)."""
    base = {
        "id": completion["id"], "object": "chat.completion.chunk",
        "created": completion["created"], "model": completion["model"],
    }
    choice = completion["choices"][0]

    def event(delta: JSONDict, finish: str | None = None, **extra: Any) -> JSONDict:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra}

    events = [event({"role": "assistant", "content": ""})]
    if turn.thinking is not None:
        pieces = _pieces(turn.thinking) or [""]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            events.append(event({"content": [_think_chunk(
                piece, turn.signature if last else None, closed=last
            )]}))
    events.extend(event({"content": piece}) for piece in _pieces(turn.content))
    for index, call_ in enumerate(choice["message"]["tool_calls"] or []):
        function = call_["function"]
        for j, piece in enumerate(_split(function["arguments"], split_arguments)):
            delta_call: JSONDict = {
                "function": {"name": function["name"] if j == 0 else "", "arguments": piece},
                "index": index,
            }
            if j == 0:
                delta_call = {"id": call_["id"], "type": "function", **delta_call}
            events.append(event({"tool_calls": [delta_call]}))
    events.append(event({"content": ""}, choice["finish_reason"], usage=completion["usage"]))
    return events


class Hold:
    """Stops the next streamed answer after ``after`` events until :meth:`release`.

    ``reached`` is set when the fake has sent those events and is holding the rest (so a test
    can look at what the client shows "while the model is still writing").
    """

    def __init__(self, after: int, timeout: float) -> None:
        self.after = after
        self.timeout = timeout
        self.reached = threading.Event()
        self._released = threading.Event()

    def release(self) -> None:
        """Let the fake send the rest of the stream."""
        self._released.set()

    def wait_reached(self, timeout: float = 30.0) -> None:
        """Block until the fake holds the stream, or raise ``TimeoutError``."""
        if not self.reached.wait(timeout):
            raise TimeoutError(f"The fake did not reach event {self.after} within {timeout:g} s.")

    def _hold(self) -> None:
        self.reached.set()
        self._released.wait(self.timeout)


# --------------------------------------------------------------------------------------------
# The server.
# --------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, address: tuple[str, int], fake: FakeMistral) -> None:
        self.fake = fake
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind without ``HTTPServer``'s reverse-DNS lookup of the host (slow offline)."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.open_connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.open_connections.discard(request)
        super().shutdown_request(request)

    def stop_serving(self) -> None:
        """``shutdown()`` without waiting out the poll interval: connect to wake the loop."""
        stopper = threading.Thread(target=self.shutdown, daemon=True)
        stopper.start()
        host, port = self.server_address[:2]
        while stopper.is_alive():
            with contextlib.suppress(OSError):
                socket.create_connection((str(host), int(port)), timeout=1).close()
            stopper.join(0.01)

    def drop_connections(self) -> None:
        """Close idle keep-alive connections so their handler threads end now."""
        with self.connections_lock:
            connections = list(self.open_connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without TCP_NODELAY, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every keep-alive request.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output clean."""

    def handle(self) -> None:
        """A client that drops its keep-alive connection (as after a cut stream) is normal."""
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            super().handle()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        status, body, headers = self.server.fake._handle(
            "POST", self.path, self.headers.get("Authorization"), raw
        )
        events = body.pop(_STREAM_KEY, None)
        if events is None:
            self._send(status, body, headers)
        else:
            self._send_stream(events)

    def _send_stream(self, events: list[JSONDict | str]) -> None:
        """Server-sent events in HTTP/1.1 chunked encoding, one write (and pause) per event."""
        fake = self.server.fake
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        hold, fake._hold_next = fake._hold_next, None
        if events and events[-1] == _RAW:
            payloads = [e if isinstance(e, str) else f"data: {json.dumps(e)}\n\n"
                        for e in events[:-1]]
        else:
            payloads = [f"data: {json.dumps(e, ensure_ascii=False)}\n\n" for e in events]
            payloads.append("data: [DONE]\n\n")
        try:
            for sent, payload in enumerate(payloads):
                if sent and fake.chunk_pause:
                    time.sleep(fake.chunk_pause)
                if hold is not None and sent == hold.after:
                    hold._hold()
                data = payload.encode("utf-8")
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                if fake.on_event is not None:
                    fake.on_event(sent, payload)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            with fake._cut:
                fake.cut_streams += 1
                fake._cut.notify_all()
            self.close_connection = True

    def _reject_method(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > 0:
            self.rfile.read(length)
        status, body, headers = self.server.fake._handle(self.command, self.path, None, b"")
        self._send(status, body, headers)

    do_GET = do_PUT = do_DELETE = do_PATCH = _reject_method

    def _send(self, status: int, body: JSONDict, headers: Iterable[tuple[str, str]]) -> None:
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


class FakeMistral:
    """A loopback stand-in for Mistral's chat-completions API, scripted by the test.

    ``script`` is a list of turns (``text``, ``tool_call``, ``tool_calls``, ``json_reply``,
    ``http_error``), used one per valid request, or a responder ``(request_body) -> Turn``
    called for every valid request. Refused requests consume nothing::

        with FakeMistral([tool_call("get_weather", {"city": "Paris"}), text("Sunny.")]) as fake:
            client = fake.client()
            reply = client.chat.complete(model="mistral-small-latest", messages=[...], tools=[...])
            assert fake.remaining == 1

    Every request whose body is a JSON object is recorded in :attr:`requests` (refused ones
    too) and its answer in :attr:`responses`, so ``responses[i]`` answers ``requests[i]``.
    The server binds 127.0.0.1 on a free port and serves from a daemon thread; use it as a
    context manager or call :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        script: Script,
        *,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        streaming: bool = True,
        chunk_pause: float = 0.0,
        split_arguments: int = 1,
        reasoning_models: Iterable[str] = DEFAULT_REASONING_MODELS,
        on_event: Callable[[int, str], None] | None = None,
    ) -> None:
        if callable(script):
            self._responder: Responder | None = script
            self._turns: list[Turn] = []
        else:
            self._responder = None
            self._turns = list(script)
            for turn in self._turns:
                if not isinstance(turn, (TextTurn, ToolCallsTurn, HttpErrorTurn, RawStreamTurn)):
                    raise TypeError(
                        f"FakeMistral script items must be turns made by text(), tool_call(), "
                        f"tool_calls(), json_reply() or http_error(), not {type(turn).__name__}."
                    )
        self.api_key: str = api_key if api_key is not None else "fake-" + secrets.token_hex(16)
        self.requests: list[JSONDict] = []
        self.responses: list[tuple[int, JSONDict]] = []
        self.script_errors: list[str] = []
        self._host = host
        self._port = port
        self._used = 0
        self._exhausted = False
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        #: ``False``: answer ``stream: true`` with plain JSON, like a proxy that cannot stream.
        self.streaming = streaming
        #: Seconds between two events of a streamed answer.
        self.chunk_pause = chunk_pause
        #: Each tool call's ``arguments`` go out over this many deltas (same ``index``).
        self.split_arguments = split_arguments
        self.reasoning_models = frozenset(reasoning_models)
        #: Called from the server thread right after each event is written: ``(n, "data: ...")``.
        self.on_event = on_event
        #: Streams the client closed before their end (e.g. an interrupted cell).
        self.cut_streams = 0
        self._cut = threading.Condition()
        self._hold_next: Hold | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeMistral:
        """Bind the port and serve from a daemon thread; returns ``self``."""
        if self._server is not None:
            raise RuntimeError("This FakeMistral is already started; start() it only once.")
        self._server = _Server((self._host, self._port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name=f"FakeMistral:{self._server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, close open connections and free the port (safe to call twice)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stop_serving()
        server.drop_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeMistral:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- what tests use --------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, the ``server_url`` to give the SDK."""
        if self._server is None:
            raise RuntimeError("FakeMistral is not running; use it in a with-block or start() it.")
        host, port = self._server.server_name, self._server.server_port
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    def client(self, **kwargs: Any) -> Any:
        """A real ``mistralai`` ``Mistral`` client pointed at this fake (kwargs passed through)."""
        mistral = mistral_class()
        return mistral(api_key=self.api_key, server_url=self.url, **kwargs)

    def hold(self, after: int, *, timeout: float = 60.0) -> Hold:
        """Hold the next streamed answer after ``after`` events until ``.release()``.

        Event 0 is the role delta, so ``hold(2)`` lets the role and the first word out.
        ``timeout`` bounds the hold so a failed test cannot hang the server.
        """
        hold = Hold(after, timeout)
        self._hold_next = hold
        return hold

    def wait_cut_streams(self, count: int, timeout: float = 30.0) -> None:
        """Block until ``count`` streams were cut by the client, or raise ``TimeoutError``."""
        with self._cut:
            if not self._cut.wait_for(lambda: self.cut_streams >= count, timeout):
                raise TimeoutError(
                    f"{self.cut_streams} stream(s) were cut within {timeout:g} s, not {count}."
                )

    def usage_totals(self) -> dict[str, int]:
        """``prompt_tokens``, ``completion_tokens`` and ``total_tokens`` summed over every
        completion this fake answered (streamed or not)."""
        totals = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        with self._lock:
            for status, body in self.responses:
                usage = body.get("usage") if status == 200 else None
                for key in totals:
                    totals[key] += int((usage or {}).get(key, 0))
        return totals

    @property
    def remaining(self) -> int | None:
        """Scripted turns not yet used (``None`` when the script is a responder)."""
        if self._responder is not None:
            return None
        with self._lock:
            return len(self._turns) - self._used

    @property
    def exhausted(self) -> bool:
        """True once a valid request arrived after the last scripted turn was used."""
        return self._exhausted

    @property
    def last_request(self) -> JSONDict:
        """The body of the most recent recorded request."""
        with self._lock:
            if not self.requests:
                raise LookupError("FakeMistral has not received any request yet.")
            return self.requests[-1]

    def check(self, *, all_used: bool = False) -> None:
        """Raise :class:`FakeMistralScriptError` if a request hit a script problem.

        With ``all_used=True`` it also raises when scripted turns were left unused.
        """
        with self._lock:
            problems = list(self.script_errors)
            unused = len(self._turns) - self._used
        if all_used and self._responder is None and unused:
            problems.append(f"FakeMistral: {unused} scripted turn(s) were never requested.")
        if problems:
            raise FakeMistralScriptError(" ".join(problems))

    # ---- request handling (called from handler threads) -------------------------------------

    def _handle(
        self, method: str, path: str, authorization: str | None, raw: bytes
    ) -> tuple[int, JSONDict, tuple[tuple[str, str], ...]]:
        body: Any = None
        try:
            if path.split("?", 1)[0] != CHAT_COMPLETIONS_PATH:
                raise _not_found()
            if method != "POST":
                raise _method_not_allowed()
            body, not_json = _decode_json(raw)
            _check_auth(authorization, self.api_key)
            if not_json is not None:
                raise not_json
            _validate_chat_request(body)
            self._check_reasoning(body)
            answer = self._answer(body)
        except _Answer as refusal:
            answer = refusal
        if isinstance(body, dict):
            with self._lock:
                self.requests.append(body)
                self.responses.append((answer.status, answer.body))
        if answer.events is not None:
            return answer.status, {**answer.body, _STREAM_KEY: answer.events}, answer.headers
        return answer.status, answer.body, answer.headers

    def _check_reasoning(self, body: JSONDict) -> None:
        if body.get("reasoning_effort") is not None and body["model"] not in self.reasoning_models:
            raise _invalid_request(
                f"Model {body['model']} does not support reasoning_effort; use a reasoning "
                "model or leave reasoning_effort out."
            )

    def _answer(self, body: JSONDict) -> _Answer:
        """Take the next turn (under the lock, so concurrent requests get distinct turns)."""
        with self._lock:
            turn = self._next_turn(body)
            if isinstance(turn, HttpErrorTurn):
                return _Answer(turn.status, dict(turn.body), turn.headers)
            if isinstance(turn, RawStreamTurn):
                if not body.get("stream"):
                    raise self._script_problem(
                        "FakeMistral script error: raw_stream() answers stream=true requests "
                        "only, and this request did not stream."
                    )
                return _Answer(200, {}, events=[*turn.items, _RAW])
            mismatch = _turn_mismatch(turn, body)
            if mismatch is not None:
                raise self._script_problem(f"FakeMistral script error: {mismatch}")
        completion = _completion(body, turn)
        if body.get("stream") and self.streaming:
            events: list[JSONDict | str] = [
                *_stream_events(completion, turn, self.split_arguments)
            ]
            return _Answer(200, completion, events=events)
        return _Answer(200, completion)

    def _script_problem(self, message: str) -> _Answer:
        """Record a script problem (caller holds the lock) and build its 500 answer."""
        self.script_errors.append(message)
        return _script_error(message)

    def _next_turn(self, body: JSONDict) -> Turn:
        if self._responder is not None:
            try:
                turn = self._responder(body)
            except Exception as exc:
                raise self._script_problem(
                    f"FakeMistral script error: the responder raised {exc!r}."
                ) from exc
            if not isinstance(turn, (TextTurn, ToolCallsTurn, HttpErrorTurn, RawStreamTurn)):
                raise self._script_problem(
                    f"FakeMistral script error: the responder returned "
                    f"{type(turn).__name__}, not a turn."
                )
            return turn
        if self._used >= len(self._turns):
            self._exhausted = True
            raise self._script_problem(
                f"FakeMistral script is exhausted: all {len(self._turns)} scripted turn(s) "
                f"were used and request #{len(self.requests) + 1} has no answer; add a turn "
                "to the script."
            )
        turn = self._turns[self._used]
        self._used += 1
        return turn
