"""Block the running cell until a condition holds, while the kernel keeps handling widgets.

A cell that waits for a button click cannot simply sleep: the click arrives as a ``comm_msg``
on the kernel's shell channel, and the kernel only reads that channel between cells.  So
:func:`wait_for` reads the main thread's shell socket itself with a ``zmq.Poller`` (no busy
polling: it blocks in ``poll`` until a message, a :class:`Waker`, a tick or the deadline),
runs comm messages (``comm_open``, ``comm_msg``, ``comm_close``) in place, and defers every
other message (a cell queued by "Run All", a ``kernel_info_request``...).  When the wait ends,
deferred messages go back to the kernel in arrival order, so queued cells run afterwards.

This relies on private ipykernel internals, checked on 6.29 and 7.0 to 7.4
(see ``shared/notes/blocking-a-cell.md``):

* 7.x: a shell-channel thread forwards messages to the main thread over an inproc PAIR socket,
  ``kernel.shell_channel_thread.manager._shell_channel_to_main``; the main thread runs them in
  ``kernel.shell_main`` behind ``kernel._main_asyncio_lock`` (held by the running cell).
* 6.x: ``kernel.shell_stream`` is the shell ROUTER stream on the main thread; messages are
  queued with ``kernel.schedule_dispatch(kernel.dispatch_shell, frames)``.

Where these are missing, :func:`wait_for` raises
:class:`~cheq_jupyter.errors.FrontendUnavailableError` rather than hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from .errors import FrontendUnavailableError

__all__ = ["Waker", "check_kernel", "comm_messages", "wait_for"]

log = logging.getLogger(__name__)

_COMM_TYPES = frozenset({"comm_open", "comm_msg", "comm_close"})
#: Longest single block in ``poll``.  Interrupts break out of ``poll`` at once on POSIX; on
#: Windows ``interrupt_main`` only takes effect when Python code runs, so wake up now and then.
_MAX_BLOCK = 1.0
#: Re-announce "busy" on every tick for this many seconds, then every this many ticks.
_REANNOUNCE_EARLY = 5.0
_REANNOUNCE_EVERY = 30
#: Strong references to the tasks that hand deferred messages back (asyncio keeps weak ones).
_REQUEUED: set[asyncio.Future[Any]] = set()
#: Widget (comm) messages run in place by :func:`wait_for` in this process so far.
_COMM_MESSAGES = 0


def comm_messages() -> int:
    """How many widget messages reached a waiting cell in this session (0: maybe none can)."""
    return _COMM_MESSAGES


class Waker:
    """Wakes a :func:`wait_for` early from any thread: ``waker.wake()``.

    It is an inproc zmq PAIR socket pair registered in the wait's poller, so it works wherever
    zmq does (Windows included).  Create it on the waiting thread; ``wake`` is thread-safe.
    """

    def __init__(self) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        address = f"inproc://cheq-waker-{uuid.uuid4().hex}"
        self._lock = threading.Lock()
        self._closed = False
        self.socket: zmq.Socket[bytes] = ctx.socket(zmq.PAIR)
        self.socket.linger = 0
        self.socket.bind(address)
        self._sender: zmq.Socket[bytes] = ctx.socket(zmq.PAIR)
        self._sender.linger = 0
        self._sender.connect(address)

    def wake(self) -> None:
        """Make the current (or next) :func:`wait_for` using this waker check its condition."""
        with self._lock:
            if self._closed:
                return
            with contextlib.suppress(zmq.Again):  # plenty of wake-ups are queued already
                self._sender.send(b"", zmq.NOBLOCK)

    def drain(self) -> None:
        """Discard pending wake-ups (called by the waiting thread)."""
        while True:
            try:
                self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._sender.close()
            self.socket.close()

    def __enter__(self) -> Waker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class _Backend:
    """How to reach the shell messages of the main thread on one ipykernel generation."""

    kernel: Any
    socket: zmq.Socket[bytes]  # where shell messages for the main thread arrive
    reply_stream: Any  # what shell handlers get as ``stream``
    stream: Any  # the ZMQStream that normally reads ``socket``
    requeue: Callable[[list[Any]], None]
    version: str


_UNKNOWN = (
    "cheq_jupyter cannot wait for the approval card on this kernel ({detail}); use "
    "ipykernel 6.29 or 7.x, or %%mistral_agent --no-wait, or pass another approver (a Policy, "
    "Cheqpoint or the console approver)."
)
#: The oldest ipykernel the blocking wait is tested on (scripts/kernel-matrix); older kernels
#: use no-wait mode (their internals may look alike, but nobody checked them).
OLDEST_TESTED = (6, 29)


def ipykernel_version() -> str:
    """The running ipykernel's version ('' when it cannot be told)."""
    version = getattr(sys.modules.get("ipykernel"), "__version__", None)
    if version is None:
        try:
            from importlib.metadata import version as dist_version

            version = dist_version("ipykernel")
        except Exception:
            version = ""
    return str(version)


