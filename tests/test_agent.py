"""The gated tool loop, driven through the real mistralai SDK against the loopback FakeMistral."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from cheq_jupyter import Decision, Policy, approve_all, reject_all, run_agent
from cheq_jupyter.agent import AgentEvents, arun_agent, strict_response_format
from cheq_jupyter.approval import ApprovalRequest
from cheq_jupyter.errors import ConfigurationError, ModelError, StructuredOutputError
from cheq_jupyter.testing import (
    FakeMistral,
    call,
    http_error,
    json_reply,
    text,
    tool_call,
    tool_calls,
)


class Ledger:
    """Tools that remember every call they actually ran."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def refund(self, customer: str, amount: float) -> str:
        """Refund money to a customer.

        Args:
            customer: The customer id.
            amount: Amount in euros.
        """
        self.calls.append(("refund", {"customer": customer, "amount": amount}))
        return f"refunded {amount} to {customer}"

    def lookup(self, customer: str) -> dict[str, Any]:
        """Look a customer up."""
        self.calls.append(("lookup", {"customer": customer}))
        return {"customer": customer, "email": f"{customer}@example.com"}

    def explode(self, reason: str) -> str:
        """A tool that fails."""
        self.calls.append(("explode", {"reason": reason}))
        raise RuntimeError(f"boom: {reason}")

    def tools(self) -> list[Any]:
        return [self.refund, self.lookup, self.explode]


class Recorder:
    """An approver that answers from a list and remembers what it was asked."""

    def __init__(self, *decisions: Decision) -> None:
        self.decisions = list(decisions)
        self.asked: list[ApprovalRequest] = []

    def __call__(self, request: ApprovalRequest) -> Decision:
        self.asked.append(request)
        return self.decisions.pop(0)


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


def tool_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in body["messages"] if m["role"] == "tool"]


def run(fake: FakeMistral, prompt: str = "help", **kwargs: Any) -> Any:
    return run_agent(prompt, client=fake.client(), **kwargs)


def test_text_answer_without_tools() -> None:
    with FakeMistral([text("Bonjour.")]) as fake:
        result = run(fake, "Say hello in French", approver=reject_all)
    assert result.text == "Bonjour."
    assert result.steps == 1
    assert result.tool_calls == []
    assert fake.requests[0]["messages"] == [{"role": "user", "content": "Say hello in French"}]
    assert result.messages[-1] == {"role": "assistant", "content": "Bonjour."}


def test_approved_call_runs_and_its_result_reaches_the_model(ledger: Ledger) -> None:
    script = [tool_call("refund", {"customer": "c1", "amount": 20}), text("Refunded 20 EUR.")]
    approver = Recorder(Decision.approve(by="test"))
    with FakeMistral(script) as fake:
        result = run(fake, "refund c1", tools=ledger.tools(), approver=approver,
                     system="You are careful.")
    assert ledger.calls == [("refund", {"customer": "c1", "amount": 20.0})]
    assert result.text == "Refunded 20 EUR."
    [asked] = approver.asked
    assert asked.action == "refund"
    assert asked.details == {"customer": "c1", "amount": 20}
    assert asked.schema["required"] == ["customer", "amount"]
    assert len(asked.tool_call_id) == 9
    first, second = fake.requests
    assert first["messages"][0] == {"role": "system", "content": "You are careful."}
    assert [t["function"]["name"] for t in first["tools"]] == ["refund", "lookup", "explode"]
    assert "response_format" not in first
    [answer] = tool_messages(second)
    assert answer["tool_call_id"] == asked.tool_call_id
    assert answer["content"] == "refunded 20.0 to c1"
    assert [c.status for c in result.tool_calls] == ["ran"]
    assert result.decisions[0].status == "approved"


def test_edited_call_runs_with_the_edited_arguments(ledger: Ledger) -> None:
    edit = Decision.approve(by="test", modified_details={"customer": "c1", "amount": 5})
    script = [tool_call("refund", {"customer": "c1", "amount": 500}), text("Refunded 5.")]
    with FakeMistral(script) as fake:
        result = run(fake, tools=ledger.tools(), approver=Recorder(edit))
    assert ledger.calls == [("refund", {"customer": "c1", "amount": 5.0})]
    record = result.tool_calls[0]
    assert record.arguments == {"customer": "c1", "amount": 500}
    assert record.effective_arguments == {"customer": "c1", "amount": 5}
    content = tool_messages(fake.requests[1])[0]["content"]
    assert "edited the arguments" in content and '"amount": 5' in content


