"""MCP tools behind the approval gate: real reference servers (mcp-server-git, mcp-server-time,
npm server-filesystem) and a small FastMCP server for the edge cases, driven through the real
mistralai SDK against FakeMistral.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("mcp")

from IPython.core.error import UsageError
from mcp_servers.procs import alive, wait_gone

from cheq_jupyter import Decision, Policy, approve_all, mcp, reject_all, run_agent
from cheq_jupyter._cell import plan_cell
from cheq_jupyter.agent import arun_agent
from cheq_jupyter.approval import ApprovalRequest
from cheq_jupyter.card import origin_html
from cheq_jupyter.display import render_tool_result
from cheq_jupyter.errors import ConfigurationError, McpServerError, ToolDefinitionError
from cheq_jupyter.session import build_approver
from cheq_jupyter.testing import FakeMistral, call, text, tool_call, tool_calls

EDGE = str(Path(__file__).parent / "mcp_servers" / "edge.py")
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


class Recorder:
    """An approver that answers from a list and remembers what it was asked."""

    def __init__(self, *decisions: Decision) -> None:
        self.decisions = list(decisions)
        self.asked: list[ApprovalRequest] = []

    def __call__(self, request: ApprovalRequest) -> Decision:
        self.asked.append(request)
        return self.decisions.pop(0)


def run(fake: FakeMistral, **kwargs: Any) -> Any:
    return run_agent("help", client=fake.client(), **kwargs)


def tool_messages(fake: FakeMistral, index: int = 1) -> list[str]:
    return [m["content"] for m in fake.requests[index]["messages"] if m["role"] == "tool"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def edge_env(tmp_path: Path) -> dict[str, str]:
    return {"CALL_LOG": str(tmp_path / "calls.jsonl"), "NOTES": str(tmp_path / "notes.json")}


def calls(env: dict[str, str]) -> list[dict[str, Any]]:
    try:
        with open(env["CALL_LOG"]) as f:
            return [json.loads(line) for line in f]
    except FileNotFoundError:
        return []


def notes(env: dict[str, str]) -> list[str]:
    try:
        with open(env["NOTES"]) as f:
            return list(json.load(f))
    except FileNotFoundError:
        return []


@pytest.fixture
def edge(edge_env: dict[str, str]) -> Iterator[mcp.McpToolset]:
    with mcp.stdio(sys.executable, EDGE, env=edge_env, timeout=20) as toolset:
        yield toolset


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q")
    git(path, "config", "user.email", "t@example.com")
    git(path, "config", "user.name", "Tester")
    (path / "data.csv").write_text("a,b\n1,2\n")
    git(path, "add", "data.csv")
    git(path, "commit", "-q", "-m", "initial data")
    (path / "clean.py").write_text("print('clean')\n")
    return path


@pytest.fixture
def gitserver(repo: Path) -> Iterator[mcp.McpToolset]:
    exe = shutil.which("mcp-server-git", path=str(BIN)) or shutil.which("mcp-server-git")
    if exe is None:
        pytest.skip("mcp-server-git is not installed (scripts/test installs it)")
    with mcp.stdio(exe, "--repository", str(repo), timeout=30) as toolset:
        yield toolset


# -- the real git server ----------------------------------------------------------------------


def test_git_server_tools_carry_schema_origin_and_the_servers_claims(
    gitserver: mcp.McpToolset,
) -> None:
    names = [t.name for t in gitserver.tools]
    assert {"git_status", "git_add", "git_commit", "git_reset"} <= set(names)
    status = gitserver["git_status"]
    assert status.origin == "MCP server mcp-server-git"
    assert status.annotations["readOnlyHint"] is True
    assert gitserver["git_reset"].annotations["destructiveHint"] is True
    assert status.to_mistral()["function"]["parameters"]["required"] == ["repo_path"]
    assert gitserver.connected


def test_approved_read_runs_on_the_git_server(gitserver: mcp.McpToolset, repo: Path) -> None:
    script = [tool_call("git_status", {"repo_path": str(repo)}), text("One file is new.")]
    with FakeMistral(script) as fake:
        result = run(fake, tools=[gitserver], approver=approve_all)
    [record] = result.tool_calls
    assert record.status == "ran"
    assert "clean.py" in tool_messages(fake)[0]
    assert record.request.origin == "MCP server mcp-server-git"
    assert record.request.annotations["readOnlyHint"] is True


def test_rejected_write_leaves_the_repository_unchanged(
    gitserver: mcp.McpToolset, repo: Path
) -> None:
    before = git(repo, "status", "--porcelain")
    script = [tool_call("git_add", {"repo_path": str(repo), "files": ["clean.py"]}),
              text("I did not stage it.")]
    approver = Recorder(Decision.reject("Not yet", by="tester"))
    with FakeMistral(script) as fake:
        result = run(fake, tools=[gitserver], approver=approver)
    assert git(repo, "status", "--porcelain") == before == "?? clean.py\n"
    assert result.tool_calls[0].status == "not_approved"
    assert "Not yet" in tool_messages(fake)[0]
    assert approver.asked[0].origin == "MCP server mcp-server-git"


def test_approved_write_changes_the_repository(gitserver: mcp.McpToolset, repo: Path) -> None:
    script = [tool_call("git_add", {"repo_path": str(repo), "files": ["clean.py"]}),
              text("Staged.")]
    with FakeMistral(script) as fake:
        result = run(fake, tools=[gitserver], approver=approve_all)
    assert result.tool_calls[0].status == "ran"
    assert git(repo, "status", "--porcelain") == "A  clean.py\n"


def test_edited_write_reaches_the_server_with_the_edited_arguments(
    gitserver: mcp.McpToolset, repo: Path
) -> None:
    git(repo, "add", "clean.py")
    asked = {"repo_path": str(repo), "message": "wip"}
    edited = {"repo_path": str(repo), "message": "Add the cleaning script"}
    script = [tool_call("git_commit", asked), text("Committed.")]
    approver = Recorder(Decision.approve(by="tester", modified_details=edited))
    with FakeMistral(script) as fake:
        result = run(fake, tools=[gitserver], approver=approver)
    assert git(repo, "log", "-1", "--format=%s").strip() == "Add the cleaning script"
    assert result.tool_calls[0].effective_arguments == edited
    assert "reviewer edited the arguments" in tool_messages(fake)[0]


def test_invalid_arguments_never_reach_the_server(
    edge: mcp.McpToolset, edge_env: dict[str, str]
) -> None:
    script = [tool_calls(call("add_note", {"text": 5}), call("add_note", {"txt": "x"}),
                         call("add_note", '{"text": NaN}'), call("add_note", "[1]")),
              text("Those were bad.")]
    approver = Recorder()
    with FakeMistral(script) as fake:
        result = run(fake, tools=[edge], approver=approver)
    assert approver.asked == []  # nobody was asked about an invalid call
    assert [r.status for r in result.tool_calls] == ["invalid"] * 4
    assert calls(edge_env) == []
    messages = tool_messages(fake)
    assert "text: 5 is not of type 'string'" in messages[0]
    assert "'text' is a required property" in messages[1]
    assert "not valid JSON" in messages[2]
    assert "must be a JSON object" in messages[3]


def test_an_invalid_edit_never_reaches_the_server(
    edge: mcp.McpToolset, edge_env: dict[str, str]
) -> None:
    script = [tool_call("add_note", {"text": "hello"}), text("ok")]
    approver = Recorder(Decision.approve(by="t", modified_details={"text": "x", "priority": "high"}))
    with FakeMistral(script) as fake:
        result = run(fake, tools=[edge], approver=approver)
    assert result.tool_calls[0].status == "not_approved"
    assert "edited arguments are invalid" in tool_messages(fake)[0]
    assert calls(edge_env) == [] and notes(edge_env) == []
    # The request carries the tool's own check, so a card refuses the same edit up front.
    assert approver.asked[0].check is not None
    assert approver.asked[0].check({"text": "x", "priority": "high"})
    assert approver.asked[0].check({"text": "x", "priority": 2}) == []


def test_schema_defaults_are_reported(edge: mcp.McpToolset) -> None:
    full, filled = edge["add_note"].with_defaults({"text": "a"})
    assert full == {"text": "a", "priority": 1} and filled == ("priority",)


# -- policy: annotations never approve by themselves ------------------------------------------


def test_annotations_alone_approve_nothing(edge: mcp.McpToolset, edge_env: dict[str, str]) -> None:
    script = [tool_call("read_notes", {}), text("No.")]
    with FakeMistral(script) as fake:
        result = run(fake, tools=[edge], approver=Policy())
    assert result.tool_calls[0].status == "not_approved"
    assert calls(edge_env) == []


def test_approve_read_only_trusts_only_the_read_only_claim(
    edge: mcp.McpToolset, edge_env: dict[str, str]
) -> None:
    asker = Recorder(Decision.reject("no writes", by="tester"), Decision.reject("no", by="tester"))
    script = [tool_calls(call("read_notes", {}), call("add_note", {"text": "x"}),
                         call("wipe_notes", {})), text("Read only.")]
    with FakeMistral(script) as fake:
        result = run(fake, tools=[edge], approver=Policy(ask=asker, approve_read_only=True))
    read, add, wipe = result.tool_calls
    assert read.status == "ran"
    assert "claim of MCP server" in read.decision.decision_note
    assert "read-only" in read.decision.decision_note
    # A write, and a tool claiming read-only *and* destructive, went to the human.
    assert [r.action for r in asker.asked] == ["add_note", "wipe_notes"]
    assert add.status == wipe.status == "not_approved"
    assert [c["tool"] for c in calls(edge_env)] == ["read_notes"]


def test_an_explicit_rule_beats_the_read_only_claim(edge: mcp.McpToolset) -> None:
    policy = Policy(rules={"read_notes": "deny"}, approve_read_only=True)
    with FakeMistral([tool_call("read_notes", {}), text("denied")]) as fake:
        result = run(fake, tools=[edge], approver=policy)
    assert result.tool_calls[0].status == "not_approved"


# -- results ----------------------------------------------------------------------------------


def test_images_are_shown_in_the_cell_and_the_model_gets_a_placeholder(
    edge: mcp.McpToolset,
) -> None:
    with FakeMistral([tool_call("picture", {}), text("A pixel.")]) as fake:
        result = run(fake, tools=[edge], approver=approve_all)
    [record] = result.tool_calls
    sent = tool_messages(fake)[0]
    assert "a red pixel" in sent and "[image (image/png), shown to the user" in sent
    assert record.value.images[0][0] == "image/png"
    assert record.value.images[0][1] not in sent
    shown = render_tool_result(record)["text/html"]
    assert "<img src='data:image/png;base64," in shown


def test_structured_content_and_resource_links(edge: mcp.McpToolset) -> None:
    script = [tool_calls(call("stats", {"values": [1, 2, 6]}), call("link", {})), text("ok")]
    with FakeMistral(script) as fake:
        result = run(fake, tools=[edge], approver=approve_all)
    stats, link = result.tool_calls
    assert stats.value.structured == {"count": 3.0, "mean": 3.0}
    assert json.loads(tool_messages(fake)[0]) == {"count": 3.0, "mean": 3.0}
    assert link.value.links[0]["uri"] == "file:///tmp/report.csv"
    assert tool_messages(fake)[1] == "[resource link: report <file:///tmp/report.csv>]"


def test_is_error_is_an_error_tool_result(edge: mcp.McpToolset) -> None:
    with FakeMistral([tool_call("fail", {"reason": "disk full"}), text("It failed.")]) as fake:
        result = run(fake, tools=[edge], approver=approve_all)
    assert result.tool_calls[0].status == "failed"
    assert tool_messages(fake)[0].startswith("Error: fail raised McpToolError:")
    assert "cannot do that: disk full" in tool_messages(fake)[0]


def test_long_results_are_cut_for_the_model_with_a_note(edge: mcp.McpToolset) -> None:
    with FakeMistral([tool_call("big", {"size": 50_000}), text("Long.")]) as fake:
        result = run(fake, tools=[edge], approver=approve_all)
    sent = tool_messages(fake)[0]
    assert len(sent) < mcp.MODEL_RESULT_LIMIT + 200
    assert "[Truncated: the result has 50000 characters" in sent
    shown = render_tool_result(result.tool_calls[0])["text/html"]
    assert "<details>" in shown and "Full result (50000 characters" in shown


# -- lifecycle --------------------------------------------------------------------------------


def test_server_is_reused_across_runs(edge: mcp.McpToolset) -> None:
    pids = [edge["pid"].function() for _ in range(2)]
    with FakeMistral([tool_call("pid", {}), text("ok")]) as fake:
        result = run(fake, tools=[edge], approver=approve_all)
    assert pids[0] == pids[1] == str(result.tool_calls[0].value)


def test_a_crash_mid_call_is_an_error_result_and_the_next_use_restarts(
    edge: mcp.McpToolset,
) -> None:
    first = int(edge["pid"].function())
    with FakeMistral([tool_call("crash", {}), text("It crashed.")]) as fake:
        result = run(fake, tools=[edge], approver=approve_all)
    assert result.tool_calls[0].status == "failed"
    assert "McpServerError" in tool_messages(fake)[0]
    assert wait_gone(first)
    second = int(edge["pid"].function())
    assert second != first and alive(second)


def test_a_server_that_died_between_runs_is_started_again(edge: mcp.McpToolset) -> None:
    first = int(edge["pid"].function())
    os.kill(first, signal.SIGKILL)
    assert wait_gone(first)
    with FakeMistral([tool_call("pid", {}), text("ok")]) as fake:
        result = run(fake, tools=[edge], approver=approve_all)
    assert result.tool_calls[0].status == "ran"
    assert int(result.tool_calls[0].value) != first


def test_a_server_that_never_answers_times_out_without_hanging(
    edge_env: dict[str, str],
) -> None:
    with mcp.stdio(sys.executable, EDGE, env=edge_env, timeout=3) as slow:
        first = int(slow["pid"].function())
        started = time.monotonic()
        with FakeMistral([tool_call("hang", {}), text("Too slow.")]) as fake:
            result = run(fake, tools=[slow], approver=approve_all)
        assert time.monotonic() - started < 15
        assert result.tool_calls[0].status == "failed"
        assert "did not answer within 3 s" in tool_messages(fake)[0]
        assert wait_gone(first)
        assert int(slow["pid"].function()) != first  # restarted on next use


def test_a_server_that_fails_to_start_shows_its_stderr() -> None:
    broken = mcp.stdio(sys.executable, "-c",
                       "import sys; sys.stderr.write('no database at /nope\\n'); sys.exit(2)",
                       timeout=20)
    with pytest.raises(McpServerError) as info:
        broken.tools
    assert "failed to start" in str(info.value)
    assert "no database at /nope" in str(info.value)
    missing = mcp.stdio("/nonexistent/mcp-server-nothing", timeout=10)
    with pytest.raises(McpServerError, match="failed to start"):
        run_agent("x", tools=[missing], approver=approve_all, client=object())


def test_close_stops_the_server_process(edge_env: dict[str, str]) -> None:
    toolset = mcp.stdio(sys.executable, EDGE, env=edge_env, timeout=20)
    pid = int(toolset["pid"].function())
    assert alive(pid)
    toolset.close()
    assert not toolset.connected
    assert wait_gone(pid)


def test_servers_stop_when_python_exits(tmp_path: Path, edge_env: dict[str, str]) -> None:
    code = textwrap.dedent(f"""
        import sys
        from cheq_jupyter import mcp
        t = mcp.stdio(sys.executable, {EDGE!r}, env={edge_env!r})
        print(t["pid"].function(), flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert wait_gone(int(out.stdout.strip()))


# -- names ------------------------------------------------------------------------------------


def test_the_kernels_secrets_are_not_passed_to_a_server(
    edge: mcp.McpToolset, edge_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MISTRAL_API_KEY", "sk-secret")  # in the kernel when the server starts
    assert not edge.connected
    names = json.loads(edge["environment"].function())
    assert "MISTRAL_API_KEY" not in names
    assert "CALL_LOG" in names  # what env= gave it


def test_the_card_checks_edits_with_the_tools_own_check(edge: mcp.McpToolset) -> None:
    from cheq_jupyter.card import _default_validator

    tool = edge["add_note"]
    request = ApprovalRequest("add_note", "s", {"text": "a"}, "abcdefghi", schema={},
                              check=tool.check)
    assert _default_validator(request, {"text": "a", "priority": "high"})
    assert _default_validator(request, {"text": "b"}) == []


def test_tool_name_clashes_name_the_fix(edge_env: dict[str, str]) -> None:
    with mcp.stdio(sys.executable, EDGE, env=edge_env) as one, \
            mcp.stdio(sys.executable, EDGE, env=edge_env) as two:
        with pytest.raises(ToolDefinitionError, match=r"name=") as info:
            run_agent("x", tools=[one, two], approver=approve_all, client=object())
        assert "MCP server edge.py and MCP server edge.py" in str(info.value)

        def read_notes() -> str:
            """A Python tool with an MCP tool's name."""
            return ""

        with pytest.raises(ToolDefinitionError, match="a Python function"):
            run_agent("x", tools=[one, read_notes], approver=approve_all, client=object())
    with mcp.stdio(sys.executable, EDGE, env=edge_env, name="backup") as prefixed:
        assert prefixed["read_notes"].name == "backup_read_notes"
        assert prefixed["backup_read_notes"].server_name == "read_notes"
        assert prefixed["read_notes"].origin == "MCP server backup"


def test_rules_use_the_names_the_model_sees(edge_env: dict[str, str]) -> None:
    with mcp.stdio(sys.executable, EDGE, env=edge_env, name="team") as team:
        policy = Policy(rules={"team_add_note": "approve", "team_read_notes": "deny"})
        script = [tool_calls(call("team_add_note", {"text": "a"}), call("team_read_notes", {})),
                  text("ok")]
        with FakeMistral(script) as fake:
            result = run(fake, tools=[team], approver=policy)
    assert [r.status for r in result.tool_calls] == ["ran", "not_approved"]
    assert [c["tool"] for c in calls(edge_env)] == ["add_note"]


def test_a_missing_sdk_is_one_clear_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mcp", None)  # import mcp now raises ImportError
    with pytest.raises(ConfigurationError, match=r"pip install 'cheq-jupyter\[mcp\]'"):
        mcp.stdio("mcp-server-git")


def test_magic_reports_a_name_clash_with_the_fix(edge: mcp.McpToolset) -> None:
    def read_notes() -> str:
        """Mine."""
        return ""

    ns = {"edge": edge, "read_notes": read_notes}
    with pytest.raises(UsageError, match="name="):
        plan_cell(_args(tools="edge,read_notes"), "hi", ns, DEFAULTS)
    plan = plan_cell(_args(tools="edge.add_note,read_notes", deny="add_note"), "hi", ns,
                     DEFAULTS)
    assert plan.deny == ["add_note"]


def test_bad_arguments_to_the_constructors() -> None:
    with pytest.raises(ConfigurationError, match="name="):
        mcp.stdio("x", name="has space")
    with pytest.raises(ConfigurationError, match="not an http"):
        mcp.http("ftp://example.com")
    with pytest.raises(ConfigurationError, match="timeout"):
        mcp.stdio("x", timeout=0)


# -- other reference servers and transports ---------------------------------------------------


def test_time_server(tmp_path: Path) -> None:
    exe = shutil.which("mcp-server-time", path=str(BIN)) or shutil.which("mcp-server-time")
    if exe is None:
        pytest.skip("mcp-server-time is not installed (scripts/test installs it)")
    with mcp.stdio(exe, "--local-timezone", "UTC", timeout=30) as clock:
        script = [tool_call("get_current_time", {"timezone": "Europe/Paris"}), text("It is late.")]
        with FakeMistral(script) as fake:
            result = run(fake, tools=[clock], approver=approve_all)
    assert result.tool_calls[0].status == "ran"
    assert json.loads(tool_messages(fake)[0])["timezone"] == "Europe/Paris"


def _filesystem_server() -> Path:
    base = Path(os.environ.get("CHEQ_MCP_NPM_DIR", ROOT / ".cache" / "mcp-npm"))
    exe = base / "node_modules" / ".bin" / "mcp-server-filesystem"
    if not exe.exists():
        pytest.skip(f"npm @modelcontextprotocol/server-filesystem is not in {base} "
                    "(scripts/test installs it)")
    return exe


def test_npm_filesystem_server(tmp_path: Path) -> None:
    exe = _filesystem_server()
    (tmp_path / "report.md").write_text("# Q3\nrevenue up\n")
    with mcp.stdio(str(exe), str(tmp_path), timeout=60) as fs:
        assert fs["write_file"].annotations.get("readOnlyHint") is not True
        target = str(tmp_path / "summary.md")
        script = [
            tool_call("read_text_file", {"path": str(tmp_path / "report.md")}),
            tool_call("write_file", {"path": target, "content": "nothing"}),
            text("I read it and did not write."),
        ]
        with FakeMistral(script) as fake:
            result = run(fake, tools=[fs],
                         approver=Policy(ask=reject_all, approve_read_only=True))
    read, write = result.tool_calls
    assert read.status == "ran" and "revenue up" in read.result
    assert write.status == "not_approved"
    assert not Path(target).exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_server(edge_env: dict[str, str]) -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, EDGE, "--http", str(port)],
                            env={**os.environ, **edge_env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(10)


def test_streamable_http_server(http_server: str, edge_env: dict[str, str]) -> None:
    with mcp.http(http_server, headers={"X-Team": "data"}, name="remote", timeout=20) as remote:
        assert remote["read_notes"].origin == "MCP server remote"
        script = [tool_call("remote_add_note", {"text": "via http"}), text("Added.")]
        with FakeMistral(script) as fake:
            run(fake, tools=[remote], approver=approve_all)
    assert notes(edge_env) == ["1:via http"]


# -- async safety -----------------------------------------------------------------------------


def test_an_unreachable_http_server_fails_fast_without_showing_headers() -> None:
    port = _free_port()  # nothing listens there
    remote = mcp.http(f"http://127.0.0.1:{port}/mcp", headers={"Authorization": "Bearer sk-zz9"},
                      timeout=20)
    with pytest.raises(McpServerError, match="check the URL") as info:
        remote.tools
    assert "sk-zz9" not in str(info.value) and "sk-zz9" not in repr(remote)


def test_arun_agent_and_run_agent_inside_a_running_loop(edge: mcp.McpToolset) -> None:
    async def both() -> tuple[Any, Any]:
        with FakeMistral([tool_call("read_notes", {}), text("a")]) as fake:
            first = await arun_agent("x", tools=[edge], approver=approve_all,
                                     client=fake.client())
        # A notebook cell: a loop is running in this thread and run_agent blocks inside it.
        with FakeMistral([tool_call("read_notes", {}), text("b")]) as fake:
            second = run_agent("x", tools=[edge], approver=approve_all, client=fake.client())
        return first, second

    first, second = asyncio.run(both())
    assert first.tool_calls[0].status == second.tool_calls[0].status == "ran"


def test_arun_agent_keeps_the_event_loop_free_during_an_mcp_call(
    edge: mcp.McpToolset, edge_env: dict[str, str], tmp_path: Path
) -> None:
    flag = tmp_path / "flag"

    async def other_task() -> None:
        # Runs on the same loop: it can only answer the server if the call does not block it.
        while not any(c["tool"] == "wait_for" for c in calls(edge_env)):
            await asyncio.sleep(0.01)
        flag.write_text("here")

    async def both() -> Any:
        with FakeMistral([tool_call("wait_for", {"path": str(flag)}), text("ok")]) as fake:
            helper = asyncio.ensure_future(other_task())
            result = await arun_agent("x", tools=[edge], approver=approve_all,
                                      client=fake.client())
            await helper
            return result

    result = asyncio.run(both())
    assert result.tool_calls[0].status == "ran"
    assert str(result.tool_calls[0].value) == "seen"


# -- the magic's plan -------------------------------------------------------------------------


def _args(**given: Any) -> Any:
    fields = dict(on_timeout="reject", out=None, max_steps=None, timeout=None, tools=None,
                  approve=None, deny=None, model=None, approver=None, system=None, schema=None,
                  continue_=None, audit=None)
    fields.update(given)
    return SimpleNamespace(**fields)


DEFAULTS = {"model": "m", "timeout": 5.0, "max_steps": 3, "approver": "policy", "system": "",
            "audit_log": ""}


def test_magic_takes_a_toolset_one_of_its_tools_and_read_only(edge: mcp.McpToolset) -> None:
    def lookup(q: str) -> str:
        """Look up."""
        return q

    ns = {"edge": edge, "lookup": lookup}
    plan = plan_cell(_args(tools="edge,lookup", approve="read-only,lookup"), "hi", ns, DEFAULTS)
    assert {"read_notes", "add_note", "lookup"} <= set(plan.tools)
    assert plan.approve_read_only and plan.approve == ["lookup"]
    approver, _ = build_approver(plan)
    assert isinstance(approver, Policy) and approver.approve_read_only
    one = plan_cell(_args(tools="edge.add_note"), "hi", ns, DEFAULTS)
    assert list(one.tools) == ["add_note"]
    with pytest.raises(UsageError, match="has no tool 'nope'"):
        plan_cell(_args(tools="edge.nope"), "hi", ns, DEFAULTS)
    with pytest.raises(UsageError, match="not an MCP toolset"):
        plan_cell(_args(tools="lookup.x"), "hi", ns, DEFAULTS)


def test_magic_reports_a_server_that_cannot_start_as_a_usage_error() -> None:
    ns = {"db": mcp.stdio("/nonexistent/server", timeout=10)}
    with pytest.raises(UsageError, match="--tools db: The MCP server"):
        plan_cell(_args(tools="db"), "hi", ns, DEFAULTS)


def test_the_console_names_the_server_and_its_claims(edge: mcp.McpToolset) -> None:
    import io

    from cheq_jupyter.approvers.console import ConsoleApprover

    tool = edge["wipe_notes"]
    request = ApprovalRequest("wipe_notes", "wipe", {}, "abcdefghi", origin=tool.origin,
                              annotations=tool.annotations)
    out = io.StringIO()
    ConsoleApprover(stdin=io.StringIO("r\n\n"), stdout=out)(request)
    assert ("from MCP server edge.py; the server claims (not verified): read-only, destructive"
            in out.getvalue())


def test_card_header_labels_annotations_as_the_servers_claims(edge: mcp.McpToolset) -> None:
    tool = edge["wipe_notes"]
    request = ApprovalRequest("wipe_notes", "wipe", {}, "abcdefghi", origin=tool.origin,
                              annotations=tool.annotations)
    shown = origin_html(request)
    assert "from MCP server edge.py" in shown
    assert "the server claims: read-only, destructive" in shown
    assert "(not verified)" in shown
    assert origin_html(ApprovalRequest("f", "f", {}, "abcdefghi")) == ""
