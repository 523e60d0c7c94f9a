"""Keeping the conversation valid for Mistral's API whatever the model sent.

The API refuses a request whose history holds a tool-call id that is not 9 characters of
``a-zA-Z0-9``, two calls with one id in a turn, or a function name outside
``[a-zA-Z0-9_-]{1,64}`` (see the notes on the API's rules).  A model can send all of these, so
the assistant turn that goes back into the history gets fresh valid ids where needed and a
placeholder name for a name the API would refuse; each such call is answered with an error
tool result under the same id and name, so the model is told and the run goes on.  Decisions
are never matched by these ids: approvers answer by position or by the request object.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Mapping, Sequence
from typing import Any

from ._strictjson import dump_json

__all__ = ["INVALID_NAME", "assistant_turn", "history_name", "tool_message", "turn_ids"]

_CALL_ID = re.compile(r"[a-zA-Z0-9]{9}")
_FUNCTION_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
#: What a call whose name the API would refuse is called in the history sent back.
INVALID_NAME = "invalid_tool_name"
_ID_ALPHABET = string.ascii_letters + string.digits


def _fresh_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(9))


def turn_ids(calls: Sequence[Any]) -> list[str]:
    """One id per call, valid for the API and unique in the turn: the model's own where it is
    (9 of a-z, A-Z, 0-9, not used before in the turn), else a fresh one."""
    used: set[str] = set()
    ids = []
    for item in calls:
        raw = item.get("id") if isinstance(item, Mapping) else None
        call_id = raw if isinstance(raw, str) and _CALL_ID.fullmatch(raw) else _fresh_id()
        while call_id in used:
            call_id = _fresh_id()
        used.add(call_id)
        ids.append(call_id)
    return ids


def history_name(name: str) -> str:
    """``name`` when the API accepts it in the history, else :data:`INVALID_NAME`."""
    return name if _FUNCTION_NAME.fullmatch(name) else INVALID_NAME


def assistant_turn(
    message: Mapping[str, Any], calls: Sequence[tuple[str, str, Any]]
) -> dict[str, Any]:
    """``message`` with its tool calls rewritten from ``(id, name, raw arguments)``: valid ids
    and names, and the arguments as a string (kept verbatim when the model sent one)."""
    out = []
    for call_id, name, arguments in calls:
        if not isinstance(arguments, str):
            try:
                arguments = dump_json(arguments if arguments is not None else {})
            except ValueError:
                arguments = "{}"
        out.append({"id": call_id, "type": "function",
                    "function": {"name": history_name(name), "arguments": arguments}})
    return {**message, "tool_calls": out}


def tool_message(call_id: str, name: str, content: str) -> dict[str, Any]:
    """The tool result answering call ``call_id`` (its name made valid the same way)."""
    return {"role": "tool", "tool_call_id": call_id, "name": history_name(name),
            "content": content}
