"""The quickstart in a real browser: JupyterLab on loopback, Debian's Chromium via Playwright.

``test_quickstart_edit_approve_then_reject_with_note`` is a user's path through
``notebooks/quickstart.ipynb`` on the offline demo model: run the setup cells, run the first
``%%mistral_agent`` cell, press **Edit** on its card, change the new address, see the diff,
**Approve**; check the tool ran once, with the edited address; run the second
``%%mistral_agent`` cell, type a note and **Reject**; check nothing more changed and the answer
quotes the note.  On the way it checks the card in a narrow window (no label cut short, nothing
sticking out) and, at the end, that the browser console shows no error.

It runs in three frontends: JupyterLab with widget messages over kernel subshells (the default
since 4.4), JupyterLab with ``commsOverSubshells`` disabled in its user settings, and Jupyter
Notebook 7; on ipykernel 7 it asks the kernel (beside the page) whether a subshell was opened,
to prove which path the clicks took.  ``test_no_wait_cell_ends_and_a_later_click_finishes_the_run``
runs a ``--no-wait`` cell in JupyterLab and in Notebook 7: the cell ends with its card shown, a
click after it runs the tool and the answer appears in that cell's output.

``test_quick_clicks_after_typing_use_every_keystroke_on_a_slow_connection`` types and clicks at
once while the kernel's messages reach the page 300 ms late (a distant JupyterHub): the tool
must run with every typed character and the note must be whole.

Screenshots of every stage go to ``artifacts/browser/<test>/`` (``NN-FAILED-...`` when a stage
fails; the failure message names the stage and the screenshot and ends with the browser
console and the JupyterLab log).  The cell with the waiting card and its diff, cropped, goes to
``artifacts/browser/card.png``, and to ``docs/card.png`` (shown in the README) when that file
is missing or ``CHEQ_UPDATE_SCREENSHOT=1``.

Cells are run the way a person runs them: a click on the cell's prompt selects it, then
Shift+Enter (``notebook:run-cell-and-select-next``); "done" is the execution count in the
prompt, ``[n]``.  Widgets are found by the card's ``_dom_classes`` contract (``cheq-card``,
``cheq-edit``, ``cheq-args``, ``cheq-note``, ``cheq-approve``, ``cheq-reject``,
``cheq-status``).

Run them (about 30 s, each test starts its own JupyterLab and Chromium)::

    .venv/bin/pytest -m browser tests/test_browser.py
    CHEQ_UPDATE_SCREENSHOT=1 .venv/bin/pytest -m browser tests/test_browser.py  # new docs/card.png

The kernel runs on the test's own Python; ``CHEQ_BROWSER_KERNEL_PYTHON=.venv-k6/bin/python``
runs it on another environment's ipykernel (the server stays on this one).

It needs ``/usr/bin/chromium`` (or ``CHEQ_CHROMIUM``), ``playwright`` and ``jupyterlab``; when
one is missing the test FAILS, so CI cannot skip it silently; ``CHEQ_SKIP_BROWSER=1`` skips it
on purpose.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _lab import (
    CHROMIUM,
    LabNotebook,
    LabServer,
    clipped_labels,
    fresh_dir,
    launch_chromium,
    overflowing,
    remove,
)

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "notebooks" / "quickstart.ipynb"
SHOTS = ROOT / "artifacts" / "browser"
CARD_PNG = ROOT / "docs" / "card.png"



def _quickstart_cells() -> tuple[list[int], int, int, int, int]:
    """Cell indices: (setup cells, 1st agent cell, the next code cell, 2nd agent cell, the
    next code cell), found from the notebook, so added Markdown cells do not break the test."""
    cells = json.loads(QUICKSTART.read_text(encoding="utf-8"))["cells"]
    code = [i for i, c in enumerate(cells) if c["cell_type"] == "code"]
    agents = [i for i in code if "".join(cells[i]["source"]).startswith("%%mistral_agent")]
    assert len(agents) >= 2, "the quickstart no longer has two %%mistral_agent cells"
    first, second = agents[:2]
    after = [min(i for i in code if i > a) for a in (first, second)]
    for index, wanted in ((after[0], "CHANGES"), (after[1], "changes that really happened")):
        assert wanted in "".join(cells[index]["source"]), (
            f"cell {index} of the quickstart no longer prints {wanted!r}; update this test")
    return [i for i in code if i < first], first, after[0], second, after[1]


SETUP_CELLS, FIRST_AGENT, SHOW_CHANGES, SECOND_AGENT, SHOW_AFTER_REJECT = _quickstart_cells()

EDITED_EMAIL = "ada@edited.example"
NOTE = "Alan must confirm from his old address first"
STDOUT, MARKDOWN = "application/vnd.jupyter.stdout", "text/markdown"
CELL_TIMEOUT = 60.0  # seconds; a cell on the offline model takes well under one


def _missing() -> str | None:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return (f"Chromium is not installed at {CHROMIUM}; install Debian's chromium "
                "(apt-get install chromium) or set CHEQ_CHROMIUM to its path")
    for module, package in (("playwright", "playwright"), ("jupyterlab", "jupyterlab"),
                            ("jupyterlab_widgets", "jupyterlab_widgets"), ("notebook", "notebook")):
        if importlib.util.find_spec(module) is None:
            return f"the Python package {package} is not installed; pip install {package}"
    return None


#: The frontends the quickstart runs in: (app, comms over subshells).  JupyterLab 4.4+ sends
#: widget messages over kernel subshells by default; some users turn that off.
FRONTENDS = {
    "jupyterlab": ("lab", True),
    "jupyterlab-no-subshells": ("lab", False),
    "notebook7": ("notebook", True),
}
_NO_SUBSHELLS = {
    "@jupyterlab/apputils-extension/kernels-settings.jupyterlab-settings": {
        "commsOverSubshells": "disabled",
    },
}


@contextlib.contextmanager
def _lab_session(
    name: str, *, lag_ms: int = 0, app: str = "lab", subshells: bool = True,
    notebook_json: dict[str, object] | None = None,
) -> Iterator[LabNotebook]:
    """JupyterLab (or Notebook 7) with a fresh copy of the quickstart (or ``notebook_json``,
    saved under the same name) open in a fresh Chromium."""
    if os.environ.get("CHEQ_SKIP_BROWSER") == "1":
        pytest.skip("CHEQ_SKIP_BROWSER=1")
    missing = _missing()
    if missing:
        pytest.fail(f"The browser test cannot run: {missing}. Set CHEQ_SKIP_BROWSER=1 to "
                    "skip it on purpose.", pytrace=False)
    shots = SHOTS / name
    shutil.rmtree(shots, ignore_errors=True)
    home = fresh_dir("cheq-browser-")
    try:
        notebooks = home / "notebooks"
        notebooks.mkdir()
        if notebook_json is None:
            shutil.copy(QUICKSTART, notebooks / QUICKSTART.name)
        else:
            (notebooks / QUICKSTART.name).write_text(json.dumps(notebook_json))
        kernel_python = os.environ.get("CHEQ_BROWSER_KERNEL_PYTHON") or None
        with LabServer(notebooks, home=home, kernel_python=kernel_python, app=app,
                       settings=None if subshells else _NO_SUBSHELLS) as server, \
                launch_chromium(home / "chromium-profile", lag_ms=lag_ms) as page:
            notebook = LabNotebook(page, server, shots)
            with notebook.stage("opening the quickstart"):
                notebook.open(QUICKSTART.name)
            if app == "notebook":
                # Notebook 7.6 itself throws this while loading its settings, on any notebook
                # and with no settings of ours, before any cell has run; nothing else is excused.
                notebook.console = [m for m in notebook.console if m != (
                    "pageerror: Cannot read properties of undefined (reading 'schema')")]
            yield notebook
            problems = [m for m in notebook.console if m.startswith(("error", "pageerror"))]
            assert problems == [], f"errors in the browser console: {problems}"
    finally:
        remove(home)


@pytest.fixture(params=list(FRONTENDS))
def lab(request: pytest.FixtureRequest) -> Iterator[LabNotebook]:
    app, subshells = FRONTENDS[request.param]
    name = "quickstart" if request.param == "jupyterlab" else f"quickstart-{request.param}"
    with _lab_session(name, app=app, subshells=subshells) as notebook:
        notebook.subshells = subshells  # type: ignore[attr-defined]
        yield notebook


def _kernel_subshells(lab: LabNotebook) -> list[str] | None:
    """The kernel's subshells (asked beside the page), or None if it has none to offer."""
    from jupyter_client import BlockingKernelClient

    client = BlockingKernelClient(connection_file=str(lab.kernel_connection_file()))
    client.load_connection_file()
    client.start_channels()
    try:
        info = client.kernel_info(reply=True, timeout=10)["content"]
        if "kernel subshells" not in info.get("supported_features", []):
            return None
        msg = client.session.msg("list_subshell_request", {})
        client.control_channel.send(msg)
        while True:
            reply = client.control_channel.get_msg(timeout=10)
            if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                return list(reply["content"]["subshell_id"])
    finally:
        client.stop_channels()


