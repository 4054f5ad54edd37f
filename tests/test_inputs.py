"""Line formats in, result formats out: every accepted shape and every refusal a user can meet."""

import io
import json

import pytest

from batchq.formats import (
    LineError,
    LineKind,
    LineResult,
    compact_json,
    iter_raw_lines,
    json_line,
    parse_line,
    render_result,
)
from batchq.states import LineStatus


def parse(obj, line_no=1):
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return parse_line(raw, line_no)


def test_prompt_line_becomes_one_user_message_with_default_id():
    r = parse({"prompt": "Hi there", "max_tokens": 7, "temperature": 0.5}, line_no=12)
    assert r.custom_id == "line-12"
    assert r.kind == "prompt"
    assert r.messages == [{"role": "user", "content": "Hi there"}]
    assert r.params == {"max_new_tokens": 7, "temperature": 0.5}


def test_messages_line_keeps_roles_and_joins_text_parts():
    r = parse({"custom_id": "a", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]},
    ], "stop": "\n", "seed": 3, "top_p": 0.9, "max_new_tokens": 4})
    assert r.kind == "messages"
    assert r.messages[1] == {"role": "user", "content": "Hello"}
    assert r.params == {"max_new_tokens": 4, "top_p": 0.9, "seed": 3, "stop": ["\n"]}


def test_openai_chat_and_completion_lines():
    chat = parse({"custom_id": "c1", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": "gpt", "messages": [{"role": "user", "content": "x"}],
                           "max_completion_tokens": 9}})
    assert (chat.kind, chat.params) == ("openai-chat", {"max_new_tokens": 9})
    comp = parse({"custom_id": "c2", "method": "POST", "url": "/v1/completions",
                  "body": {"prompt": "Once", "max_tokens": 3}})
    assert (comp.kind, comp.text, comp.messages) == ("openai-completion", "Once", None)


def test_qwens_sampling_settings_and_openais_neutral_fields_are_honoured():
    r = parse({"prompt": "x", "top_k": 20, "min_p": 0.05, "repetition_penalty": 1.05,
               "presence_penalty": 1.5, "frequency_penalty": -0.5})
    assert r.params == {"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.05,
                        "presence_penalty": 1.5, "frequency_penalty": -0.5}
    assert parse({"prompt": "x", "top_k": -1}).params == {"top_k": 0}  # vLLM's "off"
    # Fields at the value that changes nothing are accepted; Azure's urls have no /v1.
    chat = parse({"custom_id": "a", "url": "/chat/completions", "body": {
        "messages": [{"role": "user", "content": "x"}], "n": 1, "stream": False,
        "logprobs": False, "response_format": {"type": "text"}, "user": "u-7",
        "frequency_penalty": 0.5}})
    assert (chat.kind, chat.params) == ("openai-chat", {"frequency_penalty": 0.5})
    assert parse({"custom_id": "b", "url": "/completions", "body": {"prompt": "x"}}).kind == (
        "openai-completion")


def test_thinking_is_switched_per_line_in_both_spellings():
    assert parse({"prompt": "x", "enable_thinking": False}).params == {"thinking": False}
    chat = parse({"custom_id": "a", "url": "/v1/chat/completions", "body": {
        "messages": [{"role": "user", "content": "x"}],
        "chat_template_kwargs": {"enable_thinking": True}}})
    assert chat.params == {"thinking": True}


def test_request_survives_storage_roundtrip():
    from batchq.formats import Request

    r = parse({"custom_id": "z", "messages": [{"role": "user", "content": "é\u0000x"}], "stop": ["a", "b"]})
    back = Request.from_row(r.custom_id, r.kind, r.to_json())
    assert back == r


