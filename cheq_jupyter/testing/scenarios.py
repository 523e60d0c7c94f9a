"""The offline demo model: a small deterministic "brain" behind FakeMistral.

Notebooks and the demo run without a Mistral key by pointing the SDK at a
:class:`~cheq_jupyter.testing.FakeMistral` whose responder is :func:`demo_responder`
(:func:`use_offline_model_unless_key` does that in one line). It reads the request the way a
model would and answers in Mistral's wire format:

* **tools offered** - it works through a plan. Tools whose names, descriptions or parameters
  match the prompt are relevant; read tools (``get_``, ``lookup_``, ``find_`` ...) come before
  action tools (``change_``, ``send_`` ...), and an action tool is used only when the prompt
  asks for that action. Arguments are filled from the prompt and from earlier tool results
  (e-mail addresses, ids such as ``acct_123``, amounts, dates, values named after the
  parameter), else from the schema's default or first enum value. Two targets in the prompt
  ("look up a@x.org and b@y.org") give two parallel calls. An action tool whose arguments
  cannot be filled makes it ask for the missing value instead of guessing.
* **tool results** - it continues the plan. A result that starts with ``Not approved`` or
  says ``rejected`` stops it: it answers that it did not do it, quoting the reviewer's note.
  A result that starts with ``Error`` stops it too. When the plan is done it summarises
  what each call returned.
* **json_schema response_format** - JSON valid against the schema, filled from the
  conversation (lists of nested objects when the text has several items).
* **nothing of the above** - a short, honest text saying it is the offline demo model.

Everything is deterministic; only tool-call ids are random (made by the server).
"""

from __future__ import annotations

import ast
import json
import os
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ._fake_mistral import FakeMistral
from ._turns import Turn, call, json_reply, text, tool_calls

__all__ = ["demo_responder", "use_offline_model_unless_key"]

JSONDict = dict[str, Any]

_MAX_TOOL_TURNS = 6
_MAX_PARALLEL = 5
_OFFLINE_NOTE = "(offline demo model - set MISTRAL_API_KEY to use a real Mistral model)"

# --------------------------------------------------------------------------------------------
# Words.
# --------------------------------------------------------------------------------------------

_READ_VERBS = {
    "get", "lookup", "look", "find", "search", "fetch", "list", "check", "show", "read",
    "query", "retrieve", "verify", "describe", "count", "view", "load", "inspect",
    "status", "diff", "log",
}  # fmt: skip
# Leading words that name a tool's server or namespace (``git_status``), not its verb.
_NAMESPACES = {"git", "fs", "db", "sql", "sqlite", "duckdb", "mcp", "repo"}
# Words that mean the same action, mapped onto one canonical word.
_SYNONYMS = {
    **dict.fromkeys(["update", "modify", "set", "switch", "replace", "edit", "alter"], "change"),
    **dict.fromkeys(["lookup", "look", "search", "get", "fetch", "retrieve", "show"], "find"),
    **dict.fromkeys(["remove", "erase", "cancel", "close", "drop"], "delete"),
    **dict.fromkeys(["mail", "e-mail"], "email"),
    **dict.fromkeys(["acct", "accounts", "customer", "user", "profile"], "account"),
    **dict.fromkeys(["pay", "reimburse", "refunds"], "refund"),
}
_STOP_WORDS = {
    "a", "an", "the", "of", "to", "for", "and", "or", "in", "on", "at", "by", "with", "my",
    "our", "your", "their", "is", "are", "be", "it", "this", "that", "please", "can", "could",
    "would", "you", "me", "i", "we", "from", "as", "into", "up", "new", "old", "id", "name",
}  # fmt: skip
# Capitalised words that start sentences rather than names.
_NOT_NAMES = {
    "Add", "Please", "Change", "Update", "Send", "Dear", "Hi", "Hello", "The", "Our", "My",
    "Contact", "Contacts", "Invoice", "Order", "Set", "Email", "Customer", "Ask", "Call",
    "Find", "Look", "Create", "Delete", "Remove", "Thanks", "Regards", "Meeting", "From", "To",
}  # fmt: skip