@pytest.fixture
def slow_lab() -> Iterator[LabNotebook]:
    """As ``lab``, but everything the kernel sends reaches the page 300 ms late."""
    with _lab_session("slow-connection", lag_ms=300) as notebook:
        yield notebook


def _run_setup_cells(lab: LabNotebook, cells: list[int] = SETUP_CELLS) -> None:
    from playwright.sync_api import expect

    with lab.stage("running the setup cells"):
        for index in cells:
            lab.run(index)
            lab.wait_done(index, timeout=CELL_TIMEOUT)
            assert lab.errors(index) == [], f"cell {index} raised: {lab.errors(index)}"
        expect(lab.outputs_of_type(cells[0], STDOUT)).to_contain_text("offline demo model")


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

#: Records every text a streamed answer shows in a cell, as the DOM changes, with the position
#: of its output (an update re-renders the output, so elements do not last; positions do).
WATCH_LIVE_TEXT = """cell => {
  window.__cheqLive = [];
  new MutationObserver(() => {
    const outputs = Array.from(cell.querySelectorAll('.jp-OutputArea-child'));
    for (const live of cell.querySelectorAll('.cheq-live')) {
      const at = outputs.findIndex(o => o.contains(live));
      const seen = window.__cheqLive, last = seen[seen.length - 1];
      if (!last || last[0] !== at || last[1] !== live.textContent) {
        seen.push([at, live.textContent]);
      }
    }
  }).observe(cell, {subtree: true, childList: true, characterData: true});
}"""


