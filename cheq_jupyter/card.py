"""The approval card: one ipywidgets card per tool call, blocking the cell until a human decides.

::

    from cheq_jupyter import run_agent, WidgetApprover
    result = run_agent(prompt, tools=[refund], approver=WidgetApprover(timeout=300))

Each card shows the tool, a one-line summary and the arguments (model text, always escaped),
with **Approve**, **Reject** (with an optional note) and **Edit** (a JSON editor; the diff
against the model's arguments is shown, and edits that fail the tool's own validation cannot be
approved).  All calls of one model turn appear together, with **Approve all** / **Reject all**
when there are several; the cell goes on when every card is decided.  Fail closed: after
``timeout`` seconds (a countdown is shown) undecided calls are ``timed_out``; a kernel
interrupt marks them ``cancelled`` and re-raises ``KeyboardInterrupt``.  Once decided, every
control is disabled, a status line says what was decided, by whom and when, and a static HTML
record becomes the ``text/html`` fallback of the card's own output: a live notebook shows the
card (once), a notebook opened without a kernel shows the record.  Above the calls, the card
shows what the model wrote in that turn and its reasoning (collapsed), escaped.

Arguments the model left out are shown with the values the tool's defaults give them,
marked as defaults; edits are checked with ``request.check``, the same validation as the call.

Stable ``_dom_classes`` for tests and styling: ``cheq-card``, ``cheq-approve``,
``cheq-reject``, ``cheq-edit``, ``cheq-args`` (the JSON Textarea; editing it and pressing
Approve approves the edited arguments), ``cheq-note``, ``cheq-status``, and for several calls
``cheq-approve-all``, ``cheq-reject-all``; the whole turn is ``cheq-turn`` and its countdown
``cheq-countdown``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import _blocking
from . import _safe_text as html  # html.escape that also neutralises controls, bidi and keys
from ._strictjson import same_json, strict_json
from .approval import ApprovalRequest, Decision
from .approvers.allowlist import RunAllowList

__all__ = ["Validator", "WidgetApprover"]

log = logging.getLogger(__name__)

#: ``(request, edited arguments) -> problems`` (an empty list when the edit is acceptable).
Validator = Callable[[ApprovalRequest, Any], list[str]]
DecisionHook = Callable[[ApprovalRequest, Decision, str], None]

_WAITING = "Waiting for your decision."
_OUTCOMES = {
    "decided": "All calls decided.",
    "timed out": "Timed out: the undecided calls were not approved.",
    "interrupted": "Interrupted: the undecided calls were cancelled and nothing ran.",
    "failed": "The approval card failed: the undecided calls were cancelled.",
}
_STYLE = (
    "<style>.cheq-card pre{white-space:pre-wrap;margin:2px 0;max-height:16em;overflow:auto}"
    # ipywidgets gives HTML content a 28px line height: wrapped summaries looked double-spaced.
    ".cheq-turn .widget-html-content{line-height:1.5}"
    "</style>"
)
#: Shown when the editor opens: its text reaches the kernel when the user leaves the box.
_EDIT_HINT = (
    "<div>Edit the JSON, then click outside the box (or press Tab): the card checks the "
    "arguments and shows what changed.</div>"
)
#: Seconds without any widget message before a blocking card says how to switch to no-wait.
_HINT_AFTER = 20.0
_NO_CLICK_HINT = (
    "<div class='cheq-no-click-hint' style='color:#8a5300'>No click has reached the kernel "
    "yet. If you clicked and nothing happened, this frontend holds widget messages while a "
    "cell runs (VS Code does): interrupt the kernel, then run the cell again with "
    "<code>%%mistral_agent --no-wait</code>, or set <code>%config MistralAgentMagics.wait = "
    "'no-wait'</code>. <code>%mistral_agent --check</code> tests this frontend.</div>"
)
#: JupyterLab right-aligns and vertically centres HTML table cells (made for DataFrames).
_TD = "<td style='text-align:left;vertical-align:top'>"


def _countdown_html(cards: Sequence[_Card], left: float | None) -> str:
    pending = sum(c.decision is None for c in cards)
    text = f"{pending} of {len(cards)} call(s) waiting for your decision"
    if left is not None:
        minutes, seconds = divmod(int(left + 0.5), 60)
        text += f", {minutes}:{seconds:02d} left (then not approved)"
    return html.escape(text + ".")


def _default_validator(request: ApprovalRequest, arguments: Any) -> list[str]:
    """The tool's own check (the same validation as the call); the JSON-schema subset
    checker only for requests built by hand without one."""
    if request.check is not None:
        return list(request.check(arguments))
    from .tools import validate_arguments

    if request.check is not None:  # the tool's own check: the same validation as the call
        return request.check(arguments)

    return validate_arguments(request.schema, arguments)


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def diff_html(original: dict[str, Any], edited: dict[str, Any]) -> str:
    """Escaped, one line per changed top-level argument: ``name: old → new``."""
    lines = []
    for key in [*original, *(k for k in edited if k not in original)]:
        old, new = original.get(key, ...), edited.get(key, ...)
        if old is not ... and new is not ... and same_json(old, new):
            continue
        name = html.escape(str(key))
        if new is ...:
            lines.append(f"<del>{name}: {html.escape(_short(old))}</del> (removed)")
        elif old is ...:
            lines.append(f"<ins>{name}: {html.escape(_short(new))}</ins> (added)")
        else:
            lines.append(
                f"{name}: <del>{html.escape(_short(old))}</del> → "
                f"<ins>{html.escape(_short(new))}</ins>"
            )
    return "<br>".join(lines)


def why_html(request: ApprovalRequest) -> str:
    """What the model said (and reasoned) in the turn that asked for this call, escaped.

    The text is plain (never Markdown or HTML); the reasoning is collapsed.
    """
    if not request.reason and not request.reasoning:
        return ""
    parts = ["<div class='cheq-why'>"]
    if request.reason:
        parts.append(
            "<div><i>The model says:</i> "
            f"<span style='white-space:pre-wrap'>{html.escape(request.reason)}</span></div>"
        )
    if request.reasoning:
        parts.append(
            "<details class='cheq-why-reasoning'><summary>The model's reasoning "
            f"({len(request.reasoning):,} characters)</summary>"
            f"<pre>{html.escape(request.reasoning)}</pre></details>"
        )
    parts.append("</div>")
    return "".join(parts)


def origin_html(request: ApprovalRequest) -> str:
    """Where the tool comes from and what its provider claims about it, escaped."""
    if not request.origin:
        return ""
    from .approval import describe_claims

    claims = describe_claims(request.annotations)
    said = (f" · the server claims: {html.escape(', '.join(claims))} (not verified)"
            if claims else " · the server makes no claims about this tool")
    return (f"<div class='cheq-origin' style='color:#555;font-size:0.9em'>"
            f"from {html.escape(request.origin)}{said}</div>")


def args_html(request: ApprovalRequest, arguments_json: str) -> str:
    """Every argument the tool will run with, escaped; those filled in from the tool's
    defaults (the model did not send them) are marked as such."""
    defaulted = [k for k in request.defaulted if k in request.details]
    if not defaulted:
        return f"<pre class='cheq-args-view'>{html.escape(arguments_json)}</pre>"
    items = list(request.details.items())
    lines = ["{"]
    for i, (key, value) in enumerate(items):
        text = json.dumps(key, ensure_ascii=False) + ": " + json.dumps(
            value, indent=2, ensure_ascii=False
        ).replace("\n", "\n  ")
        line = "  " + html.escape(text + ("," if i < len(items) - 1 else ""))
        if key in defaulted:
            line = (f"<span class='cheq-default' style='color:#8a5a00'>{line}"
                    "  ← default (not sent by the model)</span>")
        lines.append(line)
    lines.append("}")
    names = ", ".join(html.escape(k) for k in defaulted)
    return (
        f"<pre class='cheq-args-view'>{chr(10).join(lines)}</pre>"
        f"<div class='cheq-defaults'>Filled in from the tool's defaults: <b>{names}</b> "
        "(the tool runs with these values).</div>"
    )


def header_html(request: ApprovalRequest, arguments_json: str, *, why: bool = True) -> str:
    """The top of a card: the why, the tool and its origin, and the arguments.

    ``why=False`` leaves the why out (a turn of several calls shows it once, above them).
    """
    return (
        (why_html(request) if why else "")
        + f"<b>{html.escape(request.action)}</b> — {html.escape(request.summary)}"
        + origin_html(request)
        + args_html(request, arguments_json)
    )


def _widget_bundle(turn: Any, requests: Sequence[ApprovalRequest]) -> dict[str, Any]:
    """The display of a turn's widget, to which the decision record is added as ``text/html``."""
    names = ", ".join(r.action for r in requests)
    return {
        # What ipywidgets 8's _repr_mimebundle_ gives (ipywidgets 7 has no such method).
        "application/vnd.jupyter.widget-view+json": {
            "version_major": 2, "version_minor": 0, "model_id": turn.model_id,
        },
        "text/plain": f"Approval card for {names} (waiting for a decision).",
    }


