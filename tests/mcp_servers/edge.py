"""A small MCP server (the SDK's FastMCP / MCPServer) for the edge cases of the MCP tests.

Every call is appended to the JSON-lines file in ``$CALL_LOG`` before it does anything, so a
test can tell whether a call reached the server.  ``$NOTES`` is the state the write tools
change.  Runs on mcp 1.x (FastMCP) and 2.x (MCPServer); ``--http PORT`` serves Streamable HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
from typing import Any

from mcp.types import ImageContent, ResourceLink, TextContent, ToolAnnotations

try:
    from mcp.server.mcpserver import MCPServer as Server
    from mcp.server.mcpserver.exceptions import ToolError
except ImportError:  # mcp 1.x
    from mcp.server.fastmcp import FastMCP as Server
    from mcp.server.fastmcp.exceptions import ToolError

server = Server("edge")
# A 1x1 PNG.
PIXEL = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201a5f3a4"
    "e10000000049454e44ae426082"
)).decode()
READ_ONLY = ToolAnnotations(readOnlyHint=True, destructiveHint=False, idempotentHint=True,
                            openWorldHint=False)


def _log(tool: str, **arguments: Any) -> None:
    with open(os.environ["CALL_LOG"], "a") as f:
        f.write(json.dumps({"tool": tool, "arguments": arguments}) + "\n")


def _notes() -> list[str]:
    try:
        with open(os.environ["NOTES"]) as f:
            return json.load(f)
    except FileNotFoundError:
        return []


@server.tool(annotations=READ_ONLY)
def read_notes() -> str:
    """Read every note."""
    _log("read_notes")
    return json.dumps(_notes())


@server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=False))
def add_note(text: str, priority: int = 1) -> str:
    """Add a note (changes the server's state)."""
    _log("add_note", text=text, priority=priority)
    notes = [*_notes(), f"{priority}:{text}"]
    with open(os.environ["NOTES"], "w") as f:
        json.dump(notes, f)
    return f"added note {len(notes)}"


@server.tool(annotations=ToolAnnotations(readOnlyHint=True, destructiveHint=True))
def wipe_notes() -> str:
    """Delete every note (claims read-only AND destructive)."""
    _log("wipe_notes")
    with open(os.environ["NOTES"], "w") as f:
        json.dump([], f)
    return "wiped"


@server.tool()
def fail(reason: str) -> str:
    """Always fails."""
    _log("fail", reason=reason)
    raise ToolError(f"cannot do that: {reason}")


@server.tool()
def picture() -> list[Any]:
    """An image and some text."""
    _log("picture")
    return [TextContent(type="text", text="a red pixel"),
            ImageContent(type="image", data=PIXEL, mimeType="image/png")]


@server.tool()
def link() -> list[Any]:
    """A resource link."""
    _log("link")
    return [ResourceLink(type="resource_link", name="report", uri="file:///tmp/report.csv",
                         mimeType="text/csv")]


@server.tool()
def stats(values: list[float]) -> dict[str, float]:
    """Mean and count (structured output)."""
    _log("stats", values=values)
    return {"count": float(len(values)), "mean": sum(values) / len(values)}


@server.tool()
def big(size: int) -> str:
    """A long text."""
    _log("big", size=size)
    return "x" * size


@server.tool()
def crash() -> str:
    """The server process dies during the call."""
    _log("crash")
    sys.stderr.write("edge: crashing on purpose\n")
    sys.stderr.flush()
    os._exit(3)


@server.tool()
async def hang() -> str:
    """Never answers (without blocking the server's other requests)."""
    _log("hang")
    await asyncio.sleep(3600)
    return "late"


@server.tool()
def environment() -> str:
    """The names of the server's environment variables."""
    return json.dumps(sorted(os.environ))


@server.tool()
def wait_for(path: str) -> str:
    """Answers once ``path`` exists (someone else must create it), or after 20 s."""
    _log("wait_for", path=path)
    deadline = time.monotonic() + 20
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return "seen" if os.path.exists(path) else "never appeared"


@server.tool()
def pid() -> str:
    """The server's process id."""
    return str(os.getpid())


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--http":
        port = int(sys.argv[2])
        try:
            server.run("streamable-http", port=port)
        except TypeError:  # mcp 1.x: FastMCP takes the port from its settings
            server.settings.port = port
            server.run("streamable-http")
    else:
        server.run()
