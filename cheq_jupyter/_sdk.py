"""The one place that knows the ``mistralai`` SDK: client construction and response shapes.

Works with mistralai 1.x (``from mistralai import Mistral``) and 2.x/3.x
(``from mistralai.client import Mistral``).  The SDK is imported on first use only, so
``%load_ext cheq_jupyter`` stays cheap.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import os
from typing import Any

from ._safe_text import register_secret
from .errors import ConfigurationError, ModelError

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT",
    "chat_complete",
    "chat_complete_async",
    "check_request_timeout",
    "client_from_env",
    "message_to_dict",
    "mistral_class",
    "model_error",
    "request_options",
    "retry_config",
    "to_model_error",
]

API_KEY_VAR = "MISTRAL_API_KEY"
SERVER_URL_VAR = "MISTRAL_SERVER_URL"

MISSING_KEY = (
    f"{API_KEY_VAR} is not set; set it to your Mistral API key (in a notebook: "
    f"%env {API_KEY_VAR}=...), or run offline on the built-in fake model with "
    "cheq_jupyter.testing.use_offline_model_unless_key() (it sets "
    f"{SERVER_URL_VAR} and a fake key)."
)


def mistral_class() -> Any:
    """The SDK's ``Mistral`` client class, whichever major version is installed."""
    return _sdk_attr(("mistralai.client", "mistralai"), "Mistral")


def _sdk_attr(modules: tuple[str, ...], name: str) -> Any:
    """``name`` from the first of ``modules`` that has it (SDK 3.x path first, then 1.x)."""
    for module in modules:
        try:
            value = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if value is not None:
            return value
    raise ConfigurationError(
        "The mistralai package is not installed or too old; install it with "
        "`pip install mistralai`."
    )


#: Seconds a model request may take before it fails (slow reasoning models need minutes).
DEFAULT_REQUEST_TIMEOUT = 300.0


def retry_config(max_elapsed_ms: int = 30_000) -> Any:
    """A retry policy for 429 and 5xx answers (the SDK retries only when given one).

    Connection errors and time-outs are not retried: a refused connection fails at once with
    a clear message instead of after half a minute of silent retries, and a request that
    timed out is not silently sent again.
    """
    utils = ("mistralai.client.utils", "mistralai.utils")
    retry, backoff = _sdk_attr(utils, "RetryConfig"), _sdk_attr(utils, "BackoffStrategy")
    return retry(
        "backoff", backoff(500, 8_000, 1.8, max_elapsed_ms), retry_connection_errors=False
    )


def client_from_env() -> Any:
    """A client from ``MISTRAL_API_KEY`` and, when set, ``MISTRAL_SERVER_URL``."""
    key = os.environ.get(API_KEY_VAR, "").strip()
    if not key:
        raise ConfigurationError(MISSING_KEY)
    if any(c.isspace() or ord(c) < 32 for c in key):
        raise ConfigurationError(
            f"{API_KEY_VAR} has a space or a line break inside it, so it cannot be sent in a "
            "header; set it to the key alone (copy it again from the console)."
        )
    server_url = os.environ.get(SERVER_URL_VAR, "").strip() or None
    return mistral_class()(api_key=key, server_url=server_url, retry_config=retry_config())


