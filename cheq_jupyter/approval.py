"""The approval protocol: typed requests and decisions, and the simplest approvers.

It mirrors the Cheqpoint SDK: a request is ``{action, summary, details}`` and a decision is
``{status, modifiedDetails, decisionNote}`` (see :meth:`ApprovalRequest.to_cheqpoint` and
:meth:`Decision.to_cheqpoint`).  An *approver* is any callable
``(ApprovalRequest) -> Decision``.  An approver that can show several calls together (the
widget card shows every call of one model turn at once) also has
``decide_all(requests) -> list[Decision]``; :func:`decide_all` uses it when present.

Decisions are data, never callbacks: the agent loop runs a tool only for a ``Decision``
whose ``status`` is ``"approved"``, with ``modified_details`` (re-validated) when given.
"""

from __future__ import annotations

import copy
import datetime as _dt
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, runtime_checkable

from ._safe_text import json_text

__all__ = [
    "ApprovalRequest",
    "Approver",
    "BatchApprover",
    "Decision",
    "DecisionStatus",
    "Policy",
    "Rule",
    "approve_all",
    "decide_all",
    "reject_all",
]

DecisionStatus = Literal["approved", "rejected", "timed_out", "cancelled"]
Rule = Literal["ask", "approve", "deny"]
_RULES: tuple[str, ...] = ("ask", "approve", "deny")
_STATUSES: tuple[str, ...] = ("approved", "rejected", "timed_out", "cancelled")


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


@dataclass(frozen=True)
class ApprovalRequest:
    """One tool call the model asked for, waiting for a decision.

    ``details`` are every argument the tool runs with if approved as asked: the model's,
    already validated against ``schema`` (the JSON schema of the tool's parameters), with the
    tool's defaults filled in for those it left out (named in ``defaulted``).  Approvers match
    their decisions to requests by position (``decide_all``) or by the request object itself,
    never by ``tool_call_id``, which comes from the model and may repeat.
    """

    action: str
    summary: str
    details: dict[str, Any]
    tool_call_id: str
    schema: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    run_id: str = ""
    step: int = 0
    #: The tool's own check of (edited) arguments: problems, or ``[]`` when valid.  It is the
    #: same validation the call goes through, so a card or console never accepts an edit that
    #: the call would then refuse.  ``None`` for requests built by hand.
    check: Callable[[Any], list[str]] | None = field(default=None, compare=False, repr=False)
    #: Names of the arguments the model left out and the tool's defaults filled in.
    defaulted: tuple[str, ...] = ()
    #: Where the tool comes from (e.g. ``"MCP server git"``); empty for a Python tool.
    origin: str = ""
    #: What the tool's provider claims about it (MCP annotations), shown as claims only.
    annotations: Mapping[str, Any] = field(default_factory=dict)
    #: What the model wrote, and reasoned, in the turn in which it asked for this call.
    reason: str = ""
    reasoning: str = ""

    def to_cheqpoint(self) -> dict[str, Any]:
        """The request as Cheqpoint's API takes it: ``{action, summary, details}``."""
        return {"action": self.action, "summary": self.summary, "details": dict(self.details)}

    def arguments_json(self) -> str:
        """The arguments as indented JSON, for display (unsafe characters as ``\\u`` escapes)."""
        return json_text(json.dumps(self.details, indent=2, ensure_ascii=False, sort_keys=False))


@dataclass(frozen=True)
class Decision:
    """A decision on one :class:`ApprovalRequest`.

    ``status`` is ``approved``, ``rejected`` (by a reviewer or a policy), ``timed_out`` (nobody
    decided in time) or ``cancelled`` (interrupted, or the approver failed).  Only
    ``approved`` lets the tool run; ``modified_details`` are the edited arguments, if any.
    """

    status: DecisionStatus
    modified_details: dict[str, Any] | None = None
    decision_note: str | None = None
    decided_by: str = ""
    decided_at: _dt.datetime = field(default_factory=_now)

    @property
    def approved(self) -> bool:
        return self.status == "approved"

    @classmethod
    def approve(
        cls,
        *,
        by: str,
        modified_details: dict[str, Any] | None = None,
        note: str | None = None,
    ) -> Decision:
        return cls("approved", modified_details, note or None, by)

    @classmethod
    def reject(cls, note: str | None = None, *, by: str) -> Decision:
        return cls("rejected", None, note or None, by)

    @classmethod
    def timed_out(cls, note: str | None = None, *, by: str) -> Decision:
        return cls("timed_out", None, note or None, by)

    @classmethod
    def cancelled(cls, note: str | None = None, *, by: str) -> Decision:
        return cls("cancelled", None, note or None, by)

    def effective_details(self, request: ApprovalRequest) -> dict[str, Any]:
        """The arguments the tool runs with: the edited ones when given, else the original."""
        return self.modified_details if self.modified_details is not None else request.details

    def with_note(self, note: str) -> Decision:
        return replace(self, decision_note=note)

    def to_cheqpoint(self) -> dict[str, Any]:
        """The decision as Cheqpoint reports it: ``{status, modifiedDetails, decisionNote}``."""
        return {
            "status": self.status,
            "modifiedDetails": self.modified_details,
            "decisionNote": self.decision_note,
        }

    def describe(self) -> str:
        """A short human sentence: ``approved by card at 12:01:02 UTC``."""
        words = {
            "approved": "edited and approved" if self.modified_details is not None else "approved",
            "rejected": "rejected",
            "timed_out": "timed out (not approved)",
            "cancelled": "cancelled (not approved)",
        }[self.status]
        when = self.decided_at.strftime("%H:%M:%S %Z").strip()
        text = f"{words} by {self.decided_by or 'unknown'} at {when}"
        if self.decision_note:
            text += f": {self.decision_note}"
        return text