def _split_identifier(name: str) -> list[str]:
    """``change_accountEmail`` -> ``["change", "account", "email"]``."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return [w.lower() for w in re.split(r"[^A-Za-z0-9]+", spaced) if w]


def _canonical(word: str) -> str:
    word = word.lower()
    word = _SYNONYMS.get(word, word)
    if len(word) > 4 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    return _SYNONYMS.get(word, word)


def _words(text_: str) -> set[str]:
    """The meaningful words of a text, canonicalised (``look up`` and ``lookup`` -> ``find``)."""
    out: set[str] = set()
    for token in re.findall(r"[A-Za-z][A-Za-z-]*", text_):
        parts = [token] if token.lower() == "e-mail" else token.split("-")
        out.update(_canonical(p) for p in parts if p and p.lower() not in _STOP_WORDS)
    return out


# --------------------------------------------------------------------------------------------
# Values found in text.
# --------------------------------------------------------------------------------------------

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_ID = re.compile(
    r"(?<![\w@.-])(?=[A-Za-z0-9_-]*\d)[A-Za-z][A-Za-z0-9]*(?:[_-][A-Za-z0-9]+)+(?![\w@-])"
)
_PATH = re.compile(
    r"(?<![\w@])(?:[\w.-]*/)*[\w-]+\.[A-Za-z][A-Za-z0-9]{0,4}\b(?!\.\w)|(?<!\w)/[\w./-]+"
)
_URL = re.compile(r"https?://[^\s\"'<>)]+")
_PHONE = re.compile(r"\+\d[\d ().-]{7,}\d|\b0\d(?:[ .-]?\d{2}){4}\b")
_ISO_DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    )
}
_MONTH = r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*\.?"
_DAY_MONTH_YEAR = re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+{_MONTH},?\s+(\d{{4}})\b", re.I)
_MONTH_DAY_YEAR = re.compile(rf"\b{_MONTH}\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+(\d{{4}})\b", re.I)
_NUMBER = re.compile(
    r"(?<![\w.,/-])(?P<cur>[$€£])?\s?(?P<num>\d+(?:[.,]\d+)?)(?![\w-]|[.,]\d)\s?(?P<cur2>EUR|USD|GBP|€|\$|£)?"
)
_NAME = re.compile(r"\b[A-Z][a-z]+(?:[ -](?:[A-Z][a-z]+|[A-Z]\.))+")
_ITEM_NAME = re.compile(
    r"\b\d+\s*(?:x\s*)?([A-Za-z][A-Za-z -]{1,40}?)(?=\s+(?:at|for|@|x)\b|\s*[,;.(]|\s+\d|$)"
)
_QUOTED = re.compile(r"[\"“']([^\"”']{2,80})[\"”']")

_MONEY_WORDS = {"price", "amount", "total", "cost", "fee", "balance", "sum", "salary", "charge"}
_COUNT_WORDS = {"quantity", "qty", "count", "number", "num", "units", "items", "age", "year"}
_LONG_TEXT_WORDS = {
    "query", "text", "message", "content", "reason", "note", "comment", "body", "question",
    "prompt", "request", "instruction", "summary", "description", "details",
}  # fmt: skip
_EMAIL_WORDS = {"email", "mail", "recipient", "to", "cc", "bcc", "sender"}
_PLACE_WORDS = {"city", "location", "place", "country", "destination", "town", "region"}


def _dates(text_: str) -> list[str]:
    """ISO dates (YYYY-MM-DD) written in the text, in order."""
    found: list[tuple[int, str]] = []
    for m in _ISO_DATE.finditer(text_):
        found.append((m.start(), m.group(0)))
    for m in _DAY_MONTH_YEAR.finditer(text_):
        month = _MONTHS[m.group(2)[:3].lower()]
        found.append((m.start(), f"{m.group(3)}-{month:02d}-{int(m.group(1)):02d}"))
    for m in _MONTH_DAY_YEAR.finditer(text_):
        month = _MONTHS[m.group(1)[:3].lower()]
        found.append((m.start(), f"{m.group(3)}-{month:02d}-{int(m.group(2)):02d}"))
    return [d for _, d in sorted(found)]


def _mask(text_: str, *patterns: re.Pattern[str]) -> str:
    """Blank out matches (keeping offsets) so numbers inside ids and dates are not counted."""
    for pattern in patterns:
        text_ = pattern.sub(lambda m: " " * len(m.group(0)), text_)
    return text_


@dataclass(frozen=True)
class _Number:
    value: float
    start: int
    end: int
    money: bool
    decimal: bool


def _numbers(text_: str) -> list[_Number]:
    masked = _mask(text_, _EMAIL, _URL, _ID, _ISO_DATE, _DAY_MONTH_YEAR, _MONTH_DAY_YEAR, _PHONE)
    out: list[_Number] = []
    for m in _NUMBER.finditer(masked):
        raw = m.group("num")
        decimal = "." in raw or "," in raw
        out.append(
            _Number(
                value=float(raw.replace(",", ".")),
                start=m.start("num"),
                end=m.end("num"),
                money=bool(m.group("cur") or m.group("cur2")) or decimal,
                decimal=decimal,
            )
        )
    return out


def _person_names(text_: str) -> list[str]:
    names: list[str] = []
    for m in _NAME.finditer(text_):
        parts = m.group(0).split()
        while parts and parts[0] in _NOT_NAMES:
            parts.pop(0)
        if len(parts) >= 2 and " ".join(parts) not in names:
            names.append(" ".join(parts))
    return names


def _unique(values: Iterable[Any]) -> list[Any]:
    seen: list[Any] = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


def _first_sentence(text_: str, limit: int = 160) -> str:
    sentence = re.split(r"(?<=[.!?])\s+|\n", text_.strip(), maxsplit=1)[0]
    return sentence if len(sentence) <= limit else sentence[: limit - 1].rstrip() + "…"


# --------------------------------------------------------------------------------------------
# Filling a value for a named field from text, earlier tool results and its JSON schema.
# --------------------------------------------------------------------------------------------


@dataclass
class _Context:
    """Where values come from: the prompt, earlier tool results, and the root JSON schema."""

    text: str
    records: list[Any] = field(default_factory=list)
    record_text: str = ""
    new_values: frozenset[str] = frozenset()
    root: JSONDict = field(default_factory=dict)
    writing: bool = False  # filling an action tool: e-mail params take the prompt's new value


def _resolve(schema: Any, root: JSONDict) -> JSONDict:
    """Follow ``$ref`` into ``$defs``/``definitions`` (pydantic schemas use them)."""
    seen = 0
    while isinstance(schema, dict) and "$ref" in schema and seen < 20:
        path = str(schema["$ref"]).lstrip("#/").split("/")
        target: Any = root
        for part in path:
            target = target.get(part, {}) if isinstance(target, dict) else {}
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        seen += 1
    return schema if isinstance(schema, dict) else {}


def _schema_type(schema: JSONDict) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    return kind if isinstance(kind, str) else None


def _lookup_key(records: Sequence[Any], name: str) -> list[Any]:
    """Values stored under ``name`` (or ``id`` for ``*_id``) anywhere in the tool results."""
    exact: list[Any] = []
    loose: list[Any] = []
    stem = name[:-3] if name.endswith("_id") else None

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(value, (dict, list)):
                    if key == name:
                        exact.append(value)
                    elif stem is not None and key == "id":
                        loose.append(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for record in records:
        walk(record)
    return _unique(exact or loose)


def _anchored(text_: str, name: str) -> list[str]:
    """Values written right after the field's own words: ``account 42``, ``city: Paris``."""
    words = [w for w in _split_identifier(name) if w not in {"id", "new", "old", "the"}]
    if not words:
        return []
    label = r"[\s_-]*".join(re.escape(w) for w in words)
    pattern = re.compile(
        rf"\b{label}s?\b(?:\s+(?:id|number|no\.?|is|was|named|called))?\s*[:=#]?\s*"
        r"(\"[^\"]+\"|'[^']+'|[A-Za-z0-9][\w.@+-]*(?-i:\s+[A-Z][a-z]+)?)",
        re.I,
    )
    needs_digit = bool({"id", "number", "no", "ref", "reference"} & set(_split_identifier(name)))
    out = []
    for m in pattern.finditer(text_):
        value = m.group(1).strip("\"'").rstrip(".,;")
        if value.lower() in _STOP_WORDS or (needs_digit and not re.search(r"\d", value)):
            continue
        out.append(value)
    return out


