"""No-wait mode in a real kernel, with a frontend that holds widget messages like VS Code.

The holding frontend (``KernelFrontend(hold_comms=True)``) sends no click or edit while a cell
runs; it sends them, in order, once the cell has finished (microsoft/vscode-jupyter#17360).
The tool writes to a file in the kernel's directory, so what ran survives a kernel restart,
and it notes what the audit log held when it ran (the decision must be logged first).
Tests marked ``blocking`` need the blocking card (ipykernel 6.29 or later); the others run on
every kernel of scripts/kernel-matrix, ipykernel 5.5 (Colab's) included.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cheq_jupyter.testing import FakeMistral, KernelFrontend, json_reply, text, tool_call
from cheq_jupyter.testing._kernel import Card, Execution
from cheq_jupyter.testing._turns import call, tool_calls

pytestmark = pytest.mark.kernel

SETUP = '''
%load_ext cheq_jupyter
import json, os
def _audit():
    if not os.path.exists("audit.jsonl"):
        return []
    with open("audit.jsonl") as f:
        return [(r["tool_call_id"], r["status"]) for r in map(json.loads, f)]
def change_email(account_id: str, new_email: str) -> str:
    """Change the e-mail address of an account."""
    print("changing", account_id)
    with open("ran.jsonl", "a") as f:
        f.write(json.dumps({"account_id": account_id, "new_email": new_email,
                            "audit": _audit()}) + "\\n")
    return f"{account_id} now uses {new_email}"
'''

VSCODE = {"VSCODE_PID": "4242"}


def start_kernel(tmp_path: Path, **kwargs: Any) -> KernelFrontend:
    kernel = KernelFrontend(cwd=str(tmp_path), **kwargs).start()
    result = kernel.execute(SETUP)
    assert result.status == "ok", result.error
    return kernel


@pytest.fixture
def vscode(tmp_path: Path) -> Iterator[KernelFrontend]:
    """A kernel that looks like VS Code started it, behind a frontend that holds clicks."""
    kernel = start_kernel(tmp_path, env=VSCODE, hold_comms=True)
    try:
        yield kernel
    finally:
        kernel.shutdown()


def use(kernel: KernelFrontend, fake: FakeMistral) -> None:
    result = kernel.execute(
        f"os.environ['MISTRAL_API_KEY'] = {fake.api_key!r}\n"
        f"os.environ['MISTRAL_SERVER_URL'] = {fake.url!r}"
    )
    assert result.status == "ok", result.error


def ran(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "ran.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def value(kernel: KernelFrontend, expression: str) -> Any:
    out = kernel.execute(f"print(json.dumps({expression}))")
    assert out.status == "ok", out.error
    return json.loads(out.stdout)


def run_box(kernel: KernelFrontend, running: Execution) -> str:
    (box,) = kernel.find("cheq-run", execution=running)
    return box


def run_text(kernel: KernelFrontend, box: str) -> str:
    """Everything the run's output area shows, as plain text."""
    return "\n".join(b.get("text/plain", "") for b in kernel.outputs_in(box))


def wait_finished(kernel: KernelFrontend, box: str, answer: str) -> None:
    kernel.wait_until(lambda: answer in run_text(kernel, box), what=f"the answer {answer!r}")


def record_updates(kernel: KernelFrontend, running: Execution) -> list[str]:
    """The static record of a run (kept in a saved notebook), as the ``update_display_data``
    messages sent for its display id, plain text, in order.  Each update also carries the
    run area's widget view: a live notebook shows the widgets, a saved one the record."""
    (first,) = [c for t, c in running.outputs
                if t == "display_data" and "cheq-run-record" in c["data"].get("text/html", "")]
    display_id = first["transient"]["display_id"]
    everything = [o for e in kernel._executions.values() for o in e.outputs]
    everything += [o for group in kernel.other_outputs.values() for o in group]
    updates = [c["data"] for t, c in everything
               if t == "update_display_data" and c.get("transient", {}).get("display_id") == display_id]
    assert all(WIDGET_VIEW in data for data in [first["data"], *updates])
    return [data["text/plain"] for data in updates]


