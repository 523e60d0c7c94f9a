"""A loopback Cheqpoint server for tests: the real ``cheqpoint`` SDK talks to it over HTTP.

It serves the endpoints ``cheqpoint.CheqpointClient`` calls, with the SDK's paths, headers and
JSON shapes (read from cheqpoint 0.2.0's client):

* ``POST /api/approvals/request`` -- ``{apiKey, action, riskScore, summary, details,
  justification?, webhookUrl?, trace?}`` -> ``{"id", "status": "PENDING"}``
  (``create_request``, ``checkpoint``, ``guard``);
* ``GET /api/approvals/{id}`` -> ``{id, status, details, modifiedDetails, responseNotes,
  decisionReasonCode, decisionNote, autoDecided, autoDecisionRuleName, decidedAt, retryable}``
  with upper-case statuses ``PENDING`` / ``APPROVED`` / ``REJECTED`` (``get_request``);
* ``POST /api/webhooks/inbound`` -- ``{action, summary, details, maxWaitMs?, ...}`` ->
  ``{status, approvalId, id, modifiedDetails, decisionNote}`` with lower-case statuses; the
  server holds the answer up to ``maxWaitMs`` for a decision (``request_sync``,
  ``request_async``).

Every call must carry the key in ``x-api-key`` (the SDK sends it on every request); a wrong or
missing key gets ``401 {"error": "Invalid API key"}``.  Errors are ``{"error": message}``, which
the SDK turns into ``CheqpointError(message, status_code)``.

Test controls::

    with FakeCheqpoint(auto={"lookup": "APPROVED"}) as fake:     # decided on arrival
        approver = CheqpointApprover(api_key=fake.api_key, base_url=fake.url)
        ...                                                       # in another thread:
        pending = fake.wait_for_request(0)                        # the first request arrives
        fake.decide(pending, "APPROVED", modified_details={"amount": 10}, note="capped")
        fake.fail_next(500)                                       # next call answers 500
        fake.stall_next()                                         # next call never answers

Recorded calls never keep the API key (``FakeHttpCall.authorized`` says whether it matched).
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, TypeAlias
from urllib.parse import unquote, urlsplit

__all__ = ["AutoDecision", "FakeApproval", "FakeCheqpoint", "FakeHttpCall"]

#: An automatic answer, given as if a reviewer decided the moment the request arrived: a status,
#: or ``(status, modified_details)``, or ``(status, modified_details, note)``, or a function of
#: the request's details returning one of those (or ``None`` to leave the request pending).
AutoDecision: TypeAlias = (
    str
    | tuple[str, dict[str, Any] | None]
    | tuple[str, dict[str, Any] | None, str | None]
    | Callable[[dict[str, Any]], Any]
)

_DEFAULT_ERRORS = {
    400: "Bad request",
    401: "Invalid API key",
    403: "Forbidden",
    404: "Not found",
    429: "Rate limit exceeded",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable",
}
_MAX_SERVER_WAIT = 10.0  # seconds; the SDK itself asks for at most 10 000 ms


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class FakeApproval:
    """One approval request as the fake holds it (mutated in place as it is decided)."""

    id: str
    action: str
    summary: str
    details: dict[str, Any]
    risk_score: float | None = None
    justification: str | None = None
    endpoint: Literal["request", "inbound"] = "request"
    status: str = "PENDING"
    modified_details: dict[str, Any] | None = None
    decision_note: str | None = None
    response_notes: str | None = None
    decision_reason_code: str | None = None
    retryable: bool = False
    auto_decided: bool = False
    auto_rule: str | None = None
    created_at: str = field(default_factory=_now)
    decided_at: str | None = None
    #: ``GET /api/approvals/{id}`` calls answered so far.
    polls: int = 0

    @property
    def decided(self) -> bool:
        return self.status.upper() != "PENDING"

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "action": self.action,
            "summary": self.summary,
            "details": self.details,
            "riskScore": self.risk_score,
            "modifiedDetails": self.modified_details,
            "responseNotes": self.response_notes,
            "decisionReasonCode": self.decision_reason_code,
            "decisionNote": self.decision_note,
            "autoDecided": self.auto_decided,
            "autoDecisionRuleName": self.auto_rule,
            "decidedAt": self.decided_at,
            "retryable": self.retryable,
            "createdAt": self.created_at,
        }


@dataclass(frozen=True)
class FakeHttpCall:
    """One HTTP call the fake answered (the API key is never kept)."""

    method: str
    path: str
    body: Any
    status: int
    authorized: bool


@dataclass
class _Injected:
    status: int
    error: str
    stall: bool = False


class FakeCheqpoint:
    """A Cheqpoint API on ``127.0.0.1`` (a free port) in a daemon thread; a context manager."""

    def __init__(
        self,
        *,
        api_key: str = "cq_test_0123456789",
        auto: Mapping[str, AutoDecision] | None = None,
    ) -> None:
        self.api_key = api_key
        self.auto: dict[str, AutoDecision] = dict(auto or {})
        self._cond = threading.Condition()
        self._approvals: list[FakeApproval] = []
        self._by_id: dict[str, FakeApproval] = {}
        self._calls: list[FakeHttpCall] = []
        self._injected: list[_Injected] = []
        self._release = threading.Event()
        self._closing = False
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeCheqpoint:
        if self._server is not None:
            return self
        server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05},
            name="FakeCheqpoint", daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._release.set()
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeCheqpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The base URL to give the SDK (``CheqpointClient(base_url=...)`` / ``CQ_BASE_URL``)."""
        if self._server is None:
            raise RuntimeError("FakeCheqpoint is not running; use it as a context manager.")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # -- what happened -----------------------------------------------------------------------

    @property
    def approvals(self) -> list[FakeApproval]:
        """Every approval request received, in order of arrival."""
        with self._cond:
            return list(self._approvals)

    @property
    def calls(self) -> list[FakeHttpCall]:
        """Every HTTP call answered, in order."""
        with self._cond:
            return list(self._calls)

    def wait_for_request(self, index: int = 0, timeout: float = 5.0) -> FakeApproval:
        """Block until request number ``index`` (0-based) has arrived, and return it."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._approvals) > index, timeout):
                raise TimeoutError(
                    f"FakeCheqpoint received {len(self._approvals)} request(s) in {timeout} s; "
                    f"waited for request #{index}."
                )
            return self._approvals[index]

    def wait_for_poll(self, ref: FakeApproval | str | int = 0, polls: int = 1,
                      timeout: float = 5.0) -> FakeApproval:
        """Block until a request has been polled (``GET``) at least ``polls`` times."""
        approval = self._resolve(ref) if not isinstance(ref, int) else self.wait_for_request(ref)
        with self._cond:
            if not self._cond.wait_for(lambda: approval.polls >= polls, timeout):
                raise TimeoutError(
                    f"Request {approval.id} was polled {approval.polls} time(s) in {timeout} s; "
                    f"waited for {polls}."
                )
        return approval

    # -- controls ----------------------------------------------------------------------------

    def decide(
        self,
        ref: FakeApproval | str | int,
        status: str = "APPROVED",
        *,
        modified_details: dict[str, Any] | None = None,
        note: str | None = None,
        response_notes: str | None = None,
        retryable: bool = False,
        auto_rule: str | None = None,
    ) -> FakeApproval:
        """Decide a request (by object, id, or 0-based index) as a reviewer would.

        ``status`` is stored verbatim (the real API answers upper case; pass lower case to
        test a client's tolerance).  ``note`` is the ``decisionNote``; ``retryable`` marks a
        rejection made by the system (expiry, SLA breach, no reviewer).
        """
        with self._cond:
            approval = self._resolve(ref)
            approval.status = status
            approval.modified_details = modified_details
            approval.decision_note = note
            approval.response_notes = response_notes
            approval.retryable = retryable
            approval.auto_decided = auto_rule is not None
            approval.auto_rule = auto_rule
            approval.decided_at = _now()
            self._cond.notify_all()
            return approval

    def fail_next(self, status: int = 500, error: str | None = None, *, times: int = 1) -> None:
        """Answer the next ``times`` HTTP calls with ``status`` and ``{"error": error}``."""
        with self._cond:
            message = error or _DEFAULT_ERRORS.get(status, HTTPStatus(status).phrase)
            self._injected.extend(_Injected(status, message) for _ in range(times))

    def stall_next(self) -> None:
        """Hold the next HTTP call without answering until :meth:`release` or close."""
        with self._cond:
            self._release.clear()
            self._injected.append(_Injected(0, "", stall=True))

    def release(self) -> None:
        """Let stalled calls go (they then answer 503)."""
        self._release.set()

    # -- internals ---------------------------------------------------------------------------

    def _resolve(self, ref: FakeApproval | str | int) -> FakeApproval:
        with self._cond:
            if isinstance(ref, FakeApproval):
                return ref
            if isinstance(ref, int):
                if not 0 <= ref < len(self._approvals):
                    raise IndexError(
                        f"FakeCheqpoint has {len(self._approvals)} request(s); no #{ref}."
                    )
                return self._approvals[ref]
            if ref not in self._by_id:
                raise KeyError(f"FakeCheqpoint has no request with id {ref!r}.")
            return self._by_id[ref]

    def _take_injected(self) -> _Injected | None:
        with self._cond:
            return self._injected.pop(0) if self._injected else None

    def _record(self, method: str, path: str, body: Any, status: int, authorized: bool) -> None:
        if isinstance(body, dict):
            body = {k: v for k, v in body.items() if k != "apiKey"}
        with self._cond:
            self._calls.append(FakeHttpCall(method, path, body, status, authorized))
            self._cond.notify_all()

    def _create(
        self, body: dict[str, Any], endpoint: Literal["request", "inbound"]
    ) -> FakeApproval:
        with self._cond:
            approval = FakeApproval(
                id=f"cq_req_{next(self._ids):04d}",
                action=body["action"],
                summary=body["summary"],
                details=body["details"],
                risk_score=body.get("riskScore"),
                justification=body.get("justification"),
                endpoint=endpoint,
            )
            self._approvals.append(approval)
            self._by_id[approval.id] = approval
            rule = self.auto.get(approval.action)
            answer = rule(dict(approval.details)) if callable(rule) else rule
            if answer is not None:
                status, modified, note = _auto_parts(answer)
                self.decide(approval, status, modified_details=modified, note=note)
            self._cond.notify_all()
            return approval

    def _wait_decided(self, approval: FakeApproval, seconds: float) -> None:
        with self._cond:
            self._cond.wait_for(
                lambda: approval.decided or self._closing,
                min(seconds, _MAX_SERVER_WAIT),
            )

    def handle(self, method: str, raw_path: str, headers: Mapping[str, str],
               raw_body: bytes) -> tuple[int, dict[str, Any]]:
        """Answer one HTTP call: ``(status, JSON body)``."""
        path = unquote(urlsplit(raw_path).path).rstrip("/")
        body: Any = None
        if raw_body:
            try:
                body = json.loads(raw_body)
            except ValueError:
                body = raw_body.decode("utf-8", "replace")
        authorized = headers.get("x-api-key") == self.api_key
        status, answer = self._answer(method, path, body, authorized)
        self._record(method, path, body, status, authorized)
        return status, answer

    def _answer(self, method: str, path: str, body: Any,
                authorized: bool) -> tuple[int, dict[str, Any]]:
        injected = self._take_injected()
        if injected is not None and injected.stall:
            self._release.wait()
            return 503, {"error": "Service unavailable"}
        if injected is not None:
            return injected.status, {"error": injected.error}
        known = path in ("/api/approvals/request", "/api/webhooks/inbound") or (
            path.startswith("/api/approvals/") and path.count("/") == 3
        )
        if not known:
            return 404, {"error": f"No route for {method} {path}"}
        if not authorized:
            return 401, {"error": _DEFAULT_ERRORS[401]}
        if path.startswith("/api/approvals/") and path != "/api/approvals/request":
            if method != "GET":
                return 405, {"error": f"{method} is not allowed on {path}"}
            with self._cond:
                approval = self._by_id.get(path.rsplit("/", 1)[-1])
                if approval is None:
                    return 404, {"error": "Approval request not found"}
                approval.polls += 1
                self._cond.notify_all()
                return 200, approval.to_api()
        if method != "POST":
            return 405, {"error": f"{method} is not allowed on {path}"}
        problem = _check_create(body)
        if problem:
            return 400, {"error": problem}
        if path == "/api/approvals/request":
            approval = self._create(body, "request")
            return 200, {"id": approval.id, "status": approval.status}
        approval = self._create(body, "inbound")
        wait_ms = body.get("maxWaitMs")
        if isinstance(wait_ms, (int, float)) and wait_ms > 0 and not approval.decided:
            self._wait_decided(approval, wait_ms / 1000.0)
        with self._cond:
            return 200, {
                "status": approval.status.lower(),
                "approvalId": approval.id,
                "id": approval.id,
                "modifiedDetails": approval.modified_details,
                "decisionNote": approval.decision_note,
            }


def _auto_parts(answer: Any) -> tuple[str, dict[str, Any] | None, str | None]:
    if isinstance(answer, str):
        return answer, None, None
    if isinstance(answer, tuple) and len(answer) == 2:
        return str(answer[0]), answer[1], None
    if isinstance(answer, tuple) and len(answer) == 3:
        return str(answer[0]), answer[1], answer[2]
    raise TypeError(
        f"FakeCheqpoint auto answer {answer!r} must be a status, (status, modified_details) "
        "or (status, modified_details, note)."
    )


def _check_create(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "Request body must be a JSON object"
    if not isinstance(body.get("action"), str) or not body["action"]:
        return "action is required"
    if not isinstance(body.get("summary"), str):
        return "summary is required"
    if not isinstance(body.get("details"), dict):
        return "details must be an object"
    risk = body.get("riskScore")
    if risk is not None and (
        isinstance(risk, bool) or not isinstance(risk, (int, float)) or not 0 <= risk <= 1
    ):
        return "riskScore must be a number between 0 and 1"
    return None


def _make_handler(fake: FakeCheqpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "FakeCheqpoint/1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, answer = fake.handle(self.command, self.path, headers, raw)
            data = json.dumps(answer).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def do_PUT(self) -> None:
            self._serve()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
