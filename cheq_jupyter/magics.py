"""``%%mistral_agent``: run the gated Mistral agent from a notebook cell.

This class only parses and dispatches: :mod:`cheq_jupyter._cell` checks the options against
the namespace, :mod:`cheq_jupyter.session` runs the loop, :mod:`cheq_jupyter.display` shows it.
Settings are traitlets, e.g. ``%config MistralAgentMagics.model = "mistral-small-latest"``.
"""

from __future__ import annotations

import html
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Enum, Float, Int, Unicode

__all__ = ["MistralAgentMagics"]

#: Approver names for ``--approver`` and the ``approver`` setting.
APPROVERS = ("auto", "card", "console", "cheqpoint", "race", "policy", "replay")
#: ``--reasoning-effort`` values (the SDK's; kept here so loading the magic stays cheap).
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")


def _options(func: Any) -> Any:
    """The options shared by the cell magic (the line magic accepts --tools only)."""
    decorators = [
        magic_arguments(),
        argument("-m", "--model", metavar="NAME",
                 help="Mistral model name (default: the model setting)."),
        argument("-t", "--tools", metavar="NAMES",
                 help="Comma-separated names of functions in the namespace to offer as tools."),
        argument("-s", "--schema", metavar="NAME",
                 help="A pydantic model in the namespace: extract the answer into it."),
        argument("-o", "--out", metavar="VAR", help="Store the AgentResult in this variable."),
        argument("--system", metavar="TEXT", help="System prompt."),
        argument("--max-steps", type=int, metavar="N", help="Most tool-calling turns."),
        argument("--timeout", type=float, metavar="SECONDS",
                 help="How long a decision may take; then the call is not approved."),
        argument("--request-timeout", type=float, metavar="SECONDS",
                 help="How long one model request may take before the cell stops with an error."),
        argument("--on-timeout", choices=("reject", "approve"), default="reject",
                 help="What a timeout means: always reject (fail closed)."),
        argument("--approve", metavar="NAMES",
                 help="Tools that run without asking; 'read-only' adds the MCP tools whose "
                      "server claims they are read-only."),
        argument("--deny", metavar="NAMES", help="Tools that are always refused."),
        argument("--approver", choices=APPROVERS,
                 help="Who decides (race = the card and Cheqpoint at once)."),
        argument("--audit", metavar="PATH", help="Audit log file ('' to disable)."),
        argument("--continue", dest="continue_", metavar="VAR",
                 help="Carry on the conversation held in an earlier result."),
        argument("--wait", action="store_true",
                 help="Block the cell until the cards are decided (the card approver)."),
        argument("--no-wait", dest="no_wait", action="store_true",
                 help="End the cell once the cards show; the run goes on as you decide "
                      "(for VS Code, Colab). Default: the wait setting (auto)."),
        argument("--no-stream", dest="stream", action="store_false",
                 help="Send plain requests instead of streaming the model's answers."),
        argument("--reasoning-effort", metavar="LEVEL", choices=REASONING_EFFORTS,
                 help="Reasoning models: none, minimal, low, medium, high, xhigh or max."),
    ]
    for decorate in reversed(decorators):
        func = decorate(func)
    return func


def _mcp_lines() -> list[str]:
    """The MCP servers of this kernel and their tools (none listed when none was made)."""
    import sys

    module = sys.modules.get("cheq_jupyter.mcp")
    sets = module.toolsets() if module is not None else []
    if not sets:
        return []
    lines = ["MCP servers (annotations are the servers' own claims):"]
    for toolset in sets:
        lines += ["  " + line for line in toolset.describe().splitlines()]
    return lines