class _Look:
    """Layout and style models shared by every card of a turn (fewer widgets to create)."""

    def __init__(self) -> None:
        import ipywidgets as w

        try:
            from ipywidgets.widgets.widget_string import HTMLStyle, TextStyle
        except ImportError:  # ipywidgets 7 (Colab): one description style for both
            from ipywidgets.widgets.widget_description import DescriptionStyle as HTMLStyle
            from ipywidgets.widgets.widget_description import DescriptionStyle as TextStyle

        self.plain = w.Layout()
        self.card = w.Layout(border="1px solid #ccc", padding="4px 8px", margin="4px 0")
        self.html = HTMLStyle()
        self.text = TextStyle()
        self.button = w.ButtonStyle()
        # Buttons and the checkbox size to their labels: the default fixed widths cut
        # "Approve edited" to "Approve ..." in JupyterLab.
        self.fit = w.Layout(width="auto")
        self.row = w.Layout(flex_flow="row wrap")  # narrow notebooks: controls wrap


class _Card:
    """The widgets and the decision of one request.  Widgets change on the main thread only."""

    def __init__(
        self, approver: WidgetApprover, request: ApprovalRequest, look: _Look, *, why: bool = True
    ) -> None:
        import ipywidgets as w

        self.approver = approver
        self.request = request
        self.decision: Decision | None = None
        #: No-wait mode: told when this card is decided; decisions after ``deadline`` time out.
        self.on_settled: Callable[[_Card], None] | None = None
        self.deadline: float | None = None
        self.source = ""
        self.original = request.arguments_json()
        self.info = w.HTML(header_html(request, self.original, why=why), layout=look.plain,
                           style=look.html)
        self.args = w.Textarea(
            self.original,
            _dom_classes=["cheq-args"],
            rows=min(12, self.original.count("\n") + 2),
            layout=w.Layout(display="none", width="100%"),  # its own: Edit shows it
            style=look.text,
            # Send the text when the user leaves the box, not on each keystroke: the browser
            # holds back a widget's state update while an earlier one is unanswered but sends a
            # click at once, so a quick click after typing reached the kernel before the last
            # keystrokes (Approve ran stale arguments, Reject lost the end of the note).
            # Pressing a button moves the focus first, so the text goes before the click.
            continuous_update=False,
        )
        self.feedback = w.HTML("", layout=look.plain, style=look.html,
                               _dom_classes=["cheq-feedback"])
        self.note = w.Text(
            placeholder="Note (optional): why, or what to do instead",
            _dom_classes=["cheq-note"],
            layout=look.plain,
            style=look.text,
            continuous_update=False,  # like the editor: sent on leaving, before a click
        )
        self.approve = w.Button(description="Approve", button_style="success", icon="check",
                                layout=look.fit, style=look.button,
                                _dom_classes=["cheq-approve"])
        self.reject = w.Button(description="Reject", button_style="danger", icon="times",
                               layout=look.fit, style=look.button,
                               _dom_classes=["cheq-reject"])
        self.edit = w.Button(description="Edit", icon="pencil", layout=look.fit,
                             style=look.button, _dom_classes=["cheq-edit"])
        self.status = w.HTML(html.escape(_WAITING), layout=look.plain, style=look.html,
                             _dom_classes=["cheq-status"])
        self.controls: tuple[Any, ...] = (
            self.args, self.note, self.approve, self.reject, self.edit
        )
        buttons: list[Any] = [self.approve, self.reject, self.edit]
        self.rest_of_run: Any = None
        if approver.allow_rest_of_run and approver.allow_list.can_allow(request):
            self.rest_of_run = w.Checkbox(
                False, description=f"Approve later {request.action} calls in this run",
                indent=False, layout=look.fit, _dom_classes=["cheq-rest-of-run"],
            )
            self.controls += (self.rest_of_run,)
            buttons.append(self.rest_of_run)
        self.box = w.VBox(
            [
                self.info,
                self.args,
                self.feedback,
                self.note,
                w.HBox(buttons, layout=look.row),
                self.status,
            ],
            layout=look.card,
            _dom_classes=["cheq-card"],
        )
        self.approve.on_click(lambda _b: self.try_approve())
        self.reject.on_click(lambda _b: self.do_reject())
        self.edit.on_click(lambda _b: self.toggle_edit())
        self.args.observe(lambda _c: self.show_edit_state(), names="value")

    # -- reading the editor ------------------------------------------------------------------
    def edited(self) -> tuple[dict[str, Any] | None, list[str]]:
        """``(edited arguments or None when unchanged, problems)`` from the editor's text."""
        text = self.args.value
        if text == self.original:
            return None, []
        try:
            value = strict_json(text)
        except ValueError as exc:
            return None, [f"The arguments are not valid JSON: {exc}."]
        if same_json(value, self.request.details):  # as JSON: 1 -> true is an edit
            return None, []
        try:
            problems = list(self.approver.validator(self.request, value))
        except Exception as exc:  # a broken validator must not let an edit through
            problems = [f"The edited arguments could not be checked ({type(exc).__name__})."]
        return value, problems

    def show_edit_state(self) -> None:
        if self.decision is not None:
            return
        value, problems = self.edited()
        if problems:
            items = "".join(f"<li>{html.escape(p)}</li>" for p in problems)
            self.feedback.value = (
                f"<div style='color:#b00020'>Cannot approve these edits:<ul>{items}</ul></div>"
            )
            self.approve.disabled = True
        elif value is not None:
            self.feedback.value = (
                "<div>Edited (the tool will run with these):<br>"
                f"{diff_html(self.request.details, value)}</div>"
            )
            self.approve.disabled = False
            self.approve.description = "Approve edited"
        else:
            self.feedback.value = ""
            self.approve.disabled = False
            self.approve.description = "Approve"

    # -- button actions (they only record; the cell prints after the wait) --------------------
    def toggle_edit(self) -> None:
        if self.decision is not None:
            return
        if self.args.layout.display == "none":
            self.args.layout.display = None
            self.edit.description = "Undo edits"
            if not self.feedback.value:
                self.feedback.value = _EDIT_HINT
        else:
            self.args.layout.display = "none"
            self.args.value = self.original
            self.edit.description = "Edit"
            self.show_edit_state()

    def try_approve(self) -> None:
        if self.decision is not None:
            return
        value, problems = self.edited()
        if problems:
            self.show_edit_state()
            return
        decision = Decision.approve(
            by=self.approver.reviewer, modified_details=value, note=self.note.value.strip()
        )
        self.approver._settle(self, decision, "card")
        if self.decision is decision and self.rest_of_run is not None and self.rest_of_run.value:
            self.approver.allow_list.allow(self.request, by=self.approver.reviewer)

    def do_reject(self) -> None:
        if self.decision is None:
            self.approver._settle(
                self, Decision.reject(self.note.value.strip(), by=self.approver.reviewer), "card"
            )

    # -- after the decision ------------------------------------------------------------------
    def render_decided(self) -> None:
        decision = self.decision
        assert decision is not None
        for control in self.controls:
            control.disabled = True
        text = decision.describe()
        if self.source != "card":
            text += f" (decided in {self.source})"
        color = "#1b5e20" if decision.approved else "#b00020"
        self.status.value = f"<b style='color:{color}'>{html.escape(text)}</b>"

    def record_html(self) -> str:
        decision = self.decision
        req = self.request
        verdict = html.escape(decision.describe() if decision else "undecided (not approved)")
        if decision is not None and self.source != "card":
            verdict += f" (decided in {html.escape(self.source)})"
        # JupyterLab breaks output <pre> text anywhere, which squeezed this column.
        args = f"<pre style='word-break:normal'>{html.escape(self.original)}</pre>"
        if req.defaulted:
            args += ("<div>Filled in from the tool's defaults: "
                     f"{html.escape(', '.join(req.defaulted))}</div>")
        if decision is not None and decision.modified_details is not None:
            args += f"<div>Edited: {diff_html(req.details, decision.modified_details)}</div>"
        return (
            f"<tr>{_TD}<b>{html.escape(req.action)}</b><br>{html.escape(req.summary)}</td>"
            f"{_TD}{args}</td>{_TD}{verdict}</td></tr>"
        )


