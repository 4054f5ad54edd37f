"""The checks every line's fields go through: the error a person reads, numbers in range,
strings, stop lists, schemas, and the generation settings a line may set."""

from __future__ import annotations

import math
from typing import Any

MAX_TOKEN_KEYS = ("max_new_tokens", "max_tokens", "max_completion_tokens")
# Qwen's recommended settings use these beyond OpenAI's temperature and top_p.
SAMPLING_KEYS = ("top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty")
PARAM_KEYS = (*MAX_TOKEN_KEYS, "temperature", "top_p", "seed", "stop", *SAMPLING_KEYS)
MAX_STOP_STRINGS = 4


class LineError(ValueError):
    """What is wrong with one line, phrased for the person who wrote it. `code` and `param`
    (the field, e.g. body.model) are what the HTTP API reports in a batch's errors.data."""

    def __init__(self, message: str, code: str = "invalid_request", param: str | None = None):
        super().__init__(message)
        self.code = code
        self.param = param


def parse_params(obj: dict[str, Any], prefix: str) -> dict[str, Any]:
    params: dict[str, Any] = {}
    given = [k for k in MAX_TOKEN_KEYS if k in obj]
    if len(given) > 1:
        raise LineError(f"give only one of {', '.join(prefix + k for k in given)}")
    if given:
        params["max_new_tokens"] = int_in(obj[given[0]], prefix + given[0], 1, 1_000_000)
    if "temperature" in obj:
        params["temperature"] = num_in(obj["temperature"], prefix + "temperature", 0.0, 2.0)
    if "top_p" in obj:
        params["top_p"] = num_in(obj["top_p"], prefix + "top_p", 0.0, 1.0)
        if params["top_p"] == 0.0:
            raise LineError(f"field '{prefix}top_p' must be greater than 0")
    if "seed" in obj and obj["seed"] is not None:
        params["seed"] = int_in(obj["seed"], prefix + "seed", 0, 2**63 - 1)
    if "stop" in obj and obj["stop"] is not None:
        params["stop"] = stop_strings(obj["stop"], prefix + "stop")
    if obj.get("top_k") is not None:
        # -1 is how vLLM and SGLang spell "off"; batchq's own is 0.
        params["top_k"] = max(0, int_in(obj["top_k"], prefix + "top_k", -1, 1_000_000))
    if obj.get("min_p") is not None:
        params["min_p"] = num_in(obj["min_p"], prefix + "min_p", 0.0, 1.0)
    if obj.get("repetition_penalty") is not None:
        params["repetition_penalty"] = num_in(obj["repetition_penalty"],
                                               prefix + "repetition_penalty", 0.0, 2.0)
        if params["repetition_penalty"] == 0.0:
            raise LineError(f"field '{prefix}repetition_penalty' must be greater than 0 "
                            "(1 is off)")
    for key in ("presence_penalty", "frequency_penalty"):
        if obj.get(key) is not None:
            params[key] = num_in(obj[key], prefix + key, -2.0, 2.0)
    return params


def int_in(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LineError(f"field '{where}': expected an integer, got {type_name(value)}")
    if not low <= value <= high:
        raise LineError(f"field '{where}': {value} is outside {low}..{high}")
    return value


def num_in(value: Any, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LineError(f"field '{where}': expected a number, got {type_name(value)}")
    if not math.isfinite(value):  # a literal such as 1e999, which JSON reads as infinity
        raise LineError(f"field '{where}': {type_name(value)} is outside {low}..{high}")
    if not low <= value <= high:
        raise LineError(f"field '{where}': {value} is outside {low}..{high}")
    return float(value)


def stop_strings(value: Any, where: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if (not isinstance(items, list) or not items or len(items) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) and s for s in items)):
        raise LineError(f"field '{where}': expected a string or a list of 1 to "
                        f"{MAX_STOP_STRINGS} non-empty strings")
    return items


def nonempty_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise LineError(f"field '{where}': expected a string, got {type_name(value)}")
    if not value.strip():
        raise LineError(f"field '{where}' is empty")
    return value


def as_bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise LineError(f"field '{where}': expected true or false, got {type_name(value)}",
                        param=where)
    return value


def as_schema(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise LineError(f"field '{where}': expected a JSON schema (an object), got "
                        f"{type_name(value)}", param=where)
    return value


def content_text(value: Any, where: str) -> str:
    # OpenAI also allows a list of parts; only text parts mean anything to a text model.
    if isinstance(value, list):
        texts = []
        for part in value:
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise LineError(f"field '{where}': only text parts are supported")
            texts.append(part["text"])
        value = "".join(texts)
    return nonempty_str(value, where)


def type_name(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "a number too large to represent"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(value), "a value")
