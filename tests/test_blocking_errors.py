"""Where the card cannot wait, it says so at once (FrontendUnavailableError), never hangs."""

from __future__ import annotations

import threading
import types
from typing import Any

import IPython
import pytest

from cheq_jupyter import ApprovalRequest, WidgetApprover
from cheq_jupyter._blocking import Waker, wait_for
from cheq_jupyter.errors import ApprovalError, FrontendUnavailableError

REQUEST = ApprovalRequest(action="refund", summary="Refund c1", details={"c": 1},
                          tool_call_id="abcABC123")


def fake_shell(monkeypatch: pytest.MonkeyPatch, kernel: Any) -> None:
    shell = types.SimpleNamespace(kernel=kernel)
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)


def test_plain_python_gets_a_clear_error_and_no_card(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(IPython, "get_ipython", lambda: None)  # whatever other tests started
    with pytest.raises(FrontendUnavailableError, match="needs a Jupyter kernel, but no IPython"):
        WidgetApprover(timeout=5)(REQUEST)
    with pytest.raises(FrontendUnavailableError, match="pass another approver"):
        wait_for(lambda: False, timeout=None)


def test_terminal_ipython_gets_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(IPython, "get_ipython", lambda: types.SimpleNamespace())
    with pytest.raises(FrontendUnavailableError, match="terminal IPython"):
        WidgetApprover(timeout=5).decide_all([REQUEST])


def test_an_unrecognised_kernel_fails_instead_of_hanging(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_shell(monkeypatch, types.SimpleNamespace())
    with pytest.raises(FrontendUnavailableError, match=r"no kernel\.session.*ipykernel 6\.29 or 7"):
        wait_for(lambda: False, timeout=None)


def _kernelish(**extra: Any) -> types.SimpleNamespace:
    handlers = {t: print for t in ("comm_open", "comm_msg", "comm_close")}
    return types.SimpleNamespace(
        session=object(), shell_handlers=handlers, set_parent=print, get_parent=print,
        _publish_status=print, _parent_ident={"shell": b""}, **extra,
    )


def test_changed_ipykernel_7_internals_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    thread = types.SimpleNamespace(manager=types.SimpleNamespace())  # no _shell_channel_to_main
    fake_shell(monkeypatch, _kernelish(shell_channel_thread=thread))
    with pytest.raises(FrontendUnavailableError, match="ipykernel 7 internals changed"):
        wait_for(lambda: False, timeout=None)


def test_a_kernel_without_a_main_shell_stream_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_shell(monkeypatch, _kernelish(shell_channel_thread=None, shell_stream=None))
    with pytest.raises(FrontendUnavailableError, match="unrecognised kernel"):
        wait_for(lambda: False, timeout=None)


def test_waiting_off_the_main_thread_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_shell(monkeypatch, _kernelish())
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            wait_for(lambda: False, timeout=None)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=worker, name="agent-worker")
    t.start()
    t.join(10)
    assert len(errors) == 1 and isinstance(errors[0], FrontendUnavailableError)
    assert "main thread" in str(errors[0]) and "agent-worker" in str(errors[0])


def test_the_error_is_an_approval_error_so_the_loop_fails_closed() -> None:
    assert issubclass(FrontendUnavailableError, ApprovalError)


def test_no_requests_need_no_kernel() -> None:
    assert WidgetApprover().decide_all([]) == []


def test_a_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="above 0"):
        WidgetApprover(timeout=0)


def test_waker_can_be_woken_from_any_thread_and_closed_twice() -> None:
    import zmq

    with Waker() as waker:
        t = threading.Thread(target=waker.wake)
        t.start()
        t.join(10)
        poller = zmq.Poller()
        poller.register(waker.socket, zmq.POLLIN)
        assert poller.poll(10_000)  # the wake-up arrived
        waker.drain()
        assert not poller.poll(0)
    waker.close()
    waker.wake()  # after close: a no-op, not an error
