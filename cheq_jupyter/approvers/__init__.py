"""Approvers beyond the notebook card, and the automatic choice between them.

* :class:`CheqpointApprover` -- Cheqpoint's hosted inbox (extra ``cheqpoint``);
* :class:`ConsoleApprover` -- a terminal (terminal IPython, plain ``python``);
* :class:`ReplayApprover` -- the decisions of an audit log, for re-runs without a reviewer;
* :class:`RunAllowList` -- "approve this tool for the rest of the run";
* :func:`default_approver` / :func:`choose_approver` -- the right one for where the code runs,
  so a headless run (nbclient, papermill, CI) never waits for a person who is not there.

Names are imported on first use (the Cheqpoint SDK only when a ``CheqpointApprover`` is made).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

__all__ = [
    "ApproverChoice",
    "CheqpointApprover",
    "ConsoleApprover",
    "RaceApprover",
    "ReplayApprover",
    "RunAllowList",
    "choose_approver",
    "default_approver",
    "detect_surroundings",
]

_LAZY: dict[str, str] = {
    "CheqpointApprover": "cheq_jupyter.approvers.cheqpoint",
    "ConsoleApprover": "cheq_jupyter.approvers.console",
    "RaceApprover": "cheq_jupyter.approvers.race",
    "ReplayApprover": "cheq_jupyter.approvers.replay",
    "RunAllowList": "cheq_jupyter.approvers.allowlist",
    "ApproverChoice": "cheq_jupyter.approvers.headless",
    "choose_approver": "cheq_jupyter.approvers.headless",
    "default_approver": "cheq_jupyter.approvers.headless",
    "detect_surroundings": "cheq_jupyter.approvers.headless",
}

if TYPE_CHECKING:
    from .allowlist import RunAllowList
    from .cheqpoint import CheqpointApprover
    from .console import ConsoleApprover
    from .headless import ApproverChoice, choose_approver, default_approver, detect_surroundings
    from .race import RaceApprover
    from .replay import ReplayApprover


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)