def no_wait_cell(kernel: KernelFrontend, cell: str, n: int = 1) -> tuple[Execution, list[Card]]:
    """Run a cell that must end with ``n`` undecided cards shown."""
    running = kernel.execute_async(cell)
    result = running.wait()
    assert result.status == "ok", result.error
    cards = kernel.cards(execution=running)
    assert len(cards) == n and not any(c.decided for c in cards)
    return running, cards


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
CHANGE = tool_call("change_email", {"account_id": "acct_1", "new_email": "ada@new.example"},
                   id="chg000001")
CELL = "%%mistral_agent -t change_email -o res --audit audit.jsonl\nChange it"


def test_auto_in_vscode_ends_the_cell_and_a_later_click_finishes_the_run(
    vscode: KernelFrontend, tmp_path: Path
) -> None:
    with FakeMistral([CHANGE, text("Done: acct_1 uses ada@new.example.")]) as fake:
        use(vscode, fake)
        running, (card,) = no_wait_cell(vscode, CELL)
        # The cell said which mode and why, and that Run All does not wait.
        [mode] = [d["text/plain"] for d in running.result().displays
                  if "cheq-mode" in d.get("text/html", "")]
        assert "no-wait mode (VS Code (VSCODE_PID is set)" in mode
        assert "Run All does not wait" in mode and "res holds a PendingRun" in mode
        assert value(vscode, "[type(res).__name__, res.done()]") == ["PendingRun", False]
        assert ran(tmp_path) == [] and audit(tmp_path) == []

        card.click("cheq-approve")  # the cell has ended: this frontend sends it now
        box = run_box(vscode, running)
        wait_finished(vscode, box, "Done: acct_1 uses ada@new.example.")
        assert len(fake.requests) == 2
    [row] = ran(tmp_path)
    assert (row["account_id"], row["new_email"]) == ("acct_1", "ada@new.example")
    # The approval was in the audit log before the tool ran.
    assert row["audit"] == [["chg000001", "approved"]]
    assert card.decided and "approved by card" in card.status
    assert "change_email ran" in run_text(vscode, box)
    # The decision shows once, on the card: no record inside the live run area.
    assert not [b for b in vscode.outputs_in(box) if "record" in b.get("text/html", "")]
    # What the tool printed, from a widget callback, is in the run's area too.
    assert "changing acct_1\n" in run_text(vscode, box)
    # The saved notebook keeps a static record: the cell's placeholder, updated at the end.
    vscode.wait_until(lambda: bool(record_updates(vscode, running)), what="the record")
    (record,) = record_updates(vscode, running)
    assert "change_email" in record and "approved by card" in record and "; ran" in record
    assert record.endswith("Answer: Done: acct_1 uses ada@new.example.")
    # -o now holds the AgentResult.
    assert value(vscode, "[type(res).__name__, res.tool_calls[0].status, res.text]") == [
        "AgentResult", "ran", "Done: acct_1 uses ada@new.example."]


