"""Approval at a terminal: terminal IPython, plain ``python``, or any text stream pair.

For each tool call it prints the tool, the summary and the arguments (JSON), then asks::

    [a]pprove, [r]eject, [e]dit arguments, approve this tool for the [t]rest of the run?

``r`` asks for an optional note (the model sees it); ``e`` reads new arguments as JSON (one
line, or several ending with an empty line), checks them with the tool's own validation (the
same as the call) and
asks again until they are valid (an empty answer goes back to the question); ``t`` approves
and answers later calls of the same tool in the same run with a ``policy`` approval.  End of
input (Ctrl-D) or Ctrl-C rejects the call and every call still waiting in that turn: nothing
runs without an explicit yes.  Decisions are ``decided_by="console"``.

Model-controlled text is printed with control and bidirectional-override characters escaped,
so arguments cannot move the cursor, recolour the terminal or fake a prompt.
"""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Sequence
from typing import Any, TextIO

from .._safe_text import redact
from .._strictjson import same_json, strict_json
from ..approval import ApprovalRequest, Decision
from .allowlist import RunAllowList

__all__ = ["ConsoleApprover", "printable"]

_BY = "console"
_YES = {"a", "approve", "y", "yes"}
_NO = {"r", "reject", "n", "no"}
_EDIT = {"e", "edit"}
_REST = {"t", "rest"}


def printable(text: str) -> str:
    """``text`` with control and format characters (ANSI escapes, bidi overrides) escaped."""
    out = []
    for ch in redact(text):
        if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf"):
            out.append(ch)
        else:
            out.append(f"\\u{ord(ch):04x}")
    return "".join(out)


class _Closed(Exception):
    """The reviewer closed the input (EOF) or pressed Ctrl-C."""

    def __init__(self, note: str) -> None:
        super().__init__(note)
        self.note = note


