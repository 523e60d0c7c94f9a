"""The wait setting: its values, what ``auto`` picks from the kernel's environment, the options.

The real-kernel behaviour of both modes is in ``test_nowait_kernel.py``; these run in-process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from cheq_jupyter.errors import ConfigurationError
from cheq_jupyter.testing import FakeMistral, text
from cheq_jupyter.waitmode import choose_wait, detect_frontend, normalize_wait


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, "block"), (False, "no-wait"), ("auto", "auto"), ("block", "block"),
     ("Wait", "block"), ("no-wait", "no-wait"), ("no_wait", "no-wait"), ("NOWAIT", "no-wait")],
)
def test_wait_values(value: Any, expected: str) -> None:
    assert normalize_wait(value) == expected


def test_a_wrong_wait_value_says_what_is_accepted() -> None:
    with pytest.raises(ConfigurationError, match=r"use 'auto', 'block' .* or 'no-wait'"):
        normalize_wait("sometimes")


@pytest.mark.parametrize(
    ("environ", "modules", "frontend"),
    [
        ({"VSCODE_PID": "12"}, {}, "VS Code (VSCODE_PID is set)"),
        ({"VSCODE_CWD": "/w"}, {}, "VS Code (VSCODE_CWD is set)"),
        ({"VSCODE_IPC_HOOK_CLI": "/tmp/x.sock"}, {}, "VS Code (VSCODE_IPC_HOOK_CLI is set)"),
        ({"COLAB_RELEASE_TAG": "release-colab_2026"}, {}, "Google Colab (COLAB_RELEASE_TAG is set)"),
        ({}, {"google.colab": object()}, "Google Colab (google.colab is loaded)"),
        ({"VSCODE_PID": ""}, {}, None),
        ({"PATH": "/usr/bin"}, {}, None),
    ],
)
def test_frontends_that_hold_clicks_are_recognised(
    environ: dict[str, str], modules: dict[str, Any], frontend: str | None
) -> None:
    assert detect_frontend(environ, modules) == frontend
    choice = choose_wait("auto", environ=environ, modules=modules, check_kernel=False)
    assert choice.block is (frontend is None)
    if frontend is not None:
        assert frontend in choice.reason and "no-wait mode" in choice.notice("res")


def test_explicit_settings_win_over_the_environment() -> None:
    vscode = {"VSCODE_PID": "12"}
    assert choose_wait("block", environ=vscode, modules={}).block
    assert not choose_wait("no-wait", environ={}, modules={}, check_kernel=False).block


def test_the_notice_says_where_the_result_goes_and_that_run_all_does_not_wait() -> None:
    choice = choose_wait("no-wait", environ={}, modules={})
    assert "res holds a PendingRun now" in choice.notice("res")
    assert "pass -o VAR" in choice.notice(None)
    assert "Run All does not wait" in choice.notice("res")


@pytest.fixture
def shell(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[InteractiveShell]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHEQ_JUPYTER_APPROVER", raising=False)
    sh = InteractiveShell()
    sh.run_line_magic("load_ext", "cheq_jupyter")
    yield sh
    InteractiveShell.clear_instance()


def test_wait_and_no_wait_together_are_a_usage_error(shell: InteractiveShell) -> None:
    result = shell.run_cell("%%mistral_agent --wait --no-wait\nhi")
    assert isinstance(result.error_in_exec, UsageError)
    assert "--wait and --no-wait contradict" in str(result.error_in_exec)


def test_a_bad_wait_setting_is_refused_by_config(shell: InteractiveShell) -> None:
    magics = shell.magics_manager.registry["MistralAgentMagics"]
    shell.run_cell("%config MistralAgentMagics.wait = 'sometimes'")  # traitlets logs the error
    assert magics.wait == "auto"
    shell.run_cell("%config MistralAgentMagics.wait = False")
    assert magics.wait is False
    shell.run_cell("%config MistralAgentMagics.wait = 'no-wait'")
    assert magics.wait == "no-wait"


def test_no_wait_outside_a_kernel_runs_as_before(
    shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Headless (here: no kernel, the policy approver) never waits, whatever the setting."""
    with FakeMistral([text("Hello")]) as fake:
        monkeypatch.setenv("MISTRAL_API_KEY", fake.api_key)
        monkeypatch.setenv("MISTRAL_SERVER_URL", fake.url)
        result = shell.run_cell("%%mistral_agent --no-wait --approver policy -o res\nSay hello")
    assert result.error_in_exec is None
    assert shell.user_ns["res"].text == "Hello"


def test_audit_with_empty_quotes_writes_no_log(
    shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with FakeMistral([text("Hello")]) as fake:
        monkeypatch.setenv("MISTRAL_API_KEY", fake.api_key)
        monkeypatch.setenv("MISTRAL_SERVER_URL", fake.url)
        result = shell.run_cell("%%mistral_agent --approver policy --audit ''\nSay hello")
    assert result.error_in_exec is None
    assert list(tmp_path.iterdir()) == []


def test_no_wait_refuses_an_unknown_reasoning_effort_before_anything_is_sent() -> None:
    from cheq_jupyter import approve_all
    from cheq_jupyter.nowait import start_run

    with FakeMistral([text("unused")]) as fake, pytest.raises(ConfigurationError) as info:
        start_run("hi", tools=[], approver=approve_all, client=fake.client(), model="m",
                  reasoning_effort="extreme")
    assert "reasoning_effort is 'extreme'" in str(info.value)
    assert fake.requests == []


def test_only_a_card_behind_policies_gets_a_wait_mode_a_race_always_blocks() -> None:
    from cheq_jupyter import Policy, WidgetApprover, reject_all
    from cheq_jupyter.approvers.race import RaceApprover
    from cheq_jupyter.session import _card_of

    card = WidgetApprover()
    race = RaceApprover(reject_all, card=card)
    assert _card_of(Policy(ask=Policy(ask=card)), through_race=False) is card
    assert _card_of(Policy(ask=race), through_race=False) is None  # the race waits in the cell
    assert _card_of(Policy(ask=race)) is card  # but its card still shows the decisions
    assert _card_of(Policy(ask=reject_all)) is None
