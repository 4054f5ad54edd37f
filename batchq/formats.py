"""JSONL line formats in, result formats out.

Three input shapes, mixable in one file:
  {"prompt": "..."}                       sent through the chat template as one user message
  {"messages": [{"role", "content"}...]}  a chat
  {"custom_id", "method": "POST", "url": "/v1/chat/completions" | "/v1/completions", "body": {...}}
                                          an OpenAI batch request line
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import IO, Any

from batchq.states import UNANSWERED, LineStatus


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


ROLES = ("system", "user", "assistant")
OPENAI_URLS = {"/v1/chat/completions": LineKind.OPENAI_CHAT,
               "/v1/completions": LineKind.OPENAI_COMPLETION}
MAX_TOKEN_KEYS = ("max_new_tokens", "max_tokens", "max_completion_tokens")
# Qwen's recommended settings use these beyond OpenAI's temperature and top_p.
SAMPLING_KEYS = ("top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty")
PARAM_KEYS = (*MAX_TOKEN_KEYS, "temperature", "top_p", "seed", "stop", *SAMPLING_KEYS)
PLAIN_KEYS = {"prompt", "messages", "custom_id", "model", "enable_thinking", "json_schema",
              *PARAM_KEYS}
OPENAI_LINE_KEYS = {"custom_id", "method", "url", "body"}
# Body fields honoured only at the value that changes nothing (any other value is refused by
# name): one choice, no streaming, no log probabilities, plain text out.
OPENAI_NEUTRAL = {"n": (1,), "stream": (False, None), "logprobs": (False, None),
                  "stream_options": (None,)}
# `user` labels the caller for OpenAI's abuse monitoring; it changes no output.
OPENAI_BODY_KEYS = {"model", "user", "response_format", *PARAM_KEYS, *OPENAI_NEUTRAL}
CHAT_ONLY_KEYS = ("chat_template_kwargs", "tools", "tool_choice")
_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_STOP_STRINGS = 4
# The error code of a line whose JSON the output limit cut off (its error text starts so).
JSON_INCOMPLETE = "json_incomplete"


def openai_kind(url: str) -> LineKind | None:
    """The kind of an OpenAI request url; Azure's spelling, without /v1, is the same endpoint."""
    return OPENAI_URLS.get(url if url.startswith("/v1/") else "/v1" + url)


class LineError(ValueError):
    """What is wrong with one line, phrased for the person who wrote it. `code` and `param`
    (the field, e.g. body.model) are what the HTTP API reports in a batch's errors.data."""

    def __init__(self, message: str, code: str = "invalid_request", param: str | None = None):
        super().__init__(message)
        self.code = code
        self.param = param


@dataclass(frozen=True)
class Request:
    """One validated input line, normalised. Stored as JSON; never sent through the broker."""

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
        return json.dumps(body, ensure_ascii=False)

    @classmethod
    def from_row(cls, custom_id: str, kind: str, stored: str) -> Request:
        body = json.loads(stored)
        return cls(custom_id, LineKind(kind), body.get("messages"), body.get("text"),
                   body["params"], body.get("model"), body.get("tools"))


# ---------------------------------------------------------------- reading

def _reject_constant(name: str) -> float:
    raise LineError(f"{name} is not valid JSON (numbers must be finite)")


