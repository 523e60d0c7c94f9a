"""``KernelFrontend``: a real Jupyter kernel driven the way a notebook frontend drives it.

It starts ``python -m ipykernel_launcher`` with a chosen interpreter (by default the current
one, so the kernel sees the same packages), runs cells over the shell channel, and follows
iopub like JupyterLab does: outputs per cell, and the state of every ipywidgets model from its
``comm_open`` / ``comm_msg`` messages.  Widgets are clicked and edited with the same comm
messages the browser sends::

    from cheq_jupyter.testing import KernelFrontend

    with KernelFrontend() as kernel:
        running = kernel.execute_async("d = WidgetApprover(timeout=30)(request); print(d.status)")
        card, = kernel.wait_for_cards(1)
        kernel.click(card.widget("cheq-approve"))
        assert running.wait().stdout == "approved\\n"

Everything is single-threaded: waiting methods read the kernel's messages until their
condition holds or their timeout passes (then ``TimeoutError`` says what was awaited).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, overload

__all__ = ["Card", "Execution", "ExecutionResult", "KernelFrontend"]

#: The interpreter kernels start with when none is given (the kernel matrix sets it).
KERNEL_PYTHON_ENV = "CHEQ_JUPYTER_KERNEL_PYTHON"
_FRONTEND_MARKERS = ("VSCODE_PID", "VSCODE_CWD", "VSCODE_IPC_HOOK_CLI", "COLAB_RELEASE_TAG")
_MODEL_REF = "IPY_MODEL_"
_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
_TAGS = re.compile(r"<[^>]+>")


@dataclass
class ExecutionResult:
    """What one cell produced, as a notebook would show it."""

    msg_id: str
    status: str  # "ok", "error" or "aborted" (from the execute_reply)
    outputs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def _streams(self, name: str) -> str:
        return "".join(
            c["text"] for t, c in self.outputs if t == "stream" and c.get("name") == name
        )

    @property
    def stdout(self) -> str:
        return self._streams("stdout")

    @property
    def stderr(self) -> str:
        return self._streams("stderr")

    @property
    def error(self) -> dict[str, Any] | None:
        """``{"ename", "evalue", "traceback"}`` of the cell's exception, if any."""
        for msg_type, content in self.outputs:
            if msg_type == "error":
                return content
        return None

    @property
    def displays(self) -> list[dict[str, Any]]:
        """The mime bundles of ``display_data`` and ``execute_result`` outputs, in order."""
        return [
            c.get("data", {})
            for t, c in self.outputs
            if t in ("display_data", "execute_result", "update_display_data")
        ]

    @property
    def html(self) -> list[str]:
        """Every ``text/html`` output (what nbviewer or GitHub would render)."""
        return [d["text/html"] for d in self.displays if "text/html" in d]


class Execution:
    """A cell sent to the kernel; :meth:`wait` for its result."""

    def __init__(self, frontend: KernelFrontend, msg_id: str) -> None:
        self.frontend = frontend
        self.msg_id = msg_id
        self.outputs: list[tuple[str, dict[str, Any]]] = []
        self.reply: dict[str, Any] | None = None
        self.idle = False

    @property
    def done(self) -> bool:
        return self.reply is not None and self.idle

    def result(self) -> ExecutionResult:
        if self.reply is None:
            raise RuntimeError(f"Cell {self.msg_id} has not finished; call wait() first.")
        return ExecutionResult(self.msg_id, str(self.reply.get("status")), list(self.outputs))

    def wait(self, timeout: float = 60.0) -> ExecutionResult:
        self.frontend.wait_until(lambda: self.done, timeout=timeout, what=f"cell {self.msg_id}")
        return self.result()


