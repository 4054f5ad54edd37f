"""JSONL line formats in. Three input shapes, mixable in one file:
  {"prompt": "..."}                       sent through the chat template as one user message
  {"messages": [{"role", "content"}...]}  a chat
  {"custom_id", "method": "POST", "url": "/v1/chat/completions" | "/v1/completions", "body": {...}}
                                          an OpenAI batch request line
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from batchq.formats.chat import (
    CHAT_ONLY_KEYS,
    parse_messages,
    parse_response_format,
    parse_template_kwargs,
    parse_tool_choice,
    parse_tools,
)
from batchq.formats.compact import compact_json
from batchq.formats.fields import (
    PARAM_KEYS,
    LineError,
    as_bool,
    as_schema,
    nonempty_str,
    parse_params,
    type_name,
)


class LineKind(StrEnum):
    """The shape a line came in, which is also the shape its result goes out in."""

    PROMPT = "prompt"
    MESSAGES = "messages"
    OPENAI_CHAT = "openai-chat"
    OPENAI_COMPLETION = "openai-completion"
    INVALID = "invalid"  # refused by `submit --skip-invalid`: stored failed, never run

    @property
    def openai(self) -> bool:
        return self in (LineKind.OPENAI_CHAT, LineKind.OPENAI_COMPLETION)


OPENAI_URLS = {"/v1/chat/completions": LineKind.OPENAI_CHAT,
               "/v1/completions": LineKind.OPENAI_COMPLETION}
PLAIN_KEYS = {"prompt", "messages", "custom_id", "model", "enable_thinking", "json_schema",
              *PARAM_KEYS}
OPENAI_LINE_KEYS = {"custom_id", "method", "url", "body"}
# Body fields honoured only at the value that changes nothing (any other value is refused by
# name): one choice, no streaming, no log probabilities, plain text out.
OPENAI_NEUTRAL = {"n": (1,), "stream": (False, None), "logprobs": (False, None),
                  "stream_options": (None,)}
# `user` labels the caller for OpenAI's abuse monitoring; it changes no output.
OPENAI_BODY_KEYS = {"model", "user", "response_format", *PARAM_KEYS, *OPENAI_NEUTRAL}


def openai_kind(url: str) -> LineKind | None:
    """The kind of an OpenAI request url; Azure's spelling, without /v1, is the same endpoint."""
    return OPENAI_URLS.get(url if url.startswith("/v1/") else "/v1" + url)


@dataclass(slots=True)
class Request:
    """One validated input line, normalised. Stored as JSON; never sent through the broker.
    Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__, and
    submit builds one a line, a million for a big file."""

    custom_id: str
    kind: LineKind
    messages: list[dict[str, Any]] | None = None  # chat kinds
    text: str | None = None  # raw completion prompt (openai-completion): no chat template
    params: dict[str, Any] = field(default_factory=dict)  # only what the line set itself
    model: str | None = None  # as the line named it (`model`, or OpenAI lines' body.model)
    tools: list[dict[str, Any]] | None = None  # OpenAI chat lines' functions the model may call

    def to_json(self) -> str:
        body: dict[str, Any] = {"params": self.params}
        if self.tools is not None:
            body["tools"] = self.tools
        if self.messages is not None:
            body["messages"] = self.messages
        if self.text is not None:
            body["text"] = self.text
        if self.model is not None:
            body["model"] = self.model
        return compact_json(body)

    @classmethod
    def from_row(cls, custom_id: str, kind: str, stored: str) -> Request:
        body = json.loads(stored)
        return cls(custom_id, LineKind(kind), body.get("messages"), body.get("text"),
                   body["params"], body.get("model"), body.get("tools"))


def _reject_constant(name: str) -> float:
    raise LineError(f"{name} is not valid JSON (numbers must be finite)")


