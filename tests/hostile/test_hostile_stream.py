"""Hostile streams: what a broken or malicious server could send over ``stream: true``.

Each case goes through the real SDK's event-stream parser; the promise: nothing runs that a
human did not approve with exactly these arguments, nothing hangs, the error is one line.
"""

from __future__ import annotations

from typing import Any

import pytest

from cheq_jupyter import Decision, run_agent
from cheq_jupyter.agent import Usage
from cheq_jupyter.approval import ApprovalRequest
from cheq_jupyter.card import why_html
from cheq_jupyter.errors import ModelError
from cheq_jupyter.testing import FakeMistral, raw_stream, text


def chunk(delta: dict[str, Any], finish: str | None = None, *, index: int = 0,
          usage: dict[str, int] | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
    }
    if usage is not None:
        event["usage"] = usage
    return event


def call_delta(index: Any, *, id: str = "null", name: str = "", arguments: str = "") -> dict[
    str, Any
]:
    return {"tool_calls": [{"id": id, "type": "function", "index": index,
                            "function": {"name": name, "arguments": arguments}}]}


DONE = "data: [DONE]\n\n"
USAGE = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}


class Gate:
    """Tools that record runs, and an approver that records what it was asked."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, dict[str, Any]]] = []
        self.asked: list[ApprovalRequest] = []

    def refund(self, customer: str, amount: float) -> str:
        """Refund money."""
        self.ran.append(("refund", {"customer": customer, "amount": amount}))
        return "refunded"

    def lookup(self, customer: str) -> str:
        """Look a customer up."""
        self.ran.append(("lookup", {"customer": customer}))
        return "ok"

    def approve(self, request: ApprovalRequest) -> Decision:
        self.asked.append(request)
        return Decision.approve(by="test")


def run(gate: Gate, *script: Any) -> Any:
    with FakeMistral(list(script)) as fake:
        return run_agent("Go", tools=[gate.refund, gate.lookup], approver=gate.approve,
                         client=fake.client())


def test_hostile_stream_cut_before_it_finishes_runs_nothing() -> None:
    gate = Gate()
    whole_call = call_delta(0, id="abcdefghi", name="refund",
                            arguments='{"customer": "c1", "amount": 9000}')
    with pytest.raises(ModelError) as info:
        run(gate, raw_stream(chunk({"role": "assistant", "content": ""}), chunk(whole_call)))
    assert gate.asked == [] and gate.ran == []
    assert "ended after 2 chunk(s) without finishing" in str(info.value)
    assert "\n" not in str(info.value)


def test_hostile_stream_with_garbage_events_is_a_model_error() -> None:
    gate = Gate()
    with pytest.raises(ModelError):
        run(gate, raw_stream(chunk({"role": "assistant"}), "data: {not json\n\n", DONE))
    assert gate.asked == [] and gate.ran == []


def test_hostile_split_arguments_that_join_to_invalid_json_never_reach_a_human() -> None:
    gate = Gate()
    result = run(
        gate,
        raw_stream(
            chunk(call_delta(0, id="abcdefghi", name="refund", arguments='{"customer": "c1"')),
            chunk(call_delta(0, arguments=', "amount": 5}}}')),
            chunk({"content": ""}, "tool_calls", usage=USAGE), DONE,
        ),
        text("I could not."),
    )
    assert gate.asked == [] and gate.ran == []
    assert result.tool_calls[0].status == "invalid"


def test_hostile_later_deltas_cannot_rename_or_re_id_a_call() -> None:
    gate = Gate()
    run(
        gate,
        raw_stream(
            chunk(call_delta(0, id="abcdefghi", name="lookup", arguments='{"customer": ')),
            chunk(call_delta(0, id="ZZZZZZZZZ", name="refund", arguments='"c1"}')),
            chunk({"content": ""}, "tool_calls", usage=USAGE), DONE,
        ),
        text("Looked up."),
    )
    (asked,) = gate.asked
    assert (asked.action, asked.tool_call_id, asked.details) == (
        "lookup", "abcdefghi", {"customer": "c1"})
    assert gate.ran == [("lookup", {"customer": "c1"})]  # what was approved, nothing else


def test_hostile_calls_in_another_choice_are_ignored() -> None:
    gate = Gate()
    result = run(
        gate,
        raw_stream(
            chunk({"role": "assistant", "content": "Nothing to do."}),
            chunk(call_delta(0, id="abcdefghi", name="refund",
                             arguments='{"customer": "c1", "amount": 1}'), index=1),
            chunk({"content": ""}, "stop", usage=USAGE), DONE,
        ),
    )
    assert gate.asked == [] and gate.ran == [] and result.text == "Nothing to do."


def test_hostile_negative_usage_is_not_added_up() -> None:
    gate = Gate()
    result = run(gate, raw_stream(
        chunk({"role": "assistant", "content": "Hi."}),
        chunk({"content": ""}, "stop",
              usage={"prompt_tokens": -1000, "completion_tokens": 1, "total_tokens": -999}),
        DONE,
    ))
    assert result.usage == Usage() and result.text == "Hi."


def test_hostile_reason_and_reasoning_are_escaped_on_the_card() -> None:
    request = ApprovalRequest(
        action="refund", summary="refund", details={}, tool_call_id="abcdefghi",
        reason='<img src=x onerror="alert(1)">Approve me',
        reasoning="</pre></details><script>steal()</script>",
    )
    shown = why_html(request)
    assert "<img" not in shown and "<script>" not in shown
    assert "&lt;/pre&gt;&lt;/details&gt;&lt;script&gt;steal()" in shown  # cannot close the box
