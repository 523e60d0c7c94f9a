"""Hostile tool calls from the model: arguments, ids and names, through the real mistralai SDK
against the loopback FakeMistral (which refuses what the real API refuses).

The promise under attack: nothing runs without an approval for exactly the arguments it runs
with, the reviewer sees every argument it runs with, and no model output breaks the
conversation (the model is told what was wrong and the run goes on).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, field_validator

from cheq_jupyter import Decision, Policy, approve_all, run_agent
from cheq_jupyter.approval import ApprovalRequest
from cheq_jupyter.approvers.cheqpoint import CheqpointApprover
from cheq_jupyter.approvers.console import ConsoleApprover
from cheq_jupyter.audit import AuditLog
from cheq_jupyter.card import _default_validator, args_html
from cheq_jupyter.errors import ToolDefinitionError
from cheq_jupyter.testing import FakeCheqpoint, FakeMistral, call, text, tool_call, tool_calls
from cheq_jupyter.tools import Tool, tool

VALID_ID = re.compile(r"[a-zA-Z0-9]{9}")


class Bank:
    """Tools that remember exactly what they ran with."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, dict[str, Any]]] = []

    def transfer(self, to: str, amount: int = 1_000_000) -> str:
        """Transfer money."""
        self.ran.append(("transfer", {"to": to, "amount": amount}))
        return f"sent {amount} to {to}"

    def lookup(self, customer: str) -> str:
        """Look a customer up."""
        self.ran.append(("lookup", {"customer": customer}))
        return f"{customer}: fine"

    def scale(self, factor: float, data: Any = None) -> str:
        """Scale by a factor."""
        self.ran.append(("scale", {"factor": factor, "data": data}))
        return "scaled"

    def tools(self) -> list[Any]:
        return [self.transfer, self.lookup, self.scale]


class Asked:
    """An approver that approves everything and remembers what it was shown."""

    def __init__(self) -> None:
        self.requests: list[ApprovalRequest] = []

    def __call__(self, request: ApprovalRequest) -> Decision:
        self.requests.append(request)
        return Decision.approve(by="test reviewer")


def tool_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in body["messages"] if m["role"] == "tool"]


def run(fake: FakeMistral, bank: Bank, approver: Any, tmp_path: Path | None = None) -> Any:
    recorder = AuditLog(tmp_path / "audit.jsonl") if tmp_path is not None else None
    return run_agent("go", tools=bank.tools(), approver=approver, client=fake.client(),
                     recorder=recorder)


# -- 5. strict model input -------------------------------------------------------------------

DEEP = '{"factor": 1, "data": ' + "[" * 10_000 + "]" * 10_000 + "}"
DEEP_OBJECT = '{"factor": 1, "data": ' + '{"a": ' * 10_000 + "1" + "}" * 10_001

HOSTILE_ARGUMENTS = {
    "NaN": '{"factor": NaN}',
    "Infinity": '{"factor": Infinity}',
    "-Infinity": '{"factor": -Infinity}',
    "1e400": '{"factor": 1e400}',
    "-1e400": '{"factor": -1e400}',
    "1e999 nested": '{"factor": 1, "data": [1e999]}',
    "NaN nested in Any": '{"factor": 1, "data": {"x": NaN}}',
    "int overflowing a float": '{"factor": 1' + "0" * 310 + "}",
    "5000-digit int": '{"factor": 1, "data": ' + "9" * 5000 + "}",
    "10,000-deep list": DEEP,
    "10,000-deep object": DEEP_OBJECT,
    "1,000-deep list": '{"factor": 1, "data": ' + "[" * 1000 + "]" * 1000 + "}",
    "duplicate key": '{"factor": 1, "factor": 1000}',
    "not an object": "[1, 2]",
    "a string": '"factor"',
    "null": "null",
    "truncated": '{"factor": ',
    "trailing garbage": '{"factor": 1} {"factor": 2}',
    "string for float": '{"factor": "2"}',
    "bool for float": '{"factor": true}',
    "unknown argument": '{"factor": 1, "extra": 2}',
}