# Built once: json.loads with an option builds a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def iter_raw_lines(stream: Iterable[bytes], first_line_no: int = 1
                   ) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes without the line end) for every non-blank line, read as a stream
    (a file's lines, or the lines of one part of it from line `first_line_no` on)."""
    for line_no, raw in enumerate(stream, start=first_line_no):
        if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        raw = raw.rstrip(b"\r\n")
        if raw and not raw.isspace():
            yield line_no, raw


def parse_line(raw: bytes, line_no: int) -> Request:
    try:
        # orjson checks the UTF-8 and parses in one pass, 3x the standard library. It also
        # reads an integer past 64 bits as a float (then refused as one: no field takes one).
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        obj = _parsed_strictly(raw)
    if not isinstance(obj, dict):
        raise LineError(f"expected a JSON object, got {type_name(obj)}")
    if "url" in obj or "body" in obj or "method" in obj:
        return _parse_openai(obj, line_no)
    return _parse_plain(obj, line_no)


def _parsed_strictly(raw: bytes) -> Any:
    """What orjson refused, explained by the standard library: the error users read. JSON
    allows one thing orjson refuses, a lone surrogate given as an escape; it is refused too,
    by field, as no text."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LineError(f"not valid UTF-8 (byte {exc.start + 1})") from None
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise LineError(f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    where = _lone_surrogate(value, "")
    if where is not None:
        # Valid JSON, but no text: neither the tokenizer nor the database's UTF-8 takes it.
        raise LineError(f"field '{where or '(line)'}': holds a lone surrogate escape (\\ud800 to "
                        "\\udfff without its pair), which is not Unicode text", param=where or None)
    return value


def is_text(value: str) -> bool:
    """False for a string with a lone surrogate (JSON can escape one): it is not Unicode text,
    and no tokenizer or database takes it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _lone_surrogate(value: Any, path: str) -> str | None:
    """The path of the first string (or key) in `value` that is not text (is_text), or None."""
    if isinstance(value, str):
        return None if is_text(value) else path
    items = (value.items() if isinstance(value, dict)
             else enumerate(value) if isinstance(value, list) else ())
    for key, item in items:
        # The path is shown and stored with the line's error: its keys must be text themselves.
        if isinstance(key, int):
            inner = f"{path}[{key}]"
        else:
            name = key.encode("utf-8", "backslashreplace").decode()
            inner = f"{path}.{name}" if path else name
        found = _lone_surrogate(key, inner) if isinstance(key, str) else None
        found = found if found is not None else _lone_surrogate(item, inner)
        if found is not None:
            return found
    return None


def _parse_plain(obj: dict[str, Any], line_no: int) -> Request:
    unknown = sorted(set(obj) - PLAIN_KEYS)
    if unknown:
        raise LineError(
            f"unknown field {unknown[0]!r} (allowed: prompt or messages, custom_id, model, "
            + ", ".join(PARAM_KEYS) + ", enable_thinking, json_schema)"
        )
    custom_id = _custom_id(obj, line_no)
    params = parse_params(obj, "")
    if obj.get("enable_thinking") is not None:
        params["thinking"] = as_bool(obj["enable_thinking"], "enable_thinking")
    if obj.get("json_schema") is not None:
        params["json_schema"] = as_schema(obj["json_schema"], "json_schema")
    if "prompt" in obj and "messages" in obj:
        raise LineError("give either 'prompt' or 'messages', not both")
    model = nonempty_str(obj["model"], "model") if obj.get("model") is not None else None
    if "prompt" in obj:
        prompt = nonempty_str(obj["prompt"], "prompt")
        return Request(custom_id, LineKind.PROMPT, [{"role": "user", "content": prompt}], None,
                       params, model)
    if "messages" in obj:
        return Request(custom_id, LineKind.MESSAGES, parse_messages(obj["messages"], "messages"),
                       None, params, model)
    raise LineError("missing 'prompt' or 'messages' (or an OpenAI batch line with 'url' and 'body')")


def _parse_openai(obj: dict[str, Any], line_no: int) -> Request:
    if "custom_id" not in obj:
        raise LineError("OpenAI batch line without 'custom_id'")
    custom_id = _custom_id(obj, line_no)
    method = obj.get("method", "POST")
    if method != "POST":
        raise LineError(f"field 'method': only POST is supported, got {method!r}")
    url = obj.get("url")
    kind = openai_kind(url) if isinstance(url, str) else None
    if kind is None:
        raise LineError(f"field 'url': unsupported {url!r} (use {' or '.join(OPENAI_URLS)})")
    unknown = sorted(set(obj) - OPENAI_LINE_KEYS)
    if unknown:
        raise LineError(f"unknown field {unknown[0]!r} (an OpenAI batch line has "
                        "custom_id, method, url and body)", param=unknown[0])
    body = obj.get("body")
    if not isinstance(body, dict):
        raise LineError(f"field 'body': expected an object, got {type_name(body)}")
    text = "messages" if kind is LineKind.OPENAI_CHAT else "prompt"
    if text not in body:
        raise LineError(f"field 'body.{text}' is missing", param=f"body.{text}")
    _refuse_unhonoured(body, text)
    params = parse_params(body, "body.")
    if body.get("chat_template_kwargs") is not None:
        params.update(parse_template_kwargs(body["chat_template_kwargs"]))
    if body.get("response_format") is not None:
        schema = parse_response_format(body["response_format"])
        if schema is not None:
            params["json_schema"] = schema
    model = nonempty_str(body["model"], "body.model") if "model" in body else None
    if kind is LineKind.OPENAI_CHAT:
        tools = parse_tools(body)
        if tools is not None:
            params["tool_choice"] = parse_tool_choice(body.get("tool_choice"), tools)
        elif body.get("tool_choice") not in (None, "none"):
            raise LineError("field 'body.tool_choice': there are no body.tools to choose from",
                            param="body.tool_choice")
        return Request(custom_id, kind, parse_messages(body["messages"], "body.messages", True),
                       None, params, model, tools)
    return Request(custom_id, kind, None, nonempty_str(body["prompt"], "body.prompt"), params,
                   model)


def _refuse_unhonoured(body: dict[str, Any], text: str) -> None:
    """Every body field is honoured or refused by name: none is silently dropped."""
    for key, value in body.items():
        where = f"body.{key}"
        if key in OPENAI_NEUTRAL:
            if value not in OPENAI_NEUTRAL[key]:
                shown = json.dumps(value)[:60]
                raise LineError(f"field '{where}': {shown} is not supported (batchq gives one "
                                "plain-text answer per line, not streamed, without logprobs)",
                                param=where)
        elif key not in OPENAI_BODY_KEYS and key != text and not (
                key in CHAT_ONLY_KEYS and text == "messages"):
            extra = ", " + ", ".join(CHAT_ONLY_KEYS) if text == "messages" else ""
            raise LineError(f"field '{where}' is not supported; batchq honours {text}, model, "
                            + ", ".join(PARAM_KEYS) + f", user{extra}", param=where)


def _custom_id(obj: dict[str, Any], line_no: int) -> str:
    if "custom_id" not in obj:
        return f"line-{line_no}"
    value = obj["custom_id"]
    if not isinstance(value, str) or not value:
        raise LineError(f"field 'custom_id': expected a non-empty string, got {type_name(value)}")
    return value
