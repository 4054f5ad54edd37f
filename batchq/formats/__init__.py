"""JSONL line formats in (lines: the three shapes; chat: OpenAI chat extras; fields: the
checks), result formats out (results), and the JSON batchq writes (compact). Import from
here."""

from batchq.formats.compact import compact_json, json_line
from batchq.formats.fields import PARAM_KEYS, LineError
from batchq.formats.lines import (
    OPENAI_URLS,
    LineKind,
    Request,
    is_text,
    iter_raw_lines,
    openai_kind,
    parse_line,
)
from batchq.formats.results import JSON_INCOMPLETE, LineResult, render_result

__all__ = ["JSON_INCOMPLETE", "OPENAI_URLS", "PARAM_KEYS", "LineError", "LineKind", "LineResult",
           "Request", "compact_json", "is_text", "iter_raw_lines", "json_line", "openai_kind",
           "parse_line", "render_result"]