@runtime_checkable
class Approver(Protocol):
    """Anything that turns an :class:`ApprovalRequest` into a :class:`Decision`."""

    def __call__(self, request: ApprovalRequest, /) -> Decision: ...


@runtime_checkable
class BatchApprover(Approver, Protocol):
    """An approver that decides every call of one model turn together."""

    def decide_all(self, requests: Sequence[ApprovalRequest], /) -> list[Decision]: ...


def decide_all(approver: Approver, requests: Sequence[ApprovalRequest]) -> list[Decision]:
    """Decide ``requests`` (one model turn), together when the approver can, in order.

    Fails closed: an approver that returns something other than one ``Decision`` per request
    raises :class:`~cheq_jupyter.errors.ApprovalError` (the loop then runs nothing of the
    turn), and a ``Decision`` holding anything but its documented types (a status outside the
    four, ``modified_details`` that are not a JSON object with string keys, a ``decided_at``
    that is not a datetime...) becomes ``cancelled`` with a note saying what was wrong.  What
    is returned are fresh ``Decision`` objects, with their own copy of ``modified_details``.
    """
    if not requests:
        return []
    batch = getattr(approver, "decide_all", None)
    answer = batch(requests) if callable(batch) else [approver(r) for r in requests]
    return checked_decisions(approver, answer, len(requests))


def checked_decisions(approver: Any, answer: Any, count: int) -> list[Decision]:
    """``answer`` (what ``approver`` returned for ``count`` requests) checked as
    :func:`decide_all` describes: :class:`~cheq_jupyter.errors.ApprovalError` unless it is
    ``count`` ``Decision`` objects, and each unusable one ``cancelled``."""
    from .errors import ApprovalError

    try:
        # At most one too many: an endless iterator must not hang the cell.
        decisions = (None if isinstance(answer, (str, bytes, Mapping))
                     else list(itertools.islice(answer, count + 1)))
    except TypeError:
        decisions = None
    if (decisions is None or len(decisions) != count
            or not all(isinstance(d, Decision) for d in decisions)):
        raise ApprovalError(
            f"The approver {_name(approver)} must return one Decision per request; "
            "return cheq_jupyter.Decision objects."
        )
    return [_checked(d, approver) for d in decisions]


def _name(approver: Any) -> str:
    try:
        return str(getattr(approver, "name", None) or getattr(approver, "__name__", None)
                   or type(approver).__name__)[:80]
    except Exception:
        return type(approver).__name__


def _checked(decision: Decision, approver: Any) -> Decision:
    """A plain copy of ``decision`` when every field has its documented type, else
    ``cancelled`` with a note naming the problem (fail closed)."""
    from ._strictjson import json_copy

    problem = ""
    try:
        status, note = decision.status, decision.decision_note
        by, at, modified = decision.decided_by, decision.decided_at, decision.modified_details
        if type(status) is not str or status not in _STATUSES:
            problem = f"its status {str(status)[:40]!r} is not one of {', '.join(_STATUSES)}"
        elif note is not None and not isinstance(note, str):
            problem = f"its note is a {type(note).__name__}, not text"
        elif not isinstance(by, str):
            problem = f"its decided_by is a {type(by).__name__}, not text"
        elif not isinstance(at, _dt.datetime):
            problem = f"its decided_at is a {type(at).__name__}, not a datetime"
        elif modified is not None and not isinstance(modified, dict):
            problem = (f"its modified_details are a {type(modified).__name__}, not a JSON "
                       "object of arguments")
        elif status == "approved" and modified is not None:
            try:
                modified = json_copy(modified)
            except ValueError as exc:
                problem = f"its modified_details are not plain JSON data ({exc})"
    except Exception as exc:  # a hostile object: reading a field raised
        problem = f"reading it failed ({type(exc).__name__})"
    if problem:
        return Decision.cancelled(
            f"The approver {_name(approver)} returned an unusable decision ({problem}); "
            "not approved.",
            by=_name(approver),
        )
    return Decision(status, modified if status == "approved" else None, note, by, at)