@pytest.mark.parametrize("raw, fragment", [
    (b"{not json", "invalid JSON"),
    (b"\xff\xfe", "not valid UTF-8"),
    (b"[1, 2]", "expected a JSON object, got a list"),
    (b'{"prompt": NaN}', "numbers must be finite"),
    (b'{"prompt": ""}', "field 'prompt' is empty"),
    (b'{"prompt": 5}', "field 'prompt': expected a string, got an integer"),
    (b'{"messages": []}', "non-empty list"),
    (b'{"messages": [{"role": "robot", "content": "x"}]}', "messages[0].role"),
    (b'{"prompt": "x", "messages": [{"role": "user", "content": "x"}]}', "not both"),
    (b'{"prompt": "x", "max_tokens": 0}', "max_tokens': 0 is outside"),
    (b'{"prompt": "x", "max_tokens": 2.5}', "expected an integer"),
    (b'{"prompt": "x", "temperature": "hot"}', "temperature': expected a number"),
    (b'{"prompt": "x", "max_tokens": 5, "max_new_tokens": 6}', "give only one of"),
    (b'{"prompt": "x", "promt": "y"}', "unknown field 'promt'"),
    (b'{"custom_id": "a", "method": "GET", "url": "/v1/chat/completions", "body": {}}', "only POST"),
    (b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {}}', "unsupported '/v1/embeddings'"),
    (b'{"method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}}', "without 'custom_id'"),
    (b'{"custom_id": "a", "url": "/v1/completions", "body": {"prompt": "x", "n": 2}}', "field 'body.n': 2 is not supported"),
    (b'{"custom_id": "a", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "x"}], "frequency_penalty": 2.5}}', "body.frequency_penalty': 2.5 is outside -2.0..2.0"),
    (b'{"custom_id": "a", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "grammar"}}}', "field 'body.response_format': expected type text, json_object or json_schema"),
    (b'{"custom_id": "a", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": 5}}}', "field 'body.logit_bias' is not supported; batchq honours messages, model"),
    (b'{"custom_id": "a", "url": "/v1/completions", "body": {"prompt": "x", "echo": true}}', "field 'body.echo' is not supported; batchq honours prompt"),
    (b'{"custom_id": "a", "url": "/v1/completions", "body": {"prompt": "x"}, "extra": 1}', "unknown field 'extra'"),
    (b'{"custom_id": "a", "url": "/v1/completions", "body": {"prompt": "x", "logprobs": 2}}', "field 'body.logprobs': 2 is not supported"),
    (b'{"prompt": "x", "top_k": 2.5}', "field 'top_k': expected an integer"),
    (b'{"prompt": "x", "enable_thinking": "no"}', "field 'enable_thinking': expected true or false"),
    (b'{"custom_id": "a", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": {"tools": 1}}}', "field 'body.chat_template_kwargs.tools' is not supported (only enable_thinking)"),
    (b'{"custom_id": "a", "url": "/v1/completions", "body": {"prompt": "x", "chat_template_kwargs": {"enable_thinking": false}}}', "field 'body.chat_template_kwargs' is not supported; batchq honours prompt"),
    (b'{"prompt": "x", "top_k": -2}', "field 'top_k': -2 is outside -1..1000000"),
    (b'{"prompt": "x", "min_p": 1.5}', "field 'min_p': 1.5 is outside 0.0..1.0"),
    (b'{"prompt": "x", "repetition_penalty": 0}', "'repetition_penalty' must be greater than 0"),
    (b'{"prompt": "x", "presence_penalty": -3}', "field 'presence_penalty': -3 is outside"),
    (b'{"custom_id": "a", "url": "/v1/chat/completions", "body": {"prompt": "x"}}', "body.messages' is missing"),
    (b'{"x": 1}', "unknown field 'x'"),
    (b'{}', "missing 'prompt' or 'messages'"),
])
def test_bad_lines_are_refused_with_the_field_named(raw, fragment):
    with pytest.raises(LineError) as info:
        parse_line(raw, 1)
    assert fragment in str(info.value)


def test_raw_lines_skip_blanks_strip_bom_and_crlf_and_keep_numbers():
    data = b'\xef\xbb\xbf{"prompt": "a"}\r\n\r\n   \n{"prompt": "b"}\n'
    assert list(iter_raw_lines(io.BytesIO(data))) == [(1, b'{"prompt": "a"}'), (4, b'{"prompt": "b"}')]


def _result(**kw):
    base = dict(line_no=3, custom_id="c", kind="prompt", status="succeeded", output="hi",
                finish_reason="stop", error=None, prompt_tokens=5, completion_tokens=2)
    base.update(kw)
    return LineResult(**{**base, "kind": LineKind(base["kind"]),
                         "status": LineStatus(base["status"])})


