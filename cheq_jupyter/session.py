"""Run a checked ``%%mistral_agent`` plan: choose the approver, show progress, keep the result."""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import Any

from IPython.core.error import UsageError

from ._cell import CellPlan
from .agent import AgentResult, run_agent
from .approval import Approver, Policy
from .errors import AuditLogError, ConfigurationError

__all__ = ["build_approver", "run_plan"]


def _rules(plan: CellPlan) -> Policy | None:
    """The ``--approve`` / ``--deny`` rules, if any (everything else is asked)."""
    if not plan.approve and not plan.deny:
        return None
    rules: dict[str, Any] = {n: "approve" for n in plan.approve}
    rules.update({n: "deny" for n in plan.deny})
    return Policy(rules=rules)


def _display_name(approver: Approver) -> str:
    """Who answers what a policy asks about: ``card``, ``console``... or ``policy``."""
    while isinstance(approver, Policy) and approver.ask is not None:
        approver = approver.ask
    return str(getattr(approver, "name", type(approver).__name__))


def build_approver(plan: CellPlan) -> tuple[Approver, str]:
    """The approver for ``plan`` (``--approve``/``--deny`` rules in front), and its name."""
    from .approvers import headless

    policy = _rules(plan)
    audit_path = plan.audit_log or None
    if plan.approver == "auto":
        approver = headless.default_approver(
            policy=policy, timeout=plan.timeout, audit_path=audit_path
        )
    elif plan.approver == "policy":
        approver = headless.headless_policy(policy)
    elif plan.approver == "replay":
        if audit_path is None:
            raise ConfigurationError(
                "--approver replay needs an audit log to replay; pass --audit PATH."
            )
        approver = headless.with_policy(policy, headless.ReplayApprover(audit_path))
    elif plan.approver == "race":
        from .approvers.race import RaceApprover

        approver = headless.with_policy(policy, RaceApprover(timeout=plan.timeout))
    else:
        approver = headless.with_policy(
            policy, headless.interactive_approver(plan.approver, plan.timeout)
        )
    return approver, _display_name(approver)


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
        recorder = _recorder(plan)
    except (ConfigurationError, AuditLogError) as exc:  # e.g. a replay log that fails verify
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
        recorder=recorder,
        request_timeout=plan.request_timeout,
    )
    events.final(result)
    if plan.out:
        user_ns[plan.out] = result
    return result
