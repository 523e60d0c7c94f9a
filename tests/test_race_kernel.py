"""Race mode (card + Cheqpoint) and "approve for the rest of this run", in a real kernel."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from cheq_jupyter.testing import (
    FakeCheqpoint,
    FakeMistral,
    KernelFrontend,
    call,
    text,
    tool_call,
    tool_calls,
)

pytestmark = pytest.mark.kernel

SETUP = '''
import json, os
from cheq_jupyter import WidgetApprover, run_agent
from cheq_jupyter.approvers import RaceApprover
RAN = []
def refund(customer: str, amount: float) -> str:
    """Refund money to a customer."""
    RAN.append({"customer": customer, "amount": amount})
    return f"refunded {amount} to {customer}"
def lookup(customer: str) -> str:
    """Look a customer up."""
    RAN.append({"lookup": customer})
    return f"{customer}: fine"
'''


@pytest.fixture(scope="module")
def kernel() -> Iterator[KernelFrontend]:
    with KernelFrontend() as k:
        result = k.execute(SETUP)
        assert result.status == "ok", result.error
        yield k


def cell(fake: FakeMistral, approver: str, inbox: FakeCheqpoint | None = None) -> str:
    env = ""
    if inbox is not None:
        env = (f"os.environ['CQ_API_KEY'] = {inbox.api_key!r}\n"
               f"os.environ['CQ_BASE_URL'] = {inbox.url!r}\n")
    return (
        f"RAN.clear()\n{env}"
        f"os.environ['MISTRAL_API_KEY'] = {fake.api_key!r}\n"
        f"os.environ['MISTRAL_SERVER_URL'] = {fake.url!r}\n"
        f"r = run_agent('refund', tools=[refund, lookup], approver={approver})\n"
        "print('RAN:', json.dumps(RAN))\n"
        "print('BY:', json.dumps([(d.decided_by, d.status, d.decision_note) for d in r.decisions]))"
    )


def printed(stdout: str, label: str) -> list[object]:
    line = next(x for x in stdout.splitlines() if x.startswith(label))
    return json.loads(line[len(label):])


REFUND = tool_call("refund", {"customer": "c1", "amount": 30})


def test_a_cheqpoint_decision_wins_the_race_and_the_card_says_so(kernel: KernelFrontend) -> None:
    with FakeMistral([REFUND, text("ok")]) as fake, FakeCheqpoint(
        auto={"refund": ("REJECTED", None, "Not this customer")}
    ) as inbox:
        running = kernel.execute_async(cell(fake, "RaceApprover(timeout=60)", inbox))
        (card,) = kernel.wait_for_cards(1, execution=running)
        result = running.wait()
    assert result.status == "ok", result.error
    assert printed(result.stdout, "RAN: ") == []
    assert printed(result.stdout, "BY: ") == [["cheqpoint", "rejected", "Not this customer"]]
    assert card.decided and card.status.endswith("(decided in cheqpoint)")
    assert any("decided in cheqpoint" in h for h in result.html if "cheq-record" in h)


def test_the_card_wins_while_cheqpoint_is_still_pending(kernel: KernelFrontend) -> None:
    with FakeMistral([REFUND, text("ok")]) as fake, FakeCheqpoint() as inbox:
        running = kernel.execute_async(cell(fake, "RaceApprover(timeout=60)", inbox))
        (card,) = kernel.wait_for_cards(1, execution=running)
        inbox.wait_for_request(0)  # the same call is waiting in the inbox too
        card.click("cheq-approve")
        result = running.wait()
    assert result.status == "ok", result.error
    assert printed(result.stdout, "RAN: ") == [{"customer": "c1", "amount": 30}]
    assert printed(result.stdout, "BY: ")[0][:2] == ["card", "approved"]
    assert "decided in" not in card.status


def test_approve_for_the_rest_of_the_run_skips_later_cards_of_that_tool(
    kernel: KernelFrontend,
) -> None:
    script = [REFUND, tool_call("refund", {"customer": "c2", "amount": 5}), text("both done")]
    with FakeMistral(script) as fake:
        running = kernel.execute_async(cell(fake, "WidgetApprover(timeout=60)"))
        (card,) = kernel.wait_for_cards(1, execution=running)
        card.set_value("cheq-rest-of-run", True)
        kernel.wait_until(lambda: card.state("cheq-rest-of-run")["value"] is True,
                          what="the checkbox to tick")
        card.click("cheq-approve")
        result = running.wait()
    assert result.status == "ok", result.error
    assert printed(result.stdout, "RAN: ") == [{"customer": "c1", "amount": 30},
                                               {"customer": "c2", "amount": 5}]
    decisions = printed(result.stdout, "BY: ")
    assert [d[:2] for d in decisions] == [["card", "approved"], ["policy", "approved"]]
    assert "Approved for the rest of this run" in str(decisions[1][2])
    assert len(kernel.cards(execution=running)) == 1  # no second card was shown


@pytest.mark.parametrize("call_id", ["dupdup123", ""])
def test_a_cheqpoint_approval_of_one_call_never_decides_another_with_the_same_id(
    kernel: KernelFrontend, call_id: str
) -> None:
    """The model gives a destructive and a harmless call one id (or none): Cheqpoint approves
    the harmless one at once, and the destructive one still waits for the person."""
    turn = tool_calls(call("refund", {"customer": "c1", "amount": 900}, id=call_id),
                      call("lookup", {"customer": "c1"}, id=call_id))
    with FakeMistral([turn, text("ok")]) as fake, FakeCheqpoint(
        auto={"lookup": ("APPROVED", None, "harmless")}
    ) as inbox:
        running = kernel.execute_async(cell(fake, "RaceApprover(timeout=60)", inbox))
        refund_card, lookup_card = kernel.wait_for_cards(2, execution=running)
        # Controls and status line are separate widget updates: wait for both.
        kernel.wait_until(lambda: lookup_card.decided
                          and lookup_card.status.endswith("(decided in cheqpoint)"),
                          what="Cheqpoint to approve the lookup")
        assert not refund_card.decided  # the refund is still waiting for the person
        assert inbox.approvals[0].status == "PENDING"
        refund_card.click("cheq-reject")
        result = running.wait()
    assert result.status == "ok", result.error
    assert printed(result.stdout, "RAN: ") == [{"lookup": "c1"}]
    assert [d[:2] for d in printed(result.stdout, "BY: ")] == [
        ["card", "rejected"], ["cheqpoint", "approved"]]
    assert [status for status, _ in fake.responses] == [200, 200]
