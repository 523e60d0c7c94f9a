"""Turn a ``%%mistral_agent`` cell (options, body, namespace) into a checked run plan.

Everything a user can get wrong is found here, before anything runs, and reported as one
line through IPython's ``UsageError`` (no traceback).
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from IPython.core.error import UsageError
from pydantic import BaseModel

from .agent import AgentResult, Message
from .errors import CheqJupyterError, ToolDefinitionError
from .tools import Tool, as_tools

__all__ = ["CellPlan", "interpolate", "plan_cell", "split_names"]

@dataclass
class CellPlan:
    """A fully checked ``%%mistral_agent`` run."""

    prompt: str
    tools: dict[str, Tool]
    model: str
    max_steps: int
    timeout: float
    approver: str
    system: str | None = None
    output_type: type[BaseModel] | None = None
    out: str | None = None
    approve: list[str] = field(default_factory=list)
    deny: list[str] = field(default_factory=list)
    history: list[Message] | None = None
    audit_log: str = ""
    #: ``auto``, ``block`` or ``no-wait`` (see :mod:`cheq_jupyter.waitmode`).
    wait: str = "auto"
    request_timeout: float = 300.0
    #: ``--approve read-only``: approve calls whose MCP server claims they are read-only.
    approve_read_only: bool = False
    stream: bool = True
    reasoning_effort: str | None = None

#: The ``--approve`` word that opts in to approving on an MCP server's read-only claim.
READ_ONLY = "read-only"


class _Namespace(Mapping[str, Any]):
    """The user namespace for ``str.format_map``; a missing name is a usage error."""

    def __init__(self, ns: Mapping[str, Any]) -> None:
        self._ns = ns

    def __getitem__(self, key: str) -> Any:
        if key not in self._ns:
            raise UsageError(
                f"The prompt uses {{{key}}} but {key!r} is not defined; define it in an earlier "
                "cell, or write {{ and }} for literal braces."
            )
        return self._ns[key]

    def __iter__(self) -> Any:
        return iter(self._ns)

    def __len__(self) -> int:
        return len(self._ns)


def interpolate(body: str, ns: Mapping[str, Any]) -> str:
    """Fill ``{name}`` (and ``{name.attr}``, ``{name[0]}``) from ``ns``; ``{{`` is a brace."""
    try:
        return string.Formatter().vformat(body, (), _Namespace(ns))
    except UsageError:
        raise
    except (ValueError, IndexError, KeyError, AttributeError, TypeError) as exc:
        raise UsageError(
            f"The prompt's braces could not be filled ({exc}); write {{{{ and }}}} for literal "
            "braces, or fix the {name} reference."
        ) from None


def split_names(value: str | None) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``."""
    return [n.strip() for n in (value or "").split(",") if n.strip()]


def _lookup(ns: Mapping[str, Any], name: str, what: str, option: str) -> Any:
    if not name.isidentifier():
        raise UsageError(f"{option} got {name!r}, which is not a Python name; pass {what}.")
    if name not in ns:
        raise UsageError(f"{option} names {name!r}, which is not defined; define {what} first.")
    return ns[name]


def _toolset_tools(value: Any, name: str, member: str) -> list[Any]:
    """The tools of a toolset variable (``git``), or one of them (``git.git_status``)."""
    try:
        tools = list(value.cheq_tools())
    except CheqJupyterError as exc:
        raise UsageError(f"--tools {name}: {exc}") from None
    if not member:
        return tools
    chosen = [t for t in tools if member in (t.name, getattr(t, "server_name", None))]
    if not chosen:
        known = ", ".join(t.name for t in tools) or "none"
        raise UsageError(f"--tools names {name}.{member}, but {name} has no tool {member!r}; "
                         f"its tools are: {known}.")
    return chosen[:1]


def resolve_tools(names: list[str], ns: Mapping[str, Any]) -> dict[str, Tool]:
    items: list[Any] = []
    for name in names:
        var, _, member = name.partition(".")
        value = _lookup(ns, var, "a function to use as a tool", "--tools")
        if hasattr(value, "cheq_tools") and not callable(value):
            items.extend(_toolset_tools(value, var, member))
            continue
        if member:
            raise UsageError(f"--tools names {name!r}, but {var!r} is not an MCP toolset; "
                             "write var.tool only for a toolset from cheq_jupyter.mcp.")
        if not callable(value):
            raise UsageError(
                f"--tools names {name!r}, which is a {type(value).__name__}, not a function; "
                "pass the names of functions."
            )
        items.append(value)
    try:
        return as_tools(items)
    except ToolDefinitionError as exc:
        raise UsageError(str(exc)) from None


def resolve_schema(name: str | None, ns: Mapping[str, Any]) -> type[BaseModel] | None:
    if not name:
        return None
    value = _lookup(ns, name, "a pydantic model class", "--schema")
    if not (isinstance(value, type) and issubclass(value, BaseModel)):
        raise UsageError(
            f"--schema names {name!r}, which is not a pydantic model class; pass a subclass of "
            "pydantic.BaseModel."
        )
    return value


def resolve_history(name: str | None, ns: Mapping[str, Any]) -> list[Message] | None:
    if not name:
        return None
    value = _lookup(ns, name, "the result of an earlier %%mistral_agent cell", "--continue")
    if not isinstance(value, AgentResult):
        raise UsageError(
            f"--continue names {name!r}, which is a {type(value).__name__}, not an AgentResult; "
            "pass the variable an earlier cell stored with -o/--out."
        )
    return list(value.messages)


def plan_cell(args: Any, body: str, ns: Mapping[str, Any], defaults: Mapping[str, Any]) -> CellPlan:
    """Check the parsed options and the body against the namespace; build the plan."""
    if args.on_timeout == "approve":
        raise UsageError(
            "--on-timeout approve is refused: a call nobody approved never runs (fail closed); "
            "raise --timeout instead."
        )
    if args.out is not None and not args.out.isidentifier():
        raise UsageError(f"-o/--out got {args.out!r}, which is not a Python name; pass one.")
    if not body.strip():
        raise UsageError("The cell is empty; write the prompt in the cell below %%mistral_agent.")
    max_steps = args.max_steps if args.max_steps is not None else defaults["max_steps"]
    if max_steps < 1:
        raise UsageError(f"--max-steps is {max_steps}; it must be at least 1.")
    timeout = args.timeout if args.timeout is not None else defaults["timeout"]
    if timeout <= 0:
        raise UsageError(f"--timeout is {timeout}; give a positive number of seconds.")
    request_timeout = getattr(args, "request_timeout", None)
    if request_timeout is None:
        request_timeout = defaults.get("request_timeout", 300.0)
    if not request_timeout > 0 or request_timeout == float("inf"):
        raise UsageError(
            f"--request-timeout is {request_timeout}; give a positive number of seconds."
        )
    tools = resolve_tools(split_names(args.tools), ns)
    approve, deny = split_names(args.approve), split_names(args.deny)
    approve_read_only = READ_ONLY in approve
    approve = [n for n in approve if n != READ_ONLY]
    for option, names in (("--approve", approve), ("--deny", deny)):
        unknown = [n for n in names if n not in tools]
        if unknown:
            raise UsageError(
                f"{option} names {', '.join(unknown)}, which {'is' if len(unknown) == 1 else 'are'}"
                " not among the --tools; list it in --tools too."
            )
    wait = _wait_option(args, defaults)
    both = sorted(set(approve) & set(deny))
    if both:
        raise UsageError(f"{', '.join(both)} is in both --approve and --deny; choose one.")
    return CellPlan(
        prompt=interpolate(body, ns).strip(),
        tools=tools,
        model=args.model or defaults["model"],
        max_steps=max_steps,
        timeout=float(timeout),
        approver=args.approver or defaults["approver"],
        system=args.system if args.system is not None else (defaults.get("system") or None),
        output_type=resolve_schema(args.schema, ns),
        out=args.out,
        approve=approve,
        deny=deny,
        history=resolve_history(args.continue_, ns),
        audit_log=_unquoted(args.audit) if args.audit is not None
        else defaults.get("audit_log", ""),
        wait=wait,
        request_timeout=float(request_timeout),
        approve_read_only=approve_read_only,
        stream=getattr(args, "stream", True),
        reasoning_effort=getattr(args, "reasoning_effort", None),
    )


def _unquoted(value: str) -> str:
    """IPython keeps the quotes of ``--audit ''``: that is the empty string (no log)."""
    return "" if value in ("''", '""') else value


def _wait_option(args: Any, defaults: Mapping[str, Any]) -> str:
    """``--wait`` / ``--no-wait`` (not both), else the ``wait`` setting."""
    from .errors import ConfigurationError
    from .waitmode import normalize_wait

    block, no_wait = getattr(args, "wait", False), getattr(args, "no_wait", False)
    if block and no_wait:
        raise UsageError("--wait and --no-wait contradict each other; pass one of them.")
    if block:
        return "block"
    if no_wait:
        return "no-wait"
    try:
        return normalize_wait(defaults.get("wait", "auto"))
    except ConfigurationError as exc:
        raise UsageError(f"MistralAgentMagics.{exc}") from None