def _is_free_text(name: str) -> bool:
    """Fields that take a sentence (``reason``, ``description``...) rather than a token."""
    return bool(set(_split_identifier(name)) & _LONG_TEXT_WORDS)


def _free_text(text_: str, name: str) -> list[str]:
    """The rest of the line after ``<name>:``, else the text without a ``Header:`` prefix."""
    words = [w for w in _split_identifier(name) if w not in {"the", "new", "old"}]
    label = r"[\s_-]*".join(re.escape(w) for w in words)
    m = re.search(rf"\b{label}\b\s*[:=-]\s*(.+)", text_, re.I) if words else None
    if m:
        return [m.group(1).strip()]
    body = re.sub(r"\s+([.,;:!?])", r"\1", " ".join(text_.split()))
    body = re.sub(r"([.,;:])(?:\s*[.,;:])+", r"\1", body).strip(" ,;")
    _, sep, rest = body.rpartition(":")
    if sep and len(rest.strip()) >= 3:
        body = rest.strip()
    return [_first_sentence(body)] if body else []


def _candidates(name: str, schema: JSONDict, ctx: _Context) -> list[Any]:
    """Every plausible value for a string-ish field, best source first (empty when unknown)."""
    words = set(_split_identifier(name))
    fmt = schema.get("format")
    is_email = bool(words & _EMAIL_WORDS) or fmt == "email"
    wants_new = "new" in words or (
        is_email and ctx.writing and bool(ctx.new_values) and not words & {"old", "current"}
    )
    keyed = [] if wants_new else _lookup_key(ctx.records, name)
    if keyed:
        return keyed
    if is_email:
        emails = _unique(_EMAIL.findall(ctx.text))
        if wants_new:
            return [e for e in emails if e in ctx.new_values]
        return [e for e in emails if e not in ctx.new_values] or _unique(
            _EMAIL.findall(ctx.record_text)
        )
    if "date" in words or fmt in ("date", "date-time"):
        found = _dates(ctx.text) or _dates(ctx.record_text)
        return [f"{d}T00:00:00Z" for d in found] if fmt == "date-time" else found
    if words & {"url", "link", "website", "homepage"} or fmt == "uri":
        return _unique(_URL.findall(ctx.text))
    if words & {"path", "file", "filename"}:
        return _unique(_PATH.findall(_mask(ctx.text, _EMAIL, _URL)))
    if words & {"phone", "mobile", "telephone"}:
        return _unique(p.strip() for p in _PHONE.findall(ctx.text))
    if _is_free_text(name):
        return _free_text(ctx.text, name)
    anchored = _anchored(ctx.text, name)
    if anchored:
        return _unique(anchored)
    if "id" in words or "number" in words or "reference" in words or "ref" in words:
        ids = [v for v in _ID.findall(ctx.text) if v not in ctx.new_values]
        return _unique(ids or _ID.findall(ctx.record_text))
    if words & _PLACE_WORDS:
        return _unique(
            m.group(1)
            for m in re.finditer(
                r"\b(?:in|at|for|to|from)\s+([A-Z][a-z]+(?:\s[A-Z][a-z]+)?)", ctx.text
            )
        )
    if words & {"name", "person", "customer", "contact", "author", "owner"}:
        return _person_names(ctx.text)
    if words & {"product", "item", "article", "service", "goods"}:
        return _unique(m.group(1).strip() for m in _ITEM_NAME.finditer(ctx.text))
    if words & {"title", "subject", "headline"}:
        return [_first_sentence(ctx.text, 80)] if ctx.text.strip() else []
    return _unique(_QUOTED.findall(ctx.text))


