"""The approval card in a real kernel, clicked through the widgets' comm messages.

One kernel serves the module (it must stay usable after interrupts, which is tested too).
The model is the loopback FakeMistral, reached by the REAL mistralai SDK inside the kernel.
Run on ipykernel 7.x (``.venv``) and 6.29 (``.venv-k6``)::

    .venv/bin/pytest -m kernel tests/test_card_kernel.py
    .venv-k6/bin/pytest -m kernel tests/test_card_kernel.py
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from cheq_jupyter.testing import FakeMistral, KernelFrontend, call, text, tool_call, tool_calls
from cheq_jupyter.testing._kernel import Card, Execution, ExecutionResult

pytestmark = pytest.mark.kernel

SETUP = '''
import json, logging, os, threading
from cheq_jupyter import ApprovalRequest, Decision, WidgetApprover, run_agent

RAN = []
ORDER = []
LOG = []

class _Keep(logging.Handler):
    def emit(self, record):
        LOG.append(record.getMessage())

logging.getLogger("cheq_jupyter").addHandler(_Keep())
logging.getLogger("cheq_jupyter").setLevel(logging.INFO)

def refund(customer: str, amount: float) -> str:
    """Refund money to a customer.

    Args:
        customer: The customer id.
        amount: Amount in euros.
    """
    RAN.append({"customer": customer, "amount": amount})
    return f"refunded {amount} to {customer}"
'''


@pytest.fixture(scope="module")
def kernel() -> Iterator[KernelFrontend]:
    with KernelFrontend() as k:
        result = k.execute(SETUP)
        assert result.status == "ok", result.error
        yield k


def agent_cell(fake: FakeMistral, *, timeout: float = 60, prompt: str = "Refund c1") -> str:
    return f"""