@pytest.mark.parametrize("logged", [True, False], ids=["audit log on", "audit log off"])
@pytest.mark.parametrize("raw", HOSTILE_ARGUMENTS.values(), ids=HOSTILE_ARGUMENTS.keys())
def test_hostile_arguments_go_back_to_the_model_before_anyone_is_asked(
    raw: str, logged: bool, tmp_path: Path
) -> None:
    bank, asked = Bank(), Asked()
    with FakeMistral([tool_call("scale", raw), text("I could not scale.")]) as fake:
        result = run(fake, bank, asked, tmp_path if logged else None)
    assert asked.requests == []  # no reviewer was ever shown it
    assert bank.ran == []
    assert [status for status, _ in fake.responses] == [200, 200]  # the run went on
    (answer,) = tool_results(fake.requests[1])
    assert answer["content"].startswith("Error: ") and "did not run" in answer["content"]
    assert len(answer["content"]) < 2000  # a sentence, not an echo of the payload
    assert result.tool_calls[0].status == "invalid"
    assert result.text == "I could not scale."
    assert not (tmp_path / "audit.jsonl").exists() or (tmp_path / "audit.jsonl").read_text() == ""


# -- 1. ids and names ------------------------------------------------------------------------

HOSTILE_IDS = {
    "duplicate": ("abcABC123", "abcABC123"),
    "both empty": ("", ""),
    "null text": ("null", "null"),
    "too short": ("abc", "abcABC123"),
    "too long": ("abcABC1234", "abcABC1234"),
    "with a dash": ("abc-ABC12", "abc_ABC12"),
    "unicode digits": ("abcABC\uff11\uff12\uff13", "abcABC123"),
    "zero-width space": ("abcABC12\u200b", "abcABC123"),
    "second repeats first": ("Xy9Xy9Xy9", "Xy9Xy9Xy9"),
}


@pytest.mark.parametrize(("first", "second"), HOSTILE_IDS.values(), ids=HOSTILE_IDS.keys())
def test_hostile_call_ids_keep_the_conversation_valid_and_decisions_bound_by_position(
    first: str, second: str, tmp_path: Path
) -> None:
    bank = Bank()
    shown: list[list[str]] = []

    class ApproveFirstOnly:
        def __call__(self, request: ApprovalRequest) -> Decision:
            raise AssertionError("one turn is decided together")

        def decide_all(self, requests: list[ApprovalRequest]) -> list[Decision]:
            shown.append([r.tool_call_id for r in requests])
            return [Decision.approve(by="test reviewer"), Decision.reject("no", by="test reviewer")]

    script = [
        tool_calls(call("lookup", {"customer": "harmless"}, id=first),
                   call("transfer", {"to": "mallory", "amount": 5}, id=second)),
        text("Looked up; the transfer was refused."),
    ]
    with FakeMistral(script) as fake:
        result = run(fake, bank, ApproveFirstOnly(), tmp_path)
    assert bank.ran == [("lookup", {"customer": "harmless"})]  # only what was approved ran
    assert [status for status, _ in fake.responses] == [200, 200]
    assistant = fake.requests[1]["messages"][-3]
    ids = [c["id"] for c in assistant["tool_calls"]]
    assert all(VALID_ID.fullmatch(i) for i in ids) and len(set(ids)) == 2
    assert [m["tool_call_id"] for m in tool_results(fake.requests[1])] == ids
    assert shown == [ids]  # the approver saw the same ids as the history
    assert [c.status for c in result.tool_calls] == ["ran", "not_approved"]
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(r["tool"], r["status"], r["tool_call_id"]) for r in audit] == [
        ("lookup", "approved", ids[0]), ("transfer", "rejected", ids[1])]


HOSTILE_NAMES = {
    "namespaced": "functions.transfer",
    "trailing space": "transfer ",
    "empty": "",
    "65 characters": "t" * 65,
    "zero-width space": "transfer\u200b",
    "newline": "trans\nfer",
    "path": "../transfer",
    "bidi override": "transfer\u202e",
    "fullwidth": "\uff54\uff52\uff41\uff4e\uff53\uff46\uff45\uff52",
    "valid but unknown": "wire_money",
    "64 characters, unknown": "w" * 64,
}


