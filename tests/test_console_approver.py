"""ConsoleApprover, driven through a pseudo-terminal (pexpect) like a person at a terminal."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from cheq_jupyter.approval import ApprovalRequest
from cheq_jupyter.approvers.console import ConsoleApprover, printable

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import json, sys
from cheq_jupyter.approval import ApprovalRequest
from cheq_jupyter.approvers.console import ConsoleApprover

schema = {
    "type": "object",
    "properties": {"customer": {"type": "string"}, "amount": {"type": "integer", "minimum": 1}},
    "required": ["customer", "amount"],
    "additionalProperties": False,
}
count, summary = int(sys.argv[1]), sys.argv[2]
requests = [
    ApprovalRequest(action="refund", summary=summary, schema=schema, run_id="run-1", step=1,
                    details={"customer": "cus_1", "amount": 28 + i}, tool_call_id=f"call{i:05d}")
    for i in range(count)
]
decisions = ConsoleApprover().decide_all(requests)
print("RESULT " + json.dumps([{**d.to_cheqpoint(), "by": d.decided_by} for d in decisions]))
'''

MENU = r"\[a\]pprove, \[r\]eject, \[e\]dit arguments"


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "console_run.py"
    path.write_text(SCRIPT, encoding="utf-8")
    return path


@pytest.fixture
def spawn(script: Path) -> Iterator[Any]:
    children: list[Any] = []

    def start(count: int = 1, summary: str = "Refund 28 EUR to cus_1") -> Any:
        child = pexpect.spawn(sys.executable, ["-u", str(script), str(count), summary],
                              cwd=str(ROOT), timeout=30, encoding="utf-8",
                              dimensions=(40, 200))
        children.append(child)
        return child

    yield start
    for child in children:
        child.close(force=True)


def result(child: Any, shown: list[str] | None = None) -> list[dict[str, Any]]:
    """The decisions the script printed; ``shown`` gets the output before them."""
    child.expect(r"RESULT (\[.*\])\r?\n")
    if shown is not None:
        shown.append(child.before)
    decisions: list[dict[str, Any]] = json.loads(child.match.group(1))
    child.expect(pexpect.EOF)
    return decisions


def test_it_shows_the_call_and_approves_on_a(spawn: Any) -> None:
    child = spawn()
    child.expect("Approval needed: refund")
    child.expect("Refund 28 EUR to cus_1")
    child.expect(r'"amount": 28')
    child.expect(MENU)
    child.sendline("a")
    [decision] = result(child)
    assert decision == {"status": "approved", "modifiedDetails": None, "decisionNote": None,
                        "by": "console"}


def test_reject_with_a_note(spawn: Any) -> None:
    child = spawn()
    child.expect(MENU)
    child.sendline("r")
    child.expect("Note for the model")
    child.sendline("Ask the customer first.")
    [decision] = result(child)
    assert decision["status"] == "rejected"
    assert decision["decisionNote"] == "Ask the customer first."


def test_edit_with_valid_json_approves_the_edited_arguments(spawn: Any) -> None:
    child = spawn()
    child.expect(MENU)
    child.sendline("e")
    child.expect("New arguments as JSON")
    child.sendline('{"customer": "cus_1", "amount": 10}')
    [decision] = result(child)
    assert decision["status"] == "approved"
    assert decision["modifiedDetails"] == {"customer": "cus_1", "amount": 10}


def test_invalid_edits_are_explained_and_asked_again(spawn: Any) -> None:
    child = spawn()
    child.expect(MENU)
    child.sendline("e")
    child.expect("New arguments as JSON")
    child.sendline('{"customer": "cus_1", "amount": 0}')  # fails the schema's minimum
    child.expect("Those arguments do not fit refund:")
    child.expect("amount")
    child.expect("New arguments as JSON")
    child.sendline('{"customer": "cus_1",')  # JSON over several lines...
    child.sendline('')                       # ...ended before it is complete
    child.expect("That is not valid JSON")
    child.expect("New arguments as JSON")
    child.sendline('{"customer": "cus_1",')
    child.sendline(' "amount": 12}')
    [decision] = result(child)
    assert decision["status"] == "approved"
    assert decision["modifiedDetails"] == {"customer": "cus_1", "amount": 12}


def test_an_empty_edit_goes_back_to_the_question(spawn: Any) -> None:
    child = spawn()
    child.expect(MENU)
    child.sendline("e")
    child.expect("New arguments as JSON")
    child.sendline("")
    child.expect(MENU)
    child.sendline("maybe")
    child.expect("Please answer a, r, e or t")
    child.sendline("approve")
    [decision] = result(child)
    assert decision["status"] == "approved" and decision["modifiedDetails"] is None


def test_end_of_input_rejects_this_call_and_the_rest_of_the_turn(spawn: Any) -> None:
    child = spawn(count=2)
    child.expect(r"Approval needed \(1 of 2\)")
    child.expect(MENU)
    child.sendeof()
    decisions = result(child)
    assert [d["status"] for d in decisions] == ["rejected", "rejected"]
    assert all("input closed" in d["decisionNote"] for d in decisions)


def test_ctrl_c_rejects(spawn: Any) -> None:
    child = spawn(count=2)
    child.expect(MENU)
    child.sendline("a")
    child.expect(r"Approval needed \(2 of 2\)")
    child.expect(MENU)
    child.sendintr()
    decisions = result(child)
    assert [d["status"] for d in decisions] == ["approved", "rejected"]
    assert "Ctrl-C" in decisions[1]["decisionNote"]


def test_approve_for_the_rest_of_the_run_answers_later_calls_of_that_tool(spawn: Any) -> None:
    child = spawn(count=3)
    child.expect(r"approve refund for the \[t\]rest of the run")
    child.sendline("t")
    shown: list[str] = []
    decisions = result(child, shown)
    assert [d["status"] for d in decisions] == ["approved"] * 3
    assert [d["by"] for d in decisions] == ["console", "policy", "policy"]
    assert "for the rest of run run-1" in decisions[1]["decisionNote"]
    assert "Approval needed (2 of 3)" not in shown[0]  # not asked again
    assert shown[0].count("Approved for the rest of this run") == 2


def test_terminal_control_sequences_from_the_model_are_shown_escaped(spawn: Any) -> None:
    child = spawn(summary="Refund \x1b[2J\x1b[Hnow")
    child.expect(MENU)
    assert "Refund \\u001b[2J\\u001b[Hnow" in child.before
    assert "\x1b[2J" not in child.before
    child.sendline("r")
    child.sendline("")
    assert result(child)[0]["status"] == "rejected"


def test_injected_streams_work_without_a_terminal() -> None:
    request = ApprovalRequest(action="lookup", summary="", details={"customer": "cus_1"},
                              tool_call_id="call00001")
    out = io.StringIO()
    decision = ConsoleApprover(stdin=io.StringIO("x\nr\nno thanks\n"), stdout=out)(request)
    assert decision.status == "rejected" and decision.decision_note == "no thanks"
    assert "Please answer a, r or e." in out.getvalue()  # no run_id: no "rest of run"
    closed = ConsoleApprover(stdin=io.StringIO(""), stdout=io.StringIO())(request)
    assert closed.status == "rejected"


def test_printable_escapes_control_and_bidi_characters() -> None:
    assert printable("a\x1bb\u202ec\x9bd\n\te") == "a\\u001bb\\u202ec\\u009bd\n\te"
