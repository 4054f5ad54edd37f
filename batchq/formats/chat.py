"""What only OpenAI chat lines carry beyond messages: earlier tool calls and tool results,
`tools` and `tool_choice`, `response_format` and `chat_template_kwargs`."""

from __future__ import annotations

import json
import re
from typing import Any

from batchq.formats.fields import (
    LineError,
    as_bool,
    as_schema,
    content_text,
    nonempty_str,
    type_name,
)

ROLES = ("system", "user", "assistant")
CHAT_ONLY_KEYS = ("chat_template_kwargs", "tools", "tool_choice")
_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def parse_messages(value: Any, where: str, openai: bool = False) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise LineError(f"field '{where}': expected a non-empty list of messages")
    roles = (*ROLES, "tool") if openai else ROLES
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(msg, dict):
            raise LineError(f"field '{at}': expected an object, got {type_name(msg)}")
        role = msg.get("role")
        if role not in roles:
            raise LineError(f"field '{at}.role': expected one of {', '.join(roles)}, got {role!r}")
        if openai and role == "assistant" and msg.get("tool_calls"):
            content = msg.get("content")
            out.append({"role": role, "tool_calls": _tool_calls(msg["tool_calls"],
                                                                f"{at}.tool_calls"),
                        "content": "" if content in (None, "", []) else content_text(
                            content, f"{at}.content")})
        elif role == "tool":
            out.append({"role": role, "content": content_text(msg.get("content"), f"{at}.content"),
                        "tool_call_id": str(msg.get("tool_call_id") or "")})
        else:
            out.append({"role": role, "content": content_text(msg.get("content"), f"{at}.content")})
    if out[-1]["role"] == "assistant" and len(out) == 1:
        raise LineError(f"field '{where}': needs at least one system or user message")
    return out


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


def parse_tools(body: dict[str, Any]) -> list[dict[str, Any]] | None:
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
            spec["description"] = nonempty_str(function["description"],
                                                f"{at}.function.description")
        spec["parameters"] = as_schema(function.get("parameters", {"type": "object"}),
                                     f"{at}.function.parameters")
        tools.append({"type": "function", "function": spec})
    return tools


def parse_tool_choice(value: Any, tools: list[dict[str, Any]]) -> str:
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


def parse_response_format(value: Any) -> dict[str, Any] | None:
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
        return as_schema(spec.get("schema"), f"{where}.json_schema.schema")
    raise LineError(f"field '{where}': expected type text, json_object or json_schema",
                    param=where)


def parse_template_kwargs(value: Any) -> dict[str, Any]:
    """`chat_template_kwargs`, as OpenAI-compatible servers for Qwen3 take it: only
    enable_thinking means something to batchq; anything else is refused by name."""
    where = "body.chat_template_kwargs"
    if not isinstance(value, dict):
        raise LineError(f"field '{where}': expected an object, got {type_name(value)}",
                        param=where)
    for key in value:
        if key != "enable_thinking":
            raise LineError(f"field '{where}.{key}' is not supported (only enable_thinking)",
                            param=f"{where}.{key}")
    thinking = value.get("enable_thinking")
    return {} if thinking is None else {"thinking": as_bool(thinking, where + ".enable_thinking")}
