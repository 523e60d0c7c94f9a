"""Plain Python functions as Mistral tools.

Any annotated function becomes a tool: its name, the docstring as the description, and a JSON
schema of its parameters built by pydantic from the type hints (defaults, ``Literal`` and
``Enum`` choices, nested models, and per-parameter descriptions taken from the docstring's
``Args:`` section or ``:param x:`` lines).  Arguments from the model are parsed and validated
with that schema before anyone is asked to approve them; the function never sees anything the
schema refuses.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, get_type_hints, runtime_checkable

import pydantic
import pydantic_core
from pydantic import BaseModel, ConfigDict, ValidationError

from . import _jsonschema
from ._strictjson import dump_json as _dump_json
from ._strictjson import has_non_finite as _has_non_finite
from ._strictjson import strict_json
from .errors import ToolArgumentsError, ToolDefinitionError

__all__ = [
    "Tool",
    "Toolset",
    "as_tools",
    "tool",
    "tool_result_text",
    "validate_arguments",
]

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_SECTION = re.compile(
    r"^\s*(Args|Arguments|Parameters|Params|Returns?|Raises|Yields|Examples?|Notes?|Example"
    r"|See Also|Attributes)\s*:?\s*$"
)


@dataclass(frozen=True)
class Tool:
    """A function the model may call, with the schema its arguments must satisfy."""

    name: str
    description: str
    function: Callable[..., Any]
    arguments_model: type[BaseModel]
    parameters: dict[str, Any]
    summary_template: str | None = None
    is_async: bool = field(default=False)
    #: The defaults of the optional parameters, as JSON values (what the reviewer is shown);
    #: read from ``arguments_model`` when not given.
    defaults: Mapping[str, Any] = field(default_factory=dict)
    #: Where the tool comes from (``"MCP server git"``); empty for a Python function.
    origin: str = ""
    #: What the tool's provider claims about it (MCP annotations), never trusted by itself.
    annotations: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.defaults:
            found = {
                info.alias or name: _default_json(self.name, info.alias or name, info.default)
                for name, info in self.arguments_model.model_fields.items()
                if not info.is_required() and info.default_factory is None
            }
            object.__setattr__(self, "defaults", found)

    def to_mistral(self) -> dict[str, Any]:
        """The tool as Mistral's ``tools`` list takes it."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def parse_arguments(self, raw: str | Mapping[str, Any] | None) -> dict[str, Any]:
        """Decode the model's arguments (a JSON string or an object) and validate them.

        Returns the arguments as JSON-ready data (what the reviewer sees and may edit), as the
        model sent them (see :meth:`with_defaults` for the full call).  Strict JSON only: NaN,
        infinities, numbers that overflow, duplicate keys and nesting beyond what can be
        checked are refused.  Raises :class:`ToolArgumentsError` naming the problem.
        """
        if raw is None or raw == "":
            data: Any = {}
        else:
            try:
                data = strict_json(raw if isinstance(raw, str) else _dump_json(raw))
            except ValueError as exc:
                raise ToolArgumentsError(
                    f"The arguments for {self.name} are not valid JSON ({exc}); send a JSON "
                    "object matching the tool's parameters.",
                    tool=self.name,
                    errors=[str(exc)],
                ) from None
        if not isinstance(data, dict):
            raise ToolArgumentsError(
                f"The arguments for {self.name} must be a JSON object, not "
                f"{type(data).__name__}; send an object matching the tool's parameters.",
                tool=self.name,
            )
        self.validate(data)
        return data

    def validate(self, arguments: Mapping[str, Any]) -> BaseModel:
        """Validate ``arguments`` with the tool's pydantic model (the check that counts)."""
        try:
            text = _dump_json(arguments)
        except ValueError as exc:
            raise ToolArgumentsError(
                f"The arguments for {self.name} are not JSON data ({exc}).",
                tool=self.name,
                errors=[str(exc)],
            ) from None
        try:
            # JSON mode + strict: what the model sent must already be the right JSON type
            # ("3" is not a number), while strings still validate enums, dates and UUIDs.
            model = self.arguments_model.model_validate_json(text, strict=True)
            if _has_non_finite(model.model_dump()):
                # A nested model of the user's own may allow it; the call never gets it.
                raise ToolArgumentsError(
                    f"The arguments for {self.name} hold a number too large to represent "
                    "(it would become infinity).",
                    tool=self.name,
                    errors=["a number is too large to represent"],
                )
            return model
        except ValidationError as exc:
            problems = [_describe_error(e) for e in exc.errors()]
            raise ToolArgumentsError(
                f"The arguments for {self.name} do not match its parameters: "
                f"{'; '.join(problems)}.",
                tool=self.name,
                errors=problems,
            ) from None
        except RecursionError:
            raise ToolArgumentsError(
                f"The arguments for {self.name} are nested too deeply to check.",
                tool=self.name,
                errors=["nested too deeply"],
            ) from None
        except ToolArgumentsError:
            raise
        except Exception as exc:  # a validator of the user's own that breaks refuses the call
            raise ToolArgumentsError(
                f"The arguments for {self.name} could not be checked ({type(exc).__name__} in "
                "a validator of the tool's types).",
                tool=self.name,
                errors=[f"the check failed ({type(exc).__name__})"],
            ) from None

    def check(self, arguments: Any) -> list[str]:
        """Problems of ``arguments`` (``[]`` when valid): the same validation as the call."""
        if not isinstance(arguments, Mapping):
            return [f"the arguments must be a JSON object, not {type(arguments).__name__}"]
        try:
            self.validate(arguments)
        except ToolArgumentsError as exc:
            return list(exc.errors) or [str(exc)]
        return []

    def with_defaults(self, arguments: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
        """The full arguments the tool runs with (defaults filled in), and the filled names."""
        full = dict(arguments)
        filled = []
        for name, default in self.defaults.items():
            if name not in full:
                full[name] = copy.deepcopy(default)
                filled.append(name)
        return full, tuple(filled)

    def call_arguments(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Validated keyword arguments for the function (nested models become instances).

        The model's fields have neutral names (``p0``, ``p1``...) aliased to the parameters,
        and the values are read from the validated model's field values by those names: never
        an attribute lookup by the parameter's own name, so a parameter may be named like a
        pydantic attribute (``model_extra``, ``json``, ``_x``) and still get its value.
        """
        model = self.validate(arguments)
        values = vars(model)
        return {
            info.alias or name: values[name]
            for name, info in type(model).model_fields.items()
        }

    def summarize(self, arguments: Mapping[str, Any]) -> str:
        """A one-line summary of a call, for the reviewer."""
        if self.summary_template:
            try:
                return self.summary_template.format(**arguments)
            except Exception:  # the model's values need not fit the template: plain summary
                pass
        shown = ", ".join(f"{k}={_short(v)}" for k, v in arguments.items())
        return f"{self.name}({shown})"


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe_error(error: Mapping[str, Any]) -> str:
    where = ".".join(str(p) for p in error.get("loc", ())) or "arguments"
    kind = error.get("type")
    if kind == "missing":
        return f"missing required argument {where!r}"
    if kind == "extra_forbidden":
        return f"unexpected argument {where!r}"
    return f"{where}: {error.get('msg', 'invalid')}"


def _docstring_parts(doc: str) -> tuple[str, dict[str, str]]:
    """Split a docstring into the description and per-parameter descriptions."""
    lines = inspect.cleandoc(doc).splitlines()
    description: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    for line in lines:
        header = _SECTION.match(line)
        if header and not line.startswith(" "):
            section = header.group(1).lower()
            current = None
            continue
        rest_param = re.match(r"^\s*:param\s+(?:[^:]*\s)?(\w+)\s*:\s*(.*)$", line)
        if rest_param:
            current = rest_param.group(1)
            params[current] = rest_param.group(2).strip()
            section = "rest"
            continue
        if section in ("args", "arguments", "parameters", "params"):
            entry = re.match(r"^\s{0,8}(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", line)
            if entry and (len(line) - len(line.lstrip())) <= 4:
                current = entry.group(1).lstrip("*")
                params[current] = entry.group(2).strip()
            elif current and line.strip() and not set(line.strip()) <= {"-"}:
                params[current] = f"{params[current]} {line.strip()}".strip()
        elif section == "rest":
            if current and line.startswith((" ", "\t")) and line.strip():
                params[current] = f"{params[current]} {line.strip()}"
            elif line.strip().startswith(":"):
                current = None
        elif section is None:
            description.append(line)
    return "\n".join(description).strip(), params


def _strip_titles(node: Any) -> Any:
    """Drop pydantic's auto-generated ``title`` keys: they cost tokens and carry nothing."""
    if isinstance(node, dict):
        props = node.get("properties")
        cleaned = {
            k: _strip_titles(v)
            for k, v in node.items()
            if not (k == "title" and isinstance(v, str))
        }
        if isinstance(props, dict):
            cleaned["properties"] = {k: _strip_titles(v) for k, v in props.items()}
        return cleaned
    if isinstance(node, list):
        return [_strip_titles(v) for v in node]
    return node


def tool(
    function: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    summary: str | None = None,
) -> Any:
    """Make a :class:`Tool` from ``function``; usable as ``@tool`` or ``@tool(summary=...)``.

    ``summary`` is a ``str.format`` template over the arguments shown to the reviewer, e.g.
    ``"Refund {amount} EUR to {customer}"``.
    """

    def build(fn: Callable[..., Any]) -> Tool:
        return _make_tool(fn, name=name, description=description, summary=summary)

    return build(function) if function is not None else build


def _make_tool(
    fn: Callable[..., Any], *, name: str | None, description: str | None, summary: str | None
) -> Tool:
    if not callable(fn):
        raise ToolDefinitionError(f"{fn!r} is not callable; pass a function to use as a tool.")
    tool_name = str(name or getattr(fn, "__name__", ""))
    if not _NAME.match(tool_name):
        raise ToolDefinitionError(
            f"Tool name {tool_name!r} is not allowed; use 1-64 letters, digits, '_' or '-'."
        )
    try:
        signature = inspect.signature(fn)
        hints = get_type_hints(fn, include_extras=True)
    except (TypeError, ValueError, NameError) as exc:
        raise ToolDefinitionError(
            f"Cannot read the signature of {tool_name} ({exc}); define it as a plain function "
            "with type hints."
        ) from None
    doc_text, doc_params = _docstring_parts(inspect.getdoc(fn) or "")
    fields: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    for index, param in enumerate(signature.parameters.values()):
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolDefinitionError(
                f"{tool_name} takes *{param.name}; a tool needs named parameters the model can "
                "fill, so list them explicitly."
            )
        if param.kind is param.POSITIONAL_ONLY:
            raise ToolDefinitionError(
                f"Parameter {param.name!r} of {tool_name} is positional-only; the tool is called "
                "with keyword arguments, so remove the '/' from its signature."
            )
        if param.name not in hints:
            raise ToolDefinitionError(
                f"Parameter {param.name!r} of {tool_name} has no type hint; annotate it "
                "(e.g. `amount: float`) so the model knows what to send."
            )
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[f"p{index}"] = (  # a neutral name; the parameter's own is the alias
            hints[param.name],
            pydantic.Field(
                default=default, alias=param.name, description=doc_params.get(param.name)
            ),
        )
        if default is not ...:
            defaults[param.name] = _default_json(tool_name, param.name, default)
    try:
        model = pydantic.create_model(  # type: ignore[call-overload]
            f"{tool_name}_arguments",
            __config__=ConfigDict(
                extra="forbid", arbitrary_types_allowed=False, allow_inf_nan=False
            ),
            **fields,
        )
        parameters = _strip_titles(model.model_json_schema())
    except (pydantic.PydanticUserError, pydantic.PydanticSchemaGenerationError, TypeError) as exc:
        raise ToolDefinitionError(
            f"The type hints of {tool_name} cannot be described as JSON ({exc}); use JSON-like "
            "types: str, int, float, bool, list, dict, Literal, Enum or pydantic models."
        ) from None
    parameters.setdefault("properties", {})
    made = Tool(
        name=tool_name,
        description=(description or doc_text or tool_name).strip(),
        function=fn,
        arguments_model=model,
        parameters=parameters,
        summary_template=summary,
        is_async=inspect.iscoroutinefunction(fn),
        defaults=defaults,
    )
    _check_defaults(made)
    return made


def _default_json(tool_name: str, param: str, default: Any) -> Any:
    """A parameter's default as the JSON value the reviewer is shown."""
    try:
        return strict_json(_dump_json(pydantic_core.to_jsonable_python(default)))
    except (ValueError, pydantic_core.PydanticSerializationError):
        raise ToolDefinitionError(
            f"The default of parameter {param!r} of {tool_name} ({default!r}) cannot be shown "
            "as JSON; use a JSON-like default (a number, string, list, None...)."
        ) from None


def _check_defaults(made: Tool) -> None:
    """Refuse defaults the tool's own validation would refuse if a reviewer approved them."""
    if not made.defaults:
        return
    try:
        made.arguments_model.model_validate_json(_dump_json(made.defaults), strict=True)
    except ValidationError as exc:
        for error in exc.errors():
            loc = error.get("loc") or ("",)
            if error.get("type") != "missing" and loc[0] in made.defaults:
                raise ToolDefinitionError(
                    f"The default of parameter {loc[0]!r} of {made.name} "
                    f"({made.defaults[str(loc[0])]!r}) is not a valid value of its type "
                    f"({error.get('msg')}); fix the default, or annotate it (e.g. `int | None`)."
                ) from None


@runtime_checkable
class Toolset(Protocol):
    """Several tools given as one (an MCP server's :class:`~cheq_jupyter.mcp.McpToolset`)."""

    def cheq_tools(self) -> list[Tool]: ...


def as_tools(items: Iterable[Tool | Callable[..., Any] | Toolset]) -> dict[str, Tool]:
    """Tools by name from functions or :class:`Tool` objects; duplicate names are an error."""
    out: dict[str, Tool] = {}
    for item in _expand(items):
        made = item if isinstance(item, Tool) else _make_tool(
            item, name=None, description=None, summary=None
        )
        if made.name in out:
            raise ToolDefinitionError(_clash(out[made.name], made))
        out[made.name] = made
    return out


def _expand(items: Iterable[Any]) -> Iterable[Any]:
    """Toolsets (e.g. an MCP server's, with ``cheq_tools()``) stand for all their tools."""
    for item in items:
        group = getattr(item, "cheq_tools", None)
        if group is not None and not isinstance(item, Tool) and not callable(item):
            yield from group()
        else:
            yield item


def _clash(first: Tool, second: Tool) -> str:
    if not first.origin and not second.origin:
        return (f"Two tools are named {first.name!r}; give one of them another name with "
                "tool(fn, name=...).")
    where = " and ".join(t.origin or "a Python function" for t in (first, second))
    return (f"Two tools are named {first.name!r} ({where}); give an MCP server a prefix with "
            "name= (e.g. mcp.stdio(..., name='fs2') makes fs2_<tool>), or rename the Python "
            "function with tool(fn, name=...).")


def validate_arguments(schema: Mapping[str, Any], arguments: Any) -> list[str]:
    """Problems of ``arguments`` against a tool's JSON ``schema`` (empty list when valid).

    For approvers that only hold an :class:`~cheq_jupyter.approval.ApprovalRequest`; the loop
    validates again with the tool's pydantic model before the tool runs.
    """
    if not isinstance(arguments, dict):
        return [f"the arguments must be a JSON object, not {type(arguments).__name__}"]
    return _jsonschema.check(dict(schema), arguments)


def tool_result_text(value: Any) -> str:
    """What the model reads back from a tool's return value."""
    if isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    try:
        return json.dumps(value, ensure_ascii=False, default=_jsonable)
    except (TypeError, ValueError):
        return repr(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return str(value)
