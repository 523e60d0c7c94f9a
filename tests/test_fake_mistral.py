"""FakeMistral driven by the REAL mistralai SDK (1.x or 3.x): wire format, refusals, scripts.

Runs with whichever SDK is installed; CI also runs it in a mistralai 1.x environment.
"""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from cheq_jupyter.testing import (
    FakeMistral,
    FakeMistralScriptError,
    call,
    demo_responder,
    http_error,
    json_reply,
    scenarios,
    text,
    tool_call,
    tool_calls,
)
from cheq_jupyter.testing._fake_mistral import REQUEST_FIELDS


def _sdk() -> dict[str, Any]:
    """The SDK's classes, wherever this version keeps them."""
    try:
        from mistralai.client import Mistral, errors, models, utils

        return {
            "Mistral": Mistral,
            "MistralError": errors.MistralError,
            "SDKError": errors.SDKError,
            "HTTPValidationError": errors.HTTPValidationError,
            "RetryConfig": utils.RetryConfig,
            "BackoffStrategy": utils.BackoffStrategy,
            "ChatCompletionRequest": models.ChatCompletionRequest,
        }
    except ImportError:
        import mistralai
        from mistralai import models, utils

        return {
            "Mistral": mistralai.Mistral,
            "MistralError": models.MistralError,
            "SDKError": models.SDKError,
            "HTTPValidationError": models.HTTPValidationError,
            "RetryConfig": utils.RetryConfig,
            "BackoffStrategy": utils.BackoffStrategy,
            "ChatCompletionRequest": models.ChatCompletionRequest,
        }


SDK = _sdk()
MistralError: type[Exception] = SDK["MistralError"]
MODEL = "mistral-small-latest"
ID_RE = re.compile(r"[a-zA-Z0-9]{9}")

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
USER = {"role": "user", "content": "Weather in Paris and Rome?"}


def _assistant_calls(*ids: str) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": i,
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
            }
            for i in ids
        ],
    }


def _tool(call_id: str | None, content: str = "sunny") -> dict[str, Any]:
    message: dict[str, Any] = {"role": "tool", "name": "get_weather", "content": content}
    if call_id is not None:
        message["tool_call_id"] = call_id
    return message


def _error_body(exc: Any) -> Any:
    return json.loads(exc.body)


