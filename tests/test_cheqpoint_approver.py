"""CheqpointApprover: the REAL cheqpoint SDK against the loopback FakeCheqpoint.

Tests that need a decision to arrive while the approver is polling run the approver in a
thread and synchronise on the fake's state (``wait_for_request`` / ``wait_for_poll``).
"""

from __future__ import annotations

import io
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cheq_jupyter.approval import ApprovalRequest
from cheq_jupyter.approvers.cheqpoint import CheqpointApprover
from cheq_jupyter.errors import ConfigurationError
from cheq_jupyter.testing import FakeCheqpoint

REFUND = {"customer": "cus_123", "amount": 28}


def refund(amount: int = 28, call_id: str = "call00001") -> ApprovalRequest:
    return ApprovalRequest(
        action="process_refund",
        summary=f"Refund {amount} EUR to cus_123",
        details={"customer": "cus_123", "amount": amount},
        tool_call_id=call_id,
        run_id="run-1",
        step=1,
    )


@pytest.fixture
def fake() -> Iterator[FakeCheqpoint]:
    with FakeCheqpoint() as server:
        yield server


def make(fake: FakeCheqpoint, **kwargs: Any) -> CheqpointApprover:
    options: dict[str, Any] = {"poll_interval": 0.02, "announce": False}
    options.update(kwargs)
    return CheqpointApprover(api_key=fake.api_key, base_url=fake.url, **options)


