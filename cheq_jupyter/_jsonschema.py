"""A small JSON-schema checker for the subset pydantic emits for tool parameters.

The agent loop validates arguments with the tool's pydantic model (the real check).  The
approval card and the console approver only hold the request's JSON schema, so they use this
to tell a reviewer *before* approving that an edit is invalid.  Covered: ``type``,
``properties``, ``required``, ``additionalProperties``, ``enum``, ``const``, ``items``,
``anyOf``/``oneOf``/``allOf``, ``$ref`` into ``$defs``, numeric bounds, string length and
``pattern``, array length.  Unknown keywords are ignored (the loop's pydantic check still runs).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["check"]

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def _is_type(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES.get(name, (object,)))


def _where(path: str) -> str:
    return path or "the arguments"


def check(schema: dict[str, Any], value: Any) -> list[str]:
    """Return one message per problem of ``value`` against ``schema`` (empty when valid)."""
    errors: list[str] = []
    _check(schema, value, "", schema.get("$defs", {}), errors)
    return errors


def _check(
    schema: dict[str, Any], value: Any, path: str, defs: dict[str, Any], errors: list[str]
) -> None:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target = defs.get(ref.removeprefix("#/$defs/"))
        if isinstance(target, dict):
            _check(target, value, path, defs, errors)
        return
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            results = [_sub(option, value, path, defs) for option in options]
            if all(results):
                non_null = [
                    r for o, r in zip(options, results, strict=True) if o.get("type") != "null"
                ]
                if len(non_null) == 1 and value is not None:
                    errors.extend(non_null[0])
                else:
                    errors.append(f"{_where(path)}: {value!r} matches none of the allowed forms")
            return
    for option in schema.get("allOf", []) or []:
        _check(option, value, path, defs, errors)
    if "const" in schema and value != schema["const"]:
        errors.append(f"{_where(path)}: must be {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(repr(v) for v in schema["enum"])
        errors.append(f"{_where(path)}: {value!r} is not one of {allowed}")
        return
    expected = schema.get("type")
    if expected is not None:
        names = expected if isinstance(expected, list) else [expected]
        if not any(_is_type(value, n) for n in names):
            errors.append(f"{_where(path)}: expected {' or '.join(names)}, got {_kind(value)}")
            return
    if isinstance(value, dict):
        _check_object(schema, value, path, defs, errors)
    elif isinstance(value, list):
        _check_array(schema, value, path, defs, errors)
    elif isinstance(value, str):
        _check_string(schema, value, path, errors)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        _check_number(schema, value, path, errors)


def _sub(schema: dict[str, Any], value: Any, path: str, defs: dict[str, Any]) -> list[str]:
    found: list[str] = []
    _check(schema, value, path, defs, found)
    return found


def _kind(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _is_type(value, name):
            return name
    return type(value).__name__


def _check_object(
    schema: dict[str, Any], value: dict[str, Any], path: str, defs: dict[str, Any],
    errors: list[str],
) -> None:
    props: dict[str, Any] = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in value:
            errors.append(f"{_where(path)}: missing required field {name!r}")
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        sub = f"{path}.{key}" if path else key
        if key in props:
            _check(props[key], item, sub, defs, errors)
        elif extra is False:
            errors.append(f"{_where(path)}: unexpected field {key!r}")
        elif isinstance(extra, dict):
            _check(extra, item, sub, defs, errors)


def _check_array(
    schema: dict[str, Any], value: list[Any], path: str, defs: dict[str, Any], errors: list[str]
) -> None:
    if "minItems" in schema and len(value) < schema["minItems"]:
        errors.append(f"{_where(path)}: needs at least {schema['minItems']} items")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(f"{_where(path)}: allows at most {schema['maxItems']} items")
    items = schema.get("items")
    if isinstance(items, dict):
        for i, item in enumerate(value):
            _check(items, item, f"{path}[{i}]", defs, errors)


def _check_string(schema: dict[str, Any], value: str, path: str, errors: list[str]) -> None:
    if "minLength" in schema and len(value) < schema["minLength"]:
        errors.append(f"{_where(path)}: must be at least {schema['minLength']} characters")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        errors.append(f"{_where(path)}: must be at most {schema['maxLength']} characters")
    pattern = schema.get("pattern")
    if isinstance(pattern, str) and re.search(pattern, value) is None:
        errors.append(f"{_where(path)}: {value!r} does not match {pattern!r}")


def _check_number(schema: dict[str, Any], value: float, path: str, errors: list[str]) -> None:
    bounds = (
        ("minimum", ">=", 1, True),
        ("maximum", "<=", -1, True),
        ("exclusiveMinimum", ">", 1, False),
        ("exclusiveMaximum", "<", -1, False),
    )
    for key, sign, direction, inclusive in bounds:
        if key not in schema:
            continue
        diff = (value - schema[key]) * direction
        if diff < 0 or (diff == 0 and not inclusive):
            errors.append(f"{_where(path)}: must be {sign} {schema[key]}")
