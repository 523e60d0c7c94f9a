"""Loop overhead: cheq-jupyter's gated loop vs the same 20 tool calls made with the bare SDK.

Both run in this process against one FakeMistral, alternating, so machine noise hits both.
Prints a table; the target is a ratio <= 1.05 (the gate costs at most 5 % of a run).

    python benchmarks/loop_overhead.py [--calls 20] [--rounds 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

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
    result = run_agent("add things", tools=[add], approver=approve_all, client=client,
                       max_steps=calls + 1)
    assert len(result.tool_calls) == calls and result.text == "done"


def measure(run: Callable[[FakeMistral, Any, int], None], calls: int) -> float:
    with FakeMistral(script(calls)) as fake:
        client = fake.client()
        started = time.perf_counter()
        run(fake, client, calls)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    measure(bare_sdk, 2), measure(gated, 2)  # warm imports and connection code
    bare: list[float] = []
    ours: list[float] = []
    for _ in range(args.rounds):
        bare.append(measure(bare_sdk, args.calls))
        ours.append(measure(gated, args.calls))
    b, o = statistics.median(bare), statistics.median(ours)
    ratio = o / b
    print(f"{args.calls}-call tool loop against FakeMistral, median of {args.rounds} rounds")
    print(f"{'run':<28}{'median ms':>12}{'ratio':>9}{'target':>9}")
    print(f"{'bare SDK (baseline)':<28}{b * 1000:>12.1f}{1.0:>9.3f}{'':>9}")
    print(f"{'run_agent + approve_all':<28}{o * 1000:>12.1f}{ratio:>9.3f}{'<= ' + str(TARGET):>9}")
    print("PASS" if ratio <= TARGET else "OVER TARGET")


if __name__ == "__main__":
    main()