def _dump(obj: Any) -> Any:
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, dict):
        return {k: _dump(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_dump(v) for v in obj]
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        return _dump(dump())
    return obj


def message_to_dict(response: Any) -> tuple[dict[str, Any], str | None]:
    """The assistant message of a chat completion as a plain dict, and its finish reason.

    The dict is ready to send back in ``messages``: ``content`` is a string and every tool
    call's ``arguments`` stays as the model sent it (a JSON string or an object).
    """
    choices = getattr(response, "choices", None) or []
    if not choices:
        raise ModelError("The model returned no choices; try the request again.")
    choice = choices[0]
    message = _dump(getattr(choice, "message", None)) or {}
    content = message.get("content")
    if isinstance(content, list):  # content chunks: keep the text parts
        content = "".join(
            str(c.get("text", "")) for c in content if isinstance(c, dict)
        )
    calls = []
    for raw in message.get("tool_calls") or []:
        function = raw.get("function") or {}
        calls.append(
            {
                "id": raw.get("id") or "",
                "type": "function",
                "function": {
                    "name": function.get("name") or "",
                    "arguments": function.get("arguments", ""),
                },
            }
        )
    out: dict[str, Any] = {"role": "assistant", "content": content or ""}
    if calls:
        out["tool_calls"] = calls
    finish = getattr(choice, "finish_reason", None)
    return out, (str(getattr(finish, "value", finish)) if finish is not None else None)


def check_request_timeout(value: Any, name: str = "request_timeout") -> float:
    """``value`` as seconds, or a :class:`ConfigurationError` if it is not a positive number."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds <= 0:
        raise ConfigurationError(
            f"{name} is {value!r}; give a positive number of seconds (default "
            f"{DEFAULT_REQUEST_TIMEOUT:g})."
        )
    return seconds


def request_options(client: Any, timeout: float) -> dict[str, Any]:
    """Keyword arguments every SDK chat call gets: the time limit (both SDK majors)."""
    security = getattr(getattr(client, "sdk_configuration", None), "security", None)
    register_secret(getattr(security, "api_key", None) if security is not None else None)
    return {"timeout_ms": max(1, int(timeout * 1000))}


def chat_complete(client: Any, kwargs: dict[str, Any], timeout: float) -> Any:
    """One chat completion, bounded by ``timeout`` seconds; errors become :class:`ModelError`."""
    try:
        return client.chat.complete(**kwargs, **request_options(client, timeout))
    except Exception as exc:
        raise model_error(exc, timeout) from None


async def chat_complete_async(client: Any, kwargs: dict[str, Any], timeout: float) -> Any:
    """The async twin of :func:`chat_complete` (the whole request is bounded, too)."""
    try:
        return await asyncio.wait_for(
            client.chat.complete_async(**kwargs, **request_options(client, timeout)),
            timeout + 1.0,  # the SDK's own limit fires first; this bounds a trickling answer
        )
    except Exception as exc:
        raise model_error(exc, timeout) from None


def _type_names(exc: BaseException) -> set[str]:
    return {t.__name__ for t in type(exc).__mro__}


def model_error(exc: Exception, timeout: float | None = None) -> ModelError:
    """Any failure of a model request as a :class:`ModelError` that says what to do."""
    if getattr(exc, "status_code", None) is not None:
        return to_model_error(exc)
    names = _type_names(exc)
    limit = f"{timeout:g} s" if timeout is not None else "the time limit"
    if "ConnectTimeout" in names:
        return ModelError(
            f"Could not connect to the Mistral API within {limit}; check your network or "
            f"{SERVER_URL_VAR}."
        )
    if names & {"TimeoutException", "TimeoutError"}:
        return ModelError(
            f"The Mistral API did not answer within {limit} (request timed out); run the cell "
            "again, or give slow models more time with request_timeout= (run_agent), "
            "--request-timeout SECONDS (%%mistral_agent) or "
            "%config MistralAgentMagics.request_timeout."
        )
    if "ConnectError" in names:
        return ModelError(
            f"Could not connect to the Mistral API ({_first_line(exc)}); check that "
            f"{SERVER_URL_VAR} (if set) points at a running server, and your network."
        )
    return ModelError(
        f"Could not reach the Mistral API ({type(exc).__name__}: {_first_line(exc)}); check "
        f"your network or {SERVER_URL_VAR}."
    )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
def _field_errors(detail: Any) -> str:
    """A 422 ``detail`` list as ``field: problem; ...`` (its JSON when it has another shape)."""
    if isinstance(detail, list) and detail and all(isinstance(e, dict) for e in detail):
        return "; ".join(
            f"{'.'.join(str(p) for p in (e.get('loc') or [])[1:]) or 'request'}: {e.get('msg')}"
            for e in detail
        )
    return json.dumps(detail)


def to_model_error(exc: Exception) -> ModelError:
    """Turn an SDK HTTP error into a :class:`ModelError` with the server's message."""
    status = getattr(exc, "status_code", None)
    body: Any = getattr(exc, "body", None)
    raw = getattr(exc, "raw_response", None)
    if body is None and raw is not None:
        body = getattr(raw, "text", None)
    message = ""
    try:
        parsed = json.loads(body) if isinstance(body, str) else body
    except ValueError:
        parsed = body
    if isinstance(parsed, dict):
        detail = parsed.get("message", parsed.get("detail"))
        message = detail if isinstance(detail, str) else _field_errors(detail)
    if not message:
        message = (str(exc).splitlines() or [type(exc).__name__])[0]
    hint = {
        401: f"check {API_KEY_VAR}",
        429: "wait a moment and run the cell again",
    }.get(status or 0, "see the message above")
    return ModelError(
        f"The Mistral API answered {status}: {message} ({hint}).",
        status_code=status,
        body=parsed,
    )
