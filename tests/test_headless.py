"""Choosing the approver, and headless runs that never wait for a person who is not there.

The kernel tests start real kernels with this interpreter (run them under ``.venv-k6`` too
for ipykernel 6.29)::

    .venv/bin/pytest tests/test_headless.py
    .venv-k6/bin/pytest -m kernel tests/test_headless.py
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cheq_jupyter.approval import ApprovalRequest, Decision, Policy, decide_all
from cheq_jupyter.approvers import ConsoleApprover, ReplayApprover, choose_approver
from cheq_jupyter.approvers.headless import default_approver
from cheq_jupyter.audit import AuditLog, load
from cheq_jupyter.errors import ConfigurationError
from cheq_jupyter.testing import FakeMistral, call, text, tool_calls

HEADLESS = ("headless-kernel", "the kernel's request has allow_stdin=False")


def request(action: str = "refund", **details: Any) -> ApprovalRequest:
    return ApprovalRequest(action=action, summary="", details=details or {"amount": 1},
                           tool_call_id="call00001", run_id="run-1")


# -- the decision table ------------------------------------------------------------------------


def test_a_headless_kernel_gets_the_policy_with_nobody_to_ask() -> None:
    choice = choose_approver(environ={}, surroundings=HEADLESS)
    assert (choice.name, choice.headless) == ("policy", True)
    decision = choice.approver(request())
    assert decision.status == "rejected" and decision.decided_by == "policy"
    assert "No reviewer was present" in (decision.decision_note or "")
    assert "allow_stdin=False" in choice.notice()


def test_a_headless_policy_keeps_its_rules_but_drops_its_reviewer() -> None:
    policy = Policy(rules={"lookup": "approve", "delete": "deny"}, ask=ConsoleApprover())
    choice = choose_approver(policy=policy, environ={}, surroundings=HEADLESS)
    decisions = decide_all(choice.approver, [request("lookup"), request("delete"),
                                             request("refund")])
    assert [d.status for d in decisions] == ["approved", "rejected", "rejected"]
    assert "No reviewer was present" in (decisions[2].decision_note or "")


@pytest.mark.parametrize("where", ["unknown-kernel", "no-terminal"])
def test_when_nobody_can_be_seen_the_run_is_headless(where: Any) -> None:
    choice = choose_approver(environ={}, surroundings=(where, "test"))
    assert (choice.name, choice.headless) == ("policy", True)


def test_a_terminal_gets_the_console_and_a_policy_asks_it() -> None:
    choice = choose_approver(environ={}, surroundings=("terminal", "test"))
    assert isinstance(choice.approver, ConsoleApprover) and not choice.headless
    with_rules = choose_approver(policy=Policy(rules={"lookup": "approve"}), environ={},
                                 surroundings=("terminal", "test"))
    assert isinstance(with_rules.approver, Policy)
    assert isinstance(with_rules.approver.ask, ConsoleApprover)


def test_a_notebook_gets_the_card_with_the_timeout() -> None:
    from cheq_jupyter.card import WidgetApprover

    choice = choose_approver(timeout=42, environ={}, surroundings=("notebook", "test"))
    assert isinstance(choice.approver, WidgetApprover) and choice.name == "card"
    assert choice.approver.timeout == 42


@pytest.mark.parametrize(("value", "name", "headless"), [
    ("console", "console", False), ("CARD", "card", False), ("policy", "policy", True)])
def test_the_environment_variable_wins_over_the_surroundings(
    value: str, name: str, headless: bool
) -> None:
    choice = choose_approver(environ={"CHEQ_JUPYTER_APPROVER": value},
                             surroundings=("terminal", "test"))
    assert (choice.name, choice.headless) == (name, headless)
    assert "CHEQ_JUPYTER_APPROVER" in choice.reason


def test_the_environment_variable_can_choose_cheqpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    from cheq_jupyter.approvers import CheqpointApprover

    wanted = {"CHEQ_JUPYTER_APPROVER": "cheqpoint"}
    monkeypatch.delenv("CQ_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="CQ_API_KEY"):
        choose_approver(environ=wanted, surroundings=HEADLESS)
    monkeypatch.setenv("CQ_API_KEY", "cq_test_key_0000")
    choice = choose_approver(environ=wanted, surroundings=HEADLESS, timeout=5)
    assert isinstance(choice.approver, CheqpointApprover) and choice.approver.timeout == 5
    assert not choice.headless  # a reviewer decides, elsewhere


def test_replay_from_the_environment_reads_the_named_log(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "recorded.jsonl")
    log.record(request(), Decision.approve(by="card"))
    choice = choose_approver(
        environ={"CHEQ_JUPYTER_APPROVER": "replay",
                 "CHEQ_JUPYTER_REPLAY_LOG": str(log.path)},
        surroundings=("notebook", "test"),
    )
    assert isinstance(choice.approver, ReplayApprover) and choice.headless
    assert choice.approver(request()).approved
    assert choice.approver(request(amount=2)).status == "rejected"


@pytest.mark.parametrize("value", ["approve_all", "off", "yes-please"])
def test_no_environment_value_can_switch_approval_off(value: str) -> None:
    with pytest.raises(ConfigurationError, match="use one of card, console, cheqpoint"):
        choose_approver(environ={"CHEQ_JUPYTER_APPROVER": value}, surroundings=HEADLESS)


def test_default_approver_prints_one_line_when_it_goes_headless(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHEQ_JUPYTER_APPROVER", "policy")
    out = io.StringIO()
    approver = default_approver(out=out)
    assert isinstance(approver, Policy)
    [line] = out.getvalue().splitlines()
    assert line.startswith("cheq-jupyter: using the policy approver (CHEQ_JUPYTER_APPROVER=")


def test_plain_python_without_a_terminal_is_headless() -> None:
    import subprocess

    code = ("from cheq_jupyter.approvers import detect_surroundings;"
            "print(detect_surroundings()[0])")
    done = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "no-terminal"


# -- real kernels --------------------------------------------------------------------------------


@pytest.mark.kernel
def test_the_kernel_reads_allow_stdin_from_the_execute_request() -> None:
    from cheq_jupyter.testing._kernel import KernelFrontend

    code = ("from cheq_jupyter.approvers import detect_surroundings\n"
            "print('WHERE', detect_surroundings()[0])")
    with KernelFrontend() as kernel:
        headless = kernel.execute_async(code, allow_stdin=False).wait(60)
        notebook = kernel.execute_async(code, allow_stdin=True).wait(60)
    assert "WHERE headless-kernel" in headless.stdout
    assert "WHERE notebook" in notebook.stdout


@pytest.fixture
def kernel_manager() -> Iterator[Any]:
    """A KernelManager for this interpreter (the installed spec says just ``python``)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tempfile.mkdtemp(prefix="cheq-kernelspec-")
    os.makedirs(os.path.join(spec_dir, "cheq-test"))
    with open(os.path.join(spec_dir, "cheq-test", "kernel.json"), "w") as f:
        json.dump({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
                            "{connection_file}"], "display_name": "test", "language": "python"},
                  f)
    try:
        yield KernelManager(kernel_name="cheq-test",
                            kernel_spec_manager=KernelSpecManager(kernel_dirs=[spec_dir]))
    finally:
        shutil.rmtree(spec_dir, ignore_errors=True)