def test_edited_arguments_are_validated_again_before_anything_runs(ledger: Ledger) -> None:
    bad_edit = Decision.approve(by="test", modified_details={"customer": "c1", "amount": "lots"})
    script = [tool_call("refund", {"customer": "c1", "amount": 5}), text("Could not.")]
    with FakeMistral(script) as fake:
        result = run(fake, tools=ledger.tools(), approver=Recorder(bad_edit))
    assert ledger.calls == []
    assert result.tool_calls[0].status == "not_approved"
    assert "edited arguments are invalid" in tool_messages(fake.requests[1])[0]["content"]


def test_rejected_call_never_runs_and_the_note_reaches_the_model(ledger: Ledger) -> None:
    reject = Decision.reject("Amount too high, ask a manager", by="test")
    script = [tool_call("refund", {"customer": "c1", "amount": 900}),
              text("I did not refund: a manager must approve amounts that high.")]
    with FakeMistral(script) as fake:
        result = run(fake, tools=ledger.tools(), approver=Recorder(reject))
    assert ledger.calls == []
    content = tool_messages(fake.requests[1])[0]["content"]
    assert content.startswith("Not approved: the reviewer rejected this call")
    assert "Amount too high, ask a manager" in content
    assert result.text.startswith("I did not refund")
    assert result.tool_calls[0].status == "not_approved"


def test_parallel_calls_are_decided_together_and_answered_in_order(ledger: Ledger) -> None:
    batches: list[list[str]] = []

    class Batch:
        def __call__(self, request: ApprovalRequest) -> Decision:
            raise AssertionError("a turn must be decided together")

        def decide_all(self, requests: list[ApprovalRequest]) -> list[Decision]:
            batches.append([r.action for r in requests])
            return [Decision.approve(by="t"), Decision.reject("no", by="t"),
                    Decision.timed_out(by="t")]

    script = [
        tool_calls(call("lookup", {"customer": "a"}), call("refund", {"customer": "a", "amount": 1}),
                   call("refund", {"customer": "b", "amount": 2})),
        text("One lookup done."),
    ]
    with FakeMistral(script) as fake:
        result = run(fake, tools=ledger.tools(), approver=Batch())
    assert batches == [["lookup", "refund", "refund"]]
    assert ledger.calls == [("lookup", {"customer": "a"})]
    answers = tool_messages(fake.requests[1])
    ids = [c["id"] for c in fake.requests[1]["messages"][-4]["tool_calls"]]
    assert [a["tool_call_id"] for a in answers] == ids
    assert answers[1]["content"].startswith("Not approved: the reviewer rejected")
    assert answers[2]["content"].startswith("Not approved: no reviewer decided in time")
    assert [c.status for c in result.tool_calls] == ["ran", "not_approved", "not_approved"]


@pytest.mark.parametrize(
    ("arguments", "name", "expected"),
    [
        ('{"customer": "c1", "amount": ', "refund", "not valid JSON"),
        ({"customer": "c1", "amount": "many"}, "refund", "amount"),
        ({"customer": "c1"}, "refund", "missing required argument 'amount'"),
        ({"x": 1}, "wire_money", "There is no tool named 'wire_money'"),
    ],
)
def test_bad_calls_go_back_as_errors_and_nobody_is_asked(
    ledger: Ledger, arguments: Any, name: str, expected: str
) -> None:
    approver = Recorder()
    with FakeMistral([tool_call(name, arguments), text("Sorry.")]) as fake:
        result = run(fake, tools=ledger.tools(), approver=approver)
    assert approver.asked == []
    assert ledger.calls == []
    content = tool_messages(fake.requests[1])[0]["content"]
    assert content.startswith("Error: ") and expected in content
    assert content.endswith("The tool did not run.")
    assert result.tool_calls[0].status == "invalid"


def test_a_tool_that_raises_becomes_an_error_result_and_the_loop_goes_on(ledger: Ledger) -> None:
    script = [tool_call("explode", {"reason": "disk full"}), tool_call("lookup", {"customer": "z"}),
              text("Recovered.")]
    with FakeMistral(script) as fake:
        result = run(fake, tools=ledger.tools(), approver=approve_all)
    assert tool_messages(fake.requests[1])[0]["content"] == (
        "Error: explode raised RuntimeError: boom: disk full"
    )
    assert [c.status for c in result.tool_calls] == ["failed", "ran"]
    assert result.text == "Recovered."


def test_max_steps_ends_with_a_final_answer_without_tools(ledger: Ledger) -> None:
    script = [tool_call("lookup", {"customer": "a"}), tool_call("lookup", {"customer": "b"}),
              text("I looked up a and b, then ran out of steps.")]
    with FakeMistral(script) as fake:
        result = run(fake, tools=ledger.tools(), approver=approve_all, max_steps=2)
    assert result.stop_reason == "max_steps"
    assert result.steps == 3
    assert len(ledger.calls) == 2
    assert fake.requests[-1]["tool_choice"] == "none"
    assert result.text.startswith("I looked up a and b")


