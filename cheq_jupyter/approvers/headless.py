"""Which approver to use when none is given, so that a run without a reviewer never hangs.

Decision table (first row that applies wins):

==============================================  =========================================
Situation                                       Approver
==============================================  =========================================
``CHEQ_JUPYTER_APPROVER=card``                  the notebook card (``WidgetApprover``)
``CHEQ_JUPYTER_APPROVER=console``               :class:`ConsoleApprover`
``CHEQ_JUPYTER_APPROVER=cheqpoint``             :class:`CheqpointApprover` (``CQ_API_KEY``)
``CHEQ_JUPYTER_APPROVER=policy``                the policy, nobody to ask (headless)
``CHEQ_JUPYTER_APPROVER=replay``                :class:`ReplayApprover` on
                                                ``CHEQ_JUPYTER_REPLAY_LOG``, else
                                                ``audit_path``, else the audit log's
                                                default path (headless)
any other value (``approve_all`` too)           refused: :class:`ConfigurationError`
in a kernel, request has ``allow_stdin=False``  policy, headless (nbclient, papermill,
                                                nbconvert --execute)
in a kernel, request unreadable                 policy, headless (cannot tell if anyone
                                                is there, so assume nobody)
in a kernel, ``allow_stdin=True``               the card (JupyterLab, Notebook, VS Code)
terminal IPython, or python on a terminal       :class:`ConsoleApprover`
no kernel and no terminal (a piped script, CI)  policy, headless
==============================================  =========================================

"policy, headless" is the caller's :class:`~cheq_jupyter.approval.Policy` (or an empty one:
every tool ``ask``) with ``ask=None``: what it approves or denies by rule is decided, and
everything it would ask a person about is rejected with a note that no reviewer was present.
With a policy and a person present, the policy's ``ask`` becomes the chosen interactive
approver.  Environment variables can only pick among approvers that decide safely: no value
turns approval off (``approve_all`` must be written in code).

``allow_stdin`` is a hint, not proof: Voila, for instance, runs notebooks with it false while a
person watches; set ``CHEQ_JUPYTER_APPROVER=card`` there.  A terminal frontend attached to a
kernel (``jupyter console``) cannot show the card: set ``CHEQ_JUPYTER_APPROVER=console``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TextIO

from ..approval import Approver, Policy
from ..errors import ConfigurationError
from .replay import ReplayApprover

__all__ = [
    "APPROVER_ENV",
    "CHOICES",
    "REPLAY_LOG_ENV",
    "ApproverChoice",
    "ReplayApprover",
    "Surroundings",
    "choose_approver",
    "default_approver",
    "detect_surroundings",
    "headless_policy",
    "interactive_approver",
    "with_policy",
]

APPROVER_ENV = "CHEQ_JUPYTER_APPROVER"
REPLAY_LOG_ENV = "CHEQ_JUPYTER_REPLAY_LOG"
CHOICES: tuple[str, ...] = ("card", "console", "cheqpoint", "policy", "replay")

#: Where the code runs, as far as choosing an approver goes.
Surroundings = Literal["notebook", "headless-kernel", "unknown-kernel", "terminal", "no-terminal"]


@dataclass(frozen=True)
class ApproverChoice:
    """The approver chosen, its short name, why, and whether nobody can answer."""

    approver: Approver
    name: str
    reason: str
    headless: bool

    def notice(self) -> str:
        """One line for the cell output."""
        if self.headless:
            return (f"cheq-jupyter: using the {self.name} approver ({self.reason}); calls that "
                    "need a human decision are rejected.")
        return f"cheq-jupyter: using the {self.name} approver ({self.reason})."


def _kernel_parent() -> tuple[bool, Mapping[str, Any] | None]:
    """``(in a kernel, the current execute request or None when unreadable)``."""
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    shell = get() if callable(get) else None
    kernel = getattr(shell, "kernel", None)
    if kernel is None:
        return False, None
    try:
        get_parent = getattr(kernel, "get_parent", None)
        # ipykernel 5 (Colab) keeps the request in _parent_header instead.
        parent = get_parent("shell") if callable(get_parent) else kernel._parent_header
    except Exception:
        return True, None
    return True, parent if isinstance(parent, Mapping) and parent else None


def _has_terminal() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):
        return False


def detect_surroundings() -> tuple[Surroundings, str]:
    """Where this runs, and the evidence, e.g. ``("headless-kernel", "allow_stdin is false")``."""
    in_kernel, parent = _kernel_parent()
    if in_kernel:
        content = parent.get("content") if parent is not None else None
        if not isinstance(content, Mapping) or "allow_stdin" not in content:
            return "unknown-kernel", "the kernel's current request cannot be read"
        if not content["allow_stdin"]:
            return ("headless-kernel",
                    "the kernel's request has allow_stdin=False, as under nbclient or papermill")
        return "notebook", "a Jupyter frontend that accepts input"
    if _has_terminal():
        return "terminal", "running at a terminal without a notebook"
    return "no-terminal", "no notebook frontend and no terminal"


def headless_policy(policy: Policy | None) -> Policy:
    """``policy`` (or an empty one) with nobody to ask: what it would ask about is rejected."""
    return dataclasses.replace(policy, ask=None) if policy is not None else Policy()


def with_policy(policy: Policy | None, approver: Approver) -> Approver:
    """``approver`` behind ``policy``'s rules (it answers what the policy would ask about)."""
    if policy is None:
        return approver
    return policy if policy.ask is not None else dataclasses.replace(policy, ask=approver)


