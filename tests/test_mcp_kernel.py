"""``%%mistral_agent -t server`` in a real kernel: MCP calls on approval cards, clicked over the
Jupyter protocol; the server outlives cells and stops with the kernel."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("mcp")

from mcp_servers.procs import alive, wait_gone

from cheq_jupyter.testing import FakeMistral, KernelFrontend, text, tool_call
from cheq_jupyter.testing._kernel import Card, Execution

pytestmark = pytest.mark.kernel

EDGE = str(Path(__file__).parent / "mcp_servers" / "edge.py")


def setup_code(tmp: Path) -> str:
    env = {"CALL_LOG": str(tmp / "calls.jsonl"), "NOTES": str(tmp / "notes.json")}
    return (
        "%load_ext cheq_jupyter\n"
        "import json, sys\n"
        "from cheq_jupyter import mcp\n"
        f"notes = mcp.stdio(sys.executable, {EDGE!r}, env={env!r})\n"
        f"NOTES = {env['NOTES']!r}\n"
        f"CALLS = {env['CALL_LOG']!r}\n"
        "def stored():\n"
        "    try:\n"
        "        return json.load(open(NOTES))\n"
        "    except FileNotFoundError:\n"
        "        return []\n"
    )


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KernelFrontend]:
    tmp = tmp_path_factory.mktemp("mcpnb")
    with KernelFrontend(cwd=str(tmp)) as k:
        result = k.execute(setup_code(tmp))
        assert result.status == "ok", result.error
        yield k
        # A shutdown request (not the hard kill of KernelFrontend.shutdown) lets the kernel
        # stop its servers on the way out, so no test leaves one behind.
        k.km.shutdown_kernel(now=False)


def use(kernel: KernelFrontend, fake: FakeMistral) -> None:
    result = kernel.execute(
        f"import os\nos.environ['MISTRAL_API_KEY'] = {fake.api_key!r}\n"
        f"os.environ['MISTRAL_SERVER_URL'] = {fake.url!r}"
    )
    assert result.status == "ok", result.error


def stored(kernel: KernelFrontend) -> list[str]:
    return list(json.loads(kernel.execute("print(json.dumps(stored()))").stdout))


def server_pid(kernel: KernelFrontend) -> str:
    return kernel.execute("print(notes['pid'].function())").stdout.strip()


def start(kernel: KernelFrontend, cell: str) -> tuple[Execution, Card]:
    running = kernel.execute_async(cell)
    (card,) = kernel.wait_for_cards(1, execution=running)
    return running, card


def test_card_shows_the_server_and_its_claims_and_approve_runs_on_the_server(
    kernel: KernelFrontend,
) -> None:
    with FakeMistral([tool_call("add_note", {"text": "<b>q3</b>"}), text("Noted.")]) as fake:
        use(kernel, fake)
        running, card = start(kernel, "%%mistral_agent -t notes --audit ''\nNote q3")
        assert "from MCP server edge.py" in card.html
        assert "the server claims: may change things, not destructive (not verified)" in card.html
        assert "<b>q3</b>" not in card.html  # the model's text is escaped
        card.click("cheq-approve")
        result = running.wait()
    assert result.status == "ok", result.error
    assert stored(kernel) == ["1:<b>q3</b>"]


def test_an_edit_in_the_card_reaches_the_server_and_a_bad_edit_cannot_be_approved(
    kernel: KernelFrontend,
) -> None:
    before = stored(kernel)
    with FakeMistral([tool_call("add_note", {"text": "draft"}), text("Noted.")]) as fake:
        use(kernel, fake)
        running, card = start(kernel, "%%mistral_agent -t notes.add_note --audit ''\nNote it")
        card.set_value("cheq-args", json.dumps({"text": "final", "priority": "high"}))
        kernel.wait_until(lambda: card.state("cheq-approve")["disabled"], timeout=30,
                          what="the card to refuse an edit the server's schema refuses")
        assert "priority" in card.text("cheq-feedback")
        card.set_value("cheq-args", json.dumps({"text": "final", "priority": 3}))
        kernel.wait_until(lambda: not card.state("cheq-approve")["disabled"], timeout=30,
                          what="the card to accept a valid edit")
        card.click("cheq-approve")
        result = running.wait()
    assert result.status == "ok", result.error
    assert stored(kernel) == [*before, "3:final"]


def test_reject_leaves_the_server_unchanged_and_the_server_is_reused(
    kernel: KernelFrontend,
) -> None:
    before, pid = stored(kernel), server_pid(kernel)
    with FakeMistral([tool_call("add_note", {"text": "drop"}), text("Not done.")]) as fake:
        use(kernel, fake)
        running, card = start(kernel, "%%mistral_agent -t notes.add_note --audit ''\nAdd drop")
        card.click("cheq-reject")
        result = running.wait()
    assert result.status == "ok", result.error
    assert stored(kernel) == before
    assert server_pid(kernel) == pid  # not restarted per cell


def test_read_only_opt_in_runs_without_a_card(kernel: KernelFrontend) -> None:
    with FakeMistral([tool_call("read_notes", {}), text("Read.")]) as fake:
        use(kernel, fake)
        running = kernel.execute_async(
            "%%mistral_agent -t notes --approve read-only --audit '' -o r\nRead the notes"
        )
        result = running.wait()
    assert result.status == "ok", result.error
    assert kernel.cards(execution=running) == []
    note = kernel.execute("print(r.decisions[0].decision_note)").stdout
    assert "claim of MCP server edge.py" in note
    assert any("read_notes ran" in d.get("text/plain", "") for d in result.displays)


def test_line_magic_lists_the_connected_server_and_its_tools(kernel: KernelFrontend) -> None:
    out = kernel.execute("%mistral_agent")
    listing = "".join(d.get("text/plain", "") for d in out.displays)
    assert "MCP servers (annotations are the servers' own claims):" in listing
    assert "edge.py [stdio, connected]" in listing
    assert "read_notes()  (server claims: readOnly, idempotent)" in listing


def test_interrupting_a_hanging_call_frees_the_cell_and_keeps_the_server(
    kernel: KernelFrontend,
) -> None:
    log = Path(kernel.execute("print(CALLS)").stdout.strip())

    def hanging() -> bool:
        return log.exists() and '"hang"' in log.read_text()

    running = kernel.execute_async("notes['hang'].function()")
    kernel.wait_until(hanging, timeout=30, what="the hang call to reach the server")
    kernel.interrupt()
    result = running.wait(timeout=30)
    assert result.status == "error" and result.error["ename"] == "KeyboardInterrupt"
    after = kernel.execute("print(notes['read_notes'].function())")
    assert after.status == "ok", after.error


def test_the_server_stops_when_the_kernel_shuts_down(tmp_path: Path) -> None:
    k = KernelFrontend(cwd=str(tmp_path)).start()
    try:
        assert k.execute(setup_code(tmp_path)).status == "ok"
        pid = int(server_pid(k))
        assert alive(pid)
        k.km.shutdown_kernel(now=False)  # a shutdown request, as the notebook's menu sends
    finally:
        k.shutdown()
    assert wait_gone(pid)