class Card:
    """One approval card (a widget with the ``cheq-card`` class) seen from the frontend."""

    def __init__(self, frontend: KernelFrontend, model_id: str) -> None:
        self.frontend = frontend
        self.model_id = model_id

    def __repr__(self) -> str:
        return f"Card({self.model_id!r}, status={self.status!r})"

    def descendants(self) -> Iterator[str]:
        return self.frontend.descendants(self.model_id)

    def widget(self, cls: str) -> str:
        """The model id of this card's widget with ``_dom_classes`` containing ``cls``."""
        for model_id in self.descendants():
            if cls in self.frontend.widgets.get(model_id, {}).get("_dom_classes", ()):
                return model_id
        raise LookupError(f"Card {self.model_id} has no widget with class {cls!r}.")

    def state(self, cls: str) -> dict[str, Any]:
        return self.frontend.widgets[self.widget(cls)]

    def text(self, cls: str) -> str:
        """The visible text of the widget with class ``cls`` (HTML tags removed)."""
        return self.frontend.text(self.widget(cls))

    @property
    def status(self) -> str:
        """The status line: "Waiting for your decision." until decided."""
        return self.text("cheq-status")

    @property
    def decided(self) -> bool:
        """True once the card's controls are disabled (Reject is disabled only then)."""
        return bool(self.state("cheq-reject").get("disabled", False))

    @property
    def html(self) -> str:
        """All HTML this card renders (its HTML widgets' values), raw."""
        return "".join(
            str(self.frontend.widgets[m].get("value", ""))
            for m in self.descendants()
            if self.frontend.widgets.get(m, {}).get("_model_name") == "HTMLModel"
        )

    def click(self, cls: str) -> None:
        self.frontend.click(self.widget(cls))

    def set_value(self, cls: str, value: Any) -> None:
        self.frontend.set_value(self.widget(cls), value)