@pytest.mark.parametrize("name", HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
def test_hostile_tool_names_are_answered_with_an_error_and_the_run_goes_on(name: str) -> None:
    bank, asked = Bank(), Asked()
    script = [
        tool_calls(call(name, {"to": "mallory"}), call("lookup", {"customer": "c1"})),
        text("Done."),
    ]
    with FakeMistral(script) as fake:
        result = run(fake, bank, asked)
    assert [status for status, _ in fake.responses] == [200, 200]  # history stayed valid
    assert bank.ran == [("lookup", {"customer": "c1"})]
    assert [r.action for r in asked.requests] == ["lookup"]  # nobody saw the bad call
    bad, good = tool_results(fake.requests[1])
    assert bad["content"].startswith("Error: There is no tool named")
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", bad["name"])
    sent = fake.requests[1]["messages"][-3]["tool_calls"][0]["function"]["name"]
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", sent)
    assert good["content"] == "c1: fine"
    assert result.text == "Done."


def test_a_namespaced_name_is_told_the_exact_name_to_use() -> None:
    bank = Bank()
    with FakeMistral([tool_call("functions.lookup", {"customer": "c1"}), text("ok")]) as fake:
        run(fake, bank, Asked())
    (answer,) = tool_results(fake.requests[1])
    assert "Call it by its exact name, 'lookup'." in answer["content"]


# -- 2. every argument the tool runs with ----------------------------------------------------

MALLORY = tool_call("transfer", {"to": "mallory"})


def test_the_reviewer_sees_the_defaults_the_tool_will_run_with(tmp_path: Path) -> None:
    bank, asked = Bank(), Asked()
    with FakeMistral([MALLORY, text("sent")]) as fake:
        result = run(fake, bank, asked, tmp_path)
    (request,) = asked.requests
    assert request.details == {"to": "mallory", "amount": 1_000_000}
    assert request.defaulted == ("amount",)
    assert "1000000" in request.summary
    assert bank.ran == [("transfer", {"to": "mallory", "amount": 1_000_000})]
    (line,) = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert json.loads(line)["effective_arguments"] == {"to": "mallory", "amount": 1_000_000}
    assert result.tool_calls[0].effective_arguments == {"to": "mallory", "amount": 1_000_000}


def test_a_policy_predicate_sees_the_default_amount() -> None:
    bank = Bank()
    policy = Policy({"transfer": lambda a: "deny" if a["amount"] > 100 else "approve"})
    with FakeMistral([MALLORY, text("refused")]) as fake:
        result = run(fake, bank, policy)
    assert bank.ran == []
    assert result.tool_calls[0].decision is not None
    assert result.tool_calls[0].decision.status == "rejected"


def test_the_card_marks_defaults_and_escapes_them() -> None:
    request = ApprovalRequest("transfer", "t", {"to": "<b>m</b>", "amount": 1_000_000}, "abcABC123",
                              defaulted=("amount",))
    shown = args_html(request, request.arguments_json())
    assert "cheq-default" in shown and "1000000" in shown and "default" in shown
    assert "<b>m</b>" not in shown and "&lt;b&gt;m&lt;/b&gt;" in shown
    marked = re.search(r"<span class='cheq-default'[^>]*>(.*?)</span>", shown)
    assert marked is not None and "amount" in marked.group(1) and "to" not in marked.group(1)


def test_the_console_shows_the_defaults_as_defaults() -> None:
    bank = Bank()
    out = io.StringIO()
    console = ConsoleApprover(stdin=io.StringIO("r\n\n"), stdout=out)
    with FakeMistral([MALLORY, text("ok")]) as fake:
        run(fake, bank, console)
    shown = out.getvalue()
    assert '"amount": 1000000' in shown
    assert "filled in from the tool's defaults, not sent by the model: amount" in shown


def test_cheqpoint_is_sent_the_defaults_too() -> None:
    bank = Bank()
    with FakeCheqpoint(auto={"transfer": ("REJECTED", None, "no")}) as inbox, \
            FakeMistral([MALLORY, text("ok")]) as fake:
        approver = CheqpointApprover(api_key=inbox.api_key, base_url=inbox.url,
                                     poll_interval=0.02, announce=False)
        run(fake, bank, approver)
    (filed,) = inbox.approvals
    assert filed.details == {"to": "mallory", "amount": 1_000_000}
    assert "defaults used: amount" in filed.summary
    assert bank.ran == []


# -- 3. parameters named like pydantic's own attributes --------------------------------------

PYDANTIC_NAMES = [
    *sorted(n for n in dir(BaseModel) if not n.startswith("__")),
    "_private", "self", "cls", "__x", "fields", "schema_", "p0", "p1",
]


@pytest.mark.parametrize("name", PYDANTIC_NAMES)
def test_a_parameter_named_like_a_pydantic_attribute_gets_exactly_the_approved_value(
    name: str,
) -> None:
    got: list[dict[str, Any]] = []
    namespace: dict[str, Any] = {"got": got, "Any": Any}
    exec(  # a tool whose parameter has that name, as a user would write it
        f"def probe({name}: int, other: str = 'x') -> str:\n"
        f"    got.append({{'{name}': {name}, 'other': other}})\n"
        "    return 'ok'\n",
        namespace,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no pydantic "shadows an attribute" warning either
        made = tool(namespace["probe"])
    assert list(made.parameters["properties"]) == [name, "other"]
    with FakeMistral([tool_call("probe", {name: 7}), text("ok")]) as fake:
        result = run_agent("go", tools=[made], approver=approve_all, client=fake.client())
    assert got == [{name: 7, "other": "x"}]
    assert result.tool_calls[0].status == "ran"
    assert made.check({name: "7"}) != []  # and its validation is the real one


def test_a_default_the_tool_itself_would_refuse_is_refused_at_definition() -> None:
    def sloppy(limit: int = None) -> int:  # type: ignore[assignment]  # noqa: RUF013
        return limit

    with pytest.raises(ToolDefinitionError, match="default of parameter 'limit'"):
        tool(sloppy)


def test_a_positional_only_parameter_is_refused_at_definition() -> None:
    def positional(a: int, /) -> int:
        return a

    with pytest.raises(ToolDefinitionError, match="positional-only"):
        tool(positional)


# -- 4. one validator -------------------------------------------------------------------------


def book(when: dt.date, seats: int, vip: bool = False) -> str:
    """Book seats."""
    return f"{seats} on {when}"


BOOK: Tool = tool(book)
GOOD = {"when": "2030-01-02", "seats": 2}
EDITS = {
    "float for int": {"when": "2030-01-02", "seats": 5.0},
    "words for a date": {"when": "tomorrow", "seats": 2},
    "string for int": {"when": "2030-01-02", "seats": "2"},
    "bool for int": {"when": "2030-01-02", "seats": True},
    "int for bool": {"when": "2030-01-02", "seats": 2, "vip": 1},
    "NaN": {"when": "2030-01-02", "seats": float("nan")},
    "infinity": {"when": "2030-01-02", "seats": float("inf")},
    "unknown key": {"when": "2030-01-02", "seats": 2, "admin": True},
    "missing required": {"when": "2030-01-02"},
    "non-string key": {"when": "2030-01-02", "seats": 2, 1: 2},
    "a list": [["when", "2030-01-02"], ["seats", 2]],
    "impossible date": {"when": "2030-02-30", "seats": 2},
}


@pytest.mark.parametrize("edit", EDITS.values(), ids=EDITS.keys())
def test_the_card_refuses_every_edit_the_call_would_refuse(edit: Any) -> None:
    request = ApprovalRequest("book", "Book", dict(GOOD), "abcABC123", schema=BOOK.parameters,
                              check=BOOK.check)
    assert BOOK.check(edit) != []
    assert _default_validator(request, edit) == BOOK.check(edit)
    assert _default_validator(request, {**GOOD, "seats": 3}) == []


@pytest.mark.parametrize("edit", EDITS.values(), ids=EDITS.keys())
def test_an_approved_invalid_edit_is_recorded_as_not_approved_and_nothing_runs(
    edit: Any, tmp_path: Path
) -> None:
    ran: list[Any] = []

    def book(when: dt.date, seats: int, vip: bool = False) -> str:
        """Book seats."""
        ran.append((when, seats, vip))
        return "booked"

    def approve_edit(request: ApprovalRequest) -> Decision:
        return Decision.approve(by="card", modified_details=edit)

    with FakeMistral([tool_call("book", GOOD), text("not booked")]) as fake:
        result = run_agent("go", tools=[book], approver=approve_edit, client=fake.client(),
                           recorder=AuditLog(tmp_path / "a.jsonl"))
    assert ran == []
    (line,) = (tmp_path / "a.jsonl").read_text().splitlines()
    assert json.loads(line)["status"] == "cancelled"  # the log never says "approved"
    assert json.loads(line)["effective_arguments"] is None
    assert result.tool_calls[0].status == "not_approved"


def test_the_console_treats_1_to_true_as_an_edit() -> None:
    ran: list[Any] = []

    def flag(value: int | bool) -> str:
        """Set a flag."""
        ran.append(value)
        return "set"

    console = ConsoleApprover(stdin=io.StringIO('e\n{"value": true}\n\n'), stdout=io.StringIO())
    with FakeMistral([tool_call("flag", {"value": 1}), text("ok")]) as fake:
        result = run_agent("go", tools=[flag], approver=console, client=fake.client())
    assert ran == [True] and type(ran[0]) is bool
    decision = result.tool_calls[0].decision
    assert decision is not None and decision.modified_details == {"value": True}


def test_cheqpoint_treats_1_to_true_as_an_edit_and_checks_edits_like_the_call() -> None:
    ran: list[Any] = []

    def flag(value: int | bool, seats: int = 1) -> str:
        """Set a flag."""
        ran.append((value, seats))
        return "set"

    with FakeCheqpoint(auto={"flag": ("APPROVED", {"value": True, "seats": 1})}) as inbox, \
            FakeMistral([tool_call("flag", {"value": 1}), text("ok")]) as fake:
        approver = CheqpointApprover(api_key=inbox.api_key, base_url=inbox.url,
                                     poll_interval=0.02, announce=False)
        run_agent("go", tools=[flag], approver=approver, client=fake.client())
    assert ran == [(True, 1)] and type(ran[0][0]) is bool
    with FakeCheqpoint(auto={"flag": ("APPROVED", {"value": 1, "seats": 5.0})}) as inbox, \
            FakeMistral([tool_call("flag", {"value": 1}), text("ok")]) as fake:
        approver = CheqpointApprover(api_key=inbox.api_key, base_url=inbox.url,
                                     poll_interval=0.02, announce=False)
        result = run_agent("go", tools=[flag], approver=approver, client=fake.client())
    assert ran == [(True, 1)]  # 5.0 for an int is refused before it counts
    decision = result.tool_calls[0].decision
    assert decision is not None and decision.status == "cancelled"
    assert "refuses" in (decision.decision_note or "")


def test_a_tool_built_by_hand_also_shows_and_runs_with_its_defaults() -> None:
    got: list[dict[str, Any]] = []

    class Arguments(BaseModel):
        to: str
        amount: int = 1_000_000

    def transfer(to: str, amount: int) -> str:
        got.append({"to": to, "amount": amount})
        return "sent"

    made = Tool("transfer", "Transfer money.", transfer, Arguments,
                Arguments.model_json_schema())
    asked = Asked()
    with FakeMistral([MALLORY, text("sent")]) as fake:
        run_agent("go", tools=[made], approver=asked, client=fake.client())
    assert asked.requests[0].details == {"to": "mallory", "amount": 1_000_000}
    assert asked.requests[0].defaulted == ("amount",)
    assert got == [{"to": "mallory", "amount": 1_000_000}]


class Target(BaseModel):
    account: str

    @field_validator("account")
    @classmethod
    def known(cls, value: str) -> str:
        return {"a1": "a1"}[value]  # KeyError for anything else: a user's bug


def test_a_validator_that_breaks_on_hostile_input_refuses_the_call_and_the_run_goes_on() -> None:
    ran: list[Any] = []

    def pay(target: Target) -> str:
        ran.append(target)
        return "paid"

    asked = Asked()
    with FakeMistral([tool_call("pay", {"target": {"account": "zz"}}), text("ok")]) as fake:
        result = run_agent("go", tools=[pay], approver=asked, client=fake.client())
    assert ran == [] and asked.requests == []
    assert "could not be checked (KeyError" in result.tool_calls[0].result
    assert result.text == "ok"


@pytest.mark.parametrize("template", [
    "Refund {amount:.2f} to {customer}", "Refund {customer.name}",
    "Refund {customer!r:>{amount}}", "Refund {missing}", "Refund {0}", "Refund {customer[a]}",
])
def test_a_summary_template_the_model_values_do_not_fit_falls_back_to_the_plain_summary(
    template: str,
) -> None:
    ran: list[Any] = []

    def refund(customer: str, amount: Any) -> str:
        ran.append((customer, amount))
        return "ok"

    asked = Asked()
    made = tool(refund, summary=template)
    with FakeMistral([tool_call("refund", {"customer": "c1", "amount": "x"}), text("ok")]) as fake:
        run_agent("go", tools=[made], approver=asked, client=fake.client())
    assert asked.requests[0].summary == 'refund(customer="c1", amount="x")'
    assert ran == [("c1", "x")]


@pytest.mark.parametrize("edit", EDITS.values(), ids=EDITS.keys())
def test_the_console_refuses_every_edit_the_call_would_refuse(edit: Any) -> None:
    ran: list[Any] = []

    def book(when: dt.date, seats: int, vip: bool = False) -> str:
        """Book seats."""
        ran.append((when, seats, vip))
        return "booked"

    typed = json.dumps(edit)  # NaN and infinity are typed as NaN / Infinity
    out = io.StringIO()
    # Edit (refused), go back with an empty answer, then reject.
    console = ConsoleApprover(stdin=io.StringIO(f"e\n{typed}\n\n\nr\n\n"), stdout=out)
    with FakeMistral([tool_call("book", GOOD), text("not booked")]) as fake:
        result = run_agent("go", tools=[book], approver=console, client=fake.client())
    assert ran == []
    decision = result.tool_calls[0].decision
    assert decision is not None and decision.status == "rejected"
    shown = out.getvalue()
    assert "do not fit book" in shown or "not valid JSON" in shown
