"""The agent loop: Mistral function calling with every tool call behind an approval gate.

For each model turn that asks for tools, every call is parsed and validated, every valid call
is put to the approver (all calls of the turn together, in the model's order), and a tool runs
only for an ``approved`` decision, with exactly the arguments that decision approved
(re-validated).  Everything else goes back to the model as that call's tool result so it can
explain: rejections with the reviewer's note, time-outs, invalid arguments, unknown tools and
tools that raised.

With ``output_type`` the run has two phases, because Mistral refuses ``tools`` and a JSON
``response_format`` in one request: phase 1 is the tool loop (no ``response_format``), phase 2
is a single request with a strict ``json_schema`` response format and no tools, validated into
the pydantic model (invalid output is sent back with the error and retried).

The loop itself is written once, without I/O (:func:`_agent_steps` yields what it needs), and
driven synchronously by :func:`run_agent` or asynchronously by :func:`arun_agent`.
"""

from __future__ import annotations

import copy
import json
import logging
import time
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar, cast

from pydantic import BaseModel, ValidationError

from . import _sdk
from .approval import ApprovalRequest, Approver, Decision, decide_all
from .errors import (
    CheqJupyterError,
    ConfigurationError,
    ModelError,
    StructuredOutputError,
    ToolArgumentsError,
    ToolDefinitionError,
)
from .tools import Tool, Toolset, as_tools, tool_result_text

__all__ = [
    "AgentEvents",
    "AgentResult",
    "DecisionRecorder",
    "ToolCallRecord",
    "arun_agent",
    "run_agent",
    "strict_response_format",
]

log = logging.getLogger("cheq_jupyter")

DEFAULT_MODEL = "mistral-large-latest"
Message = dict[str, Any]
#: What ``tools=`` takes: functions, Tool objects and toolsets (an MCP server's), or a mapping.
Tools = Sequence[Tool | Callable[..., Any] | Toolset] | Mapping[str, Tool | Callable[..., Any]]
OutputT = TypeVar("OutputT", bound=BaseModel)
CallStatus = Literal["ran", "failed", "not_approved", "invalid"]
Phase = Literal["tools", "final", "structured"]


@dataclass
class ToolCallRecord:
    """What happened to one tool call the model asked for."""

    id: str
    name: str
    step: int
    raw_arguments: Any
    status: CallStatus
    result: str
    arguments: dict[str, Any] | None = None
    request: ApprovalRequest | None = None
    decision: Decision | None = None
    effective_arguments: dict[str, Any] | None = None
    value: Any = None
    error: str | None = None

    @property
    def ran(self) -> bool:
        return self.status in ("ran", "failed")


@dataclass
class AgentResult(Generic[OutputT]):
    """The outcome of a run: the answer, the conversation and every decision taken."""

    text: str
    messages: list[Message]
    tool_calls: list[ToolCallRecord]
    steps: int
    model: str
    run_id: str
    stop_reason: Literal["answer", "max_steps"]
    output: OutputT | None = None

    @property
    def decisions(self) -> list[Decision]:
        return [c.decision for c in self.tool_calls if c.decision is not None]

    def __repr__(self) -> str:
        ran = sum(1 for c in self.tool_calls if c.ran)
        shown = repr(self.output if self.output is not None else self.text)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        return (
            f"AgentResult(steps={self.steps}, tool_calls={len(self.tool_calls)}, ran={ran}, "
            f"stop_reason={self.stop_reason!r}, "
            f"{'output' if self.output is not None else 'text'}={shown})"
        )


class AgentEvents:
    """Hooks the loop calls as it goes (the notebook display subclasses this); no-ops here."""

    def model_request(self, step: int, max_steps: int, phase: Phase) -> None:
        """A request to the model is about to be sent."""

    def assistant_message(self, message: Message, step: int) -> None:
        """The model answered (text and/or tool calls)."""

    def decided(self, requests: Sequence[ApprovalRequest], decisions: Sequence[Decision]) -> None:
        """The approver decided every valid call of one turn."""

    def tool_result(self, record: ToolCallRecord) -> None:
        """A call was answered: ran, failed, not approved or invalid."""


class DecisionRecorder(Protocol):
    """Where decisions are recorded before any tool runs (see :mod:`cheq_jupyter.audit`)."""

    def record(
        self, request: ApprovalRequest, decision: Decision, *, response_time: float
    ) -> Any: ...


# -- the loop without I/O ------------------------------------------------------------------


@dataclass
class _ModelCall:
    kwargs: dict[str, Any]


