"""Hostile networks and servers: a model endpoint that stalls or refuses, servers that echo keys.

Everything goes through the real SDKs (mistralai, cheqpoint) over loopback sockets: a listener
that accepts connections and never answers, a port nobody listens on, and the shipped fakes
scripted to echo the API key back in their error bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cheq_jupyter import _sdk, approve_all, reject_all, run_agent
from cheq_jupyter.agent import arun_agent
from cheq_jupyter.approval import ApprovalRequest, Decision
from cheq_jupyter.errors import (
    ConfigurationError,
    ModelError,
    RemoteApproverError,
    ToolArgumentsError,
)
from cheq_jupyter.testing import FakeMistral, http_error, text, tool_call

# The Cheqpoint SDK (and requests under it) is imported now, before the tests start and end
# threads: CPython 3.11's import locks can raise KeyError for an import made after a thread id
# was reused (seen here once in three runs).
with contextlib.suppress(ImportError):
    import cheqpoint  # noqa: F401

# Generous bound for "fails within seconds" on a loaded 2-core machine; before the fix a
# stalled endpoint never returned and a refused one took ~30 s of silent retries.
PROMPT_FAILURE = 10.0


@contextlib.contextmanager
def stalling_endpoint() -> Iterator[str]:
    """An HTTP endpoint that accepts every connection and never sends a byte."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = server.accept()
                held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


@contextlib.contextmanager
def trickling_endpoint(every: float = 0.2) -> Iterator[str]:
    """An endpoint that answers headers at once, then one byte of the body every ``every`` s:
    no single read ever waits long, so only a limit on the whole request ends it."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100000\r\n\r\n{")
            while not stop.wait(every):
                conn.sendall(b" ")

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = server.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        server.close()


@contextlib.contextmanager
def raw_endpoint(answer: bytes) -> Iterator[str]:
    """An endpoint that reads the request, sends ``answer`` as is and closes the connection."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = server.accept()
                with conn:
                    conn.settimeout(5)
                    conn.recv(65536)
                    conn.sendall(answer)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        server.close()