TOOLS = '''
import os
RAN = []

def lookup(customer: str) -> str:
    """Look a customer up."""
    RAN.append("lookup")
    return "cus_1: Ada"

def refund(customer: str, amount: int) -> str:
    """Refund money to a customer."""
    RAN.append("refund")
    return "refunded"
'''


def run_notebook(cells: list[str], km: Any, cwd: Path, fake: FakeMistral,
                 env: dict[str, str] | None = None) -> tuple[list[str], float]:
    """Execute a notebook with nbclient, as papermill/CI would; returns each cell's text."""
    import nbformat
    from nbclient import NotebookClient

    setup = (f"os.environ['MISTRAL_API_KEY'] = {fake.api_key!r}\n"
             f"os.environ['MISTRAL_SERVER_URL'] = {fake.url!r}\n")
    for key, value in (env or {}).items():
        setup += f"os.environ[{key!r}] = {value!r}\n"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(TOOLS + setup)] + [
        nbformat.v4.new_code_cell(c) for c in cells]
    started = time.monotonic()
    NotebookClient(nb, km=km, timeout=60, resources={"metadata": {"path": str(cwd)}}).execute()
    elapsed = time.monotonic() - started
    texts = []
    for cell in nb.cells:
        parts = []
        for output in cell.outputs:
            if output.get("output_type") == "stream":
                parts.append(output["text"])
            elif "data" in output:
                parts.append(str(output["data"].get("text/plain", "")))
        texts.append("".join(parts))
    return texts, elapsed


