"""Strict JSON for everything that decides what a tool runs with.

Model arguments, reviewers' edits and approvers' answers are plain JSON data or they are
refused: no NaN or infinities (``json`` accepts them by default), no number that overflows to
infinity, no duplicate keys, no non-string keys (``json.dumps`` quietly turns ``1`` into
``"1"``), no other Python types, and nesting too deep to check is an error, not a
``RecursionError``.  "Unchanged" compares JSON values (:func:`same_json`): ``1`` and ``true``
differ although ``1 == True`` in Python.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["canonical", "dump_json", "has_non_finite", "json_copy", "same_json", "strict_json"]

_MAX_DIGITS = 400
_MAX_VALUES = 1_000_000


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large to represent")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_DIGITS:
        raise ValueError(f"the number {text[:20]}... has too many digits")
    return int(text)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key[:40]!r} appears twice in one object")
        out[key] = value
    return out


def strict_json(text: str) -> Any:
    """Parse JSON text strictly: no NaN or infinities, no overflowing numbers, no duplicate
    keys; anything it cannot parse (including nesting too deep) is a ``ValueError``."""
    try:
        return json.loads(
            text, parse_constant=_no_constant, parse_float=_finite_float,
            parse_int=_bounded_int, object_pairs_hook=_unique_keys,
        )
    except RecursionError:
        raise ValueError("nested too deeply") from None


def dump_json(value: Any) -> str:
    """``value`` as JSON text; a ``ValueError`` for anything that is not plain JSON data
    (NaN, infinities, non-string keys, other types, nesting too deep)."""
    _check_keys(value)
    try:
        return json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc).split(":")[0].strip() or "not JSON data") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None


def has_non_finite(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return True
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
    return False


def _check_keys(value: Any) -> None:
    """Object keys must be strings (``json.dumps`` would quietly turn ``1`` into ``"1"``)."""
    stack, seen = [value], 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > _MAX_VALUES:
            raise ValueError("too many values")
        if isinstance(item, Mapping):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise ValueError(f"object keys must be strings, not {type(key).__name__}")
                stack.append(child)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def json_copy(value: Any) -> Any:
    """A fresh copy of ``value`` that is plain JSON data (``ValueError`` otherwise)."""
    return strict_json(dump_json(value))


def canonical(value: Any) -> str:
    """One spelling per JSON value (sorted keys), for comparing values as JSON."""
    _check_keys(value)
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return repr(value)


def same_json(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are the same JSON value (``1`` and ``true`` are not)."""
    try:
        return canonical(a) == canonical(b)
    except ValueError:
        return False