def _anchored_number(text_: str, name: str) -> tuple[float, int, int] | None:
    """A number written just after one of the field's words (``Total: 25.50``), with its span."""
    numbers = _numbers(text_)
    for word in sorted(set(_split_identifier(name)) - {"id"}):
        if len(word) < 3:
            continue
        for m in re.finditer(rf"\b{re.escape(word)}", text_, re.I):
            after = [n for n in numbers if m.end() <= n.start <= m.end() + 25]
            if after:
                return after[0].value, m.start(), after[0].end
    return None


def _number_for(name: str, schema: JSONDict, ctx: _Context) -> float | None:
    """The number a numeric field most likely refers to."""
    keyed = [v for v in _lookup_key(ctx.records, name) if isinstance(v, (int, float))]
    if keyed:
        return float(keyed[0])
    anchored = _anchored_number(ctx.text, name)
    if anchored is not None:
        return anchored[0]
    numbers = _numbers(ctx.text)
    words = set(_split_identifier(name))
    if not numbers:
        return None
    if words & _MONEY_WORDS:
        money = [n for n in numbers if n.money]
        return (money or numbers)[0].value
    if words & _COUNT_WORDS or _schema_type(schema) == "integer":
        whole = [n for n in numbers if not n.decimal]
        return (whole or numbers)[0].value
    return numbers[0].value


def _clamp(value: float, schema: JSONDict) -> float:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    if isinstance(low, (int, float)) and value < low:
        value = float(low) + (1 if "exclusiveMinimum" in schema else 0)
    if isinstance(high, (int, float)) and value > high:
        value = float(high) - (1 if "exclusiveMaximum" in schema else 0)
    return value


def _fill(schema: Any, name: str, ctx: _Context) -> tuple[Any, bool]:
    """A value for field ``name`` valid against ``schema``, and whether it was *found*.

    Found means it came from the text or a tool result rather than a default or placeholder.
    """
    schema = _resolve(schema, ctx.root)
    if "const" in schema:
        return schema["const"], True
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return _fill_union(schema, schema[key], name, ctx)
    if isinstance(schema.get("allOf"), list) and schema["allOf"]:
        rest = {k: v for k, v in schema.items() if k != "allOf"}
        return _fill({**_resolve(schema["allOf"][0], ctx.root), **rest}, name, ctx)
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return _fill_enum(schema, ctx)
    kind = _schema_type(schema)
    if kind == "object" or "properties" in schema:
        return _fill_object(schema, ctx)
    if kind == "array":
        return _fill_array(schema, name, ctx)
    if kind in ("integer", "number"):
        number = _number_for(name, schema, ctx)
        if number is None:
            default = schema.get("default", schema.get("minimum", 0))
            number, found = float(default if isinstance(default, (int, float)) else 0), False
        else:
            found = True
        number = _clamp(number, schema)
        return (round(number) if kind == "integer" else number), found
    if kind == "boolean":
        return _fill_boolean(schema, name, ctx)
    if kind == "null":
        return None, False
    values = _candidates(name, schema, ctx)
    if values:
        return str(values[0]), True
    default = schema.get("default")
    if isinstance(default, str):
        return default, False
    return "unknown", False


def _fill_union(schema: JSONDict, options: list[Any], name: str, ctx: _Context) -> tuple[Any, bool]:
    branches = [_resolve(o, ctx.root) for o in options]
    nullable = any(_schema_type(b) == "null" for b in branches)
    non_null = [b for b in branches if _schema_type(b) != "null"]
    first: tuple[Any, bool] | None = None
    for branch in non_null:
        value, found = _fill(branch, name, ctx)
        if found:
            return value, True
        first = first or (value, False)
    if "default" in schema:
        return schema["default"], False
    if nullable or first is None:
        return None, False
    return first


