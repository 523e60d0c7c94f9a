"""notebooks/mcp_tools.ipynb in a real browser: JupyterLab and Debian's Chromium (Playwright).

A user's path on the offline demo model with the real ``mcp-server-git``: the read-only cell
runs without a card (approved on the server's claim, by opt-in); the ``git_add`` card shows the
server and its claims, the user narrows ``files`` to ``["clean.py"]`` and approves; the
``git_reset`` card is rejected with a note; ``git status`` shows exactly that.  Screenshots go
to ``artifacts/browser/mcp/``.  Needs what tests/test_browser.py needs (``CHEQ_SKIP_BROWSER=1``
skips it on purpose).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from _lab import CHROMIUM, LabNotebook, LabServer, fresh_dir, launch_chromium, remove

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "mcp_tools.ipynb"
SHOTS = ROOT / "artifacts" / "browser" / "mcp"
STDOUT, MARKDOWN = "application/vnd.jupyter.stdout", "text/markdown"
NOTE = "keep the staged cleaning script"
CELL_TIMEOUT = 90.0


def _cells() -> tuple[list[int], list[int], list[int]]:
    """(setup cells, the three %%mistral_agent cells, the code cell after each of them)."""
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    code = [i for i, c in enumerate(cells) if c["cell_type"] == "code"]
    agents = [i for i in code if "".join(cells[i]["source"]).startswith("%%mistral_agent")]
    assert len(agents) == 3, "mcp_tools.ipynb no longer has three %%mistral_agent cells"
    after = [min(i for i in code if i > a) for a in agents]
    return [i for i in code if i < agents[0]], agents, after


SETUP, AGENTS, AFTER = _cells()


@pytest.fixture
def lab() -> Iterator[LabNotebook]:
    if os.environ.get("CHEQ_SKIP_BROWSER") == "1":
        pytest.skip("CHEQ_SKIP_BROWSER=1")
    pytest.importorskip("mcp")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"Chromium is not installed at {CHROMIUM}; set CHEQ_SKIP_BROWSER=1 to skip "
                    "the browser tests on purpose.", pytrace=False)
    shutil.rmtree(SHOTS, ignore_errors=True)
    home = fresh_dir("cheq-mcp-browser-")
    try:
        notebooks = home / "notebooks"
        notebooks.mkdir()
        shutil.copy(NOTEBOOK, notebooks / NOTEBOOK.name)
        with LabServer(notebooks, home=home) as server, \
                launch_chromium(home / "chromium-profile") as page:
            notebook = LabNotebook(page, server, SHOTS)
            with notebook.stage("opening the notebook"):
                notebook.open(NOTEBOOK.name)
            yield notebook
            problems = [m for m in notebook.console if m.startswith(("error", "pageerror"))]
            assert problems == [], f"errors in the browser console: {problems}"
    finally:
        remove(home)


def test_mcp_notebook_read_on_claim_edit_a_write_reject_a_reset(lab: LabNotebook) -> None:
    from playwright.sync_api import expect

    with lab.stage("running the setup cells"):
        for index in SETUP:
            lab.run(index)
            lab.wait_done(index, timeout=CELL_TIMEOUT)
            assert lab.errors(index) == [], f"cell {index} raised: {lab.errors(index)}"

    read, add, reset = AGENTS
    with lab.stage("reads run on the server's claim, without a card"):
        lab.run(read)
        lab.wait_done(read, timeout=CELL_TIMEOUT)
        assert lab.cell(read).locator(".cheq-card").count() == 0
        expect(lab.cell(read)).to_contain_text(
            "on the claim of MCP server mcp-server-git that git_status is read-only")

    card = lab.cell(add).locator(".cheq-card")
    with lab.stage("the write's card names the server and its claims"):
        lab.run(add)
        card.wait_for(state="visible", timeout=CELL_TIMEOUT * 1000)
        origin = card.locator(".cheq-origin")
        expect(origin).to_contain_text("from MCP server mcp-server-git")
        expect(origin).to_contain_text("the server claims: may change things, not destructive")
        expect(origin).to_contain_text("(not verified)")

    with lab.stage("narrowing the files and approving"):
        card.locator(".cheq-edit").click()
        editor = card.locator(".cheq-args textarea")
        editor.wait_for(state="visible", timeout=10_000)
        edited = json.loads(editor.input_value())
        assert "clean.py" in edited["files"] and len(edited["files"]) > 1, edited
        edited["files"] = ["clean.py"]
        editor.fill(json.dumps(edited, indent=2))
        editor.press("Tab")
        approve = card.locator(".cheq-approve")
        expect(approve).to_have_text(re.compile(r"^\s*Approve edited\s*$"), timeout=10_000)
        approve.click()
        expect(card.locator(".cheq-status")).to_contain_text("edited and approved by card",
                                                            timeout=10_000)
        lab.wait_done(add, timeout=CELL_TIMEOUT)
        lab.run(AFTER[1])
        lab.wait_done(AFTER[1], timeout=CELL_TIMEOUT)
        expect(lab.outputs_of_type(AFTER[1], STDOUT)).to_contain_text("A  clean.py")
        expect(lab.outputs_of_type(AFTER[1], STDOUT)).to_contain_text("M sales.csv")

    card2 = lab.cell(reset).locator(".cheq-card")
    with lab.stage("rejecting the reset with a note"):
        lab.run(reset)
        card2.wait_for(state="visible", timeout=CELL_TIMEOUT * 1000)
        expect(card2.locator(".cheq-origin")).to_contain_text("destructive")
        card2.locator(".cheq-note input").fill(NOTE)
        card2.locator(".cheq-note input").press("Tab")
        card2.locator(".cheq-reject").click()
        expect(card2.locator(".cheq-status")).to_contain_text(NOTE, timeout=10_000)
        lab.wait_done(reset, timeout=CELL_TIMEOUT)
        expect(lab.outputs_of_type(reset, MARKDOWN)).to_contain_text(NOTE)
        lab.run(AFTER[2])
        lab.wait_done(AFTER[2], timeout=CELL_TIMEOUT)
        expect(lab.outputs_of_type(AFTER[2], STDOUT)).to_contain_text("A  clean.py")
