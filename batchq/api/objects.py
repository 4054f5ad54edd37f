"""batchq's values in the shapes of OpenAI's Files and Batches API (what the `openai` client
parses with strict validation)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from batchq.service.batches import BatchView
from batchq.states import BatchStatus
from batchq.store.tenancy import FileView
from batchq.store.views import JobView


def _ts(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def file_object(view: FileView) -> dict[str, Any]:
    return {"id": view.id, "object": "file", "bytes": view.bytes,
            "created_at": _ts(view.created_at), "filename": view.filename,
            "purpose": view.purpose, "status": "processed", "expires_at": None,
            "status_details": None}


def batch_object(batch: BatchView) -> dict[str, Any]:
    row, job, status = batch.row, batch.job, batch.status
    finished = job.metrics.finished_at if job else None
    counts = job.counts if job else None
    return {
        "id": row.id, "object": "batch", "endpoint": row.endpoint, "model": row.model,
        "errors": ({"object": "list", "data": row.errors} if row.errors else None),
        "input_file_id": row.input_file_id, "completion_window": row.completion_window,
        "status": status, "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": _ts(row.created_at),
        "in_progress_at": _ts(row.created_at) if job else None,  # validated at creation
        "expires_at": _ts(row.expires_at),
        "finalizing_at": _ts(finished) if status is BatchStatus.COMPLETED else None,
        "completed_at": _ts(finished) if status is BatchStatus.COMPLETED else None,
        "failed_at": _ts(row.failed_at),
        "expired_at": _ts(finished) if status is BatchStatus.EXPIRED else None,
        "cancelling_at": _ts(row.cancelling_at),
        "cancelled_at": _ts(finished) if status is BatchStatus.CANCELLED else None,
        "request_counts": {"total": counts.total if counts else 0,
                           "completed": counts.succeeded if counts else 0,
                           "failed": counts.failed + counts.expired if counts else 0},
        "metadata": row.metadata,
        "usage": usage(job),
    }


def usage(job: JobView | None) -> dict[str, Any]:
    """Tokens the batch's generations used (an identical line answered from another's output
    costs nothing); a thinking model's reasoning is a part of the output tokens."""
    m = job.metrics if job else None
    prompt, output = (m.prompt_tokens, m.completion_tokens) if m else (0, 0)
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": m.reasoning_tokens if m else 0},
            "total_tokens": prompt + output}


def page(objects: Sequence[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A cursor page: the next one starts `after` the last id."""
    return {"object": "list", "data": list(objects),
            "first_id": objects[0]["id"] if objects else None,
            "last_id": objects[-1]["id"] if objects else None, "has_more": has_more}