def iter_raw_lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes without the line end) for every non-blank line, read as a stream."""
    for line_no, raw in enumerate(stream, start=1):
        if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        raw = raw.rstrip(b"\r\n")
        if raw.strip():
            yield line_no, raw


def parse_line(raw: bytes, line_no: int) -> Request:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LineError(f"not valid UTF-8 (byte {exc.start + 1})") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise LineError(f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise LineError(f"expected a JSON object, got {_type_name(obj)}")
    if "url" in obj or "body" in obj or "method" in obj:
        return _parse_openai(obj, line_no)
    return _parse_plain(obj, line_no)


def _parse_plain(obj: dict[str, Any], line_no: int) -> Request:
    unknown = sorted(set(obj) - PLAIN_KEYS)
    if unknown:
        raise LineError(
            f"unknown field {unknown[0]!r} (allowed: prompt or messages, custom_id, model, "
            + ", ".join(PARAM_KEYS) + ", enable_thinking, json_schema)"
        )
    custom_id = _custom_id(obj, line_no)
    params = _params(obj, "")
    if obj.get("enable_thinking") is not None:
        params["thinking"] = _bool(obj["enable_thinking"], "enable_thinking")
    if obj.get("json_schema") is not None:
        params["json_schema"] = _schema(obj["json_schema"], "json_schema")
    if "prompt" in obj and "messages" in obj:
        raise LineError("give either 'prompt' or 'messages', not both")
    model = _nonempty_str(obj["model"], "model") if obj.get("model") is not None else None
    if "prompt" in obj:
        prompt = _nonempty_str(obj["prompt"], "prompt")
        return Request(custom_id, LineKind.PROMPT, [{"role": "user", "content": prompt}], None,
                       params, model)
    if "messages" in obj:
        return Request(custom_id, LineKind.MESSAGES, _messages(obj["messages"], "messages"),
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
        raise LineError(f"field 'body': expected an object, got {_type_name(body)}")
    text = "messages" if kind is LineKind.OPENAI_CHAT else "prompt"
    if text not in body:
        raise LineError(f"field 'body.{text}' is missing", param=f"body.{text}")
    _refuse_unhonoured(body, text)
    params = _params(body, "body.")
    if body.get("chat_template_kwargs") is not None:
        params.update(_template_kwargs(body["chat_template_kwargs"]))
    if body.get("response_format") is not None:
        schema = _response_format(body["response_format"])
        if schema is not None:
            params["json_schema"] = schema
    model = _nonempty_str(body["model"], "body.model") if "model" in body else None
    if kind is LineKind.OPENAI_CHAT:
        tools = _tools(body)
        if tools is not None:
            params["tool_choice"] = _tool_choice(body.get("tool_choice"), tools)
        elif body.get("tool_choice") not in (None, "none"):
            raise LineError("field 'body.tool_choice': there are no body.tools to choose from",
                            param="body.tool_choice")
        return Request(custom_id, kind, _messages(body["messages"], "body.messages", True),
                       None, params, model, tools)
    return Request(custom_id, kind, None, _nonempty_str(body["prompt"], "body.prompt"), params,
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


def _response_format(value: Any) -> dict[str, Any] | None:
    """OpenAI's response_format: text (nothing to enforce), json_object (any JSON object) or
    json_schema (its schema; `strict` or not, batchq enforces it whole)."""
    where = "body.response_format"
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict):
            raise LineError(f"field '{where}.json_schema': expected an object with name and "
                            "schema", param=f"{where}.json_schema")
        return _schema(spec.get("schema"), f"{where}.json_schema.schema")
    raise LineError(f"field '{where}': expected type text, json_object or json_schema",
                    param=where)


def _schema(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise LineError(f"field '{where}': expected a JSON schema (an object), got "
                        f"{_type_name(value)}", param=where)
    return value


def _template_kwargs(value: Any) -> dict[str, Any]:
    """`chat_template_kwargs`, as OpenAI-compatible servers for Qwen3 take it: only
    enable_thinking means something to batchq; anything else is refused by name."""
    where = "body.chat_template_kwargs"
    if not isinstance(value, dict):
        raise LineError(f"field '{where}': expected an object, got {_type_name(value)}",
                        param=where)
    for key in value:
        if key != "enable_thinking":
            raise LineError(f"field '{where}.{key}' is not supported (only enable_thinking)",
                            param=f"{where}.{key}")
    thinking = value.get("enable_thinking")
    return {} if thinking is None else {"thinking": _bool(thinking, where + ".enable_thinking")}


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise LineError(f"field '{where}': expected true or false, got {_type_name(value)}",
                        param=where)
    return value


def _custom_id(obj: dict[str, Any], line_no: int) -> str:
    if "custom_id" not in obj:
        return f"line-{line_no}"
    value = obj["custom_id"]
    if not isinstance(value, str) or not value:
        raise LineError(f"field 'custom_id': expected a non-empty string, got {_type_name(value)}")
    return value


def _nonempty_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise LineError(f"field '{where}': expected a string, got {_type_name(value)}")
    if not value.strip():
        raise LineError(f"field '{where}' is empty")
    return value


def _tools(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """OpenAI's `tools`: functions, each with a name and (optionally) a description and a JSON
    schema for its arguments. Normalised; their schemas are checked at submit."""
    value = body.get("tools")
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise LineError("field 'body.tools': expected a non-empty list of functions",
                        param="body.tools")
    tools, names = [], set()
    for i, tool in enumerate(value):
        at = f"body.tools[{i}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if not (isinstance(tool, dict) and tool.get("type") == "function"
                and isinstance(function, dict)):
            raise LineError(f"field '{at}': expected {{\"type\": \"function\", \"function\": "
                            "{...}}", param=at)
        name = function.get("name")
        if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
            raise LineError(f"field '{at}.function.name': expected 1 to 64 letters, digits, "
                            "'_' or '-'", param=f"{at}.function.name")
        if name in names:
            raise LineError(f"field '{at}.function.name': {name!r} is named twice",
                            param=f"{at}.function.name")
        names.add(name)
        spec: dict[str, Any] = {"name": name}
        if function.get("description") is not None:
            spec["description"] = _nonempty_str(function["description"],
                                                f"{at}.function.description")
        spec["parameters"] = _schema(function.get("parameters", {"type": "object"}),
                                     f"{at}.function.parameters")
        tools.append({"type": "function", "function": spec})
    return tools


def _tool_choice(value: Any, tools: list[dict[str, Any]]) -> str:
    """auto (the model decides), none (no tools), required (at least one call), or one named
    function: stored as auto, none, required or function:NAME."""
    where = "body.tool_choice"
    if value is None:
        return "auto"
    if value in ("auto", "none", "required"):
        return str(value)
    name = (value.get("function") or {}).get("name") if isinstance(value, dict) else None
    if not isinstance(name, str):
        raise LineError(f"field '{where}': expected auto, none, required or "
                        '{"type": "function", "function": {"name": ...}}', param=where)
    if name not in {t["function"]["name"] for t in tools}:
        raise LineError(f"field '{where}': {name!r} is not one of body.tools", param=where)
    return f"function:{name}"


def _tool_calls(value: Any, where: str) -> list[dict[str, Any]]:
    """An earlier assistant turn's calls, as the chat template renders them (arguments as an
    object, not OpenAI's JSON string)."""
    if not isinstance(value, list) or not value:
        raise LineError(f"field '{where}': expected a non-empty list of tool calls")
    calls = []
    for i, call in enumerate(value):
        at = f"{where}[{i}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise LineError(f"field '{at}.function': expected an object with name and arguments")
        name = function.get("name")
        if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
            raise LineError(f"field '{at}.function.name': expected 1 to 64 letters, digits, "
                            "'_' or '-'")
        arguments = function.get("arguments", "{}")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                raise LineError(f"field '{at}.function.arguments': not valid JSON") from None
        if not isinstance(arguments, dict):
            raise LineError(f"field '{at}.function.arguments': expected a JSON object")
        calls.append({"id": str(call.get("id") or f"call_{i}"), "type": "function",
                      "function": {"name": name, "arguments": arguments}})
    return calls


