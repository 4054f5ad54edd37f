"""Result formats out: a stored line as the plain result line or OpenAI's batch output line."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from batchq.formats.lines import LineKind
from batchq.states import UNANSWERED, LineStatus

# The error code of a line whose JSON the output limit cut off (its error text starts so).
JSON_INCOMPLETE = "json_incomplete"


@dataclass(slots=True)
class LineResult:
    """A stored line as the results writer needs it (a value, not a table row). `kind` and
    `status` are members of their enums (the store reads them so). Not frozen: a frozen
    dataclass's __init__ sets each of its thirteen fields through object.__setattr__, seven
    times slower (1.4 µs a line), and results build one per line, a million for a big job."""

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
    req = _request_id(job_id, result.line_no)
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


def _request_id(job_id: str, line_no: int) -> str:
    """uuid5(NAMESPACE_URL, "batchq:JOB:LINE").hex: ids derive from job and line, so results
    written twice are identical. Spelt out (RFC 4122: SHA-1, then the version and variant
    bits) because uuid.uuid5 took a third of rendering a line."""
    hasher = _job_hasher(job_id).copy()
    hasher.update(str(line_no).encode())
    digest = bytearray(hasher.digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC 4122 variant
    return digest.hex()


@lru_cache(maxsize=64)
def _job_hasher(job_id: str) -> hashlib._Hash:
    return hashlib.sha1(uuid.NAMESPACE_URL.bytes + f"batchq:{job_id}:".encode())


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
