"""Every notebook runs top to bottom under nbclient, offline, without anyone to click.

nbclient sends ``allow_stdin=False``, so cheq-jupyter picks the headless policy: nothing
waits, and every call that needed a human is refused with a note saying so.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.kernel

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def execute(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    for var in ("MISTRAL_API_KEY", "MISTRAL_SERVER_URL", "CQ_API_KEY", "CQ_BASE_URL",
                "CHEQ_JUPYTER_APPROVER"):
        monkeypatch.delenv(var, raising=False)
    copy = tmp_path / name
    shutil.copy(Path(__file__).parent.parent / "notebooks" / name, copy)
    nb = nbformat.read(copy, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    return nb


def text_of(nb: Any) -> str:
    parts: list[str] = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out["text"])
            for key in ("text/plain", "text/markdown"):
                parts.append(str(out.get("data", {}).get(key, "")))
    return "\n".join(parts)


def test_every_notebook_is_checked() -> None:
    assert {p.name for p in NOTEBOOKS} == {
        "quickstart.ipynb", "human_in_the_loop.ipynb", "structured_extraction.ipynb",
        "policies_and_headless.ipynb", "cheqpoint_inbox.ipynb", "mcp_tools.ipynb",
    }


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_offline_headless_without_errors(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nb = execute(path.name, tmp_path, monkeypatch)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    out = text_of(nb)
    assert "offline demo model" in out
    assert os.environ.get("MISTRAL_API_KEY") is None  # the notebook's key stayed in its kernel


def test_quickstart_headless_never_runs_the_risky_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = text_of(execute("quickstart.ipynb", tmp_path, monkeypatch))
    assert "using the policy approver" in out
    assert "changes that really happened: []" in out
    assert "No reviewer was present to approve change_account_email" in out
    from cheq_jupyter import audit

    records = audit.load(tmp_path / "cheq-audit.jsonl")
    assert {(r.tool, r.status) for r in records} >= {
        ("lookup_account", "approved"), ("change_account_email", "rejected")}


def test_cheqpoint_notebook_applies_the_inbox_edit_and_rejection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = text_of(execute("cheqpoint_inbox.ipynb", tmp_path, monkeypatch))
    assert "[('acme', 90.0)]" in out  # the inbox edited 120 down to 90 before approving
    assert "We keep customer records for 10 years." in out


def test_mcp_notebook_reads_on_the_claim_and_never_writes_unreviewed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mcp")
    out = text_of(execute("mcp_tools.ipynb", tmp_path, monkeypatch))
    assert "on the claim of MCP server mcp-server-git that git_status is read-only" in out
    assert "No reviewer was present to approve git_add" in out
    assert "No reviewer was present to approve git_reset" in out
    # The scripted reviewer narrowed git_add to the script and rejected the reset.
    assert "git_add: ran - edited and approved by Ana" in out
    assert "git_reset: not_approved - rejected by Ana" in out
    assert out.rstrip().count("A  clean.py\n M sales.csv") == 1