def _saved_records(
    lab: LabNotebook, index: int, timeout: float = 20.0, marker: str = "cheq-record",
    containing: str = "",
) -> list[dict[str, Any]]:
    """Save the notebook (Ctrl+S) and return the saved outputs of cell ``index`` that carry
    the static decision record (what a reader without a kernel sees)."""
    lab.page.keyboard.press("Escape")
    lab.page.keyboard.press("Control+s")
    deadline = time.monotonic() + timeout
    while True:
        saved = lab.server.api("GET", f"/api/contents/{QUICKSTART.name}?content=1")
        found = []
        for output in saved["content"]["cells"][index].get("outputs", []):
            page = output.get("data", {}).get("text/html", "")
            page = "".join(page) if isinstance(page, list) else page
            if marker in page and containing in page:
                found.append(output["data"])
        if found or time.monotonic() > deadline:
            return found
        lab.page.wait_for_timeout(200)  # the save is asynchronous; poll the file


def test_quickstart_edit_approve_then_reject_with_note(lab: LabNotebook) -> None:
    from playwright.sync_api import expect

    _run_setup_cells(lab)
    first = lab.cell(FIRST_AGENT)
    card = first.locator(".cheq-card")
    with lab.stage("waiting for the first card"):
        lab.run(FIRST_AGENT)
        card.wait_for(state="visible", timeout=CELL_TIMEOUT * 1000)
        expect(card).to_contain_text("change_account_email")
        expect(card.locator(".cheq-status")).to_have_text("Waiting for your decision.")
        expect(first.locator(".cheq-countdown")).to_contain_text(
            re.compile(r"1 of 1 call\(s\) waiting for your decision, \d+:\d\d left"))
        expect(lab.prompt(FIRST_AGENT)).to_have_text(re.compile(r"\[\*\]"))  # the cell waits

    with lab.stage("the kernel shows busy while the card waits"):
        # JupyterLab resets its indicator when it opens a widget subshell; the wait says
        # "busy" again every second, so the user sees the cell is still running.
        expect(lab.busy_indicator()).to_be_visible(timeout=5_000)
        expect(first.locator(".cheq-mode")).to_contain_text("blocking mode")

    with lab.stage("editing the arguments"):
        card.locator(".cheq-edit").click()
        editor = card.locator(".cheq-args textarea")
        editor.wait_for(state="visible", timeout=10_000)
        original = editor.input_value()
        assert '"new_email": "ada@new-mail.example"' in original, original
        diff = card.locator(".cheq-feedback")
        expect(diff).to_contain_text("click outside the box (or press Tab)")
        editor.fill(original.replace("ada@new-mail.example", EDITED_EMAIL))
        # As the hint says: leaving the box sends the text; the kernel answers with the diff.
        editor.press("Tab")
        expect(diff.locator("ins")).to_have_text(f'"{EDITED_EMAIL}"', timeout=10_000)
        expect(diff.locator("del")).to_have_text('"ada@new-mail.example"')
        expect(diff).to_contain_text("Edited (the tool will run with these)")
        approve = card.locator(".cheq-approve")
        expect(approve).to_have_text(re.compile(r"^\s*Approve edited\s*$"))
        expect(approve).to_be_enabled()
        assert clipped_labels(card) == []
        lab.scroll_to_top_of(FIRST_AGENT)
        first.screenshot(path=str(SHOTS / "card.png"))  # the cell, cropped, for the README
        if os.environ.get("CHEQ_UPDATE_SCREENSHOT") == "1" or not CARD_PNG.exists():
            CARD_PNG.parent.mkdir(exist_ok=True)
            shutil.copy(SHOTS / "card.png", CARD_PNG)

    with lab.stage("looking at the card in a narrow window"):
        # A laptop-sized window with the file browser open: every label stays readable.
        size = lab.page.viewport_size
        lab.page.set_viewport_size({"width": 900, "height": size["height"]})
        expect(card).to_be_visible()
        assert clipped_labels(card) == [], "labels cut short in a narrow window"
        assert overflowing(card) == [], "parts of the card stick out of it"

    with lab.stage("approving the edited call"):
        lab.page.set_viewport_size(size)
        first.evaluate(WATCH_LIVE_TEXT)
        approve.click()
        status = card.locator(".cheq-status")
        expect(status).to_contain_text("edited and approved by card", timeout=10_000)
        lab.wait_done(FIRST_AGENT, timeout=CELL_TIMEOUT)
        expect(first.locator(".cheq-countdown")).to_have_text("All calls decided.")
        for control in ("cheq-approve", "cheq-reject", "cheq-edit"):
            expect(card.locator(f".{control}")).to_be_disabled()
        expect(card.locator(".cheq-args textarea")).to_be_disabled()
        answer = lab.outputs_of_type(FIRST_AGENT, MARKDOWN)  # the model's final answer
        expect(answer).to_have_count(1)
        expect(answer).to_contain_text(f"Account acct_1042 now uses {EDITED_EMAIL}")
        assert lab.errors(FIRST_AGENT) == []

    with lab.stage("the answer grew while it streamed"):
        seen = first.evaluate("() => window.__cheqLive")
        assert seen, "no streamed text was seen"
        answer_at = max(at for at, _ in seen)  # the answer is the last output that streamed
        grew = [t for at, t in seen if at == answer_at and t]
        assert len(grew) >= 2, f"the streamed answer was seen only as {grew!r}"
        assert all(b.startswith(a) and len(b) > len(a)
                   for a, b in itertools.pairwise(grew)), grew
        assert len(grew[0]) < len(answer.inner_text())  # first seen before it was complete

    with lab.stage("the decision is shown once, and kept for a reader without a kernel"):
        expect(first.locator(".cheq-card")).to_have_count(1)
        expect(first.locator(".cheq-record")).to_have_count(0)  # the live card shows it
        (record,) = _saved_records(lab, FIRST_AGENT)
        assert WIDGET_VIEW in record  # the record is the fallback of the card's own output
        page = "".join(record["text/html"])
        assert "Approval record" in page and "edited and approved by card" in page
        assert f'<ins>&quot;{EDITED_EMAIL}&quot;</ins>' in page
    with lab.stage("checking how the widget messages reached the kernel"):
        subshells = _kernel_subshells(lab)
        if subshells is not None:  # ipykernel 7: the frontend's setting decides
            if lab.subshells:  # type: ignore[attr-defined]
                assert subshells, "comms over subshells is on, but no subshell was opened"
            else:
                assert subshells == [], f"comms over subshells is off, yet {subshells}"

    with lab.stage("printing the changes"):
        lab.run(SHOW_CHANGES)
        lab.wait_done(SHOW_CHANGES, timeout=CELL_TIMEOUT)
        # The tool ran once, with the edited address.
        expect(lab.outputs_of_type(SHOW_CHANGES, STDOUT)).to_have_text(
            [f"[('acct_1042', '{EDITED_EMAIL}')]"])

    second = lab.cell(SECOND_AGENT)
    card2 = second.locator(".cheq-card")
    with lab.stage("waiting for the second card"):
        lab.run(SECOND_AGENT)
        card2.wait_for(state="visible", timeout=CELL_TIMEOUT * 1000)
        expect(card2).to_contain_text("alan@elsewhere.example")
        expect(lab.prompt(SECOND_AGENT)).to_have_text(re.compile(r"\[\*\]"))

    with lab.stage("rejecting with a note"):
        # Typed key by key, then Reject at once, faster than a person: every character must
        # reach the kernel before the click does.
        card2.locator(".cheq-note input").press_sequentially(NOTE)
        card2.locator(".cheq-reject").click()
        status2 = card2.locator(".cheq-status")
        expect(status2).to_contain_text("rejected by card", timeout=10_000)
        expect(status2).to_contain_text(NOTE)  # the note reached the kernel with the click
        lab.wait_done(SECOND_AGENT, timeout=CELL_TIMEOUT)
        expect(second.locator(".cheq-record")).to_have_count(0)
        (record,) = _saved_records(lab, SECOND_AGENT)
        assert "rejected by card at" in "".join(record["text/html"])
        assert NOTE in "".join(record["text/html"])
        answer = lab.outputs_of_type(SECOND_AGENT, MARKDOWN)
        expect(answer).to_have_count(1)
        expect(answer).to_contain_text(NOTE)  # the model explains, quoting the note
        assert lab.errors(SECOND_AGENT) == []

    with lab.stage("checking that nothing else changed"):
        lab.run(SHOW_AFTER_REJECT)
        lab.wait_done(SHOW_AFTER_REJECT, timeout=CELL_TIMEOUT)
        expect(lab.outputs_of_type(SHOW_AFTER_REJECT, STDOUT)).to_have_text(
            [f"changes that really happened: [('acct_1042', '{EDITED_EMAIL}')]"])


