"""Approval in Cheqpoint's hosted inbox, through the real ``cheqpoint`` SDK.

Each tool call becomes a Cheqpoint approval request (``action`` = the tool, ``summary``,
``details`` = the arguments); the approver polls it until a reviewer decides or ``timeout``
seconds pass.  All calls of one model turn are filed together, so the reviewer sees them
side by side, and are polled together.

How Cheqpoint's answers become a :class:`~cheq_jupyter.approval.Decision`
(``decided_by="cheqpoint"``; statuses are read case-insensitively):

========================================  ==========================================
Cheqpoint says                            Decision
========================================  ==========================================
``APPROVED``                              ``approved`` (the note is ``decisionNote``)
``APPROVED`` + ``modifiedDetails``        ``approved`` with ``modified_details``
                                          (``cancelled`` when the tool's own check,
                                          ``request.check``, refuses them)
``REJECTED``                              ``rejected`` with the reviewer's note
``REJECTED`` + ``retryable``              ``timed_out``: the system closed it (expiry,
                                          SLA breach, no reviewer), nobody said no
``PENDING`` after ``timeout`` seconds      ``timed_out``
``EXPIRED``                               ``timed_out``
``CANCELLED`` or anything unknown         ``cancelled``
API error (401, 500...), no connection,   ``cancelled``, the note says what failed:
malformed answer                          the approval system failed, nobody said no
========================================  ==========================================

Only ``approved`` lets a tool run, so every failure fails closed, and none raises: the model
gets the note and the run goes on.  Only a missing key or package raises
:class:`~cheq_jupyter.errors.ConfigurationError`, when the approver is built.  The API key is
never printed, logged, or put in a note.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from .._safe_text import redact, register_secret
from .._strictjson import same_json
from ..approval import ApprovalRequest, Decision
from ..errors import ConfigurationError

__all__ = ["API_KEY_VAR", "BASE_URL_VAR", "CheqpointApprover"]

API_KEY_VAR = "CQ_API_KEY"
BASE_URL_VAR = "CQ_BASE_URL"
_BY = "cheqpoint"
_NOT_RUN = "the call was not run"


def _import_sdk() -> Any:
    try:
        return importlib.import_module("cheqpoint")
    except ImportError:
        raise ConfigurationError(
            "The Cheqpoint approver needs the cheqpoint package, which is not installed; run "
            "`pip install 'cheq-jupyter[cheqpoint]'`."
        ) from None


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class CheqpointApprover:
    """Send each tool call to Cheqpoint and wait for a reviewer's decision.

    ``api_key`` defaults to ``$CQ_API_KEY`` and ``base_url`` to ``$CQ_BASE_URL`` or the SDK's
    default (Cheqpoint's hosted service).  ``timeout`` is how long a turn waits for decisions
    (seconds); ``poll_interval`` the pause between status checks; ``http_timeout`` the limit
    for one HTTP call.  ``risk_score`` (0-1) is sent with every request.  With ``announce``
    (the default) one line per filed request goes to ``out`` (default: standard output), saying
    where the decision is awaited.  An interrupt (Ctrl-C, the stop button) while waiting is
    not caught: the run stops, and the requests stay pending in the inbox.
    """

    name = _BY

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 600.0,
        poll_interval: float = 2.0,
        http_timeout: float = 30.0,
        risk_score: float | None = None,
        announce: bool = True,
        out: TextIO | None = None,
    ) -> None:
        sdk = _import_sdk()
        key = api_key if api_key is not None else os.environ.get(API_KEY_VAR, "")
        if not key.strip():
            raise ConfigurationError(
                f"No Cheqpoint API key: set the {API_KEY_VAR} environment variable or pass "
                "CheqpointApprover(api_key=...)."
            )
        if any(c.isspace() or ord(c) < 32 for c in key.strip()):
            raise ConfigurationError(
                f"The Cheqpoint API key ({API_KEY_VAR} or api_key=) has a space or a line break "
                "inside it, so it cannot be sent in a header; set it to the key alone."
            )
        url = (base_url or os.environ.get(BASE_URL_VAR, "").strip()
               or str(getattr(sdk.client, "DEFAULT_BASE_URL", "https://app.cheqpoint.co")))
        if not url.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"The Cheqpoint base URL {url!r} is not an http(s) URL; fix {BASE_URL_VAR} or "
                "base_url=."
            )
        if timeout <= 0 or poll_interval <= 0 or http_timeout <= 0:
            raise ConfigurationError(
                "timeout, poll_interval and http_timeout must be positive numbers of seconds."
            )
        if risk_score is not None and not 0 <= risk_score <= 1:
            raise ConfigurationError(f"risk_score is {risk_score}; use a number from 0 to 1.")
        self.base_url = url.rstrip("/")
        self.timeout = float(timeout)
        self.poll_interval = float(poll_interval)
        self.http_timeout = float(http_timeout)
        self.risk_score = risk_score
        self._announce = announce
        self._out = out
        self._sdk = sdk
        self._client = sdk.CheqpointClient(api_key=key, base_url=self.base_url, timeout=timeout)
        self._secret = key
        register_secret(key)
        self._bound_http_calls()
        self._lock = threading.Lock()
        #: Every request filed so far with Cheqpoint's id for it, in order.  Requests are kept
        #: as objects: tool call ids come from the model and may repeat within a turn.
        self.filed: list[tuple[ApprovalRequest, str]] = []

    def __repr__(self) -> str:
        return (f"CheqpointApprover(base_url={self.base_url!r}, timeout={self.timeout:g}, "
                f"poll_interval={self.poll_interval:g})")

    def _bound_http_calls(self) -> None:
        """Give every SDK HTTP call a time limit (the SDK sets none, so a stuck server would
        hang the cell forever)."""
        session = getattr(self._client, "_session", None)
        request = getattr(session, "request", None)
        if session is None or not callable(request):
            return
        limit = self.http_timeout

        def bounded(method: str, url: str, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", limit)
            return request(method, url, **kwargs)

        session.request = bounded

    # -- the approver protocol -----------------------------------------------------------------

    def __call__(self, request: ApprovalRequest) -> Decision:
        return self.decide_all([request])[0]

    def decide_all(
        self,
        requests: Sequence[ApprovalRequest],
        *,
        stop: threading.Event | None = None,
        on_decision: Callable[[ApprovalRequest, Decision], None] | None = None,
    ) -> list[Decision]:
        """File every request, then poll until each is decided or the time is up.

        For racing another approver: once ``stop`` is set, requests still pending end as
        ``cancelled`` ("decided elsewhere") without waiting further; ``on_decision`` is told of
        each answer Cheqpoint gives, as it arrives.
        """
        with self._lock:
            return self._decide_all(list(requests), stop or threading.Event(), on_decision)

    def _decide_all(
        self,
        requests: list[ApprovalRequest],
        stop: threading.Event,
        on_decision: Callable[[ApprovalRequest, Decision], None] | None,
    ) -> list[Decision]:
        decisions: list[Decision | None] = [None] * len(requests)
        pending: dict[int, str] = {}
        for i, request in enumerate(requests):
            try:
                filed = self._client.create_request(
                    action=request.action, summary=_summary(request),
                    details=dict(request.details), risk_score=self.risk_score,
                )
                pending[i] = str(filed["id"])
            except Exception as exc:  # fail closed: the call is not run
                decisions[i] = self._failed(exc, f"filing {request.action} for approval")
                continue
            self.filed.append((request, pending[i]))
            self._say(f"Waiting up to {self.timeout:g} s for a decision in Cheqpoint on "
                      f"{request.action} (request {pending[i]}).")
        deadline = time.monotonic() + self.timeout
        while pending and not stop.is_set():
            for i, request_id in list(pending.items()):
                try:
                    status = self._client.get_request(request_id)
                    decision = self._to_decision(status, requests[i], request_id)
                except Exception as exc:
                    decision = self._failed(exc, f"checking request {request_id}")
                if decision is not None:
                    decisions[i] = decision
                    del pending[i]
                    if on_decision is not None:
                        on_decision(requests[i], decision)
            remaining = deadline - time.monotonic()
            if not pending or remaining <= 0:
                break
            stop.wait(min(self.poll_interval, remaining))
        for i, request_id in pending.items():
            if stop.is_set():
                decisions[i] = Decision.cancelled(
                    f"Decided elsewhere before Cheqpoint answered (request {request_id}).",
                    by=_BY,
                )
            else:
                decisions[i] = Decision.timed_out(
                    f"No decision in Cheqpoint within {self.timeout:g} s (request {request_id} "
                    f"is still pending in the inbox); {_NOT_RUN}.",
                    by=_BY,
                )
        return [d for d in decisions if d is not None]

    # -- mapping -------------------------------------------------------------------------------

    def _to_decision(self, status: Any, request: ApprovalRequest,
                     request_id: str) -> Decision | None:
        """The decision Cheqpoint's status means, or ``None`` while it is pending."""
        word = str(getattr(status, "status", "") or "").strip().lower()
        reviewer_note = getattr(status, "decision_note", None) or getattr(
            status, "response_notes", None)
        note = _short(redact(str(reviewer_note)), 2000) if reviewer_note else None
        rule = getattr(status, "auto_decision_rule_name", None)
        if word == "pending":
            return None
        if word == "approved":
            modified = getattr(status, "modified_details", None)
            if modified is not None and not isinstance(modified, dict):
                return Decision.cancelled(
                    f"Cheqpoint approved {request.action} with modified details that are not a "
                    f"JSON object (request {request_id}); {_NOT_RUN}.",
                    by=_BY,
                )
            if modified is not None and same_json(modified, dict(request.details)):
                modified = None  # compared as JSON: 1 -> true is an edit
            problems = _edit_problems(request, modified) if modified is not None else []
            if problems:
                return Decision.cancelled(
                    f"Cheqpoint approved {request.action} with edited details that the tool "
                    f"refuses ({_short('; '.join(problems), 300)}; request {request_id}); "
                    f"{_NOT_RUN}.",
                    by=_BY,
                )
            if getattr(status, "auto_decided", False):
                note = _join(f"Approved by Cheqpoint rule {_short(rule or 'unnamed', 80)}.", note)
            return Decision.approve(by=_BY, modified_details=modified, note=note)
        if word == "rejected":
            if getattr(status, "retryable", False):
                return Decision.timed_out(
                    _join(f"Cheqpoint closed request {request_id} without a reviewer's decision "
                          f"(expired, past its deadline or no reviewer available); {_NOT_RUN}, "
                          "and it may be asked again.", note),
                    by=_BY,
                )
            if getattr(status, "auto_decided", False):
                note = _join(f"Rejected by Cheqpoint rule {_short(rule or 'unnamed', 80)}.", note)
            return Decision.reject(note or "Rejected in Cheqpoint (no note given).", by=_BY)
        if word == "expired":
            return Decision.timed_out(
                _join(f"Cheqpoint request {request_id} expired before anyone decided; "
                      f"{_NOT_RUN}.", note),
                by=_BY,
            )
        if word in ("cancelled", "canceled"):
            return Decision.cancelled(
                _join(f"Cheqpoint request {request_id} was cancelled; {_NOT_RUN}.", note), by=_BY
            )
        return Decision.cancelled(
            f"Cheqpoint answered an unknown status {_short(word, 40)!r} for request "
            f"{request_id}; {_NOT_RUN}.",
            by=_BY,
        )

    def _failed(self, exc: Exception, doing: str) -> Decision:
        """Fail closed on any error while talking to Cheqpoint, saying what went wrong."""
        code = getattr(exc, "status_code", None)
        requests_mod = sys.modules.get("requests")
        timeout_types: tuple[type[BaseException], ...] = ()
        connection_types: tuple[type[BaseException], ...] = ()
        if requests_mod is not None:
            timeout_types = (requests_mod.Timeout,)
            connection_types = (requests_mod.ConnectionError,)
        if isinstance(code, int) and code in (401, 403):
            text = (f"Cheqpoint refused the API key (HTTP {code}: {_short(str(exc))}) while "
                    f"{doing}; check {API_KEY_VAR}. Not approved: {_NOT_RUN}.")
        elif isinstance(code, int):
            text = (f"Cheqpoint answered HTTP {code} ({_short(str(exc))}) while {doing}. "
                    f"Not approved: {_NOT_RUN}; try again later.")
        elif timeout_types and isinstance(exc, timeout_types):
            text = (f"Cheqpoint at {self.base_url} did not answer within {self.http_timeout:g} s "
                    f"while {doing}. Not approved: {_NOT_RUN}.")
        elif connection_types and isinstance(exc, connection_types):
            text = (f"Could not reach Cheqpoint at {self.base_url} while {doing}; check "
                    f"{BASE_URL_VAR} and the network. Not approved: {_NOT_RUN}.")
        else:
            text = (f"Cheqpoint's answer could not be used while {doing} "
                    f"({type(exc).__name__}: {_short(str(exc))}). Not approved: {_NOT_RUN}.")
        return Decision.cancelled(redact(text), by=_BY)

    def _say(self, text: str) -> None:
        if self._announce:
            print(text, file=self._out or sys.stdout, flush=True)


def _summary(request: ApprovalRequest) -> str:
    """The summary, saying which arguments the tool's defaults filled in (they are in
    ``details`` like the others: the reviewer sees every value the tool runs with)."""
    summary = request.summary or request.action
    if request.defaulted:
        summary += f" (defaults used: {', '.join(request.defaulted)})"
    return summary


def _edit_problems(request: ApprovalRequest, modified: Any) -> list[str]:
    """The same check as the call (``request.check``); the schema subset checker without one."""
    try:
        if request.check is not None:
            return list(request.check(modified))
        from ..tools import validate_arguments

        return validate_arguments(request.schema, modified)
    except Exception as exc:  # a check that breaks lets no edit through
        return [f"the edited details could not be checked ({type(exc).__name__})"]


def _join(first: str, second: str | None) -> str:
    return f"{first} {second}" if second else first

