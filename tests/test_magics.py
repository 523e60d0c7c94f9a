"""``%%mistral_agent`` in a fresh IPython shell: parsing, interpolation, every UsageError."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from cheq_jupyter.agent import AgentResult
from cheq_jupyter.testing import FakeMistral, json_reply, text, tool_call

SETUP = '''
from pydantic import BaseModel
ran = []
def lookup(customer: str) -> str:
    """Look a customer up."""
    ran.append(("lookup", customer))
    return f"{customer} is on the gold plan"
def refund(customer: str, amount: float) -> str:
    """Refund a customer."""
    ran.append(("refund", customer, amount))
    return "refunded"
class Invoice(BaseModel):
    customer: str
    total: float
not_a_function = 42
'''


@pytest.fixture
def shell(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[InteractiveShell]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHEQ_JUPYTER_APPROVER", raising=False)
    sh = InteractiveShell()
    sh.run_line_magic("load_ext", "cheq_jupyter")
    sh.run_cell(SETUP)
    yield sh
    InteractiveShell.clear_instance()


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    def start(script: list[Any]) -> FakeMistral:
        fake = FakeMistral(script)
        fake.start()
        monkeypatch.setenv("MISTRAL_API_KEY", fake.api_key)
        monkeypatch.setenv("MISTRAL_SERVER_URL", fake.url)
        started.append(fake)
        return fake

    started: list[FakeMistral] = []
    yield start
    for fake in started:
        fake.close()


def usage_error(shell: InteractiveShell, cell: str, capsys: pytest.CaptureFixture[str]) -> str:
    result = shell.run_cell(cell)
    err = capsys.readouterr()
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    assert "Traceback" not in err.out + err.err
    message = str(result.error_in_exec)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("%%mistral_agent --bogus\nhi", "unrecognized arguments: --bogus"),
        ("%%mistral_agent -t nope\nhi", "--tools names 'nope', which is not defined"),
        ("%%mistral_agent -t not_a_function\nhi", "which is a int, not a function"),
        ("%%mistral_agent -t lookup,lookup\nhi", "Two tools are named 'lookup'"),
        ("%%mistral_agent -s lookup\nhi", "--schema names 'lookup', which is not a pydantic model"),
        ("%%mistral_agent -s Missing\nhi", "--schema names 'Missing', which is not defined"),
        ("%%mistral_agent\nTell me about {customer}", "uses {customer} but 'customer' is not defined"),
        ("%%mistral_agent\nbad {", "braces could not be filled"),
        ("%%mistral_agent -o 1x\nhi", "-o/--out got '1x', which is not a Python name"),
        ("%%mistral_agent --max-steps 0\nhi", "--max-steps is 0; it must be at least 1"),
        ("%%mistral_agent --max-steps two\nhi", "invalid int value: 'two'"),
        ("%%mistral_agent --timeout -1\nhi", "--timeout is -1.0; give a positive number"),
        ("%%mistral_agent -t lookup --approve refund\nhi", "--approve names refund, which is not among"),
        ("%%mistral_agent -t lookup --approve lookup --deny lookup\nhi", "in both --approve and --deny"),
        ("%%mistral_agent --on-timeout approve\nhi", "fail closed"),
        ("%%mistral_agent --approver robot\nhi", "invalid choice: 'robot'"),
        ("%%mistral_agent --continue not_a_function\nhi", "which is a int, not an AgentResult"),
        ("%%mistral_agent\n   ", "The cell is empty"),
    ],
)
def test_user_mistakes_are_one_line_usage_errors(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str], cell: str, expected: str
) -> None:
    assert expected in usage_error(shell, cell, capsys)


def test_missing_key_says_how_to_set_it_and_how_to_run_offline(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MISTRAL_API_KEY", raising=False)
    message = usage_error(shell, "%%mistral_agent --approver policy\nhi", capsys)
    assert "%env MISTRAL_API_KEY=" in message
    assert "MISTRAL_SERVER_URL" in message
    assert shell.user_ns["ran"] == []


def test_nothing_half_executes_on_a_usage_error(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str], offline: Any
) -> None:
    fake = offline([text("never")])
    usage_error(shell, "%%mistral_agent -t lookup -o res\nAbout {who}", capsys)
    assert fake.requests == [] and "res" not in shell.user_ns


def test_prompt_is_interpolated_and_literal_braces_kept(
    shell: InteractiveShell, offline: Any
) -> None:
    fake = offline([text("ok")])
    shell.user_ns["customer"] = {"name": "Ada"}
    shell.run_cell('%%mistral_agent --approver policy\nWrite {{"x": 1}} for {customer[name]}')
    assert fake.requests[0]["messages"][-1]["content"] == 'Write {"x": 1} for Ada'


def test_result_goes_to_out_and_is_the_cell_value(shell: InteractiveShell, offline: Any) -> None:
    offline([text("Hello **there**")])
    result = shell.run_cell("%%mistral_agent --approver policy -o res\nSay hello")
    assert isinstance(result.result, AgentResult)
    assert shell.user_ns["res"] is result.result
    assert shell.user_ns["_"] is result.result
    assert result.result.text == "Hello **there**"


def test_approve_option_lets_a_tool_run_without_a_card(shell: InteractiveShell, offline: Any) -> None:
    fake = offline([tool_call("lookup", {"customer": "ada"}), text("Ada is gold.")])
    result = shell.run_cell("%%mistral_agent -t lookup --approve lookup -o res\nWho is ada?")
    assert result.error_in_exec is None
    assert shell.user_ns["ran"] == [("lookup", "ada")]
    assert shell.user_ns["res"].decisions[0].decided_by == "policy"
    assert [t["function"]["name"] for t in fake.requests[0]["tools"]] == ["lookup"]


def test_deny_and_headless_policy_never_run_a_tool(shell: InteractiveShell, offline: Any) -> None:
    offline([tool_call("refund", {"customer": "ada", "amount": 5}),
             tool_call("lookup", {"customer": "ada"}), text("Could not.")])
    shell.run_cell("%%mistral_agent -t lookup,refund --deny refund --approver policy -o res\nGo")
    res = shell.user_ns["res"]
    assert shell.user_ns["ran"] == []
    assert [d.decision_note for d in res.decisions] == [
        "Denied by policy for refund.",
        "No reviewer was present to approve lookup; it needs a human decision.",
    ]


def test_schema_binds_a_pydantic_instance(shell: InteractiveShell, offline: Any) -> None:
    fake = offline([json_reply({"customer": "ACME", "total": 9.5})])
    shell.run_cell("%%mistral_agent -s Invoice -o inv --approver policy\nACME owes 9.50")
    output = shell.user_ns["inv"].output
    assert isinstance(output, shell.user_ns["Invoice"])
    assert output.total == 9.5
    assert fake.requests[0]["response_format"]["json_schema"]["name"] == "Invoice"


def test_continue_carries_the_conversation(shell: InteractiveShell, offline: Any) -> None:
    fake = offline([text("Paris."), text("About 2 million.")])
    shell.run_cell("%%mistral_agent -o first --approver policy\nCapital of France?")
    shell.run_cell("%%mistral_agent --continue first -o second --approver policy\nPopulation?")
    sent = [(m["role"], m["content"]) for m in fake.requests[1]["messages"]]
    assert sent == [("user", "Capital of France?"), ("assistant", "Paris."),
                    ("user", "Population?")]
    assert shell.user_ns["second"].text == "About 2 million."


def test_settings_are_traitlets_changed_with_config(shell: InteractiveShell, offline: Any) -> None:
    fake = offline([text("a"), text("b")])
    shell.run_line_magic("config", 'MistralAgentMagics.model = "mistral-small-latest"')
    shell.run_line_magic("config", "MistralAgentMagics.approver = 'policy'")
    shell.run_cell("%%mistral_agent\nhi")
    shell.run_cell("%%mistral_agent -m open-mistral-nemo\nhi")
    assert [r["model"] for r in fake.requests] == ["mistral-small-latest", "open-mistral-nemo"]


def test_line_magic_shows_settings_and_tools(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.run_cell("%mistral_agent -t lookup,refund")
    out = capsys.readouterr().out
    assert "model = 'mistral-large-latest'" in out
    assert "lookup(customer): Look a customer up." in out
    assert "refund(customer, amount): Refund a customer." in out
    assert "--approver" in out


def test_load_ext_does_not_import_the_sdk_or_widgets() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "sh = InteractiveShell.instance()\n"
        "sh.run_line_magic('load_ext', 'cheq_jupyter')\n"
        "print(sorted(m for m in ('mistralai', 'ipywidgets', 'pydantic') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_no_stream_sends_plain_requests_and_streaming_is_the_default(
    shell: InteractiveShell, offline: Any
) -> None:
    fake = offline([text("one"), text("two")])
    shell.run_cell("%%mistral_agent --approver policy\nFirst")
    shell.run_cell("%%mistral_agent --approver policy --no-stream -o res\nSecond")
    assert fake.requests[0]["stream"] is True
    assert not fake.requests[1].get("stream")
    assert shell.user_ns["res"].text == "two"


def test_reasoning_effort_is_checked_and_a_refusal_is_one_line(
    shell: InteractiveShell, offline: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = offline([text("never")])
    bad = usage_error(shell, "%%mistral_agent --reasoning-effort extreme\nhi", capsys)
    assert "invalid choice: 'extreme'" in bad
    refused = usage_error(
        shell, "%%mistral_agent --approver policy --reasoning-effort high\nhi", capsys)
    # mistralai 3.x: the server's refusal; 1.x cannot send the field at all.
    assert ("does not support reasoning_effort" in refused
            or "mistralai 2.0 or later" in refused), refused
    assert fake.remaining == 1
