"""Streaming latency: from a chunk leaving FakeMistral to its text being in the cell's output.

A real kernel runs ``%%mistral_agent`` against a FakeMistral in this process that streams a
200-word answer, one word every ``--gap`` ms (the fake notes the time each event leaves its
socket).  This process is the frontend: it reads the kernel's iopub messages as they arrive
and notes when each word first appears in the cell's output.  The same run measures the
display with coalescing on (at most 15 updates a second: the product) and off (one update per
word: the baseline), alternating.  Target: median latency <= 50 ms with coalescing on.

    python benchmarks/stream_latency.py [--gap 20] [--rounds 6] [--quick]
"""

from __future__ import annotations

import argparse
import html
import json
import re
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _table import Row, print_table, ratio  # noqa: E402

from cheq_jupyter.testing import FakeMistral, KernelFrontend, text  # noqa: E402

TARGET_MS = 50.0
ANSWER = " ".join(f"w{i}" for i in range(200))
_LIVE = re.compile(r"<div class='cheq-live'[^>]*>(.*?)</div>", re.S)


def _shown_text(content: dict[str, Any]) -> str | None:
    data = content.get("data", {})
    if "text/markdown" in data:
        return str(data.get("text/plain", ""))
    page = data.get("text/html", "")
    if "cheq-live" not in page:
        return None
    match = _LIVE.search(page)
    return html.unescape(match.group(1)) if match else None


def one_run(kernel: KernelFrontend, gap: float, coalesce: bool) -> tuple[list[float], float]:
    """Latencies (ms) of every word of one streamed answer, and display updates a second."""
    sent: list[tuple[float, str]] = []
    lock = threading.Lock()

    def on_event(_n: int, payload: str) -> None:
        stamp = time.perf_counter()
        if payload.startswith("data: {"):
            delta = json.loads(payload[6:])["choices"][0]["delta"].get("content")
            if isinstance(delta, str) and delta:
                with lock:
                    sent.append((stamp, delta))

    rate = 15 if coalesce else 1_000_000
    with FakeMistral([text(ANSWER)], chunk_pause=gap, on_event=on_event) as fake:
        setup = kernel.execute(
            f"import os, cheq_jupyter.display as _d\n_d.MAX_UPDATES_PER_SECOND = {rate}\n"
            f"os.environ['MISTRAL_API_KEY'] = {fake.api_key!r}\n"
            f"os.environ['MISTRAL_SERVER_URL'] = {fake.url!r}"
        )
        assert setup.status == "ok", setup.error
        running = kernel.execute_async("%%mistral_agent --audit ''\nSay it")
        seen: list[tuple[float, str]] = []
        handled = 0
        while not running.done:
            kernel.pump(0.5)
            now = time.perf_counter()
            for _t, content in running.outputs[handled:]:
                shown = _shown_text(content)
                if shown is not None:
                    seen.append((now, shown))
            handled = len(running.outputs)
    result = running.result()
    assert result.status == "ok", result.error
    latencies: list[float] = []
    cumulative = ""
    position = 0
    for stamp, piece in sent:
        cumulative += piece
        while position < len(seen) and not seen[position][1].startswith(cumulative):
            position += 1
        if position == len(seen):
            raise AssertionError(f"the cell never showed {cumulative[-30:]!r}")
        latencies.append((seen[position][0] - stamp) * 1000)
    duration = sent[-1][0] - sent[0][0]
    return latencies, len(seen) / duration if duration > 0 else float("nan")


def rows(quick: bool = False, *, gap_ms: float = 20.0, rounds: int | None = None) -> list[Row]:
    rounds = rounds or (2 if quick else 6)
    on: list[float] = []
    off: list[float] = []
    rates: list[float] = []
    with KernelFrontend() as kernel:
        warm = kernel.execute("%load_ext cheq_jupyter")
        assert warm.status == "ok", warm.error
        one_run(kernel, gap_ms / 1000, True)  # warm the SDK import in the kernel
        for i in range(rounds):
            order = [True, False] if i % 2 == 0 else [False, True]
            for coalesce in order:
                latencies, per_second = one_run(kernel, gap_ms / 1000, coalesce)
                (on if coalesce else off).extend(latencies)
                if coalesce:
                    rates.append(per_second)
    median_on, median_off = statistics.median(on), statistics.median(off)
    most = max(rates)
    return [
        Row(f"stream latency: chunk leaves fake -> text in cell, 1 word / {gap_ms:g} ms",
            median_on, "ms", "one display update per word (median)", median_off,
            ratio(median_on, median_off), f"<= {TARGET_MS:g} ms", median_on <= TARGET_MS),
        Row("live text display updates while streaming (coalesced, worst run)", most, "/s",
            "", None, None, "<= 15 /s (+1 first update)", most <= 16),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gap", type=float, default=20.0, help="ms between words")
    parser.add_argument("--rounds", type=int, default=None, help="default 6 (--quick: 2)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print_table(rows(args.quick, gap_ms=args.gap, rounds=args.rounds),
                "Streaming a 200-word answer into a real kernel's cell")


if __name__ == "__main__":
    main()
