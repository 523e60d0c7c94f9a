"""Run a checked ``%%mistral_agent`` plan: choose the approver, show progress, keep the result."""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import Any

from IPython.core.error import UsageError

from ._cell import CellPlan
from .agent import AgentResult, run_agent
from .approval import Approver, Policy
from .errors import ConfigurationError

__all__ = ["build_approver", "run_plan"]


def _base_approver(name: str, plan: CellPlan) -> tuple[Approver, str]:
    """The approver for the calls a policy leaves to ask about, and its short name."""
    if name == "auto":
        from .approvers.headless import default_approver

        chosen = default_approver(timeout=plan.timeout, audit_path=plan.audit_log or None)
        return chosen, str(getattr(chosen, "name", type(chosen).__name__))
    if name == "card":
        from .card import WidgetApprover

        return WidgetApprover(timeout=plan.timeout), "card"
    if name == "console":
        from .approvers.console import ConsoleApprover

        return ConsoleApprover(), "console"
    if name == "cheqpoint":
        from .approvers.cheqpoint import CheqpointApprover

        return CheqpointApprover(timeout=plan.timeout), "cheqpoint"
    if name == "race":
        from .approvers.race import RaceApprover

        race = RaceApprover(timeout=plan.timeout)
        return race, race.name
    if name == "replay":
        from .approvers.headless import ReplayApprover

        if not plan.audit_log:
            raise ConfigurationError(
                "--approver replay needs an audit log to replay; pass --audit PATH."
            )
        return ReplayApprover(plan.audit_log), "replay"
    if name == "policy":
        return Policy(ask=None), "policy"
    raise ConfigurationError(f"Unknown approver {name!r}; use one of card, console, cheqpoint, "
                             "race, policy, replay or auto.")


def build_approver(plan: CellPlan) -> tuple[Approver, str]:
    """The approver for ``plan``: ``--approve``/``--deny`` rules in front of the chosen one."""
    base, name = _base_approver(plan.approver, plan)
    if not plan.approve and not plan.deny:
        return base, name
    rules: dict[str, Any] = {n: "approve" for n in plan.approve}
    rules.update({n: "deny" for n in plan.deny})
    if isinstance(base, Policy):
        return Policy(rules=rules, ask=base.ask), name
    return Policy(rules=rules, ask=base), name


def _recorder(plan: CellPlan) -> Any:
    if not plan.audit_log:
        return None
    from .audit import AuditLog

    return AuditLog(os.path.expanduser(plan.audit_log))


def run_plan(plan: CellPlan, user_ns: MutableMapping[str, Any]) -> AgentResult[Any]:
    """Run the agent for ``plan``, show its progress and answer, bind ``--out``."""
    from . import _sdk
    from .display import NotebookEvents

    try:
        client = _sdk.client_from_env()
        approver, name = build_approver(plan)
    except ConfigurationError as exc:
        raise UsageError(str(exc)) from None
    events = NotebookEvents(approver_name=name)
    result: AgentResult[Any] = run_agent(
        plan.prompt,
        tools=plan.tools,
        approver=approver,
        model=plan.model,
        system=plan.system,
        max_steps=plan.max_steps,
        output_type=plan.output_type,
        client=client,
        history=plan.history,
        events=events,
        recorder=_recorder(plan),
    )
    events.final(result)
    if plan.out:
        user_ns[plan.out] = result
    return result
