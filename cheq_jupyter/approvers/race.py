"""Race mode: the notebook card and a remote inbox (Cheqpoint) decide the same calls at once.

The cards are shown and the same calls are filed with the remote approver; whichever decides a
call first wins it, and the card says where its decision came from ("decided in cheqpoint").
Only a remote *approval* or *rejection* can win: a remote time-out or error leaves the card
waiting for the person in front of the notebook.  When every card is decided, the remote
requests still pending are abandoned (the Cheqpoint SDK has no cancel call, so they stay in the
inbox, where a late decision changes nothing).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..approval import ApprovalRequest, Decision

__all__ = ["RaceApprover", "RemoteApprover"]

log = logging.getLogger("cheq_jupyter")

#: How long a remote answer may wait for its card to appear (it can beat the card).
_CARD_GRACE = 10.0


class RemoteApprover(Protocol):
    """A remote approver that can be stopped and reports answers as they arrive."""

    name: str

    def decide_all(
        self,
        requests: Sequence[ApprovalRequest],
        *,
        stop: threading.Event | None = None,
        on_decision: Callable[[ApprovalRequest, Decision], None] | None = None,
    ) -> list[Decision]: ...


class RaceApprover:
    """Show the card and ask ``remote`` (default: Cheqpoint) at the same time; first one wins."""

    def __init__(
        self,
        remote: RemoteApprover | None = None,
        *,
        card: Any = None,
        timeout: float | None = 600.0,
    ) -> None:
        if remote is None:
            from .cheqpoint import CheqpointApprover

            remote = CheqpointApprover(timeout=timeout or 600.0)
        if card is None:
            from ..card import WidgetApprover

            card = WidgetApprover(timeout=timeout)
        self.remote = remote
        self.card = card
        self.name = f"card+{getattr(remote, 'name', 'remote')}"

    def __call__(self, request: ApprovalRequest) -> Decision:
        return self.decide_all([request])[0]

    def decide_all(self, requests: Sequence[ApprovalRequest]) -> list[Decision]:
        stop = threading.Event()
        source = str(getattr(self.remote, "name", "remote"))

        def forward(request: ApprovalRequest, decision: Decision) -> None:
            # The card of this very request object: never matched by tool_call_id, which the
            # model chooses (two calls of a turn may share one, or both have none).
            if decision.status in ("approved", "rejected") and not stop.is_set():
                self.card.decide_externally(request, decision, source=source, wait=_CARD_GRACE)

        def ask_remote() -> None:
            try:
                self.remote.decide_all(requests, stop=stop, on_decision=forward)
            except Exception as exc:  # the card still decides; the remote just lost the race
                log.warning("remote approver %s failed during a race: %s", source, exc)

        thread = threading.Thread(target=ask_remote, name="cheq-race", daemon=True)
        thread.start()
        try:
            return list(self.card.decide_all(requests))
        finally:
            stop.set()
            thread.join(timeout=5.0)
