"""No-wait mode: the cell finishes once the cards are shown; the run goes on as you decide.

Some frontends (VS Code, Colab) hold a widget's click until the running cell has finished, so
a cell that blocks for a click never gets it.  In no-wait mode the cell shows the first cards
and ends; the agent loop (the same I/O-free generator the blocking drivers run, see
:class:`cheq_jupyter.agent._Run`) waits in the idle kernel and resumes from the cards' widget
callbacks: the model's next turn, the tools that were approved, later cards and the final
answer all appear in the run's own output area (a widget box in the cell, updated in place).

The guarantees are the blocking card's: a tool runs only for an ``approved`` decision with
exactly the arguments approved; every decision is recorded (audit log) before any tool runs;
undecided calls become ``timed_out`` when the timeout fires (a timer on the kernel's event
loop; a click that reaches the kernel after the deadline is ``timed_out`` too); the run lives
only in the kernel's memory, so a kernel restart runs nothing.  Each run has its own cards,
approver and output area, so runs started by different cells never mix.

``start_run`` returns a :class:`PendingRun` at once: ``done()``, ``result()``, ``wait()``,
``cancel()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import _blocking, _sdk
from . import _safe_text as html  # escapes and neutralises controls, bidi and keys
from .agent import (
    DEFAULT_MODEL,
    AgentEvents,
    AgentResult,
    DecisionRecorder,
    _approver_name,
    _build_spec,
    _call_model,
    _client,
    _Decide,
    _Invoke,
    _invoke,
    _ModelCall,
    _Run,
    _sync_tools_only,
)
from .approval import ApprovalRequest, Approver, Decision, Policy
from .errors import (
    ApprovalError,
    FrontendUnavailableError,
    RunPendingError,
)

__all__ = ["PendingRun", "live_runs", "start_run"]

log = logging.getLogger("cheq_jupyter")

#: Runs still waiting in this kernel, by run id (a restart empties it: nothing survives).
_LIVE: dict[str, PendingRun] = {}


def live_runs() -> list[PendingRun]:
    """The no-wait runs of this kernel that have not finished, oldest first."""
    return list(_LIVE.values())


# -- timers on the kernel's event loop ---------------------------------------------------------


@dataclass
class _Timer:
    due: float
    callback: Callable[[], None]
    fired: bool = False
    handle: Any = None


_TIMERS: list[_Timer] = []


def _event_loop() -> asyncio.AbstractEventLoop:
    kernel = _blocking._kernel()  # FrontendUnavailableError outside a Jupyter kernel
    loop = getattr(getattr(kernel, "io_loop", None), "asyncio_loop", None)
    if isinstance(loop, asyncio.AbstractEventLoop):
        return loop
    return asyncio.get_event_loop()


def _fire(timer: _Timer) -> None:
    if timer.fired:
        return
    timer.fired = True
    if timer in _TIMERS:
        _TIMERS.remove(timer)
    try:
        timer.callback()
    except Exception:  # a timer must never take the kernel's loop down
        log.exception("A no-wait run's timer failed.")


def later(seconds: float, callback: Callable[[], None]) -> Callable[[], None]:
    """Run ``callback`` on the kernel's event loop after ``seconds``; returns its cancel.

    While a cell waits in :meth:`PendingRun.wait` (the loop is blocked then), due timers run
    from that wait instead.
    """
    timer = _Timer(time.monotonic() + max(0.0, seconds), callback)
    _TIMERS.append(timer)
    timer.handle = _event_loop().call_later(max(0.0, seconds), _fire, timer)

    def cancel() -> None:
        timer.fired = True
        timer.handle.cancel()
        if timer in _TIMERS:
            _TIMERS.remove(timer)

    return cancel


def _run_due() -> None:
    now = time.monotonic()
    for timer in [t for t in _TIMERS if t.due <= now]:
        _fire(timer)


# -- the run's output area ---------------------------------------------------------------------


class _Slot:
    """A display handle for one output of the run's area (``update`` replaces it)."""

    def __init__(self, output: Any) -> None:
        self.output = output

    def update(self, data: dict[str, Any], raw: bool = True, **_kwargs: Any) -> None:
        self.output.outputs = (_output(data),)


def _output(data: dict[str, Any]) -> dict[str, Any]:
    return {"output_type": "display_data", "data": dict(data), "metadata": {}}


