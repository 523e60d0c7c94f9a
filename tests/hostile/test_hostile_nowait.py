"""Hostile timing and answers against a no-wait run: late clicks, double clicks, a model that
fails after the cell has ended.  Nothing may run twice, run late, or hang the kernel."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cheq_jupyter.testing import FakeMistral, KernelFrontend, http_error, text, tool_call
from cheq_jupyter.testing._kernel import Card, Execution

pytestmark = pytest.mark.kernel

SETUP = '''
%load_ext cheq_jupyter
import json, os
def refund(customer: str, amount: float) -> str:
    """Refund money to a customer."""
    with open("ran.jsonl", "a") as f:
        f.write(json.dumps({"customer": customer, "amount": amount}) + "\\n")
    return f"refunded {amount} to {customer}"
'''
REFUND = tool_call("refund", {"customer": "c1", "amount": 30})


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[KernelFrontend]:
    with KernelFrontend(cwd=str(tmp_path)) as k:
        assert k.execute(SETUP).status == "ok"
        yield k


def use(kernel: KernelFrontend, fake: FakeMistral) -> None:
    assert kernel.execute(
        f"os.environ['MISTRAL_API_KEY'] = {fake.api_key!r}\n"
        f"os.environ['MISTRAL_SERVER_URL'] = {fake.url!r}"
    ).status == "ok"


def ran(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "ran.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def start(kernel: KernelFrontend, options: str = "") -> tuple[Execution, Card]:
    running = kernel.execute_async(
        f"%%mistral_agent --no-wait -t refund -o res --audit audit.jsonl {options}\nRefund c1")
    assert running.wait().status == "ok"
    (card,) = kernel.cards(execution=running)
    return running, card


def area(kernel: KernelFrontend, running: Execution) -> str:
    (box,) = kernel.find("cheq-run", execution=running)
    return "\n".join(b.get("text/plain", "") for b in kernel.outputs_in(box))


def test_a_click_that_reaches_the_kernel_after_the_deadline_is_timed_out(
    kernel: KernelFrontend, tmp_path: Path
) -> None:
    with FakeMistral([REFUND, text("Nothing was refunded.")]) as fake:
        use(kernel, fake)
        running, card = start(kernel, "--timeout 1")
        # The kernel is busy for longer than the timeout; the click waits in its queue and the
        # timer cannot fire either: whichever runs first afterwards, it is past the deadline.
        busy = kernel.execute_async("import time; time.sleep(2.5)")
        kernel.wait_until(lambda: kernel.busy, what="the busy cell")
        card.click("cheq-approve")
        busy.wait()
        kernel.wait_until(lambda: "Nothing was refunded." in area(kernel, running),
                          what="the run to end")
        status = kernel.execute("print(res.tool_calls[0].decision.status)").stdout
    assert status == "timed_out\n"
    assert ran(tmp_path) == []


def test_a_double_click_runs_the_tool_once_and_resumes_once(
    kernel: KernelFrontend, tmp_path: Path
) -> None:
    with FakeMistral([REFUND, text("Refunded once.")]) as fake:
        use(kernel, fake)
        running, card = start(kernel)
        approve = card.widget("cheq-approve")
        kernel.click(approve)
        kernel.click(approve)
        kernel.click(card.widget("cheq-reject"))
        kernel.wait_until(lambda: "Refunded once." in area(kernel, running), what="the answer")
        assert kernel.execute("print(1)").stdout == "1\n"  # every queued click was handled
        assert len(fake.requests) == 2
    assert ran(tmp_path) == [{"customer": "c1", "amount": 30}]


def test_a_model_error_after_the_cell_stops_the_run_and_says_why(
    kernel: KernelFrontend, tmp_path: Path
) -> None:
    with FakeMistral([REFUND, http_error(400)]) as fake:
        use(kernel, fake)
        running, card = start(kernel)
        card.click("cheq-approve")
        kernel.wait_until(lambda: "The run stopped: ModelError" in area(kernel, running),
                          what="the error in the run's area")
        out = kernel.execute(
            "print(res.done(), res.status)\n"
            "try:\n    res.result()\nexcept Exception as e:\n    print(type(e).__name__)")
    assert out.stdout == "True failed\nModelError\n"
    assert ran(tmp_path) == [{"customer": "c1", "amount": 30}]  # it was approved before


def test_model_html_is_escaped_in_the_run_area_and_the_saved_record(
    kernel: KernelFrontend, tmp_path: Path
) -> None:
    evil = "<img src=x onerror=alert(1)>"
    script = [tool_call("refund", {"customer": evil, "amount": 1}), text(f"Done {evil}")]
    with FakeMistral(script) as fake:
        use(kernel, fake)
        running, card = start(kernel)
        assert evil not in card.html
        card.click("cheq-approve")
        kernel.wait_until(lambda: f"Done {evil}" in area(kernel, running), what="the answer")

        def records() -> list[str]:
            everything = [o for e in kernel._executions.values() for o in e.outputs]
            everything += [o for group in kernel.other_outputs.values() for o in group]
            return [c["data"].get("text/html", "") for t, c in everything
                    if t == "update_display_data" and "cheq-run-record" in
                    c["data"].get("text/html", "")]

        # The answer streams into the area before the run ends and its record is written.
        kernel.wait_until(lambda: bool(records()), what="the run's record")
        (box,) = kernel.find("cheq-run", execution=running)
        shown = [b.get("text/html", "") + b.get("text/markdown", "")
                 for b in kernel.outputs_in(box)]
        saved = records()
    assert saved and shown
    assert not any(evil in h for h in shown + saved)
    assert any("&lt;img" in h for h in saved)