def test_plain_result_shape():
    assert render_result(_result(), "job", "m", 0) == {
        "custom_id": "c", "status": "succeeded", "output": "hi", "finish_reason": "stop",
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}, "error": None,
        "model": "m"}
    # A line's own model (its chunk's) wins over the job's.
    assert render_result(_result(model="/models/big"), "job", "m", 0)["model"] == "/models/big"
    failed = render_result(_result(status="failed", output=None, error="boom", completion_tokens=None),
                           "job", "m", 0)
    assert failed["error"] == {"code": "failed", "message": "boom"} and failed["usage"] is None


def test_a_result_line_is_compact_json_that_reads_back_to_the_same_values():
    line = render_result(_result(kind="openai-chat", custom_id="ünï 🚀\u0000\u2028 \"q\""),
                         "job", "Qwen/x", 1700000000)
    text = compact_json(line)
    assert "\n" not in text and json.loads(text) == line
    assert text == json.dumps(line, ensure_ascii=False, separators=(",", ":"))
    # A lone surrogate (a custom_id given as the escape \ud800) is still written, alike.
    odd = {**line, "custom_id": "x\ud800y"}
    assert compact_json(odd) == json.dumps(odd, ensure_ascii=False, separators=(",", ":"))
    assert json.loads(compact_json(odd))["custom_id"] == "x\ud800y"
    # As the results file takes them: UTF-8 and a newline, the same line; the lone
    # surrogate, which has no UTF-8, escaped with the rest of what is not ASCII.
    assert json_line(line) == (text + "\n").encode()
    assert json_line(odd) == (json.dumps(odd, separators=(",", ":")) + "\n").encode()
    assert json.loads(json_line(odd)) == odd


def test_openai_result_shapes_are_stable_and_complete():
    chat = render_result(_result(kind="openai-chat"), "job", "Qwen/x", 1700000000)
    again = render_result(_result(kind="openai-chat"), "job", "Qwen/x", 1700000000)
    assert chat == again  # ids derive from job and line: rewriting results changes nothing
    assert chat["error"] is None and chat["id"].startswith("batch_req_")
    body = chat["response"]["body"]
    assert chat["response"]["status_code"] == 200
    assert body["object"] == "chat.completion" and body["model"] == "Qwen/x"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hi"}
    assert body["usage"]["total_tokens"] == 7
    comp = render_result(_result(kind="openai-completion"), "job", "m", 0)
    assert comp["response"]["body"]["choices"][0]["text"] == "hi"
    err = render_result(_result(kind="openai-chat", status="failed", error="too long"), "j", "m", 0)
    assert err["response"] is None and err["error"] == {"code": "generation_failed", "message": "too long"}


def test_what_the_fast_parser_refuses_is_read_or_explained_by_the_standard_library():
    # A lone surrogate is valid JSON as an escape, but no text: refused by field.
    for raw, where in [(b'{"custom_id": "s\\ud800", "prompt": "x"}', "custom_id"),
                       (b'{"messages": [{"role": "user", "content": "x\\udfff"}]}',
                        "messages[0].content"),
                       (b'{"prompt": "x", "\\ud800": 1}', "\\ud800")]:
        with pytest.raises(LineError) as caught:
            parse(raw)
        assert str(caught.value).startswith(f"field '{where}': holds a lone surrogate escape")
    assert parse(b'{"prompt": "pair \\ud83d\\ude80"}').messages[0]["content"] == "pair \U0001f680"
    for raw, message in [(b'{"prompt": "x",}', "invalid JSON: Expecting property name enclosed "
                          "in double quotes (column 16)"),
                         (b'{"prompt": "\xff"}', "not valid UTF-8 (byte 13)"),
                         (b'{"prompt": "x", "temperature": NaN}',
                          "NaN is not valid JSON (numbers must be finite)")]:
        with pytest.raises(LineError) as caught:
            parse(raw)
        assert str(caught.value) == message
    # Stored requests are compact JSON too.
    assert parse({"prompt": "Grüße", "max_tokens": 2}).to_json() == (
        '{"params":{"max_new_tokens":2},"messages":[{"role":"user","content":"Grüße"}]}')
