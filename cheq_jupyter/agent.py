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
driven synchronously by :func:`run_agent` or asynchronously by :func:`arun_agent`.  Every
model request goes through :func:`_call_model` / :func:`_acall_model`: streamed by default
(the text and a reasoning model's thinking reach :class:`AgentEvents` as they arrive; the
answer is assembled by :mod:`cheq_jupyter._stream` and validated only when the stream ends),
or a plain request with ``stream=False``.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import inspect
import json
import logging
import time
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Literal, Protocol, TypeVar, cast

from pydantic import BaseModel, ValidationError

from . import _history, _sdk, _stream
from ._safe_text import redact
from ._stream import DeltaKind, Reply, Usage, message_text
from ._strictjson import json_copy, same_json
from .approval import (
    ApprovalRequest,
    Approver,
    Decision,
    Policy,
    checked_decisions,
    decide_all,
)
from .errors import (
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
    "Usage",
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
StopReason = Literal["answer", "max_steps", "interrupted"]
#: ``reasoning_effort`` values of the SDK (mistralai 2.x and later).
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
#: What the conversation says when an interrupt left it ending with tool results.
INTERRUPTED_NOTE = "(The user interrupted the run here; nothing more was done.)"


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
    stop_reason: StopReason
    output: OutputT | None = None
    #: Tokens of every model request of the run, summed.
    usage: Usage = field(default_factory=Usage)
    #: Tokens of each model request, in order (``steps_usage[i]`` is request ``i + 1``).
    steps_usage: list[Usage] = field(default_factory=list)

    @property
    def decisions(self) -> list[Decision]:
        return [c.decision for c in self.tool_calls if c.decision is not None]

    def __repr__(self) -> str:
        ran = sum(1 for c in self.tool_calls if c.ran)
        shown = redact(repr(self.output if self.output is not None else self.text))
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

    def model_delta(self, kind: DeltaKind, text: str) -> None:
        """A piece of the answer arrived while streaming (``kind``: text or thinking)."""

    def assistant_message(self, message: Message, step: int) -> None:
        """The model answered (text and/or tool calls); for a stream, when it has ended."""

    def model_usage(self, step: int, usage: Usage, total: Usage) -> None:
        """A request's token usage (``total``: the run so far)."""

    def interrupted(self, result: AgentResult[Any]) -> None:
        """The run was interrupted; ``result`` holds a conversation valid for ``history``."""

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
    reasoning_effort: str | None = None
    # The run so far (the loop's own lists), for a partial result after an interrupt.
    messages: list[Message] = field(default_factory=list)
    records: list[ToolCallRecord] = field(default_factory=list)
    steps_usage: list[Usage] = field(default_factory=list)
    steps: int = 0


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


#: ``decided_by`` of the deciders at which nobody reviews a call: rules (a policy, "for the
#: rest of this run"), a replayed log, the blanket approvers.
_AUTOMATIC = frozenset({"policy", "replay", "approve_all", "reject_all"})


def _automatic_names(approver: Any) -> frozenset[str]:
    """``_AUTOMATIC`` and the names of the policies in front of ``approver``."""
    names, seen = set(_AUTOMATIC), 0
    while isinstance(approver, Policy) and seen < 20:
        names.add(approver.name)
        approver, seen = approver.ask, seen + 1
    return frozenset(names)


def _not_approved_text(decision: Decision, automatic: frozenset[str] = _AUTOMATIC) -> str:
    person = decision.decided_by not in automatic
    if decision.decision_note:
        label = "Note from the reviewer" if person else "Reason"
        note = f" {label}: {decision.decision_note}"
    else:
        note = ""
    if decision.status == "rejected":
        if person:
            return (
                "Not approved: the reviewer rejected this call, so it did not run. Do not retry "
                f"it; tell the user what was not done and why.{note}"
            )
        # A policy, a replayed log or a program decided: nobody reviewed this call, and the
        # model must not tell the user that somebody did.
        by = decision.decided_by or "the approver"
        return (
            f"Not approved: {by} did not allow this call (no reviewer looked at it), so it did "
            f"not run. Do not retry it; tell the user what was not done and why.{note}"
        )
    if decision.status == "timed_out":
        return (
            "Not approved: no reviewer decided in time, so the call did not run. "
            f"Tell the user it is still waiting for a human decision.{note}"
        )
    return f"Not approved: the approval was cancelled, so the call did not run.{note}"


def _history_message(message: Message, turn: Sequence[ToolCallRecord]) -> Message:
    """The assistant turn as it goes back to the API: valid ids and names, string arguments."""
    return _history.assistant_turn(message, [(r.id, r.name, r.raw_arguments) for r in turn])


def _tool_message(record: ToolCallRecord) -> Message:
    return _history.tool_message(record.id, record.name, record.result)
def _ask(spec: _Spec, kwargs: dict[str, Any], step: int) -> Generator[_ModelCall, Any, Message]:
    """One model request; returns the assistant message and keeps the request's usage."""
    if spec.reasoning_effort is not None:
        kwargs["reasoning_effort"] = spec.reasoning_effort
    reply = yield _ModelCall(kwargs)
    if not isinstance(reply, Reply):
        reply = _stream.reply_from_response(reply)
    spec.steps = step
    usage = reply.usage or Usage()
    spec.steps_usage.append(usage)
    spec.events.model_usage(step, usage, sum(spec.steps_usage, Usage()))
    return reply.message


def _initial_messages(spec: _Spec) -> list[Message]:
    messages = copy.deepcopy(spec.history)
    if spec.system and not any(m.get("role") == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": spec.system})
    messages.append({"role": "user", "content": spec.prompt})
    return messages


def _prepare(
    spec: _Spec, step: int, call: Any, call_id: str
) -> ToolCallRecord:
    """Parse and validate one call; a record with status ``invalid`` never reaches a human."""
    call = call if isinstance(call, Mapping) else {}
    function = call.get("function")
    function = function if isinstance(function, Mapping) else {}
    name, raw = function.get("name"), function.get("arguments")
    name = name if isinstance(name, str) else ""
    record = ToolCallRecord(
        id=call_id, name=name, step=step, raw_arguments=raw, status="invalid", result="",
    )
    tool = spec.tools.get(name)
    if tool is None:
        known = ", ".join(sorted(spec.tools)) or "none"
        record.error = f"There is no tool named {name[:80]!r}; the available tools are: {known}."
        meant = name.strip().rsplit(".", 1)[-1].strip()
        if meant != name and meant in spec.tools:
            record.error += f" Call it by its exact name, {meant!r}."
    else:
        try:
            record.arguments, defaulted = tool.with_defaults(tool.parse_arguments(raw))
        except ToolArgumentsError as exc:
            record.error = str(exc)
    if record.error is not None:
        record.result = f"Error: {record.error} The tool did not run."
        return record
    assert tool is not None and record.arguments is not None
    record.request = ApprovalRequest(
        action=name,
        summary=tool.summarize(record.arguments),
        # The approver's own copy: whatever it does to it, the loop keeps record.arguments.
        details=json_copy(record.arguments),
        tool_call_id=record.id,
        schema=tool.parameters,
        description=tool.description,
        run_id=spec.run_id,
        step=step,
        check=tool.check,
        defaulted=defaulted,
        origin=tool.origin,
        annotations=dict(tool.annotations),
    )
    return record


def _add_reason(turn: list[ToolCallRecord], message: Message) -> None:
    """Put what the model wrote and reasoned in this turn on each of its approval requests."""
    reason, reasoning = message_text(message).strip(), _stream.message_thinking(message).strip()
    for record in turn:
        if record.request is not None:
            record.request = dataclasses.replace(
                record.request, reason=reason, reasoning=reasoning
            )


def _decide(spec: _Spec, records: list[ToolCallRecord]) -> Generator[_Decide, Any, None]:
    """Ask the approver about every valid call of the turn; fails closed on any error."""
    pending = [r for r in records if r.request is not None]
    requests = [r.request for r in pending if r.request is not None]
    if not requests:
        return
    started = time.monotonic()
    by = _approver_name(spec.approver)
    try:
        answer = yield _Decide(spec.approver, requests)
        # A driver may answer without decide_all (no-wait mode): check the answer here too.
        decisions = checked_decisions(spec.approver, answer, len(requests))
    except KeyboardInterrupt:
        for r in pending:
            r.decision = Decision.cancelled("Interrupted while waiting for approval.", by="user")
        raise
    except Exception as exc:  # fail closed: an approver that breaks approves nothing
        log.warning("approver failed; treating %d call(s) as not approved: %s", len(pending), exc)
        note = redact(f"The approver failed ({type(exc).__name__}: {exc}).")
        decisions = [Decision.cancelled(note, by=by) for _ in pending]
    elapsed = time.monotonic() - started
    decisions = [_bind_edit(spec, r, d) for r, d in zip(pending, decisions, strict=True)]
    for record, decision in zip(pending, decisions, strict=True):
        record.decision = decision
        if decision.status == "timed_out":
            log.warning("approval of %s (%s) timed out: not approved", record.name, record.id)
        if record.request is not None and record.arguments is not None:
            # What is recorded and run is the loop's copy, whatever an approver did to its own.
            record.request = replace(record.request, details=json_copy(record.arguments))
            if spec.recorder is not None:
                spec.recorder.record(record.request, decision, response_time=elapsed)
    spec.events.decided(requests, decisions)


def _bind_edit(spec: _Spec, record: ToolCallRecord, decision: Decision) -> Decision:
    """An approval's edited arguments made exact before anything is recorded: defaults filled
    in, checked with the tool's own validation (an invalid edit is not approved), and no edit
    at all when they equal the call's arguments as JSON."""
    edited = decision.modified_details
    if not decision.approved or edited is None or record.arguments is None:
        return decision
    tool = spec.tools[record.name]
    full, _ = tool.with_defaults(edited)
    problems = tool.check(full)
    if problems:
        return Decision.cancelled(
            f"The edited arguments are invalid ({'; '.join(problems)}), so the approval by "
            f"{decision.decided_by or 'the approver'} does not count.",
            by=decision.decided_by,
        )
    if same_json(full, record.arguments):
        return replace(decision, modified_details=None)
    return replace(decision, modified_details=full)


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
        record.result = _not_approved_text(decision, _automatic_names(spec.approver))
        return
    tool = spec.tools[record.name]
    effective = json_copy(
        decision.modified_details if decision.modified_details is not None else record.arguments
    )
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
        message = yield from _ask(
            spec,
            {"model": spec.model, "messages": messages, "tools": tool_specs, "tool_choice": "auto"},
            step,
        )
        spec.events.assistant_message(message, step)
        calls = message.get("tool_calls") or []
        if not calls:
            messages.append(message)
            return message_text(message), step, True
        turn = [_prepare(spec, step, call, call_id)
                for call, call_id in zip(calls, _history.turn_ids(calls), strict=True)]
        messages.append(_history_message(message, turn))
        _add_reason(turn, message)
        yield from _decide_and_close(spec, messages, turn)
        for record in turn:
            yield from _execute(spec, record)
            records.append(record)
            messages.append(_tool_message(record))
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
            messages.append(_tool_message(record))
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
        message = yield from _ask(
            spec, {"model": spec.model, "messages": messages, "response_format": fmt}, step
        )
        spec.events.assistant_message(message, step)
        content = message_text(message)
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
        messages.append(message)
        return output, content, step
    raise StructuredOutputError(
        f"The model's output failed to validate as {output_type.__name__} in "
        f"{len(attempts)} attempts; see .attempts, or loosen the model's fields.",
        attempts=attempts,
    )


def _result(spec: _Spec, text: str, steps: int, stop_reason: StopReason,
            output: BaseModel | None = None) -> AgentResult[Any]:
    return AgentResult(text, spec.messages, spec.records, steps, spec.model, spec.run_id,
                       stop_reason, output, usage=sum(spec.steps_usage, Usage()),
                       steps_usage=list(spec.steps_usage))


def _agent_steps(spec: _Spec) -> _Step:
    messages = spec.messages = _initial_messages(spec)
    records = spec.records = []
    steps, answered, text = 0, True, ""
    if spec.tools:
        text, steps, answered = yield from _tool_loop(spec, messages, records)
    stop_reason: StopReason = "answer" if answered else "max_steps"
    if spec.output_type is not None:
        if answered and messages[-1].get("role") == "assistant":
            messages.pop()  # phase 2 asks again, right after the last user or tool message
        output, text, steps = yield from _structured(spec, messages, steps)
        return _result(spec, text, steps, stop_reason, output)
    if not answered:
        # Out of steps while the model still wanted tools: one last request in which it may not
        # call any, so the user gets an answer that says where it stopped.
        steps += 1
        spec.events.model_request(steps, spec.max_steps, "final")
        tool_specs = [t.to_mistral() for t in spec.tools.values()]
        message = yield from _ask(
            spec,
            {"model": spec.model, "messages": messages, "tools": tool_specs, "tool_choice": "none"},
            steps,
        )
        spec.events.assistant_message(message, steps)
        text = message_text(message)
        messages.append({k: v for k, v in message.items() if k != "tool_calls"})
    elif not spec.tools:
        steps = 1
        spec.events.model_request(steps, spec.max_steps, "final")
        message = yield from _ask(spec, {"model": spec.model, "messages": messages}, steps)
        spec.events.assistant_message(message, steps)
        text = message_text(message)
        messages.append(message)
    return _result(spec, text, steps, stop_reason)


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
    reasoning_effort: str | None = None,
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
        reasoning_effort=reasoning_effort,
    )


def _invoke(run: _Run, op: _Invoke) -> None:
    """Run one approved synchronous tool call and hand its outcome to the loop."""
    try:
        run.tool_answered(op.tool.function(**op.kwargs))
    except Exception as exc:
        run.tool_answered(error=exc)


def _close_conversation(messages: list[Message], partial_text: str) -> None:
    """Make ``messages`` a conversation the API accepts as history after an interrupt."""
    if not messages:
        return
    last_call_turn = next(
        (i for i in range(len(messages) - 1, -1, -1)
         if messages[i].get("role") == "assistant" and messages[i].get("tool_calls")),
        None,
    )
    if last_call_turn is not None:
        answered = {m.get("tool_call_id") for m in messages[last_call_turn + 1:]
                    if m.get("role") == "tool"}
        for call in messages[last_call_turn]["tool_calls"]:
            if call.get("id") not in answered:
                messages.append({
                    "role": "tool", "tool_call_id": call.get("id"),
                    "name": (call.get("function") or {}).get("name"),
                    "content": "Interrupted: the user stopped the run before this call's "
                               "result came back, so it may not have run or finished.",
                })
    if partial_text:
        messages.append({"role": "assistant", "content": partial_text})
    elif messages[-1].get("role") == "tool":
        messages.append({"role": "assistant", "content": INTERRUPTED_NOTE})


def _call_model(
    client: Any, kwargs: dict[str, Any], events: AgentEvents, *, stream: bool = True,
    timeout: float = _sdk.DEFAULT_REQUEST_TIMEOUT,
) -> Reply:
    """Send one chat request and return the whole answer (the one place the loop calls the SDK).

    Streaming: pieces reach ``events.model_delta`` as they arrive; the HTTP response is closed
    when the stream ends, fails or is interrupted (then :class:`~cheq_jupyter._stream.
    StreamInterrupted` carries what had arrived).  A server that answers ``stream: true`` with
    a plain JSON completion is understood too.
    """
    if not stream:
        return _stream.reply_from_response(_sdk.chat_complete(client, kwargs, timeout))
    assembler = _stream.Assembler(_shown_safely(events))
    try:
        sse = client.chat.stream(**kwargs, **_sdk.request_options(client, timeout))
    except Exception as exc:
        return _unstreamed(exc, events, timeout)
    try:
        with sse:
            for event in sse:
                assembler.feed(event.data)
    except KeyboardInterrupt as exc:
        raise _stream.StreamInterrupted(assembler.partial()) from exc
    except Exception as exc:
        raise _sdk.model_error(exc, timeout) from None
    return _finished(assembler)


async def _acall_model(
    client: Any, kwargs: dict[str, Any], events: AgentEvents, *, stream: bool = True,
    timeout: float = _sdk.DEFAULT_REQUEST_TIMEOUT,
) -> Reply:
    """The async twin of :func:`_call_model` (``chat.stream_async``)."""
    if not stream:
        return _stream.reply_from_response(
            await _sdk.chat_complete_async(client, kwargs, timeout)
        )
    assembler = _stream.Assembler(_shown_safely(events))
    try:
        # Bounded as a whole until the answer starts: a server that trickles a non-streamed
        # body (which the SDK reads to the end) would otherwise never hit a read timeout.
        sse = await asyncio.wait_for(
            client.chat.stream_async(**kwargs, **_sdk.request_options(client, timeout)),
            timeout + 1.0,
        )
    except Exception as exc:
        return _unstreamed(exc, events, timeout)
    try:
        async with sse:
            async for event in sse:
                assembler.feed(event.data)
    except KeyboardInterrupt as exc:
        raise _stream.StreamInterrupted(assembler.partial()) from exc
    except Exception as exc:
        raise _sdk.model_error(exc, timeout) from None
    return _finished(assembler)


def _shown_safely(events: AgentEvents) -> _stream.DeltaHook:
    """``events.model_delta``; a display that fails is logged, and the stream goes on (an
    interrupt still stops it)."""

    failed: list[bool] = []

    def show(kind: DeltaKind, text: str) -> None:
        try:
            events.model_delta(kind, text)
        except Exception:
            if not failed:  # once per request, not once per chunk
                failed.append(True)
                log.exception("showing the streamed %s failed", kind)

    return show


def _unstreamed(exc: Exception, events: AgentEvents, timeout: float) -> Reply:
    """The answer of a server that did not stream (it came whole, inside the SDK's error),
    shown like a stream; any other failure to open the stream is a :class:`ModelError`."""
    reply = _stream.reply_from_unstreamed(exc)
    if reply is None:
        raise _sdk.model_error(exc, timeout) from None
    _replay(reply, events)
    return reply


def _finished(assembler: _stream.Assembler) -> Reply:
    """The assembled answer; a stream that ended without a finish reason was cut short."""
    if assembler.finish_reason is None:
        raise ModelError(
            f"The model's answer stream ended after {assembler.chunks} chunk(s) "
            "without finishing; nothing of it was used, run the cell again."
        )
    return assembler.reply()


def _replay(reply: Reply, events: AgentEvents) -> None:
    """An answer that came whole is shown like a stream of one piece each."""
    if reply.thinking:
        events.model_delta("thinking", reply.thinking)
    if reply.text:
        events.model_delta("text", reply.text)


def _sync_tools_only(spec: _Spec, fix: str) -> None:
    """Refuse async tools where the driver cannot await them (``fix`` says what to do)."""
    for t in spec.tools.values():
        if t.is_async:
            raise ToolDefinitionError(f"Tool {t.name} is async; {fix}.")


def _client(client: Any, reasoning_effort: str | None, stream: bool) -> Any:
    """The client to use (one from the environment when none is given), checked for
    ``reasoning_effort`` before any request is sent."""
    client = client if client is not None else _sdk.client_from_env()
    _check_reasoning_effort(client, reasoning_effort, stream)
    return client


def _check_reasoning_effort(client: Any, effort: str | None, stream: bool) -> None:
    if effort is None:
        return
    if effort not in REASONING_EFFORTS:  # the SDK would silently drop an unknown value
        raise ConfigurationError(
            f"reasoning_effort is {effort!r}; use one of {', '.join(REASONING_EFFORTS)}."
        )
    method = client.chat.stream if stream else client.chat.complete
    try:
        accepted = "reasoning_effort" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        accepted = True
    if not accepted:
        raise ConfigurationError(
            "reasoning_effort needs mistralai 2.0 or later (this mistralai has no such "
            "option); upgrade with `pip install -U mistralai`, or leave reasoning_effort out."
        )


class _Run:
    """Drives :func:`_agent_steps`: hands out its requests and takes the answers back."""

    def __init__(self, spec: _Spec) -> None:
        self._spec = spec
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
        """The model's answer: a :class:`~cheq_jupyter._stream.Reply`, or a whole completion."""
        self._answer = response

    def tool_answered(self, value: Any = None, error: Exception | None = None) -> None:
        self._answer = _Outcome(value=value, error=error)

    def close(self) -> None:
        self._steps.close()

    def interrupted(self, exc: KeyboardInterrupt) -> AgentResult[Any]:
        """Close the conversation after an interrupt so it is valid to continue, and tell the
        events: the streamed text so far is kept as the assistant's (partial) answer, calls
        nobody answered get a "did not run" result, and tool results are not left last."""
        spec = self._spec
        messages = spec.messages
        partial = exc.partial if isinstance(exc, _stream.StreamInterrupted) else None
        if partial is not None and partial.usage is not None:
            spec.steps_usage.append(partial.usage)
        _close_conversation(messages, partial.text if partial is not None else "")
        text = partial.text if partial is not None else ""
        result = _result(spec, text, spec.steps, "interrupted")
        try:
            spec.events.interrupted(result)
        except Exception:
            log.exception("the interrupted() event hook failed")
        return result


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
    request_timeout: float = _sdk.DEFAULT_REQUEST_TIMEOUT,
    stream: bool = True,
    reasoning_effort: str | None = None,
) -> AgentResult[OutputT]:
    """Run the model with ``tools``, asking ``approver`` before every tool call.

    ``max_steps`` bounds the tool-calling turns; ``output_type`` (a pydantic model) turns on
    two-phase structured extraction into ``result.output``; ``history`` continues an earlier
    conversation (``previous.messages``); ``recorder`` (an :class:`~cheq_jupyter.audit.AuditLog`)
    records every decision before any tool runs.  Without ``client`` one is built from
    ``MISTRAL_API_KEY`` and ``MISTRAL_SERVER_URL``.  ``request_timeout`` bounds every model
    request (seconds); a request that takes longer raises :class:`ModelError`.

    Requests stream (``events`` sees the text as it arrives); ``stream=False`` sends plain
    requests.  ``reasoning_effort`` (none, minimal, low, medium, high, xhigh, max) is passed to
    every request of a reasoning model.  ``result.usage`` sums the tokens of every request.
    On an interrupt, ``events.interrupted(partial_result)`` gets a conversation that is valid
    to continue, then ``KeyboardInterrupt`` propagates.
    """
    timeout = _sdk.check_request_timeout(request_timeout)
    spec = _build_spec(prompt, tools, approver, model, system, max_steps, output_type,
                       history, events, recorder, output_retries, reasoning_effort)
    _sync_tools_only(spec, "use `await arun_agent(...)` to run async tools")
    client = _client(client, reasoning_effort, stream)
    run = _Run(spec)
    try:
        while (op := run.next_op()) is not None:
            if isinstance(op, _ModelCall):
                run.model_answered(_call_model(client, op.kwargs, spec.events, stream=stream,
                                               timeout=timeout))
            elif isinstance(op, _Decide):
                run.decide(op)
            else:
                _invoke(run, op)
    except KeyboardInterrupt as exc:
        run.interrupted(exc)
        if isinstance(exc, _stream.StreamInterrupted):
            raise KeyboardInterrupt from None  # what the user pressed, not our wrapper
        raise
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
    request_timeout: float = _sdk.DEFAULT_REQUEST_TIMEOUT,
    stream: bool = True,
    reasoning_effort: str | None = None,
) -> AgentResult[OutputT]:
    """The async twin of :func:`run_agent` (model requests and async tools are awaited).

    The approver is still called synchronously: a human decision blocks the run by design.
    """
    timeout = _sdk.check_request_timeout(request_timeout)
    spec = _build_spec(prompt, tools, approver, model, system, max_steps, output_type,
                       history, events, recorder, output_retries, reasoning_effort)
    client = _client(client, reasoning_effort, stream)
    run = _Run(spec)
    try:
        while (op := run.next_op()) is not None:
            if isinstance(op, _ModelCall):
                reply = await _acall_model(client, op.kwargs, spec.events, stream=stream,
                                           timeout=timeout)
                run.model_answered(reply)
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
    except KeyboardInterrupt as exc:
        run.interrupted(exc)
        if isinstance(exc, _stream.StreamInterrupted):
            raise KeyboardInterrupt from None  # what the user pressed, not our wrapper
        raise
    finally:
        run.close()
    return cast(AgentResult[OutputT], run.result)