@dataclass
class _Invoke:
    tool: Tool
    kwargs: dict[str, Any]


@dataclass
class _Decide:
    """The loop needs decisions on every valid call of one turn (answer: ``list[Decision]``).

    The driver asks the approver; a driver that cannot block (no-wait mode) can answer later.
    An exception raised while deciding is thrown back into the loop, which fails closed.
    """

    approver: Approver
    requests: list[ApprovalRequest]


@dataclass
class _Outcome:
    value: Any = None
    error: BaseException | None = None


@dataclass
class _Spec:
    prompt: str
    tools: dict[str, Tool]
    approver: Approver
    model: str
    system: str | None
    max_steps: int
    output_type: type[BaseModel] | None
    history: list[Message]
    events: AgentEvents
    recorder: DecisionRecorder | None
    output_retries: int
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])


_Op = _ModelCall | _Decide | _Invoke
_Step = Generator[_Op, Any, AgentResult[Any]]


def strict_response_format(output_type: type[BaseModel]) -> dict[str, Any]:
    """Mistral's strict ``json_schema`` response format for a pydantic model."""

    def strict(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: strict(v) for k, v in node.items()}
            if out.get("type") == "object":
                out["additionalProperties"] = False
            return out
        if isinstance(node, list):
            return [strict(v) for v in node]
        return node

    return {
        "type": "json_schema",
        "json_schema": {
            "name": output_type.__name__,
            "schema": strict(output_type.model_json_schema()),
            "strict": True,
        },
    }


def _not_approved_text(decision: Decision) -> str:
    note = f" Note from the reviewer: {decision.decision_note}" if decision.decision_note else ""
    if decision.status == "rejected":
        return (
            "Not approved: the reviewer rejected this call, so it did not run. Do not retry it; "
            f"tell the user what was not done and why.{note}"
        )
    if decision.status == "timed_out":
        return (
            "Not approved: no reviewer decided in time, so the call did not run. "
            f"Tell the user it is still waiting for a human decision.{note}"
        )
    return f"Not approved: the approval was cancelled, so the call did not run.{note}"