def test_policy_approves_denies_and_asks_by_tool_and_arguments(ledger: Ledger) -> None:
    human = Recorder(Decision.approve(by="human"))
    policy = Policy(
        rules={"lookup": "approve", "explode": "deny",
               "refund": lambda a: "ask" if a["amount"] > 100 else "approve"},
        ask=human,
    )
    script = [
        tool_calls(call("lookup", {"customer": "a"}), call("explode", {"reason": "x"}),
                   call("refund", {"customer": "a", "amount": 10}),
                   call("refund", {"customer": "a", "amount": 500})),
        text("done"),
    ]
    with FakeMistral(script) as fake:
        result = run(fake, tools=ledger.tools(), approver=policy)
    assert [r.details["amount"] for r in human.asked] == [500]
    assert [c[0] for c in ledger.calls] == ["lookup", "refund", "refund"]
    assert [d.decided_by for d in result.decisions] == ["policy", "policy", "policy", "human"]
    assert [d.status for d in result.decisions] == ["approved", "rejected", "approved", "approved"]


def test_an_approver_that_fails_approves_nothing(ledger: Ledger) -> None:
    def broken(request: ApprovalRequest) -> Decision:
        raise OSError("inbox unreachable")

    with FakeMistral([tool_call("refund", {"customer": "a", "amount": 1}), text("No.")]) as fake:
        result = run(fake, tools=ledger.tools(), approver=broken)
    assert ledger.calls == []
    assert result.decisions[0].status == "cancelled"
    assert "inbox unreachable" in tool_messages(fake.requests[1])[0]["content"]


def test_events_report_each_step(ledger: Ledger) -> None:
    seen: list[str] = []

    class Events(AgentEvents):
        def model_request(self, step: int, max_steps: int, phase: str) -> None:
            seen.append(f"request {step}/{max_steps} {phase}")

        def tool_result(self, record: Any) -> None:
            seen.append(f"result {record.name} {record.status}")

    script = [tool_call("lookup", {"customer": "a"}), text("ok")]
    with FakeMistral(script) as fake:
        run(fake, tools=ledger.tools(), approver=approve_all, max_steps=4, events=Events())
    assert seen == ["request 1/4 tools", "result lookup ran", "request 2/4 tools"]


def test_history_continues_a_conversation(ledger: Ledger) -> None:
    with FakeMistral([text("First."), text("Second.")]) as fake:
        first = run(fake, "one", approver=reject_all, system="sys")
        second = run(fake, "two", approver=reject_all, system="sys", history=first.messages)
    assert second.text == "Second."
    sent = [{"role": m["role"], "content": m["content"]} for m in fake.requests[1]["messages"]]
    assert sent == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "First."},
        {"role": "user", "content": "two"},
    ]


# -- two-phase structured extraction -------------------------------------------------------


class Invoice(BaseModel):
    customer: str
    total: float


def test_structured_output_without_tools_is_a_single_json_schema_request() -> None:
    with FakeMistral([json_reply({"customer": "ACME", "total": 12.5})]) as fake:
        result = run(fake, "Invoice: ACME owes 12.50", approver=reject_all, output_type=Invoice)
    assert result.output == Invoice(customer="ACME", total=12.5)
    [request] = fake.requests
    assert "tools" not in request
    assert request["response_format"] == strict_response_format(Invoice)
    assert request["response_format"]["json_schema"]["schema"]["additionalProperties"] is False


def test_structured_output_after_tools_never_mixes_tools_and_response_format(
    ledger: Ledger,
) -> None:
    script = [tool_call("lookup", {"customer": "acme"}), text("ACME owes 3."),
              json_reply({"customer": "acme", "total": 3})]
    with FakeMistral(script) as fake:
        result = run(fake, tools=ledger.tools(), approver=approve_all, output_type=Invoice)
    assert result.output == Invoice(customer="acme", total=3)
    assert ledger.calls == [("lookup", {"customer": "acme"})]
    for body in fake.requests:
        assert not ("tools" in body and "response_format" in body)
    final = fake.requests[-1]
    assert "tools" not in final and final["response_format"]["type"] == "json_schema"
    assert final["messages"][-1]["role"] == "tool"  # the phase-1 prose answer was discarded


def test_tools_offered_but_not_called_still_runs_phase_two(ledger: Ledger) -> None:
    script = [text("ACME owes 3 (prose, not JSON)."), json_reply({"customer": "ACME", "total": 3})]
    with FakeMistral(script) as fake:
        result = run(fake, "ACME owes 3", tools=ledger.tools(), approver=approve_all,
                     output_type=Invoice)
    assert result.output == Invoice(customer="ACME", total=3)
    assert len(fake.requests) == 2
    sent = [{"role": m["role"], "content": m["content"]} for m in fake.requests[1]["messages"]]
    assert sent == [{"role": "user", "content": "ACME owes 3"}]