def test_quick_clicks_after_typing_use_every_keystroke_on_a_slow_connection(
    slow_lab: LabNotebook,
) -> None:
    """Type, then press the button at once, with the kernel's replies 300 ms late.

    ipywidgets holds back a widget's next state update until the kernel has answered the
    previous one, but sends a click at once: if the card sent the text on every keystroke, the
    click would overtake the last ones, and the tool would run with half-typed arguments
    (``ada@new-mail.example.`` instead of ``.org``) or the note would be cut short.
    """
    from playwright.sync_api import expect

    lab = slow_lab
    _run_setup_cells(lab)
    first = lab.cell(FIRST_AGENT)
    card = first.locator(".cheq-card")
    typed = "ada@new-mail.example.org"
    with lab.stage("typing an edit and approving at once"):
        lab.run(FIRST_AGENT)
        card.wait_for(state="visible", timeout=CELL_TIMEOUT * 1000)
        card.locator(".cheq-edit").click()
        editor = card.locator(".cheq-args textarea")
        editor.wait_for(state="visible", timeout=10_000)
        end_of_address = editor.input_value().index("ada@new-mail.example") + len(
            "ada@new-mail.example")
        editor.evaluate("(box, at) => { box.focus(); box.setSelectionRange(at, at); }",
                        end_of_address)
        editor.press_sequentially(".org")
        card.locator(".cheq-approve").click()
        expect(card.locator(".cheq-status")).to_contain_text("edited and approved by card",
                                                             timeout=10_000)
        lab.wait_done(FIRST_AGENT, timeout=CELL_TIMEOUT)
        expect(card.locator(".cheq-feedback ins")).to_have_text(f'"{typed}"')

    with lab.stage("printing the changes"):
        lab.run(SHOW_CHANGES)
        lab.wait_done(SHOW_CHANGES, timeout=CELL_TIMEOUT)
        expect(lab.outputs_of_type(SHOW_CHANGES, STDOUT)).to_have_text(
            [f"[('acct_1042', '{typed}')]"])

    second = lab.cell(SECOND_AGENT)
    card2 = second.locator(".cheq-card")
    with lab.stage("typing a note and rejecting at once"):
        lab.run(SECOND_AGENT)
        card2.wait_for(state="visible", timeout=CELL_TIMEOUT * 1000)
        card2.locator(".cheq-note input").press_sequentially(NOTE)
        card2.locator(".cheq-reject").click()
        expect(card2.locator(".cheq-status")).to_have_text(
            re.compile(rf"rejected by card at .*: {re.escape(NOTE)}$"), timeout=10_000)
        lab.wait_done(SECOND_AGENT, timeout=CELL_TIMEOUT)


