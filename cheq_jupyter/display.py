"""What a ``%%mistral_agent`` cell shows while it runs, and after.

Every piece is an IPython display with a ``text/plain`` twin (terminal IPython and saved
notebooks read well too).  Model-controlled text goes through :mod:`cheq_jupyter._safe_text`
on every surface: escaped where it meets HTML or Markdown, with terminal control sequences,
bidi overrides and API keys neutralised everywhere (``text/plain`` too).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel

from . import _safe_text
from ._safe_text import escape, safe_text
from .agent import AgentEvents, AgentResult, Message, Phase, ToolCallRecord
from .approval import ApprovalRequest, Decision

__all__ = ["NotebookEvents", "escape_markdown", "render_output", "render_tool_result"]

COLLAPSE_AFTER = 300  # characters of a tool result shown before it is collapsed

_STATUS_STYLE = "color:#555;font-size:0.9em;margin:2px 0"


def _display(data: dict[str, str], **kwargs: Any) -> Any:
    from IPython.display import display

    return display(data, raw=True, **kwargs)


def escape_markdown(text: str) -> str:
    """Model-written Markdown made safe to render, keeping its formatting.

    No raw HTML, no ``javascript:``/``vbscript:``/``data:`` link, no image that loads by
    itself (it becomes a link), code shown as written (see :func:`_safe_text.safe_markdown`).
    """
    return _safe_text.safe_markdown(text)


def render_tool_result(record: ToolCallRecord) -> dict[str, str]:
    """One tool call's outcome: a line, and the result (collapsed when long)."""
    icon = {"ran": "✅", "failed": "💥", "not_approved": "⛔", "invalid": "⚠️"}[record.status]
    label = {"ran": "ran", "failed": "raised an error", "not_approved": "did not run",
             "invalid": "refused (bad call)"}[record.status]
    head = f"{icon} {record.name} {label}"
    result = safe_text(record.result)
    head = safe_text(head)
    body = escape(result)
    if len(result) > COLLAPSE_AFTER:
        block = (
            f"<details><summary>{escape(head)} — {len(result)} characters "
            f"(click to expand)</summary><pre style='white-space:pre-wrap'>{body}</pre>"
            "</details>"
        )
    else:
        block = (
            f"<div><b>{escape(head)}</b><pre style='white-space:pre-wrap;margin:2px 0'>"
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
        f"<tr><th style='text-align:left;padding-right:1em'>{escape(str(k))}</th>"
        f"<td><code>{escape(json.dumps(v, ensure_ascii=False))}</code></td></tr>"
        for k, v in data.items()
    )
    title = escape(type(output).__name__)
    return {
        "text/html": f"<div class='cheq-output'><b>{title}</b><table>{rows}</table></div>",
        "text/plain": safe_text(repr(output)),
    }


class NotebookEvents(AgentEvents):
    """Shows a status line, each tool's result and the final answer in the cell output."""

    def __init__(self, *, approver_name: str, show: Callable[..., Any] | None = None) -> None:
        self.approver_name = approver_name
        self._status: Any = None
        #: ``display``-like: where the output goes (a no-wait run's own output area).
        self._show = show or _display

    def _set_status(self, message: str) -> None:
        message = safe_text(message)
        data = {
            "text/html": f"<div class='cheq-run-status' style='{_STATUS_STYLE}'>"
                         f"{escape(message)}</div>",
            "text/plain": message,
        }
        if self._status is None:
            self._status = self._show(data, display_id=True)
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
            line = safe_text(f"{request.action}: {decision.describe()}")
            self._show({"text/html": f"<div class='cheq-decision'>{escape(line)}</div>",
                      "text/plain": line})

    def tool_result(self, record: ToolCallRecord) -> None:
        self._show(render_tool_result(record))

    def final(self, result: AgentResult[Any]) -> None:
        """Show the answer as Markdown (or the extracted object)."""
        if result.output is not None:
            self._show(render_output(result.output))
            return
        text = result.text or "(the model gave no text answer)"
        self._show({"text/markdown": escape_markdown(text), "text/plain": safe_text(text)})