def _post(
    fake: FakeMistral,
    body: bytes | dict[str, Any],
    *,
    key: str | None = "__fake__",
    path: str = "/v1/chat/completions",
    method: str = "POST",
) -> tuple[int, dict[str, Any]]:
    """A raw HTTP request (for what the SDK cannot send), returning (status, JSON body)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        fake.url + path, data=data if method == "POST" else None, method=method
    )
    request.add_header("Content-Type", "application/json")
    if key is not None:
        request.add_header("Authorization", f"Bearer {fake.api_key if key == '__fake__' else key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def weather_fake() -> Iterator[FakeMistral]:
    with FakeMistral([text("It is sunny.")]) as fake:
        yield fake


# ---------------------------------------------------------------------------------------------
# Successful answers in Mistral's wire format.
# ---------------------------------------------------------------------------------------------


def test_text_answer_has_mistral_shape_and_is_recorded() -> None:
    with FakeMistral([text("Bonjour !")]) as fake:
        reply = fake.client().chat.complete(
            model=MODEL, messages=[{"role": "user", "content": "Salut"}]
        )
        assert reply.choices[0].message.content == "Bonjour !"
        assert reply.choices[0].finish_reason == "stop"
        assert reply.model == MODEL
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
        status, body = fake.responses[0]
        assert status == 200
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["tool_calls"] is None
        assert fake.requests[0]["messages"] == [{"role": "user", "content": "Salut"}]
        assert fake.remaining == 0
        fake.check(all_used=True)


def test_text_turn_can_end_with_length() -> None:
    with FakeMistral([text("Trunc", finish_reason="length")]) as fake:
        reply = fake.client().chat.complete(model=MODEL, messages=[USER])
    assert reply.choices[0].finish_reason == "length"


def test_tool_call_wire_format() -> None:
    with FakeMistral([tool_call("get_weather", {"city": "Paris"})]) as fake:
        reply = fake.client().chat.complete(model=MODEL, messages=[USER], tools=[WEATHER])
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content == ""
        (sent,) = choice.message.tool_calls
        assert ID_RE.fullmatch(sent.id)
        assert sent.function.name == "get_weather"
        assert isinstance(sent.function.arguments, str)
        assert json.loads(sent.function.arguments) == {"city": "Paris"}
        raw_call = fake.responses[0][1]["choices"][0]["message"]["tool_calls"][0]
        assert raw_call["type"] == "function"


def test_sdk_round_trip_of_its_own_assistant_message_is_accepted() -> None:
    script = [tool_call("get_weather", {"city": "Paris"}), text("Sunny in Paris.")]
    with FakeMistral(script) as fake:
        client = fake.client()
        first = client.chat.complete(model=MODEL, messages=[USER], tools=[WEATHER])
        assistant = first.choices[0].message
        messages = [USER, assistant, _tool(assistant.tool_calls[0].id)]
        second = client.chat.complete(model=MODEL, messages=messages, tools=[WEATHER])
        assert second.choices[0].message.content == "Sunny in Paris."
        assert [status for status, _ in fake.responses] == [200, 200]


def test_parallel_calls_need_one_result_each() -> None:
    script = [
        tool_calls(
            call("get_weather", {"city": "Paris"}),
            call("get_weather", {"city": "Rome"}, id="abcDEF123"),
        ),
        text("Both sunny."),
    ]
    with FakeMistral(script) as fake:
        client = fake.client()
        assistant = (
            client.chat.complete(model=MODEL, messages=[USER], tools=[WEATHER]).choices[0].message
        )
        first, second = assistant.tool_calls
        assert second.id == "abcDEF123"
        assert ID_RE.fullmatch(first.id) and first.id != second.id
        assert [json.loads(c.function.arguments)["city"] for c in (first, second)] == [
            "Paris",
            "Rome",
        ]

        with pytest.raises(MistralError) as refused:
            client.chat.complete(
                model=MODEL, messages=[USER, assistant, _tool(first.id)], tools=[WEATHER]
            )
        assert refused.value.status_code == 400
        assert (
            _error_body(refused.value)["message"]
            == "Not the same number of function calls and responses"
        )
        assert fake.remaining == 1  # the refused request used no turn

        reply = client.chat.complete(
            model=MODEL,
            messages=[USER, assistant, _tool(first.id), _tool(second.id, "cloudy")],
            tools=[WEATHER],
        )
        assert reply.choices[0].message.content == "Both sunny."


def test_raw_argument_string_is_sent_verbatim() -> None:
    with FakeMistral([tool_call("get_weather", '{"city": "Par')]) as fake:
        reply = fake.client().chat.complete(model=MODEL, messages=[USER], tools=[WEATHER])
    assert reply.choices[0].message.tool_calls[0].function.arguments == '{"city": "Par'


class City(BaseModel):
    name: str
    population: int


def test_json_reply_feeds_the_sdks_structured_output() -> None:
    script = [json_reply({"name": "Paris", "population": 2102650}), json_reply("{not json")]
    with FakeMistral(script) as fake:
        client = fake.client()
        parsed = client.chat.parse(City, model=MODEL, messages=[USER])
        assert parsed.choices[0].message.parsed == City(name="Paris", population=2102650)
        schema_format = fake.requests[0]["response_format"]
        assert schema_format["type"] == "json_schema"
        assert schema_format["json_schema"]["schema"]["additionalProperties"] is False
        raw = client.chat.complete(model=MODEL, messages=[USER])
        assert raw.choices[0].message.content == "{not json"


def test_every_option_both_sdks_send_is_accepted() -> None:
    with FakeMistral([text("ok")]) as fake:
        reply = fake.client().chat.complete(
            model=MODEL,
            messages=[{"role": "system", "content": "Be brief."}, USER],
            temperature=0.2,
            top_p=0.9,
            max_tokens=50,
            random_seed=7,
            stop=["\n\n"],
            presence_penalty=0.1,
            frequency_penalty=0.1,
            n=1,
            tools=[WEATHER],
            tool_choice="auto",
            parallel_tool_calls=True,
            safe_prompt=False,
        )
        assert reply.choices[0].message.content == "ok", fake.responses


def test_allow_list_covers_the_installed_sdks_request_model() -> None:
    model = SDK["ChatCompletionRequest"]
    fields = {f.alias or name for name, f in model.model_fields.items()}
    assert fields <= REQUEST_FIELDS, fields - REQUEST_FIELDS


def test_concurrent_requests_each_get_their_own_turn() -> None:
    replies: list[str] = []
    lock = threading.Lock()
    with FakeMistral([text(f"answer {i}") for i in range(4)]) as fake:

        def ask() -> None:
            content = (
                fake.client().chat.complete(model=MODEL, messages=[USER]).choices[0].message.content
            )
            with lock:
                replies.append(content)

        threads = [threading.Thread(target=ask) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not any(t.is_alive() for t in threads)
    assert sorted(replies) == [f"answer {i}" for i in range(4)]


# ---------------------------------------------------------------------------------------------
# Refusals: the real API's status codes and bodies.
# ---------------------------------------------------------------------------------------------

ID_MESSAGE = "Tool call id was {} but must be a-z, A-Z, 0-9, with a length of 9."


@pytest.mark.parametrize(
    ("messages", "message", "kind", "code"),
    [
        pytest.param(
            [USER, _assistant_calls("call_1"), _tool("call_1")],
            ID_MESSAGE.format("call_1"),
            "invalid_function_call",
            "3280",
            id="bad-id-in-assistant-call",
        ),
        pytest.param(
            [USER, _assistant_calls("abcDEF123"), _tool("abcDEF12")],
            ID_MESSAGE.format("abcDEF12"),
            "invalid_function_call",
            "3280",
            id="bad-id-in-tool-message",
        ),
        pytest.param(
            [USER, _assistant_calls("abcDEF123"), _tool(None)],
            "Tool call id has to be defined.",
            "invalid_function_call",
            "3280",
            id="tool-message-without-id",
        ),
        pytest.param(
            [USER, {"role": "assistant", "content": "Hello"}],
            "Expected last role User or Tool (or Assistant with prefix True) for serving but got assistant",
            "invalid_request_message_order",
            "3230",
            id="last-role-assistant",
        ),
        pytest.param(
            [USER, _assistant_calls("abcDEF123"), _tool("abcDEF123"), USER],
            "Unexpected role 'user' after role 'tool'",
            "invalid_request_message_order",
            "3230",
            id="user-after-tool",
        ),
        pytest.param(
            [USER, _assistant_calls("abcDEF123", "ghiJKL456"), _tool("abcDEF123")],
            "Not the same number of function calls and responses",
            "invalid_request_message_order",
            "3230",
            id="missing-result",
        ),
        pytest.param(
            [USER, _assistant_calls("abcDEF123"), _tool("zzzZZZ999")],
            "Unexpected tool call id zzzZZZ999 in tool results",
            "invalid_request_message_order",
            "3230",
            id="result-for-unknown-call",
        ),
        pytest.param(
            [USER, _assistant_calls("abcDEF123"), _tool("abcDEF123"), _tool("abcDEF123")],
            "Duplicate tool call id abcDEF123 in tool results",
            "invalid_request_message_order",
            "3230",
            id="duplicate-result",
        ),
    ],
)
def test_conversation_refusals(
    messages: list[dict[str, Any]], message: str, kind: str, code: str
) -> None:
    with FakeMistral([text("never sent")]) as fake:
        with pytest.raises(SDK["SDKError"]) as refused:
            fake.client().chat.complete(model=MODEL, messages=messages, tools=[WEATHER])
        assert refused.value.status_code == 400
        assert _error_body(refused.value) == {
            "object": "error",
            "message": message,
            "type": kind,
            "param": None,
            "code": code,
        }
        assert fake.remaining == 1
        assert fake.responses[-1][0] == 400


def test_sdk_default_call_id_is_refused() -> None:
    # An assistant message rebuilt without ids: the SDK fills in its default "null".
    assistant = {
        "role": "assistant",
        "tool_calls": [{"function": {"name": "get_weather", "arguments": "{}"}}],
    }
    with FakeMistral([text("never sent")]) as fake, pytest.raises(MistralError) as refused:
        fake.client().chat.complete(
            model=MODEL, messages=[USER, assistant, _tool("abcDEF123")], tools=[WEATHER]
        )
    assert fake.requests[0]["messages"][1]["tool_calls"][0]["id"] == "null"
    assert (
        _error_body(refused.value)["message"] == "Tool call id has to be defined in serving mode."
    )


def test_assistant_prefix_may_end_the_conversation() -> None:
    with FakeMistral([text(" world")]) as fake:
        reply = fake.client().chat.complete(
            model=MODEL, messages=[USER, {"role": "assistant", "content": "Hello", "prefix": True}]
        )
    assert reply.choices[0].message.content == " world"


def test_bad_function_name_in_tools_is_refused() -> None:
    bad = {"type": "function", "function": {"name": "get weather!", "parameters": {}}}
    with FakeMistral([text("never sent")]) as fake, pytest.raises(MistralError) as refused:
        fake.client().chat.complete(model=MODEL, messages=[USER], tools=[bad])
    body = _error_body(refused.value)
    assert refused.value.status_code == 400
    assert body["message"].startswith("Function name was get weather! but must be a-z")
    assert body["type"] == "invalid_request_error"


def test_json_schema_with_tools_is_refused() -> None:
    with FakeMistral([text("never sent")]) as fake, pytest.raises(MistralError) as refused:
        fake.client().chat.parse(City, model=MODEL, messages=[USER], tools=[WEATHER])
    assert refused.value.status_code == 400
    assert "cannot be used together with tools" in _error_body(refused.value)["message"]


def test_json_schema_format_without_schema_is_refused() -> None:
    with FakeMistral([text("never sent")]) as fake:
        with pytest.raises(MistralError) as refused:
            fake.client().chat.complete(
                model=MODEL, messages=[USER], response_format={"type": "json_schema"}
            )
        assert refused.value.status_code == 400
        assert "needs a json_schema object" in _error_body(refused.value)["message"]
        status, body = _post(
            fake,
            {
                "model": MODEL,
                "messages": [USER],
                "response_format": {"type": "json_schema", "json_schema": {"name": "X"}},
            },
        )
    assert status == 422
    assert body["detail"][0]["loc"] == ["body", "response_format", "json_schema", "schema"]


def test_wrong_key_is_401_through_the_sdk(weather_fake: FakeMistral) -> None:
    client = SDK["Mistral"](api_key="not-the-key", server_url=weather_fake.url)
    with pytest.raises(SDK["SDKError"]) as refused:
        client.chat.complete(model=MODEL, messages=[USER])
    assert refused.value.status_code == 401
    assert _error_body(refused.value) == {"detail": "Unauthorized"}
    assert weather_fake.remaining == 1


def test_http_level_refusals(weather_fake: FakeMistral) -> None:
    body = {"model": MODEL, "messages": [USER]}
    assert _post(weather_fake, body, key=None) == (401, {"detail": "Unauthorized"})
    assert _post(weather_fake, body, path="/v1/chat/complete") == (404, {"detail": "Not Found"})
    assert _post(weather_fake, b"", method="GET") == (405, {"detail": "Method Not Allowed"})
    status, error = _post(weather_fake, b"{not json")
    assert status == 400
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("Request body is not valid JSON")
    assert weather_fake.remaining == 1
    assert _post(weather_fake, body)[0] == 200


def test_unknown_field_is_422_extra_forbidden_and_the_sdk_parses_it(
    weather_fake: FakeMistral,
) -> None:
    status, body = _post(
        weather_fake,
        {"model": MODEL, "messages": [USER], "max_completion_tokens": 5, "store": False},
    )
    assert status == 422
    assert body == {
        "detail": [
            {
                "type": "extra_forbidden",
                "loc": ["body", "max_completion_tokens"],
                "msg": "Extra inputs are not permitted",
                "input": 5,
            },
            {
                "type": "extra_forbidden",
                "loc": ["body", "store"],
                "msg": "Extra inputs are not permitted",
                "input": False,
            },
        ]
    }
    assert weather_fake.requests[-1]["store"] is False  # refused requests are recorded too
    # The same body, replayed through the SDK, becomes its typed validation error.
    replay = FakeMistral([http_error(422, body)])
    with replay, pytest.raises(SDK["HTTPValidationError"]) as refused:
        replay.client().chat.complete(model=MODEL, messages=[USER])
    assert refused.value.data.detail[0].loc == ["body", "max_completion_tokens"]


def test_stream_true_is_answered_with_server_sent_events(weather_fake: FakeMistral) -> None:
    request = urllib.request.Request(
        weather_fake.url + "/v1/chat/completions",
        data=json.dumps({"model": MODEL, "messages": [USER], "stream": True}).encode(),
        method="POST",
    )
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", f"Bearer {weather_fake.api_key}")
    with urllib.request.urlopen(request, timeout=10) as response:
        kind = response.headers["Content-Type"]
        raw = response.read().decode()
    assert kind == "text/event-stream"
    blocks = raw.split("\n\n")
    assert blocks[-2:] == ["data: [DONE]", ""]
    events = [json.loads(b.removeprefix("data: ")) for b in blocks[:-2]]
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [e["choices"][0]["finish_reason"] for e in events[:-1]] == [None] * (len(events) - 1)
    last = events[-1]
    assert last["choices"][0]["finish_reason"] == "stop"
    assert set(last["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert "".join(e["choices"][0]["delta"]["content"] for e in events) == "It is sunny."
    assert len(events) > 3  # word by word, not one delta
    assert "usage" not in events[0]


# ---------------------------------------------------------------------------------------------
# Scripted HTTP errors, retries, script problems.
# ---------------------------------------------------------------------------------------------


def test_rate_limit_surfaces_as_sdk_error_with_mistral_body() -> None:
    with FakeMistral([http_error(429)]) as fake, pytest.raises(SDK["SDKError"]) as refused:
        fake.client().chat.complete(model=MODEL, messages=[USER])
    assert refused.value.status_code == 429
    assert _error_body(refused.value) == {
        "object": "error",
        "message": "Rate limit exceeded",
        "type": "rate_limited",
        "param": None,
        "code": "1300",
    }


def test_rate_limit_then_success_with_the_sdks_retry_config() -> None:
    retry = SDK["RetryConfig"]("backoff", SDK["BackoffStrategy"](1, 5, 1.1, 5000), False)
    with FakeMistral([http_error(429), http_error(503), text("made it")]) as fake:
        reply = fake.client(retry_config=retry).chat.complete(model=MODEL, messages=[USER])
        assert reply.choices[0].message.content == "made it"
        assert [status for status, _ in fake.responses] == [429, 503, 200]
        assert len(fake.requests) == 3


def test_http_error_headers_are_sent() -> None:
    fake = FakeMistral([http_error(500, {"detail": "boom"}, headers={"X-Trace": "t1"})])
    with fake, pytest.raises(SDK["SDKError"]) as refused:
        fake.client().chat.complete(model=MODEL, messages=[USER])
    assert refused.value.headers["x-trace"] == "t1"
    assert _error_body(refused.value) == {"detail": "boom"}


def test_exhausted_script_is_a_loud_500() -> None:
    with FakeMistral([text("only one")]) as fake:
        client = fake.client()
        client.chat.complete(model=MODEL, messages=[USER])
        assert not fake.exhausted
        with pytest.raises(SDK["SDKError"]) as refused:
            client.chat.complete(model=MODEL, messages=[USER])
        assert refused.value.status_code == 500
        assert "FakeMistral script is exhausted" in _error_body(refused.value)["message"]
        assert fake.exhausted
        with pytest.raises(FakeMistralScriptError, match="exhausted"):
            fake.check()


def test_unused_turns_fail_check_all_used() -> None:
    with FakeMistral([text("a"), text("b")]) as fake:
        fake.client().chat.complete(model=MODEL, messages=[USER])
        fake.check()
        with pytest.raises(FakeMistralScriptError, match="1 scripted turn"):
            fake.check(all_used=True)


@pytest.mark.parametrize(
    ("turn", "kwargs", "problem"),
    [
        (
            tool_call("get_weather", {"city": "Paris"}),
            {"tools": [WEATHER], "tool_choice": "none"},
            "tool_choice is 'none'",
        ),
        (tool_call("get_weather", {"city": "Paris"}), {}, "offered no tools"),
        (text("hi"), {"tools": [WEATHER], "tool_choice": "any"}, "requires a tool call"),
    ],
)
def test_script_turn_impossible_for_the_request(
    turn: Any, kwargs: dict[str, Any], problem: str
) -> None:
    with FakeMistral([turn]) as fake:
        with pytest.raises(SDK["SDKError"]) as refused:
            fake.client().chat.complete(model=MODEL, messages=[USER], **kwargs)
        assert refused.value.status_code == 500
        assert problem in _error_body(refused.value)["message"]
        with pytest.raises(FakeMistralScriptError, match=re.escape(problem)):
            fake.check()


def test_responder_sees_each_valid_request() -> None:
    seen: list[int] = []

    def responder(body: dict[str, Any]) -> Any:
        seen.append(len(body["messages"]))
        return text(f"{len(body['messages'])} messages")

    with FakeMistral(responder, api_key="k-test") as fake:
        assert fake.api_key == "k-test"
        reply = fake.client().chat.complete(model=MODEL, messages=[USER])
        assert fake.remaining is None
    assert reply.choices[0].message.content == "1 messages"
    assert seen == [1]


def test_close_frees_the_port_and_is_idempotent() -> None:
    fake = FakeMistral([text("x")]).start()
    host, port = fake.url.removeprefix("http://").split(":")
    fake.client().chat.complete(model=MODEL, messages=[USER])  # leaves a keep-alive connection
    fake.close()
    fake.close()
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2).close()
    with pytest.raises(RuntimeError, match="not running"):
        _ = fake.url


def test_bad_script_items_are_refused_early() -> None:
    with pytest.raises(TypeError, match="script items must be turns"):
        FakeMistral(["hello"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="4xx or 5xx"):
        http_error(200)


# ---------------------------------------------------------------------------------------------
# The offline demo model.
# ---------------------------------------------------------------------------------------------

LOOKUP = {
    "type": "function",
    "function": {
        "name": "lookup_account",
        "description": "Find the customer account registered under an e-mail address.",
        "parameters": {
            "type": "object",
            "properties": {"email": {"type": "string"}},
            "required": ["email"],
        },
    },
}
CHANGE = {
    "type": "function",
    "function": {
        "name": "change_account_email",
        "description": "Change the e-mail address of an account.",
        "parameters": {
            "type": "object",
            "properties": {"account_id": {"type": "string"}, "new_email": {"type": "string"}},
            "required": ["account_id", "new_email"],
        },
    },
}
ACCOUNTS = {"ada@old-mail.com": "acct_1042", "alan@example.org": "acct_2077"}


def _run_tools(name: str, args: dict[str, Any]) -> str:
    if name == "lookup_account":
        return json.dumps({"account_id": ACCOUNTS[args["email"]], "email": args["email"]})
    return json.dumps(
        {"account_id": args["account_id"], "email": args["new_email"], "changed": True}
    )


def _converse(
    prompt: str,
    tools: list[dict[str, Any]],
    answer: Callable[[str, dict[str, Any]], str] = _run_tools,
) -> tuple[list[list[tuple[str, dict[str, Any]]]], str]:
    """A minimal agent loop over the real SDK: (calls per model turn, final text)."""
    turns: list[list[tuple[str, dict[str, Any]]]] = []
    with FakeMistral(demo_responder) as fake:
        client = fake.client()
        messages: list[Any] = [{"role": "user", "content": prompt}]
        for _ in range(8):
            message = (
                client.chat.complete(model=MODEL, messages=messages, tools=tools).choices[0].message
            )
            messages.append(message)
            if not message.tool_calls:
                fake.check()
                return turns, message.content
            calls = [
                (c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls
            ]
            turns.append(calls)
            for tc, (name, args) in zip(message.tool_calls, calls):
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": tc.id,
                        "name": name,
                        "content": answer(name, args),
                    }
                )
    raise AssertionError(f"the demo model did not finish: {turns}")


PROMPT = "Please change the email of the account registered as ada@old-mail.com to ada@lovelace.dev"


def test_demo_looks_up_then_changes_then_summarises() -> None:
    turns, final = _converse(PROMPT, [CHANGE, LOOKUP])
    assert turns == [
        [("lookup_account", {"email": "ada@old-mail.com"})],
        [("change_account_email", {"account_id": "acct_1042", "new_email": "ada@lovelace.dev"})],
    ]
    assert "acct_1042" in final and "ada@lovelace.dev" in final
    assert "offline demo model" in final


def test_demo_gives_an_action_the_new_address_whatever_the_parameter_is_called() -> None:
    change = json.loads(json.dumps(CHANGE))
    change["function"]["parameters"]["properties"] = {
        "account_id": {"type": "string"},
        "email": {"type": "string"},
    }
    change["function"]["parameters"]["required"] = ["account_id", "email"]
    turns, _ = _converse(
        PROMPT, [LOOKUP, change], lambda name, args: _run_tools(name, {"new_email": "", **args})
    )
    assert turns[1] == [
        ("change_account_email", {"account_id": "acct_1042", "email": "ada@lovelace.dev"})
    ]


def test_demo_stops_and_quotes_the_reviewer_when_rejected() -> None:
    def reject_change(name: str, args: dict[str, Any]) -> str:
        if name == "change_account_email":
            return (
                "Not approved by the reviewer. Note: identity not verified, call the customer first"
            )
        return _run_tools(name, args)

    turns, final = _converse(PROMPT, [LOOKUP, CHANGE], reject_change)
    assert [name for turn in turns for name, _ in turn] == [
        "lookup_account",
        "change_account_email",
    ]
    assert "did not run change_account_email" in final
    assert "identity not verified, call the customer first" in final


def test_demo_asks_for_two_lookups_in_parallel() -> None:
    turns, _ = _converse(
        "Look up the accounts of ada@old-mail.com and alan@example.org", [LOOKUP, CHANGE]
    )
    assert turns == [
        [
            ("lookup_account", {"email": "ada@old-mail.com"}),
            ("lookup_account", {"email": "alan@example.org"}),
        ]
    ]


def test_demo_uses_an_id_from_the_prompt_and_skips_the_lookup() -> None:
    turns, _ = _converse(
        "Change the email of account acct_2077 to alan@turing.dev", [LOOKUP, CHANGE]
    )
    assert turns == [
        [("change_account_email", {"account_id": "acct_2077", "new_email": "alan@turing.dev"})]
    ]


def test_demo_asks_instead_of_guessing_a_missing_argument() -> None:
    turns, final = _converse("Change the email of my account", [CHANGE])
    assert turns == []
    assert "account_id" in final and "new_email" in final


def test_demo_is_honest_without_tools() -> None:
    with FakeMistral(demo_responder) as fake:
        reply = fake.client().chat.complete(
            model=MODEL, messages=[{"role": "user", "content": "What is 2+2?"}]
        )
    assert "offline demo model" in reply.choices[0].message.content


class Contact(BaseModel):
    name: str
    email: str
    phone: str | None = None


class Contacts(BaseModel):
    contacts: list[Contact]
    urgent: bool


class Item(BaseModel):
    description: str
    quantity: int
    unit_price: float


class Invoice(BaseModel):
    invoice_number: str
    issued_on: date
    currency: Literal["EUR", "USD", "GBP"]
    total: float
    items: list[Item]
    status: Literal["open", "paid", "overdue"] = "open"


def test_demo_fills_a_json_schema_with_a_list_of_objects() -> None:
    prompt = (
        "Add Ada Lovelace (ada@example.com) and Alan Turing (alan@example.org, "
        "+44 20 7946 0958) to the newsletter. Not urgent."
    )
    with FakeMistral(demo_responder) as fake:
        reply = fake.client().chat.parse(
            Contacts, model=MODEL, messages=[{"role": "user", "content": prompt}]
        )
    assert Contacts.model_validate_json(reply.choices[0].message.content) == Contacts(
        contacts=[
            Contact(name="Ada Lovelace", email="ada@example.com"),
            Contact(name="Alan Turing", email="alan@example.org", phone="+44 20 7946 0958"),
        ],
        urgent=False,
    )


def test_demo_fills_an_invoice_schema() -> None:
    prompt = "Invoice INV-7 issued 2024-06-01:\n- 2 x Coffee beans, 9.90 each\n- 1 x Grinder 49.00\nTotal due: 68.80 USD"
    with FakeMistral(demo_responder) as fake:
        reply = fake.client().chat.parse(
            Invoice, model=MODEL, messages=[{"role": "user", "content": prompt}]
        )
    invoice = Invoice.model_validate_json(reply.choices[0].message.content)
    assert (invoice.invoice_number, invoice.issued_on, invoice.currency, invoice.total) == (
        "INV-7",
        date(2024, 6, 1),
        "USD",
        68.8,
    )
    assert [(i.quantity, i.unit_price) for i in invoice.items] == [(2, 9.9), (1, 49.0)]
    assert "Coffee beans" in invoice.items[0].description


@pytest.fixture
def fresh_offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(scenarios, "_offline_server", None)
    monkeypatch.delenv("MISTRAL_API_KEY", raising=False)
    monkeypatch.delenv("MISTRAL_SERVER_URL", raising=False)
    yield
    if scenarios._offline_server is not None:
        scenarios._offline_server.close()


def test_offline_model_is_used_without_a_key(
    fresh_offline: None, capsys: pytest.CaptureFixture[str]
) -> None:
    url = scenarios.use_offline_model_unless_key()
    assert url is not None and os.environ["MISTRAL_SERVER_URL"] == url
    key = os.environ["MISTRAL_API_KEY"]
    printed = capsys.readouterr().out
    assert "offline demo model" in printed and key not in printed
    assert scenarios.use_offline_model_unless_key() == url
    assert capsys.readouterr().out == ""  # said once
    client = SDK["Mistral"](api_key=key, server_url=url)
    reply = client.chat.complete(model=MODEL, messages=[USER])
    assert "offline demo model" in reply.choices[0].message.content


def test_offline_model_stays_off_with_a_real_key(
    fresh_offline: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MISTRAL_API_KEY", "a-real-key")
    assert scenarios.use_offline_model_unless_key() is None
    assert "MISTRAL_SERVER_URL" not in os.environ
    assert scenarios._offline_server is None


# ---------------------------------------------------------------------------------------------
# The CLI.
# ---------------------------------------------------------------------------------------------


def _read_lines(process: subprocess.Popen[str], count: int, timeout: float = 20) -> list[str]:
    """The first ``count`` stdout lines, read by a thread so a silent CLI fails, not hangs."""
    assert process.stdout is not None
    stdout = process.stdout
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
    try:
        return [lines.get(timeout=timeout).strip() for _ in range(count)]
    except queue.Empty:
        raise AssertionError(
            f"the CLI printed fewer than {count} lines within {timeout}s"
        ) from None


def test_cli_serve_prints_shell_exports_and_answers() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "cheq_jupyter.testing", "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url_line, key_line = _read_lines(process, 2)
        url = url_line.removeprefix("export MISTRAL_SERVER_URL=")
        key = key_line.removeprefix("export MISTRAL_API_KEY=")
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        reply = SDK["Mistral"](api_key=key, server_url=url).chat.complete(
            model=MODEL, messages=[USER]
        )
        assert "offline demo model" in reply.choices[0].message.content
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert process.returncode == 0


def test_cli_refuses_a_non_loopback_host() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cheq_jupyter.testing", "serve", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "not a loopback address" in done.stderr


def _stream_events(fake: FakeMistral, body: dict[str, Any]) -> tuple[int, str, list[Any]]:
    """POST a stream request; (status, content type, decoded events or the JSON error)."""
    request = urllib.request.Request(fake.url + "/v1/chat/completions",
                                     data=json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", f"Bearer {fake.api_key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            kind, raw = response.headers["Content-Type"], response.read().decode()
            status = response.status
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], [json.loads(exc.read())]
    blocks = [b.removeprefix("data: ") for b in raw.split("\n\n") if b]
    return status, kind, [b if b == "[DONE]" else json.loads(b) for b in blocks]


def test_a_refused_stream_request_is_a_plain_json_error_before_any_event() -> None:
    with FakeMistral([text("never")]) as fake:
        status, kind, (body,) = _stream_events(fake, {
            "model": MODEL, "stream": True,
            "messages": [USER, {"role": "assistant", "content": "hi"}],
        })
    assert (status, kind) == (400, "application/json")
    assert body["code"] == "3230" and fake.remaining == 1


def test_streamed_thinking_and_split_tool_calls_have_the_real_shapes() -> None:
    script = [tool_call("get_weather", {"city": "Paris"}, thinking="Need the weather.",
                        signature="sig_1")]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    with FakeMistral(script, split_arguments=3) as fake:
        status, kind, events = _stream_events(
            fake, {"model": MODEL, "stream": True, "messages": [USER], "tools": tools})
    assert (status, kind, events[-1]) == (200, "text/event-stream", "[DONE]")
    deltas = [e["choices"][0]["delta"] for e in events[:-1]]
    thinking = [d["content"][0] for d in deltas if isinstance(d.get("content"), list)]
    assert "".join(t["thinking"][0]["text"] for t in thinking) == "Need the weather."
    assert [t.get("signature") for t in thinking][-1] == "sig_1"
    assert all("signature" not in t for t in thinking[:-1])
    calls = [d["tool_calls"][0] for d in deltas if d.get("tool_calls")]
    assert len(calls) == 3 and {c["index"] for c in calls} == {0}
    assert calls[0]["function"]["name"] == "get_weather" and len(calls[0]["id"]) == 9
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == {"city": "Paris"}
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls" and "usage" in events[-2]


def test_the_proxy_mode_answers_stream_requests_with_plain_json() -> None:
    with FakeMistral([text("plain")], streaming=False) as fake:
        status, kind, (body,) = _stream_events(
            fake, {"model": MODEL, "stream": True, "messages": [USER]})
    assert (status, kind) == (200, "application/json")
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "plain"