def test_edit_reject_and_a_later_turn_all_after_the_cell(
    vscode: KernelFrontend, tmp_path: Path
) -> None:
    first = tool_calls(
        call("change_email", {"account_id": "acct_1", "new_email": "typo@new.example"}),
        call("change_email", {"account_id": "acct_2", "new_email": "bob@new.example"}),
    )
    second = tool_call("change_email", {"account_id": "acct_3", "new_email": "cy@new.example"})
    with FakeMistral([first, second, text("Two changed, one refused.")]) as fake:
        use(vscode, fake)
        running, (edit_me, reject_me) = no_wait_cell(vscode, CELL, n=2)
        edit_me.click("cheq-edit")
        edit_me.set_value("cheq-args", json.dumps(
            {"account_id": "acct_1", "new_email": "ada@new.example"}))
        edit_me.click("cheq-approve")
        reject_me.set_value("cheq-note", "not this one")
        reject_me.click("cheq-reject")
        # The model's next turn asks again: a new card, in the same output area.
        (later,) = vscode.wait_for_cards(3, execution=running)[2:]
        assert not later.decided
        assert [r["account_id"] for r in ran(tmp_path)] == ["acct_1"]
        later.click("cheq-approve")
        box = run_box(vscode, running)
        wait_finished(vscode, box, "Two changed, one refused.")
        second_request = fake.requests[1]["messages"]
    assert [(r["account_id"], r["new_email"]) for r in ran(tmp_path)] == [
        ("acct_1", "ada@new.example"), ("acct_3", "cy@new.example")]
    tool_msgs = [m for m in second_request if m["role"] == "tool"]
    assert "reviewer edited the arguments" in tool_msgs[0]["content"]
    assert "rejected" in tool_msgs[1]["content"] and "not this one" in tool_msgs[1]["content"]
    assert [r["status"] for r in audit(tmp_path)] == ["approved", "rejected", "approved"]
    assert audit(tmp_path)[0]["effective_arguments"]["new_email"] == "ada@new.example"
    assert value(vscode, "[c.status for c in res.tool_calls]") == [
        "ran", "not_approved", "ran"]


def test_two_no_wait_runs_keep_their_cards_and_results_apart(
    vscode: KernelFrontend, tmp_path: Path
) -> None:
    call_a = tool_call("change_email", {"account_id": "acct_a", "new_email": "a@x.example"})
    call_b = tool_call("change_email", {"account_id": "acct_b", "new_email": "b@x.example"})
    with FakeMistral([call_a, text("A was refused.")]) as fake_a, \
            FakeMistral([call_b, text("B is done.")]) as fake_b:
        use(vscode, fake_a)
        run_a, (card_a,) = no_wait_cell(
            vscode, "%%mistral_agent -t change_email -o res_a --audit audit.jsonl\nDo A")
        use(vscode, fake_b)
        run_b, (card_b,) = no_wait_cell(
            vscode, "%%mistral_agent -t change_email -o res_b --audit audit.jsonl\nDo B")
        assert "acct_a" in card_a.html and "acct_b" in card_b.html
        card_b.click("cheq-approve")
        wait_finished(vscode, run_box(vscode, run_b), "B is done.")
        assert value(vscode, "type(res_a).__name__") == "PendingRun"
        card_a.click("cheq-reject")
        wait_finished(vscode, run_box(vscode, run_a), "A was refused.")
    assert [r["account_id"] for r in ran(tmp_path)] == ["acct_b"]
    assert "A was refused." not in run_text(vscode, run_box(vscode, run_b))
    assert value(vscode, "[res_a.text, res_a.tool_calls[0].status, res_b.text, "
                         "res_b.tool_calls[0].status, res_a.run_id != res_b.run_id]") == [
        "A was refused.", "not_approved", "B is done.", "ran", True]


def test_no_wait_timeout_is_timed_out_and_nothing_runs(
    vscode: KernelFrontend, tmp_path: Path
) -> None:
    with FakeMistral([CHANGE, text("Still waiting for a human.")]) as fake:
        use(vscode, fake)
        running, (card,) = no_wait_cell(
            vscode, "%%mistral_agent -t change_email -o res --audit audit.jsonl --timeout 1\n"
                    "Change it")
        box = run_box(vscode, running)
        wait_finished(vscode, box, "Still waiting for a human.")
        card.click("cheq-approve")  # too late: the card is decided and disabled
        assert value(vscode, "res.tool_calls[0].decision.status") == "timed_out"
    assert card.decided and "timed out" in card.status
    assert ran(tmp_path) == []
    assert [r["status"] for r in audit(tmp_path)] == ["timed_out"]