def closed_port_url() -> str:
    """A loopback URL on a port that refuses connections."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _run_bounded(fn: Callable[[], Any], limit: float) -> tuple[BaseException | None, float]:
    """Run ``fn`` in a thread; the exception it raised and how long it took (fails on a hang)."""
    box: list[BaseException | None] = [None]

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # handed to the test
            box[0] = exc

    started = time.monotonic()
    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(limit)
    elapsed = time.monotonic() - started
    assert not worker.is_alive(), f"the model request was still blocked after {limit:g} s"
    return box[0], elapsed


def _client(url: str) -> Any:
    return _sdk.mistral_class()(api_key="sk-test-not-a-real-key", server_url=url)


def _sync(url: str, **kwargs: Any) -> Callable[[], Any]:
    return lambda: run_agent("hi", approver=reject_all, client=_client(url), **kwargs)


def _async(url: str, **kwargs: Any) -> Callable[[], Any]:
    return lambda: asyncio.run(
        arun_agent("hi", approver=reject_all, client=_client(url), **kwargs)
    )


def _from_env(url: str, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> Callable[[], Any]:
    monkeypatch.setenv("MISTRAL_API_KEY", "sk-test-not-a-real-key")
    monkeypatch.setenv("MISTRAL_SERVER_URL", url)
    return lambda: run_agent("hi", approver=reject_all, **kwargs)


DRIVERS = ["sync", "async", "env"]


def _driver(name: str, url: str, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> Any:
    if name == "sync":
        return _sync(url, **kwargs)
    if name == "async":
        return _async(url, **kwargs)
    return _from_env(url, monkeypatch, **kwargs)


# -- item 6: no hang -------------------------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("seconds", [0.5, 1.5])
def test_a_stalled_endpoint_times_out_and_says_what_to_do(
    driver: str, seconds: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    with stalling_endpoint() as url:
        fn = _driver(driver, url, monkeypatch, request_timeout=seconds)
        exc, elapsed = _run_bounded(fn, seconds + PROMPT_FAILURE)
    assert isinstance(exc, ModelError), exc
    message = str(exc)
    assert f"did not answer within {seconds:g} s" in message
    assert "request_timeout" in message and "--request-timeout" in message
    assert elapsed >= seconds * 0.9  # it really waited for the server, then gave up


def test_a_trickling_answer_is_bounded_as_a_whole_by_the_async_driver() -> None:
    with trickling_endpoint() as url:
        exc, _ = _run_bounded(_async(url, request_timeout=1.0), 1.0 + PROMPT_FAILURE)
    assert isinstance(exc, ModelError) and "did not answer within 1 s" in str(exc), exc


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_refused_connection_fails_within_seconds(
    driver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fn = _driver(driver, closed_port_url(), monkeypatch)
    exc, elapsed = _run_bounded(fn, 60)
    assert isinstance(exc, ModelError), exc
    assert "Could not connect to the Mistral API" in str(exc)
    assert "MISTRAL_SERVER_URL" in str(exc)
    assert elapsed < PROMPT_FAILURE, f"a refused connection took {elapsed:.1f} s to report"


BROKEN_ANSWERS = {
    "closed at once": b"",
    "not HTTP": b"SSH-2.0-OpenSSH_9.6\r\n",
    "headers cut": b"HTTP/1.1 200 OK\r\nContent-Type: appl",
    "body cut": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: 500\r\n\r\n{\"id\": \"x\"",
    "not JSON": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: 9\r\n\r\nnot json!",
    "HTML error page": b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\n"
                       b"Content-Length: 37\r\n\r\n<html><script>x()</script>\x1b[2J</html>",
}


@pytest.mark.parametrize("driver", ["sync", "async"])
@pytest.mark.parametrize("broken", sorted(BROKEN_ANSWERS))
def test_a_broken_answer_is_a_prompt_model_error(
    broken: str, driver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with raw_endpoint(BROKEN_ANSWERS[broken]) as url:
        fn = _driver(driver, url, monkeypatch, request_timeout=5.0)
        exc, _ = _run_bounded(fn, 5.0 + PROMPT_FAILURE)
    assert isinstance(exc, ModelError), repr(exc)
    assert "\x1b" not in str(exc) and "sk-test-not-a-real-key" not in str(exc)


def test_the_default_request_timeout_suits_slow_models() -> None:
    import inspect

    for fn in (run_agent, arun_agent):
        default = inspect.signature(fn).parameters["request_timeout"].default
        assert default == _sdk.DEFAULT_REQUEST_TIMEOUT == 300.0


def test_the_default_client_still_retries_rate_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeMistral([http_error(429), text("after the retry")]) as fake:
        monkeypatch.setenv("MISTRAL_API_KEY", fake.api_key)
        monkeypatch.setenv("MISTRAL_SERVER_URL", fake.url)
        assert run_agent("hi", approver=reject_all).text == "after the retry"
    assert [status for status, _ in fake.responses] == [429, 200]


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "soon", None, True])
def test_a_bad_request_timeout_is_a_configuration_error(bad: Any) -> None:
    with FakeMistral([text("unused")]) as fake, pytest.raises(ConfigurationError) as info:
        run_agent("hi", approver=reject_all, client=fake.client(), request_timeout=bad)
    assert "request_timeout" in str(info.value)
    assert fake.requests == []


def test_the_timeout_reaches_every_request_of_a_run() -> None:
    """A tool turn and the answer: each request is bounded (the stall comes second)."""
    served = threading.Event()

    def lookup(customer: str) -> str:
        """Look a customer up."""
        served.set()
        return "found"

    with FakeMistral([tool_call("lookup", {"customer": "c1"})]) as fake, stalling_endpoint() as url:
        client = fake.client()

        class Switch:
            """The real client for the first request, the stalled endpoint afterwards."""

            def __init__(self) -> None:
                self.chat = self
                self.calls = 0

            def _target(self) -> Any:
                self.calls += 1
                return client if self.calls == 1 else _client(url)

            def complete(self, **kwargs: Any) -> Any:
                return self._target().chat.complete(**kwargs)

            def stream(self, **kwargs: Any) -> Any:
                return self._target().chat.stream(**kwargs)

        exc, _ = _run_bounded(
            lambda: run_agent("hi", tools=[lookup], approver=approve_all, client=Switch(),
                              request_timeout=1.0),
            1.0 + PROMPT_FAILURE,
        )
    assert served.is_set() and isinstance(exc, ModelError)
    assert "did not answer within 1 s" in str(exc)


# -- item 7: keys never appear ---------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_registered_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no key registered by an earlier one (the registry is global)."""
    from cheq_jupyter import _safe_text

    monkeypatch.setattr(_safe_text, "_registered", set())

KEYS = [
    "sk-live-0123456789abcdef",
    "sk-with space-inside-0123",
    "k3y\twith\ttabs-and-more",
]


def _echo_401(key: str) -> list[Any]:
    return [http_error(401, {"detail": f"Invalid API key: {key}. Got: Bearer {key}"})]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("source", ["env", "client"])
