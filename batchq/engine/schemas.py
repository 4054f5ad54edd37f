"""JSON schemas an output must match, and the tool calls a line requires: checked when a file
is submitted, compiled to the grammar that constrains decoding (engine/constraints.py).
llguidance only; no torch."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

# Compact JSON: a model cannot wander off into endless whitespace between tokens.
_COMPILE: Any = {"whitespace_flexible": False}


def schema_problem(schema: Any) -> str | None:
    """Why a schema cannot constrain decoding (a keyword llguidance does not implement, a
    malformed schema), or None. Nothing is relaxed: a schema that would only be partly
    enforced is refused."""
    if not isinstance(schema, dict):
        return "a JSON schema is an object"
    # An extraction file repeats one schema on every line: each is compiled once.
    return _problem(json.dumps(schema))


@lru_cache(maxsize=256)
def _problem(schema_json: str) -> str | None:
    import llguidance

    try:
        compiled = llguidance.LLMatcher.grammar_from_json_schema(schema_json, defaults=_COMPILE)
    except ValueError as exc:
        return str(exc)
    error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(compiled)
    if error:
        return messages[0]
    return None


@lru_cache(maxsize=256)
def grammar(schema_json: str) -> str:
    """The llguidance grammar of a schema (as JSON text), compiled once per schema."""
    import llguidance

    return str(llguidance.LLMatcher.grammar_from_json_schema(schema_json, defaults=_COMPILE))


def tool_call_schema(tools: Sequence[Mapping[str, Any]], only: str | None = None) -> dict[str, Any]:
    """One call as Qwen writes it inside <tool_call>: {"name": ..., "arguments": {...}}, the
    arguments held to that function's parameters."""
    options = [{"type": "object", "properties": {
                   "name": {"const": t["function"]["name"]},
                   "arguments": t["function"].get("parameters") or {"type": "object"}},
                "required": ["name", "arguments"], "additionalProperties": False}
               for t in tools if only is None or t["function"]["name"] == only]
    return {"anyOf": options, "x-guidance": {"whitespace_flexible": False}}


@lru_cache(maxsize=256)
def tool_grammar(tools_json: str, choice: str) -> str:
    """The grammar of a line that must call a tool: `required` (one call or more, any of the
    tools) or `function:NAME` (exactly one call of NAME), in Qwen's <tool_call> blocks."""
    import llguidance

    only = choice.removeprefix("function:") if choice.startswith("function:") else None
    call = json.dumps(tool_call_schema(json.loads(tools_json), only))
    repeat = "" if only else ' ("\\n" call)*'
    lark = (f"start: call{repeat}\n"
            f'call: <tool_call> "\\n" args "\\n" </tool_call>\n'
            f"args: %json {call}\n")
    return str(llguidance.LLMatcher.grammar_from_lark(lark))