class KernelFrontend:
    """Start a kernel, run cells, follow widgets, click them (see the module doc).

    ``python`` is the interpreter of the kernel (default: ``$CHEQ_JUPYTER_KERNEL_PYTHON``, else
    ``sys.executable``); ``env`` adds
    environment variables for the kernel; ``cwd`` is its working directory.  With
    ``hold_comms=True`` it behaves like the frontends that do not deliver widget messages to a
    busy kernel (VS Code, microsoft/vscode-jupyter#17360): every click and edit made while a
    cell runs is held, and sent in order once no cell is running.
    """

    def __init__(
        self,
        *,
        python: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        startup_timeout: float = 60.0,
        hold_comms: bool = False,
    ) -> None:
        self.hold_comms = hold_comms
        #: Widget messages held until the running cells finish (``hold_comms``).
        self.held: list[dict[str, Any]] = []
        self.python = python or os.environ.get(KERNEL_PYTHON_ENV) or sys.executable
        self.env = dict(env or {})
        self.cwd = cwd
        self.startup_timeout = startup_timeout
        self.widgets: dict[str, dict[str, Any]] = {}
        #: ``(model id, msg_id of the cell)`` of every widget view displayed, in order
        self.displayed: list[tuple[str, str]] = []
        self.other_outputs: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self._executions: dict[str, Execution] = {}
        self._spec_dir: str | None = None
        self.km: Any = None
        self.kc: Any = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> KernelFrontend:
        from jupyter_client.kernelspec import KernelSpecManager
        from jupyter_client.manager import KernelManager

        # A private kernelspec with an absolute interpreter path: the installed "python3"
        # spec says just "python", which may resolve to another environment.
        self._spec_dir = tempfile.mkdtemp(prefix="cheq-kernelspec-")
        os.makedirs(os.path.join(self._spec_dir, "cheq-test"))
        spec = {
            "argv": [self.python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "cheq-jupyter test kernel",
            "language": "python",
        }
        with open(os.path.join(self._spec_dir, "cheq-test", "kernel.json"), "w") as f:
            json.dump(spec, f)
        ksm = KernelSpecManager(kernel_dirs=[self._spec_dir])
        self.km = KernelManager(kernel_name="cheq-test", kernel_spec_manager=ksm)
        # The kernel is driven by this frontend, not by the editor the tests may run in: no
        # VS Code or Colab marker leaks in (they switch the card to no-wait) unless asked for.
        inherited = {k: v for k, v in os.environ.items() if k not in _FRONTEND_MARKERS}
        env = {**inherited, "PYDEVD_DISABLE_FILE_VALIDATION": "1", **self.env}
        try:
            self.km.start_kernel(env=env, cwd=self.cwd or os.getcwd())
            self.kc = self.km.blocking_client()
            self.kc.start_channels()
            self.kc.wait_for_ready(timeout=self.startup_timeout)
        except BaseException:
            self.shutdown()
            raise
        return self

    def shutdown(self) -> None:
        """Stop the channels and the kernel (idempotent)."""
        if self.kc is not None:
            self.kc.stop_channels()
            self.kc = None
        if self.km is not None:
            if self.km.has_kernel:
                self.km.shutdown_kernel(now=True)
            self.km = None
        if self._spec_dir is not None:
            shutil.rmtree(self._spec_dir, ignore_errors=True)
            self._spec_dir = None

    def __enter__(self) -> KernelFrontend:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def interrupt(self) -> None:
        """Interrupt the kernel, like the stop button."""
        self.km.interrupt_kernel()

    def restart(self, timeout: float = 60.0) -> None:
        """Restart the kernel, like the restart button: every widget and held message is gone."""
        self.km.restart_kernel(now=True)
        self.kc.wait_for_ready(timeout=timeout)
        self.widgets.clear()
        self.displayed.clear()
        self.held.clear()
        for execution in self._executions.values():
            execution.idle = True
            if execution.reply is None:
                execution.reply = {"status": "restarted"}

    @property
    def busy(self) -> bool:
        """Whether a cell sent by this frontend has not finished."""
        return any(not e.done for e in self._executions.values())

    # -- running cells -------------------------------------------------------------------------
    def execute_async(self, code: str, *, allow_stdin: bool = True) -> Execution:
        """Send a cell (as JupyterLab does, with a ``cellId``) and return at once.

        ``allow_stdin`` is what the request says (JupyterLab says True; nbclient False); this
        frontend never answers ``input()``, so a cell that asks for input waits until timeout.
        """
        content = {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": allow_stdin,
            "stop_on_error": True,
        }
        msg = self.kc.session.msg(
            "execute_request", content, metadata={"cellId": uuid.uuid4().hex}
        )
        execution = Execution(self, msg["header"]["msg_id"])
        self._executions[execution.msg_id] = execution
        self.kc.shell_channel.send(msg)
        return execution

    @overload
    def execute(
        self, code: str, *, wait: Literal[True] = ..., timeout: float = ...
    ) -> ExecutionResult: ...
    @overload
    def execute(self, code: str, *, wait: Literal[False], timeout: float = ...) -> Execution: ...

    def execute(
        self, code: str, *, wait: bool = True, timeout: float = 60.0
    ) -> ExecutionResult | Execution:
        """Run a cell; with ``wait`` (default) return its :class:`ExecutionResult`."""
        execution = self.execute_async(code)
        return execution.wait(timeout) if wait else execution

    # -- widgets -------------------------------------------------------------------------------
    def descendants(self, model_id: str) -> Iterator[str]:
        """``model_id`` and every widget below it, depth first: through ``children``, and
        through the widget views an ``Output`` widget shows (as a notebook renders them)."""
        seen: set[str] = set()
        stack = [model_id]
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            yield current
            state = self.widgets.get(current, {})
            children = state.get("children") or []
            refs = [c[len(_MODEL_REF):] for c in children if isinstance(c, str)
                    and c.startswith(_MODEL_REF)]
            for output in state.get("outputs") or ():
                view = (output.get("data") or {}).get(_WIDGET_VIEW) if isinstance(
                    output, dict) else None
                if isinstance(view, dict) and isinstance(view.get("model_id"), str):
                    refs.append(view["model_id"])
            stack.extend(reversed(refs))

    def find(self, cls: str, *, execution: Execution | None = None) -> list[str]:
        """Model ids of the displayed widgets whose ``_dom_classes`` contain ``cls``.

        Like a notebook, this sees only widgets that were displayed (and their children), in
        display order; with ``execution``, only those displayed by that cell.
        """
        found: list[str] = []
        for root, parent in self.displayed:
            if execution is not None and parent != execution.msg_id:
                continue
            for model_id in self.descendants(root):
                classes = self.widgets.get(model_id, {}).get("_dom_classes", ())
                if cls in classes and model_id not in found:
                    found.append(model_id)
        return found

    def cards(self, *, execution: Execution | None = None) -> list[Card]:
        """The approval cards shown so far (by ``execution`` only, if given), oldest first."""
        return [Card(self, m) for m in self.find("cheq-card", execution=execution)]

    def wait_for_cards(
        self, n: int, *, execution: Execution | None = None, timeout: float = 30.0
    ) -> list[Card]:
        """Wait until at least ``n`` cards exist (shown by ``execution``); return the newest n."""
        self.wait_until(
            lambda: len(self.find("cheq-card", execution=execution)) >= n,
            timeout=timeout,
            what=f"{n} approval card(s)",
        )
        return self.cards(execution=execution)[-n:]

    def text(self, model_id: str) -> str:
        """A widget's ``value`` as visible text (tags removed, entities decoded)."""
        value = str(self.widgets[model_id].get("value", ""))
        return html.unescape(_TAGS.sub("", value))

    def _send_comm(self, model_id: str, data: dict[str, Any]) -> str:
        if model_id not in self.widgets:
            raise LookupError(f"No widget {model_id!r} is known to this frontend.")
        msg = self.kc.session.msg("comm_msg", {"comm_id": model_id, "data": data})
        if self.hold_comms and (self.busy or self.held):
            self.held.append(msg)
        else:
            self.kc.shell_channel.send(msg)
        return str(msg["header"]["msg_id"])

    def _release_held(self) -> None:
        if self.held and not self.busy:
            held, self.held = self.held, []
            for msg in held:
                self.kc.shell_channel.send(msg)

    def outputs_in(self, model_id: str) -> list[dict[str, Any]]:
        """The mime bundles shown by Output widgets at or below ``model_id``, in order."""
        return [
            dict(out.get("data", {}))
            for m in self.descendants(model_id)
            if self.widgets.get(m, {}).get("_model_name") == "OutputModel"
            for out in self.widgets[m].get("outputs", ())
        ]

    def click(self, model_id: str) -> str:
        """Click a button: the ``custom`` ``click`` event the browser sends."""
        return self._send_comm(model_id, {"method": "custom", "content": {"event": "click"}})

    def set_value(self, model_id: str, value: Any) -> str:
        """Change a widget's ``value`` as typing into it would."""
        self.widgets[model_id]["value"] = value
        return self._send_comm(
            model_id, {"method": "update", "state": {"value": value}, "buffer_paths": []}
        )

    # -- the message pump ----------------------------------------------------------------------
    def wait_until(
        self, condition: Callable[[], bool], *, timeout: float = 30.0, what: str = "condition"
    ) -> None:
        """Handle kernel messages until ``condition()`` holds, or raise ``TimeoutError``."""
        deadline = time.monotonic() + timeout
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"Waited {timeout:g} s for {what} in the kernel.")
            self.pump(left)

    def pump(self, timeout: float = 0.0) -> int:
        """Handle the messages that arrive within ``timeout`` seconds; return how many."""
        import zmq

        poller = zmq.Poller()
        iopub, shell = self.kc.iopub_channel, self.kc.shell_channel
        poller.register(iopub.socket, zmq.POLLIN)
        poller.register(shell.socket, zmq.POLLIN)
        events = dict(poller.poll(max(0, int(timeout * 1000))))
        handled = 0
        if iopub.socket in events:
            while iopub.msg_ready():
                self._on_iopub(iopub.get_msg(timeout=0))
                handled += 1
        if shell.socket in events:
            while shell.msg_ready():
                self._on_shell(shell.get_msg(timeout=0))
                handled += 1
        self._release_held()
        return handled

    def _on_shell(self, msg: dict[str, Any]) -> None:
        parent = msg.get("parent_header", {}).get("msg_id")
        execution = self._executions.get(parent)
        if execution is not None and msg["header"]["msg_type"] == "execute_reply":
            execution.reply = msg["content"]

    def _on_iopub(self, msg: dict[str, Any]) -> None:
        msg_type = msg["header"]["msg_type"]
        content = msg["content"]
        parent = msg.get("parent_header", {}).get("msg_id", "")
        if msg_type == "comm_open":
            if content.get("target_name") == "jupyter.widget":
                self.widgets[content["comm_id"]] = dict(content["data"].get("state", {}))
        elif msg_type == "comm_msg":
            data = content.get("data", {})
            model = self.widgets.get(content["comm_id"])
            if model is not None and data.get("method") in ("update", "echo_update"):
                model.update(data.get("state", {}))
        elif msg_type == "comm_close":
            self.widgets.pop(content["comm_id"], None)
        elif msg_type == "status":
            execution = self._executions.get(parent)
            if execution is not None and content.get("execution_state") == "idle":
                execution.idle = True
        elif msg_type in (
            "stream", "display_data", "execute_result", "error", "update_display_data",
            "clear_output",
        ):
            execution = self._executions.get(parent)
            target = execution.outputs if execution else self.other_outputs.setdefault(parent, [])
            target.append((msg_type, content))
            view = content.get("data", {}).get(_WIDGET_VIEW) if msg_type != "error" else None
            if isinstance(view, dict) and "model_id" in view:
                self.displayed.append((str(view["model_id"]), parent))
