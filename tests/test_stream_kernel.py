"""The live cell in a real kernel: streamed words, reasoning, the why on the card, interrupts.

The fake holds the rest of a stream (an Event, not a sleep) while the test looks at what the
cell already shows, as a person would while the model is still writing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cheq_jupyter.testing import FakeMistral, KernelFrontend, text, tool_call
from cheq_jupyter.testing._kernel import Execution

pytestmark = pytest.mark.kernel

SETUP = '''
%load_ext cheq_jupyter
import json
RAN = []
def change_email(account_id: str, new_email: str) -> str:
    """Change the e-mail address of an account."""
    RAN.append({"account_id": account_id, "new_email": new_email})
    return f"{account_id} now uses {new_email}"
'''

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
ANSWER = ("The first words arrive before the rest, and the rest keeps coming while you read: "
          "this answer is long enough to need " + " ".join(f"word{i}" for i in range(120)) + ".")
CHANGE = {"account_id": "acct_1", "new_email": "ada@new.example"}


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KernelFrontend]:
    with KernelFrontend(cwd=str(tmp_path_factory.mktemp("nb"))) as k:
        result = k.execute(SETUP)
        assert result.status == "ok", result.error
        yield k


def use(kernel: KernelFrontend, fake: FakeMistral) -> None:
    result = kernel.execute(
        f"import os\nos.environ['MISTRAL_API_KEY'] = {fake.api_key!r}\n"
        f"os.environ['MISTRAL_SERVER_URL'] = {fake.url!r}\nRAN.clear()"
    )
    assert result.status == "ok", result.error


def shown(running: Execution) -> list[dict[str, Any]]:
    """The bundles the cell has sent so far (displays and their updates), in order."""
    return [c.get("data", {}) for t, c in running.outputs
            if t in ("display_data", "update_display_data")]


def visible_html(running: Execution) -> str:
    return "".join(d.get("text/html", "") for d in shown(running))


def test_the_first_words_are_in_the_cell_while_the_model_is_still_writing(
    kernel: KernelFrontend,
) -> None:
    thinking = "Three <b>short</b> words."
    with FakeMistral([text(ANSWER, thinking=thinking)]) as fake:
        use(kernel, fake)
        # Event 0 is the role, 1-3 the thinking, 4-5 the first two words of the answer.
        hold = fake.hold(after=6)
        started = time.monotonic()
        running = kernel.execute_async("%%mistral_agent -o res\nSay something long")
        hold.wait_reached()
        kernel.wait_until(lambda: "The first " in visible_html(running), what="the first words")
        assert not running.done
        assert "word1" not in visible_html(running)  # the rest is still held by the fake
        reasoning = [d["text/html"] for d in shown(running)
                     if "cheq-reasoning" in d.get("text/html", "")]
        assert reasoning and reasoning[-1].startswith("<details class='cheq-reasoning'>")
        assert "&lt;b&gt;short&lt;/b&gt;" in reasoning[-1] and "<b>short" not in reasoning[-1]
        hold.release()
        result = running.wait()
        elapsed = time.monotonic() - started
    assert result.status == "ok", result.error
    # The answer ends exact, as Markdown, once (the live display became it).
    assert [d["text/markdown"] for d in result.displays if "text/markdown" in d] == [ANSWER]
    # Coalesced: ~125 text deltas cost at most 15 updates a second (+ the first and last).
    live = [d for d in result.displays if "cheq-live" in d.get("text/html", "")]
    assert 1 <= len(live) <= 15 * elapsed + 2
    usage = kernel.execute("print(res.usage.total_tokens)").stdout.strip()
    assert int(usage) == fake.usage_totals()["total_tokens"]
    status = [d["text/plain"] for d in result.displays if "tokens" in d.get("text/plain", "")]
    assert status and f"{int(usage):,} tokens" in status[-1]


def test_an_interrupt_mid_stream_keeps_the_words_runs_nothing_and_can_be_continued(
    kernel: KernelFrontend,
) -> None:
    said = "I will change the address of acct_1 to ada@new.example right away, as asked."
    script = [tool_call("change_email", CHANGE, content=said), text("All right, I stopped.")]
    with FakeMistral(script) as fake:
        use(kernel, fake)
        hold = fake.hold(after=4)  # the role and "I will change "
        running = kernel.execute_async("%%mistral_agent -t change_email -o res\nChange it")
        hold.wait_reached()
        kernel.wait_until(lambda: "I will change " in visible_html(running),
                          what="the first words")
        kernel.interrupt()
        result = running.wait()
        hold.release()
        fake.wait_cut_streams(1)  # the kernel closed the HTTP response
        assert result.status == "error" and result.error is not None
        assert result.error["ename"] == "KeyboardInterrupt"
        assert "I will change " in visible_html(running)  # the partial text stays visible
        assert not [d for d in result.displays if WIDGET_VIEW in d]  # no card, nothing to run
        check = kernel.execute("print(res.stop_reason, json.dumps(res.messages[-1]), RAN)")
        assert check.stdout == (
            'interrupted {"role": "assistant", "content": "I will change "} []\n')
        later = kernel.execute("%%mistral_agent -t change_email --continue res -o res2\nStop.")
        assert later.status == "ok", later.error
    assert fake.responses[-1][0] == 200  # the continued conversation passed the API's rules
    assert kernel.execute("print(res2.text, RAN)").stdout == "All right, I stopped. []\n"


def test_the_card_shows_the_models_why_and_the_decision_is_recorded_once(
    kernel: KernelFrontend,
) -> None:
    script = [tool_call("change_email", CHANGE, content="You asked for <b>the new</b> address.",
                        thinking="acct_1 is the account <i>named</i>."),
              text("Done.")]
    with FakeMistral(script) as fake:
        use(kernel, fake)
        running = kernel.execute_async("%%mistral_agent -t change_email\nChange it")
        (card,) = kernel.wait_for_cards(1, execution=running)
        header = card.html
        assert "The model says:" in header
        assert "You asked for &lt;b&gt;the new&lt;/b&gt; address." in header
        assert "<details class='cheq-why-reasoning'>" in header
        assert "acct_1 is the account &lt;i&gt;named&lt;/i&gt;." in header
        assert "<b>the new" not in header and "<i>named" not in header
        card.click("cheq-approve")
        result = running.wait()
    assert result.status == "ok", result.error
    records = [d for d in result.displays if "cheq-record" in d.get("text/html", "")]
    # One record, and it is the fallback of the card's own display (widget view + HTML).
    assert len(records) == 1 and WIDGET_VIEW in records[0]
    assert not [h for h in result.html if "cheq-decision" in h]
    assert json.loads(kernel.execute("print(json.dumps(RAN))").stdout) == [CHANGE]