SCRIPT = [tool_calls(call("lookup", {"customer": "cus_1"}),
                     call("refund", {"customer": "cus_1", "amount": 28})),
          text("I looked the customer up; the refund needs a reviewer.")]


@pytest.mark.kernel
def test_nbclient_run_finishes_runs_nothing_that_needed_a_human_and_says_why(
    kernel_manager: Any, tmp_path: Path
) -> None:
    cell = '''
from cheq_jupyter import Policy, run_agent
from cheq_jupyter.approvers import default_approver
from cheq_jupyter.audit import AuditLog

result = run_agent("Refund cus_1 28 EUR", tools=[lookup, refund],
                   approver=default_approver(policy=Policy(rules={"lookup": "approve"})),
                   recorder=AuditLog())
for c in result.tool_calls:
    print(c.name, "->", c.decision.describe())
print("RAN", RAN)
'''
    with FakeMistral(SCRIPT) as fake:
        texts, elapsed = run_notebook([cell], kernel_manager, tmp_path, fake)
    out = texts[1]
    assert elapsed < 60
    assert "cheq-jupyter: using the policy approver (the kernel's request has allow_stdin=False"\
        in out
    assert "RAN ['lookup']" in out  # the call a policy allowed ran; the one needing a human not
    assert "refund -> rejected by policy" in out and "No reviewer was present" in out
    records = load(tmp_path / "cheq-audit.jsonl")
    assert [(r.tool, r.status, r.decided_by) for r in records] == [
        ("lookup", "approved", "policy"), ("refund", "rejected", "policy")]


@pytest.mark.kernel
def test_nbclient_runs_the_magic_headless_too(kernel_manager: Any, tmp_path: Path) -> None:
    cells = ["%load_ext cheq_jupyter",
             "%%mistral_agent --tools lookup,refund --approve lookup --audit cheq-audit.jsonl "
             "--out result\nRefund cus_1 28 EUR",
             "print('RAN', RAN)"]
    with FakeMistral(SCRIPT) as fake:
        texts, _ = run_notebook(cells, kernel_manager, tmp_path, fake)
    assert "using the policy approver" in texts[2]
    assert "No reviewer was present" in texts[2]
    assert "RAN ['lookup']" in texts[3]
    assert [r.decided_by for r in load(tmp_path / "cheq-audit.jsonl")] == ["policy", "policy"]


@pytest.mark.kernel
def test_nbclient_replays_a_recorded_log(kernel_manager: Any, tmp_path: Path) -> None:
    recorded = AuditLog(tmp_path / "reviewed.jsonl")
    refund_call = ApprovalRequest(action="refund", summary="", tool_call_id="abcdefghi",
                                  details={"customer": "cus_1", "amount": 28})
    recorded.record(refund_call, Decision.approve(by="card"))
    cell = '''
from cheq_jupyter import run_agent
from cheq_jupyter.approvers import default_approver
result = run_agent("Refund cus_1 28 EUR", tools=[lookup, refund], approver=default_approver())
for c in result.tool_calls:
    print(c.name, "->", c.decision.describe())
print("RAN", RAN)
'''
    env = {"CHEQ_JUPYTER_APPROVER": "replay", "CHEQ_JUPYTER_REPLAY_LOG": str(recorded.path)}
    with FakeMistral(SCRIPT) as fake:
        texts, _ = run_notebook([cell], kernel_manager, tmp_path, fake, env)
    assert "using the replay approver" in texts[1]
    assert "RAN ['refund']" in texts[1]  # recorded approval replayed; lookup never decided
    assert "lookup -> rejected by replay" in texts[1]
