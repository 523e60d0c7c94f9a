"""One table format for every benchmark: a metric, its baseline from the same run, the ratio.

Each benchmark module exposes ``rows(quick=False) -> list[Row]``; its ``main()`` and
``run_all.py`` print them with :func:`print_table`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Row", "fmt", "print_table", "ratio"]


@dataclass
class Row:
    """One measured number next to its baseline, measured in the same run.

    ``ok`` is True (PASS), False (OVER: the target is missed) or None (information only).
    """

    metric: str
    value: float | None
    unit: str
    baseline: str = ""
    baseline_value: float | None = None
    ratio: float | None = None
    target: str = ""
    ok: bool | None = None


def ratio(value: float | None, base: float | None) -> float | None:
    """``value / base``, or None when either is missing or the base is not positive."""
    if value is None or base is None or base <= 0:
        return None
    return value / base


def fmt(value: float | None) -> str:
    """Three significant figures or so, without exponents: 0.0123, 1.23, 12.3, 1234."""
    if value is None:
        return "-"
    size = abs(value)
    if size >= 100 or value == 0:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "OVER")


def print_table(rows: Sequence[Row], title: str = "") -> None:
    """Print ``rows`` as one aligned text table (with ``title`` above it)."""
    header = ("metric", "value", "unit", "baseline (same run)", "baseline", "ratio", "target",
              "result")
    cells = [
        (
            r.metric,
            fmt(r.value),
            r.unit,
            r.baseline or "-",
            fmt(r.baseline_value),
            "-" if r.ratio is None else f"{r.ratio:.2f}x",
            r.target or "(info)",
            _verdict(r.ok),
        )
        for r in rows
    ]
    widths = [max(len(str(c[i])) for c in [header, *cells]) for i in range(len(header))]
    numeric = {1, 4, 5}  # right-aligned columns

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if i in numeric else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    if title:
        print(title)
    print(line(header))
    print("-" * len(line(header)))
    for c in cells:
        print(line(c))
    checked = [r.ok for r in rows if r.ok is not None]
    if checked:
        over = checked.count(False)
        print(f"{len(checked) - over} of {len(checked)} targets met"
              + (f", {over} OVER" if over else ""))