RAN.clear(); LOG.clear()
os.environ["MISTRAL_API_KEY"] = {fake.api_key!r}
os.environ["MISTRAL_SERVER_URL"] = {fake.url!r}
print("asking")
result = run_agent({prompt!r}, tools=[refund], approver=WidgetApprover(timeout={timeout}))
ORDER.append("agent done")
print("ANSWER:", result.text)
print("RAN:", json.dumps(RAN))
"""


def ran(result: ExecutionResult) -> list[dict[str, Any]]:
    line = next(x for x in result.stdout.splitlines() if x.startswith("RAN: "))
    return json.loads(line[5:])


def tool_results(request: dict[str, Any]) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "tool"]


def start(kernel: KernelFrontend, fake: FakeMistral, n: int = 1, **kw: Any) -> tuple[
    Execution, list[Card]
]:
    running = kernel.execute_async(agent_cell(fake, **kw))
    return running, kernel.wait_for_cards(n, execution=running)


def test_approve_runs_the_tool_and_output_stays_in_the_cell(kernel: KernelFrontend) -> None:
    script = [tool_call("refund", {"customer": "c1", "amount": 20}), text("Refunded 20 EUR.")]
    with FakeMistral(script) as fake:
        running, (card,) = start(kernel, fake)
        assert card.status == "Waiting for your decision."
        assert json.loads(card.state("cheq-args")["value"]) == {"customer": "c1", "amount": 20}
        assert "<b>refund</b>" in card.html
        kernel.click(card.widget("cheq-approve"))
        result = running.wait()
    assert result.status == "ok", result.error
    assert ran(result) == [{"customer": "c1", "amount": 20}]
    # Everything the cell printed, before and after the wait, is in the cell's own output.
    assert result.stdout.splitlines()[0] == "asking"
    assert "ANSWER: Refunded 20 EUR." in result.stdout
    assert card.status.startswith("approved by card at ")
    assert card.decided and card.state("cheq-args")["disabled"]
    assert card.state("cheq-note")["disabled"] and card.state("cheq-edit")["disabled"]
    # The saved notebook keeps a static record of the decision.
    (record,) = [h for h in result.html if "cheq-record" in h]
    assert "refund" in record and "approved by card" in record
    assert any("Approval card for refund" in d.get("text/plain", "") for d in result.displays)


def test_edit_then_approve_runs_with_the_edited_arguments(kernel: KernelFrontend) -> None:
    script = [tool_call("refund", {"customer": "c1", "amount": 200}), text("Done.")]
    with FakeMistral(script) as fake:
        running, (card,) = start(kernel, fake)
        layout = card.state("cheq-args")["layout"].removeprefix("IPY_MODEL_")
        assert kernel.widgets[layout]["display"] == "none"
        card.click("cheq-edit")
        kernel.wait_until(lambda: card.state("cheq-edit")["description"] == "Undo edits",
                          what="the editor to open")
        assert kernel.widgets[layout]["display"] in (None, "")
        card.set_value("cheq-args", json.dumps({"customer": "c1", "amount": 20}))
        kernel.wait_until(lambda: "200" in card.text("cheq-feedback"), what="the diff")
        diff = card.text("cheq-feedback")
        assert "amount: 200 → 20" in diff
        card.click("cheq-approve")
        result = running.wait()
        tool_answer = tool_results(fake.requests[1])
    assert ran(result) == [{"customer": "c1", "amount": 20}]
    assert card.status.startswith("edited and approved by card")
    (answer,) = tool_answer
    assert "edited" in answer and answer.endswith("refunded 20.0 to c1")


def test_invalid_edit_is_refused_then_the_corrected_edit_runs(kernel: KernelFrontend) -> None:
    script = [tool_call("refund", {"customer": "c1", "amount": 20}), text("Done.")]
    with FakeMistral(script) as fake:
        running, (card,) = start(kernel, fake)
        card.set_value("cheq-args", '{"customer": "c1", "amount": "lots"}')
        # The feedback text and the disabled button are two widget updates: wait for both.
        kernel.wait_until(lambda: "Cannot approve" in card.text("cheq-feedback")
                          and card.state("cheq-approve")["disabled"],
                          what="the inline error and a disabled Approve")
        assert "amount" in card.text("cheq-feedback")
        card.click("cheq-approve")  # refused: still waiting
        card.set_value("cheq-args", "{not json")
        kernel.wait_until(lambda: "not valid JSON" in card.text("cheq-feedback"),
                          what="the JSON error")
        assert not running.done and card.status == "Waiting for your decision."
        card.set_value("cheq-args", '{"customer": "c1", "amount": 15}')
        kernel.wait_until(lambda: not card.state("cheq-approve")["disabled"], what="re-enabled")
        card.click("cheq-approve")
        result = running.wait()
    assert ran(result) == [{"customer": "c1", "amount": 15}]


def test_reject_with_a_note_never_runs_the_tool(kernel: KernelFrontend) -> None:
    script = [tool_call("refund", {"customer": "c1", "amount": 900}),
              text("I did not refund c1: a manager must approve it.")]
    with FakeMistral(script) as fake:
        running, (card,) = start(kernel, fake)
        card.set_value("cheq-note", "Too much; ask a manager.")
        card.click("cheq-reject")
        card.click("cheq-approve")  # a click after the decision changes nothing
        result = running.wait()
        tool_answer = tool_results(fake.requests[1])
    assert ran(result) == []
    assert "ANSWER: I did not refund c1: a manager must approve it." in result.stdout
    assert "Too much; ask a manager." in tool_answer[0]
    assert card.status.endswith(": Too much; ask a manager.")
    assert card.status.startswith("rejected by card")
    # A late click, after the cell finished, changes nothing either.
    kernel.click(card.widget("cheq-approve"))
    assert kernel.execute("print(len(RAN))").stdout == "0\n"
    assert card.status.startswith("rejected by card")


def test_parallel_calls_approve_all(kernel: KernelFrontend) -> None:
    script = [
        tool_calls(call("refund", {"customer": "c1", "amount": 1}),
                   call("refund", {"customer": "c2", "amount": 2})),
        text("Both refunded."),
    ]
    with FakeMistral(script) as fake:
        running, cards = start(kernel, fake, n=2)
        (approve_all,) = kernel.find("cheq-approve-all", execution=running)
        assert kernel.find("cheq-reject-all", execution=running)
        kernel.click(approve_all)
        result = running.wait()
    assert ran(result) == [{"customer": "c1", "amount": 1}, {"customer": "c2", "amount": 2}]
    assert all(c.status.startswith("approved by card") for c in cards)
    assert kernel.widgets[approve_all]["disabled"]


def test_parallel_calls_mixed_decisions(kernel: KernelFrontend) -> None:
    script = [
        tool_calls(call("refund", {"customer": "c1", "amount": 1}),
                   call("refund", {"customer": "c2", "amount": 2})),
        text("Refunded c1 only."),
    ]
    with FakeMistral(script) as fake:
        running, (first, second) = start(kernel, fake, n=2)
        second.set_value("cheq-note", "c2 was already refunded")
        second.click("cheq-reject")
        kernel.wait_until(lambda: second.decided, what="the second card decided")
        assert not running.done  # one card still waits
        first.click("cheq-approve")
        result = running.wait()
        answers = tool_results(fake.requests[1])
    assert ran(result) == [{"customer": "c1", "amount": 1}]
    assert answers[0] == "refunded 1.0 to c1"
    assert "c2 was already refunded" in answers[1]


def test_timeout_is_not_approved_and_logged_as_such(kernel: KernelFrontend) -> None:
    script = [tool_call("refund", {"customer": "c1", "amount": 5}), text("Still waiting.")]
    with FakeMistral(script) as fake:
        running, (card,) = start(kernel, fake, timeout=1.5)
        (countdown,) = kernel.find("cheq-countdown", execution=running)
        assert "0:02 left" in kernel.text(countdown)
        result = running.wait()
        answer = tool_results(fake.requests[1])[0]
    assert ran(result) == []
    assert card.status.startswith("timed out (not approved) by card")
    assert "not approved" in kernel.text(countdown).lower()
    assert "no reviewer decided in time" in answer
    log = kernel.execute("print(json.dumps(LOG))").stdout
    assert "timed out" in log and "rejected" not in log


def test_interrupt_cancels_runs_nothing_and_the_kernel_goes_on(kernel: KernelFrontend) -> None:
    script = [tool_call("refund", {"customer": "c1", "amount": 5}), text("unused")]
    kernel.execute("ORDER.clear()")
    with FakeMistral(script) as fake:
        running, (card,) = start(kernel, fake)
        kernel.interrupt()
        result = running.wait(timeout=15)
    assert result.status == "error"
    assert result.error is not None and result.error["ename"] == "KeyboardInterrupt"
    assert card.status.startswith("cancelled (not approved)")
    assert card.decided
    after = kernel.execute("print(json.dumps(RAN), json.dumps(ORDER))")
    assert after.status == "ok"
    assert after.stdout == "[] []\n"  # the tool never ran; the cell stopped at the card


def test_cells_queued_while_blocked_run_afterwards_in_order(kernel: KernelFrontend) -> None:
    script = [tool_call("refund", {"customer": "c1", "amount": 5}), text("Done.")]
    with FakeMistral(script) as fake:
        kernel.execute("ORDER.clear()")
        running, (card,) = start(kernel, fake)
        queued = [kernel.execute_async(f"ORDER.append('queued {i}')") for i in (1, 2)]
        card.click("cheq-approve")
        assert running.wait().status == "ok"
        assert [q.wait().status for q in queued] == ["ok", "ok"]
    order = kernel.execute("print(json.dumps(ORDER))").stdout
    assert json.loads(order) == ["agent done", "queued 1", "queued 2"]


def test_html_in_arguments_is_shown_escaped(kernel: KernelFrontend) -> None:
    evil = "<img src=x onerror=alert(1)><script>alert(2)</script>"
    script = [tool_call("refund", {"customer": evil, "amount": 5}), text("ok")]
    with FakeMistral(script) as fake:
        running, (card,) = start(kernel, fake)
        shown = card.html
        card.set_value("cheq-args", json.dumps({"customer": evil + "!", "amount": 5}))
        kernel.wait_until(lambda: "!" in card.text("cheq-feedback"), what="the diff")
        shown += card.html
        card.click("cheq-approve")
        result = running.wait()
    record = "".join(result.html)
    for rendered in (shown, record):
        assert "<img" not in rendered and "<script" not in rendered
        assert "&lt;img src=x onerror=alert(1)&gt;" in rendered
    assert json.loads(card.state("cheq-args")["value"])["customer"] == evil + "!"


DIRECT = '''
from IPython.display import display
import ipywidgets as w
ap = WidgetApprover(timeout=30)
req = ApprovalRequest(action="refund", summary="Refund c1", details={"customer": "c1"},
                      tool_call_id="abcABC123")
won = []
remote = w.Button(description="remote decides")
remote.add_class("test-remote")
def decide_in_thread(_b):
    threading.Thread(target=lambda: won.append(ap.decide_externally(
        req, Decision.reject("Not today.", by="bob"), source="cheqpoint"))).start()
remote.on_click(decide_in_thread)
display(remote)
d = ap(req)
print(d.status, d.decided_by, d.decision_note, won)
print(ap.decide_externally(req, Decision.approve(by="eve"), source="cheqpoint"))
'''


def test_a_decision_from_another_thread_wakes_the_card(kernel: KernelFrontend) -> None:
    running = kernel.execute_async(DIRECT)
    (card,) = kernel.wait_for_cards(1, execution=running)
    (remote,) = kernel.find("test-remote", execution=running)
    kernel.click(remote)
    result = running.wait()
    assert result.stdout == "rejected bob Not today. [True]\nFalse\n"
    assert card.status.endswith("(decided in cheqpoint)")
    assert card.decided


REJECT_ALL = '''
reqs = [ApprovalRequest(action="refund", summary=f"Refund c{i}", details={"customer": f"c{i}"},
                        tool_call_id=f"abcABC12{i}") for i in (1, 2)]
ds = WidgetApprover(timeout=30).decide_all(reqs)
print([(d.status, d.decision_note) for d in ds])
'''


def test_reject_all_rejects_every_pending_card_with_its_note(kernel: KernelFrontend) -> None:
    running = kernel.execute_async(REJECT_ALL)
    first, second = kernel.wait_for_cards(2, execution=running)
    first.set_value("cheq-note", "wrong customer")
    (reject_all,) = kernel.find("cheq-reject-all", execution=running)
    kernel.click(reject_all)
    result = running.wait()
    assert result.stdout == "[('rejected', 'wrong customer'), ('rejected', None)]\n"
    assert first.status.startswith("rejected by card") and second.decided


BOOK = '''
import datetime
BOOKED = []
def book(when: datetime.date, seats: int, vip: bool = False) -> str:
    """Book seats."""
    BOOKED.append(dict(when=str(when), seats=seats, vip=vip))
    return "booked"
os.environ["MISTRAL_API_KEY"] = KEY
os.environ["MISTRAL_SERVER_URL"] = URL
r = run_agent("book", tools=[book], approver=WidgetApprover(timeout=60))
print("BOOKED:", json.dumps(BOOKED))
print("DECISION:", r.tool_calls[0].decision.status, json.dumps(r.tool_calls[0].decision.modified_details))
'''


def test_the_card_shows_defaults_and_refuses_edits_the_call_would_refuse(
    kernel: KernelFrontend,
) -> None:
    script = [tool_call("book", {"when": "2030-01-02", "seats": 2}), text("Booked.")]
    with FakeMistral(script) as fake:
        running = kernel.execute_async(f"KEY, URL = {fake.api_key!r}, {fake.url!r}\n" + BOOK)
        (card,) = kernel.wait_for_cards(1, execution=running)
        # Every argument the tool runs with is shown; the default is marked as one.
        assert json.loads(card.state("cheq-args")["value"]) == {
            "when": "2030-01-02", "seats": 2, "vip": False}
        assert "cheq-default" in card.html and "Filled in from the tool's defaults" in card.html
        # The JSON-schema subset checker accepted these; the call's own validation does not.
        for edit in ({"when": "2030-01-02", "seats": 5.0, "vip": False},
                     {"when": "tomorrow", "seats": 2, "vip": False},
                     {"when": "2030-01-02", "seats": 2, "vip": 0}):
            card.set_value("cheq-args", json.dumps(edit))
            kernel.wait_until(lambda: "Cannot approve" in card.text("cheq-feedback")
                              and card.state("cheq-approve")["disabled"],
                              what=f"the card to refuse {edit}")
            card.click("cheq-approve")  # refused: still waiting
            card.set_value("cheq-args", json.dumps({"when": "2030-01-02", "seats": 2}))
            kernel.wait_until(lambda: not card.state("cheq-approve")["disabled"],
                              what="re-enabled")
        assert not running.done
        card.set_value("cheq-args", json.dumps({"when": "2030-01-02", "seats": 3}))
        kernel.wait_until(lambda: "2 → 3" in card.text("cheq-feedback"), what="the diff")
        card.click("cheq-approve")
        result = running.wait()
    assert result.status == "ok", result.error
    booked = next(x for x in result.stdout.splitlines() if x.startswith("BOOKED: "))
    assert json.loads(booked[8:]) == [{"when": "2030-01-02", "seats": 3, "vip": False}]
    decision = next(x for x in result.stdout.splitlines() if x.startswith("DECISION: "))
    assert decision == 'DECISION: approved {"when": "2030-01-02", "seats": 3, "vip": false}'
