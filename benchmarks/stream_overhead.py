"""Streaming loop overhead: the gated streaming loop vs a bare SDK ``chat.stream`` loop.

Both make the same 20 streamed tool-call turns and a streamed 150-word answer against one
FakeMistral in this process, alternating (ABBA), so machine noise hits both; the ratio is
taken per round and its median reported.  Target: ratio <= 1.05.

    python benchmarks/stream_overhead.py [--calls 20] [--rounds 30] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from _table import Row, print_table
from loop_overhead import TOOL_SPEC, add

from cheq_jupyter import approve_all, run_agent
from cheq_jupyter.testing import FakeMistral, text, tool_call

TARGET = 1.05
ANSWER = " ".join(f"word{i}" for i in range(150))


def script(calls: int) -> list[Any]:
    return [tool_call("add", {"a": i, "b": i}) for i in range(calls)] + [text(ANSWER)]


def bare_stream(client: Any, calls: int) -> None:
    """A careful hand-written streaming loop: joins deltas, no approval, no validation."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "add things"}]
    while True:
        content: list[str] = []
        parts: dict[int, dict[str, Any]] = {}
        with client.chat.stream(model="mistral-large-latest", messages=messages,
                                tools=[TOOL_SPEC], tool_choice="auto") as stream:
            for event in stream:
                delta = event.data.choices[0].delta
                if isinstance(delta.content, str):
                    content.append(delta.content)
                for c in delta.tool_calls or []:
                    part = parts.setdefault(c.index or 0, {"id": "", "name": "", "args": []})
                    if c.id and c.id != "null":
                        part["id"] = c.id
                    part["name"] = part["name"] or c.function.name
                    part["args"].append(c.function.arguments)
        if not parts:
            assert "".join(content) == ANSWER
            return
        calls_ = [{"id": p["id"], "type": "function",
                   "function": {"name": p["name"], "arguments": "".join(p["args"])}}
                  for _, p in sorted(parts.items())]
        messages.append({"role": "assistant", "content": "".join(content),
                         "tool_calls": calls_})
        for c in calls_:
            args = json.loads(c["function"]["arguments"])
            messages.append({"role": "tool", "tool_call_id": c["id"], "name": "add",
                             "content": json.dumps(add(**args))})


def gated(client: Any, calls: int) -> None:
    result = run_agent("add things", tools=[add], approver=approve_all, client=client,
                       max_steps=calls + 1)
    assert len(result.tool_calls) == calls and result.text == ANSWER


def measure(run: Callable[[Any, int], None], calls: int) -> float:
    with FakeMistral(script(calls)) as fake:
        client = fake.client()
        started = time.perf_counter()
        run(client, calls)
        return time.perf_counter() - started


def rows(quick: bool = False, *, calls: int = 20, rounds: int | None = None) -> list[Row]:
    """The streaming gated loop vs the bare ``chat.stream`` loop (``quick``: 8 rounds)."""
    rounds = rounds or (8 if quick else 30)
    measure(bare_stream, 2), measure(gated, 2)  # warm imports and connection code
    bare: list[float] = []
    ours: list[float] = []
    ratios: list[float] = []
    for i in range(rounds):
        pair = [(bare_stream, bare), (gated, ours)]
        for run, times in pair if i % 2 == 0 else reversed(pair):
            times.append(measure(run, calls))
        ratios.append(ours[-1] / bare[-1])
    b, o = statistics.median(bare) * 1000, statistics.median(ours) * 1000
    r = statistics.median(ratios)
    return [Row(f"streaming loop overhead: {calls} streamed calls + 150-word answer", o, "ms",
                f"bare SDK chat.stream loop (median ratio of {rounds} rounds)", b, r,
                f"ratio <= {TARGET}", r <= TARGET)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=None, help="default 30 (--quick: 8)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print_table(rows(args.quick, calls=args.calls, rounds=args.rounds),
                f"{args.calls}-call streamed tool loop against FakeMistral, alternating rounds")


if __name__ == "__main__":
    main()
