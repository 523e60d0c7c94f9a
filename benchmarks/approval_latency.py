"""Click-to-resume latency and kernel CPU of a blocked cell: our wait vs jupyter-ui-poll.

Run from the repository root (about a minute)::

    .venv/bin/python benchmarks/approval_latency.py [--clicks 15] [--seconds 10]

It starts real kernels with jupyter_client: the current interpreter's (ipykernel 7.x) and, for
the baseline, ``.venv-k6`` (ipykernel 6.29, the only kernel where jupyter-ui-poll works; make
it with ``python3 -m venv .venv-k6 && .venv-k6/bin/pip install 'ipykernel==6.29.5' ipywidgets
jupyter_client pydantic mistralai pytest jupyter-ui-poll && .venv-k6/bin/pip install --no-deps
-e .``).  Latency: a button click is sent as the browser sends it; the time until the resumed
cell's marker arrives on iopub, median over ``--clicks``.  CPU: ``time.process_time()`` of the
kernel process (all its threads) across a ``--seconds`` blocked wait nobody answers.
Targets: <= 10 ms median latency and <= 20 ms CPU per 10 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cheq_jupyter.testing import KernelFrontend  # noqa: E402
from cheq_jupyter.testing._kernel import Execution  # noqa: E402

LATENCY_TARGET_MS = 10.0
CPU_TARGET_MS_PER_10S = 20.0

SETUP = """
import time, ipywidgets as w
from IPython.display import display
from cheq_jupyter._blocking import wait_for
from cheq_jupyter import ApprovalRequest, WidgetApprover
"""

# Each "wait" is a statement that blocks until `clicked` is non-empty.
WAITS = {
    "cheq wait_for": "wait_for(lambda: bool(clicked), timeout=60)",
    "jupyter-ui-poll": "run_ui_poll_loop(lambda: True if clicked else None)",
}
IDLE_WAITS = {
    "cheq wait_for": "wait_for(lambda: False, timeout={s})",
    "jupyter-ui-poll": (
        "_end = time.monotonic() + {s}\n"
        "run_ui_poll_loop(lambda: True if time.monotonic() >= _end else None)"
    ),
    "cheq WidgetApprover": "WidgetApprover(timeout={s})(REQ)",
}

BUTTON_CELL = """
clicked = []
b = w.Button(description="go"); b.add_class("bench-go"); b.on_click(clicked.append)
display(b)
print("WAITING", flush=True)
{wait}
print("RESUMED", flush=True)
"""

CARD_CELL = """
REQ = ApprovalRequest(action="refund", summary="Refund c1", details={{"customer": "c1"}},
                      tool_call_id="abcABC123")
print("WAITING", flush=True)
d = WidgetApprover(timeout=60)(REQ)
print("RESUMED", d.status, flush=True)
"""

CPU_CELL = """
REQ = ApprovalRequest(action="refund", summary="Refund c1", details={{"customer": "c1"}},
                      tool_call_id="abcABC123")
