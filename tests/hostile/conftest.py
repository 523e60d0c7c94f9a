"""The hostile-input suite: everything an attacker controls (model output, approver returns,
names, Markdown/ANSI/bidi payloads, network stalls, audit-log tampering) tried against the
promise that nothing runs without an approval for exactly its arguments, hangs or leaks.

Every test case under ``tests/hostile`` counts as one hostile input tried; the run ends with
one line saying how many were tried and how many held.
"""

from __future__ import annotations

from typing import Any

import pytest

_outcomes: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "tests/hostile/" not in report.nodeid.replace("\\", "/") and not report.nodeid.startswith(
        "test_hostile"
    ):
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _outcomes[report.nodeid] = report.outcome


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _outcomes:
        return
    held = sum(1 for o in _outcomes.values() if o == "passed")
    broke = sum(1 for o in _outcomes.values() if o == "failed")
    skipped = len(_outcomes) - held - broke
    terminalreporter.write_line(
        f"hostile-input suite: {len(_outcomes)} hostile cases tried, {held} held, "
        f"{broke} broke the promise, {skipped} skipped"
    )
