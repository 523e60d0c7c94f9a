"""Replay: re-apply the decisions of an audit log to a new run, and reject anything new.

A call matches a recorded decision when its tool and arguments are exactly the same (equal
:func:`~cheq_jupyter.audit.args_hash`; key order does not matter).  Each recorded decision
is used once, in log order: a run that asks for the same refund twice when it was approved once
gets one approval and one rejection.  Approved calls are approved again (with the reviewer's
edited arguments, if any); rejected ones are rejected with the original note; calls that timed
out or were cancelled are not approved; anything with no decision left is rejected with a note
that no reviewer was present.  Decisions are ``decided_by="replay"``.

The log's hash chain is verified before anything is replayed, so an edited log cannot grant
approvals.  Records made by earlier replays are skipped (their originals are in the log).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from pathlib import Path

from ..approval import ApprovalRequest, Decision
from ..audit import AuditRecord, args_hash, default_path, load

__all__ = ["ReplayApprover"]

_BY = "replay"


class ReplayApprover:
    """Decide from a recorded audit log; ``run_id`` limits the replay to one recorded run."""

    name = _BY

    def __init__(
        self, log_path: str | os.PathLike[str] | None = None, *, run_id: str | None = None
    ) -> None:
        self.log_path = Path(log_path).expanduser() if log_path is not None else default_path()
        self.run_id = run_id
        records = [
            r for r in load(self.log_path)
            if r.decided_by != _BY and (run_id is None or r.run_id == run_id)
        ]
        self._queues: dict[str, deque[AuditRecord]] = {}
        for record in records:
            self._queues.setdefault(record.args_hash, deque()).append(record)
        self._lock = threading.Lock()
        #: How many recorded decisions were loaded.
        self.recorded = len(records)

    def __repr__(self) -> str:
        return f"ReplayApprover({str(self.log_path)!r}, recorded={self.recorded})"

    @property
    def remaining(self) -> int:
        """Recorded decisions not used yet."""
        with self._lock:
            return sum(len(q) for q in self._queues.values())

    def __call__(self, request: ApprovalRequest) -> Decision:
        key = args_hash(request.action, request.details)
        with self._lock:
            queue = self._queues.get(key)
            record = queue.popleft() if queue else None
        if record is None:
            return Decision.reject(
                f"No recorded decision in {self.log_path.name} matches this call of "
                f"{request.action} (same tool and arguments), and no reviewer was present to "
                "decide it; not approved.",
                by=_BY,
            )
        origin = f"{record.decided_by or 'unknown'} at {record.time} (audit line {record.line})"
        if record.approved:
            return Decision.approve(
                by=_BY,
                modified_details=record.effective_arguments if record.edited else None,
                note=f"Replayed: approved by {origin}.",
            )
        if record.status == "rejected":
            reason = f": {record.note}" if record.note else "."
            return Decision.reject(f"Replayed: rejected by {origin}{reason}", by=_BY)
        return Decision.reject(
            f"Replayed: this call was {record.status.replace('_', ' ')} ({origin}), never "
            "approved; not approved now either.",
            by=_BY,
        )
