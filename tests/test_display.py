"""What a %%mistral_agent cell renders: escaped, collapsed when long, readable."""

from __future__ import annotations

import unicodedata

import pytest
from pydantic import BaseModel

from cheq_jupyter.agent import ToolCallRecord
from cheq_jupyter.approval import ApprovalRequest, Decision
from cheq_jupyter.display import (
    COLLAPSE_AFTER,
    NotebookEvents,
    escape_markdown,
    render_output,
    render_reasoning,
    render_tool_result,
)


def record(result: str, status: str = "ran") -> ToolCallRecord:
    return ToolCallRecord(id="abcdefghi", name="fetch", step=1, raw_arguments="{}",
                          status=status, result=result)  # type: ignore[arg-type]


def test_short_tool_results_are_shown_escaped() -> None:
    shown = render_tool_result(record('<img src=x onerror="alert(1)">'))
    assert "<img" not in shown["text/html"]
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in shown["text/html"]
    assert "<details>" not in shown["text/html"]
    assert shown["text/plain"].startswith("✓ fetch ran: <img")


def test_long_tool_results_are_collapsed() -> None:
    long = "x" * (COLLAPSE_AFTER + 50)
    shown = render_tool_result(record(long, status="failed"))
    assert shown["text/html"].count("<details>") == 1
    assert f"{len(long)} characters (click to expand)" in shown["text/html"]
    assert shown["text/plain"].endswith("…") and "raised an error" in shown["text/plain"]


def test_markdown_answer_keeps_formatting_but_not_raw_html() -> None:
    text = "**Done** <script>steal()</script> & `code`"
    assert escape_markdown(text) == "**Done** &lt;script&gt;steal()&lt;/script&gt; &amp; `code`"


def test_extracted_object_is_a_table_with_escaped_values() -> None:
    class Contact(BaseModel):
        name: str
        email: str

    shown = render_output(Contact(name="<b>Ada</b>", email="ada@example.com"))
    assert "<b>Ada</b>" not in shown["text/html"]
    assert "&quot;&lt;b&gt;Ada&lt;/b&gt;&quot;" in shown["text/html"]
    assert "<th style='text-align:left;padding-right:1em'>email</th>" in shown["text/html"]
    assert shown["text/plain"] == "Contact(name='<b>Ada</b>', email='ada@example.com')"


def test_a_rejected_call_reads_as_what_happened_and_keeps_the_model_message_one_click_away() -> None:
    rejected = record("Not approved: the reviewer rejected this call, so it did not run. Do not "
                      "retry it; tell the user what was not done and why.", status="not_approved")
    rejected.decision = Decision.reject("wrong customer", by="card")
    shown = render_tool_result(rejected)
    head, _, rest = shown["text/html"].partition("</b>")
    assert "fetch did not run: rejected by card (note: wrong customer)" in head
    assert "Do not retry" not in head  # the line for the person is not the text for the model
    assert "<summary>The message sent to the model</summary>" in rest
    assert "Do not retry it; tell the user" in rest


def test_status_symbols_are_plain_text_not_emoji() -> None:
    for status in ("ran", "failed", "not_approved", "invalid"):
        line = render_tool_result(record("x", status=status))["text/plain"]
        symbol = line[0]
        # Emoji presentation (U+1F300.., ✅ ⛔ ⏳, or a variation selector) needs an emoji
        # font; these text symbols are in DejaVu Sans, which every Linux desktop has.
        assert symbol in "✓✗⊘⚠" and "\ufe0f" not in line
        assert unicodedata.category(symbol) in ("So", "Sm")


def test_reasoning_is_collapsed_and_escaped_never_markdown() -> None:
    shown = render_reasoning("I should **not** <script>x()</script> run it", done=True)
    assert "text/markdown" not in shown
    assert shown["text/html"].startswith("<details class='cheq-reasoning'><summary>Reasoning")
    assert "<script>" not in shown["text/html"] and "&lt;script&gt;" in shown["text/html"]


def test_a_decision_shown_on_a_card_is_not_repeated_below_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    request = ApprovalRequest(action="refund", summary="refund c1", details={},
                              tool_call_id="abcdefghi")
    decision = Decision.reject("wrong customer", by="cheqpoint")  # won a race with the card
    NotebookEvents(approver_name="card+cheqpoint", on_card=lambda r: True).decided(
        [request], [decision])
    assert capsys.readouterr().out == ""
    NotebookEvents(approver_name="cheqpoint", on_card=lambda r: False).decided(
        [request], [decision])
    assert "refund: rejected by cheqpoint" in capsys.readouterr().out


def test_an_edited_call_shows_what_the_tool_returned_and_the_model_note_one_click_away() -> None:
    ran = record('(The reviewer edited the arguments before approving; the call ran with '
                 '{"amount": 5}.) refunded 5')
    ran.value = "refunded 5"
    ran.decision = Decision.approve(by="card", modified_details={"amount": 5})
    shown = render_tool_result(ran)["text/html"]
    head, _, rest = shown.partition("<details")
    assert "✓ fetch ran with the edited arguments" in head and "refunded 5" in head
    assert "The reviewer edited" not in head and "The reviewer edited" in rest