class _RunView:
    """A widget box in the cell that the run fills as it goes (it works from callbacks too:
    widget state reaches the frontend wherever the kernel's messages go)."""

    def __init__(self) -> None:
        import ipywidgets as w

        self.box = w.VBox([], _dom_classes=["cheq-run"])
        self._layout = w.Layout()  # shared by its outputs: fewer widgets to open

    def bundle(self) -> dict[str, Any]:
        """The display of the whole area (a widget view), to which the record is added."""
        return {"application/vnd.jupyter.widget-view+json": {
            "version_major": 2, "version_minor": 0, "model_id": self.box.model_id,
        }}

    def show(self, obj: Any, raw: bool = True, display_id: Any = None, **_kw: Any) -> _Slot | None:
        """``display``-like: a mime bundle (dict) or a widget goes at the end of the area."""
        import ipywidgets as w

        if isinstance(obj, dict):
            out = w.Output(_dom_classes=["cheq-run-output"], layout=self._layout)
            out.outputs = (_output(obj),)
            self.box.children = (*self.box.children, out)
            return _Slot(out)
        self.box.children = (*self.box.children, obj)
        return None


def _record(result: AgentResult[Any] | None, error: BaseException | None) -> dict[str, str]:
    """The static record of a run (what a notebook saved without widget state keeps)."""
    if result is None and error is None:
        text = "No-wait run: its record goes here when it ends."
        return {"text/plain": text,
                "text/html": f"<div class='cheq-run-record' style='color:#555'>{text}</div>"}
    rows, lines = [], []
    for call in result.tool_calls if result is not None else []:
        verdict = call.decision.describe() if call.decision is not None else call.status
        arguments = json.dumps(call.effective_arguments or call.arguments or call.raw_arguments,
                               ensure_ascii=False, default=str)
        lines.append(f"{call.name} {arguments}: {verdict}; {call.status}")
        rows.append(
            f"<tr><td><b>{html.escape(call.name)}</b></td><td><code>{html.escape(arguments)}"
            f"</code></td><td>{html.escape(verdict)}</td><td>{html.escape(call.status)}</td></tr>"
        )
    if error is not None:
        end = f"The run stopped: {type(error).__name__}: {error}"
    else:
        assert result is not None
        end = f"Answer: {result.text}"
    lines.append(end)
    return {
        "text/plain": "Approval record (no-wait run)\n" + "\n".join(lines),
        "text/html": "<div class='cheq-run-record'><b>Approval record</b> (no-wait run)"
                     f"<table>{''.join(rows)}</table><div>{html.escape(end)}</div></div>",
    }


# -- the handle --------------------------------------------------------------------------------


