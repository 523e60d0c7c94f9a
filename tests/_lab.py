"""JupyterLab on loopback and Debian's Chromium driven by Playwright, for ``test_browser.py``.

* :class:`LabServer` starts ``jupyter lab`` on ``127.0.0.1`` (a free port, a random token;
  its own Jupyter config/data/runtime, IPython and Lab settings/workspace directories, so
  nothing of the user's setup leaks in; no news or update prompts; every notebook cell
  attached to the DOM), waits for ``/api/status`` and always shuts it down with its kernels.
* :func:`launch_chromium` starts ``/usr/bin/chromium`` headless with a fresh profile
  (Playwright cannot download its own browser here), optionally with the kernel's messages
  arriving late (``lag_ms``), like a distant JupyterHub.
* :class:`LabNotebook` is what a user does with an open notebook: select a cell, press
  Shift+Enter, wait for the execution count, read outputs, take screenshots.
* :func:`clipped_labels` and :func:`overflowing` find labels cut short and parts sticking out.

Every wait is a Playwright auto-wait (``locator.wait_for``, ``expect``) with an explicit
timeout; the only poll is ``/api/status`` while the server starts.  :meth:`LabNotebook.stage`
turns any failure into an ``AssertionError`` naming the stage, the screenshot taken at that
moment, the browser console and the tail of the server log.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("CHEQ_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Variables that would make the notebook leave the offline demo model or the card approver.
SCRUBBED_ENV = ("MISTRAL_API_KEY", "MISTRAL_SERVER_URL", "CHEQ_JUPYTER_APPROVER",
                "CHEQ_JUPYTER_REPLAY_LOG", "CQ_API_KEY", "CQ_BASE_URL",
                # A test run from VS Code's terminal must not make the kernel choose no-wait.
                "VSCODE_PID", "VSCODE_CWD", "VSCODE_IPC_HOOK_CLI", "COLAB_RELEASE_TAG")

_SETTINGS = {
    # No "Would you like to receive official Jupyter news?" toast, no update check.
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false", "checkForUpdates": False,
    },
    # Every cell attached to the DOM, so a cell far below is a plain element.
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LabServer:
    """``jupyter lab`` serving ``root_dir`` on loopback; use as a context manager."""

    def __init__(
        self,
        root_dir: Path,
        *,
        home: Path,
        start_timeout: float = 60.0,
        kernel_python: str | None = None,
        app: str = "lab",
        settings: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """``kernel_python``: run notebooks on this interpreter's ipykernel (default: the
        server's own Python), e.g. an environment with ipykernel 6.29 or 7.0.  ``app`` is
        ``"lab"`` (JupyterLab) or ``"notebook"`` (Jupyter Notebook 7); ``settings`` adds user
        settings by plugin file, e.g. ``{"@jupyterlab/apputils-extension/kernels-settings"
        ".jupyterlab-settings": {"commsOverSubshells": "disabled"}}``."""
        if app not in ("lab", "notebook"):
            raise ValueError(f"app is {app!r}; use 'lab' or 'notebook'.")
        self.app = app
        self.settings = {**_SETTINGS, **(settings or {})}
        self.root_dir = root_dir
        self.home = home
        self.kernel_python = kernel_python
        self.start_timeout = start_timeout
        self.port = _free_port()
        self.token = secrets.token_hex(24)
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "jupyterlab.log"
        self.proc: subprocess.Popen[bytes] | None = None

    # -- diagnostics -------------------------------------------------------------------------
    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        # The token is a throw-away loopback secret, but keep it out of reports anyway.
        return "\n".join(text.splitlines()[-lines:]).replace(self.token, "<token>")

    # -- REST ----------------------------------------------------------------------------------
    def api(self, method: str, path: str, timeout: float = 5.0) -> Any:
        request = urllib.request.Request(
            self.base + path, method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def url(self, path: str) -> str:
        return f"{self.base}{path}?token={self.token}"

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> LabServer:
        settings = self.home / "lab-settings"
        for name, value in self.settings.items():
            target = settings / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(value))
        if self.kernel_python:
            spec = self.home / "jupyter-data" / "kernels" / "python3" / "kernel.json"
            spec.parent.mkdir(parents=True, exist_ok=True)
            spec.write_text(json.dumps({
                "argv": [self.kernel_python, "-m", "ipykernel_launcher", "-f",
                         "{connection_file}"],
                "display_name": "Python 3 (ipykernel)",
                "language": "python",
            }))
        env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
        # Nothing from the user's own Jupyter/IPython setup (a password, another "python3"
        # kernelspec, startup files) and nothing written to their home.
        env.update(
            JUPYTERLAB_SETTINGS_DIR=str(settings),
            JUPYTERLAB_WORKSPACES_DIR=str(self.home / "lab-workspaces"),
            JUPYTER_CONFIG_DIR=str(self.home / "jupyter-config"),
            JUPYTER_DATA_DIR=str(self.home / "jupyter-data"),
            JUPYTER_RUNTIME_DIR=str(self.home / "jupyter-runtime"),
            IPYTHONDIR=str(self.home / "ipython"),
            PYTHONUNBUFFERED="1",
        )
        cmd = [
            sys.executable, "-m", "jupyterlab" if self.app == "lab" else "notebook",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root_dir}",
        ]
        if self.app == "lab":
            cmd += [
                "--LabApp.news_url=",
                "--LabApp.check_for_updates_class="
                "jupyterlab.handlers.announcements.NeverCheckForUpdate",
            ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root
            cmd.append("--allow-root")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=self.root_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"JupyterLab exited with code {self.proc.returncode} before serving "
                    f"{self.base}; its log ends with:\n{self.log_tail()}"
                )
            try:
                status = self.api("GET", "/api/status", timeout=2.0)
            except (OSError, urllib.error.URLError, ValueError) as exc:
                last = exc
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(0.1)  # a bounded pause that also notices an early exit
                continue
            if isinstance(status, dict) and "started" in status:
                return
        raise RuntimeError(
            f"JupyterLab did not answer {self.base}/api/status within {self.start_timeout:g} s "
            f"(last error: {last!r}); its log ends with:\n{self.log_tail()}"
        )

    def _children(self) -> list[int]:
        """Pids of the server's direct children (the kernels; they run in their own session)."""
        if self.proc is None:
            return []
        try:
            import psutil
        except ImportError:
            return []
        try:
            return [c.pid for c in psutil.Process(self.proc.pid).children()]
        except psutil.Error:
            return []

    def stop(self) -> None:
        """Shut the server down with its kernels; kill what does not stop in time."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        kernels = self._children()
        with contextlib.suppress(Exception):
            self.api("POST", "/api/shutdown", timeout=5.0)  # stops every kernel, then itself
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        for pid in kernels:  # only if the shutdown left one behind
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> LabServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


#: Delays every WebSocket message from the server to the page by the same time (so their
#: order is kept), like a distant JupyterHub: replies to the browser arrive late, while what
#: the browser sends still goes at once.  Chrome's network emulation does not slow WebSockets.
_LAG_JS = """
(() => {
  const lag = %d;
  const Native = window.WebSocket;
  const later = (f, self) => f && ((event) => setTimeout(() => f.call(self, event), lag));
  window.WebSocket = class extends Native {
    set onmessage(f) { super.onmessage = later(f, this); }
    get onmessage() { return super.onmessage; }
    addEventListener(type, f, options) {
      super.addEventListener(type, type === "message" ? later(f, this) : f, options);
    }
  };
})();
"""


@contextlib.contextmanager
def launch_chromium(
    profile: Path, *, viewport: tuple[int, int] = (1280, 1000), lag_ms: int = 0
) -> Iterator[Any]:
    """A fresh headless Chromium context on ``/usr/bin/chromium``; yields its first page.

    ``lag_ms`` delays what the server sends over WebSockets (the kernel's messages)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": viewport[0], "height": viewport[1]},
        )
        try:
            if lag_ms:
                context.add_init_script(_LAG_JS % int(lag_ms))
            page = context.pages[0] if context.pages else context.new_page()
            yield page
        finally:
            context.close()