def _no_wait_notebook() -> dict[str, object]:
    """The quickstart's setup cells, its first agent cell with ``--no-wait``, and a check."""
    nb = json.loads(QUICKSTART.read_text(encoding="utf-8"))
    cells = nb["cells"]
    agent = dict(cells[FIRST_AGENT])
    source = "".join(agent["source"])
    first_line, rest = source.split("\n", 1)
    agent["source"] = f"{first_line} --no-wait\n{rest}"
    check = {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
             "source": "print(type(first).__name__, CHANGES)"}
    self_check = {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                  "source": "%mistral_agent --check 30"}
    nb["cells"] = [cells[i] for i in SETUP_CELLS] + [agent, check, self_check]
    return nb


@pytest.mark.parametrize("app", ["lab", "notebook"])
def test_no_wait_cell_ends_and_a_later_click_finishes_the_run(app: str) -> None:
    """In a real frontend: the no-wait cell ends with its card shown; the click made after it
    runs the tool, and the answer appears in that cell's output, updated in place."""
    from playwright.sync_api import expect

    with _lab_session(f"no-wait-{app}", app=app, notebook_json=_no_wait_notebook()) as lab:
        _run_setup_cells(lab, list(range(len(SETUP_CELLS))))
        agent, check = len(SETUP_CELLS), len(SETUP_CELLS) + 1
        cell = lab.cell(agent)
        card = cell.locator(".cheq-card")
        with lab.stage("running the no-wait cell"):
            lab.run(agent)
            card.wait_for(state="visible", timeout=CELL_TIMEOUT * 1000)
            lab.wait_done(agent, timeout=CELL_TIMEOUT)  # [n]: the cell has ended
            expect(cell.locator(".cheq-mode")).to_contain_text(
                "no-wait mode (asked for with --no-wait")
            expect(card.locator(".cheq-status")).to_have_text("Waiting for your decision.")
            expect(lab.outputs_of_type(agent, MARKDOWN)).to_have_count(0)
        with lab.stage("approving after the cell ended"):
            card.locator(".cheq-approve").click()
            expect(card.locator(".cheq-status")).to_contain_text("approved by card",
                                                                 timeout=10_000)
            answer = cell.locator(".cheq-run .jp-RenderedMarkdown")
            expect(answer).to_contain_text("now uses ada@new-mail.example",
                                           timeout=CELL_TIMEOUT * 1000)
            expect(cell.locator(".cheq-run")).to_contain_text("change_account_email ran")
            # The decision shows once, on the card; the static record is the fallback of the
            # run area's own output, updated from the callback: what the saved file shows.
            expect(cell.locator(".cheq-run-record")).to_have_count(0)
            (record,) = _saved_records(lab, agent, marker="cheq-run-record",
                                       containing="Answer: ")
            assert WIDGET_VIEW in record
            page = "".join(record["text/html"])
            assert "approved by card" in page and "Answer: " in page
        with lab.stage("reading the result in the next cell"):
            lab.run(check)
            lab.wait_done(check, timeout=CELL_TIMEOUT)
            expect(lab.outputs_of_type(check, STDOUT)).to_have_text(
                ["AgentResult [('acct_1042', 'ada@new-mail.example')]"])
        with lab.stage("the self-check: a click reaches the busy kernel here"):
            self_check = check + 1
            lab.run(self_check)
            button = lab.cell(self_check).locator(".cheq-check-click")
            button.wait_for(state="visible", timeout=CELL_TIMEOUT * 1000)
            button.click()
            lab.wait_done(self_check, timeout=CELL_TIMEOUT)
            printed = lab.outputs_of_type(self_check, STDOUT)
            expect(printed).to_contain_text("Clicks arrive")
            expect(printed).to_contain_text("Mode: blocking (the self-check saw a click")