class ConsoleApprover:
    """Ask at the terminal; ``stdin``/``stdout`` default to the process's own.

    With the default streams it reads with :func:`input` (line editing in a terminal; in a
    Jupyter kernel that is the frontend's input box).  ``allow_list`` shares "for the rest of
    this run" grants with other approvers; ``allow_rest_of_run=False`` hides that answer.
    """

    name = _BY

    def __init__(
        self,
        *,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
        allow_list: RunAllowList | None = None,
        allow_rest_of_run: bool = True,
    ) -> None:
        self._stdin = stdin
        self._stdout = stdout
        self.allow_list = allow_list if allow_list is not None else RunAllowList()
        self.allow_rest_of_run = allow_rest_of_run

    def __repr__(self) -> str:
        return "ConsoleApprover()"

    # -- I/O -------------------------------------------------------------------------------------

    @property
    def _out(self) -> TextIO:
        return self._stdout if self._stdout is not None else sys.stdout

    def _print(self, text: str = "") -> None:
        print(text, file=self._out, flush=True)

    def _ask(self, prompt: str) -> str:
        try:
            if self._stdin is None and self._stdout is None:
                return _input(prompt)
            self._out.write(prompt)
            self._out.flush()
            line = (self._stdin or sys.stdin).readline()
        except EOFError:
            raise _Closed("No answer at the console (input closed); not approved.") from None
        except KeyboardInterrupt:
            self._print()
            raise _Closed("Interrupted at the console (Ctrl-C); not approved.") from None
        if not line:
            raise _Closed("No answer at the console (input closed); not approved.")
        return line.rstrip("\r\n")

    # -- the approver protocol ---------------------------------------------------------------

    def __call__(self, request: ApprovalRequest) -> Decision:
        return self.decide_all([request])[0]

    def decide_all(self, requests: Sequence[ApprovalRequest]) -> list[Decision]:
        decisions: list[Decision] = []
        for index, request in enumerate(requests, start=1):
            allowed = self.allow_list.decide(request)
            if allowed is not None:
                self._print(f"{request.action}: {allowed.decision_note}")
                decisions.append(allowed)
                continue
            try:
                decision = self._decide_one(request, index, len(requests))
            except _Closed as closed:
                decisions.extend(
                    Decision.reject(closed.note, by=_BY) for _ in requests[len(decisions):]
                )
                self._print(f"Rejected {len(requests) - index + 1} call(s): {closed.note}")
                return decisions
            self._print(f"-> {decision.describe()}")
            decisions.append(decision)
        return decisions

    def _show(self, request: ApprovalRequest, index: int, total: int) -> None:
        count = f" ({index} of {total})" if total > 1 else ""
        self._print()
        self._print(f"Approval needed{count}: {printable(request.action)}")
        if request.summary:
            self._print(f"  {printable(request.summary)}")
        if request.origin:
            from ..approval import describe_claims

            claims = ", ".join(describe_claims(request.annotations)) or "nothing"
            self._print(f"  from {printable(request.origin)}; the server claims (not verified): "
                        f"{printable(claims)}")
        self._print("Arguments:")
        for line in request.arguments_json().splitlines():
            self._print(f"  {printable(line)}")
        if request.defaulted:
            self._print(f"  (filled in from the tool's defaults, not sent by the model: "
                        f"{printable(', '.join(request.defaulted))})")

    def _menu(self, request: ApprovalRequest) -> str:
        rest = self.allow_rest_of_run and self.allow_list.can_allow(request)
        extra = f", approve {request.action} for the [t]rest of the run" if rest else ""
        return f"[a]pprove, [r]eject, [e]dit arguments{printable(extra)}? "

    def _decide_one(self, request: ApprovalRequest, index: int, total: int) -> Decision:
        self._show(request, index, total)
        rest = self.allow_rest_of_run and self.allow_list.can_allow(request)
        while True:
            answer = self._ask(self._menu(request)).strip().lower()
            if answer in _YES:
                return Decision.approve(by=_BY)
            if answer in _REST and rest:
                self.allow_list.allow(request, by=_BY)
                return Decision.approve(
                    by=_BY, note=f"Also approved {request.action} for the rest of this run."
                )
            if answer in _NO:
                note = self._ask("Note for the model (optional): ").strip()
                return Decision.reject(note or None, by=_BY)
            if answer in _EDIT:
                edited = self._edit(request)
                if edited is None:
                    continue
                if same_json(edited, request.details):  # as JSON: 1 -> true is an edit
                    return Decision.approve(by=_BY)
                return Decision.approve(by=_BY, modified_details=edited)
            choices = "a, r, e or t" if rest else "a, r or e"
            self._print(f"Please answer {choices}.")

    def _edit(self, request: ApprovalRequest) -> dict[str, Any] | None:
        """Read arguments until they are valid JSON that fits the schema; ``None`` = go back."""
        while True:
            self._print("New arguments as JSON (end with an empty line; empty to go back):")
            lines: list[str] = []
            value: Any = None
            while True:
                line = self._ask("  " if lines else "> ")
                if not line.strip():
                    break
                lines.append(line)
                try:
                    value = strict_json("\n".join(lines))
                except ValueError:
                    continue
                break
            if not lines:
                return None
            text = "\n".join(lines)
            try:
                value = strict_json(text)
            except ValueError as exc:
                self._print(f"That is not valid JSON ({exc}); try again.")
                continue
            problems = _validate(request, value)
            if not problems:
                return dict(value)
            self._print(f"Those arguments do not fit {printable(request.action)}:")
            for problem in problems:
                self._print(f"  - {printable(problem)}")


def _input(prompt: str) -> str:
    """:func:`input`, with a kernel that cannot ask its frontend treated as closed input."""
    try:
        return input(prompt)
    except Exception as exc:
        from IPython.core.error import StdinNotImplementedError

        if isinstance(exc, StdinNotImplementedError):
            raise EOFError(str(exc)) from None
        raise


def _validate(request: ApprovalRequest, value: Any) -> list[str]:
    """The tool's own check (the same as the call); the JSON-schema subset checker only for
    requests built by hand without one."""
    if not isinstance(value, dict):
        return [f"the arguments must be a JSON object, not {type(value).__name__}"]
    if request.check is not None:
        try:
            return list(request.check(value))
        except Exception as exc:  # a check that breaks lets no edit through
            return [f"the arguments could not be checked ({type(exc).__name__})"]
    from ..tools import validate_arguments

    return validate_arguments(request.schema, value) if request.schema else []
