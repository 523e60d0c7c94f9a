"""Every benchmark, one table: each number next to its baseline measured in the same run.

    .venv/bin/python benchmarks/run_all.py [--quick]

Rows: click-to-resume latency and kernel CPU of a blocked cell (vs jupyter-ui-poll on
ipykernel 6.29), loop overhead (vs the bare SDK loop), ``%load_ext`` time (vs importing the
SDK), time to show 50 parallel cards (vs the same plain ipywidgets) and the audit log's cost
(vs a bare fsynced append / a run without the log), 20 MCP calls through the gate (vs the
bare ``mcp`` ClientSession), the streaming loop's overhead (vs a bare SDK ``chat.stream``
loop) and the time from a streamed chunk leaving the fake to its text in a cell (coalesced
display vs one update per chunk).  About 100 s on 2 cores; ``--quick``
takes fewer rounds (about 45 s).  Machines are noisy: read the ratios, and run again before
trusting a single OVER (the loop-overhead ratio moves by +-10 % on a shared, loaded machine).

The jupyter-ui-poll baseline needs ipykernel 6.29 (it hangs on 7.x); the first run creates
``.venv-k6`` for it (a venv with ``ipykernel==6.29.5`` and ``jupyter-ui-poll`` from PyPI,
and this checkout installed in it without dependencies).  The exit status is 1 only when a
benchmark failed to run; a missed target shows as OVER in the table.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import approval_latency  # noqa: E402
import audit_overhead  # noqa: E402
import cards_50  # noqa: E402
import load_ext  # noqa: E402
import loop_overhead  # noqa: E402
import mcp_overhead  # noqa: E402
import nowait_latency  # noqa: E402
import stream_latency  # noqa: E402
import stream_overhead  # noqa: E402
from _table import Row, print_table  # noqa: E402

#: What the baseline kernel needs (the module doc of approval_latency.py lists the same).
K6_PACKAGES = ["ipykernel==6.29.5", "ipywidgets", "jupyter_client", "jupyter-ui-poll",
               "pydantic", "mistralai"]
K6_CHECK = (
    "import ipykernel, jupyter_ui_poll, cheq_jupyter._blocking, sys; "
    "sys.exit(0 if ipykernel.__version__.startswith('6.29') else 3)"
)
#: A kernel started on loopback says this on stderr every time; it is not news here.
_KERNEL_NOISE = "Kernel is running over TCP without encryption"


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def ensure_baseline_env(venv: Path) -> str | None:
    """Make ``venv`` an ipykernel 6.29 + jupyter-ui-poll env if it is not; None when ready.

    An existing environment is never deleted: a broken one gets the packages installed
    into it again.  Returns a sentence saying what failed otherwise.
    """
    python = venv / "bin" / "python"

    def ready() -> bool:
        return python.exists() and subprocess.run(
            [str(python), "-c", K6_CHECK], capture_output=True, check=False, cwd=ROOT
        ).returncode == 0

    if ready():
        return None
    print(f"Setting up the baseline environment {venv} (ipykernel 6.29.5 and jupyter-ui-poll "
          "from PyPI, about a minute) ...", flush=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([*pip, *K6_PACKAGES], check=True)
        subprocess.run([*pip, "--no-deps", "-e", str(ROOT)], check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        return (f"Could not set up {venv} ({exc}); create it as the doc of "
                "benchmarks/approval_latency.py says, then run again.")
    if not ready():
        return (f"{venv} was set up but cannot import ipykernel 6.29, jupyter_ui_poll and "
                "cheq_jupyter; check it with its pip, then run again.")
    return None


class _KernelStderr:
    """Collect the stderr of this process and its kernels; replay it without the known noise."""

    def __enter__(self) -> _KernelStderr:
        sys.stderr.flush()
        self.saved = os.dup(2)
        self.file = tempfile.TemporaryFile(mode="w+b")
        os.dup2(self.file.fileno(), 2)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.file.seek(0)
        text = self.file.read().decode("utf-8", "replace")
        self.file.close()
        kept = [line for line in text.splitlines() if _KERNEL_NOISE not in line]
        if kept:
            print("\n".join(kept), file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (noisier)")
    parser.add_argument("--baseline-venv", type=Path, default=ROOT / ".venv-k6",
                        help="the ipykernel 6.29 environment for jupyter-ui-poll "
                        "(created if missing; default: .venv-k6)")
    args = parser.parse_args()
    started = time.monotonic()
    load = os.getloadavg()[0]
    problem = ensure_baseline_env(args.baseline_venv)
    if problem:
        print(problem, file=sys.stderr)
    baseline_python = str(args.baseline_venv / "bin" / "python")
    benchmarks: list[tuple[str, Callable[[], list[Row]]]] = [
        ("approval_latency", lambda: approval_latency.rows(
            args.quick, baseline_python=baseline_python)),
        ("loop_overhead", lambda: loop_overhead.rows(args.quick)),
        ("load_ext", lambda: load_ext.rows(args.quick)),
        ("cards_50", lambda: cards_50.rows(args.quick)),
        ("audit_overhead", lambda: audit_overhead.rows(args.quick)),
        ("mcp_overhead", lambda: mcp_overhead.rows(args.quick)),
        ("stream_overhead", lambda: stream_overhead.rows(args.quick)),
        ("stream_latency", lambda: stream_latency.rows(args.quick)),
        ("nowait_latency", lambda: nowait_latency.rows(args.quick)),
    ]
    rows: list[Row] = []
    timings: list[str] = []
    failed = False
    for name, measure in benchmarks:
        print(f"running {name} ...", end=" ", flush=True)
        began = time.monotonic()
        try:
            with _KernelStderr():
                rows += measure()
        except Exception as exc:
            failed = True
            traceback.print_exc()
            rows.append(Row(f"{name}: FAILED ({type(exc).__name__}: {exc})"[:100], None, "",
                            ok=False))
        took = time.monotonic() - began
        timings.append(f"{name} {took:.0f} s")
        print(f"{took:.0f} s", flush=True)

    print()
    print(f"cheq-jupyter benchmarks, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"
          f"{' (--quick)' if args.quick else ''}")
    print(f"Python {platform.python_version()}, ipykernel {_version('ipykernel')}, "
          f"ipywidgets {_version('ipywidgets')}, mistralai {_version('mistralai')}, "
          f"cheq-jupyter {_version('cheq-jupyter')}; {os.cpu_count()} CPUs, "
          f"load average {load:.2f} at start")
    print("Every baseline ran in this same run, alternating with what it is compared to; "
          "ratio = value / baseline.")
    print()
    print_table(rows)
    print(f"\n(total {time.monotonic() - started:.0f} s: {', '.join(timings)})")
    if problem:
        print(f"\nBaseline environment: {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