def _messages(value: Any, where: str, openai: bool = False) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise LineError(f"field '{where}': expected a non-empty list of messages")
    roles = (*ROLES, "tool") if openai else ROLES
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(msg, dict):
            raise LineError(f"field '{at}': expected an object, got {_type_name(msg)}")
        role = msg.get("role")
        if role not in roles:
            raise LineError(f"field '{at}.role': expected one of {', '.join(roles)}, got {role!r}")
        if openai and role == "assistant" and msg.get("tool_calls"):
            content = msg.get("content")
            out.append({"role": role, "tool_calls": _tool_calls(msg["tool_calls"],
                                                                f"{at}.tool_calls"),
                        "content": "" if content in (None, "", []) else _content(
                            content, f"{at}.content")})
        elif role == "tool":
            out.append({"role": role, "content": _content(msg.get("content"), f"{at}.content"),
                        "tool_call_id": str(msg.get("tool_call_id") or "")})
        else:
            out.append({"role": role, "content": _content(msg.get("content"), f"{at}.content")})
    if out[-1]["role"] == "assistant" and len(out) == 1:
        raise LineError(f"field '{where}': needs at least one system or user message")
    return out


def _content(value: Any, where: str) -> str:
    # OpenAI also allows a list of parts; only text parts mean anything to a text model.
    if isinstance(value, list):
        texts = []
        for part in value:
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise LineError(f"field '{where}': only text parts are supported")
            texts.append(part["text"])
        value = "".join(texts)
    return _nonempty_str(value, where)


