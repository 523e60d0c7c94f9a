"""Hostile approvers: whatever an approver returns is checked before it counts, and decisions
are bound to the request they were made for (never looked up by the model's tool_call_id).

Every run goes through the real mistralai SDK against the loopback FakeMistral and records to
a real audit log: the run must finish, run nothing that was not approved for exactly its
arguments, and never raise a raw TypeError/KeyError/AttributeError from an approver's answer.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cheq_jupyter import Decision, Policy, run_agent
from cheq_jupyter.agent import _not_approved_text
from cheq_jupyter.approval import ApprovalRequest, decide_all
from cheq_jupyter.approvers.cheqpoint import CheqpointApprover
from cheq_jupyter.approvers.headless import choose_approver
from cheq_jupyter.audit import AuditLog
from cheq_jupyter.testing import FakeCheqpoint, FakeMistral, call, text, tool_call, tool_calls

REFUND = tool_call("refund", {"customer": "c1", "amount": 5})


class Shop:
    def __init__(self) -> None:
        self.ran: list[dict[str, Any]] = []

    def refund(self, customer: str, amount: int) -> str:
        """Refund money."""
        self.ran.append({"customer": customer, "amount": amount})
        return "refunded"


def deep(levels: int) -> dict[str, Any]:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return {"customer": "c1", "amount": 5, "x": value}


class Approved(Decision):
    """A Decision subclass that claims to approve whatever its status says."""

    @property
    def approved(self) -> bool:
        return True


class Exploding(Decision):
    @property  # type: ignore[misc]
    def status(self) -> Any:
        raise KeyError("status")


def exploding() -> Decision:
    """A Decision whose status raises when read (built without the dataclass __init__)."""
    made = object.__new__(Exploding)
    for name, value in (("modified_details", None), ("decision_note", None),
                        ("decided_by", "t"), ("decided_at", dt.datetime.now(dt.timezone.utc))):
        object.__setattr__(made, name, value)
    return made


NOW = dt.datetime.now(dt.timezone.utc)

#: Decisions with a field of the wrong type: each must end ``cancelled`` with a note.
BAD_DECISIONS: dict[str, Any] = {
    "status 'yes'": lambda: Decision("yes", None, None, "t"),  # type: ignore[arg-type]
    "status 'APPROVED'": lambda: Decision("APPROVED", None, None, "t"),  # type: ignore[arg-type]
    "status None": lambda: Decision(None, None, None, "t"),  # type: ignore[arg-type]
    "status True": lambda: Decision(True, None, None, "t"),  # type: ignore[arg-type]
    "status str subclass": lambda: Decision(type("S", (str,), {})("approved"), None, None, "t"),
    "modified list of pairs": lambda: Decision(
        "approved", [("customer", "c1"), ("amount", 5)], None, "t"),  # type: ignore[arg-type]
    "modified a string": lambda: Decision("approved", '{"amount": 5}', None, "t"),  # type: ignore[arg-type]
    "modified int keys": lambda: Decision("approved", {1: "c1"}, None, "t"),  # type: ignore[dict-item]
    "modified NaN": lambda: Decision("approved", {"customer": "c1", "amount": float("nan")},
                                     None, "t"),
    "modified infinity": lambda: Decision("approved", {"customer": "c1", "amount": float("inf")},
                                          None, "t"),
    "modified a set": lambda: Decision("approved", {"customer": "c1", "amount": {5}}, None, "t"),
    "modified an object": lambda: Decision("approved", {"customer": object(), "amount": 5},
                                           None, "t"),
    "modified 10,000 deep": lambda: Decision("approved", deep(10_000), None, "t"),
    "decided_at a string": lambda: Decision("approved", None, None, "t", "now"),  # type: ignore[arg-type]
    "decided_at None": lambda: Decision("approved", None, None, "t", None),  # type: ignore[arg-type]
    "decided_at a date": lambda: Decision("approved", None, None, "t", dt.date.today()),  # type: ignore[arg-type]
    "note a number": lambda: Decision("approved", None, 123, "t"),  # type: ignore[arg-type]
    "decided_by None": lambda: Decision("approved", None, None, None),  # type: ignore[arg-type]
    "status property raises": exploding,
}


@pytest.mark.parametrize("make", BAD_DECISIONS.values(), ids=BAD_DECISIONS.keys())
def test_an_unusable_decision_is_cancelled_with_a_note_and_nothing_runs(
    make: Any, tmp_path: Path
) -> None:
    shop = Shop()
    with FakeMistral([REFUND, text("Not refunded.")]) as fake:
        result = run_agent("go", tools=[shop.refund], approver=lambda r: make(), client=fake.client(),
                           recorder=AuditLog(tmp_path / "a.jsonl"))
    assert shop.ran == []
    decision = result.tool_calls[0].decision
    assert decision is not None and type(decision) is Decision
    assert decision.status == "cancelled"
    assert "unusable decision" in (decision.decision_note or "")
    (line,) = (tmp_path / "a.jsonl").read_text().splitlines()
    assert json.loads(line)["status"] == "cancelled"
    assert result.text == "Not refunded."


#: Answers that are not one Decision per request: the whole turn is cancelled.
BAD_ANSWERS: dict[str, Any] = {
    "None": lambda requests: None,
    "a string": lambda requests: "approved",
    "a dict": lambda requests: {"status": "approved"},
    "True": lambda requests: True,
    "a number": lambda requests: 1,
    "too few": lambda requests: [],
    "too many": lambda requests: [Decision.approve(by="t")] * (len(requests) + 1),
    "endless": lambda requests: itertools.repeat(Decision.approve(by="t")),
    "a dict of decisions": lambda requests: {0: Decision.approve(by="t")},
    "a Decision, not a list": lambda requests: Decision.approve(by="t"),
    "a dict in the list": lambda requests: [{"status": "approved"} for _ in requests],
    "raises KeyError": lambda requests: {}["status"],
    "raises AttributeError": lambda requests: None.status,  # type: ignore[attr-defined]
    "raises TypeError": lambda requests: len(5),  # type: ignore[arg-type]
    "raises RecursionError": lambda requests: (_ for _ in ()).throw(RecursionError("deep")),
}


@pytest.mark.parametrize("answer", BAD_ANSWERS.values(), ids=BAD_ANSWERS.keys())
def test_a_batch_approver_answering_nonsense_approves_nothing(
    answer: Any, tmp_path: Path
) -> None:
    shop = Shop()

    class Batch:
        def __call__(self, request: ApprovalRequest) -> Decision:
            raise AssertionError("decided together")

        def decide_all(self, requests: list[ApprovalRequest]) -> Any:
            return answer(requests)

    script = [tool_calls(call("refund", {"customer": "c1", "amount": 5}),
                         call("refund", {"customer": "c2", "amount": 6})), text("None refunded.")]
    with FakeMistral(script) as fake:
        result = run_agent("go", tools=[shop.refund], approver=Batch(), client=fake.client(),
                           recorder=AuditLog(tmp_path / "a.jsonl"))
    assert shop.ran == []
    assert [c.decision.status for c in result.tool_calls if c.decision] == ["cancelled"] * 2
    assert [status for status, _ in fake.responses] == [200, 200]
    records = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["cancelled", "cancelled"]


def test_a_decision_subclass_that_claims_approved_is_read_by_its_status() -> None:
    shop = Shop()
    with FakeMistral([REFUND, text("Not refunded.")]) as fake:
        result = run_agent("go", tools=[shop.refund], client=fake.client(),
                           approver=lambda r: Approved("rejected", None, "no", "t"))
    assert shop.ran == []
    decision = result.tool_calls[0].decision
    assert decision is not None and type(decision) is Decision
    assert decision.status == "rejected" and not decision.approved


def test_decide_all_returns_fresh_decisions_with_their_own_copy_of_the_edit() -> None:
    edit = {"customer": "c1", "amount": 5, "tags": ["a"]}
    given = Decision.approve(by="t", modified_details=edit)
    request = ApprovalRequest("refund", "r", {"customer": "c1", "amount": 9}, "abcABC123")
    (checked,) = decide_all(lambda r: given, [request])
    edit["amount"] = 1_000_000  # the approver changes its dict after deciding
    edit["tags"].append("b")
    assert checked.modified_details == {"customer": "c1", "amount": 5, "tags": ["a"]}
    assert checked is not given and type(checked) is Decision


def test_an_approver_that_changes_the_request_it_was_shown_cannot_change_what_runs(
    tmp_path: Path,
) -> None:
    shop = Shop()

    def sneaky(request: ApprovalRequest) -> Decision:
        request.details["amount"] = 1_000_000  # not an edit: a change behind the reviewer
        return Decision.approve(by="t")

    with FakeMistral([REFUND, text("ok")]) as fake:
        run_agent("go", tools=[shop.refund], approver=sneaky, client=fake.client(),
                  recorder=AuditLog(tmp_path / "a.jsonl"))
    assert shop.ran == [{"customer": "c1", "amount": 5}]
    (line,) = (tmp_path / "a.jsonl").read_text().splitlines()
    assert json.loads(line)["effective_arguments"] == {"customer": "c1", "amount": 5}


def test_a_policy_predicate_that_raises_or_mutates_lets_nothing_through() -> None:
    shop = Shop()

    def predicate(arguments: dict[str, Any]) -> Any:
        arguments["amount"] = 1_000_000
        raise KeyError("oops")

    with FakeMistral([REFUND, text("ok")]) as fake:
        result = run_agent("go", tools=[shop.refund], client=fake.client(),
                           approver=Policy({"refund": predicate}))
    assert shop.ran == []  # "ask" with nobody to ask: rejected
    decision = result.tool_calls[0].decision
    assert decision is not None and decision.status == "rejected"


# -- 10. headless wording ---------------------------------------------------------------------


@pytest.mark.parametrize("policy", [None, Policy({"refund": "ask"}), Policy(default="ask"),
                                    Policy({"refund": lambda a: "ask"}, name="rules")])
def test_headless_runs_never_tell_the_model_a_reviewer_rejected_the_call(
    policy: Policy | None,
) -> None:
    shop = Shop()
    approver = choose_approver(policy=policy, environ={}, surroundings=("no-terminal", "test"))
    assert approver.headless
    with FakeMistral([REFUND, text("It needs a human.")]) as fake:
        result = run_agent("go", tools=[shop.refund], approver=approver.approver,
                           client=fake.client())
    assert shop.ran == []
    answer = next(m for m in fake.requests[1]["messages"] if m["role"] == "tool")["content"]
    assert "reviewer rejected" not in answer and "Note from the reviewer" not in answer
    assert "no reviewer looked at it" in answer and "No reviewer was present" in answer
    assert "reviewer rejected" not in result.tool_calls[0].result


def test_a_policy_deny_is_not_a_reviewers_rejection_but_a_card_rejection_is() -> None:
    denied = Decision.reject("Denied by policy for refund.", by="policy")
    replayed = Decision.reject("Replayed: rejected by card at 12:00.", by="replay")
    by_card = Decision.reject("Wrong customer", by="alice (card)")
    assert "reviewer rejected" not in _not_approved_text(denied)
    assert "reviewer rejected" not in _not_approved_text(replayed)
    assert _not_approved_text(by_card).startswith("Not approved: the reviewer rejected this call")
    assert "Note from the reviewer: Wrong customer" in _not_approved_text(by_card)


# -- 1. binding: Cheqpoint and race mode ------------------------------------------------------


@pytest.fixture
def inbox() -> Iterator[FakeCheqpoint]:
    with FakeCheqpoint(auto={"lookup": ("APPROVED", None, "harmless")}) as server:
        yield server


@pytest.mark.parametrize("ids", [("dupdup123", "dupdup123"), ("", ""), ("x", "x")])
def test_cheqpoint_binds_each_answer_to_its_own_request_when_ids_repeat(
    inbox: FakeCheqpoint, ids: tuple[str, str]
) -> None:
    delete = ApprovalRequest("delete_account", "Delete c1", {"customer": "c1"}, ids[0])
    lookup = ApprovalRequest("lookup", "Look c1 up", {"customer": "c1"}, ids[1])
    answered: list[tuple[ApprovalRequest, str]] = []
    approver = CheqpointApprover(api_key=inbox.api_key, base_url=inbox.url, timeout=0.5,
                                 poll_interval=0.02, announce=False)
    decisions = approver.decide_all(
        [delete, lookup], on_decision=lambda r, d: answered.append((r, d.status)))
    assert [d.status for d in decisions] == ["timed_out", "approved"]
    assert [(r.action, s) for r, s in answered] == [("lookup", "approved")]
    assert answered[0][0] is lookup
    assert [(r.action, rid) for r, rid in approver.filed] == [
        ("delete_account", inbox.approvals[0].id), ("lookup", inbox.approvals[1].id)]


@dataclass
class _FakeCard:
    """Stands in for the card in race mode: records which request each decision reached."""

    decided: list[tuple[ApprovalRequest, Decision]]
    event: threading.Event

    def decide_all(self, requests: list[ApprovalRequest]) -> list[Decision]:
        self.event.wait(5)
        got = {id(r): d for r, d in self.decided}
        return [got.get(id(r), Decision.reject("the person rejected it", by="card"))
                for r in requests]

    def decide_externally(self, request: ApprovalRequest, decision: Decision, *,
                          source: str = "", wait: float = 0.0) -> bool:
        self.decided.append((request, decision))
        self.event.set()
        return True


@pytest.mark.parametrize("ids", [("dupdup123", "dupdup123"), ("", "")])
def test_race_forwards_a_remote_answer_to_the_card_of_that_very_request(
    inbox: FakeCheqpoint, ids: tuple[str, str]
) -> None:
    from cheq_jupyter.approvers.race import RaceApprover

    delete = ApprovalRequest("delete_account", "Delete c1", {"customer": "c1"}, ids[0])
    lookup = ApprovalRequest("lookup", "Look c1 up", {"customer": "c1"}, ids[1])
    card = _FakeCard([], threading.Event())
    remote = CheqpointApprover(api_key=inbox.api_key, base_url=inbox.url, timeout=5,
                               poll_interval=0.02, announce=False)
    decisions = RaceApprover(remote, card=card).decide_all([delete, lookup])
    assert [(r.action, d.status) for r, d in card.decided] == [("lookup", "approved")]
    assert card.decided[0][0] is lookup
    assert [d.status for d in decisions] == ["rejected", "approved"]