def test_kernel_restart_with_a_pending_card_runs_nothing(
    vscode: KernelFrontend, tmp_path: Path
) -> None:
    with FakeMistral([CHANGE, text("unused")]) as fake:
        use(vscode, fake)
        _running, (card,) = no_wait_cell(vscode, CELL)
        approve = card.widget("cheq-approve")
        vscode.restart()
        # The page still shows the old card; its click goes to the new kernel.
        msg = vscode.kc.session.msg("comm_msg", {
            "comm_id": approve, "data": {"method": "custom", "content": {"event": "click"}}})
        vscode.kc.shell_channel.send(msg)
        after = vscode.execute("import cheq_jupyter.nowait as n; print(len(n.live_runs()))")
        assert after.status == "ok" and after.stdout == "0\n"
        assert len(fake.requests) == 1
    assert ran(tmp_path) == [] and audit(tmp_path) == []


@pytest.mark.blocking
def test_pending_run_wait_blocks_a_later_cell_where_clicks_arrive(tmp_path: Path) -> None:
    kernel = start_kernel(tmp_path)
    try:
        with FakeMistral([CHANGE, text("Changed.")]) as fake:
            use(kernel, fake)
            _first, (card,) = no_wait_cell(
                kernel, "%%mistral_agent --no-wait -t change_email -o res\nChange it")
            waiting = kernel.execute_async("r = res.wait(30)\nprint(type(r).__name__, r.text)")
            kernel.wait_until(lambda: kernel.busy, what="the waiting cell")
            with pytest.raises(TimeoutError):  # the cell really waits for the decision
                waiting.wait(timeout=1)
            card.click("cheq-approve")
            result = waiting.wait()
        assert result.status == "ok", result.error
        assert result.stdout == "AgentResult Changed.\n"
        assert [r["account_id"] for r in ran(tmp_path)] == ["acct_1"]
    finally:
        kernel.shutdown()


@pytest.mark.blocking
def test_auto_blocks_in_a_kernel_without_vscode_or_colab(tmp_path: Path) -> None:
    kernel = start_kernel(tmp_path)
    try:
        with FakeMistral([CHANGE, text("Changed.")]) as fake:
            use(kernel, fake)
            running = kernel.execute_async(CELL)
            (card,) = kernel.wait_for_cards(1, execution=running)
            assert not running.done  # the cell waits for the decision
            card.click("cheq-approve")
            result = running.wait()
        [mode] = [d["text/plain"] for d in result.displays
                  if "cheq-mode" in d.get("text/html", "")]
        assert mode.startswith("cheq-jupyter: blocking mode (ipykernel ")
        assert "no VS Code or Colab was detected" in mode
    finally:
        kernel.shutdown()


@pytest.mark.blocking
def test_self_check_reports_clicks_arrive(tmp_path: Path) -> None:
    kernel = start_kernel(tmp_path)
    try:
        running = kernel.execute_async("%mistral_agent --check 30")
        kernel.wait_until(lambda: bool(kernel.find("cheq-check-click", execution=running)),
                          what="the self-check card")
        (button,) = kernel.find("cheq-check-click", execution=running)
        kernel.click(button)
        result = running.wait()
        assert result.status == "ok", result.error
        assert "Clicks arrive" in result.stdout
        assert "Mode: blocking (the self-check saw a click reach the busy kernel)" in result.stdout
        assert "MistralAgentMagics.wait" in result.stdout
    finally:
        kernel.shutdown()


@pytest.mark.blocking
def test_self_check_reports_clicks_held_and_auto_then_uses_no_wait(tmp_path: Path) -> None:
    kernel = start_kernel(tmp_path, hold_comms=True)  # no VS Code marker: only the check knows
    try:
        running = kernel.execute_async("%mistral_agent --check 2")
        kernel.wait_until(lambda: bool(kernel.find("cheq-check-click", execution=running)),
                          what="the self-check card")
        (button,) = kernel.find("cheq-check-click", execution=running)
        kernel.click(button)  # held until the check's cell ends
        result = running.wait()
        assert "No click reached the kernel within 2 seconds" in result.stdout
        assert "Mode: no-wait" in result.stdout
        (status,) = kernel.find("cheq-check-status", execution=running)
        kernel.wait_until(lambda: "clicks are held" in kernel.text(status),
                          what="the held click to arrive")
        with FakeMistral([CHANGE, text("unused")]) as fake:
            use(kernel, fake)
            later, _cards = no_wait_cell(kernel, CELL)
        [mode] = [d["text/plain"] for d in later.result().displays
                  if "cheq-mode" in d.get("text/html", "")]
        assert "no-wait mode (the self-check saw no click" in mode
    finally:
        kernel.shutdown()


