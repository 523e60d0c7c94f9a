"""Plain functions become tools with a schema the model and the reviewer both rely on."""

from __future__ import annotations

import enum
from typing import Literal

import pytest
from pydantic import BaseModel

from cheq_jupyter.errors import ToolArgumentsError, ToolDefinitionError
from cheq_jupyter.tools import as_tools, tool, tool_result_text, validate_arguments


class Address(BaseModel):
    street: str
    city: str = "Paris"


class Priority(enum.Enum):
    LOW = "low"
    HIGH = "high"


def ship(
    order_id: str,
    quantity: int,
    speed: Literal["standard", "express"] = "standard",
    address: Address | None = None,
    priority: Priority = Priority.LOW,
) -> str:
    """Ship an order to a customer.

    Only for paid orders.

    Args:
        order_id: The order to ship,
            e.g. ord_123.
        quantity (int): How many parcels.
        speed: Delivery speed.
    """
    return f"shipped {order_id}"


def test_schema_has_description_defaults_enums_nested_models_and_param_docs() -> None:
    spec = tool(ship).to_mistral()
    fn = spec["function"]
    assert spec["type"] == "function"
    assert fn["name"] == "ship"
    assert fn["description"] == "Ship an order to a customer.\n\nOnly for paid orders."
    params = fn["parameters"]
    props = params["properties"]
    assert params["required"] == ["order_id", "quantity"]
    assert params["additionalProperties"] is False
    assert props["order_id"]["description"] == "The order to ship, e.g. ord_123."
    assert props["quantity"] == {"type": "integer", "description": "How many parcels."}
    assert props["speed"]["enum"] == ["standard", "express"]
    assert props["speed"]["default"] == "standard"
    assert params["$defs"]["Address"]["required"] == ["street"]
    assert params["$defs"]["Priority"]["enum"] == ["low", "high"]


def test_rest_style_param_docs_are_read() -> None:
    def refund(amount: float) -> None:
        """Refund money.

        :param amount: Amount in euros.
        """

    assert tool(refund).parameters["properties"]["amount"]["description"] == "Amount in euros."


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"quantity": 1}', "missing required argument 'order_id'"),
        ('{"order_id": "o", "quantity": "3"}', "quantity"),
        ('{"order_id": "o", "quantity": 1, "speed": "rocket"}', "speed"),
        ('{"order_id": "o", "quantity": 1, "colour": "red"}', "unexpected argument 'colour'"),
    ],
)
def test_bad_model_arguments_name_the_problem(raw: str, fragment: str) -> None:
    with pytest.raises(ToolArgumentsError) as info:
        tool(ship).parse_arguments(raw)
    assert fragment in str(info.value)
    assert info.value.tool == "ship"


def test_valid_arguments_become_typed_keyword_arguments() -> None:
    t = tool(ship)
    args = t.parse_arguments('{"order_id": "o1", "quantity": 2, "address": {"street": "Rue"}}')
    kwargs = t.call_arguments(args)
    assert kwargs["address"] == Address(street="Rue", city="Paris")
    assert kwargs["priority"] is Priority.LOW
    assert t.function(**kwargs) == "shipped o1"


def test_json_schema_check_agrees_with_the_pydantic_check() -> None:
    t = tool(ship)
    good = {"order_id": "o", "quantity": 1, "priority": "high", "address": None}
    assert validate_arguments(t.parameters, good) == []
    problems = validate_arguments(
        t.parameters, {"order_id": 5, "quantity": True, "speed": "rocket",
                       "address": {"street": 1}, "extra": 1},
    )
    assert problems == [
        "order_id: expected string, got integer",
        "quantity: expected integer, got boolean",
        "speed: 'rocket' is not one of 'standard', 'express'",
        "address.street: expected string, got integer",
        "the arguments: unexpected field 'extra'",
    ]
    assert validate_arguments(t.parameters, [1]) == ["the arguments must be a JSON object, not list"]


def test_summary_template_and_default_summary() -> None:
    t = tool(ship, summary="Ship {quantity} parcel(s) of {order_id}")
    assert t.summarize({"order_id": "o9", "quantity": 3}) == "Ship 3 parcel(s) of o9"
    assert tool(ship).summarize({"order_id": "o9", "quantity": 3}) == 'ship(order_id="o9", quantity=3)'


def test_functions_that_cannot_be_tools_are_refused_clearly() -> None:
    def untyped(x):  # type: ignore[no-untyped-def]
        return x

    def star(*args: int) -> None: ...

    with pytest.raises(ToolDefinitionError, match="has no type hint"):
        tool(untyped)
    with pytest.raises(ToolDefinitionError, match="named parameters"):
        tool(star)
    with pytest.raises(ToolDefinitionError, match="not allowed"):
        tool(ship, name="ship it!")
    with pytest.raises(ToolDefinitionError, match="Two tools are named 'ship'"):
        as_tools([ship, ship])


def test_tool_results_become_text_for_the_model() -> None:
    assert tool_result_text("done") == "done"
    assert tool_result_text({"a": 1}) == '{"a": 1}'
    assert tool_result_text(Address(street="x")) == '{"street":"x","city":"Paris"}'
