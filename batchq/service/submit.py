"""Submitting a file: validate every line, store the job whole in one transaction, queue it."""

from __future__ import annotations

import uuid
from array import array
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from batchq.config import Settings, get_settings
from batchq.engine.types import DEFAULT_MAX_NEW_TOKENS
from batchq.formats import LineKind
from batchq.service import dispatch
from batchq.service.check_parts import check_file
from batchq.service.intake import (
    Checked,
    RowSpool,
    check_all,
    chunk_by_size,
    open_input,
    refuse_unless_runnable,
    variant_of_chunks,
)
from batchq.service.routing import ModelRouter
from batchq.store.intake import Also, NewJob, NewLine, create_job
from batchq.store.migrate import ensure_schema
from batchq.variants import Variant, resolve


@dataclass(frozen=True)
class JobSettings:
    """Job-level generation settings; each line's own settings override them."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # "model": start from the model's own generation_config (Qwen's recommended values);
    # None or "greedy": batchq's reproducible default.
    sampling: str | None = None
    # The chat template's enable_thinking (Qwen3); None: the template's own default.
    thinking: bool | None = None
    # A JSON schema every line's output must match (lines may give their own).
    json_schema: dict[str, Any] | None = None
    # False: identical greedy lines are each generated (`--no-dedup`); None: once, and shared.
    dedup: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def validate_file(path: str, settings: Settings | None = None, *,
                  model: Variant | None = None, model_override: bool = False) -> int:
    """Check every line of a file without storing anything; returns the number of lines.
    With `model` (the job's --model), each line's own model is resolved as `submit` would,
    so a line naming one that nothing resolves is refused now too.

    Raises InputError naming each bad line (the first 20, then a count).
    """
    settings = settings or get_settings()
    route = None if model is None else ModelRouter(model, settings, override=model_override)
    with open_input(path, settings) as (source, stream):
        checked = check_all(source, stream, settings, DEFAULT_MAX_NEW_TOKENS, None, route,
                            spool=False)
    refuse_unless_runnable(source, checked, skip_invalid=False)
    return checked.accepted


def submit(path: str, model: str, quant: str | None = None, *,
           job_settings: JobSettings | None = None, name: str | None = None,
           settings: Settings | None = None, skip_invalid: bool = False,
           refused: list[str] | None = None, model_override: bool = False) -> str:
    """Validate the whole file, store job, lines and chunks in one transaction, then enqueue.

    `model` runs the lines that name no model of their own (with model_override, every line).
    Returns the new job's id. Raises InputError (nothing stored) if any line is invalid, unless
    skip_invalid: then each bad line is stored as a failed line with its reason (the first
    few reasons are appended to `refused`), and the good ones run.
    """
    settings = settings or get_settings()
    variant = resolve(model, quant, settings.model_aliases)
    job_settings = job_settings or JobSettings()
    default_limit = job_settings.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    router = ModelRouter(variant, settings, override=model_override)
    with open_input(path, settings) as (source, stream):
        # A big file (or stdin, spooled to one) is checked in two processes.
        on_disk = path if path != "-" else stream.name
        checked = check_file(source, Path(on_disk), settings, default_limit, router)
    checked.variants = router.variants
    refuse_unless_runnable(source, checked, skip_invalid)
    if refused is not None:
        refused.extend(checked.problems)
    return store_checked(settings, source, checked, variant,
                         NewJob(id=uuid.uuid4().hex, name=name, source=source,
                                model=variant.model, quant=variant.quant,
                                queue=variant.queue, settings=job_settings.to_dict(),
                                total_lines=checked.accepted + len(checked.refused)))


def check_services(settings: Settings) -> None:
    """Raise ServiceUnavailable unless a job could be stored and queued now: the database
    answers at the current schema (the embedded one is migrated) and so does the broker."""
    from batchq.queue.publish import check_broker  # Celery: only where a message is sent

    ensure_schema(settings.database_url)
    check_broker(settings)


def store_checked(settings: Settings, source: str, checked: Checked,
                  variant: Variant, job: NewJob, also: Also | None = None) -> str:
    """A checked file becomes a job: its chunks planned, every row stored in one transaction
    (with `also`'s rows), its chunks queued. Returns the job's id."""
    from batchq.queue.publish import check_broker  # Celery: only where a message is sent

    chunk_of = chunk_by_size(checked.sizes, settings.chunk_size, checked.variant_of)
    variants = checked.variants or [variant]  # no router: every line runs on `variant`
    variant_of_chunk = {seq: variants[number]
                        for seq, number in variant_of_chunks(chunk_of, checked.variant_of).items()}
    checked.sizes = array("q")
    check_broker(settings)
    rows = checked.rows
    assert rows is not None, "checked without a spool: nothing to store"
    try:
        chunks = create_job(settings, job, _new_lines(rows, chunk_of), variant_of_chunk, also)
    finally:
        rows.close()
    dispatch.send(settings, chunks)
    return job.id


def _new_lines(rows: RowSpool, chunk_of: array[int]) -> Iterator[NewLine]:
    """Each line as it will be stored, in file order, from the check's spool."""
    accepted = 0
    for line_no, kind, custom_id, payload in rows.rows():
        if kind is LineKind.INVALID:
            yield NewLine(line_no, custom_id, kind, refused=payload)
            continue
        yield NewLine(line_no, custom_id, kind, payload, chunk_seq=chunk_of[accepted])
        accepted += 1
