"""``%%mistral_agent`` end to end in a real kernel: cards clicked over the Jupyter protocol."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from cheq_jupyter.testing import FakeMistral, KernelFrontend, json_reply, text, tool_call
from cheq_jupyter.testing._kernel import Card, Execution

pytestmark = pytest.mark.kernel

SETUP = '''
%load_ext cheq_jupyter
import json
from pydantic import BaseModel
RAN = []
def change_email(account_id: str, new_email: str) -> str:
    """Change the e-mail address of an account."""
    RAN.append({"account_id": account_id, "new_email": new_email})
    return f"{account_id} now uses {new_email}"
def lookup(email: str) -> dict:
    """Find an account by e-mail."""
    RAN.append({"lookup": email})
    return {"account_id": "acct_1", "email": email}
class Contact(BaseModel):
    name: str
    email: str
'''


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KernelFrontend]:
    with KernelFrontend(cwd=str(tmp_path_factory.mktemp("nb"))) as k:
        result = k.execute(SETUP)
        assert result.status == "ok", result.error
        yield k


def use(kernel: KernelFrontend, fake: FakeMistral) -> None:
    result = kernel.execute(
        f"import os\nos.environ['MISTRAL_API_KEY'] = {fake.api_key!r}\n"
        f"os.environ['MISTRAL_SERVER_URL'] = {fake.url!r}\nRAN.clear()"
    )
    assert result.status == "ok", result.error


def ran(kernel: KernelFrontend) -> list[dict[str, Any]]:
    out = kernel.execute("print(json.dumps(RAN))")
    return json.loads(out.stdout.strip())


def start(kernel: KernelFrontend, cell: str) -> tuple[Execution, Card]:
    running = kernel.execute_async(cell)
    (card,) = kernel.wait_for_cards(1, execution=running)
    return running, card


CHANGE = tool_call("change_email", {"account_id": "acct_1", "new_email": "ada@new.example"})


def test_approve_in_the_card_runs_the_tool_and_shows_the_answer(kernel: KernelFrontend) -> None:
    with FakeMistral([CHANGE, text("Done: **acct_1** uses ada@new.example.")]) as fake:
        use(kernel, fake)
        running, card = start(kernel, "%%mistral_agent -t change_email -o res\nChange it")
        card.click("cheq-approve")
        result = running.wait()
    assert result.status == "ok", result.error
    assert ran(kernel) == [{"account_id": "acct_1", "new_email": "ada@new.example"}]
    markdown = [d["text/markdown"] for d in result.displays if "text/markdown" in d]
    assert markdown == ["Done: **acct_1** uses ada@new.example."]
    assert any("change_email ran" in d.get("text/plain", "") for d in result.displays)
    # The cell's value is the AgentResult, and -o bound it too.
    [value] = [c["data"] for t, c in result.outputs if t == "execute_result"]
    assert value["text/plain"].startswith("AgentResult(")
    assert kernel.execute("print(res is _, res.decisions[0].decided_by)").stdout == "True card\n"


def test_edit_in_the_card_runs_with_the_edited_arguments(kernel: KernelFrontend) -> None:
    with FakeMistral([CHANGE, text("Changed.")]) as fake:
        use(kernel, fake)
        running, card = start(kernel, "%%mistral_agent -t change_email\nChange it")
        card.set_value("cheq-args", json.dumps({"account_id": "acct_1",
                                                "new_email": "ada@checked.example"}))
        card.click("cheq-approve")
        result = running.wait()
    assert result.status == "ok", result.error
    assert ran(kernel) == [{"account_id": "acct_1", "new_email": "ada@checked.example"}]
    assert "edited" in card.status
    sent = [m["content"] for m in fake.requests[-1]["messages"] if m["role"] == "tool"]
    assert "ada@checked.example" in sent[0]


def test_reject_with_a_note_never_runs_the_tool(kernel: KernelFrontend) -> None:
    answer = "I did not change it: the reviewer says the customer must confirm first."
    with FakeMistral([CHANGE, text(answer)]) as fake:
        use(kernel, fake)
        running, card = start(kernel, "%%mistral_agent -t change_email\nChange it")
        card.set_value("cheq-note", "Customer must confirm first")
        card.click("cheq-reject")
        result = running.wait()
    assert result.status == "ok", result.error
    assert ran(kernel) == []
    [tool_message] = [m for m in fake.requests[-1]["messages"] if m["role"] == "tool"]
    assert tool_message["content"].endswith("Note from the reviewer: Customer must confirm first")
    assert [d["text/markdown"] for d in result.displays if "text/markdown" in d] == [answer]


def test_approve_option_runs_a_tool_without_any_card(kernel: KernelFrontend) -> None:
    with FakeMistral([tool_call("lookup", {"email": "a@b.example"}), text("Found it.")]) as fake:
        use(kernel, fake)
        result = kernel.execute("%%mistral_agent -t lookup --approve lookup\nFind a@b.example")
    assert result.status == "ok", result.error
    assert ran(kernel) == [{"lookup": "a@b.example"}]
    assert not [h for h in result.html if "cheq-record" in h]  # no card was shown


def test_schema_binds_a_pydantic_instance_to_out(kernel: KernelFrontend) -> None:
    with FakeMistral([json_reply({"name": "Ada", "email": "ada@example.com"})]) as fake:
        use(kernel, fake)
        result = kernel.execute("%%mistral_agent -s Contact -o contact\nAda, ada@example.com")
        check = kernel.execute("print(type(contact.output).__name__, contact.output.email)")
    assert result.status == "ok", result.error
    assert check.stdout == "Contact ada@example.com\n"
    assert any("cheq-output" in h and "ada@example.com" in h for h in result.html)


def test_continue_carries_the_conversation_on(kernel: KernelFrontend) -> None:
    with FakeMistral([text("Paris."), text("About two million.")]) as fake:
        use(kernel, fake)
        first = kernel.execute("%%mistral_agent -o first\nCapital of France?")
        second = kernel.execute("%%mistral_agent --continue first\nHow many people live there?")
    assert first.status == second.status == "ok"
    roles = [(m["role"], m["content"]) for m in fake.requests[1]["messages"]]
    assert roles == [("user", "Capital of France?"), ("assistant", "Paris."),
                     ("user", "How many people live there?")]


def test_a_usage_error_in_a_kernel_is_one_line_without_traceback(kernel: KernelFrontend) -> None:
    result = kernel.execute("%%mistral_agent -t nope\nhi")
    assert result.status == "error"
    assert result.error is None  # IPython shows a UsageError as one line, not a traceback
    assert result.stderr == (
        "UsageError: --tools names 'nope', which is not defined; define a function to use as a "
        "tool first.\n"
    )