_t0 = time.process_time()
{wait}
print("CPU", (time.process_time() - _t0) * 1000, flush=True)
"""


@dataclass
class Row:
    approach: str
    kernel: str
    latency_ms: float | None
    cpu_ms_per_10s: float | None
    one_off: bool = False  # cpu_ms_per_10s is a one-off cost in ms, not per 10 s


def _stdout(kernel: KernelFrontend, ex: Execution) -> str:
    return "".join(c["text"] for t, c in ex.outputs if t == "stream" and c["name"] == "stdout")


def _latency(kernel: KernelFrontend, cell: str, button: Callable[[Execution], str],
             clicks: int) -> float:
    samples = []
    for _ in range(clicks):
        ex = kernel.execute_async(cell)
        kernel.wait_until(lambda ex=ex: "WAITING" in _stdout(kernel, ex), what="the wait")
        kernel.wait_until(lambda ex=ex: bool(kernel.find("bench-go", execution=ex))
                          or bool(kernel.find("cheq-approve", execution=ex)), what="a button")
        target = button(ex)
        sent = time.perf_counter()
        kernel.click(target)
        kernel.wait_until(lambda ex=ex: "RESUMED" in _stdout(kernel, ex), timeout=30,
                          what="the resumed cell")
        samples.append((time.perf_counter() - sent) * 1000)
        result = ex.wait()
        assert result.status == "ok", result.error
    return statistics.median(samples)


def _cpu(kernel: KernelFrontend, wait: str, seconds: float) -> float:
    """Kernel CPU ms used by running ``wait`` (formatted with ``s=seconds``)."""
    result = kernel.execute(CPU_CELL.format(wait=wait.format(s=seconds)), timeout=seconds + 60)
    assert result.status == "ok", result.error
    line = next(x for x in result.stdout.splitlines() if x.startswith("CPU "))
    return float(line.split()[1])


def measure(python: str, clicks: int, seconds: float, with_ui_poll: bool) -> tuple[str, list[Row]]:
    rows = []
    with KernelFrontend(python=python, cwd=str(ROOT)) as kernel:
        setup = SETUP + ("from jupyter_ui_poll import run_ui_poll_loop\n" if with_ui_poll else "")
        assert kernel.execute(setup).status == "ok"
        version = kernel.execute("import ipykernel; print(ipykernel.__version__)").stdout.strip()
        approaches = ["cheq wait_for", "jupyter-ui-poll"] if with_ui_poll else ["cheq wait_for"]
        for approach in approaches:
            latency = _latency(kernel, BUTTON_CELL.format(wait=WAITS[approach]),
                               lambda ex: kernel.find("bench-go", execution=ex)[0], clicks)
            cpu = _cpu(kernel, IDLE_WAITS[approach], seconds) * 10 / seconds
            rows.append(Row(approach, version, latency, cpu))
        if not with_ui_poll:
            latency = _latency(kernel, CARD_CELL.format(),
                               lambda ex: kernel.find("cheq-approve", execution=ex)[0], clicks)
            total = _cpu(kernel, IDLE_WAITS["cheq WidgetApprover"], seconds)
            # The same card timing out at once: drawing, deciding and the record, no waiting.
            fixed = _cpu(kernel, "WidgetApprover(timeout=1e-6)(REQ)", seconds)
            rows.append(Row("card: draw+decide+record", version, None, fixed, one_off=True))
            rows.append(Row("card: waiting (countdown)", version, latency,
                            (total - fixed) * 10 / seconds))
    return version, rows


def _fmt(value: float | None, base: float | None, target: float) -> tuple[str, str, str]:
    if value is None:
        return "-", "-", "-"
    ratio = f"{value / base:.2f}x" if base else "-"
    return f"{value:.1f}", ratio, "yes" if value <= target else "NO"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--baseline-python", default=str(ROOT / ".venv-k6" / "bin" / "python"))
    args = parser.parse_args()
    started = time.monotonic()
    rows: list[Row] = []
    _, current = measure(sys.executable, args.clicks, args.seconds, with_ui_poll=False)
    rows += current
    if os.path.exists(args.baseline_python):
        _, old = measure(args.baseline_python, args.clicks, args.seconds, with_ui_poll=True)
        rows += old
    else:
        print(f"(no baseline: {args.baseline_python} does not exist; see the module doc)")
    base = next((r for r in rows if r.approach == "jupyter-ui-poll"), None)
    header = (
        f"{'approach':<28} {'ipykernel':<10} {'latency ms':>10} {'vs base':>8} {'<=10?':>6} "
        f"{'CPU ms/10s':>11} {'vs base':>8} {'<=20?':>6}"
    )
    print(f"\nClick-to-resume latency (median of {args.clicks}) and kernel CPU during a "
          f"{args.seconds:g} s blocked wait; baseline: jupyter-ui-poll on ipykernel 6.29")
    print(header)
    print("-" * len(header))
    for r in rows:
        lat = _fmt(r.latency_ms, base.latency_ms if base else None, LATENCY_TARGET_MS)
        cpu = _fmt(r.cpu_ms_per_10s, base.cpu_ms_per_10s if base else None,
                   CPU_TARGET_MS_PER_10S)
        if r.one_off:
            cpu = (f"{r.cpu_ms_per_10s:.1f} once", "-", "-")
        print(f"{r.approach:<28} {r.kernel:<10} {lat[0]:>10} {lat[1]:>8} {lat[2]:>6} "
              f"{cpu[0]:>11} {cpu[1]:>8} {cpu[2]:>6}")
    print(f"\n(total {time.monotonic() - started:.0f} s.  The card rows split a card that "
          f"times out after {args.seconds:g} s into its one-off cost, in ms, and the wait "
          "with its once-a-second countdown; the card's latency includes settling the card "
          "and displaying the record.)")


if __name__ == "__main__":
    main()
