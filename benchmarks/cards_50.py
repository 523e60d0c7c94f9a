"""Time to show 50 parallel approval cards (one model turn with 50 tool calls) in a real kernel.

Measured from the frontend's side with ``KernelFrontend``: from sending the execute request
of a cell that calls ``WidgetApprover(timeout=...).decide_all([...50 requests...])`` until the
frontend has seen all 50 ``cheq-card`` widgets; then it clicks **Reject all** so the cell
ends.  Baseline, alternating with it in the same kernel: a cell that displays 50 boxes built
from the same number and kind of plain ipywidgets models (the same shared layouts and styles
the card uses, the ``cheq-card`` class on each box so the same wait counts them) without
cheq-jupyter.  An information row shows the naive version of those widgets (each with its own
default layout and style models).  The kernel's CPU time from the start of the cell until the
cards are displayed is reported too.  Between rounds every widget is closed.

Targets: 50 cards visible within 1.0 s (median), and <= 2.0 x the plain-widgets baseline.

    python benchmarks/cards_50.py [--cards 50] [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _table import Row, print_table, ratio  # noqa: E402

from cheq_jupyter.testing import KernelFrontend  # noqa: E402

TARGET_S = 1.0
TARGET_RATIO = 2.0

SETUP = """
import html, json, time
import IPython.display as _ipd
import ipywidgets as w
from ipywidgets.widgets.widget_string import HTMLStyle, TextStyle
from IPython.display import display
from cheq_jupyter import ApprovalRequest, WidgetApprover

REQS = [
    ApprovalRequest(
        action="refund",
        summary=f"Refund order {1000 + i} for customer cus_{i:04d}",
        details={"customer": f"cus_{i:04d}", "order": 1000 + i, "amount": 12.5 + i,
                 "currency": "EUR", "reason": "Parcel arrived damaged <b>twice</b>"},
        tool_call_id=f"call{i:05d}",
        schema={"type": "object", "properties": {"customer": {"type": "string"},
                "order": {"type": "integer"}, "amount": {"type": "number"},
                "currency": {"type": "string"}, "reason": {"type": "string"}}},
    )
    for i in range(N)
]


def plain_turn(reqs, shared):
    # The card's widgets, one box per request, with plain ipywidgets and no cheq-jupyter.
    card_look = dict(border="1px solid #ccc", padding="4px 8px", margin="4px 0")
    if shared:  # the same models as the card: shared layouts and styles
        plain, card = w.Layout(), w.Layout(**card_look)
        fit = w.Layout(width="auto")  # the card's buttons size to their labels
        styles = {"html": HTMLStyle(), "text": TextStyle(), "button": w.ButtonStyle()}

        def opt(kind=None, look=None):
            extra = {"style": styles[kind]} if kind else {}
            return {"layout": look or (fit if kind == "button" else plain), **extra}
    else:  # naive: every widget makes its own default layout and style models
        def opt(kind=None, look=None):
            return {"layout": w.Layout(**card_look)} if look is not None else {}
        card = card_look
    boxes = []
    for r in reqs:
        text = json.dumps(r.details, indent=2, ensure_ascii=False)
        info = w.HTML(f"<b>{html.escape(r.action)}</b> — {html.escape(r.summary)}"
                      f"<pre class='cheq-args-view'>{html.escape(text)}</pre>", **opt("html"))
        args = w.Textarea(text, rows=min(12, text.count("\\n") + 2),
                          layout=w.Layout(display="none", width="100%"),
                          **({"style": styles["text"]} if shared else {}))
        feedback = w.HTML("", **opt("html"))
        note = w.Text(placeholder="Note (optional): why, or what to do instead", **opt("text"))
        buttons = [w.Button(description=d, button_style=s, icon=i, **opt("button"))
                   for d, s, i in (("Approve", "success", "check"),
                                   ("Reject", "danger", "times"), ("Edit", "", "pencil"))]
        for b in buttons:
            b.on_click(lambda _b: None)
        status = w.HTML("Waiting for your decision.", **opt("html"))
        boxes.append(w.VBox([info, args, feedback, note, w.HBox(buttons, **opt()), status],
                            _dom_classes=["cheq-card"],
                            **({"layout": card} if shared else opt(look=card))))
    group = w.HBox([w.Button(description="Approve all", button_style="success",
                             **opt("button")),
                    w.Button(description="Reject all", button_style="danger",
                             **opt("button"))], **opt())
    return w.VBox([w.HTML("<style></style>", **opt("html")),
                   w.HTML(f"{len(reqs)} of {len(reqs)} call(s) waiting", **opt("html")),
                   *boxes, group], **opt())
"""

# Each cell prints "SHOWN <kernel wall ms> <kernel CPU ms> <widget models>" measured from its
# start until the display call returned.
CARD_CELL = """
_marks = []
_orig_display = _ipd.display
def _timed_display(*a, **k):
    _orig_display(*a, **k)
    if not _marks:
        _marks.append((time.perf_counter(), time.process_time(), len(w.Widget.widgets)))