class LabNotebook:
    """A notebook open in JupyterLab, driven as a user would (click a cell, Shift+Enter)."""

    def __init__(self, page: Any, server: LabServer, shots: Path) -> None:
        self.page = page
        self.server = server
        self.shots = shots
        self.shots.mkdir(parents=True, exist_ok=True)
        self._shot = 0
        self.console: list[str] = []
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))

    # -- locators ------------------------------------------------------------------------------
    @property
    def panel(self) -> Any:
        return self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")

    def cell(self, index: int) -> Any:
        return self.panel.locator(".jp-Notebook .jp-WindowedPanel-viewport > .jp-Cell").nth(index)

    def outputs(self, index: int) -> Any:
        return self.cell(index).locator(".jp-OutputArea-output")

    def prompt(self, index: int) -> Any:
        return self.cell(index).locator(".jp-InputArea-prompt")

    # -- screenshots and failures ------------------------------------------------------------
    def screenshot(self, name: str) -> Path:
        self._shot += 1
        path = self.shots / f"{self._shot:02d}-{name}.png"
        try:
            self.page.screenshot(path=str(path), full_page=False, timeout=10_000)
        except Exception as exc:  # a broken page must not hide the real failure
            return Path(f"(screenshot failed: {exc})")
        return path

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Run one step; on failure, fail with its screenshot and the server log tail."""
        try:
            yield
        except Exception as exc:
            shot = self.screenshot(f"FAILED-{re.sub(r'[^a-z0-9]+', '-', name.lower())}")
            console = "\n".join(self.console[-15:]) or "(none)"
            raise AssertionError(
                f"Browser test failed while {name}: {type(exc).__name__}: {exc}\n"
                f"Screenshot: {shot}\n"
                f"Browser console (last lines):\n{console}\n"
                f"JupyterLab log (last lines):\n{self.server.log_tail()}"
            ) from exc
        self.screenshot(re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"))

    # -- actions -------------------------------------------------------------------------------
    def open(self, path: str, *, timeout: float = 60.0) -> None:
        ms = timeout * 1000
        prefix = "/lab/tree" if self.server.app == "lab" else "/notebooks"
        self.page.goto(self.server.url(f"{prefix}/{path}"), timeout=ms)
        self.cell(0).wait_for(state="visible", timeout=ms)
        self.wait_kernel_idle(timeout)

    def scroll_to_top_of(self, index: int) -> None:
        """Scroll the notebook so that cell ``index`` starts at the top of the view."""
        self.cell(index).evaluate("cell => cell.scrollIntoView({block: 'start'})")

    def wait_kernel_idle(self, timeout: float = 60.0) -> None:
        """Wait until the notebook's kernel is connected and idle.

        The toolbar's execution indicator says ``idle`` before any kernel exists, so the
        status bar must also name a kernel: ``Python 3 (ipykernel) | Idle``, not
        ``No Kernel | ...``."""
        ms = timeout * 1000
        if self.server.app == "notebook":  # Notebook 7: the kernel's name in the toolbar
            self.panel.locator(".jp-Toolbar-kernelName").get_by_text(
                re.compile(r"^(?!No Kernel\b).+$")
            ).wait_for(state="visible", timeout=ms)
        else:
            self.page.locator("#jp-main-statusbar").get_by_text(
                re.compile(r"^(?!No Kernel\b).+ \| Idle$")
            ).wait_for(state="visible", timeout=ms)
        self.panel.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(
            state="attached", timeout=ms
        )

    def busy_indicator(self) -> Any:
        """What shows the kernel busy: JupyterLab's status bar, Notebook 7's toolbar."""
        if self.server.app == "notebook":
            return self.panel.locator(".jp-Notebook-ExecutionIndicator[data-status='busy']")
        return self.page.locator("#jp-main-statusbar").get_by_text(re.compile(r"\| Busy$"))

    def kernel_connection_file(self) -> Path:
        """The connection file of the (only) running kernel, to talk to it beside the page."""
        (kernel,) = self.server.api("GET", "/api/kernels")
        return self.server.home / "jupyter-runtime" / f"kernel-{kernel['id']}.json"

    def run(self, index: int) -> None:
        """Select cell ``index`` (a click on its prompt) and press Shift+Enter."""
        from playwright.sync_api import expect

        cell = self.cell(index)
        cell.scroll_into_view_if_needed(timeout=10_000)
        self.prompt(index).click(timeout=10_000)
        expect(cell).to_have_class(re.compile(r"\bjp-mod-active\b"), timeout=10_000)
        # Shift+Enter = notebook:run-cell-and-select-next, in command or edit mode alike.
        self.page.keyboard.press("Shift+Enter")
        # The prompt turns to [*] (queued or running) or straight to [n] (done already).
        expect(self.prompt(index)).to_have_text(re.compile(r"\[(\*|\d+)\]"), timeout=10_000)

    def wait_done(self, index: int, *, timeout: float = 60.0) -> int:
        """Wait until cell ``index`` shows its execution count and the kernel is idle again
        (the count comes with the shell reply, the last outputs before the idle status)."""
        from playwright.sync_api import expect

        expect(self.prompt(index)).to_have_text(re.compile(r"\[\d+\]"), timeout=timeout * 1000)
        self.wait_kernel_idle(timeout)
        return int(re.sub(r"\D", "", self.prompt(index).inner_text()))

    def outputs_of_type(self, index: int, mime: str) -> Any:
        """Cell ``index``'s outputs rendered from ``mime`` (stdout is
        ``application/vnd.jupyter.stdout``)."""
        return self.cell(index).locator(f".jp-OutputArea-output[data-mime-type='{mime}']")

    def output_texts(self, index: int) -> list[str]:
        """The text of each output of cell ``index`` (for failure messages)."""
        return [str(t) for t in self.outputs(index).all_inner_texts()]

    def errors(self, index: int) -> list[str]:
        """Tracebacks shown in a cell (error outputs are rendered as stderr in JupyterLab)."""
        found = self.cell(index).locator(
            ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
        )
        return [str(t) for t in found.all_inner_texts() if "Traceback" in t or "Error" in t]


_CLIPPED_JS = """
(root) => Array.from(root.querySelectorAll('button, .widget-checkbox label'))
  .filter((e) => e.offsetParent !== null && e.clientWidth > 0)
  .filter((e) => {
    const range = document.createRange();
    range.selectNodeContents(e);
    const style = getComputedStyle(e);
    const room = e.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    return range.getBoundingClientRect().width > room + 2;  // text wider than its box
  })
  .map((e) => e.textContent.trim())
"""


def clipped_labels(container: Any) -> list[str]:
    """Labels of the visible buttons and checkboxes in ``container`` cut short by their box
    (CSS ellipsis: "Approve edited" shown as "Approve ...")."""
    return [str(t) for t in container.evaluate(_CLIPPED_JS)]


_OVERFLOW_JS = """
(root) => {
  const edge = root.getBoundingClientRect().right;
  return Array.from(root.querySelectorAll('*'))
    .filter((e) => e.offsetParent !== null && e.getBoundingClientRect().right > edge + 1)
    .map((e) => `${e.tagName.toLowerCase()}.${Array.from(e.classList).join('.')}`);
}
"""


def overflowing(container: Any) -> list[str]:
    """Visible elements of ``container`` that stick out past its right edge."""
    return [str(t) for t in container.evaluate(_OVERFLOW_JS)]


def fresh_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
