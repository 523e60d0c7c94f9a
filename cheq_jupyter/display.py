"""What a ``%%mistral_agent`` cell shows while it runs, and after.

Every piece is an IPython display with a ``text/plain`` twin (terminal IPython and saved
notebooks read well too).  Model-controlled text is escaped everywhere it meets HTML or
Markdown.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from .agent import AgentEvents, AgentResult, Message, Phase, ToolCallRecord
from .approval import ApprovalRequest, Decision

__all__ = ["NotebookEvents", "escape_markdown", "render_output", "render_tool_result"]

COLLAPSE_AFTER = 300  # characters of a tool result shown before it is collapsed

_STATUS_STYLE = "color:#555;font-size:0.9em;margin:2px 0"


def _display(data: dict[str, str], **kwargs: Any) -> Any:
    from IPython.display import display

    return display(data, raw=True, **kwargs)


def escape_markdown(text: str) -> str:
    """Neutralise raw HTML inside model-written Markdown while keeping its formatting."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_tool_result(record: ToolCallRecord) -> dict[str, str]:
    """One tool call's outcome: a line, and the result (collapsed when long)."""
    icon = {"ran": "✅", "failed": "💥", "not_approved": "⛔", "invalid": "⚠️"}[record.status]
    label = {"ran": "ran", "failed": "raised an error", "not_approved": "did not run",
             "invalid": "refused (bad call)"}[record.status]
    head = f"{icon} {record.name} {label}"
    result = record.result
    body = html.escape(result)
    if len(result) > COLLAPSE_AFTER:
        block = (
            f"<details><summary>{html.escape(head)} — {len(result)} characters "
            f"(click to expand)</summary><pre style='white-space:pre-wrap'>{body}</pre>"
            "</details>"
        )
    else:
        block = (
            f"<div><b>{html.escape(head)}</b><pre style='white-space:pre-wrap;margin:2px 0'>"
            f"{body}</pre></div>"
        )
    plain = f"{head}: {result if len(result) <= COLLAPSE_AFTER else result[:COLLAPSE_AFTER] + '…'}"
    media = getattr(record.value, "media_html", None)  # an MCP result's images, full text
    if callable(media):
        block += media()
    return {"text/html": f"<div class='cheq-tool-result'>{block}</div>", "text/plain": plain}


def render_output(output: BaseModel) -> dict[str, str]:
    """An extracted pydantic object as a readable field table."""
    data = output.model_dump(mode="json")
    rows = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(str(k))}</th>"
        f"<td><code>{html.escape(json.dumps(v, ensure_ascii=False))}</code></td></tr>"
        for k, v in data.items()
    )
    title = html.escape(type(output).__name__)
    return {
        "text/html": f"<div class='cheq-output'><b>{title}</b><table>{rows}</table></div>",
        "text/plain": repr(output),
    }


class NotebookEvents(AgentEvents):
    """Shows a status line, each tool's result and the final answer in the cell output."""

    def __init__(self, *, approver_name: str) -> None:
        self.approver_name = approver_name
        self._status: Any = None

    def _set_status(self, message: str) -> None:
        data = {
            "text/html": f"<div class='cheq-run-status' style='{_STATUS_STYLE}'>"
                         f"{html.escape(message)}</div>",
            "text/plain": message,
        }
        if self._status is None:
            self._status = _display(data, display_id=True)
        else:
            self._status.update(data, raw=True)

    def model_request(self, step: int, max_steps: int, phase: Phase) -> None:
        what = {
            "tools": f"step {step} of {max_steps}",
            "final": "final answer",
            "structured": "structured output",
        }[phase]
        self._set_status(f"⏳ Model thinking ({what}) …")

    def assistant_message(self, message: Message, step: int) -> None:
        calls = message.get("tool_calls") or []
        if calls:
            names = ", ".join(str(c["function"]["name"]) for c in calls)
            plural = "call" if len(calls) == 1 else "calls"
            self._set_status(
                f"🛂 Step {step}: the model asks for {len(calls)} tool {plural} ({names}); "
                f"each needs a decision ({self.approver_name})."
            )
            # The next status line goes below the cards and results of this turn.
            self._status = None
        else:
            self._set_status(f"✔ Step {step}: the model answered.")

    def decided(self, requests: Sequence[ApprovalRequest], decisions: Sequence[Decision]) -> None:
        # A card shows its own decisions (and keeps a record); the others get a line each.
        for request, decision in zip(requests, decisions, strict=True):
            if decision.decided_by == "card" or decision.decided_by.endswith("(card)"):
                continue
            line = f"{request.action}: {decision.describe()}"
            _display({"text/html": f"<div class='cheq-decision'>{html.escape(line)}</div>",
                      "text/plain": line})

    def tool_result(self, record: ToolCallRecord) -> None:
        _display(render_tool_result(record))

    def final(self, result: AgentResult[Any]) -> None:
        """Show the answer as Markdown (or the extracted object)."""
        if result.output is not None:
            _display(render_output(result.output))
            return
        text = result.text or "(the model gave no text answer)"
        _display({"text/markdown": escape_markdown(text), "text/plain": text})