def test_exhausted_step_budget_forces_the_structured_request(ledger: Ledger) -> None:
    script = [tool_call("lookup", {"customer": "a"}), json_reply({"customer": "a", "total": 0})]
    with FakeMistral(script) as fake:
        result = run(fake, tools=ledger.tools(), approver=approve_all, max_steps=1,
                     output_type=Invoice)
    assert result.output == Invoice(customer="a", total=0)
    assert result.stop_reason == "max_steps"
    assert "response_format" in fake.requests[1] and "tools" not in fake.requests[1]


def test_invalid_structured_output_is_sent_back_and_retried() -> None:
    script = [json_reply({"customer": "ACME"}), json_reply('{"customer": "ACME", "total": 7}')]
    with FakeMistral(script) as fake:
        result = run(fake, approver=reject_all, output_type=Invoice)
    assert result.output == Invoice(customer="ACME", total=7)
    feedback = fake.requests[1]["messages"][-1]
    assert feedback["role"] == "user" and "total: Field required" in feedback["content"]


def test_structured_output_that_never_validates_raises_with_every_attempt() -> None:
    script = [json_reply("not json"), json_reply({"total": "x"}), json_reply([])]
    with FakeMistral(script) as fake, pytest.raises(StructuredOutputError) as info:
        run(fake, approver=reject_all, output_type=Invoice)
    assert [raw for raw, _ in info.value.attempts] == ["not json", '{"total": "x"}', "[]"]
    assert "3 attempts" in str(info.value)


# -- the service's own errors ------------------------------------------------------------


def test_rate_limit_then_success_with_a_retry_config() -> None:
    from cheq_jupyter._sdk import retry_config

    with FakeMistral([http_error(429), text("Finally.")]) as fake:
        client = fake.client(retry_config=retry_config(max_elapsed_ms=5_000))
        result = run_agent("hi", approver=reject_all, client=client)
    assert result.text == "Finally."
    assert [status for status, _ in fake.responses] == [429, 200]


def test_service_errors_become_a_model_error_with_the_server_message() -> None:
    with FakeMistral([http_error(429)]) as fake, pytest.raises(ModelError) as info:
        run(fake, approver=reject_all)
    assert info.value.status_code == 429
    assert "Rate limit exceeded" in str(info.value)
    assert fake.api_key not in str(info.value)


def test_a_wrong_key_is_a_401_model_error_that_never_shows_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with FakeMistral([text("unreachable")]) as fake:
        monkeypatch.setenv("MISTRAL_API_KEY", "sk-wrong-secret-123")
        monkeypatch.setenv("MISTRAL_SERVER_URL", fake.url)
        with pytest.raises(ModelError) as info:
            run_agent("hi", approver=reject_all)
    assert info.value.status_code == 401
    assert "MISTRAL_API_KEY" in str(info.value)
    assert "sk-wrong-secret-123" not in str(info.value)


def test_client_from_environment_reaches_the_server_url(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeMistral([text("via env")]) as fake:
        monkeypatch.setenv("MISTRAL_API_KEY", fake.api_key)
        monkeypatch.setenv("MISTRAL_SERVER_URL", fake.url)
        assert run_agent("hi", approver=reject_all).text == "via env"


def test_missing_key_is_one_sentence_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MISTRAL_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match=r"^MISTRAL_API_KEY is not set; ") as info:
        run_agent("hi", approver=reject_all)
    assert str(info.value).count(". ") == 0


def test_async_twin_runs_async_tools() -> None:
    import asyncio

    ran: list[str] = []

    async def fetch(url: str) -> str:
        """Fetch a page."""
        ran.append(url)
        return "<html>"

    script = [tool_call("fetch", {"url": "http://x"}), text("fetched")]
    with FakeMistral(script) as fake:
        result = asyncio.run(
            arun_agent("get x", tools=[fetch], approver=approve_all, client=fake.client())
        )
    assert ran == ["http://x"] and result.text == "fetched"


def test_every_request_the_loop_sends_is_accepted_by_the_fake(ledger: Ledger) -> None:
    """A long mixed run: the fake refuses anything the real API would (ids, order, pairs)."""
    script: list[Any] = [
        tool_calls(call("lookup", {"customer": "a"}), call("refund", {"customer": "a", "amount": 1})),
        tool_call("refund", '{"customer": "a"'),
        tool_call("explode", {"reason": "r"}),
        text("all done"),
    ]
    approver = Recorder(Decision.approve(by="t"), Decision.reject("no", by="t"),
                        Decision.approve(by="t"))
    with FakeMistral(script) as fake:
        result = run(fake, tools=ledger.tools(), approver=approver)
    assert [status for status, _ in fake.responses] == [200] * 4
    assert result.text == "all done"
    json.dumps(result.messages)  # the conversation is plain JSON, ready for --continue