class PendingRun:
    """A no-wait run: bound at once (``-o VAR``); ``VAR`` becomes the result when it ends.

    ``done()`` says whether it has ended; ``result()`` returns the
    :class:`~cheq_jupyter.agent.AgentResult` (or raises what stopped the run, or
    :class:`~cheq_jupyter.errors.RunPendingError` while cards still wait); ``wait()`` blocks the
    cell until it ends, where clicks reach a busy kernel (not in VS Code); ``cancel()`` cancels
    the cards still waiting (nothing they ask for runs; the model is told).
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._result: AgentResult[Any] | None = None
        self._error: BaseException | None = None
        self._finished = False
        self._waiting: list[ApprovalRequest] = []
        self._cancel: Callable[[], None] | None = None

    def done(self) -> bool:
        return self._finished

    @property
    def status(self) -> str:
        if self._finished:
            return "failed" if self._error is not None else "finished"
        if self._waiting:
            names = ", ".join(r.action for r in self._waiting)
            return f"waiting for {len(self._waiting)} decision(s) ({names})"
        return "running"

    def result(self) -> AgentResult[Any]:
        if not self._finished:
            raise RunPendingError(
                f"The no-wait run {self.run_id} is still {self.status}; decide on its cards, "
                "then ask again (or call .wait())."
            )
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def wait(self, timeout: float | None = None) -> AgentResult[Any]:
        """Block this cell until the run ends (clicks are handled meanwhile), then its result.

        Needs a frontend that delivers clicks to a busy kernel (JupyterLab, Notebook 7); in
        VS Code the clicks would only arrive after this cell, so it raises
        :class:`~cheq_jupyter.errors.RunPendingError` at ``timeout`` instead.
        """

        def check() -> bool:
            _run_due()
            return self._finished

        try:
            finished = check() or _blocking.wait_for(
                check, timeout=timeout, on_tick=lambda _left: _run_due(), tick=0.5
            )
        except FrontendUnavailableError as exc:
            raise RunPendingError(
                f"The no-wait run {self.run_id} is still {self.status}, and this kernel cannot "
                f"wait for it ({exc}); check .done() after deciding instead."
            ) from None
        if not finished:
            raise RunPendingError(
                f"The no-wait run {self.run_id} did not finish within {timeout:g} seconds; it "
                "is still "
                f"{self.status}."
            )
        return self.result()

    def cancel(self) -> None:
        """Cancel the undecided calls (not approved); the run then ends as usual."""
        if self._cancel is not None and not self._finished:
            self._cancel()

    def __repr__(self) -> str:
        return f"PendingRun({self.run_id!r}, {self.status})"

    def _repr_html_(self) -> str:
        return (
            f"<div class='cheq-pending'>No-wait run <code>{html.escape(self.run_id)}</code>: "
            f"{html.escape(self.status)}.</div>"
        )


# -- the driver --------------------------------------------------------------------------------


def _asked(approver: Approver, requests: Sequence[ApprovalRequest]) -> tuple[
    list[Decision | None], Any
]:
    """Decisions a policy takes by rule (``None`` where it asks), and who it asks."""
    if isinstance(approver, Policy) and approver.ask is not None:
        return [approver._decide_fixed(r, approver.rule_for(r)) for r in requests], approver.ask
    return [None] * len(requests), approver


@contextlib.contextmanager
def _interruptible(enabled: bool) -> Iterator[None]:
    """SIGINT raises ``KeyboardInterrupt`` here (an idle kernel ignores it otherwise)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is None:  # set outside Python: leave it alone
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class _Driver:
    run: _Run
    client: Any
    events: AgentEvents
    view: _RunView
    handle: PendingRun
    on_result: Callable[[AgentResult[Any]], None]
    record: Any = None  # display handle of the run's output (the widget, the record as fallback)
    timeout: float = _sdk.DEFAULT_REQUEST_TIMEOUT
    stream: bool = True
    _waiting_cards: list[Any] = field(default_factory=list)

    def advance(self, *, in_callback: bool = False) -> None:
        """Run the loop until it needs a human (cards shown, return) or it ends.

        From a callback of the kernel's event loop (``in_callback``), the kernel's interrupt
        button stops the run (the model request or tool under way gets ``KeyboardInterrupt``,
        nothing more runs) without reaching the event loop itself.
        """
        try:
            with _interruptible(in_callback):
                while (op := self.run.next_op()) is not None:
                    if isinstance(op, _ModelCall):
                        self.run.model_answered(_call_model(
                            self.client, op.kwargs, self.events, stream=self.stream,
                            timeout=self.timeout,
                        ))
                    elif isinstance(op, _Decide):
                        if self._begin(op):
                            return
                    else:
                        self._invoke(op)
        except BaseException as exc:
            self._stop(exc)
            if not isinstance(exc, Exception) and not in_callback:
                raise
            return
        result = self.run.result
        assert result is not None
        self._end(result)

    def _invoke(self, op: _Invoke) -> None:
        """Run a tool; what it prints goes to the run's area (from a widget callback it would
        otherwise go to no cell at all)."""
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            _invoke(self.run, op)
        if printed.getvalue():
            text = printed.getvalue()
            self.view.show({"text/plain": text,
                            "text/html": f"<pre class='cheq-tool-print'>{html.escape(text)}</pre>"})

    def _begin(self, op: _Decide) -> bool:
        """Show the turn's cards and return True, or decide it now (no human needed)."""
        fixed, ask = _asked(op.approver, op.requests)
        asked = [r for r, d in zip(op.requests, fixed, strict=True) if d is None]
        begin = getattr(ask, "begin", None)
        if not asked or not callable(begin):
            self.run.decide(op)
            return False

        def on_done(decisions: list[Decision]) -> None:
            self.handle._waiting, self.handle._cancel = [], None
            if len(decisions) != len(asked) or not all(isinstance(d, Decision) for d in decisions):
                self.run.decide_failed(ApprovalError(
                    f"The approver {ask!r} must return one Decision per request."
                ))
            else:
                answers = iter(decisions)
                self.run.decided([d if d is not None else next(answers) for d in fixed])
            self.advance(in_callback=True)

        try:
            cancel = begin(asked, on_done, show=self.view.show, later=later)
        except Exception as exc:  # e.g. no widget frontend: fails closed inside the loop
            self.run.decide_failed(exc)
            return False
        self.handle._waiting = list(asked)
        self.handle._cancel = cancel if callable(cancel) else None
        return True

    def _end(self, result: AgentResult[Any]) -> None:
        self.run.close()
        _LIVE.pop(self.handle.run_id, None)
        handle = self.handle
        handle._result, handle._finished = result, True
        self._update_record(result, None)
        try:
            final = getattr(self.events, "final", None)
            if callable(final):
                final(result)
        finally:
            self.on_result(result)

    def _update_record(self, result: AgentResult[Any] | None, error: BaseException | None
                       ) -> None:
        if self.record is not None:
            try:
                self.record.update({**self.view.bundle(), **_record(result, error)}, raw=True)
            except Exception:  # the record is a courtesy; the run's outcome stands
                log.exception("Could not update the no-wait run's record.")

    def _stop(self, exc: BaseException) -> None:
        self.run.close()
        _LIVE.pop(self.handle.run_id, None)
        self.handle._error, self.handle._finished = exc, True
        self.handle._waiting = []
        self._update_record(self.run.result, exc)
        line = f"The run stopped: {type(exc).__name__}: {exc}"
        self.view.show({
            "text/html": f"<div class='cheq-run-error' style='color:#b00020'>"
                         f"{html.escape(line)}</div>",
            "text/plain": line,
        })