def _initial_messages(spec: _Spec) -> list[Message]:
    messages = copy.deepcopy(spec.history)
    if spec.system and not any(m.get("role") == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": spec.system})
    messages.append({"role": "user", "content": spec.prompt})
    return messages


def _prepare(
    spec: _Spec, step: int, call: Mapping[str, Any]
) -> ToolCallRecord:
    """Parse and validate one call; a record with status ``invalid`` never reaches a human."""
    function = call.get("function") or {}
    name, raw = str(function.get("name") or ""), function.get("arguments")
    record = ToolCallRecord(
        id=str(call.get("id") or ""), name=name, step=step, raw_arguments=raw,
        status="invalid", result="",
    )
    tool = spec.tools.get(name)
    if tool is None:
        known = ", ".join(sorted(spec.tools)) or "none"
        record.error = f"There is no tool named {name!r}; the available tools are: {known}."
    else:
        try:
            record.arguments = tool.parse_arguments(raw)
        except ToolArgumentsError as exc:
            record.error = str(exc)
    if record.error is not None:
        record.result = f"Error: {record.error} The tool did not run."
        return record
    assert tool is not None and record.arguments is not None
    record.request = ApprovalRequest(
        action=name,
        summary=tool.summarize(record.arguments),
        details=record.arguments,
        tool_call_id=record.id,
        schema=tool.parameters,
        description=tool.description,
        run_id=spec.run_id,
        step=step,
        check=getattr(tool, "check", None),
        origin=tool.origin,
        annotations=dict(tool.annotations),
    )
    return record


def _decide(spec: _Spec, records: list[ToolCallRecord]) -> Generator[_Decide, Any, None]:
    """Ask the approver about every valid call of the turn; fails closed on any error."""
    pending = [r for r in records if r.request is not None]
    requests = [r.request for r in pending if r.request is not None]
    if not requests:
        return
    started = time.monotonic()
    try:
        decisions = yield _Decide(spec.approver, requests)
    except KeyboardInterrupt:
        for r in pending:
            r.decision = Decision.cancelled("Interrupted while waiting for approval.", by="user")
        raise
    except Exception as exc:  # fail closed: an approver that breaks approves nothing
        log.warning("approver failed; treating %d call(s) as not approved: %s", len(pending), exc)
        note = f"The approver failed ({type(exc).__name__}: {exc})."
        decisions = [Decision.cancelled(note, by=_approver_name(spec.approver)) for _ in pending]
    elapsed = time.monotonic() - started
    for record, decision in zip(pending, decisions, strict=True):
        record.decision = decision
        if decision.status == "timed_out":
            log.warning("approval of %s (%s) timed out: not approved", record.name, record.id)
        if spec.recorder is not None and record.request is not None:
            spec.recorder.record(record.request, decision, response_time=elapsed)
    spec.events.decided(requests, decisions)


def _approver_name(approver: Approver) -> str:
    return str(getattr(approver, "name", None) or getattr(approver, "__name__", None)
               or type(approver).__name__)


def _execute(spec: _Spec, record: ToolCallRecord) -> Generator[_Invoke, _Outcome, None]:
    """Run one approved call (or answer why it does not run)."""
    decision, request = record.decision, record.request
    if record.status == "invalid" and request is None:
        return
    if decision is None or request is None:
        record.status = "not_approved"
        record.result = "Not approved: no decision was made, so the call did not run."
        return
    if not decision.approved:
        record.status = "not_approved"
        record.result = _not_approved_text(decision)
        return
    tool = spec.tools[record.name]
    effective = decision.effective_details(request)
    try:
        kwargs = tool.call_arguments(effective)
    except ToolArgumentsError as exc:
        record.status = "not_approved"
        record.error = str(exc)
        record.result = (
            f"Not approved: the reviewer's edited arguments are invalid ({exc}); "
            "the call did not run."
        )
        return
    record.effective_arguments = dict(effective)
    outcome = yield _Invoke(tool, kwargs)
    if outcome.error is not None:
        err = outcome.error
        record.status = "failed"
        record.error = f"{type(err).__name__}: {err}"
        record.result = f"Error: {record.name} raised {record.error}"
    else:
        record.status = "ran"
        record.value = outcome.value
        record.result = tool_result_text(outcome.value)
        if decision.modified_details is not None:
            record.result = (
                f"(The reviewer edited the arguments before approving; the call ran with "
                f"{json.dumps(effective, ensure_ascii=False, default=str)}.) {record.result}"
            )


def _tool_loop(spec: _Spec, messages: list[Message], records: list[ToolCallRecord]) -> Generator[
    _Op, Any, tuple[str, int, bool]
]:
    """Phase 1. Returns (final text, steps used, whether the model answered without tools)."""
    tool_specs = [t.to_mistral() for t in spec.tools.values()]
    for step in range(1, spec.max_steps + 1):
        spec.events.model_request(step, spec.max_steps, "tools")
        message = yield _ModelCall(
            {"model": spec.model, "messages": messages, "tools": tool_specs, "tool_choice": "auto"}
        )
        spec.events.assistant_message(message, step)
        calls = message.get("tool_calls") or []
        if not calls:
            return str(message.get("content") or ""), step, True
        messages.append(message)
        turn = [_prepare(spec, step, call) for call in calls]
        yield from _decide_and_close(spec, messages, turn)
        for record in turn:
            yield from _execute(spec, record)
            records.append(record)
            messages.append(
                {"role": "tool", "tool_call_id": record.id, "name": record.name,
                 "content": record.result}
            )
            spec.events.tool_result(record)
    return "", spec.max_steps, False


def _decide_and_close(
    spec: _Spec, messages: list[Message], turn: list[ToolCallRecord]
) -> Generator[_Decide, Any, None]:
    """Decide a turn; on interrupt answer every call so the conversation stays valid."""
    try:
        yield from _decide(spec, turn)
    except KeyboardInterrupt:
        for record in turn:
            if record.request is not None:
                record.status = "not_approved"
                record.result = "Not approved: interrupted by the user; the call did not run."
            messages.append(
                {"role": "tool", "tool_call_id": record.id, "name": record.name,
                 "content": record.result}
            )
        raise


def _structured(spec: _Spec, messages: list[Message], step: int) -> Generator[
    _ModelCall, Any, tuple[BaseModel, str, int]
]:
    """Phase 2: one request with a strict JSON schema and no tools, retried on invalid output."""
    assert spec.output_type is not None
    output_type = spec.output_type
    fmt = strict_response_format(output_type)
    attempts: list[tuple[str, str]] = []
    for _ in range(spec.output_retries + 1):
        step += 1
        spec.events.model_request(step, spec.max_steps, "structured")
        message = yield _ModelCall(
            {"model": spec.model, "messages": messages, "response_format": fmt}
        )
        spec.events.assistant_message(message, step)
        content = str(message.get("content") or "")
        try:
            output = output_type.model_validate_json(content)
        except ValidationError as exc:
            error = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'output'}: {e['msg']}"
                for e in exc.errors()
            )
            attempts.append((content, error))
            messages.append({"role": "assistant", "content": content})
            messages.append(
                {"role": "user", "content": (
                    f"That output does not validate against {output_type.__name__}: {error}. "
                    "Answer again with JSON that matches the schema exactly."
                )}
            )
            continue
        messages.append({"role": "assistant", "content": content})
        return output, content, step
    raise StructuredOutputError(
        f"The model's output failed to validate as {output_type.__name__} in "
        f"{len(attempts)} attempts; see .attempts, or loosen the model's fields.",
        attempts=attempts,
    )


