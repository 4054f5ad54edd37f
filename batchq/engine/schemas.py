"""JSON schemas an output must match: checked when a file is submitted, compiled to the
grammar that constrains decoding (engine/constraints.py). llguidance only; no torch."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

# Compact JSON: a model cannot wander off into endless whitespace between tokens.
_COMPILE: Any = {"whitespace_flexible": False}


def schema_problem(schema: Any) -> str | None:
    """Why a schema cannot constrain decoding (a keyword llguidance does not implement, a
    malformed schema), or None. Nothing is relaxed: a schema that would only be partly
    enforced is refused."""
    import llguidance

    if not isinstance(schema, dict):
        return "a JSON schema is an object"
    try:
        compiled = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_COMPILE)
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
