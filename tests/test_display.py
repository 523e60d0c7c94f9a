"""What a %%mistral_agent cell renders: escaped, collapsed when long, readable."""

from __future__ import annotations

from pydantic import BaseModel

from cheq_jupyter.agent import ToolCallRecord
from cheq_jupyter.display import COLLAPSE_AFTER, escape_markdown, render_output, render_tool_result


def record(result: str, status: str = "ran") -> ToolCallRecord:
    return ToolCallRecord(id="abcdefghi", name="fetch", step=1, raw_arguments="{}",
                          status=status, result=result)  # type: ignore[arg-type]


def test_short_tool_results_are_shown_escaped() -> None:
    shown = render_tool_result(record('<img src=x onerror="alert(1)">'))
    assert "<img" not in shown["text/html"]
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in shown["text/html"]
    assert "<details>" not in shown["text/html"]
    assert shown["text/plain"].startswith("✅ fetch ran: <img")


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