def _card(timeout: float | None) -> Approver:
    from ..card import WidgetApprover

    approver: Approver = WidgetApprover() if timeout is None else WidgetApprover(timeout=timeout)
    return approver


def _console(timeout: float | None) -> Approver:
    from .console import ConsoleApprover

    return ConsoleApprover()


def _cheqpoint(timeout: float | None) -> Approver:
    from .cheqpoint import CheqpointApprover

    return CheqpointApprover() if timeout is None else CheqpointApprover(timeout=timeout)


def interactive_approver(name: str, timeout: float | None) -> Approver:
    """The ``card``, ``console`` or ``cheqpoint`` approver, with no policy in front."""
    return {"card": _card, "console": _console, "cheqpoint": _cheqpoint}[name](timeout)


def _replay(audit_path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Approver:
    path = env.get(REPLAY_LOG_ENV, "").strip() or audit_path
    return ReplayApprover(path)


def choose_approver(
    *,
    policy: Policy | None = None,
    timeout: float | None = None,
    audit_path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    surroundings: tuple[Surroundings, str] | None = None,
) -> ApproverChoice:
    """Pick the approver for this environment (see the module's table).

    ``policy`` supplies per-tool rules (used with nobody to ask when headless, and in front of
    the interactive approver otherwise); ``timeout`` goes to the card and Cheqpoint (their
    own default when ``None``); ``audit_path`` is the log ``replay`` reads unless
    ``CHEQ_JUPYTER_REPLAY_LOG`` names another.  ``environ`` and ``surroundings`` default to
    the real ones (tests pass their own).
    """
    env = os.environ if environ is None else environ
    wanted = env.get(APPROVER_ENV, "").strip().lower()
    if wanted:
        source = f"{APPROVER_ENV}={wanted}"
        if wanted not in CHOICES:
            refused = " (an environment variable cannot switch approval off)" if wanted in (
                "approve_all", "approve", "none", "off", "auto") else ""
            raise ConfigurationError(
                f"{APPROVER_ENV} is {wanted!r}{refused}; use one of {', '.join(CHOICES)}, or "
                "pass approver= in code."
            )
        if wanted == "policy":
            return ApproverChoice(headless_policy(policy), "policy", source, True)
        if wanted == "replay":
            return ApproverChoice(
                with_policy(policy, _replay(audit_path, env)), "replay", source, True
            )
        approver = interactive_approver(wanted, timeout)
        return ApproverChoice(with_policy(policy, approver), wanted, source, False)
    where, evidence = surroundings if surroundings is not None else detect_surroundings()
    if where == "notebook":
        approver = interactive_approver("card", timeout)
        return ApproverChoice(with_policy(policy, approver), "card", evidence, False)
    if where == "terminal":
        approver = interactive_approver("console", timeout)
        return ApproverChoice(with_policy(policy, approver), "console", evidence, False)
    return ApproverChoice(headless_policy(policy), "policy", evidence, True)


def default_approver(
    *,
    policy: Policy | None = None,
    timeout: float | None = None,
    audit_path: str | os.PathLike[str] | None = None,
    out: TextIO | None = None,
) -> Approver:
    """:func:`choose_approver`'s approver; prints a one-line notice (to ``out``, default
    standard output) when nobody can answer or ``CHEQ_JUPYTER_APPROVER`` chose."""
    choice = choose_approver(policy=policy, timeout=timeout, audit_path=audit_path)
    if choice.headless or APPROVER_ENV in choice.reason:
        print(choice.notice(), file=out or sys.stdout, flush=True)
    return choice.approver