@magics_class
class MistralAgentMagics(Magics):
    """The ``%%mistral_agent`` cell magic and the ``%mistral_agent`` line magic."""

    model = Unicode("mistral-large-latest", help="Mistral model to use.").tag(config=True)
    timeout = Float(600.0, help="Seconds a decision may take before it is 'not approved'.").tag(
        config=True
    )
    max_steps = Int(10, help="Most tool-calling turns per cell.").tag(config=True)
    approver = Enum(list(APPROVERS), default_value="auto",
                    help="Default approver (auto picks the card, console or policy).").tag(
        config=True
    )
    system = Unicode("", help="Default system prompt.").tag(config=True)
    request_timeout = Float(
        300.0, help="Seconds one model request may take (slow reasoning models need minutes)."
    ).tag(config=True)
    audit_log = Unicode("cheq-audit.jsonl",
                        help="Where every decision is appended ('' to disable).").tag(config=True)
    wait = Enum(["auto", "block", "no-wait", True, False], default_value="auto",
                help="Whether the card blocks the cell: 'block' (True), 'no-wait' (False: the "
                     "cell ends and the run goes on as you decide) or 'auto' (block where "
                     "clicks reach a busy kernel, no-wait in VS Code, Colab and unknown "
                     "kernels).").tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        if shell is not None and self not in shell.configurables:
            shell.configurables.append(self)  # so %config finds it, as storemagic does

    @property
    def _user_ns(self) -> dict[str, Any]:
        assert self.shell is not None, "the magics are registered on a shell"
        ns: dict[str, Any] = self.shell.user_ns
        return ns

    def _defaults(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in
                ("model", "timeout", "max_steps", "approver", "system", "audit_log", "wait",
                 "request_timeout")}

    @_options
    @cell_magic
    def mistral_agent(self, line: str, cell: str) -> Any:
        """Run the cell body as a prompt; every tool call waits for a human decision."""
        from ._cell import plan_cell
        from .session import run_plan

        args = parse_argstring(self.mistral_agent, line)
        plan = plan_cell(args, cell, self._user_ns, self._defaults())
        return run_plan(plan, self._user_ns)

    @magic_arguments()
    @argument("-t", "--tools", metavar="NAMES", help="Show the tools these functions would be.")
    @argument("--check", nargs="?", const=20.0, type=float, metavar="SECONDS",
              help="Show a test card: does a click reach the kernel while a cell runs here? "
                   "Then say which wait mode cells will use (default 20 seconds).")
    @line_magic("mistral_agent")  # type: ignore[arg-type]
    def mistral_agent_info(self, line: str) -> None:
        """Show the settings, the options and (with --tools) the tools a cell would offer."""
        from IPython.display import display

        from ._cell import resolve_tools, split_names

        args = parse_argstring(self.mistral_agent_info, line)
        if args.check is not None:
            from .selfcheck import run_check

            if args.check <= 0:
                raise UsageError(f"--check got {args.check:g}; give a number of seconds above 0.")
            run_check(args.check, self.wait)
            return
        tools = resolve_tools(split_names(args.tools), self._user_ns)
        settings = self._defaults()
        lines = ["%%mistral_agent settings (change with %config MistralAgentMagics.<name> = ...):"]
        lines += [f"  {k} = {v!r}" for k, v in settings.items()]
        if tools:
            lines.append("Tools:")
            for t in tools.values():
                params = ", ".join(t.parameters.get("properties", {}))
                lines.append(f"  {t.name}({params}): {t.description.splitlines()[0]}")
        elif args.tools is None:
            lines.append("Tools: none until you pass -t/--tools NAMES "
                         "(e.g. %mistral_agent -t lookup,refund).")
        lines += _mcp_lines()
        lines.append("Options of %%mistral_agent (details: %%mistral_agent?):")
        parser = self.mistral_agent.parser
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                flags = "/".join(action.option_strings)
                meta = f" {action.metavar}" if action.metavar else ""
                if action.choices:
                    meta = " {" + ",".join(map(str, action.choices)) + "}"
                lines.append(f"  {flags + meta}\n      {action.help}")
        text = "\n".join(lines)
        display({"text/plain": text,
                 "text/html": f"<pre class='cheq-help'>{html.escape(text)}</pre>"}, raw=True)

