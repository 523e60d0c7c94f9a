"""What a ``%%mistral_agent`` cell shows while it runs, and after.

Every piece is an IPython display with a ``text/plain`` twin (terminal IPython and saved
notebooks read well too).  Model-controlled text goes through :mod:`cheq_jupyter._safe_text`
on every surface: escaped where it meets HTML or Markdown, with terminal control sequences,
bidi overrides and API keys neutralised everywhere (``text/plain`` too).

While the model streams, its text grows in place (one display, updated at most
:data:`MAX_UPDATES_PER_SECOND` times a second; the last update is the exact text, rendered
as Markdown when it is the answer) and a reasoning model's thinking grows in a collapsed
"Reasoning" section.  Lines are written for the person at the notebook; the exact message a
tool call sent back to the model is one click away.  Symbols are plain Unicode (✓ ✗ ⊘ ⚠ …),
which every notebook font has, not emoji.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel

from . import _safe_text
from ._safe_text import escape, safe_text
from ._stream import DeltaKind, Usage, message_text, message_thinking
from .agent import AgentEvents, AgentResult, Message, Phase, ToolCallRecord
from .approval import ApprovalRequest, Decision
from .tools import tool_result_text

__all__ = ["NotebookEvents", "escape_markdown", "render_output", "render_tool_result"]

COLLAPSE_AFTER = 300  # characters of a tool result shown before it is collapsed
MAX_UPDATES_PER_SECOND = 15  # live text: at most this many display updates a second
_SYMBOLS = {"ran": "✓", "failed": "✗", "not_approved": "⊘", "invalid": "⚠"}
_PRE = "<pre style='white-space:pre-wrap;margin:2px 0'>"

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


def person_line(record: ToolCallRecord) -> str:
    """What happened to a call, in the user's words (the model gets :attr:`record.result`)."""
    name, decision = record.name, record.decision
    if record.status == "ran":
        edited = decision is not None and decision.modified_details is not None
        return f"{name} ran" + (" with the edited arguments" if edited else "")
    if record.status == "failed":
        return f"{name} raised an error: {record.error}"
    if record.status == "invalid":
        return f"{name} was not asked about: the model's call was invalid ({record.error})"
    if decision is None:
        return f"{name} did not run: no decision was made"
    if decision.approved:  # approved, but the edited arguments failed the tool's check
        return f"{name} did not run: the edited arguments were invalid ({record.error})"
    note = f" (note: {decision.decision_note})" if decision.decision_note else ""
    if decision.status == "rejected":
        return f"{name} did not run: rejected by {decision.decided_by}{note}"
    if decision.status == "timed_out":
        return f"{name} did not run: nobody decided in time"
    return f"{name} did not run: the approval was cancelled{note}"


def render_tool_result(record: ToolCallRecord) -> dict[str, str]:
    """One tool call's outcome: a line for the person, then the result or the exact message
    sent to the model (collapsed when long, or when it is addressed to the model)."""
    head = safe_text(f"{_SYMBOLS[record.status]} {person_line(record)}")
    result = record.result
    if record.status == "ran" and record.value is not None:
        result = tool_result_text(record.value)  # without the notes meant for the model
    result = safe_text(result)
    body = escape(result)
    to_model = (
        f"<details class='cheq-model-message'><summary>The message sent to the model</summary>"
        f"{_PRE}{escape(record.result)}</pre></details>"
    )
    if len(result) > COLLAPSE_AFTER:
        block = (
            f"<details><summary>{escape(head)} — {len(result)} characters "
            f"(click to expand)</summary>{_PRE}{body}</pre></details>"
        )
        if result != record.result:
            block += to_model
    elif record.status == "ran":
        block = f"<div><b>{escape(head)}</b>{_PRE}{body}</pre></div>"
        if result != record.result:
            block += to_model
    else:
        block = f"<div><b>{escape(head)}</b></div>{to_model}"
    plain = f"{head}: {result if len(result) <= COLLAPSE_AFTER else result[:COLLAPSE_AFTER] + '…'}"
    media = getattr(record.value, "media_html", None)  # an MCP result's images, full text
    if callable(media):
        block += media()
    return {"text/html": f"<div class='cheq-tool-result'>{block}</div>", "text/plain": plain}