def _params(obj: dict[str, Any], prefix: str) -> dict[str, Any]:
    params: dict[str, Any] = {}
    given = [k for k in MAX_TOKEN_KEYS if k in obj]
    if len(given) > 1:
        raise LineError(f"give only one of {', '.join(prefix + k for k in given)}")
    if given:
        params["max_new_tokens"] = _int_in(obj[given[0]], prefix + given[0], 1, 1_000_000)
    if "temperature" in obj:
        params["temperature"] = _num_in(obj["temperature"], prefix + "temperature", 0.0, 2.0)
    if "top_p" in obj:
        params["top_p"] = _num_in(obj["top_p"], prefix + "top_p", 0.0, 1.0)
        if params["top_p"] == 0.0:
            raise LineError(f"field '{prefix}top_p' must be greater than 0")
    if "seed" in obj and obj["seed"] is not None:
        params["seed"] = _int_in(obj["seed"], prefix + "seed", 0, 2**63 - 1)
    if "stop" in obj and obj["stop"] is not None:
        params["stop"] = _stop(obj["stop"], prefix + "stop")
    if obj.get("top_k") is not None:
        # -1 is how vLLM and SGLang spell "off"; batchq's own is 0.
        params["top_k"] = max(0, _int_in(obj["top_k"], prefix + "top_k", -1, 1_000_000))
    if obj.get("min_p") is not None:
        params["min_p"] = _num_in(obj["min_p"], prefix + "min_p", 0.0, 1.0)
    if obj.get("repetition_penalty") is not None:
        params["repetition_penalty"] = _num_in(obj["repetition_penalty"],
                                               prefix + "repetition_penalty", 0.0, 2.0)
        if params["repetition_penalty"] == 0.0:
            raise LineError(f"field '{prefix}repetition_penalty' must be greater than 0 "
                            "(1 is off)")
    for key in ("presence_penalty", "frequency_penalty"):
        if obj.get(key) is not None:
            params[key] = _num_in(obj[key], prefix + key, -2.0, 2.0)
    return params


def _int_in(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LineError(f"field '{where}': expected an integer, got {_type_name(value)}")
    if not low <= value <= high:
        raise LineError(f"field '{where}': {value} is outside {low}..{high}")
    return value


def _num_in(value: Any, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise LineError(f"field '{where}': expected a number, got {_type_name(value)}")
    if not low <= value <= high:
        raise LineError(f"field '{where}': {value} is outside {low}..{high}")
    return float(value)


def _stop(value: Any, where: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if (not isinstance(items, list) or not items or len(items) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) and s for s in items)):
        raise LineError(f"field '{where}': expected a string or a list of 1 to "
                        f"{MAX_STOP_STRINGS} non-empty strings")
    return items


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(value), "a value")


# ---------------------------------------------------------------- writing results

