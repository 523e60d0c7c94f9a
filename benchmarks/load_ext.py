"""``%load_ext cheq_jupyter`` cost in a fresh kernel, next to importing the mistralai SDK.

Each measurement starts a new kernel (nothing cached in ``sys.modules``) and times the line
inside the kernel with ``time.perf_counter``. Target: ``%load_ext`` adds <= 100 ms.

    python benchmarks/load_ext.py [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

from _table import Row, print_table, ratio
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


def rows(quick: bool = False, *, rounds: int | None = None) -> list[Row]:
    """``%load_ext`` and the SDK import, each in fresh kernels (``quick``: 3 rounds)."""
    rounds = rounds or (3 if quick else 5)
    results: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(rounds):
        for name, code in CASES.items():
            results[name].append(time_in_fresh_kernel(code))
    base = statistics.median(results["empty line (baseline)"])
    load = statistics.median(results["%load_ext cheq_jupyter"]) - base
    sdk = statistics.median(results["import mistralai SDK (reference)"]) - base
    return [Row("%load_ext cheq_jupyter, fresh kernel", load, "ms",
                f"import mistralai SDK (median of {rounds})", sdk, ratio(load, sdk),
                f"<= {TARGET_MS:.0f} ms", load <= TARGET_MS)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=None, help="default 5 (--quick: 3)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print_table(rows(args.quick, rounds=args.rounds),
                f"fresh kernel per measurement, minus an empty line's time ({sys.executable})")


if __name__ == "__main__":
    main()
