"""Run a checked ``%%mistral_agent`` plan: choose the approver, show progress, keep the result."""

from __future__ import annotations

import html
import os
from collections.abc import MutableMapping
from typing import Any

from IPython.core.error import UsageError

from ._cell import CellPlan
from .agent import AgentResult, run_agent
from .approval import Approver, Policy
from .errors import AuditLogError, ConfigurationError, FrontendUnavailableError, ModelError

__all__ = ["build_approver", "run_plan"]


def _rules(plan: CellPlan) -> Policy | None:
    """The ``--approve`` / ``--deny`` rules, if any (everything else is asked)."""
    if not plan.approve and not plan.deny and not plan.approve_read_only:
        return None
    rules: dict[str, Any] = {n: "approve" for n in plan.approve}
    rules.update({n: "deny" for n in plan.deny})
    return Policy(rules=rules, approve_read_only=plan.approve_read_only)


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


def _card_of(approver: Any, *, through_race: bool = True) -> Any:
    """The card approver inside ``approver``, if any: behind policies, and racing a remote
    approver unless ``through_race`` is False (the runs whose wait mode can be chosen: a race
    with Cheqpoint always blocks)."""
    from .card import WidgetApprover

    for _ in range(8):  # policies and races nest a few levels at most
        if isinstance(approver, WidgetApprover):
            return approver
        approver = getattr(approver, "ask", None) or (
            getattr(approver, "card", None) if through_race else None
        )
        if approver is None:
            return None
    return None


def _recorder(plan: CellPlan) -> Any:
    if not plan.audit_log:
        return None
    from .audit import AuditLog

    return AuditLog(os.path.expanduser(plan.audit_log))


def _show_mode(line: str, block: bool) -> None:
    from IPython.display import display

    color = "#555" if block else "#8a5300"
    display({"text/html": f"<div class='cheq-mode' style='color:{color};font-size:0.9em'>"
                          f"{html.escape(line)}</div>",
             "text/plain": line}, raw=True)  # type: ignore[no-untyped-call]


def run_plan(plan: CellPlan, user_ns: MutableMapping[str, Any]) -> AgentResult[Any] | None:
    """Run the agent for ``plan``, show its progress and answer, bind ``--out``.

    With the card, the wait mode is chosen first (:mod:`cheq_jupyter.waitmode`) and announced
    in one line; in no-wait mode this returns ``None`` once the first cards show (``--out``
    holds a :class:`~cheq_jupyter.nowait.PendingRun` until the run ends).
    """
    from . import _sdk
    from .display import NotebookEvents
    from .waitmode import choose_wait, in_kernel

    try:
        client = _sdk.client_from_env()
        approver, name = build_approver(plan)
        # Only the card waits for a click, and only a kernel can show it.
        asking = _card_of(approver, through_race=False) is not None and in_kernel()
        choice = choose_wait(plan.wait) if asking else None
        recorder = _recorder(plan)
    except (ConfigurationError, AuditLogError) as exc:  # e.g. a replay log that fails verify
        raise UsageError(str(exc)) from None
    if choice is None and plan.wait == "no-wait" and plan.approver in ("race", "cheqpoint"):
        _show_mode(f"cheq-jupyter: no-wait applies to the card only; the {plan.approver} "
                   "approver waits in the cell.", True)
    card = _card_of(approver)
    if choice is not None:
        _show_mode(choice.notice(plan.out), choice.block)
        if not choice.block:
            try:
                _run_no_wait(plan, user_ns, client, approver, name, recorder)
            except FrontendUnavailableError as exc:  # e.g. --no-wait outside a kernel
                raise UsageError(str(exc)) from None
            return None
    events = NotebookEvents(approver_name=name, on_card=card.showed if card is not None else None)
    try:
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
            stream=plan.stream,
            reasoning_effort=plan.reasoning_effort,
        )
    except KeyboardInterrupt:
        if plan.out and events.partial_result is not None:
            user_ns[plan.out] = events.partial_result  # valid for --continue
        raise
    except (ModelError, ConfigurationError) as exc:
        raise UsageError(str(exc)) from None
    events.final(result)
    if plan.out:
        user_ns[plan.out] = result
    return result


def _run_no_wait(
    plan: CellPlan, user_ns: MutableMapping[str, Any], client: Any, approver: Approver,
    name: str, recorder: Any,
) -> None:
    from .display import NotebookEvents
    from .nowait import start_run

    card = _card_of(approver)
    start_run(
        plan.prompt,
        tools=plan.tools,
        approver=approver,
        client=client,
        model=plan.model,
        system=plan.system,
        max_steps=plan.max_steps,
        output_type=plan.output_type,
        history=plan.history,
        events_factory=lambda show: NotebookEvents(
            approver_name=name, show=show, on_card=card.showed if card is not None else None
        ),
        recorder=recorder,
        bind=(user_ns, plan.out) if plan.out else None,
        request_timeout=plan.request_timeout,
        stream=plan.stream,
        reasoning_effort=plan.reasoning_effort,
    )