def _agent_steps(spec: _Spec) -> _Step:
    messages = _initial_messages(spec)
    records: list[ToolCallRecord] = []
    steps, answered, text = 0, True, ""
    if spec.tools:
        text, steps, answered = yield from _tool_loop(spec, messages, records)
    stop_reason: Literal["answer", "max_steps"] = "answer" if answered else "max_steps"
    if spec.output_type is not None:
        output, text, steps = yield from _structured(spec, messages, steps)
        return AgentResult(text, messages, records, steps, spec.model, spec.run_id,
                           stop_reason, output)
    if not answered:
        # Out of steps while the model still wanted tools: one last request in which it may not
        # call any, so the user gets an answer that says where it stopped.
        steps += 1
        spec.events.model_request(steps, spec.max_steps, "final")
        tool_specs = [t.to_mistral() for t in spec.tools.values()]
        message = yield _ModelCall(
            {"model": spec.model, "messages": messages, "tools": tool_specs, "tool_choice": "none"}
        )
        spec.events.assistant_message(message, steps)
        text = str(message.get("content") or "")
    elif not spec.tools:
        steps = 1
        spec.events.model_request(steps, spec.max_steps, "final")
        message = yield _ModelCall({"model": spec.model, "messages": messages})
        spec.events.assistant_message(message, steps)
        text = str(message.get("content") or "")
    messages.append({"role": "assistant", "content": text})
    return AgentResult(text, messages, records, steps, spec.model, spec.run_id, stop_reason)


# -- drivers ----------------------------------------------------------------------------------


def _build_spec(
    prompt: str,
    tools: Tools,
    approver: Approver,
    model: str,
    system: str | None,
    max_steps: int,
    output_type: type[BaseModel] | None,
    history: Sequence[Message] | None,
    events: AgentEvents | None,
    recorder: DecisionRecorder | None,
    output_retries: int,
) -> _Spec:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigurationError("The prompt is empty; give the model something to do.")
    if max_steps < 1:
        raise ConfigurationError(f"max_steps is {max_steps}; it must be at least 1.")
    if output_retries < 0:
        raise ConfigurationError(f"output_retries is {output_retries}; it must be 0 or more.")
    if output_type is not None and not (
        isinstance(output_type, type) and issubclass(output_type, BaseModel)
    ):
        raise ConfigurationError(
            f"output_type must be a pydantic model class, not {output_type!r}; "
            "subclass pydantic.BaseModel."
        )
    if not callable(approver):
        raise ConfigurationError(
            f"approver must be a callable taking an ApprovalRequest, not {approver!r}."
        )
    items = list(tools.values()) if isinstance(tools, Mapping) else list(tools)
    return _Spec(
        prompt=prompt, tools=as_tools(items), approver=approver, model=model, system=system,
        max_steps=max_steps, output_type=output_type, history=list(history or []),
        events=events or AgentEvents(), recorder=recorder, output_retries=output_retries,
    )


def _model_error(exc: Exception) -> CheqJupyterError:
    if getattr(exc, "status_code", None) is not None:
        return _sdk.to_model_error(exc)
    return ModelError(
        f"Could not reach the Mistral API ({type(exc).__name__}: {exc}); check your network "
        f"or {_sdk.SERVER_URL_VAR}."
    )


