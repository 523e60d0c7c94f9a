"""Loop overhead: cheq-jupyter's gated loop vs the same 20 tool calls made with the bare SDK.

Both run in this process against one FakeMistral, alternating, so machine noise hits both.
Prints a table; the target is a ratio <= 1.05 (the gate costs at most 5 % of a run).

    python benchmarks/loop_overhead.py [--calls 20] [--rounds 15] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from _table import Row, print_table

from cheq_jupyter import approve_all, run_agent
from cheq_jupyter.testing import FakeMistral, text, tool_call

TARGET = 1.05


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


TOOL_SPEC = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


def script(calls: int) -> list[Any]:
    return [tool_call("add", {"a": i, "b": i}) for i in range(calls)] + [text("done")]


def bare_sdk(fake: FakeMistral, client: Any, calls: int) -> None:
    """What a careful user writes by hand: the loop with no approval and no validation."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "add things"}]
    while True:
        response = client.chat.complete(
            model="mistral-large-latest", messages=messages, tools=[TOOL_SPEC], tool_choice="auto"
        )
        message = response.choices[0].message
        if not message.tool_calls:
            return
        messages.append({
            "role": "assistant", "content": message.content or "",
            "tool_calls": [
                {"id": c.id, "type": "function",
                 "function": {"name": c.function.name, "arguments": c.function.arguments}}
                for c in message.tool_calls
            ],
        })
        for c in message.tool_calls:
            args = json.loads(c.function.arguments)
            messages.append({"role": "tool", "tool_call_id": c.id, "name": c.function.name,
                             "content": json.dumps(add(**args))})


def gated(fake: FakeMistral, client: Any, calls: int) -> None:
    # Plain requests, like the baseline (stream_overhead.py compares the streaming loop).
    result = run_agent("add things", tools=[add], approver=approve_all, client=client,
                       max_steps=calls + 1, stream=False)
    assert len(result.tool_calls) == calls and result.text == "done"


def measure(run: Callable[[FakeMistral, Any, int], None], calls: int) -> float:
    with FakeMistral(script(calls)) as fake:
        client = fake.client()
        started = time.perf_counter()
        run(fake, client, calls)
        return time.perf_counter() - started


def rows(quick: bool = False, *, calls: int = 20, rounds: int | None = None) -> list[Row]:
    """The gated loop vs the bare SDK loop, alternating rounds (``quick``: 5 rounds)."""
    rounds = rounds or (8 if quick else 30)
    measure(bare_sdk, 2), measure(gated, 2)  # warm imports and connection code
    bare: list[float] = []
    ours: list[float] = []
    ratios: list[float] = []
    for i in range(rounds):
        # ABBA order, and the ratio taken per round: slow spells of this shared machine hit
        # both sides of a ratio instead of one side of a median.
        pair = [(bare_sdk, bare), (gated, ours)]
        for run, times in pair if i % 2 == 0 else reversed(pair):
            times.append(measure(run, calls))
        ratios.append(ours[-1] / bare[-1])
    b, o = statistics.median(bare) * 1000, statistics.median(ours) * 1000
    r = statistics.median(ratios)
    return [Row(f"loop overhead: run_agent + approve_all, {calls} calls", o, "ms",
                f"bare SDK loop (median ratio of {rounds} rounds)", b, r, f"ratio <= {TARGET}",
                r <= TARGET)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=None, help="default 15 (--quick: 5)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print_table(rows(args.quick, calls=args.calls, rounds=args.rounds),
                f"{args.calls}-call tool loop against FakeMistral, alternating rounds")


if __name__ == "__main__":
    main()
