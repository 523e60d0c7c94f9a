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

import datetime as _dt
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, runtime_checkable

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


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


@dataclass(frozen=True)
class ApprovalRequest:
    """One tool call the model asked for, waiting for a decision.

    ``details`` are the model's arguments, already validated against ``schema`` (the JSON
    schema of the tool's parameters).
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
        """The arguments as indented JSON, for display."""
        return json.dumps(self.details, indent=2, ensure_ascii=False, sort_keys=False)


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

    Fails closed: an approver that returns something other than a ``Decision`` or the wrong
    number of decisions raises :class:`~cheq_jupyter.errors.ApprovalError`.
    """
    from .errors import ApprovalError

    if not requests:
        return []
    batch = getattr(approver, "decide_all", None)
    decisions = list(batch(requests)) if callable(batch) else [approver(r) for r in requests]
    if len(decisions) != len(requests) or not all(isinstance(d, Decision) for d in decisions):
        raise ApprovalError(
            f"The approver {approver!r} must return one Decision per request; "
            "return cheq_jupyter.Decision objects."
        )
    return decisions


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
    e.g. ``{"refund": lambda a: "ask" if a["amount"] > 100 else "approve"}``.  Tools without a
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
        rule = spec(dict(request.details)) if callable(spec) else spec
        if rule not in _RULES:
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