def _fill_enum(schema: JSONDict, ctx: _Context) -> tuple[Any, bool]:
    options = schema["enum"]
    lowered = ctx.text.lower()
    for option in options:
        if isinstance(option, str) and re.search(rf"\b{re.escape(option.lower())}\b", lowered):
            return option, True
    if "default" in schema and schema["default"] in options:
        return schema["default"], False
    return options[0], False


def _fill_boolean(schema: JSONDict, name: str, ctx: _Context) -> tuple[bool, bool]:
    words = [w for w in _split_identifier(name) if w not in {"is", "has", "needs", "should"}]
    for word in words:
        m = re.search(rf"\b(not\s+|no\s+|non-?)?{re.escape(word)}", ctx.text, re.I)
        if m:
            return m.group(1) is None, True
    default = schema.get("default")
    return (default if isinstance(default, bool) else False), False


def _is_array(schema: Any, root: JSONDict) -> bool:
    schema = _resolve(schema, root)
    options = schema.get("anyOf") or schema.get("oneOf") or [schema]
    return any(_schema_type(_resolve(o, root)) == "array" for o in options)


def _consume(text_: str, name: str, value: Any, schema: JSONDict) -> str:
    """Blank out what a field used, so list items are not built from the parent's values."""
    if isinstance(value, bool) or value is None or "enum" in schema:
        return text_
    if isinstance(value, (int, float)):
        anchored = _anchored_number(text_, name)
        if anchored is not None:
            _, start, end = anchored
            text_ = text_[:start] + " " * (end - start) + text_[end:]
        return text_
    if not isinstance(value, str):
        return text_
    if "date" in set(_split_identifier(name)) or schema.get("format") in ("date", "date-time"):
        return _mask(text_, _ISO_DATE, _DAY_MONTH_YEAR, _MONTH_DAY_YEAR)
    if 3 <= len(value) < len(text_) / 2 and not _is_free_text(name):
        text_ = text_.replace(value, " " * len(value))
    return text_


def _fill_properties(schema: JSONDict, ctx: _Context) -> tuple[JSONDict, list[str]]:
    """Fill every property (scalars first, then lists from what the scalars left)."""
    properties: JSONDict = schema.get("properties") or {}
    values: JSONDict = {}
    found: list[str] = []
    rest = ctx.text
    lists = [p for p, s in properties.items() if _is_array(s, ctx.root)]
    for prop, prop_schema in properties.items():
        if prop in lists:
            continue
        value, ok = _fill(prop_schema, prop, ctx)
        values[prop] = value
        if ok:
            found.append(prop)
            rest = _consume(rest, prop, value, _resolve(prop_schema, ctx.root))
    for prop in lists:
        value, ok = _fill(properties[prop], prop, replace(ctx, text=rest))
        values[prop] = value
        if ok:
            found.append(prop)
    return {p: values[p] for p in properties}, found


def _fill_object(schema: JSONDict, ctx: _Context) -> tuple[JSONDict, bool]:
    values, found = _fill_properties(schema, ctx)
    return values, bool(found)


def _segments(text_: str) -> Iterable[list[str]]:
    """Ways to cut a text into items, from the most to the least structured."""
    lines = [ln.strip(" -*•\t") for ln in text_.splitlines() if ln.strip(" -*•\t")]
    yield lines
    for separator in (r";", r"(?<=[.!?])\s+", r",(?!\d)", r"\band\b"):
        yield [s.strip() for s in re.split(separator, text_) if s.strip()]


def _fill_object_list(items: JSONDict, ctx: _Context) -> list[Any]:
    """One object per item of the text: the first cut into >= 2 convincing items, else one.

    An item is convincing when enough of its token-like fields (e-mail, number, name, date...,
    not free text) were found in its piece of text.
    """
    strong = [p for p in items.get("properties") or {} if not _is_free_text(p)]
    need = 1 if len(strong) <= 2 else 2

    def convincing(piece: str) -> JSONDict | None:
        value, found = _fill_properties(items, replace(ctx, text=piece, records=[]))
        return value if len([p for p in found if p in strong]) >= need else None

    for parts in _segments(ctx.text):
        found_items = [v for v in (convincing(p) for p in parts) if v is not None]
        if len(found_items) >= 2:
            return found_items
    whole = convincing(ctx.text)
    return [whole] if whole is not None else []


