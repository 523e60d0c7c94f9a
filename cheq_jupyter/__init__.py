"""cheq-jupyter: a human approval checkpoint inside Jupyter for Mistral tool calling.

``%load_ext cheq_jupyter`` registers the ``%%mistral_agent`` magic.  From Python::

    from cheq_jupyter import run_agent, WidgetApprover
    result = run_agent("Change the email of account 42", tools=[change_email],
                       approver=WidgetApprover())

Names are imported lazily so that ``%load_ext`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_attributes

__version__ = "0.1.0"

__all__ = [
    "AgentResult",
    "ApprovalRequest",
    "Decision",
    "Policy",
    "Tool",
    "ToolCallRecord",
    "WidgetApprover",
    "approve_all",
    "arun_agent",
    "load_ipython_extension",
    "reject_all",
    "run_agent",
    "tool",
    "unload_ipython_extension",
]

_LAZY: dict[str, str] = {
    "AgentResult": "cheq_jupyter.agent",
    "ToolCallRecord": "cheq_jupyter.agent",
    "run_agent": "cheq_jupyter.agent",
    "arun_agent": "cheq_jupyter.agent",
    "ApprovalRequest": "cheq_jupyter.approval",
    "Decision": "cheq_jupyter.approval",
    "Policy": "cheq_jupyter.approval",
    "approve_all": "cheq_jupyter.approval",
    "reject_all": "cheq_jupyter.approval",
    "Tool": "cheq_jupyter.tools",
    "tool": "cheq_jupyter.tools",
    "WidgetApprover": "cheq_jupyter.card",
}

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from .agent import AgentResult, ToolCallRecord, arun_agent, run_agent
    from .approval import ApprovalRequest, Decision, Policy, approve_all, reject_all
    from .card import WidgetApprover
    from .tools import Tool, tool


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)


def _redact_log_records() -> None:
    """No log line of the package shows an API key (or a terminal control sequence).

    A filter goes on the package's logger and on every module's ``getLogger(__name__)``
    logger (found on disk, nothing imported), since a logger's filters apply only to records
    made on that logger itself.
    """
    import logging
    import os

    from ._safe_text import RedactingFilter

    root = os.path.dirname(os.path.abspath(__file__))
    names = {__name__}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.isfile(os.path.join(folder, d, "__init__.py"))]
        relative = os.path.relpath(folder, root)
        package = __name__ if relative == "." else f"{__name__}.{relative.replace(os.sep, '.')}"
        names.add(package)
        names.update(f"{package}.{f[:-3]}" for f in files
                     if f.endswith(".py") and f != "__init__.py")
    redacting = RedactingFilter()
    for name in sorted(names):
        logging.getLogger(name).addFilter(redacting)


_redact_log_records()


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """``%load_ext cheq_jupyter``: register ``%%mistral_agent`` (the SDK loads on first use)."""
    from .magics import MistralAgentMagics

    ipython.register_magics(MistralAgentMagics)


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    """``%unload_ext cheq_jupyter``: nothing to undo beyond IPython's own bookkeeping."""