_ipd.display = _timed_display  # decide_all imports display when called
_t = (time.perf_counter(), time.process_time(), len(w.Widget.widgets))
try:
    _ds = WidgetApprover(timeout=120).decide_all(REQS)
finally:
    _ipd.display = _orig_display
print("SHOWN", (_marks[0][0] - _t[0]) * 1000, (_marks[0][1] - _t[1]) * 1000,
      _marks[0][2] - _t[2])
print("REJECTED", sum(d.status == "rejected" for d in _ds))
"""

PLAIN_CELL = """
_t = (time.perf_counter(), time.process_time(), len(w.Widget.widgets))
display(plain_turn(REQS, shared={shared}))
print("SHOWN", (time.perf_counter() - _t[0]) * 1000, (time.process_time() - _t[1]) * 1000,
      len(w.Widget.widgets) - _t[2])
"""

CLEANUP = "w.Widget.close_all()"


@dataclass
class Shown:
    frontend_s: float  # execute request sent -> the frontend has seen every card
    kernel_wall_ms: float
    kernel_cpu_ms: float
    models: int


def _shown(stdout: str) -> tuple[float, float, int]:
    line = next(x for x in stdout.splitlines() if x.startswith("SHOWN "))
    _, wall, cpu, models = line.split()
    return float(wall), float(cpu), int(models)


def show(kernel: KernelFrontend, variant: str, n: int) -> Shown:
    """Run one cell of ``variant`` ("cards", "plain", "naive"); time it from the frontend."""
    code = CARD_CELL if variant == "cards" else PLAIN_CELL.format(shared=variant == "plain")
    sent = time.perf_counter()
    ex = kernel.execute_async(code)
    kernel.wait_for_cards(n, execution=ex, timeout=120)
    elapsed = time.perf_counter() - sent
    if variant == "cards":
        kernel.click(kernel.find("cheq-reject-all", execution=ex)[0])
    result = ex.wait(timeout=120)
    assert result.status == "ok", result.error
    if variant == "cards":
        assert f"REJECTED {n}" in result.stdout, result.stdout
    wall, cpu, models = _shown(result.stdout)
    assert kernel.execute(CLEANUP).status == "ok"
    return Shown(elapsed, wall, cpu, models)


def measure(n: int, rounds: int) -> dict[str, list[Shown]]:
    variants = ("plain", "cards", "naive")
    runs: dict[str, list[Shown]] = {v: [] for v in variants}
    with KernelFrontend(cwd=str(ROOT)) as kernel:
        setup = kernel.execute(f"N = {n}\n" + SETUP)
        assert setup.status == "ok", setup.error
        for variant in variants:  # warm up imports and code paths
            show(kernel, variant, n)
        for _ in range(rounds):
            for variant in variants:
                runs[variant].append(show(kernel, variant, n))
    return runs


def rows(quick: bool = False, *, cards: int = 50, rounds: int | None = None) -> list[Row]:
    """The 50-card turn vs the same plain widgets, alternating (``quick``: 3 rounds)."""
    rounds = rounds or (3 if quick else 5)
    runs = measure(cards, rounds)

    def med(variant: str, what: str) -> float:
        return float(statistics.median(getattr(s, what) for s in runs[variant]))

    ms, base, naive = (med(v, "frontend_s") * 1000 for v in ("cards", "plain", "naive"))
    models = {v: runs[v][0].models for v in runs}
    r = ms / base
    label = f"{models['plain']} plain ipywidgets models (median of {rounds})"
    cpu, base_cpu = med("cards", "kernel_cpu_ms"), med("plain", "kernel_cpu_ms")
    return [
        Row(f"{cards} cards visible, from execute ({models['cards']} widget models)", ms, "ms",
            label, base, r, f"<= {TARGET_S * 1000:.0f} ms, ratio <= {TARGET_RATIO}",
            ms <= TARGET_S * 1000 and r <= TARGET_RATIO),
        Row(f"{cards} cards: kernel CPU from cell start to display", cpu, "ms CPU",
            label, base_cpu, ratio(cpu, base_cpu)),
        Row(f"{cards} naive plain boxes visible ({models['naive']} models, own layout+style)",
            naive, "ms", label, base, ratio(naive, base)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cards", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=None, help="default 5 (--quick: 3)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--detail", action="store_true",
                        help="also print every round's frontend and kernel times")
    args = parser.parse_args()
    if args.detail:
        for variant, shown in measure(args.cards, args.rounds or 3).items():
            for s in shown:
                print(f"{variant:<6} frontend {s.frontend_s * 1000:7.1f} ms  kernel wall "
                      f"{s.kernel_wall_ms:7.1f} ms  kernel CPU {s.kernel_cpu_ms:7.1f} ms  "
                      f"{s.models} models")
        return
    print_table(rows(args.quick, cards=args.cards, rounds=args.rounds),
                f"Time to show {args.cards} parallel approval cards in a real kernel "
                "(frontend's view), alternating with plain ipywidgets")


if __name__ == "__main__":
    main()