def _fill_array(schema: JSONDict, name: str, ctx: _Context) -> tuple[list[Any], bool]:
    items = _resolve(schema.get("items", {}), ctx.root)
    minimum = int(schema.get("minItems", 0))
    maximum = schema.get("maxItems")
    values: list[Any] = []
    if _schema_type(items) == "object" or "properties" in items:
        values = _fill_object_list(items, ctx)
    elif _schema_type(items) in ("integer", "number"):
        values = [n.value for n in _numbers(ctx.text)]
        if _schema_type(items) == "integer":
            values = [round(v) for v in values]
    elif isinstance(items.get("enum"), list):
        lowered = ctx.text.lower()
        values = [o for o in items["enum"] if isinstance(o, str) and o.lower() in lowered]
    else:
        singular = name[:-1] if name.endswith("s") else name
        values = _candidates(singular, items, ctx)
    if isinstance(maximum, int):
        values = values[:maximum]
    found_any = bool(values)
    while len(values) < minimum:
        values.append(_fill(items, name, ctx)[0])
    return values, found_any


# --------------------------------------------------------------------------------------------
# Reading the request.
# --------------------------------------------------------------------------------------------


def _content_text(content: Any) -> str:
    """Message content is a string or a list of chunks; keep the text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(chunk.get("text", "")) for chunk in content if isinstance(chunk, dict))
    return ""


@dataclass(frozen=True)
class _Tool:
    name: str
    description: str
    parameters: JSONDict

    @property
    def properties(self) -> JSONDict:
        props = self.parameters.get("properties")
        return props if isinstance(props, dict) else {}

    @property
    def required(self) -> list[str]:
        required = self.parameters.get("required")
        return [r for r in required if r in self.properties] if isinstance(required, list) else []

    @property
    def verb(self) -> str:
        words = _split_identifier(self.name)
        if len(words) > 1 and words[0] in _NAMESPACES:
            words = words[1:]
        return words[0] if words else ""

    @property
    def reads(self) -> bool:
        return self.verb in _READ_VERBS


@dataclass(frozen=True)
class _Call:
    id: str
    name: str
    arguments: JSONDict
    result: str | None


@dataclass
class _Episode:
    """The conversation since the last user message: the task and what was done for it."""

    prompt: str
    calls: list[_Call]
    tool_turns: int


def _parse_arguments(raw: Any) -> JSONDict:
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw) if isinstance(raw, str) else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _episode(messages: list[JSONDict]) -> _Episode:
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    prompt = _content_text(messages[last_user].get("content")) if last_user >= 0 else ""
    results = {
        m.get("tool_call_id"): _content_text(m.get("content"))
        for m in messages[last_user + 1 :]
        if m.get("role") == "tool"
    }
    calls: list[_Call] = []
    tool_turns = 0
    for message in messages[last_user + 1 :]:
        if message.get("role") != "assistant" or not message.get("tool_calls"):
            continue
        tool_turns += 1
        for tc in message["tool_calls"]:
            function = tc.get("function") or {}
            calls.append(
                _Call(
                    id=str(tc.get("id")),
                    name=str(function.get("name")),
                    arguments=_parse_arguments(function.get("arguments")),
                    result=results.get(tc.get("id")),
                )
            )
    return _Episode(prompt=prompt, calls=calls, tool_turns=tool_turns)


def _parse_record(result: str) -> Any:
    """A tool result as data when it is JSON or a Python literal, else None."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(result)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return None


def _tools_of(request: JSONDict) -> list[_Tool]:
    tools = []
    for tool in request.get("tools") or []:
        function = tool.get("function") or {}
        parameters = function.get("parameters")
        tools.append(
            _Tool(
                name=str(function.get("name")),
                description=str(function.get("description") or ""),
                parameters=parameters if isinstance(parameters, dict) else {},
            )
        )
    return tools


# --------------------------------------------------------------------------------------------
# The agent: choose tools, fill arguments, react to results.
# --------------------------------------------------------------------------------------------


def _relevance(tool: _Tool, prompt_words: set[str]) -> float:
    name_words = {_canonical(w) for w in _split_identifier(tool.name)} - _STOP_WORDS
    param_words = {_canonical(w) for p in tool.properties for w in _split_identifier(p)}
    return (
        2.0 * len(name_words & prompt_words)
        + 1.0 * len((param_words - _STOP_WORDS) & prompt_words)
        + 0.5 * len(_words(tool.description) & prompt_words)
    )


def _plan(tools: list[_Tool], prompt: str) -> list[_Tool]:
    """Relevant tools in the order to use them: reads first, then the asked-for actions."""
    prompt_words = _words(prompt)
    scored: list[tuple[int, float, int, _Tool]] = []
    for position, tool in enumerate(tools):
        score = _relevance(tool, prompt_words)
        # A read needs some overlap; an action is taken only when the prompt asks for it.
        relevant = score >= 1.0 if tool.reads else _canonical(tool.verb) in prompt_words
        if relevant:
            scored.append((0 if tool.reads else 1, -score, position, tool))
    return [tool for *_, tool in sorted(scored, key=lambda s: s[:3])]


def _new_values(prompt: str) -> frozenset[str]:
    """E-mail addresses the prompt gives as the *new* value ("change ... to ada@new.org").

    Read tools never get them (the lookup is for the current address); action tools do.
    """
    marked = [
        m.group(0)
        for m in _EMAIL.finditer(prompt)
        if re.search(
            r"\b(to|into|new)\b[^@]{0,30}$", prompt[max(0, m.start() - 40) : m.start()], re.I
        )
    ]
    emails = _unique(_EMAIL.findall(prompt))
    if len(marked) == len(emails) and len(emails) > 1:
        marked = marked[-1:]
    return frozenset(marked)


