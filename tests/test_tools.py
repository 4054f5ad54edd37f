"""Tool calls in batch: `tools` rendered through Qwen's chat template, the model's <tool_call>
blocks back as OpenAI `tool_calls`. With random weights a model calls a tool only when made to,
so `tool_choice: required` and a named function (constrained decoding) are the proof that calls
come back well-formed, their arguments valid against the function's parameters."""

import json

import jsonschema
import openai
import pytest

from batchq.engine.codec import split_tool_calls
from batchq.formats import LineError, parse_line
from tests.conftest import batchq

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The forecast for a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 12},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"enum": ["C", "F"]}},
        "required": ["city", "days", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {
        "zone": {"type": "string", "maxLength": 20}}, "required": ["zone"],
        "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Nis this week?"}]


def chat(custom_id, messages=ASK, **body):
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"messages": messages, "max_tokens": 80, **body}}


def test_tool_call_blocks_become_calls_and_anything_else_stays_text():
    text, calls = split_tool_calls('Let me check.\n<tool_call>\n{"name": "get_weather", '
                                   '"arguments": {"city": "Nis"}}\n</tool_call>')
    assert text == "Let me check." and calls == [{"name": "get_weather",
                                                  "arguments": '{"city": "Nis"}'}]
    assert split_tool_calls("<tool_call>not json</tool_call>") == (
        "<tool_call>not json</tool_call>", None)


@pytest.mark.parametrize("body, fragment", [
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
     "body.tools[0].function.name': expected 1 to 64 letters"),
    ({"tools": [WEATHER, WEATHER]}, "'get_weather' is named twice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "body.tool_choice': 'nope' is not one of body.tools"),
    ({"tool_choice": "required"}, "there are no body.tools to choose from"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "expected auto, none, required"),
])
def test_bad_tools_are_refused_by_field(body, fragment):
    with pytest.raises(LineError, match=None) as refused:
        parse_line(json.dumps(chat("x", **body)).encode(), 1)
    assert fragment in str(refused.value)


def test_a_conversation_with_calls_and_their_results_is_accepted():
    conversation = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Nis", "days": 2}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}]
    request = parse_line(json.dumps(chat("x", conversation, tools=[WEATHER])).encode(), 1)
    assert request.messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Nis",
                                                                             "days": 2}
    assert request.messages[2] == {"role": "tool", "content": "sunny, 21 C",
                                   "tool_call_id": "call_1"}
    assert request.params == {"tool_choice": "auto", "max_new_tokens": 80}


@pytest.mark.services
@pytest.mark.e2e
def test_tool_calls_through_the_worker(services_env, shared_worker, tiny_model, tmp_path):
    conversation = [*ASK, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Nis", "days": 2}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}]
    rows = [chat("required", tools=[WEATHER, TIME], tool_choice="required"),
            chat("named", tools=[WEATHER, TIME],
                 tool_choice={"type": "function", "function": {"name": "get_time"}}),
            chat("none", tools=[WEATHER], tool_choice="none", max_tokens=4),
            chat("auto", tools=[WEATHER], max_tokens=4),
            chat("after-result", conversation, tools=[WEATHER], max_tokens=4),
            chat("cut", tools=[WEATHER], tool_choice="required", max_tokens=5)]
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = batchq("submit", str(data), "--model", str(tiny_model), "--wait", env=services_env)
    assert done.returncode == 6, done.stderr  # only "cut" failed
    out = {r["custom_id"]: r for r in map(json.loads, batchq(
        "results", done.stdout.strip(), env=services_env).stdout.splitlines())}
    params = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
    for custom_id in ("required", "named"):
        body = out[custom_id]["response"]["body"]
        openai.types.chat.ChatCompletion.model_validate(body)  # the client reads it as is
        (choice,) = body["choices"]
        assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
        for call in choice["message"]["tool_calls"]:
            assert call["type"] == "function" and call["id"].startswith("call_")
            jsonschema.validate(json.loads(call["function"]["arguments"]),
                                params[call["function"]["name"]])
    assert [c["function"]["name"] for c in
            out["named"]["response"]["body"]["choices"][0]["message"]["tool_calls"]] == ["get_time"]
    usage = {k: out[k]["response"]["body"]["usage"]["prompt_tokens"] for k in ("none", "auto")}
    assert usage["none"] < usage["auto"]  # tool_choice none: the model is not told of them
    for custom_id in ("none", "auto", "after-result"):
        assert out[custom_id]["response"]["status_code"] == 200
    assert out["cut"]["error"]["code"] == "json_incomplete"