def render_reasoning(thinking: str, *, done: bool) -> dict[str, str]:
    """A reasoning model's thinking, collapsed, escaped (never Markdown)."""
    label = "Reasoning" if done else "Reasoning …"
    summary = f"{label} ({len(thinking):,} characters)"
    return {
        "text/html": f"<details class='cheq-reasoning'><summary>{escape(summary)}</summary>"
                     f"{_PRE}{escape(thinking)}</pre></details>",
        "text/plain": safe_text(f"{summary}: {thinking[:COLLAPSE_AFTER]}")
                      + ("…" if len(thinking) > COLLAPSE_AFTER else ""),
    }


def render_live_text(text: str) -> dict[str, str]:
    """The answer while it streams: escaped text that grows in place."""
    # Prose, wrapped at spaces (JupyterLab breaks <pre> output text anywhere, mid-word).
    return {"text/html": "<div class='cheq-live' style='white-space:pre-wrap;"
                         f"word-break:normal;overflow-wrap:anywhere'>{escape(text)}</div>",
            "text/plain": safe_text(text)}


def render_answer(text: str) -> dict[str, str]:
    """The model's answer as Markdown, with raw HTML neutralised."""
    return {"text/markdown": escape_markdown(text), "text/plain": safe_text(text)}


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
        "text/plain": repr(output),
    }


class _Live:
    """One display that grows while the model streams, updated at most N times a second.

    A piece that arrives within the interval after an update is shown by a timer at the end
    of the interval (so the words before a pause in the stream do not wait for the next
    chunk); ``show`` of the final text stops the timer.  ipykernel routes a display made
    from another thread to the running cell, and the lock keeps updates in order.
    """

    def __init__(
        self, render: Any, interval: float, display: Callable[..., Any] = _display
    ) -> None:
        self.render = render
        self._display = display
        self.interval = interval
        self.parts: list[str] = []
        self.handle: Any = None
        self.shown_at = 0.0
        self.pending = False
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._final = False

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def add(self, piece: str) -> None:
        with self._lock:
            if self._final:
                return
            self.parts.append(piece)
            self.pending = True
            wait = self.shown_at + self.interval - time.monotonic()
            if wait <= 0:
                self._show(self.render(self.text, done=False))
            elif self._timer is None:
                self._timer = threading.Timer(wait, self._on_timer)
                self._timer.daemon = True
                self._timer.start()

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
            if self.pending and not self._final:
                try:
                    self._show(self.render(self.text, done=False))
                except Exception:  # a display that fails must not kill the stream
                    self.pending = False

    def show(self, data: dict[str, str]) -> None:
        """Show the final ``data`` (no timer update comes after it)."""
        with self._lock:
            self._final = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._show(data)

    def _show(self, data: dict[str, str]) -> None:
        if self.handle is None:
            self.handle = self._display(data, display_id=True)
        else:
            self.handle.update(data, raw=True)
        self.shown_at = time.monotonic()
        self.pending = False


