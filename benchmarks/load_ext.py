"""``%load_ext cheq_jupyter`` cost in a fresh kernel, next to importing the mistralai SDK.

Each measurement starts a new kernel (nothing cached in ``sys.modules``) and times the line
inside the kernel with ``time.perf_counter``. Target: ``%load_ext`` adds <= 100 ms.

    python benchmarks/load_ext.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

from jupyter_client.manager import start_new_kernel

TARGET_MS = 100.0

CASES = {
    "empty line (baseline)": "pass",
    "%load_ext cheq_jupyter": "get_ipython().run_line_magic('load_ext', 'cheq_jupyter')",
    "import mistralai SDK (reference)": (
        "from cheq_jupyter._sdk import mistral_class; mistral_class()"
    ),
}


def time_in_fresh_kernel(code: str) -> float:
    km, kc = start_new_kernel(kernel_name="python3", extra_arguments=[])
    try:
        probe = (
            "import time as _t\n_s = _t.perf_counter()\n" + code +
            "\nprint(f'{(_t.perf_counter() - _s) * 1000:.3f}')"
        )
        out: list[str] = []

        def on_output(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                raise RuntimeError("\n".join(msg["content"]["traceback"]))

        kc.execute_interactive(probe, timeout=60, output_hook=on_output)
        return float("".join(out).strip().splitlines()[-1])
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.rounds):
        for name, code in CASES.items():
            results[name].append(time_in_fresh_kernel(code))
    base = statistics.median(results["empty line (baseline)"])
    sdk = statistics.median(results["import mistralai SDK (reference)"])
    print(f"fresh kernel per measurement, median of {args.rounds} ({sys.executable})")
    print(f"{'what':<34}{'median ms':>11}{'vs SDK import':>15}{'target':>10}")
    for name, values in results.items():
        ms = statistics.median(values) - (0 if name.startswith("empty") else base)
        target = f"<= {TARGET_MS:.0f}" if name.startswith("%load_ext") else ""
        print(f"{name:<34}{ms:>11.1f}{ms / sdk:>15.2f}{target:>10}")
    load = statistics.median(results["%load_ext cheq_jupyter"]) - base
    print("PASS" if load <= TARGET_MS else "OVER TARGET")


if __name__ == "__main__":
    main()