class WidgetApprover:
    """Approve tool calls on ipywidgets cards in the running cell (see the module doc).

    ``timeout`` is in seconds (``None``: wait until decided or interrupted); undecided calls
    are then ``timed_out``, never approved.  ``reviewer`` names who decides here (the
    ``decided_by`` is ``"card"``, or ``"<reviewer> (card)"``).  ``validator(request, args)``
    returns the problems of edited arguments (default: ``request.check``, the same validation
    as the call; the tool's JSON schema for requests built without one).
    ``on_decision(request, decision, source)`` is told of each decision as it happens.

    Outside a Jupyter kernel it raises :class:`~cheq_jupyter.errors.FrontendUnavailableError`,
    which the agent loop turns into "not approved".
    """

    name = "card"

    def __init__(
        self,
        *,
        timeout: float | None = 600.0,
        reviewer: str | None = None,
        validator: Validator | None = None,
        on_decision: DecisionHook | None = None,
        allow_list: RunAllowList | None = None,
        allow_rest_of_run: bool = True,
    ) -> None:
        if timeout is not None and timeout <= 0:
            raise ValueError(
                f"WidgetApprover timeout is {timeout!r}; give a number of seconds above 0, "
                "or None to wait until someone decides."
            )
        self.timeout = timeout
        self.reviewer = f"{reviewer} (card)" if reviewer else "card"
        self.validator: Validator = validator or _default_validator
        self.on_decision = on_decision
        self.allow_list = allow_list if allow_list is not None else RunAllowList()
        self.allow_rest_of_run = allow_rest_of_run
        self._lock = threading.Lock()
        self._turn_shown = threading.Condition(self._lock)
        self._cards: list[_Card] = []
        self._external: list[_Card] = []
        self._waker: _blocking.Waker | None = None
        self._shown: set[str] = set()

    def __repr__(self) -> str:
        return f"WidgetApprover(timeout={self.timeout!r})"

    def showed(self, request: ApprovalRequest) -> bool:
        """Whether ``request`` was put on a card (which then shows its decision itself)."""
        return request.tool_call_id in self._shown

    def __call__(self, request: ApprovalRequest) -> Decision:
        return self.decide_all([request])[0]

    # -- deciding ------------------------------------------------------------------------------
    def _claim(self, card: _Card, decision: Decision, source: str) -> bool:
        with self._lock:
            if card.decision is not None:
                return False
            card.decision, card.source = decision, source
            return True

    def _settle(self, card: _Card, decision: Decision, source: str) -> None:
        """Record a decision made on the main thread (a click, the timeout, an interrupt)."""
        if (
            card.deadline is not None and decision.status != "timed_out"
            and time.monotonic() >= card.deadline
        ):
            # No-wait: a click that reached the kernel after the deadline but before the
            # timer fired (a busy kernel runs timers late) is still not an approval.
            decision = Decision.timed_out(
                f"Decided after the {self.timeout:g} second timeout; not approved.", by="card"
            )
        if self._claim(card, decision, source):
            self._announce(card)
            if card.on_settled is not None:
                card.on_settled(card)

    def _announce(self, card: _Card) -> None:
        card.render_decided()
        assert card.decision is not None
        log.info("%s (%s): %s", card.request.action, card.request.tool_call_id,
                 card.decision.describe())
        if self.on_decision is not None:
            try:
                self.on_decision(card.request, card.decision, card.source)
            except Exception:
                log.exception("on_decision hook failed for %s", card.request.tool_call_id)

    def decide_externally(
        self, request: ApprovalRequest, decision: Decision, *, source: str = "external",
        wait: float = 0.0,
    ) -> bool:
        """Decide the card of ``request`` from another thread (e.g. a remote approver racing
        the card).

        The card is found by the request object itself (the one given to :meth:`decide_all`),
        never by its ``tool_call_id``: ids come from the model and two calls may share one.
        Returns ``True`` when this decided the card; ``False`` when the card was already
        decided (the first decision wins) or no card for that request is waiting.  ``wait`` is
        how long to wait for that card to be shown (a remote answer may beat the card).
        """
        deadline = time.monotonic() + wait
        with self._turn_shown:
            while True:
                card = next((c for c in self._cards if c.request is request), None)
                remaining = deadline - time.monotonic()
                if card is not None or remaining <= 0:
                    break
                self._turn_shown.wait(remaining)
            if card is None or card.decision is not None:
                return False
            card.decision, card.source = decision, source
            self._external.append(card)
            waker = self._waker
        if waker is not None:
            waker.wake()
        return True

    def _take_external(self) -> None:
        with self._lock:
            cards, self._external = self._external, []
        for card in cards:
            self._announce(card)

    # -- the turn ----------------------------------------------------------------------------
    def decide_all(self, requests: Sequence[ApprovalRequest]) -> list[Decision]:
        """Show one card per request, wait until all are decided, return them in order."""
        if not requests:
            return []
        allowed = [self.allow_list.decide(r) for r in requests]
        if all(d is not None for d in allowed):
            self._show_allowed(requests, allowed)
            return [d for d in allowed if d is not None]
        if any(d is not None for d in allowed):
            asked = [r for r, d in zip(requests, allowed, strict=True) if d is None]
            self._show_allowed(requests, allowed)
            answers = iter(self.decide_all(asked))
            return [d if d is not None else next(answers) for d in allowed]
        _blocking.check_kernel()  # fail before showing cards nobody can click
        from IPython.display import display

        cards, turn, countdown, group = self._turn(requests)
        started = time.monotonic()

        def tick(left: float | None) -> None:
            countdown.value = _countdown_html(cards, left)
            if _blocking.comm_messages() == 0 and time.monotonic() - started >= _HINT_AFTER:
                # Not one widget message yet in this session: the frontend may hold clicks
                # while a cell runs (VS Code does).  Say how to get out of it.
                countdown.value += _NO_CLICK_HINT

        def done() -> bool:
            self._take_external()
            return all(c.decision is not None for c in cards)

        waker = _blocking.Waker()
        with self._turn_shown:
            self._cards, self._external, self._waker = cards, [], waker
            self._turn_shown.notify_all()
        bundle = _widget_bundle(turn, requests)
        outcome = "interrupted"
        handle: Any = None
        try:
            try:
                tick(self.timeout)
                handle = display(bundle, raw=True, display_id=True)
                finished = _blocking.wait_for(done, timeout=self.timeout, waker=waker, on_tick=tick)
            finally:
                self._close_turn()
                waker.close()
            if not finished:
                outcome = "timed out"
                note = f"Nobody decided within {self.timeout:g} seconds."
                for card in cards:
                    self._settle(card, Decision.timed_out(note, by="card"), "card")
            else:
                outcome = "decided"
        except BaseException as exc:  # an interrupt, or the wait failed: nothing is approved
            if isinstance(exc, KeyboardInterrupt):
                note = "The kernel was interrupted while waiting for approval."
            else:
                outcome = "failed"
                note = f"The approval card failed ({type(exc).__name__}); nothing was approved."
            for card in cards:
                self._settle(card, Decision.cancelled(note, by="card"), "card")
            raise
        finally:
            for control in group:
                control.disabled = True
            countdown.value = html.escape(_OUTCOMES[outcome])
            self._show_record(cards, display, bundle if handle is not None else None, handle)
        return [c.decision for c in cards if c.decision is not None]

    def _turn(self, requests: Sequence[ApprovalRequest]) -> tuple[
        list[_Card], Any, Any, list[Any]
    ]:
        """The widgets of one turn: ``(cards, the turn box, its countdown, group buttons)``."""
        import ipywidgets as w

        look = _Look()
        self._shown.update(r.tool_call_id for r in requests)
        # The model's why is the same for every call of its turn: shown once, above them.
        shared_why = len(requests) > 1 and len({(r.reason, r.reasoning) for r in requests}) == 1
        cards = [_Card(self, r, look, why=not shared_why) for r in requests]
        countdown = w.HTML("", layout=look.plain, style=look.html,
                           _dom_classes=["cheq-countdown"])
        children: list[Any] = [
            w.HTML(_STYLE, layout=look.plain, style=look.html),
            countdown,
            *([w.HTML(why_html(requests[0]), layout=look.plain, style=look.html)]
              if shared_why and why_html(requests[0]) else []),
            *(c.box for c in cards),
        ]
        group: list[Any] = []
        if len(cards) > 1:
            approve_all = w.Button(description="Approve all", button_style="success",
                                   layout=look.fit, style=look.button,
                                   _dom_classes=["cheq-approve-all"])
            reject_all = w.Button(description="Reject all", button_style="danger",
                                  layout=look.fit, style=look.button,
                                  _dom_classes=["cheq-reject-all"])

            def approve_each(_button: Any) -> None:
                for card in cards:
                    card.try_approve()

            def reject_each(_button: Any) -> None:
                for card in cards:
                    card.do_reject()

            approve_all.on_click(approve_each)
            reject_all.on_click(reject_each)
            children.append(w.HBox([approve_all, reject_all], layout=look.plain))
            group = [approve_all, reject_all]
        turn = w.VBox(children, layout=look.plain, _dom_classes=["cheq-turn"])
        return cards, turn, countdown, group

    # -- no-wait: show the cards, return, call back when decided --------------------------------
    def begin(
        self,
        requests: Sequence[ApprovalRequest],
        on_done: Callable[[list[Decision]], None],
        *,
        show: Callable[..., Any],
        later: Callable[[float, Callable[[], None]], Callable[[], None]],
    ) -> Callable[[], None]:
        """Show the cards of one turn and return at once (no-wait mode).

        ``on_done(decisions)`` is called once, in request order, from the kernel's event loop
        after the last card is decided or the timeout fires (undecided calls: ``timed_out``).
        ``show(widget_or_bundle, raw=True)`` puts output in the run's area; ``later(seconds,
        callback)`` schedules a callback on the kernel's event loop and returns its cancel.
        Returns a function that cancels the undecided calls (``cancelled``, not approved).
        """
        if not requests:
            return later(0, lambda: on_done([]))
        allowed = [self.allow_list.decide(r) for r in requests]
        self._show_allowed(requests, allowed, show)
        asked = [r for r, d in zip(requests, allowed, strict=True) if d is None]
        if not asked:
            return later(0, lambda: on_done([d for d in allowed if d is not None]))
        cards, turn, countdown, group = self._turn(asked)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        state: dict[str, Any] = {"finished": False, "cancels": []}

        def finish(outcome: str) -> None:
            if state["finished"]:
                return
            state["finished"] = True
            for cancel in state["cancels"]:
                cancel()
            if outcome == "timed out":
                note = f"Nobody decided within {self.timeout:g} seconds."
                for card in cards:
                    self._settle(card, Decision.timed_out(note, by="card"), "card")
            for control in group:
                control.disabled = True
            countdown.value = html.escape(_OUTCOMES[outcome])
            # No static record here: in no-wait mode this is all widget output; the run keeps
            # one static record of every decision for the saved notebook (nowait._record).
            answers = iter([c.decision for c in cards])
            decisions = [d if d is not None else next(answers) for d in allowed]
            on_done([d for d in decisions if d is not None])

        def tick() -> None:
            if state["finished"]:
                return
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if left == 0.0:
                finish("timed out")
                return
            countdown.value = _countdown_html(cards, left)
            state["cancels"].append(later(1.0, tick))

        def settled(card: _Card) -> None:
            if all(c.decision is not None for c in cards):
                # From the loop, not inside this click: "Approve all" and the "rest of this
                # run" tick finish their work first.
                state["cancels"].append(later(0, lambda: finish("decided")))

        def cancel() -> None:
            for card in cards:
                self._settle(card, Decision.cancelled("The run was cancelled.", by="card"), "card")

        for card in cards:
            card.on_settled, card.deadline = settled, deadline
        tick()
        show(turn, raw=True)
        return cancel

    @staticmethod
    def _show_allowed(
        requests: Sequence[ApprovalRequest], allowed: Sequence[Decision | None],
        display: Callable[..., Any] | None = None,
    ) -> None:
        """One line per call approved by an earlier "rest of this run" tick (no card)."""
        if display is None:
            from IPython.display import display as ipython_display

            display = ipython_display
        for request, decision in zip(requests, allowed, strict=True):
            if decision is not None:
                text = f"{request.action}: {decision.describe()}"
                display({"text/html": f"<div class='cheq-allowed'>{html.escape(text)}</div>",
                         "text/plain": text}, raw=True)

    def _close_turn(self) -> None:
        """No more external decisions for this turn; show the ones that arrived."""
        with self._lock:
            self._cards, self._waker = [], None
        self._take_external()

    @staticmethod
    def _show_record(
        cards: Sequence[_Card], display: Callable[..., Any],
        bundle: dict[str, Any] | None = None, handle: Any = None,
    ) -> None:
        """A static HTML record of the decisions, for the notebook saved without widgets.

        It becomes the ``text/html`` fallback of the card's own display (a frontend with the
        widget shows the card, one without shows the record: the decision appears once).
        """
        rows = "".join(c.record_html() for c in cards)
        record = (
            "<div class='cheq-record'><b>Approval record</b>"
            f"<table>{rows}</table></div>"
        )
        text = "\n".join(
            f"{c.request.action}: {c.decision.describe() if c.decision else 'undecided'}"
            for c in cards
        )
        if handle is not None and bundle is not None:
            handle.update({**bundle, "text/html": record, "text/plain": text}, raw=True)
        else:
            display({"text/html": record, "text/plain": text}, raw=True)
