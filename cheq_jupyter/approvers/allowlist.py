""""Approve for the rest of this run": tools a reviewer has cleared for one run.

An interactive approver (the card's checkbox, the console's ``t`` answer) calls
:meth:`RunAllowList.allow` when the reviewer approves a call *and* ticks "for the rest of this
run"; before asking about a later call it calls :meth:`RunAllowList.decide`, which answers
calls to the same tool in the same run (``request.run_id``) with a ``policy`` approval whose
note says who allowed it and when, so the audit log records them as such::

    allow = RunAllowList()
    ...
    pre = allow.decide(request)          # a Decision, or None: ask the reviewer
    ...
    allow.allow(request, by="card")      # the reviewer ticked the box and approved

Scope: the tool name (any arguments) within one run; a new run asks again.  Requests without a
``run_id`` are never allowed in bulk (there is no run to scope them to).
"""

from __future__ import annotations

import datetime as _dt
import threading
from dataclasses import dataclass

from ..approval import ApprovalRequest, Decision

__all__ = ["RunAllowList"]

_BY = "policy"


@dataclass(frozen=True)
class _Grant:
    by: str
    at: _dt.datetime


class RunAllowList:
    """Per-run set of tools approved "for the rest of this run"; thread-safe."""

    def __init__(self) -> None:
        self._grants: dict[tuple[str, str], _Grant] = {}
        self._lock = threading.Lock()

    def can_allow(self, request: ApprovalRequest) -> bool:
        """Whether ``request`` belongs to a run (only then can its tool be allowed in bulk)."""
        return bool(request.run_id)

    def allow(self, request: ApprovalRequest, *, by: str) -> None:
        """Approve later calls of ``request``'s tool in its run; ``by`` names the reviewer."""
        if not self.can_allow(request):
            raise ValueError(
                f"The call of {request.action} has no run_id, so it cannot be approved for the "
                "rest of a run; approve it on its own."
            )
        with self._lock:
            self._grants[(request.run_id, request.action)] = _Grant(
                by, _dt.datetime.now(_dt.timezone.utc)
            )

    def allows(self, request: ApprovalRequest) -> bool:
        with self._lock:
            return bool(request.run_id) and (request.run_id, request.action) in self._grants

    def decide(self, request: ApprovalRequest) -> Decision | None:
        """A ``policy`` approval when the tool is allowed for this run, else ``None``."""
        with self._lock:
            grant = self._grants.get((request.run_id, request.action)) if request.run_id else None
        if grant is None:
            return None
        when = grant.at.strftime("%H:%M:%S %Z").strip()
        return Decision.approve(
            by=_BY,
            note=(f"Approved for the rest of this run: {grant.by} approved {request.action} "
                  f"for the rest of run {request.run_id} at {when}."),
        )

    def forget(self, run_id: str | None = None) -> None:
        """Drop the grants of one run (or of every run)."""
        with self._lock:
            if run_id is None:
                self._grants.clear()
            else:
                for key in [k for k in self._grants if k[0] == run_id]:
                    del self._grants[key]
