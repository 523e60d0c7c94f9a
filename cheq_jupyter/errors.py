"""Every exception cheq-jupyter raises on purpose, in one place.

The hierarchy::

    CheqJupyterError                  base class; catch this to catch them all
    ├── ConfigurationError            a setting is missing or wrong (API key, server URL, option)
    ├── ToolDefinitionError           a Python function cannot become a tool
    ├── ToolArgumentsError            arguments (from the model or an edit) fail the tool's schema
    ├── McpServerError                an MCP server failed to start, died or did not answer
    ├── McpToolError                  an MCP tool answered with an error (isError)
    ├── ApprovalError                 an approver could not reach a decision
    │   ├── FrontendUnavailableError  no widget frontend / kernel internals unknown
    │   └── RemoteApproverError       the remote approver (Cheqpoint) answered with an error
    ├── ModelError                    the model's service answered with an error
    ├── StructuredOutputError         the model's structured output failed validation every time
    ├── RunPendingError               a no-wait run's result was asked for before it finished
    └── AuditLogError                 the audit log is unreadable or its hash chain is broken

Messages are one sentence that names what was wrong and what to do.  API keys are scrubbed
from every message (and from ``ModelError.body``) when the error is made, so a server that
echoes the key cannot put it in a traceback; terminal control characters and bidi overrides
in a message are shown as escapes.  A user mistake inside
the ``%%mistral_agent`` magic is re-raised as IPython's ``UsageError`` (no traceback).
"""

from __future__ import annotations

from typing import Any

from ._safe_text import redact_value, safe_text

__all__ = [
    "ApprovalError",
    "AuditLogError",
    "CheqJupyterError",
    "ConfigurationError",
    "FrontendUnavailableError",
    "McpServerError",
    "McpToolError",
    "ModelError",
    "RemoteApproverError",
    "RunPendingError",
    "StructuredOutputError",
    "ToolArgumentsError",
    "ToolDefinitionError",
]


class CheqJupyterError(Exception):
    """Base class of every error raised by cheq-jupyter."""

    def __init__(self, *args: Any) -> None:
        # A message may quote a server: no key, no terminal control sequence gets through.
        super().__init__(*(safe_text(a) if isinstance(a, str) else redact_value(a)
                           for a in args))


class ConfigurationError(CheqJupyterError):
    """A setting is missing or wrong, e.g. no ``MISTRAL_API_KEY``."""


class ToolDefinitionError(CheqJupyterError):
    """A Python function cannot be turned into a Mistral tool."""


class ToolArgumentsError(CheqJupyterError):
    """Arguments do not validate against a tool's JSON schema."""

    def __init__(self, message: str, *, tool: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.tool = tool
        self.errors = errors or []


class McpServerError(CheqJupyterError):
    """An MCP server failed to start, stopped during a call, or did not answer in time."""


class McpToolError(CheqJupyterError):
    """An MCP tool answered with an error result (``isError``); the message is the server's."""


class ApprovalError(CheqJupyterError):
    """An approver could not reach a decision (the run fails closed)."""


class FrontendUnavailableError(ApprovalError):
    """No frontend can show an approval card, or the kernel's internals are not recognised."""


class RemoteApproverError(ApprovalError):
    """A remote approver (Cheqpoint) answered with an error."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ModelError(CheqJupyterError):
    """The model's service refused a request or answered with an error."""

    def __init__(self, message: str, *, status_code: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = redact_value(body)


class StructuredOutputError(CheqJupyterError):
    """The model's structured output failed validation on every attempt."""

    def __init__(self, message: str, *, attempts: list[tuple[str, str]]) -> None:
        super().__init__(message)
        #: ``(raw model content, validation error)`` for every attempt, in order.
        self.attempts = attempts


class RunPendingError(CheqJupyterError):
    """A no-wait run has not finished yet (its cards still wait for a decision)."""


class AuditLogError(CheqJupyterError):
    """The audit log cannot be read, or its hash chain is broken."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line
