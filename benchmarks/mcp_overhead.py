"""MCP overhead: 20 MCP tool calls through the gate (run_agent + approve_all) vs the same
calls made by hand with the bare ``mcp`` ClientSession.

Both sides talk to the same FakeMistral script and the same real reference server
(``mcp-server-time``), started once before timing; rounds alternate (ABBA) and the ratio is
taken per round.  The bare side is what a careful user writes: an asyncio loop with
``client.chat.complete`` and ``await session.call_tool``, no approval, no validation.
Target: ratio <= 1.10.

    python benchmarks/mcp_overhead.py [--calls 20] [--rounds N] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _table import Row, print_table

from cheq_jupyter import approve_all, mcp, run_agent
from cheq_jupyter.testing import FakeMistral, text, tool_call

TARGET = 1.10
ARGUMENTS = {"timezone": "UTC"}


def server_command() -> list[str]:
    exe = shutil.which("mcp-server-time", path=str(Path(sys.executable).parent))
    exe = exe or shutil.which("mcp-server-time")
    if exe is None:
        raise RuntimeError("mcp-server-time is not installed; pip install mcp-server-time")
    return [exe, "--local-timezone", "UTC"]


def script(calls: int) -> list[Any]:
    return [tool_call("get_current_time", ARGUMENTS) for _ in range(calls)] + [text("done")]


async def bare_round(session: Any, tool_spec: dict[str, Any], calls: int) -> float:
    with FakeMistral(script(calls)) as fake:
        client = fake.client()
        started = time.perf_counter()
        messages: list[dict[str, Any]] = [{"role": "user", "content": "what time is it"}]
        while True:
            # The same synchronous model request as run_agent makes: only the MCP side differs.
            response = client.chat.complete(
                model="mistral-large-latest", messages=messages, tools=[tool_spec],
                tool_choice="auto",
            )
            message = response.choices[0].message
            if not message.tool_calls:
                break
            messages.append({
                "role": "assistant", "content": message.content or "",
                "tool_calls": [
                    {"id": c.id, "type": "function",
                     "function": {"name": c.function.name, "arguments": c.function.arguments}}
                    for c in message.tool_calls
                ],
            })
            for c in message.tool_calls:
                result = await session.call_tool(c.function.name, json.loads(c.function.arguments))
                content = "\n".join(getattr(b, "text", "") for b in result.content)
                messages.append({"role": "tool", "tool_call_id": c.id, "name": c.function.name,
                                 "content": content})
        return time.perf_counter() - started


def gated_round(toolset: mcp.McpToolset, calls: int) -> float:
    with FakeMistral(script(calls)) as fake:
        client = fake.client()
        started = time.perf_counter()
        # Plain requests, like the baseline (stream_overhead.py measures streaming).
        result = run_agent("what time is it", tools=[toolset], approver=approve_all,
                           client=client, max_steps=calls + 1, stream=False)
        took = time.perf_counter() - started
    assert [r.status for r in result.tool_calls] == ["ran"] * calls and result.text == "done"
    return took


async def _measure(calls: int, rounds: int) -> tuple[list[float], list[float], list[float]]:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    command = server_command()
    params = StdioServerParameters(command=command[0], args=command[1:])
    toolset = mcp.stdio(*command, timeout=60)
    bare: list[float] = []
    ours: list[float] = []
    ratios: list[float] = []
    try:
        tool_spec = toolset["get_current_time"].to_mistral()  # starts the gated side's server
        async with stdio_client(params) as streams, \
                ClientSession(streams[0], streams[1]) as session:
            await session.initialize()
            await bare_round(session, tool_spec, 2)  # warm both sides
            await asyncio.to_thread(gated_round, toolset, 2)
            for i in range(rounds):
                if i % 2 == 0:
                    bare.append(await bare_round(session, tool_spec, calls))
                    ours.append(await asyncio.to_thread(gated_round, toolset, calls))
                else:
                    ours.append(await asyncio.to_thread(gated_round, toolset, calls))
                    bare.append(await bare_round(session, tool_spec, calls))
                ratios.append(ours[-1] / bare[-1])
    finally:
        toolset.close()
    return bare, ours, ratios


def rows(quick: bool = False, *, calls: int = 20, rounds: int | None = None) -> list[Row]:
    """The gated MCP run vs the bare ClientSession loop (``quick``: 6 rounds)."""
    rounds = rounds or (6 if quick else 20)
    bare, ours, ratios = asyncio.run(_measure(calls, rounds))
    b, o = statistics.median(bare) * 1000, statistics.median(ours) * 1000
    r = statistics.median(ratios)
    return [Row(f"MCP overhead: run_agent + approve_all, {calls} mcp-server-time calls", o, "ms",
                f"bare ClientSession loop (median ratio of {rounds} rounds)", b, r,
                f"ratio <= {TARGET}", r <= TARGET)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=None, help="default 20 (--quick: 6)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print_table(rows(args.quick, calls=args.calls, rounds=args.rounds),
                f"{args.calls} MCP tool calls against FakeMistral, alternating rounds")


if __name__ == "__main__":
    main()
