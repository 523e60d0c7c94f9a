"""``%mistral_agent --check``: does a click reach the kernel while a cell runs, here?

It shows a test card with one button and keeps its cell running for a few seconds (20 by
default), handling widget messages the way the blocking card does.  A click that arrives
then proves the blocking card works in this frontend ("clicks arrive").  If none arrives, the
user did not click, or the frontend holds widget messages until the cell ends (VS Code does):
a click held that way reaches the kernel after the cell and the test card then says "clicks
are held".  Either way ``auto`` uses the finding for the rest of the session, and the cell
ends by printing the mode cells will use and how to change it.
"""

from __future__ import annotations

import html
from typing import Any

from . import _blocking, waitmode
from .errors import FrontendUnavailableError

__all__ = ["run_check"]

_CHANGE = (
    "Change it per cell with %%mistral_agent --wait / --no-wait, or for the session with "
    "%config MistralAgentMagics.wait = 'auto' | 'block' | 'no-wait'."
)


def run_check(seconds: float, setting: Any = "auto") -> str:
    """Run the check in the current cell; returns the verdict line (also printed)."""
    import ipywidgets as w
    from IPython.display import display

    state = {"running": True, "arrived": False}
    button = w.Button(description="Click me", button_style="primary",
                      _dom_classes=["cheq-check-click"])
    status = w.HTML("", _dom_classes=["cheq-check-status"])
    intro = w.HTML(
        f"<b>cheq-jupyter self-check</b>: click the button within {seconds:g} seconds, "
        "while this cell is running."
    )

    def clicked(_button: Any) -> None:
        button.disabled = True
        if state["running"]:
            state["arrived"] = True
            return
        if state["arrived"]:
            return
        # After the cell: the frontend held the click until the cell had finished.
        waitmode.record_check("held")
        status.value = html.escape(
            "Your click reached the kernel only after the check's cell had finished: "
            "clicks are held while a cell runs in this frontend, so the blocking card "
            "cannot work here. auto now uses no-wait mode in this session."
        )

    button.on_click(clicked)
    display(w.VBox([intro, button, status], _dom_classes=["cheq-check"]))  # type: ignore[no-untyped-call]
    try:
        arrived = _blocking.wait_for(lambda: state["arrived"], timeout=seconds)
    except FrontendUnavailableError as exc:
        state["running"] = False
        verdict = f"The blocking card cannot wait on this kernel: {exc}"
        waitmode.record_check("silent")
    else:
        state["running"] = False
        if arrived:
            waitmode.record_check("arrive")
            verdict = ("Clicks arrive: your click reached the kernel while this cell was "
                       "running, so the blocking card works here.")
        else:
            waitmode.record_check("silent")
            verdict = (f"No click reached the kernel within {seconds:g} seconds while this "
                       "cell was running: either you did not click, or clicks are held until "
                       "the cell ends (VS Code does that). If you clicked, click again: the "
                       "test card will say whether your click was held.")
    status.value = html.escape(verdict)
    choice = waitmode.choose_wait(setting)
    lines = [verdict, f"Mode: {choice.mode} ({choice.reason}).", _CHANGE]
    print("\n".join(lines), flush=True)
    return verdict
