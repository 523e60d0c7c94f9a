"""The loop over Mistral's streaming endpoint, through the real SDK against the loopback fake.

Runs on mistralai 3.x and 1.x: the text arrives in pieces, tool calls are assembled from
deltas (split by ``index`` too) and decided together when the turn has ended, a reasoning
model's thinking goes back in the history, usage adds up, refusals and a proxy that does not
stream behave like the plain endpoint, and an interrupt leaves a conversation to continue.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cheq_jupyter import Decision, approve_all, run_agent
from cheq_jupyter._sdk import mistral_class
from cheq_jupyter._stream import message_thinking
from cheq_jupyter.agent import AgentEvents, AgentResult, Usage, arun_agent
from cheq_jupyter.approval import ApprovalRequest
from cheq_jupyter.errors import ConfigurationError, ModelError
from cheq_jupyter.testing import FakeMistral, call, text, tool_call, tool_calls

try:
    from mistralai.client import Mistral as _Mistral3  # noqa: F401

    SDK_MAJOR = 3
except ImportError:
    SDK_MAJOR = 1


class Ledger:
    def __init__(self) -> None:
        self.ran: list[tuple[str, dict[str, Any]]] = []

    def refund(self, customer: str, amount: float) -> str:
        """Refund money to a customer."""
        self.ran.append(("refund", {"customer": customer, "amount": amount}))
        return f"refunded {amount} to {customer}"

    def lookup(self, customer: str) -> str:
        """Look a customer up."""
        self.ran.append(("lookup", {"customer": customer}))
        return f"{customer}: ok"


class Seen(AgentEvents):
    """Remembers what the loop told the display."""

    def __init__(self) -> None:
        self.deltas: list[tuple[str, str]] = []
        self.usage: list[tuple[int, Usage, Usage]] = []
        self.partial: AgentResult[Any] | None = None

    def model_delta(self, kind: Any, text: str) -> None:
        self.deltas.append((kind, text))

    def model_usage(self, step: int, usage: Usage, total: Usage) -> None:
        self.usage.append((step, usage, total))

    def interrupted(self, result: AgentResult[Any]) -> None:
        self.partial = result


class Batch:
    """A batch approver that approves everything and remembers each turn it was asked."""

    def __init__(self) -> None:
        self.turns: list[list[ApprovalRequest]] = []

    def __call__(self, request: ApprovalRequest) -> Decision:
        return self.decide_all([request])[0]

    def decide_all(self, requests: list[ApprovalRequest]) -> list[Decision]:
        self.turns.append(list(requests))
        return [Decision.approve(by="test") for _ in requests]


ANSWER = "The refund of 20 euros to c1 went through, and nothing else changed."


def test_the_answer_streams_in_pieces_and_ends_exact() -> None:
    seen = Seen()
    with FakeMistral([text(ANSWER)]) as fake:
        result = run_agent("Refund c1", approver=approve_all, client=fake.client(), events=seen)
    assert fake.requests[0]["stream"] is True
    pieces = [t for kind, t in seen.deltas if kind == "text"]
    assert len(pieces) > 5 and "".join(pieces) == ANSWER == result.text
    assert result.messages[-1] == {"role": "assistant", "content": ANSWER}


@pytest.mark.parametrize("split", [1, 4])
def test_tool_calls_from_deltas_are_decided_together_then_run(split: int) -> None:
    ledger, batch = Ledger(), Batch()
    script = [
        tool_calls(call("refund", {"customer": "c1", "amount": 20}),
                   call("lookup", {"customer": "c2"}), content="Refunding c1, checking c2."),
        text("Done."),
    ]
    with FakeMistral(script, split_arguments=split) as fake:
        result = run_agent("Go", tools=[ledger.refund, ledger.lookup], approver=batch,
                           client=fake.client())
    (turn,) = batch.turns  # both calls of the turn, in one decision, in the model's order
    assert [(r.action, r.details) for r in turn] == [
        ("refund", {"customer": "c1", "amount": 20}), ("lookup", {"customer": "c2"})]
    assert ledger.ran == [("refund", {"customer": "c1", "amount": 20}),
                          ("lookup", {"customer": "c2"})]
    assert [r.reason for r in turn] == ["Refunding c1, checking c2."] * 2
    sent = fake.requests[1]["messages"]
    assert [c["id"] for c in sent[1]["tool_calls"]] == [r.tool_call_id for r in turn]
    assert result.text == "Done."


def test_usage_is_summed_over_every_request_and_kept_per_request() -> None:
    seen = Seen()
    script = [tool_call("lookup", {"customer": "c1"}), tool_call("lookup", {"customer": "c2"}),
              text("Both are fine.")]
    with FakeMistral(script) as fake:
        result = run_agent("Check", tools=[Ledger().lookup], approver=approve_all,
                           client=fake.client(), events=seen)
        expected = fake.usage_totals()
    assert expected["total_tokens"] > 0
    assert result.usage == Usage(**expected)
    assert len(result.steps_usage) == 3 and sum(result.steps_usage, Usage()) == result.usage
    assert [step for step, _, _ in seen.usage] == [1, 2, 3]
    assert seen.usage[-1][2] == result.usage  # the running total the status line shows


def test_thinking_goes_back_in_the_history_with_its_signature() -> None:
    seen, batch = Seen(), Batch()
    script = [
        tool_call("lookup", {"customer": "c1"}, thinking="The user wants c1; look it up first.",
                  signature="sig_abc123"),
        text("c1 is fine.", thinking="It answered ok.", signature="sig_def456"),
        text("Still fine."),
    ]
    with FakeMistral(script) as fake:
        client = fake.client()
        first = run_agent("Check c1", tools=[Ledger().lookup], approver=batch, client=client,
                          events=seen, model="magistral-medium-latest")
        run_agent("And now?", tools=[Ledger().lookup], approver=batch, client=client,
                  history=first.messages, model="magistral-medium-latest")
    assert "".join(t for k, t in seen.deltas if k == "thinking") == (
        "The user wants c1; look it up first.It answered ok.")
    assert batch.turns[0][0].reasoning == "The user wants c1; look it up first."
    # The next request carries the assistant turn's thinking chunk, unchanged.
    assistant = [m for m in fake.requests[1]["messages"] if m["role"] == "assistant"]
    thinking = [c for c in assistant[0]["content"] if c["type"] == "thinking"]
    assert thinking[0]["thinking"] == [
        {"type": "text", "text": "The user wants c1; look it up first."}]
    if SDK_MAJOR >= 2:  # mistralai 1.x's ThinkChunk has no signature field: its model drops it
        assert thinking[0]["signature"] == "sig_abc123"
    later = [m for m in fake.requests[2]["messages"] if m["role"] == "assistant"]
    assert message_thinking(later[-1]) == "It answered ok."
    assert first.text == "c1 is fine."


def test_reasoning_effort_is_passed_through_or_refused_with_the_servers_message() -> None:
    with FakeMistral([text("ok")]) as fake:
        if SDK_MAJOR < 2:
            with pytest.raises(ConfigurationError, match=r"mistralai 2\.0 or later"):
                run_agent("Hi", approver=approve_all, client=fake.client(),
                          reasoning_effort="high")
            return
        run_agent("Hi", approver=approve_all, client=fake.client(),
                  model="magistral-small-latest", reasoning_effort="high")
        assert fake.requests[0]["reasoning_effort"] == "high"
        with pytest.raises(ModelError) as info:
            run_agent("Hi", approver=approve_all, client=fake.client(),
                      model="mistral-small-latest", reasoning_effort="low")
    message = str(info.value)
    assert "\n" not in message and "does not support reasoning_effort" in message
    assert info.value.status_code == 400


def test_a_proxy_that_answers_stream_requests_with_plain_json_still_works() -> None:
    ledger, seen = Ledger(), Seen()
    script = [tool_call("refund", {"customer": "c1", "amount": 5}), text(ANSWER)]
    with FakeMistral(script, streaming=False) as fake:
        result = run_agent("Refund", tools=[ledger.refund], approver=approve_all,
                           client=fake.client(), events=seen)
        expected = fake.usage_totals()
    assert all(r["stream"] is True for r in fake.requests)
    assert ledger.ran == [("refund", {"customer": "c1", "amount": 5})]
    assert result.text == ANSWER and ("text", ANSWER) in seen.deltas
    assert result.usage == Usage(**expected)


def test_stream_false_sends_plain_requests() -> None:
    with FakeMistral([text(ANSWER, thinking="hm")]) as fake:
        result = run_agent("Hi", approver=approve_all, client=fake.client(), stream=False)
    assert not fake.requests[0].get("stream")
    assert result.text == ANSWER and message_thinking(result.messages[-1]) == "hm"


@pytest.mark.parametrize("stream", [True, False])
def test_refusals_are_the_same_as_without_streaming(stream: bool) -> None:
    bad_history = [{"role": "user", "content": "a"},
                   {"role": "tool", "tool_call_id": "abcdefghi", "content": "x"}]
    with FakeMistral([text("never")]) as fake:
        with pytest.raises(ModelError) as info:
            run_agent("Hi", approver=approve_all, client=fake.client(), history=bad_history,
                      stream=stream)
        with pytest.raises(ModelError) as unauthorized:
            run_agent("Hi", approver=approve_all, stream=stream,
                      client=mistral_class()(api_key="wrong", server_url=fake.url))
    assert info.value.status_code == 400
    assert "Unexpected role 'tool' after role 'user'" in str(info.value)
    assert unauthorized.value.status_code == 401
    assert fake.remaining == 1  # refused requests used no turn


def test_an_interrupt_mid_stream_keeps_the_text_and_leaves_a_conversation_to_continue() -> None:
    ledger = Ledger()

    class Interrupting(Seen):
        def model_delta(self, kind: Any, text: str) -> None:
            super().model_delta(kind, text)
            if len(self.deltas) == 2:
                raise KeyboardInterrupt  # what the kernel raises on the stop button

    seen = Interrupting()
    script = [tool_call("refund", {"customer": "c1", "amount": 20},
                        content="I will refund c1 the full twenty euros now."),
              text("Understood, nothing was refunded.")]
    with FakeMistral(script) as fake:
        hold = fake.hold(after=5)
        with pytest.raises(KeyboardInterrupt):
            run_agent("Refund c1", tools=[ledger.refund], approver=approve_all,
                      client=fake.client(), events=seen)
        hold.release()
        fake.wait_cut_streams(1)  # the client closed the response; the fake saw it
        partial = seen.partial
        assert partial is not None and partial.stop_reason == "interrupted"
        assert partial.text == "I will "  # the two pieces that had arrived
        assert partial.messages[-1] == {"role": "assistant", "content": "I will "}
        later = run_agent("Don't.", tools=[ledger.refund], approver=approve_all,
                          client=fake.client(), history=partial.messages)
    assert ledger.ran == []  # the call never finished arriving, so nothing ran
    assert later.text == "Understood, nothing was refunded."
    assert fake.responses[-1][0] == 200  # the fake accepted the continued conversation


def test_the_async_loop_streams_too() -> None:
    ledger, seen = Ledger(), Seen()
    script = [tool_call("lookup", {"customer": "c9"}), text(ANSWER)]

    async def main() -> AgentResult[Any]:
        with FakeMistral(script, split_arguments=3) as fake:
            return await arun_agent("Look", tools=[ledger.lookup], approver=approve_all,
                                    client=fake.client(), events=seen)

    result = asyncio.run(main())
    assert ledger.ran == [("lookup", {"customer": "c9"})]
    assert result.text == ANSWER and len([d for d in seen.deltas if d[0] == "text"]) > 5


def test_an_interrupt_while_deciding_also_leaves_a_conversation_to_continue() -> None:
    ledger, seen = Ledger(), Seen()

    def press_stop(request: ApprovalRequest) -> Decision:
        raise KeyboardInterrupt

    script = [tool_calls(call("refund", {"customer": "c1", "amount": 20}),
                         call("lookup", {"customer": "c1"})),
              text("Nothing was done.")]
    with FakeMistral(script) as fake:
        with pytest.raises(KeyboardInterrupt):
            run_agent("Refund c1", tools=[ledger.refund, ledger.lookup], approver=press_stop,
                      client=fake.client(), events=seen)
        partial = seen.partial
        assert partial is not None and partial.stop_reason == "interrupted"
        roles = [m["role"] for m in partial.messages]
        assert roles == ["user", "assistant", "tool", "tool", "assistant"]
        later = run_agent("What happened?", tools=[ledger.refund], approver=approve_all,
                          client=fake.client(), history=partial.messages)
    assert ledger.ran == [] and later.text == "Nothing was done."
    assert fake.responses[-1][0] == 200


def test_a_display_that_fails_does_not_stop_the_stream(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(AgentEvents):
        def model_delta(self, kind: Any, text: str) -> None:
            raise ValueError("the frontend went away")

    with FakeMistral([text(ANSWER)]) as fake:
        result = run_agent("Hi", approver=approve_all, client=fake.client(), events=Broken())
    assert result.text == ANSWER
    assert [r.getMessage() for r in caplog.records] == ["showing the streamed text failed"]


def test_an_unknown_reasoning_effort_is_refused_before_any_request() -> None:
    # mistralai 3.x would silently leave an unknown value out of the request.
    with FakeMistral([text("never")]) as fake, pytest.raises(ConfigurationError) as info:
        run_agent("Hi", approver=approve_all, client=fake.client(),
                  model="magistral-small-latest", reasoning_effort="extreme")
    assert str(info.value) == ("reasoning_effort is 'extreme'; use one of none, minimal, low, "
                               "medium, high, xhigh, max.")
    assert fake.requests == []


def test_the_reasoning_effort_values_agree_with_the_installed_sdk() -> None:
    from cheq_jupyter import agent, magics
    from cheq_jupyter.testing import _fake_mistral

    assert magics.REASONING_EFFORTS == agent.REASONING_EFFORTS == _fake_mistral.REASONING_EFFORTS
    if SDK_MAJOR >= 2:
        from typing import get_args

        from mistralai.client.models import ReasoningEffort

        literal = get_args(ReasoningEffort)[0]
        assert get_args(literal) == agent.REASONING_EFFORTS