class _Run:
    """Drives :func:`_agent_steps`: hands out its requests and takes the answers back."""

    def __init__(self, spec: _Spec) -> None:
        self._steps = _agent_steps(spec)
        self._answer: Any = None
        self._raise: BaseException | None = None
        self.result: AgentResult[Any] | None = None

    def next_op(self) -> _Op | None:
        """The next thing the loop needs, or ``None`` when it has finished (see ``result``)."""
        try:
            if self._raise is not None:
                exc, self._raise = self._raise, None
                return self._steps.throw(exc)
            return self._steps.send(self._answer)
        except StopIteration as stop:
            self.result = stop.value
            return None

    def decide(self, op: _Decide) -> None:
        """Ask the approver now (blocking drivers); its failure goes back into the loop."""
        try:
            self.decided(decide_all(op.approver, op.requests))
        except BaseException as exc:  # incl. KeyboardInterrupt: the loop fails closed
            self.decide_failed(exc)

    def decided(self, decisions: list[Decision]) -> None:
        self._answer = decisions

    def decide_failed(self, exc: BaseException) -> None:
        self._raise = exc

    def model_answered(self, response: Any) -> None:
        self._answer = _sdk.message_to_dict(response)[0]

    def tool_answered(self, value: Any = None, error: Exception | None = None) -> None:
        self._answer = _Outcome(value=value, error=error)

    def close(self) -> None:
        self._steps.close()


def run_agent(
    prompt: str,
    *,
    tools: Tools = (),
    approver: Approver,
    model: str = DEFAULT_MODEL,
    system: str | None = None,
    max_steps: int = 10,
    output_type: type[OutputT] | None = None,
    client: Any = None,
    history: Sequence[Message] | None = None,
    events: AgentEvents | None = None,
    recorder: DecisionRecorder | None = None,
    output_retries: int = 2,
) -> AgentResult[OutputT]:
    """Run the model with ``tools``, asking ``approver`` before every tool call.

    ``max_steps`` bounds the tool-calling turns; ``output_type`` (a pydantic model) turns on
    two-phase structured extraction into ``result.output``; ``history`` continues an earlier
    conversation (``previous.messages``); ``recorder`` (an :class:`~cheq_jupyter.audit.AuditLog`)
    records every decision before any tool runs.  Without ``client`` one is built from
    ``MISTRAL_API_KEY`` and ``MISTRAL_SERVER_URL``.
    """
    spec = _build_spec(prompt, tools, approver, model, system, max_steps, output_type,
                       history, events, recorder, output_retries)
    for t in spec.tools.values():
        if t.is_async:
            raise ToolDefinitionError(
                f"Tool {t.name} is async; use `await arun_agent(...)` to run async tools."
            )
    client = client if client is not None else _sdk.client_from_env()
    run = _Run(spec)
    try:
        while (op := run.next_op()) is not None:
            if isinstance(op, _ModelCall):
                try:
                    response = client.chat.complete(**op.kwargs)
                except Exception as exc:
                    raise _model_error(exc) from None
                run.model_answered(response)
            elif isinstance(op, _Decide):
                run.decide(op)
            else:
                try:
                    run.tool_answered(op.tool.function(**op.kwargs))
                except Exception as exc:
                    run.tool_answered(error=exc)
    finally:
        run.close()
    return cast(AgentResult[OutputT], run.result)


async def arun_agent(
    prompt: str,
    *,
    tools: Tools = (),
    approver: Approver,
    model: str = DEFAULT_MODEL,
    system: str | None = None,
    max_steps: int = 10,
    output_type: type[OutputT] | None = None,
    client: Any = None,
    history: Sequence[Message] | None = None,
    events: AgentEvents | None = None,
    recorder: DecisionRecorder | None = None,
    output_retries: int = 2,
) -> AgentResult[OutputT]:
    """The async twin of :func:`run_agent` (model requests and async tools are awaited).

    The approver is still called synchronously: a human decision blocks the run by design.
    """
    spec = _build_spec(prompt, tools, approver, model, system, max_steps, output_type,
                       history, events, recorder, output_retries)
    client = client if client is not None else _sdk.client_from_env()
    run = _Run(spec)
    try:
        while (op := run.next_op()) is not None:
            if isinstance(op, _ModelCall):
                try:
                    response = await client.chat.complete_async(**op.kwargs)
                except Exception as exc:
                    raise _model_error(exc) from None
                run.model_answered(response)
            elif isinstance(op, _Decide):
                run.decide(op)
            else:
                try:
                    acall = getattr(op.tool, "acall", None)  # an MCP tool: awaited, loop free
                    if acall is not None:
                        run.tool_answered(await acall(**op.kwargs))
                    else:
                        value = op.tool.function(**op.kwargs)
                        run.tool_answered(await value if op.tool.is_async else value)
                except Exception as exc:
                    run.tool_answered(error=exc)
    finally:
        run.close()
    return cast(AgentResult[OutputT], run.result)