def _arguments(tool: _Tool, ctx: _Context) -> tuple[list[JSONDict], list[str]]:
    """Argument sets for one or more parallel calls of ``tool``, and the unfillable params."""
    ctx = replace(ctx, root=tool.parameters, writing=not tool.reads)
    base: JSONDict = {}
    missing: list[str] = []
    fan_out: tuple[str, list[Any]] | None = None
    for param, raw_schema in tool.properties.items():
        schema = _resolve(raw_schema, tool.parameters)
        required = param in tool.required
        value, found = _fill(schema, param, ctx)
        if not found and required and "default" not in schema and "enum" not in schema:
            missing.append(param)
        if found or required:
            base[param] = value
        if found and fan_out is None and _schema_type(schema) == "string" and required:
            options = [v for v in _candidates(param, schema, ctx) if isinstance(v, str)]
            fans = param.endswith("id") or ("email" in param and tool.reads)
            if len(options) > 1 and fans:
                fan_out = (param, options[:_MAX_PARALLEL])
    if fan_out is None:
        return [base], missing
    param, options = fan_out
    return [{**base, param: option} for option in options], missing


def _show_call(name: str, arguments: JSONDict) -> str:
    shown = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
    return f"{name}({shown})"


def _short(value: str, limit: int = 200) -> str:
    value = " ".join(value.split())
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _is_refusal(result: str) -> bool:
    return result.lstrip().lower().startswith("not approved") or "rejected" in result.lower()


def _is_error(result: str) -> bool:
    record = _parse_record(result)
    return result.lstrip().lower().startswith("error") or (
        isinstance(record, dict) and "error" in record
    )


def _reviewer_note(result: str) -> str:
    m = re.search(r"\bnote\b[^:]*:\s*(.+)", result, re.I | re.S)
    if m:
        return m.group(1).strip()
    record = _parse_record(result)
    if isinstance(record, dict):
        for key in ("note", "reason", "comment", "message"):
            if isinstance(record.get(key), str):
                return str(record[key])
    return result.strip()


def _done_lines(calls: Iterable[_Call]) -> list[str]:
    return [
        f"- {_show_call(c.name, c.arguments)} returned: {_short(c.result or '(no result)')}"
        for c in calls
    ]


def _summary(episode: _Episode) -> str:
    if not episode.calls:
        return f"I did not need any tool for this request. {_OFFLINE_NOTE}"
    lines = ["Here is what I did:", *_done_lines(episode.calls)]
    return "\n".join([*lines, _OFFLINE_NOTE])


def _stop_answer(episode: _Episode, stopped: _Call, refused: bool) -> str:
    before = [
        c
        for c in episode.calls
        if c is not stopped
        and c.result is not None
        and not _is_refusal(c.result)
        and not _is_error(c.result)
    ]
    parts = []
    if before:
        parts += ["What I did first:", *_done_lines(before), ""]
    action = _show_call(stopped.name, stopped.arguments)
    if refused:
        note = _reviewer_note(stopped.result or "")
        parts.append(
            f"I did not run {action}: the reviewer did not approve it, so nothing was changed "
            f"by that call. Reviewer's note: \u201c{_short(note, 300)}\u201d"
        )
    else:
        parts.append(
            f"The call {action} failed: \u201c{_short(stopped.result or '', 300)}\u201d. "
            "I stopped there."
        )
    return "\n".join([*parts, _OFFLINE_NOTE])


def _why(tool: _Tool, after_results: bool) -> str:
    """What the demo model says when it asks for a call (shown on the approval card)."""
    purpose = _first_sentence(tool.description, 120).rstrip(".") if tool.description else ""
    source = "your request and the results so far" if after_results else "your request"
    what = f" ({purpose[:1].lower() + purpose[1:]})" if purpose else ""
    step = "look something up" if tool.reads else "make a change"
    return f"Next I {step} with {tool.name}{what}, using values from {source}."