@dataclass(frozen=True)
class LineResult:
    """A stored line as the results writer needs it (a value, not a table row)."""

    line_no: int
    custom_id: str
    kind: LineKind
    status: LineStatus
    output: str | None
    finish_reason: str | None
    error: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    reasoning: str | None = None  # a thinking model's, apart from the answer in `output`
    reasoning_tokens: int | None = None
    model: str | None = None  # the model that ran it (its chunk's); None: it never ran
    tool_calls: list[dict[str, str]] | None = None  # functions its answer called

    def __post_init__(self) -> None:
        # Rows read through the store are typed already; plain strings are accepted too.
        object.__setattr__(self, "kind", LineKind(self.kind))
        object.__setattr__(self, "status", LineStatus(self.status))

    @property
    def usage(self) -> dict[str, Any] | None:
        if self.prompt_tokens is None or self.completion_tokens is None:
            return None
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens}
        if self.reasoning is not None:
            usage["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens or 0}
        return usage


def render_result(result: LineResult, job_id: str, model: str, created: int) -> dict[str, Any]:
    """One result line. `model` is the job's, for a line that never ran on one of its own."""
    model = result.model or model
    if result.kind.openai:
        return _render_openai(result, job_id, model, created)
    error = None
    if result.status in UNANSWERED:
        error = {"code": _error_code(result), "message": result.error or result.status}
    line: dict[str, Any] = {
        "custom_id": result.custom_id, "status": result.status.value, "output": result.output,
            "finish_reason": result.finish_reason, "usage": result.usage, "error": error,
            "model": model}
    if result.reasoning is not None:
        line["reasoning"] = result.reasoning
    if result.tool_calls:
        line["tool_calls"] = result.tool_calls
    return line


def _render_openai(result: LineResult, job_id: str, model: str, created: int) -> dict[str, Any]:
    # Ids derive from job and line so that results written twice are identical.
    req = uuid.uuid5(uuid.NAMESPACE_URL, f"batchq:{job_id}:{result.line_no}").hex
    line: dict[str, Any] = {"id": f"batch_req_{req}", "custom_id": result.custom_id,
                            "response": None, "error": None}
    if result.status is LineStatus.SUCCEEDED:
        if result.kind is LineKind.OPENAI_CHAT:
            message: dict[str, Any] = {"role": "assistant", "content": result.output}
            if result.tool_calls:
                # OpenAI's shape; content is null when the answer was only calls.
                message["content"] = result.output or None
                message["tool_calls"] = [
                    {"id": f"call_{req[:8]}{n}", "type": "function", "function": call}
                    for n, call in enumerate(result.tool_calls)]
            if result.reasoning is not None:
                # Where the OpenAI-compatible servers Qwen documents put it (vLLM, SGLang).
                message["reasoning_content"] = result.reasoning
            choice = {"index": 0, "message": message, "logprobs": None,
                      "finish_reason": result.finish_reason}
            body: dict[str, Any] = {"id": f"chatcmpl-{req}", "object": "chat.completion"}
        else:
            choice = {"index": 0, "text": result.output, "logprobs": None,
                      "finish_reason": result.finish_reason}
            body = {"id": f"cmpl-{req}", "object": "text_completion"}
        body.update({"created": created, "model": model, "choices": [choice],
                     "usage": result.usage})
        line["response"] = {"status_code": 200, "request_id": req, "body": body}
    elif result.status in UNANSWERED:
        line["error"] = {"code": _error_code(result), "message": result.error or result.status}
    return line


def _error_code(result: LineResult) -> str:
    """The code a script can act on, by line format (the plain one names statuses)."""
    if result.kind is LineKind.INVALID:
        return "invalid_input"
    if (result.error or "").startswith(JSON_INCOMPLETE):
        return JSON_INCOMPLETE  # cut off by the output limit before its JSON closed
    if result.status is LineStatus.EXPIRED:
        return "batch_expired"
    if result.kind.openai:
        return "cancelled" if result.status is LineStatus.CANCELLED else "generation_failed"
    return result.status.value