def test_a_401_that_echoes_the_key_never_shows_it(
    key: str, source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``env``: the key is MISTRAL_API_KEY; ``client``: it was only given to the client."""
    with FakeMistral(_echo_401(key), api_key=key if source == "client" else None) as fake:
        if source == "env":
            monkeypatch.setenv("MISTRAL_API_KEY", key)
        else:
            monkeypatch.delenv("MISTRAL_API_KEY", raising=False)
        client = _sdk.mistral_class()(api_key=fake.api_key, server_url=fake.url)
        with pytest.raises(ModelError) as info:
            run_agent("hi", approver=reject_all, client=client)
    exc = info.value
    assert exc.status_code == 401
    shown = [str(exc), repr(exc), repr(exc.body), repr(exc.args)]
    for piece in [key, *key.split()]:
        if len(piece) >= 6:
            for surface in shown:
                assert piece not in surface, surface
    assert "MISTRAL_API_KEY" in str(exc)


@pytest.mark.parametrize(
    "key", ["sk-first-half-0123\nsecond-half-4567", "sk-abcdef012345\r\ntrailing-part"]
)
def test_a_key_with_a_line_break_is_refused_without_showing_it(
    key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MISTRAL_API_KEY", key)
    monkeypatch.setenv("MISTRAL_SERVER_URL", closed_port_url())
    with pytest.raises(ConfigurationError) as info:
        run_agent("hi", approver=reject_all)
    message = str(info.value)
    assert "MISTRAL_API_KEY" in message and "line break" in message
    for piece in key.split():
        assert piece not in message


def test_a_user_built_client_with_a_line_break_key_does_not_leak_it() -> None:
    key = "sk-first-half-0123\nsecond-half-4567"
    client = _sdk.mistral_class()(api_key=key, server_url=closed_port_url())
    with pytest.raises(ModelError) as info:
        run_agent("hi", approver=reject_all, client=client)
    for piece in key.split():
        assert piece not in str(info.value) and piece not in repr(info.value)


@pytest.mark.parametrize("key", ["cq-live-0123456789abcdef", "cq_TEST_abcdefABCDEF0123"])
def test_cheqpoint_echoing_its_key_never_shows_it(
    key: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("cheqpoint")
    from cheq_jupyter.approvers.cheqpoint import CheqpointApprover
    from cheq_jupyter.testing import FakeCheqpoint

    monkeypatch.setenv("CQ_API_KEY", key)
    with FakeCheqpoint() as fake:
        fake.api_key = key
        fake.fail_next(401, f"Invalid API key: {key}", times=3)
        approver = CheqpointApprover(base_url=fake.url, timeout=5, poll_interval=0.05)
        decision = approver(
            ApprovalRequest(action="refund", summary="refund(1)", details={"amount": 1},
                            tool_call_id="abcdefghi")
        )
    assert decision.status == "cancelled"
    shown = [decision.decision_note or "", repr(decision), repr(approver), capsys.readouterr().out]
    for piece in [key, *key.split()]:
        for surface in shown:
            assert piece not in surface, surface


@pytest.mark.parametrize("key", ["cq-first-half-0123\nsecond-half", "cq-two pieces-0123456789"])
@pytest.mark.parametrize("source", ["env", "argument"])
def test_a_cheqpoint_key_with_a_line_break_is_refused_without_showing_it(
    key: str, source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("cheqpoint")
    from cheq_jupyter.approvers.cheqpoint import CheqpointApprover

    monkeypatch.setenv("CQ_API_KEY", key if source == "env" else "unused-but-valid-key")
    with pytest.raises(ConfigurationError) as info:
        CheqpointApprover(api_key=None if source == "env" else key,
                          base_url="http://127.0.0.1:9")
    assert "line break" in str(info.value)
    for piece in key.split():
        assert piece not in str(info.value)


@pytest.mark.parametrize("var", ["MISTRAL_API_KEY", "CQ_API_KEY"])
def test_error_classes_scrub_keys_from_their_messages(
    var: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "secret-key-value-123456"
    monkeypatch.setenv(var, key)
    errors = [
        ModelError(f"bad {key}", body={"detail": [key, {key: key}]}),
        RemoteApproverError(f"Cheqpoint said {key}", status_code=401),
        ConfigurationError(f"the key {key} is wrong"),
        ToolArgumentsError(f"argument {key}", tool="t"),
    ]
    for exc in errors:
        assert key not in str(exc) and key not in repr(exc)
        assert key not in repr(getattr(exc, "body", ""))


def test_a_failing_approver_that_names_the_key_does_not_leak_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    key = "sk-approver-leak-0123456789"
    monkeypatch.setenv("MISTRAL_API_KEY", key)

    def approver(request: ApprovalRequest) -> Decision:
        raise RuntimeError(f"could not authenticate with {key}")

    def refund(amount: int) -> str:
        """Refund."""
        return "refunded"

    caplog.set_level(logging.DEBUG, logger="cheq_jupyter")
    with FakeMistral([tool_call("refund", {"amount": 1}), text("ok")]) as fake:
        result = run_agent("hi", tools=[refund], approver=approver, client=fake.client())
    assert result.tool_calls[0].status == "not_approved"
    surfaces = [caplog.text, result.tool_calls[0].result,
                result.tool_calls[0].decision.decision_note or "", repr(result),
                str(fake.requests[-1])]
    for surface in surfaces:
        assert key not in surface, surface
    assert "[redacted]" in caplog.text


# -- the magic: --request-timeout and MistralAgentMagics.request_timeout -----------------------


@pytest.fixture
def shell(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[Any]:
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHEQ_JUPYTER_APPROVER", "policy")
    monkeypatch.setenv("MISTRAL_API_KEY", "sk-test-not-a-real-key")
    sh = InteractiveShell()
    sh.run_line_magic("load_ext", "cheq_jupyter")
    yield sh
    InteractiveShell.clear_instance()


@pytest.mark.parametrize(
    ("config", "line", "expected"),
    [
        (None, "--request-timeout 1", "within 1 s"),
        ("1.5", "", "within 1.5 s"),
        ("600", "--request-timeout 0.5", "within 0.5 s"),
    ],
)
def test_the_magic_bounds_model_requests(
    shell: Any, monkeypatch: pytest.MonkeyPatch, config: str | None, line: str, expected: str
) -> None:
    if config is not None:
        shell.run_line_magic("config", f"MistralAgentMagics.request_timeout = {config}")
    with stalling_endpoint() as url:
        monkeypatch.setenv("MISTRAL_SERVER_URL", url)
        box: list[Any] = []
        _run_bounded(
            lambda: box.append(shell.run_cell(f"%%mistral_agent {line}\nhi")), 2 + PROMPT_FAILURE
        )
    from IPython.core.error import UsageError

    error = box[0].error_in_exec  # the magic shows a model error as one line, no traceback
    assert isinstance(error, UsageError) and expected in str(error), error
    assert "--request-timeout" in str(error)


@pytest.mark.parametrize("value", ["0", "-3", "nan", "inf", "soon"])
def test_a_bad_request_timeout_option_is_a_usage_error(shell: Any, value: str) -> None:
    from IPython.core.error import UsageError

    result = shell.run_cell(f"%%mistral_agent --request-timeout {value}\nhi")
    assert isinstance(result.error_in_exec, UsageError)
    assert "request-timeout" in str(result.error_in_exec) or "invalid float" in str(
        result.error_in_exec
    )


def test_the_console_and_the_result_repr_do_not_show_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io

    from cheq_jupyter.agent import AgentResult
    from cheq_jupyter.approvers.console import ConsoleApprover

    key = "sk-console-leak-0123456789"
    monkeypatch.setenv("MISTRAL_API_KEY", key)
    out = io.StringIO()
    approver = ConsoleApprover(stdin=io.StringIO("r\n\n"), stdout=out)
    approver(ApprovalRequest(action="send", summary=f"send {key}", details={"token": key},
                             tool_call_id="abcdefghi"))
    assert key not in out.getvalue() and "[redacted]" in out.getvalue()
    assert key not in repr(AgentResult(f"the key is {key}", [], [], 1, "m", "r", "answer"))


@pytest.mark.parametrize(
    "logger", ["cheq_jupyter", "cheq_jupyter.card", "cheq_jupyter._blocking",
               "cheq_jupyter.approvers.cheqpoint", "cheq_jupyter.audit"]
)
def test_no_package_logger_writes_the_key(
    logger: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import cheq_jupyter  # noqa: F401 - installs the filters

    key = "sk-logged-key-0123456789"
    monkeypatch.setenv("CQ_API_KEY", key)
    caplog.set_level(logging.DEBUG)
    logging.getLogger(logger).warning("request failed with %s and \x1b]52;c;eA==\x07", key)
    assert key not in caplog.text and "\x1b" not in caplog.text
    assert "[redacted]" in caplog.text


@pytest.mark.parametrize(
    "message", ["\x1b]52;c;ZXZpbA==\x07bad request", "\x1b[2J\x1b[Hcleared", "\u202egnirts\u202c"]
)
def test_a_server_error_message_cannot_drive_the_terminal(message: str) -> None:
    body = {"object": "error", "message": message, "type": "invalid_request_error",
            "param": None, "code": None}
    with FakeMistral([http_error(400, body)]) as fake, pytest.raises(ModelError) as info:
        run_agent("hi", approver=reject_all, client=fake.client())
    shown = str(info.value)
    assert not any(c in shown for c in "\x1b\x07\u202e\u202c"), shown
    assert "answered 400" in shown