class NotebookEvents(AgentEvents):
    """Shows a status line, the model's text as it streams, each tool's result and the answer."""

    def __init__(
        self, *, approver_name: str, show: Callable[..., Any] | None = None,
        on_card: Callable[[ApprovalRequest], bool] | None = None,
    ) -> None:
        self.approver_name = approver_name
        #: ``display``-like: where the output goes (a no-wait run's own output area).
        self._show = show or _display
        #: Whether a request was shown on a card (its decision is on the card, not repeated).
        self.on_card = on_card
        self._status: Any = None
        self._status_text = ""
        self._total = Usage()
        self._phase: Phase = "tools"
        self._text: _Live | None = None
        self._thinking: _Live | None = None
        self._answer_shown: str | None = None
        #: The conversation so far when the run was interrupted (valid for ``--continue``).
        self.partial_result: AgentResult[Any] | None = None

    def _set_status(self, message: str, *, running_total: bool = True) -> None:
        message = safe_text(message)
        self._status_text = message
        if running_total and self._total.total_tokens:
            message += f" · {self._total.total_tokens:,} tokens so far"
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
        self._phase = phase
        interval = 1.0 / MAX_UPDATES_PER_SECOND
        self._text = _Live(lambda text, done: render_live_text(text), interval, self._show)
        self._thinking = _Live(lambda text, done: render_reasoning(text, done=done), interval,
                               self._show)
        self._set_status(f"… Waiting for the model ({what})")

    def model_delta(self, kind: DeltaKind, text: str) -> None:
        if self._phase == "structured":
            return  # JSON for the parser; the extracted object is shown when it is complete
        live = self._thinking if kind == "thinking" else self._text
        if live is not None:
            live.add(text)

    def model_usage(self, step: int, usage: Usage, total: Usage) -> None:
        self._total = total

    def assistant_message(self, message: Message, step: int) -> None:
        calls = message.get("tool_calls") or []
        self._finish_live(message, answer=not calls and self._phase != "structured")
        if calls:
            names = ", ".join(str(c["function"]["name"]) for c in calls)
            plural = "call" if len(calls) == 1 else "calls"
            self._set_status(
                f"→ Step {step}: the model asks for {len(calls)} tool {plural} ({names}); "
                f"each needs a decision ({self.approver_name})."
            )
            # The next status line goes below the cards and results of this turn.
            self._status = None
        else:
            self._set_status(f"✓ Step {step}: the model answered.")

    def _finish_live(self, message: Message, *, answer: bool) -> None:
        """The exact final text (and thinking) in place of the live displays."""
        thinking, text = message_thinking(message), message_text(message)
        if self._thinking is not None and (thinking or self._thinking.handle is not None):
            self._thinking.show(render_reasoning(thinking, done=True))
        if self._text is None or self._phase == "structured":
            return  # structured output is shown as a table once it is valid
        if answer and text:
            self._text.show(render_answer(text))
            self._answer_shown = text
        elif text or self._text.handle is not None:
            self._text.show(render_live_text(text))

    def interrupted(self, result: AgentResult[Any]) -> None:
        self.partial_result = result
        for live in (self._thinking, self._text):
            if live is not None and live.pending:
                live.show(live.render(live.text, done=True))
        self._set_status("⊘ Interrupted: the run stopped here and nothing more ran (with -o VAR, "
                         "--continue VAR carries on from here).")

    def decided(self, requests: Sequence[ApprovalRequest], decisions: Sequence[Decision]) -> None:
        # A card shows its own decisions (and keeps a record); the others get a line each.
        for request, decision in zip(requests, decisions, strict=True):
            if decision.decided_by == "card" or decision.decided_by.endswith("(card)"):
                continue
            if self.on_card is not None and self.on_card(request):
                continue  # e.g. decided in Cheqpoint while racing the card: the card says so
            line = safe_text(f"{request.action}: {decision.describe()}")
            self._show({"text/html": f"<div class='cheq-decision'>{escape(line)}</div>",
                      "text/plain": line})

    def tool_result(self, record: ToolCallRecord) -> None:
        self._show(render_tool_result(record))

    def final(self, result: AgentResult[Any]) -> None:
        """Show the answer as Markdown (or the extracted object), unless it streamed already."""
        if result.output is not None:
            self._show(render_output(result.output))
        elif self._answer_shown is None or self._answer_shown != result.text:
            self._show(render_answer(result.text or "(the model gave no text answer)"))
        if self._total.total_tokens and self._status is not None:
            self._set_status(f"{self._status_text} Usage: {self._total.describe()}.",
                             running_total=False)