def start_run(
    prompt: str,
    *,
    tools: Any = (),
    approver: Approver,
    client: Any = None,
    model: str = DEFAULT_MODEL,
    system: str | None = None,
    max_steps: int = 10,
    output_type: Any = None,
    history: Sequence[dict[str, Any]] | None = None,
    events_factory: Callable[[Callable[..., Any]], AgentEvents] | None = None,
    recorder: DecisionRecorder | None = None,
    output_retries: int = 2,
    bind: tuple[MutableMapping[str, Any], str] | None = None,
    request_timeout: float = _sdk.DEFAULT_REQUEST_TIMEOUT,
    stream: bool = True,
    reasoning_effort: str | None = None,
) -> PendingRun:
    """Start a run in no-wait mode and return its :class:`PendingRun` once cards are shown.

    The arguments are :func:`~cheq_jupyter.agent.run_agent`'s; the approver's cards (a
    :class:`~cheq_jupyter.card.WidgetApprover`, possibly behind a
    :class:`~cheq_jupyter.approval.Policy`) are shown without blocking::

        pending = start_run("Refund c1", tools=[refund], approver=WidgetApprover())

    Call it from a cell: the run's output area is displayed there.  ``events_factory(show)``
    builds the progress display writing through ``show`` (default: the notebook's status
    lines, tool results and answer); ``bind = (namespace, name)`` binds the handle there now
    and the :class:`AgentResult` when the run ends (unless the name was rebound meanwhile).
    """
    from IPython.display import display

    from .display import NotebookEvents

    timeout = _sdk.check_request_timeout(request_timeout)
    spec = _build_spec(prompt, tools, approver, model, system, max_steps, output_type,
                       history, None, recorder, output_retries, reasoning_effort)
    _sync_tools_only(spec, "no-wait mode runs synchronous tools only")
    client = _client(client, reasoning_effort, stream)
    _event_loop()  # FrontendUnavailableError now, outside a kernel, not in a callback
    view = _RunView()
    if events_factory is None:
        name = _approver_name(approver)
        spec.events = NotebookEvents(approver_name=name, show=view.show)
    else:
        spec.events = events_factory(view.show)
    handle = PendingRun(spec.run_id)

    def on_result(result: AgentResult[Any]) -> None:
        if bind is not None:
            namespace, name = bind
            if namespace.get(name) is handle:
                namespace[name] = result

    if bind is not None:
        bind[0][bind[1]] = handle
    # One display: the run's live widget area, with the static record as its text/html
    # fallback (what a notebook saved without widget state shows), updated when the run ends.
    record = display({**view.bundle(), **_record(None, None)}, raw=True,  # type: ignore[no-untyped-call]
                     display_id=True)
    driver = _Driver(_Run(spec), client, spec.events, view, handle, on_result, record=record,
                     timeout=timeout, stream=stream)
    _LIVE[spec.run_id] = handle
    driver.advance()
    if handle._error is not None:  # failed before any card was shown: the cell says so
        raise handle._error
    return handle