class Background:
    """Runs ``fn`` in a thread; ``result()`` joins it and returns (or re-raises)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._value = fn()
        except BaseException as exc:
            self._error = exc

    def result(self, timeout: float = 10.0) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the approver did not return"
        if self._error is not None:
            raise self._error
        return self._value


# -- decisions ------------------------------------------------------------------------------


def test_approved_after_pending_sends_the_call_and_waits_for_the_reviewer(
    fake: FakeCheqpoint,
) -> None:
    approver = make(fake)
    job = Background(lambda: approver(refund()))
    filed = fake.wait_for_poll(0, polls=2)  # seen pending twice: the approver keeps waiting
    assert filed.status == "PENDING"
    fake.decide(filed, "APPROVED", note="ok, known customer")
    decision = job.result()

    assert decision.status == "approved"
    assert decision.decided_by == "cheqpoint"
    assert decision.modified_details is None
    assert decision.decision_note == "ok, known customer"
    assert (filed.action, filed.summary, filed.details) == (
        "process_refund", "Refund 28 EUR to cus_123", REFUND)
    assert [(r.tool_call_id, i) for r, i in approver.filed] == [("call00001", filed.id)]
    assert all(c.authorized for c in fake.calls)


def test_approved_with_modified_details(fake: FakeCheqpoint) -> None:
    fake.auto["process_refund"] = ("APPROVED", {"customer": "cus_123", "amount": 10}, "capped")
    request = refund()
    decision = make(fake)(request)
    assert decision.status == "approved"
    assert decision.modified_details == {"customer": "cus_123", "amount": 10}
    assert decision.effective_details(request) == {"customer": "cus_123", "amount": 10}
    assert decision.decision_note == "capped"
    assert decision.describe().startswith("edited and approved by cheqpoint")


def test_modified_details_equal_to_the_original_are_a_plain_approval(
    fake: FakeCheqpoint,
) -> None:
    fake.auto["process_refund"] = ("APPROVED", dict(REFUND))
    decision = make(fake)(refund())
    assert decision.status == "approved" and decision.modified_details is None


def test_modified_details_that_are_not_an_object_fail_closed(fake: FakeCheqpoint) -> None:
    fake.auto["process_refund"] = lambda details: ("APPROVED", [1, 2])
    decision = make(fake)(refund())
    assert decision.status == "cancelled"
    assert "not a JSON object" in (decision.decision_note or "")


def test_rejected_with_the_reviewers_note(fake: FakeCheqpoint) -> None:
    approver = make(fake)
    job = Background(lambda: approver(refund(5000)))
    fake.decide(fake.wait_for_request(0), "REJECTED", note="Over the refund limit.")
    decision = job.result()
    assert decision.status == "rejected"
    assert decision.decision_note == "Over the refund limit."
    assert decision.decided_by == "cheqpoint"


@pytest.mark.parametrize(
    ("status", "expected"),
    [("approved", "approved"), ("Approved", "approved"), ("rejected", "rejected"),
     ("EXPIRED", "timed_out"), ("CANCELLED", "cancelled"), ("ON_HOLD", "cancelled")],
)
def test_statuses_are_read_case_insensitively_and_unknown_ones_fail_closed(
    fake: FakeCheqpoint, status: str, expected: str
) -> None:
    fake.auto["process_refund"] = status
    decision = make(fake)(refund())
    assert decision.status == expected
    if status == "ON_HOLD":
        assert "unknown status 'on_hold'" in (decision.decision_note or "")


def test_response_notes_are_used_when_there_is_no_decision_note(fake: FakeCheqpoint) -> None:
    approver = make(fake)
    job = Background(lambda: approver(refund()))
    fake.decide(fake.wait_for_request(0), "REJECTED", response_notes="Ask finance first.")
    assert job.result().decision_note == "Ask finance first."


def test_a_system_rejection_marked_retryable_is_a_time_out_not_a_reviewers_no(
    fake: FakeCheqpoint,
) -> None:
    approver = make(fake)
    job = Background(lambda: approver(refund()))
    fake.decide(fake.wait_for_request(0), "REJECTED", retryable=True, note="SLA breached")
    decision = job.result()
    assert decision.status == "timed_out"
    assert "without a reviewer's decision" in (decision.decision_note or "")
    assert "SLA breached" in (decision.decision_note or "")


def test_an_auto_decision_rule_is_named_in_the_note(fake: FakeCheqpoint) -> None:
    approver = make(fake)
    job = Background(lambda: approver(refund(3)))
    fake.decide(fake.wait_for_request(0), "APPROVED", auto_rule="Refunds under 5 EUR")
    decision = job.result()
    assert decision.status == "approved"
    assert decision.decision_note == "Approved by Cheqpoint rule Refunds under 5 EUR."


def test_pending_past_the_timeout_is_timed_out_and_not_approved(fake: FakeCheqpoint) -> None:
    decision = make(fake, timeout=0.3)(refund())
    filed = fake.approvals[0]
    assert decision.status == "timed_out"
    assert decision.decided_by == "cheqpoint"
    assert f"request {filed.id} is still pending" in (decision.decision_note or "")
    assert filed.status == "PENDING" and filed.polls >= 1


def test_one_turn_is_filed_together_and_decided_in_the_models_order(
    fake: FakeCheqpoint,
) -> None:
    approver = make(fake)
    first, second = refund(10, "call00001"), refund(20, "call00002")
    job = Background(lambda: approver.decide_all([first, second]))
    # Both requests reach the inbox before either is decided.
    fake.wait_for_request(1)
    fake.decide(1, "REJECTED", note="no")
    fake.decide(0, "APPROVED")
    decisions = job.result()
    assert [d.status for d in decisions] == ["approved", "rejected"]
    assert [a.details["amount"] for a in fake.approvals] == [10, 20]


def test_a_stop_event_ends_the_wait_as_decided_elsewhere(fake: FakeCheqpoint) -> None:
    approver = make(fake)
    stop = threading.Event()
    job = Background(lambda: approver.decide_all([refund()], stop=stop))
    fake.wait_for_poll(0)
    stop.set()
    [decision] = job.result()
    assert decision.status == "cancelled"
    assert "Decided elsewhere" in (decision.decision_note or "")


# -- failures fail closed ----------------------------------------------------------------------


def test_a_wrong_key_gets_401_and_fails_closed_without_showing_the_key(
    fake: FakeCheqpoint,
) -> None:
    secret = "cq_live_wrong_key_123456"
    approver = CheqpointApprover(api_key=secret, base_url=fake.url, announce=False)
    decision = approver(refund())
    note = decision.decision_note or ""
    assert decision.status == "cancelled" and not decision.approved
    assert "refused the API key (HTTP 401" in note and "CQ_API_KEY" in note
    assert secret not in note and secret not in repr(approver)
    assert fake.approvals == [] and fake.calls[0].status == 401


def test_http_500_when_filing_fails_closed_with_the_error(fake: FakeCheqpoint) -> None:
    fake.fail_next(500, "database unavailable")
    decision = make(fake)(refund())
    assert decision.status == "cancelled"
    assert "HTTP 500 (database unavailable)" in (decision.decision_note or "")


def test_http_500_while_polling_fails_closed(fake: FakeCheqpoint) -> None:
    approver = make(fake)
    job = Background(lambda: approver(refund()))
    fake.wait_for_request(0)
    fake.fail_next(500)
    decision = job.result()
    assert decision.status == "cancelled"
    assert "HTTP 500" in (decision.decision_note or "")
    assert "checking request cq_req_0001" in (decision.decision_note or "")


def test_a_server_that_never_answers_is_cut_off_by_the_http_timeout(fake: FakeCheqpoint) -> None:
    fake.stall_next()
    decision = make(fake, http_timeout=0.3)(refund())
    assert decision.status == "cancelled"
    assert "did not answer within 0.3 s" in (decision.decision_note or "")


def test_an_unreachable_server_fails_closed() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    approver = CheqpointApprover(
        api_key="cq_test_key_0000", base_url=f"http://127.0.0.1:{port}", announce=False
    )
    decision = approver(refund())
    assert decision.status == "cancelled"
    assert "Could not reach Cheqpoint" in (decision.decision_note or "")


# -- configuration ---------------------------------------------------------------------------


def test_key_and_url_come_from_the_environment(
    fake: FakeCheqpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CQ_API_KEY", fake.api_key)
    monkeypatch.setenv("CQ_BASE_URL", fake.url)
    fake.auto["process_refund"] = "APPROVED"
    out = io.StringIO()
    decision = CheqpointApprover(out=out)(refund())
    assert decision.approved
    assert "Waiting up to 600 s for a decision in Cheqpoint on process_refund" in out.getvalue()
    assert fake.api_key not in out.getvalue()


def test_a_missing_key_is_a_configuration_error_naming_cq_api_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CQ_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="CQ_API_KEY"):
        CheqpointApprover()


def test_a_base_url_that_is_not_http_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="CQ_BASE_URL"):
        CheqpointApprover(api_key="cq_test_key_0000", base_url="app.cheqpoint.co")


def test_without_the_cheqpoint_package_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "cheqpoint", None)  # import cheqpoint -> ImportError
    with pytest.raises(ConfigurationError, match=r"pip install 'cheq-jupyter\[cheqpoint\]'"):
        CheqpointApprover(api_key="cq_test_key_0000")


# -- the fake itself, through the SDK's other entry points -----------------------------------


def test_fake_serves_the_sdks_inbound_request_sync(fake: FakeCheqpoint) -> None:
    import cheqpoint

    client = cheqpoint.CheqpointClient(api_key=fake.api_key, base_url=fake.url)
    box: dict[str, Any] = {}
    job = Background(lambda: box.setdefault("answer", client.request_sync(
        action="send_email", summary="Email the customer", details={"to": "a@b.c"},
        timeout_ms=5_000)))
    # The server holds the inbound call open (maxWaitMs) until the reviewer decides.
    fake.decide(fake.wait_for_request(0), "APPROVED", note="fine")
    job.result()
    assert box["answer"]["status"] == "approved"
    assert box["answer"]["decisionNote"] == "fine"
    assert fake.approvals[0].endpoint == "inbound"
    assert [c.path for c in fake.calls] == ["/api/webhooks/inbound"]


def test_fake_checkpoint_raises_the_sdks_rejected_error(fake: FakeCheqpoint) -> None:
    import cheqpoint

    fake.auto["deploy"] = ("REJECTED", None, "not on a Friday")
    client = cheqpoint.CheqpointClient(api_key=fake.api_key, base_url=fake.url)
    with pytest.raises(cheqpoint.RejectedError):
        client.checkpoint(action="deploy", summary="Deploy", details={}, poll_interval=0.01)