def _agent_turn(request: JSONDict, tools: list[_Tool]) -> Turn:
    """The next step of the plan, or the final answer."""
    episode = _episode(request["messages"])
    for done in episode.calls:
        if done.result is not None and (_is_refusal(done.result) or _is_error(done.result)):
            return text(_stop_answer(episode, done, refused=_is_refusal(done.result)))

    choice = request.get("tool_choice")
    forced = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    must_call = forced is not None or choice in ("any", "required")
    results = [c.result for c in episode.calls if c.result is not None]
    ctx = _Context(
        text=episode.prompt,
        records=[r for r in (_parse_record(x) for x in results) if r is not None],
        record_text="\n".join(results),
        new_values=_new_values(episode.prompt),
    )
    called = {c.name for c in episode.calls}
    plan = [t for t in _plan(tools, episode.prompt) if forced is None or t.name == forced]
    # Steps before the last one taken were done or skipped; never go back to them.
    taken = [i for i, t in enumerate(plan) if t.name in called]
    if episode.tool_turns < _MAX_TOOL_TURNS:
        for tool in plan[taken[-1] + 1 if taken else 0 :]:
            argument_sets, missing = _arguments(tool, ctx)
            if not missing:
                return tool_calls(*(call(tool.name, a) for a in argument_sets),
                                  content=_why(tool, bool(results)))
            if not tool.reads and not must_call:
                return text(
                    f"To run {tool.name} I need {', '.join(missing)}, and I could not find "
                    f"{'it' if len(missing) == 1 else 'them'} in your request or in the tool "
                    f"results. Please tell me and I will continue. {_OFFLINE_NOTE}"
                )
    if must_call and not episode.calls:
        chosen = next((t for t in tools if t.name == forced), None) or (plan or tools)[0]
        argument_sets, _ = _arguments(chosen, ctx)
        return tool_calls(*(call(chosen.name, a) for a in argument_sets))
    if not episode.calls:
        return text(_no_tool_answer(episode.prompt, tools))
    return text(_summary(episode))


def _no_tool_answer(prompt: str, tools: Sequence[_Tool]) -> str:
    offered = ", ".join(t.name for t in tools)
    return (
        f"I am the offline demo model, so I only act when a request clearly matches one of the "
        f"tools ({offered}). I could not match \u201c{_short(prompt, 120)}\u201d to any of them. "
        f"{_OFFLINE_NOTE}"
    )


def _plain_answer(request: JSONDict) -> str:
    prompt = _episode(request["messages"]).prompt
    return (
        f"I am the offline demo model of cheq-jupyter, so I cannot really answer "
        f"\u201c{_short(prompt, 120)}\u201d. Give me tools to see the approval checkpoint at "
        f"work, or set MISTRAL_API_KEY to talk to a real Mistral model."
    )


def _conversation_text(request: JSONDict) -> str:
    return "\n".join(
        _content_text(m.get("content")) for m in request["messages"] if m.get("role") == "user"
    )


def _structured_answer(request: JSONDict, response_format: JSONDict) -> Turn:
    source = _conversation_text(request)
    if response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema") or {}
        value, _ = _fill(
            schema,
            str((response_format.get("json_schema") or {}).get("name", "")),
            _Context(source, root=schema),
        )
        return json_reply(value)
    numbers = [n.value for n in _numbers(source)]
    return json_reply(
        {
            "emails": _unique(_EMAIL.findall(source)),
            "dates": _dates(source),
            "numbers": numbers,
            "note": "offline demo model: values were extracted with simple patterns",
        }
    )


def demo_responder(request: JSONDict) -> Turn:
    """Answer one chat-completions request like a small, predictable model (see module doc).

    Use it as a :class:`~cheq_jupyter.testing.FakeMistral` script::

        with FakeMistral(demo_responder) as fake: ...
    """
    response_format = request.get("response_format") or {}
    if response_format.get("type") in ("json_object", "json_schema"):
        return _structured_answer(request, response_format)
    tools = _tools_of(request)
    if tools and request.get("tool_choice") != "none":
        return _agent_turn(request, tools)
    episode = _episode(request["messages"])
    if episode.calls:
        return text(_summary(episode))
    return text(_plain_answer(request))


# --------------------------------------------------------------------------------------------
# Notebooks: use the demo model when there is no key.
# --------------------------------------------------------------------------------------------

#: Seconds between the streamed words of the offline demo model.
DEMO_CHUNK_PAUSE = 0.012
_offline_server: FakeMistral | None = None
_offline_lock = threading.Lock()


def use_offline_model_unless_key() -> str | None:
    """Serve the demo model locally unless ``MISTRAL_API_KEY`` is set; return its URL.

    Without a key it starts (once per process) a :class:`FakeMistral` answering with
    :func:`demo_responder` and sets ``MISTRAL_SERVER_URL`` and ``MISTRAL_API_KEY`` (the fake's
    throw-away key) so the normal client construction reaches it. With a real key it changes
    nothing and returns ``None``.
    """
    global _offline_server
    with _offline_lock:
        current_key = os.environ.get("MISTRAL_API_KEY")
        if _offline_server is not None and current_key == _offline_server.api_key:
            return _offline_server.url
        if current_key:
            return None
        if _offline_server is None:
            # Word by word with a short pause, so offline notebooks look live.
            _offline_server = FakeMistral(demo_responder, chunk_pause=DEMO_CHUNK_PAUSE).start()
        os.environ["MISTRAL_SERVER_URL"] = _offline_server.url
        os.environ["MISTRAL_API_KEY"] = _offline_server.api_key
        print(
            f"No MISTRAL_API_KEY set: using the offline demo model at {_offline_server.url} "
            "(deterministic, for demos only)."
        )
        return _offline_server.url
