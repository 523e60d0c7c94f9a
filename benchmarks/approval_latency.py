"""Click-to-resume latency and kernel CPU of a blocked cell: our wait vs jupyter-ui-poll.

Run from the repository root (about a minute)::

    .venv/bin/python benchmarks/approval_latency.py [--clicks 15] [--seconds 10] [--quick]

It starts real kernels with jupyter_client: the current interpreter's (ipykernel 7.x) and, for
the baseline, ``.venv-k6`` (ipykernel 6.29, the only kernel where jupyter-ui-poll works; make
it with ``python3 -m venv .venv-k6 && .venv-k6/bin/pip install 'ipykernel==6.29.5' ipywidgets
jupyter_client pydantic mistralai pytest jupyter-ui-poll && .venv-k6/bin/pip install --no-deps
-e .``; ``benchmarks/run_all.py`` creates it when missing).  Latency: a button click is
sent as the browser sends it; the time until the resumed cell's marker arrives on iopub,
median over ``--clicks``.  CPU: ``time.process_time()`` of the
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

from _table import Row, print_table, ratio  # noqa: E402

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
class Measured:
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


def measure(python: str, clicks: int, seconds: float,
            with_ui_poll: bool) -> tuple[str, list[Measured]]:
    found: list[Measured] = []
    with KernelFrontend(python=python, cwd=str(ROOT)) as kernel:
        setup = SETUP + ("from jupyter_ui_poll import run_ui_poll_loop\n" if with_ui_poll else "")
        assert kernel.execute(setup).status == "ok"
        version = kernel.execute("import ipykernel; print(ipykernel.__version__)").stdout.strip()
        approaches = ["cheq wait_for", "jupyter-ui-poll"] if with_ui_poll else ["cheq wait_for"]
        for approach in approaches:
            latency = _latency(kernel, BUTTON_CELL.format(wait=WAITS[approach]),
                               lambda ex: kernel.find("bench-go", execution=ex)[0], clicks)
            cpu = _cpu(kernel, IDLE_WAITS[approach], seconds) * 10 / seconds
            found.append(Measured(approach, version, latency, cpu))
        if not with_ui_poll:
            latency = _latency(kernel, CARD_CELL.format(),
                               lambda ex: kernel.find("cheq-approve", execution=ex)[0], clicks)
            total = _cpu(kernel, IDLE_WAITS["cheq WidgetApprover"], seconds)
            # The same card timing out at once: drawing, deciding and the record, no waiting.
            fixed = _cpu(kernel, "WidgetApprover(timeout=1e-6)(REQ)", seconds)
            found.append(Measured("card: draw+decide+record", version, None, fixed, one_off=True))
            found.append(Measured("card: waiting (countdown)", version, latency,
                                  (total - fixed) * 10 / seconds))
    return version, found


def rows(quick: bool = False, *, clicks: int | None = None, seconds: float | None = None,
         baseline_python: str | None = None) -> list[Row]:
    """Latency and CPU of our waits next to jupyter-ui-poll's (``quick``: 7 clicks, 5 s)."""
    clicks = clicks or (7 if quick else 15)
    seconds = seconds or (5.0 if quick else 10.0)
    baseline_python = baseline_python or str(ROOT / ".venv-k6" / "bin" / "python")
    version, measured = measure(sys.executable, clicks, seconds, with_ui_poll=False)
    if os.path.exists(baseline_python):
        measured += measure(baseline_python, clicks, seconds, with_ui_poll=True)[1]
    base = next((m for m in measured if m.approach == "jupyter-ui-poll"), None)
    if base is not None:
        label = f"jupyter-ui-poll, ipykernel {base.kernel}"
    else:
        label = f"MISSING: no {baseline_python} (see benchmarks/approval_latency.py)"
    ours = [m for m in measured if m is not base]
    names = {"card: waiting (countdown)": "WidgetApprover card"}
    out: list[Row] = []
    for m in ours:
        if m.latency_ms is not None:
            b = base.latency_ms if base else None
            out.append(Row(f"click-to-resume: {names.get(m.approach, m.approach)}, ipykernel "
                           f"{m.kernel}", m.latency_ms, "ms", f"{label} (median of {clicks})",
                           b, ratio(m.latency_ms, b), f"<= {LATENCY_TARGET_MS:g} ms",
                           m.latency_ms <= LATENCY_TARGET_MS))
    for m in ours:
        if m.cpu_ms_per_10s is not None and not m.one_off:
            b = base.cpu_ms_per_10s if base else None
            out.append(Row(f"CPU while blocked: {names.get(m.approach, m.approach)}, ipykernel "
                           f"{m.kernel}", m.cpu_ms_per_10s, "ms/10s",
                           f"{label} ({seconds:g} s wait)", b, ratio(m.cpu_ms_per_10s, b),
                           f"<= {CPU_TARGET_MS_PER_10S:g} ms/10s",
                           m.cpu_ms_per_10s <= CPU_TARGET_MS_PER_10S))
    for m in ours:
        if m.one_off:
            out.append(Row(f"card draw+decide+record (timeout at once), ipykernel {version}",
                           m.cpu_ms_per_10s, "ms CPU"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=None, help="default 15 (--quick: 7)")
    parser.add_argument("--seconds", type=float, default=None, help="default 10 (--quick: 5)")
    parser.add_argument("--baseline-python", default=str(ROOT / ".venv-k6" / "bin" / "python"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    started = time.monotonic()
    table = rows(args.quick, clicks=args.clicks, seconds=args.seconds,
                 baseline_python=args.baseline_python)
    print()
    print_table(table, "Click-to-resume latency (median) and kernel CPU during a blocked wait "
                "nobody answers; baseline: jupyter-ui-poll on ipykernel 6.29")
    print(f"\n(total {time.monotonic() - started:.0f} s.  The card's CPU is split into its "
          "one-off cost (drawn, timed out at once, recorded), in ms, and the wait with its "
          "once-a-second countdown; the card's latency includes settling the card and "
          "displaying the record.)")


if __name__ == "__main__":
    main()