def _version(text: str) -> tuple[int, ...]:
    match = re.match(r"(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else ()


def _kernel() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        get_ipython = None
    shell = get_ipython() if get_ipython is not None else None
    if shell is None:
        raise FrontendUnavailableError(
            "The approval card needs a Jupyter kernel, but no IPython is running; run this "
            "in a notebook, or pass another approver (a Policy, Cheqpoint or the console "
            "approver)."
        )
    kernel = getattr(shell, "kernel", None)
    if kernel is None:
        raise FrontendUnavailableError(
            "The approval card needs a Jupyter kernel with a widget frontend, but this is a "
            "terminal IPython; run this in a notebook, or pass another approver (a Policy, "
            "Cheqpoint or the console approver)."
        )
    return kernel


def _backend() -> _Backend:
    kernel = _kernel()
    version = ipykernel_version()
    if _version(version) < OLDEST_TESTED:
        raise FrontendUnavailableError(_UNKNOWN.format(
            detail=f"ipykernel {version or '(unknown version)'} is older than 6.29, the oldest "
                   "it is tested on"
        ))
    if threading.current_thread() is not threading.main_thread():
        raise FrontendUnavailableError(
            "The approval card can only wait on the kernel's main thread, but it was called "
            f"from thread {threading.current_thread().name!r}; call it from the cell itself."
        )
    for name in ("session", "shell_handlers", "set_parent", "get_parent", "_publish_status"):
        if not hasattr(kernel, name):
            raise FrontendUnavailableError(_UNKNOWN.format(detail=f"no kernel.{name}"))
    handlers = kernel.shell_handlers
    if not isinstance(handlers, dict) or not all(t in handlers for t in _COMM_TYPES):
        raise FrontendUnavailableError(_UNKNOWN.format(detail="no comm handlers"))
    parent_ident = getattr(kernel, "_parent_ident", None)
    try:
        parent_ident["shell"]  # type: ignore[index]
    except Exception:
        raise FrontendUnavailableError(
            _UNKNOWN.format(detail="no kernel._parent_ident['shell']")
        ) from None

    channel_thread = getattr(kernel, "shell_channel_thread", None)
    if channel_thread is not None:  # ipykernel 7.x
        try:
            manager = channel_thread.manager
            pair = manager._shell_channel_to_main
            socket, stream = pair.to_socket, pair.to_stream
            reply_stream = manager.get_subshell_to_shell_channel_socket(None)
            lock = kernel._main_asyncio_lock
            shell_main = kernel.shell_main
            loop = kernel.io_loop.asyncio_loop
        except Exception as exc:
            raise FrontendUnavailableError(
                _UNKNOWN.format(detail=f"ipykernel 7 internals changed: {exc!r}")
            ) from None
        if not isinstance(socket, zmq.Socket) or stream is None or not lock.locked():
            raise FrontendUnavailableError(
                _UNKNOWN.format(detail="the main shell socket is not where ipykernel 7 keeps it")
            )

        def requeue7(frames: list[Any]) -> None:
            # Queued behind the running cell on the main asyncio lock, in this order.
            task = asyncio.ensure_future(shell_main(None, frames), loop=loop)
            _REQUEUED.add(task)
            task.add_done_callback(_REQUEUED.discard)

        return _Backend(kernel, socket, reply_stream, stream, requeue7, "7")

    stream = getattr(kernel, "shell_stream", None)
    schedule = getattr(kernel, "schedule_dispatch", None)
    dispatch = getattr(kernel, "dispatch_shell", None)
    if (
        stream is not None
        and callable(schedule)
        and callable(dispatch)
        and hasattr(kernel, "msg_queue")
        and isinstance(getattr(stream, "socket", None), zmq.Socket)
    ):  # ipykernel 6.x

        def requeue6(frames: list[Any]) -> None:
            schedule(dispatch, frames)

        return _Backend(kernel, stream.socket, stream, stream, requeue6, "6")

    raise FrontendUnavailableError(
        _UNKNOWN.format(detail=f"unrecognised kernel {type(kernel).__module__}")
    )


def check_kernel() -> None:
    """Raise :class:`FrontendUnavailableError` unless :func:`wait_for` can work here."""
    _backend()


def _run_comm(backend: _Backend, idents: list[bytes], msg: dict[str, Any]) -> None:
    """Run one comm message now, as the kernel would, then give the cell its parent back."""
    global _COMM_MESSAGES
    _COMM_MESSAGES += 1
    kernel = backend.kernel
    cell_ident = kernel._parent_ident["shell"]
    cell_parent = kernel.get_parent("shell")
    kernel.set_parent(idents, msg, channel="shell")
    # busy/idle with the comm message as parent: ipywidgets in the browser throttles its
    # state updates until it sees "idle" for the previous one.
    kernel._publish_status("busy", "shell")
    try:
        result = kernel.shell_handlers[msg["header"]["msg_type"]](backend.reply_stream, idents, msg)
        if asyncio.iscoroutine(result):  # no comm handler is async today; never leave one
            result.close()
            log.warning("Ignored an asynchronous comm handler while waiting for approval.")
    finally:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        kernel._publish_status("idle", "shell")
        kernel.set_parent(cell_ident, cell_parent, channel="shell")
        # The cell is still running: tell the frontend the kernel is busy again.
        kernel._publish_status("busy", "shell")


def _handle(backend: _Backend, frames: list[Any], deferred: list[list[Any]]) -> None:
    session = backend.kernel.session
    try:
        idents, rest = session.feed_identities(frames, copy=False)
        # Peek: content=False checks the signature without remembering it, so the kernel can
        # still deserialize a deferred message later (it refuses signatures seen before).
        msg_type = session.deserialize(rest, content=False, copy=False)["header"]["msg_type"]
        if msg_type not in _COMM_TYPES:
            deferred.append(frames)
            return
        msg = session.deserialize(rest, content=True, copy=False)
    except Exception:
        # Not ours to judge (e.g. ipykernel's internal "stop aborting" frame): the kernel's
        # own dispatcher handles or reports it after the wait.
        deferred.append(frames)
        return
    _run_comm(backend, idents, msg)


def _drain(backend: _Backend, deferred: list[list[Any]], *, run_comms: bool) -> None:
    while True:
        try:
            frames = backend.socket.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        if run_comms:
            _handle(backend, frames, deferred)
        else:
            deferred.append(frames)


def _hand_back(backend: _Backend, deferred: list[list[Any]]) -> None:
    for frames in deferred:
        backend.requeue(frames)
    deferred.clear()
    try:
        # Re-arm the stream: it missed the socket's edge-triggered events while we read.
        backend.stream.flush(zmq.POLLIN)
    except Exception:
        log.debug("Could not flush the shell stream after waiting.", exc_info=True)


def wait_for(
    done: Callable[[], bool],
    *,
    timeout: float | None,
    waker: Waker | None = None,
    on_tick: Callable[[float | None], None] | None = None,
    tick: float = 1.0,
) -> bool:
    """Block the running cell until ``done()`` is true; return ``False`` on timeout.

    While waiting, widget (comm) messages run in place, so button callbacks fire; output they
    print goes to their own message, not to the cell.  Other shell messages wait and run after
    the cell, in order.  ``done`` is checked after every batch of messages and every wake-up of
    ``waker``; ``on_tick(seconds_left)`` runs every ``tick`` seconds (``None`` left when there
    is no timeout).  ``KeyboardInterrupt`` (a kernel interrupt) propagates.

    Raises :class:`~cheq_jupyter.errors.FrontendUnavailableError` outside a Jupyter kernel,
    off the main thread, or on a kernel whose internals are not recognised.
    """
    if tick <= 0:
        raise ValueError(f"wait_for tick is {tick!r}; give a number of seconds above 0.")
    backend = _backend()
    poller = zmq.Poller()
    poller.register(backend.socket, zmq.POLLIN)
    if waker is not None:
        poller.register(waker.socket, zmq.POLLIN)
    start = time.monotonic()
    deadline = None if timeout is None else start + max(0.0, timeout)
    next_tick = start + tick
    deferred: list[list[Any]] = []
    ticks = 0
    try:
        while True:
            if done():
                return True
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            if now >= next_tick:
                if on_tick is not None:
                    on_tick(None if deadline is None else max(0.0, deadline - now))
                # Frontends may reset their busy indicator meanwhile (JupyterLab does when it
                # opens a widget subshell, just after the first widgets show): the cell is
                # still running, so say so again; often at first, then now and then.
                ticks += 1
                if now - start < _REANNOUNCE_EARLY or ticks % _REANNOUNCE_EVERY == 0:
                    backend.kernel._publish_status("busy", "shell")
                while next_tick <= now:
                    next_tick += tick
            until = min(now + _MAX_BLOCK, next_tick)
            if deadline is not None:
                until = min(until, deadline)
            events = dict(poller.poll(max(0, int((until - now) * 1000 + 0.999))))
            if waker is not None and waker.socket in events:
                waker.drain()
            if backend.socket in events:
                _drain(backend, deferred, run_comms=True)
    finally:
        # Whatever came in since the last poll waits for the kernel too, in order.
        _drain(backend, deferred, run_comms=False)
        _hand_back(backend, deferred)
