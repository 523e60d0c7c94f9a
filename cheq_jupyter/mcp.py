"""Tools from MCP servers, behind the same approval gate as Python tools.

::

    from cheq_jupyter import mcp, run_agent
    git = mcp.stdio("mcp-server-git", "--repository", "/data/repo")
    result = run_agent("What changed?", tools=[git, my_function], approver=card)

:func:`stdio` starts a server as a subprocess, :func:`http` connects to a Streamable HTTP
server; both return an :class:`McpToolset`, accepted wherever tools are (all its tools), and
``git["git_status"]`` is one of them.  A server starts on first use (the first run or
``.tools``) and is reused until :meth:`McpToolset.close` or the end of the Python process.

Every call is an :class:`~cheq_jupyter.approval.ApprovalRequest` like any other: arguments
are checked against the tool's ``inputSchema`` before anyone is asked (and edits the same
way), the request names the server (``origin``) and carries the tool's annotations, which
are the *server's claims* and never approve anything by themselves (see
``Policy(approve_read_only=True)``).  A server that dies or does not answer within
``timeout`` seconds gives that call an error result; the next use starts it again.

The official ``mcp`` SDK is asyncio-based.  Its sessions live on one background thread with
its own event loop (one per process), so calls work the same from a blocking cell, from
``run_agent`` inside a notebook's running loop and from ``arun_agent``, without
``nest_asyncio``.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import binascii
import concurrent.futures
import contextlib
import html
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO, TypeVar

from pydantic import BaseModel, ConfigDict

from .errors import (
    ConfigurationError,
    McpServerError,
    McpToolError,
    ToolArgumentsError,
)
from .tools import Tool

__all__ = ["McpResult", "McpTool", "McpToolset", "http", "stdio", "toolsets"]

#: Seconds a server may take to start, and each call to answer.
DEFAULT_TIMEOUT = 60.0
#: Characters of a tool result the model reads; the rest is cut with a note.
MODEL_RESULT_LIMIT = 20_000
_DESCRIPTION_LIMIT = 4_000
_SCHEMA_LIMIT = 100_000  # characters of one tool's inputSchema as JSON
_SCHEMA_DEPTH = 32
_ARGUMENT_DEPTH = 64
_MAX_TOOLS = 512
_STDERR_TAIL = 2_000
_IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
_IMAGE_LIMIT = 5_000_000  # bytes of one image shown in the cell
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_HINTS = ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint")
T = TypeVar("T")


def _require_sdk() -> None:
    try:
        import mcp  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            "MCP tools need the official MCP SDK; install it with "
            "`pip install 'cheq-jupyter[mcp]'` and restart the kernel."
        ) from None


# -- one event loop thread per process --------------------------------------------------------


class _Runtime:
    """A daemon thread running the event loop that owns every MCP session of this process."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.connections: set[_Connection] = set()
        self.thread = threading.Thread(target=self._run, name="cheq-mcp", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("An MCP call cannot wait for itself on the MCP thread.")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the MCP loop and wait for it; an interrupt cancels it."""
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise McpServerError(
                f"The MCP thread did not answer within {timeout:g} s; restart the kernel."
            ) from None
        except BaseException:
            future.cancel()
            raise


_runtime_lock = threading.Lock()
_runtime_instance: _Runtime | None = None


def _runtime() -> _Runtime:
    global _runtime_instance
    with _runtime_lock:
        if _runtime_instance is None or _runtime_instance.pid != os.getpid():
            _runtime_instance = _Runtime()  # first use, or a forked child
        return _runtime_instance


@atexit.register
def _stop_all() -> None:
    """Stop every server this process started (the kernel's exit runs this too)."""
    runtime = _runtime_instance
    if runtime is None or runtime.pid != os.getpid() or not runtime.connections:
        return

    async def stop() -> None:
        await asyncio.gather(*(c.close() for c in list(runtime.connections)),
                             return_exceptions=True)

    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(stop(), runtime.loop).result(15)


# -- one connection to one server (lives on the MCP loop) -------------------------------------

#: errlog -> an async context manager yielding the transport's ``(read, write, ...)`` streams.
Opener = Callable[[TextIO], Any]
_background: set[asyncio.Task[None]] = set()


class _Connection:
    """One running session.  Everything here runs on the MCP loop."""

    def __init__(self, opener: Opener, label: str, hint: str) -> None:
        self.pid = os.getpid()  # a forked child must start its own server
        self.opener = opener
        self.label = label
        self.hint = hint
        self.session: Any = None
        self.stop = asyncio.Event()
        self.ready: asyncio.Future[tuple[dict[str, Any], list[dict[str, Any]]]] = (
            asyncio.get_running_loop().create_future()
        )
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        # The server writes its stderr here (deleted with this object); shown when it fails.
        self.errlog: TextIO = tempfile.TemporaryFile(  # noqa: SIM115
            "w+", encoding="utf-8", errors="replace"
        )

    def stderr_tail(self) -> str:
        try:
            self.errlog.flush()
            self.errlog.seek(0, os.SEEK_END)
            size = self.errlog.tell()
            self.errlog.seek(max(0, size - _STDERR_TAIL * 4))
            text = self.errlog.read()
        except (OSError, ValueError):
            return ""
        return text[-_STDERR_TAIL:].strip()

    def _with_stderr(self, message: str) -> str:
        tail = self.stderr_tail()
        return f"{message}\nThe server's stderr ended with:\n{tail}" if tail else message

    async def start(self, timeout: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        self.task = asyncio.ensure_future(self._main())
        waiting: set[asyncio.Future[Any]] = {self.ready, self.task}
        done, _ = await asyncio.wait(waiting, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if self.ready in done and not self.ready.exception():
            started: tuple[dict[str, Any], list[dict[str, Any]]] = self.ready.result()
            return started
        if self.ready.done() and self.ready.exception():
            error: BaseException | None = self.ready.exception()
        elif self.task in done:
            error = self.task.exception() or RuntimeError("the server closed the connection")
        else:
            error = None
        await self.close()  # the server has exited: its stderr is complete
        if error is None:
            message = (f"The MCP server {self.label} did not finish starting within "
                       f"{timeout:g} s; check the command, or pass a larger timeout=.")
        else:
            message = (f"The MCP server {self.label} failed to start ({_describe(error)}); "
                       f"{self.hint}.")
        raise McpServerError(self._with_stderr(message))

    async def _main(self) -> None:
        from mcp import ClientSession

        try:
            async with contextlib.AsyncExitStack() as stack:
                streams = await stack.enter_async_context(self.opener(self.errlog))
                session = await stack.enter_async_context(ClientSession(streams[0], streams[1]))
                init = await session.initialize()
                tools = await _list_tools(session)
                self.session = session
                info = init.model_dump(by_alias=True, mode="json", exclude_none=True)
                if not self.ready.done():
                    self.ready.set_result((info, tools))
                await self.stop.wait()
        except BaseException as exc:
            if not self.ready.done():
                self.ready.set_exception(exc if isinstance(exc, Exception) else
                                         RuntimeError("the connection was cancelled"))
                self.ready.exception()  # read here: start() may have stopped waiting
            if not isinstance(exc, Exception):
                raise
        finally:
            self.session = None
            self.closed = True

    async def call(self, name: str, arguments: dict[str, Any], timeout: float) -> dict[str, Any]:
        """The raw ``CallToolResult`` (wire names); McpServerError when the server fails."""
        if not self.usable or self.task is None or self.task.done():
            raise McpServerError(f"The MCP server {self.label} is not running.")
        call = asyncio.ensure_future(self.session.call_tool(name, arguments))
        try:
            done, _ = await asyncio.wait({call, self.task}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the caller gave up (e.g. an interrupted cell)
            call.cancel()
            raise
        if call not in done:
            call.cancel()
            lost = self.task in done
            self.close_soon()
            if lost:
                raise McpServerError(
                    f"The MCP server {self.label} stopped during the call; it did not answer."
                )
            raise McpServerError(
                f"The MCP server {self.label} did not answer within {timeout:g} s, so the call "
                "was abandoned (it may or may not have taken effect); the server is restarted "
                "on next use."
            )
        try:
            result = call.result()
        except Exception as exc:
            if _is_server_error_response(exc):
                raise McpToolError(f"The server refused the call: {_describe(exc)}") from None
            self.close_soon()
            raise McpServerError(
                f"The MCP server {self.label} failed during the call ({_describe(exc)}); it is "
                "restarted on next use."
            ) from None
        dumped: dict[str, Any] = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        return dumped

    async def alive(self, timeout: float) -> bool:
        """Whether the server still answers a ping (it may have died between cells)."""
        if not self.usable:
            return False
        try:
            await asyncio.wait_for(self.session.send_ping(), timeout)
        except (asyncio.TimeoutError, Exception):
            self.close_soon()
            return False
        return True

    @property
    def usable(self) -> bool:
        return (not self.closed and not self.stop.is_set() and self.session is not None
                and self.pid == os.getpid())

    def close_soon(self) -> None:
        """Stop the server in the background (on the MCP loop); the next use starts anew."""
        self.stop.set()
        task = asyncio.ensure_future(self.close())
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def close(self) -> None:
        """Stop the session and the server: the SDK closes stdin, then terminates, then kills."""
        self.stop.set()
        task = self.task
        if task is not None and not task.done():
            started = self.ready.done() and not self.ready.exception()
            try:
                if not started:  # stuck starting: nothing to wind down gracefully
                    raise asyncio.TimeoutError
                await asyncio.wait_for(asyncio.shield(task), 8)
            except (asyncio.TimeoutError, Exception):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(task, 8)
        self.closed = True
        with contextlib.suppress(Exception):
            _runtime().connections.discard(self)


async def _list_tools(session: Any) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(64):  # a server that pages for ever does not hang the start
        if cursor is None:
            page = await session.list_tools()
        else:
            from mcp import types

            page = await session.list_tools(params=types.PaginatedRequestParams(cursor=cursor))
        tools += [t.model_dump(by_alias=True, mode="json", exclude_none=True) for t in page.tools]
        cursor = getattr(page, "nextCursor", None) or getattr(page, "next_cursor", None)
        if not cursor or len(tools) > _MAX_TOOLS:
            break
    return tools


def _describe(exc: BaseException) -> str:
    group = getattr(exc, "exceptions", None)
    if isinstance(group, (list, tuple)) and group:
        return "; ".join(_describe(e) for e in group[:3])
    text = str(exc) or type(exc).__name__
    if hasattr(exc, "error") and hasattr(exc.error, "message"):
        text = str(exc.error.message)
    return f"{type(exc).__name__}: {text[:500]}"


def _is_server_error_response(exc: BaseException) -> bool:
    """A JSON-RPC error the server answered (unknown tool, bad params), not a lost connection."""
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    return isinstance(code, int) and code != -32000 and type(exc).__name__ in ("MCPError",
                                                                             "McpError")


# -- results ----------------------------------------------------------------------------------


class McpResult(str):
    """A tool result: the text the model reads, plus what the cell shows.

    ``images`` are ``(mime type, base64 data)`` pairs shown in the cell (the model gets a
    placeholder), ``links`` the resource links, ``structured`` the ``structuredContent``,
    ``full_text`` the text before it was cut for the model (``truncated``).
    """

    images: list[tuple[str, str]]
    links: list[dict[str, Any]]
    structured: Any
    full_text: str
    truncated: bool

    def media_html(self) -> str:
        """Images (and the full text when the model only got part of it), escaped HTML."""
        parts = []
        for mime, data in self.images:
            parts.append(f"<img src='data:{mime};base64,{data}' style='max-width:100%'>")
        if self.truncated:
            parts.append(
                f"<details><summary>Full result ({len(self.full_text)} characters; the model "
                "read the first part)</summary><pre style='white-space:pre-wrap'>"
                f"{html.escape(self.full_text[:1_000_000])}</pre></details>"
            )
        return "".join(parts)


def _result(raw: Mapping[str, Any], limit: int) -> McpResult:
    texts: list[str] = []
    images: list[tuple[str, str]] = []
    links: list[dict[str, Any]] = []
    for block in raw.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "image":
            mime, data = str(block.get("mimeType", "")), str(block.get("data", ""))
            shown = _image_ok(mime, data)
            if shown:
                images.append((mime, data))
            texts.append(f"[image ({_clip(mime, 40)}), "
                         f"{'shown to the user in the notebook' if shown else 'not shown'}]")
        elif kind == "audio":
            texts.append(f"[audio ({_clip(str(block.get('mimeType', '')), 40)}), not played]")
        elif kind == "resource_link":
            links.append(dict(block))
            texts.append(f"[resource link: {_clip(str(block.get('name', '')), 200)} "
                         f"<{_clip(str(block.get('uri', '')), 500)}>]")
        elif kind == "resource":
            resource = block.get("resource") or {}
            uri = _clip(str(resource.get("uri", "")), 500)
            if "text" in resource:
                texts.append(f"[resource <{uri}>]\n{resource.get('text', '')}")
            else:
                texts.append(f"[binary resource <{uri}>, not shown]")
        else:
            texts.append(f"[{_clip(str(kind), 40)} content, not shown]")
    structured = raw.get("structuredContent")
    if not texts and structured is not None:
        texts.append(json.dumps(structured, ensure_ascii=False))
    full = "\n".join(texts) if texts else "(the tool returned no content)"
    text, truncated = full, len(full) > limit
    if truncated:
        text = (f"{full[:limit]}\n[Truncated: the result has {len(full)} characters; only the "
                f"first {limit} are shown here.]")
    result = McpResult(text)
    result.images, result.links, result.structured = images, links, structured
    result.full_text, result.truncated = full, truncated
    return result


def _image_ok(mime: str, data: str) -> bool:
    if mime not in _IMAGE_TYPES or len(data) > _IMAGE_LIMIT * 4 // 3 + 4:
        return False
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- tools ------------------------------------------------------------------------------------


class _AnyArguments(BaseModel):
    model_config = ConfigDict(extra="allow")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is too large for a number")
    return value


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if level > _ARGUMENT_DEPTH + 1:
            break
        if isinstance(item, dict):
            stack += [(v, level + 1) for v in item.values()]
        elif isinstance(item, list):
            stack += [(v, level + 1) for v in item]
    return deepest


@dataclass(frozen=True)
class McpTool(Tool):
    """One tool of an MCP server, as the model sees it (``name``) and the server knows it."""

    server_name: str = ""
    toolset: McpToolset | None = field(default=None, compare=False, repr=False)
    validator: Any = field(default=None, compare=False, repr=False)

    def _problem(self, message: str, errors: list[str] | None = None) -> ToolArgumentsError:
        return ToolArgumentsError(message, tool=self.name, errors=errors or [message])

    def parse_arguments(self, raw: str | Mapping[str, Any] | None) -> dict[str, Any]:
        """Decode the model's arguments strictly (no NaN/Infinity, an object) and check them."""
        try:
            if raw is None or raw == "":
                data: Any = {}
            elif isinstance(raw, str):
                data = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
            else:
                data = json.loads(json.dumps(dict(raw), allow_nan=False),
                                  parse_float=_finite_float)
        except (ValueError, TypeError, RecursionError) as exc:
            raise self._problem(
                f"The arguments for {self.name} are not valid JSON ({_clip(str(exc), 200)}); "
                "send a JSON object matching the tool's parameters."
            ) from None
        if not isinstance(data, dict):
            raise self._problem(
                f"The arguments for {self.name} must be a JSON object, not "
                f"{type(data).__name__}; send an object matching the tool's parameters."
            )
        self.validate(data)
        return data

    def check(self, arguments: Any) -> list[str]:
        """Problems of ``arguments`` against the tool's ``inputSchema`` (``[]`` when valid)."""
        if not isinstance(arguments, dict) or not all(isinstance(k, str) for k in arguments):
            return [f"the arguments must be a JSON object, not {type(arguments).__name__}"]
        if _depth(arguments) > _ARGUMENT_DEPTH:
            return [f"the arguments are nested more than {_ARGUMENT_DEPTH} levels deep"]
        try:
            json.dumps(arguments, allow_nan=False)
            errors = sorted(self.validator.iter_errors(arguments), key=lambda e: list(e.path))
            problems = []
            for error in errors[:20]:
                where = ".".join(str(p) for p in error.path) or "arguments"
                problems.append(f"{where}: {_clip(error.message, 300)}")
            return problems
        except (ValueError, TypeError):
            return ["the arguments contain a value that is not JSON (NaN or Infinity?)"]
        except RecursionError:
            return ["the tool's schema could not be checked (it is too deeply recursive)"]
        except Exception as exc:  # a broken schema must not let anything through
            return [f"the tool's schema could not be checked ({type(exc).__name__})"]

    def validate(self, arguments: Mapping[str, Any]) -> BaseModel:
        problems = self.check(dict(arguments) if isinstance(arguments, Mapping) else arguments)
        if problems:
            raise self._problem(
                f"The arguments for {self.name} do not match its parameters: "
                f"{'; '.join(problems)}.",
                problems,
            )
        return _AnyArguments.model_validate(dict(arguments))

    def with_defaults(self, arguments: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
        """``arguments`` with the schema's top-level defaults filled in, and their names."""
        full = dict(arguments)
        filled = []
        props = self.parameters.get("properties")
        for key, spec in (props.items() if isinstance(props, dict) else ()):
            if key not in full and isinstance(spec, dict) and "default" in spec:
                full[key] = json.loads(json.dumps(spec["default"]))
                filled.append(key)
        return full, tuple(filled)

    async def acall(self, **arguments: Any) -> McpResult:
        """The call for ``arun_agent``: the notebook's event loop keeps running meanwhile."""
        assert self.toolset is not None
        return await self.toolset.acall(self.server_name, arguments)

    def call_arguments(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """The exact arguments sent to the server (checked again)."""
        self.validate(arguments)
        copied: dict[str, Any] = json.loads(json.dumps(dict(arguments)))
        return copied


def _schema_depth(schema: Any) -> int:
    return _depth(schema)


# A group with a quantifier inside and one after it, e.g. ``(a+)+`` or ``(\w*)*``: patterns
# that can take exponential time on a crafted string (Python's re cannot be interrupted).
_NESTED_QUANTIFIER = re.compile(r"\((?:[^()\\]|\\.)*[+*}](?:[^()\\]|\\.)*\)[+*{]")


def _risky_patterns(schema: Any) -> bool:
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            patterns = [node.get("pattern")]
            if isinstance(node.get("patternProperties"), dict):
                patterns += list(node["patternProperties"])
            if any(isinstance(p, str) and (len(p) > 1000 or _NESTED_QUANTIFIER.search(p))
                   for p in patterns):
                return True
            stack += list(node.values())
        elif isinstance(node, list):
            stack += node
    return False


def _annotations(raw: Mapping[str, Any]) -> dict[str, Any]:
    given = raw.get("annotations")
    if not isinstance(given, dict):
        return {}
    kept: dict[str, Any] = {k: given[k] for k in _HINTS if isinstance(given.get(k), bool)}
    if isinstance(given.get("title"), str):
        kept["title"] = _clip(given["title"], 100)
    return kept


def _build_tools(
    listed: list[dict[str, Any]], toolset: McpToolset
) -> tuple[list[McpTool], list[str]]:
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for
    from referencing import Registry

    tools: list[McpTool] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for raw in listed[:_MAX_TOOLS]:
        server_name = str(raw.get("name", ""))
        shown = _clip(repr(server_name), 80)
        name = toolset.prefix + re.sub(r"[^a-zA-Z0-9_-]", "_", server_name)
        schema = raw.get("inputSchema")
        reason = None
        if not server_name or not _NAME.match(name):
            reason = "its name cannot be a Mistral tool name (1-64 letters, digits, _ or -)"
        elif name in seen:
            reason = f"another tool of this server is already named {name!r}"
        elif not isinstance(schema, dict) or schema.get("type", "object") != "object":
            reason = "its inputSchema is not a JSON object schema"
        elif len(json.dumps(schema)) > _SCHEMA_LIMIT or _schema_depth(schema) > _SCHEMA_DEPTH:
            reason = "its inputSchema is too large or too deeply nested"
        elif _risky_patterns(schema):
            reason = "its inputSchema has a pattern that could take exponential time to check"
        validator = None
        if reason is None:
            try:
                cls = validator_for(schema)
                cls.check_schema(schema)
                validator = cls(schema, registry=Registry())
            except (SchemaError, RecursionError, Exception) as exc:
                reason = f"its inputSchema is not a valid JSON schema ({type(exc).__name__})"
        if reason is not None:
            skipped.append(f"{shown}: {reason}")
            continue
        seen.add(name)
        assert isinstance(schema, dict)
        parameters = dict(schema)
        parameters.setdefault("type", "object")
        parameters.setdefault("properties", {})
        description = str(raw.get("description") or raw.get("title") or server_name)
        tools.append(McpTool(
            name=name,
            description=_clip(description.strip(), _DESCRIPTION_LIMIT),
            function=_caller(toolset, server_name),
            arguments_model=_AnyArguments,
            parameters=parameters,
            origin=f"MCP server {toolset.name}",
            annotations=_annotations(raw),
            server_name=server_name,
            toolset=toolset,
            validator=validator,
        ))
    if len(listed) > _MAX_TOOLS:
        skipped.append(f"{len(listed) - _MAX_TOOLS} more tools: a server may offer {_MAX_TOOLS}")
    return tools, skipped


def _caller(toolset: McpToolset, server_name: str) -> Callable[..., McpResult]:
    def call(**arguments: Any) -> McpResult:
        return toolset.call(server_name, arguments)

    call.__name__ = re.sub(r"\W", "_", server_name) or "mcp_tool"
    return call


# -- toolsets ---------------------------------------------------------------------------------

_toolsets: weakref.WeakSet[McpToolset] = weakref.WeakSet()


class McpToolset:
    """The tools of one MCP server; iterate it, index it by tool name, ``close()`` it.

    Use :func:`stdio` or :func:`http` to make one.  Accepted wherever tools are:
    ``run_agent(..., tools=[toolset, my_function])``, ``%%mistral_agent -t toolset``.
    """

    def __init__(self, *, opener: Opener, label: str, transport: str, prefix: str,
                 timeout: float) -> None:
        if timeout <= 0:
            raise ConfigurationError(f"timeout is {timeout}; give a positive number of seconds.")
        self._opener = opener
        self._hint = ("check the URL and that the server is running" if transport == "http"
                      else "check the command and its arguments")
        self.name = label
        self.transport = transport
        self.prefix = prefix
        self.timeout = float(timeout)
        self.result_limit = MODEL_RESULT_LIMIT
        self.server_info: dict[str, Any] = {}
        self.skipped: list[str] = []
        self._tools: list[McpTool] | None = None
        self._connection: _Connection | None = None
        self._lock = threading.Lock()
        _toolsets.add(self)

    # -- state --------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """Whether the server is running now."""
        conn = self._connection
        return conn is not None and conn.usable

    def _start(self) -> _Connection:
        with self._lock:
            conn = self._connection
            if conn is not None and conn.usable:
                return conn
            runtime = _runtime()

            async def start() -> tuple[_Connection, dict[str, Any], list[dict[str, Any]]]:
                new = _Connection(self._opener, self.name, self._hint)
                runtime.connections.add(new)
                info, listed = await new.start(self.timeout)
                return new, info, listed

            conn, info, listed = runtime.run(start(), self.timeout + 30)
            self._connection = conn
            server = info.get("serverInfo") or {}
            self.server_info = {k: _clip(str(server.get(k, "")), 100)
                                for k in ("name", "version")}
            self._tools, self.skipped = _build_tools(listed, self)
            return conn

    @property
    def tools(self) -> list[McpTool]:
        """The server's tools (starts the server when it is not running)."""
        self._start()
        return list(self._tools or [])

    def cheq_tools(self) -> list[Tool]:
        """What ``as_tools`` takes from a toolset at the start of a run: all its tools.

        A server that died since the last run (it no longer answers a ping) is started again.
        """
        conn = self._connection
        if conn is not None and conn.usable:
            _runtime().run(conn.alive(min(self.timeout, 10.0)), self.timeout + 30)
        return list(self.tools)

    def __iter__(self) -> Iterator[McpTool]:
        return iter(self.tools)

    def __len__(self) -> int:
        return len(self.tools)

    def __getitem__(self, name: str) -> McpTool:
        for t in self.tools:
            if name in (t.name, t.server_name):
                return t
        known = ", ".join(t.name for t in self.tools) or "none"
        raise KeyError(f"The MCP server {self.name} has no tool {name!r}; its tools: {known}.")

    def call(self, server_name: str, arguments: dict[str, Any]) -> McpResult:
        """Call a tool by its server name (no approval here: the agent loop asks first)."""
        conn = self._start()
        raw = _runtime().run(conn.call(server_name, arguments, self.timeout), self.timeout + 30)
        return self._finish(raw)

    async def acall(self, server_name: str, arguments: dict[str, Any]) -> McpResult:
        """:meth:`call` for a running event loop: awaits the MCP thread without blocking it."""
        conn = self._connection
        if conn is None or not conn.usable:
            conn = await asyncio.get_running_loop().run_in_executor(None, self._start)
        future = _runtime().submit(conn.call(server_name, arguments, self.timeout))
        raw: dict[str, Any] = await asyncio.wrap_future(future)
        return self._finish(raw)

    def _finish(self, raw: Mapping[str, Any]) -> McpResult:
        result = _result(raw, self.result_limit)
        if raw.get("isError"):
            raise McpToolError(result.full_text[: self.result_limit] or
                               "the tool reported an error without a message")
        return result

    def close(self) -> None:
        """Stop the server (a later use starts it again)."""
        conn, self._connection = self._connection, None
        if conn is not None and conn.pid == os.getpid() and _runtime_instance is not None:
            with contextlib.suppress(Exception):
                _runtime().run(conn.close(), 30)

    def __enter__(self) -> McpToolset:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        conn = getattr(self, "_connection", None)
        runtime = _runtime_instance
        if conn is not None and runtime is not None and runtime.pid == os.getpid():
            with contextlib.suppress(Exception):
                runtime.loop.call_soon_threadsafe(conn.close_soon)

    def describe(self) -> str:
        """One line per tool, for ``%mistral_agent``."""
        state = "connected" if self.connected else "not started (starts on first use)"
        lines = [f"{self.name} [{self.transport}, {state}]"]
        if self.connected:
            for t in self._tools or []:
                claims = ", ".join(k.removesuffix("Hint") for k, v in t.annotations.items()
                                   if v is True and k in _HINTS)
                params = ", ".join(t.parameters.get("properties", {}))
                extra = f"  (server claims: {claims})" if claims else ""
                lines.append(f"    {t.name}({params}){extra}")
            lines += [f"    skipped {s}" for s in self.skipped]
        return "\n".join(lines)

    def __repr__(self) -> str:
        state = f"{len(self._tools or [])} tools" if self.connected else "not started"
        return f"<McpToolset {self.name!r} ({self.transport}, {state})>"


def toolsets() -> list[McpToolset]:
    """Every toolset of this process that has not been garbage-collected."""
    return sorted(_toolsets, key=lambda t: t.name)


def _prefix(name: str | None) -> str:
    if name is None:
        return ""
    if not re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", name):
        raise ConfigurationError(
            f"name={name!r} cannot prefix tool names; use 1-40 letters, digits, '_' or '-'."
        )
    return f"{name}_"


_LAUNCHERS = {"npx", "uvx", "uv", "node", "python", "python3", "pipx", "bunx", "deno", "docker"}


def _command_label(command: str, args: list[str]) -> str:
    """``mcp-server-git`` for ``mcp-server-git --repository x``; the package for launchers."""
    base = os.path.basename(command)
    if base in _LAUNCHERS:
        if "-m" in args[:-1]:
            return args[args.index("-m") + 1]
        if "-c" in args:
            return f"{base} -c"
        given = [a for a in args if not a.startswith("-") and a != "run"]
        if given:
            return os.path.basename(given[0])
    return base


def stdio(
    command: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    name: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> McpToolset:
    """An MCP server started as a subprocess speaking stdio (started on first use).

    ``env`` is added to a minimal environment (``PATH``, ``HOME``...; the SDK's default, so
    secrets in the kernel's environment do not leak to the server).  ``name`` prefixes every
    tool name (``name="fs2"`` makes ``fs2_read_file``), which resolves clashes.  ``timeout``
    bounds the start and each call, in seconds.
    """
    _require_sdk()
    if not isinstance(command, str) or not command:
        raise ConfigurationError("command is empty; pass the server's executable.")
    from mcp import StdioServerParameters
    from mcp.client.stdio import stdio_client

    # A kernel's own environment is often not on PATH: look next to its Python too.
    found = None if os.sep in command else (
        shutil.which(command) or shutil.which(command, path=os.path.dirname(sys.executable)))
    params = StdioServerParameters(command=found or command, args=[str(a) for a in args],
                                   env=dict(env) if env else None,
                                   cwd=os.fspath(cwd) if cwd is not None else None)

    def opener(errlog: TextIO) -> Any:
        return stdio_client(params, errlog=errlog)

    label = name or _command_label(command, [str(a) for a in args])
    return McpToolset(opener=opener, label=_clip(label, 60), transport="stdio",
                      prefix=_prefix(name), timeout=timeout)


def http(
    url: str,
    headers: Mapping[str, str] | None = None,
    name: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> McpToolset:
    """An MCP server over Streamable HTTP at ``url`` (connected on first use).

    ``headers`` (e.g. an ``Authorization``) go with every request and are never shown.
    """
    _require_sdk()
    if not isinstance(url, str) or not re.match(r"^https?://", url):
        raise ConfigurationError(f"url={url!r} is not an http(s) URL; pass the server's endpoint.")
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    given = dict(headers or {})

    @contextlib.asynccontextmanager
    async def opener(errlog: TextIO) -> Any:
        async with create_mcp_http_client(headers=given) as client, \
                streamable_http_client(url, http_client=client) as streams:
            yield streams

    host = re.sub(r"^https?://", "", url).split("?")[0]
    return McpToolset(opener=opener, label=_clip(name or host, 60), transport="http",
                      prefix=_prefix(name), timeout=timeout)
