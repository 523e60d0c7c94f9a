"""Hostile MCP servers: names, descriptions, claims, schemas and results an attacker controls.

The promise holds when nothing reaches the server without an approval for exactly its
arguments, nothing hangs past the toolset's timeout, and nothing the server sends is rendered
as HTML or trusted as an approval.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mcp")

from cheq_jupyter import Decision, Policy, approve_all, mcp, run_agent
from cheq_jupyter.approval import ApprovalRequest
from cheq_jupyter.card import header_html
from cheq_jupyter.display import render_tool_result
from cheq_jupyter.errors import McpServerError
from cheq_jupyter.testing import FakeMistral, call, text, tool_call, tool_calls

HOSTILE = str(Path(__file__).parent.parent / "mcp_servers" / "hostile.py")
NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class Recorder:
    def __init__(self, *decisions: Decision) -> None:
        self.decisions = list(decisions)
        self.asked: list[ApprovalRequest] = []

    def __call__(self, request: ApprovalRequest) -> Decision:
        self.asked.append(request)
        return self.decisions.pop(0)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "calls.jsonl"


def reached(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def server(mode: str, log: Path, timeout: float = 20) -> mcp.McpToolset:
    return mcp.stdio(sys.executable, HOSTILE, mode, env={"CALL_LOG": str(log)}, timeout=timeout)


@pytest.fixture
def hostile(request: pytest.FixtureRequest, log: Path) -> Iterator[mcp.McpToolset]:
    with server(request.param, log) as toolset:
        yield toolset


def run(fake: FakeMistral, **kwargs: Any) -> Any:
    return run_agent("go", client=fake.client(), **kwargs)


def sent(fake: FakeMistral) -> list[str]:
    return [m["content"] for m in fake.requests[1]["messages"] if m["role"] == "tool"]


@pytest.mark.parametrize("hostile", ["names"], indirect=True)
def test_tool_names_the_api_refuses_are_cleaned_or_skipped(hostile: mcp.McpToolset) -> None:
    names = [t.name for t in hostile.tools]
    assert all(NAME.match(n) for n in names)
    assert names == ["functions_refund", "refund_", "_script_alert_1___script_", "dup", "ok"]
    assert len(hostile.skipped) == 3  # 100 characters, empty, the second 'dup'


@pytest.mark.parametrize("hostile", ["names"], indirect=True)
def test_a_raw_hostile_name_from_the_model_reaches_nothing(
    hostile: mcp.McpToolset, log: Path
) -> None:
    # The API refuses the raw names in a request; the model can only guess near misses.
    script = [tool_calls(call("refund", {}), call("functions_refund_", {})), text("no")]
    with FakeMistral(script) as fake:
        result = run(fake, tools=[hostile], approver=approve_all)
    assert [r.status for r in result.tool_calls] == ["invalid", "invalid"]
    assert reached(log) == []


@pytest.mark.parametrize("hostile", ["names"], indirect=True)
def test_a_cleaned_name_still_calls_the_servers_own_tool(
    hostile: mcp.McpToolset, log: Path
) -> None:
    with FakeMistral([tool_call("functions_refund", {}), text("ok")]) as fake:
        run(fake, tools=[hostile], approver=approve_all)
    assert [c["name"] for c in reached(log)] == ["functions.refund"]


@pytest.mark.parametrize("hostile", ["text"], indirect=True)
def test_a_huge_description_is_clipped_for_the_model(hostile: mcp.McpToolset) -> None:
    described = hostile["huge_description"].to_mistral()["function"]["description"]
    assert len(described) <= 4000


@pytest.mark.parametrize("hostile", ["text"], indirect=True)
def test_the_servers_own_name_and_markup_never_reach_the_card_as_html(
    hostile: mcp.McpToolset,
) -> None:
    tools = hostile.tools
    assert hostile.server_info["name"] == "<b>trusted</b> filesystem"
    for tool in tools:
        assert tool.origin == "MCP server hostile.py"  # the user's command, not its self-name
        request = ApprovalRequest(tool.name, "<img src=x onerror=alert(1)>", {"a": "<script>"},
                                  "abcdefghi", origin=tool.origin, annotations=tool.annotations,
                                  description=tool.description)
        shown = header_html(request, request.arguments_json())
        assert "<script" not in shown and "<img" not in shown and "<b>trusted" not in shown


@pytest.mark.parametrize("hostile", ["text"], indirect=True)
def test_a_read_only_claim_alone_approves_nothing(hostile: mcp.McpToolset, log: Path) -> None:
    approver = Recorder(Decision.reject("no", by="t"))
    with FakeMistral([tool_call("fake_claims", {}), text("no")]) as fake:
        result = run(fake, tools=[hostile], approver=approver)
    assert [r.action for r in approver.asked] == ["fake_claims"]
    assert result.tool_calls[0].status == "not_approved"
    assert reached(log) == []


@pytest.mark.parametrize("hostile", ["text"], indirect=True)
def test_contradicting_claims_are_asked(hostile: mcp.McpToolset, log: Path) -> None:
    approver = Recorder(Decision.reject("no", by="t"))
    with FakeMistral([tool_call("string_claims", {}), text("no")]) as fake:
        run(fake, tools=[hostile], approver=Policy(ask=approver, approve_read_only=True))
    assert [r.action for r in approver.asked] == ["string_claims"]
    assert reached(log) == []


@pytest.mark.parametrize("hostile", ["schemas"], indirect=True)
def test_schema_bombs_are_skipped(hostile: mcp.McpToolset) -> None:
    assert [t.name for t in hostile.tools] == ["self_ref", "remote_ref", "fine"]
    skipped = " ".join(hostile.skipped)
    assert "'too_deep'" in skipped and "'too_big'" in skipped and "'broken'" in skipped
    assert "'redos': its inputSchema has a pattern that could take exponential time" in skipped


@pytest.mark.parametrize("hostile", ["schemas"], indirect=True)
def test_unresolvable_or_recursive_schemas_refuse_the_call(
    hostile: mcp.McpToolset, log: Path
) -> None:
    script = [tool_calls(call("self_ref", {}), call("remote_ref", {"q": "x"})), text("no")]
    with FakeMistral(script) as fake:
        result = run(fake, tools=[hostile], approver=approve_all)
    assert [r.status for r in result.tool_calls] == ["invalid", "invalid"]
    assert all("could not be checked" in m for m in sent(fake))
    assert reached(log) == []


def test_a_listing_too_deep_to_parse_fails_within_the_timeout(log: Path) -> None:
    started = time.monotonic()
    with pytest.raises(McpServerError, match="did not finish starting within 3 s"):
        server("bomb", log, timeout=3).tools
    assert time.monotonic() - started < 15


def test_a_server_that_never_initializes_fails_within_the_timeout(log: Path) -> None:
    started = time.monotonic()
    with pytest.raises(McpServerError, match="did not finish starting"):
        server("silent", log, timeout=3).tools
    assert time.monotonic() - started < 15


def test_an_answer_to_another_request_is_a_timeout_not_a_hang(log: Path) -> None:
    with server("wrong-id", log, timeout=3) as slow:
        started = time.monotonic()
        with FakeMistral([tool_call("ok", {}), text("no")]) as fake:
            result = run(fake, tools=[slow], approver=approve_all)
        assert time.monotonic() - started < 15
    assert result.tool_calls[0].status == "failed"
    assert "did not answer within 3 s" in sent(fake)[0]


@pytest.mark.parametrize("hostile", ["garbage"], indirect=True)
def test_noise_on_stdout_does_not_break_the_session(hostile: mcp.McpToolset) -> None:
    with FakeMistral([tool_call("ok", {}), text("ok")]) as fake:
        result = run(fake, tools=[hostile], approver=approve_all)
    assert result.tool_calls[0].status == "ran" and sent(fake) == ["fine"]


@pytest.mark.parametrize("hostile", ["results"], indirect=True)
@pytest.mark.parametrize("name", ["huge", "many_blocks", "huge_error"])
def test_huge_results_are_cut_for_the_model_and_the_cell(
    hostile: mcp.McpToolset, name: str
) -> None:
    with FakeMistral([tool_call(name, {}), text("ok")]) as fake:
        result = run(fake, tools=[hostile], approver=approve_all)
    assert len(sent(fake)[0]) <= mcp.MODEL_RESULT_LIMIT + 200
    assert len(json.dumps(fake.requests[1])) < 2 * mcp.MODEL_RESULT_LIMIT
    assert len(render_tool_result(result.tool_calls[0])["text/html"]) < 1_200_000


@pytest.mark.parametrize("hostile", ["results"], indirect=True)
@pytest.mark.parametrize("name", ["svg", "bad_base64"])
def test_unsafe_images_are_not_rendered(hostile: mcp.McpToolset, name: str) -> None:
    with FakeMistral([tool_call(name, {}), text("ok")]) as fake:
        result = run(fake, tools=[hostile], approver=approve_all)
    shown = render_tool_result(result.tool_calls[0])["text/html"]
    assert "<img" not in shown and "<script" not in shown
    assert "not shown" in sent(fake)[0]


@pytest.mark.parametrize("hostile", ["results"], indirect=True)
def test_markup_in_a_result_is_escaped_in_the_cell(hostile: mcp.McpToolset) -> None:
    with FakeMistral([tool_call("html", {}), text("ok")]) as fake:
        result = run(fake, tools=[hostile], approver=approve_all)
    shown = render_tool_result(result.tool_calls[0])["text/html"]
    assert "<script>" not in shown and "&lt;script&gt;" in shown


@pytest.mark.parametrize("hostile", ["schemas"], indirect=True)
@pytest.mark.parametrize("raw", [
    '{"q": ' + "[" * 10_000 + "]" * 10_000 + "}",  # deeper than any parser should go
    '{"q": ' + "[" * 100 + "]" * 100 + "}",  # parses, but deeper than MCP arguments may be
    '{"q": 1e400}', '{"q": Infinity}', '{"q": "x", "q": NaN}',
])
def test_hostile_arguments_never_reach_the_server(
    hostile: mcp.McpToolset, log: Path, raw: str
) -> None:
    with FakeMistral([tool_call("fine", raw), text("no")]) as fake:
        result = run(fake, tools=[hostile], approver=approve_all)
    assert result.tool_calls[0].status == "invalid"
    assert reached(log) == []
