"""Text from the model (or a server, or a tool) made safe to show: one helper for every surface.

* :func:`redact` removes API keys: the values of ``MISTRAL_API_KEY`` and ``CQ_API_KEY`` (read
  when called), keys handed over in code (:func:`register_secret`), and each of their pieces
  when a key is split by whitespace (so a key with a newline in it cannot leak half by half).
* :func:`safe_text` also neutralises what a terminal or a browser would act on instead of
  showing: C0/C1 control characters (ESC sequences, BEL, OSC 52 clipboard writes, carriage
  returns that overwrite a line) and bidirectional overrides (U+202A-202E, U+2066-2069,
  U+200E/F, U+061C), each replaced by a visible escape such as ``\\x1b`` or ``\\u202e``.
  Newlines and tabs stay.  Use it for every ``text/plain`` surface and before ``html.escape``.
* :func:`escape` is ``html.escape(safe_text(text))``, for every HTML surface.
* :func:`safe_markdown` turns model-written Markdown into Markdown that renders no raw HTML,
  no ``javascript:``/``vbscript:``/``data:`` link and no image that loads by itself (an image
  becomes a link to click), while code spans and top-level fenced code still show ``<`` as ``<``.
"""

from __future__ import annotations

import bisect
import html
import logging
import os
import re
import threading
from typing import Any

__all__ = [
    "RedactingFilter",
    "escape",
    "json_text",
    "redact",
    "register_secret",
    "safe_markdown",
    "safe_text",
]

#: Environment variables whose values are secrets.
SECRET_VARS = ("MISTRAL_API_KEY", "CQ_API_KEY")
#: A key (or a piece of one) shorter than this is not searched for: it would blank out
#: ordinary words, and a few characters of a key give nothing away.
MIN_SECRET = 6
REDACTED = "[redacted]"

_registered: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Also redact ``value`` (a key given in code rather than in the environment)."""
    if value and len(value.strip()) >= MIN_SECRET:
        with _lock:
            _registered.add(value)


def _secrets() -> list[str]:
    values = [os.environ.get(name, "") for name in SECRET_VARS]
    with _lock:
        values += _registered
    found: set[str] = set()
    for value in values:
        for piece in (value, value.strip(), *value.split()):
            if len(piece) >= MIN_SECRET:
                found.add(piece)
    return sorted(found, key=len, reverse=True)  # whole keys before their pieces


def redact(text: str) -> str:
    """``text`` with every known API key (and each whitespace-split piece of one) removed."""
    if not text:
        return text
    for secret in _secrets():
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact_value(value: Any) -> Any:
    """:func:`redact` applied to every string inside lists, tuples and dicts (keys too)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_value(k): redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v) for v in value)
    return value


_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
# Patterns here are strings compiled on first use (``re`` caches them), so importing the
# package (``%load_ext``) does not pay for compiling them.
# C0 controls except tab and newline, DEL, C1 controls, bidi controls.
_UNSAFE = f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}]"


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(text: Any) -> str:
    """``str(text)`` without keys, control sequences or bidi overrides (shown as escapes)."""
    out = redact(str(text))
    out = out.replace("\r\n", "\n")
    return re.compile(_UNSAFE).sub(_visible, out)


def json_text(text: str) -> str:
    """JSON text (from ``json.dumps``) with unsafe characters written as ``\\uXXXX`` escapes.

    It still parses to the same value, but an editor or a terminal shows the escape instead of
    acting on the character (unsafe characters can only occur inside JSON strings).
    """
    return re.compile(_UNSAFE).sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def escape(text: Any, quote: bool = True) -> str:
    """``html.escape`` of :func:`safe_text` (same signature as ``html.escape``)."""
    return html.escape(safe_text(text), quote=quote)


# -- Markdown ---------------------------------------------------------------------------------

# A fence opens only at column 0: there it cannot sit inside a list item, a block quote or a
# paragraph, so every CommonMark/GFM renderer agrees it is code.  (Indented fences are shown
# escaped like the prose around them: safe, merely less pretty.)
_FENCE_OPEN = r"(`{3,}|~{3,})(.*)"
_ASCII_PUNCT = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
# The scheme of a dangerous link, wherever a destination could start: `javascript:`, also
# written `JavaScript\:` (a Markdown escape).  Entities were already made inert by escaping `&`.
_BAD_SCHEME = r"(?i)(?<![a-z0-9+.\-])(javascript|vbscript|data)(?=\\?:)"
# `![` starts an image (unless the `!` is backslash-escaped): it would load by itself.
_IMAGE = r"(?<!\\)((?:\\\\)*)!(?=\[)"
# Code whose characters mean nothing to Markdown or HTML stays a Markdown code span as written.
_INERT = r"[^<>&!\[\]():\\`|]*"
_ENTITY_LIKE = r"&amp;(?=[#A-Za-z])"
_BACKTICKS = r"`+"
_BLANK_LINE = r"\n[ \t]*\n"


