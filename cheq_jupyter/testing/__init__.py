"""Test helpers shipped with cheq-jupyter: loopback fakes that the REAL SDKs talk to.

``FakeCheqpoint`` serves the Cheqpoint approval API the ``cheqpoint`` SDK calls.
``FakeMistral`` speaks Mistral's chat-completions wire format and enforces its rules;
scripts are built from ``text``, ``tool_call``, ``tool_calls``/``call``, ``json_reply`` and
``http_error`` (``raw_stream`` for hand-made streams). ``demo_responder`` is a small
deterministic "model" for offline demos, and
``use_offline_model_unless_key()`` points notebooks at it when no ``MISTRAL_API_KEY`` is set.
``KernelFrontend`` starts a real Jupyter kernel and drives its widgets (approval cards) the
way a notebook frontend does.
"""

from __future__ import annotations

from ._fake_cheqpoint import FakeCheqpoint
from ._fake_mistral import FakeMistral, FakeMistralScriptError
from ._kernel import KernelFrontend
from ._turns import (
    Turn,
    call,
    http_error,
    json_reply,
    raw_stream,
    text,
    tool_call,
    tool_calls,
)
from .scenarios import demo_responder, use_offline_model_unless_key

__all__ = [
    "FakeCheqpoint",
    "FakeMistral",
    "FakeMistralScriptError",
    "KernelFrontend",
    "Turn",
    "call",
    "demo_responder",
    "http_error",
    "json_reply",
    "raw_stream",
    "text",
    "tool_call",
    "tool_calls",
    "use_offline_model_unless_key",
]