@pytest.mark.blocking
def test_first_blocking_card_without_any_click_says_how_to_switch(tmp_path: Path) -> None:
    kernel = start_kernel(tmp_path, hold_comms=True)
    try:
        kernel.execute("import cheq_jupyter.card as c; c._HINT_AFTER = 1.0")
        with FakeMistral([CHANGE, text("Not done.")]) as fake:
            use(kernel, fake)
            running = kernel.execute_async(
                "%%mistral_agent --wait -t change_email --timeout 4\nChange it")
            kernel.wait_for_cards(1, execution=running)
            (countdown,) = kernel.find("cheq-countdown", execution=running)
            kernel.wait_until(lambda: "--no-wait" in str(
                kernel.widgets[countdown].get("value", "")), what="the no-click hint")
            result = running.wait()
        assert result.status == "ok"
        assert ran(tmp_path) == []
    finally:
        kernel.shutdown()


UNKNOWN_KERNEL = (
    "import cheq_jupyter._blocking as b\n"
    "b.OLDEST_TESTED = (99, 0)  # as if this ipykernel were one the blocking card does not know"
)


def test_auto_on_a_kernel_the_card_cannot_block_on_uses_no_wait(tmp_path: Path) -> None:
    kernel = start_kernel(tmp_path)  # plain frontend, no VS Code marker
    try:
        assert kernel.execute(UNKNOWN_KERNEL).status == "ok"
        with FakeMistral([CHANGE, text("Changed.")]) as fake:
            use(kernel, fake)
            running, (card,) = no_wait_cell(kernel, CELL)
            [mode] = [d["text/plain"] for d in running.result().displays
                      if "cheq-mode" in d.get("text/html", "")]
            assert "no-wait mode (the blocking card does not know this ipykernel" in mode
            card.click("cheq-approve")
            wait_finished(kernel, run_box(kernel, running), "Changed.")
        assert [r["account_id"] for r in ran(tmp_path)] == ["acct_1"]
        check = kernel.execute("%mistral_agent --check 1")
        assert "The blocking card cannot wait on this kernel" in check.stdout
        assert "Mode: no-wait (the self-check saw no click" in check.stdout
    finally:
        kernel.shutdown()


def test_wait_forced_on_a_kernel_the_card_cannot_block_on_fails_closed(tmp_path: Path) -> None:
    kernel = start_kernel(tmp_path)
    try:
        assert kernel.execute(UNKNOWN_KERNEL).status == "ok"
        with FakeMistral([CHANGE, text("Nothing was changed.")]) as fake:
            use(kernel, fake)
            result = kernel.execute(
                "%%mistral_agent --wait -t change_email -o res --audit audit.jsonl\nChange it")
            assert result.status == "ok", result.error
            tool_msg = next(m for m in fake.requests[1]["messages"] if m["role"] == "tool")
        assert "approval was cancelled" in tool_msg["content"]
        assert "--no-wait" in tool_msg["content"]
        assert ran(tmp_path) == []
        assert [r["status"] for r in audit(tmp_path)] == ["cancelled"]
    finally:
        kernel.shutdown()


def test_start_run_from_python_with_a_policy_in_front(vscode: KernelFrontend, tmp_path: Path) -> None:
    script = [CHANGE, tool_call("change_email", {"account_id": "acct_9", "new_email": "z@x.example"}),
              text("One change, one refused by policy.")]
    with FakeMistral(script) as fake:
        use(vscode, fake)
        running = vscode.execute_async(
            "from cheq_jupyter import Policy, WidgetApprover\n"
            "from cheq_jupyter.nowait import start_run\n"
            "policy = Policy(rules={'change_email': lambda a: 'deny' if a['account_id'] == "
            "'acct_9' else 'ask'}, ask=WidgetApprover(timeout=60))\n"
            "pending = start_run('Change it', tools=[change_email], approver=policy)\n"
            "print(pending.done())")
        result = running.wait()
        assert result.stdout == "False\n"
        (card,) = vscode.cards(execution=running)
        card.click("cheq-approve")
        wait_finished(vscode, run_box(vscode, running), "One change, one refused by policy.")
    assert value(vscode, "[c.status for c in pending.result().tool_calls]") == [
        "ran", "not_approved"]
    assert [r["account_id"] for r in ran(tmp_path)] == ["acct_1"]