def approve_all(request: ApprovalRequest) -> Decision:
    """Approve every call as asked (for tests and trusted tools only)."""
    return Decision.approve(by="approve_all")


def reject_all(request: ApprovalRequest) -> Decision:
    """Reject every call; the model is told no tool may run."""
    return Decision.reject("Rejected by the reject_all approver.", by="reject_all")


_CLAIMS = {
    "readOnlyHint": ("read-only", "may change things"),
    "destructiveHint": ("destructive", "not destructive"),
    "idempotentHint": ("idempotent", "not idempotent"),
    "openWorldHint": ("reaches outside systems", "closed world"),
}


def describe_claims(annotations: Mapping[str, Any]) -> list[str]:
    """A request's annotations in words (``["read-only", "not destructive"]``), for reviewers.

    They are what the tool's provider claims (MCP tool hints), shown as claims only.
    """
    return [_CLAIMS[key][0 if value else 1] for key, value in annotations.items()
            if key in _CLAIMS and isinstance(value, bool)]


RuleSpec = Rule | Callable[[dict[str, Any]], Rule]


@dataclass
class Policy:
    """Per-tool rules: ``approve`` or ``deny`` without asking, or ``ask`` another approver.

    ``rules`` maps a tool name to a rule or to a predicate on the arguments that returns one,
    e.g. ``{"refund": lambda a: "ask" if a["amount"] > 100 else "approve"}``; the predicate
    gets every argument the tool would run with (defaults filled in), and one that raises or
    answers anything else counts as ``ask``.  Tools without a
    rule get ``default``.  ``ask`` is the approver for the ``ask`` calls (the card, Cheqpoint,
    the console...); with none, those calls are rejected with a note that no reviewer was
    present (the headless behaviour).

    ``approve_read_only=True`` also approves, without asking, calls to tools (with no rule of
    their own) whose MCP server claims they are read-only (``readOnlyHint``) and not
    destructive; the decision note says it rests on the server's claim.  Off by default:
    annotations are hints from the server, not guarantees.
    """

    rules: Mapping[str, RuleSpec] = field(default_factory=dict)
    default: Rule = "ask"
    ask: Approver | None = None
    name: str = "policy"
    approve_read_only: bool = False

    def __post_init__(self) -> None:
        for tool, rule in self.rules.items():
            if not callable(rule) and rule not in _RULES:
                raise ValueError(
                    f"Policy rule for {tool!r} is {rule!r}; use 'ask', 'approve', 'deny' "
                    "or a function of the arguments returning one of them."
                )
        if self.default not in _RULES:
            raise ValueError(f"Policy default is {self.default!r}; use 'ask', 'approve' or 'deny'.")

    def rule_for(self, request: ApprovalRequest) -> Rule:
        spec = self.rules.get(request.action, self.default)
        try:
            # A copy of the full arguments (defaults filled in): a predicate cannot change them.
            rule = spec(copy.deepcopy(dict(request.details))) if callable(spec) else spec
        except Exception:
            return "ask"  # a predicate that fails must not let anything through either
        if not isinstance(rule, str) or rule not in _RULES:
            # A predicate that answers nonsense must not let anything through.
            return "ask"
        return rule

    def _decide_fixed(self, request: ApprovalRequest, rule: Rule) -> Decision | None:
        if rule == "approve":
            return Decision.approve(by=self.name, note=f"Approved by policy for {request.action}.")
        if rule == "deny":
            return Decision.reject(f"Denied by policy for {request.action}.", by=self.name)
        if self.ask is None:
            return Decision.reject(
                f"No reviewer was present to approve {request.action}; "
                "it needs a human decision.",
                by=self.name,
            )
        return None

    def _read_only_claim(self, request: ApprovalRequest) -> Decision | None:
        """Approve on the server's read-only claim, when opted in and no rule says otherwise."""
        claims = request.annotations
        if not (self.approve_read_only and request.action not in self.rules
                and claims.get("readOnlyHint") is True
                and claims.get("destructiveHint") is not True):
            return None
        source = request.origin or "the tool's provider"
        return Decision.approve(
            by=self.name,
            note=f"Approved without asking on the claim of {source} that {request.action} is "
                 "read-only and not destructive (approve_read_only).",
        )

    def __call__(self, request: ApprovalRequest) -> Decision:
        return self.decide_all([request])[0]

    def decide_all(self, requests: Sequence[ApprovalRequest]) -> list[Decision]:
        fixed = [self._read_only_claim(r) or self._decide_fixed(r, self.rule_for(r))
                 for r in requests]
        asked = [r for r, d in zip(requests, fixed, strict=True) if d is None]
        answers = iter(decide_all(self.ask, asked) if asked and self.ask is not None else [])
        return [d if d is not None else next(answers) for d in fixed]