def _entities(text: str) -> str:
    """Every ASCII punctuation character as a numeric entity: inert in Markdown and HTML."""
    return "".join(f"&#{ord(c)};" if c in _ASCII_PUNCT else c for c in text)


def _prose(text: str) -> str:
    """Markdown prose: raw HTML escaped, images made links, dangerous schemes broken, and each
    code span shown as written.  Linear in the text (no rescans on hostile backtick runs)."""
    runs = [(m.start(), m.end()) for m in re.compile(_BACKTICKS).finditer(text)]
    starts_by_length: dict[int, list[int]] = {}
    for begin, stop in runs:
        starts_by_length.setdefault(stop - begin, []).append(begin)
    blanks = [m.start() for m in re.compile(_BLANK_LINE).finditer(text)]
    out: list[str] = []
    pos = 0
    for begin, stop in runs:
        if begin < pos:
            continue
        first = begin
        while first > pos and text[first - 1] == "\\":
            first -= 1
        opener = begin + (begin - first) % 2  # a backslash-escaped backtick is not part of it
        length = stop - opener
        if length == 0:
            continue
        close = _next_run(starts_by_length.get(length, []), stop, blanks)
        if close is None:
            continue
        out.append(_plain_prose(text[pos:opener]))
        content = text[stop:close]
        out.append(text[opener:close + length] if re.compile(_INERT).fullmatch(content)
                   else _code_span(content))
        pos = close + length
    out.append(_plain_prose(text[pos:]))
    return "".join(out)


def _next_run(starts: list[int], after: int, blanks: list[int]) -> int | None:
    """The first run start in ``starts`` at or after ``after``, before the next blank line."""
    k = bisect.bisect_left(starts, after)
    if k == len(starts):
        return None
    b = bisect.bisect_left(blanks, after)
    if b < len(blanks) and blanks[b] < starts[k]:
        return None
    return starts[k]


def _code_span(content: str) -> str:
    """A code span as our own ``<code>`` element whose content cannot form any markup.

    Whatever a renderer makes of the surrounding text, nothing in here is HTML or Markdown;
    ``x < y`` shows as ``x < y``.
    """
    inner = content.replace("\n", " ")
    if inner.strip(" ") and inner.startswith(" ") and inner.endswith(" "):
        inner = inner[1:-1]
    return f"<code>{_entities(inner) or '&#32;'}</code>"


def _plain_prose(text: str) -> str:
    text = text.replace("&", "&amp;")
    # `&#106;` must stay text even in a renderer that decodes link destinations twice
    # (mistune does): a zero-width space after the `&` means no entity can start there.
    text = re.compile(_ENTITY_LIKE).sub("&amp;\u200b", text)
    text = text.replace("<", "&lt;").replace(">", "&gt;")
    text = re.compile(_IMAGE).sub(lambda m: f"{m.group(1)}&#33;", text)
    # A zero-width space after the scheme name: the browser no longer sees a scheme, the
    # reader sees the same word.
    return re.compile(_BAD_SCHEME).sub(lambda m: m.group(1) + "\u200b", text)


def safe_markdown(text: str) -> str:
    """Model-written Markdown made safe to render (see the module docstring)."""
    lines = safe_text(text).split("\n")
    out: list[str] = []
    prose: list[str] = []
    i = 0
    while i < len(lines):
        opened = re.compile(_FENCE_OPEN).fullmatch(lines[i])
        if opened is None or (opened.group(1)[0] == "`" and "`" in opened.group(2)):
            prose.append(lines[i])
            i += 1
            continue
        if prose:
            out.append(_prose("\n".join(prose)))
            prose = []
        fence = opened.group(1)
        # Close at the first line ANY renderer could take as the closing fence (up to three
        # spaces, then three of the fence's characters), so no line after it is left raw.
        closing = re.compile(rf" {{0,3}}{re.escape(fence[0]) * 3}")
        end = i + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        if end == len(lines):
            out.append("\n".join(lines[i:]))
            break
        out.append("\n".join([*lines[i:end], fence]))
        i = end + 1
    else:
        if prose:
            out.append(_prose("\n".join(prose)))
    return "\n".join(out)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts keys from every record of the loggers it is put on."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed call; logging reports it itself, later
            return True
        cleaned = safe_text(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