def test_cancel_answers_the_waiting_cards_and_nothing_runs(
    vscode: KernelFrontend, tmp_path: Path
) -> None:
    with FakeMistral([CHANGE, text("Cancelled, nothing changed.")]) as fake:
        use(vscode, fake)
        running, (card,) = no_wait_cell(vscode, CELL)
        out = vscode.execute("print(res.status)\nres.cancel()")
        assert out.stdout == "waiting for 1 decision(s) (change_email)\n"
        wait_finished(vscode, run_box(vscode, running), "Cancelled, nothing changed.")
        card.click("cheq-approve")  # too late: the card is decided
        assert value(vscode, "[res.tool_calls[0].decision.status, res.tool_calls[0].status]") == [
            "cancelled", "not_approved"]
    assert card.decided and "cancelled" in card.status
    assert ran(tmp_path) == []
    assert [r["status"] for r in audit(tmp_path)] == ["cancelled"]


def test_structured_extraction_finishes_after_the_click(vscode: KernelFrontend) -> None:
    setup = vscode.execute(
        "from pydantic import BaseModel\n"
        "class Change(BaseModel):\n    account_id: str\n    new_email: str")
    assert setup.status == "ok"
    script = [CHANGE, text("Changed."),
              json_reply({"account_id": "acct_1", "new_email": "ada@new.example"})]
    with FakeMistral(script) as fake:
        use(vscode, fake)
        running, (card,) = no_wait_cell(
            vscode, "%%mistral_agent -t change_email -s Change -o res\nChange it")
        card.click("cheq-approve")
        box = run_box(vscode, running)
        vscode.wait_until(lambda: any("Change(" in b.get("text/plain", "")
                                      for b in vscode.outputs_in(box)), what="the extracted object")
        assert "response_format" in fake.requests[-1]
    assert value(vscode, "res.output.model_dump()") == {
        "account_id": "acct_1", "new_email": "ada@new.example"}


def test_interrupt_stops_a_no_wait_tool_and_the_kernel_goes_on(
    vscode: KernelFrontend, tmp_path: Path
) -> None:
    slow = (
        "import time\n"
        "from IPython.display import display\n"
        "def slow_change(account_id: str) -> str:\n"
        "    \"\"\"Change slowly.\"\"\"\n"
        "    display({'text/plain': 'SLOW STARTED'}, raw=True)\n"
        "    time.sleep(60)\n"
        "    open('slow-finished', 'w').close()\n"
        "    return 'done'\n"
    )
    assert vscode.execute(slow).status == "ok"
    with FakeMistral([tool_call("slow_change", {"account_id": "acct_1"}), text("unused")]) as fake:
        use(vscode, fake)
        running, (card,) = no_wait_cell(vscode, "%%mistral_agent -t slow_change -o res\nGo")
        card.click("cheq-approve")
        vscode.wait_until(lambda: any(
            c.get("data", {}).get("text/plain") == "SLOW STARTED"
            for group in vscode.other_outputs.values() for _t, c in group), what="the tool")
        vscode.interrupt()  # the stop button, while the tool runs from the click's callback
        box = run_box(vscode, running)
        vscode.wait_until(lambda: "The run stopped: KeyboardInterrupt" in run_text(vscode, box),
                          what="the run to stop")
        after = vscode.execute("print(res.status, res.done())")
        assert after.status == "ok" and after.stdout == "failed True\n"
        assert len(fake.requests) == 1  # nothing went on after the interrupt
    assert not (tmp_path / "slow-finished").exists()
