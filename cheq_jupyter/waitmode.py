"""Block the cell for the card, or not: the ``wait`` setting and what ``auto`` picks.

========================================================  ===========================
Situation (first row that applies wins)                   Mode
========================================================  ===========================
``--wait`` / ``wait = "block"`` (or ``True``)             block
``--no-wait`` / ``wait = "no-wait"`` (or ``False``)       no-wait
auto, ``%mistral_agent --check`` saw a click arrive       block
auto, the check saw no click arrive while its cell ran    no-wait
auto, VS Code (``VSCODE_PID``, ``VSCODE_CWD`` or          no-wait
``VSCODE_IPC_HOOK_CLI`` in the kernel's environment)
auto, Google Colab (``COLAB_RELEASE_TAG`` set, or         no-wait
``google.colab`` imported)
auto, an ipykernel whose internals the blocking card      no-wait
does not recognise (:func:`cheq_jupyter._blocking.check_kernel`)
auto, otherwise (JupyterLab, Notebook 7, nbclassic...)    block
========================================================  ===========================

Only the card waits for a click: headless runs, the console, Cheqpoint and policies are not
affected.  Blocking keeps "Run All" in order (later cells wait for the decisions); no-wait
works in every frontend but the cell ends before the run does.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .errors import ConfigurationError, FrontendUnavailableError

__all__ = [
    "WAIT_VALUES",
    "WaitChoice",
    "WaitSetting",
    "choose_wait",
    "detect_frontend",
    "in_kernel",
    "normalize_wait",
    "record_check",
]

WaitSetting = Literal["auto", "block", "no-wait"]
#: What ``MistralAgentMagics.wait`` accepts (``True`` means block, ``False`` no-wait).
WAIT_VALUES: tuple[Any, ...] = ("auto", "block", "no-wait", True, False)
_VSCODE_VARS = ("VSCODE_PID", "VSCODE_CWD", "VSCODE_IPC_HOOK_CLI")
CheckVerdict = Literal["arrive", "held", "silent"]
#: What ``%mistral_agent --check`` found in this session (``None``: not run).
_CHECK: CheckVerdict | None = None


def normalize_wait(value: Any) -> WaitSetting:
    """``True``/``"block"``/``"wait"`` -> block, ``False``/``"no-wait"`` -> no-wait, ``auto``."""
    if value is True:
        return "block"
    if value is False:
        return "no-wait"
    text = str(value).strip().lower().replace("_", "-")
    if text in ("block", "wait", "true"):
        return "block"
    if text in ("no-wait", "nowait", "false"):
        return "no-wait"
    if text == "auto":
        return "auto"
    raise ConfigurationError(
        f"wait is {value!r}; use 'auto', 'block' (True) or 'no-wait' (False)."
    )


def record_check(verdict: CheckVerdict) -> None:
    """Remember the self-check's finding for ``auto`` in this session."""
    global _CHECK
    _CHECK = verdict


def detect_frontend(
    environ: Mapping[str, str] | None = None, modules: Mapping[str, Any] | None = None
) -> str | None:
    """``"VS Code (VSCODE_PID is set)"``, ``"Google Colab (...)"``, or ``None``."""
    env = os.environ if environ is None else environ
    mods = sys.modules if modules is None else modules
    for name in _VSCODE_VARS:
        if env.get(name):
            return f"VS Code ({name} is set)"
    if env.get("COLAB_RELEASE_TAG"):
        return "Google Colab (COLAB_RELEASE_TAG is set)"
    if "google.colab" in mods:
        return "Google Colab (google.colab is loaded)"
    return None


def _ipykernel_version() -> str:
    from ._blocking import ipykernel_version

    return ipykernel_version() or "?"


def in_kernel() -> bool:
    """Whether this runs in a Jupyter kernel (the only place a card can be shown)."""
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    shell = get() if callable(get) else None
    return getattr(shell, "kernel", None) is not None


@dataclass(frozen=True)
class WaitChoice:
    """Whether the card blocks the cell, why, and from which setting."""

    block: bool
    reason: str
    setting: WaitSetting

    @property
    def mode(self) -> str:
        return "blocking" if self.block else "no-wait"

    def notice(self, out: str | None = None) -> str:
        """The one line a cell shows about it."""
        if self.block:
            return (f"cheq-jupyter: blocking mode ({self.reason}); the cell waits for your "
                    "decisions. If clicks do nothing, use --no-wait.")
        held = f"{out} holds a PendingRun now and its result when it ends" if out else (
            "pass -o VAR to keep its result")
        return (f"cheq-jupyter: no-wait mode ({self.reason}). This cell ends once the cards "
                f"show and the run goes on as you decide; {held}. Run All does not wait for "
                "it.")


def choose_wait(
    setting: Any,
    *,
    environ: Mapping[str, str] | None = None,
    modules: Mapping[str, Any] | None = None,
    check_kernel: bool = True,
) -> WaitChoice:
    """What ``setting`` means here (see the module's table).  Call it from the cell."""
    wanted = normalize_wait(setting)
    if wanted == "block":
        return WaitChoice(True, "asked for with --wait or wait='block'", wanted)
    if wanted == "no-wait":
        return WaitChoice(False, "asked for with --no-wait or wait='no-wait'", wanted)
    if _CHECK == "arrive":
        return WaitChoice(True, "the self-check saw a click reach the busy kernel", wanted)
    if _CHECK in ("held", "silent"):
        return WaitChoice(
            False, "the self-check saw no click reach the kernel while its cell ran", wanted
        )
    frontend = detect_frontend(environ, modules)
    if frontend is not None:
        return WaitChoice(
            False, f"{frontend}: it may hold widget clicks until a cell ends", wanted
        )
    if check_kernel:
        from . import _blocking

        try:
            _blocking.check_kernel()
        except FrontendUnavailableError:
            if not in_kernel():  # no frontend at all: the card fails closed either way
                return WaitChoice(True, "not in a Jupyter kernel", wanted)
            return WaitChoice(
                False,
                f"the blocking card does not know this ipykernel ({_ipykernel_version()})",
                wanted,
            )
    return WaitChoice(
        True,
        f"ipykernel {_ipykernel_version()} is supported and no VS Code or Colab was detected",
        wanted,
    )
