"""Glue between a Celery message and the engine: claim a chunk, run it, record every line once.

A worker process is pinned to one variant and holds one loaded Engine (`start_runtime`).
Results are written per GPU batch, so progress is visible and a crash loses at most a batch;
each line is written only while it is still pending, so a redelivered chunk never doubles one.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from batchq.db import session_scope, utcnow
from batchq.engine import BatchOutput, Engine, GenerationSettings, PromptIn
from batchq.inputs import Request
from batchq.jobs import finish_job_if_done
from batchq.models import Chunk, Job, Line
from batchq.settings import Settings
from batchq.variants import Variant

log = logging.getLogger(__name__)


@dataclass
class WorkerRuntime:
    engine: Engine
    variant: Variant
    settings: Settings
    name: str


_runtime: WorkerRuntime | None = None


def start_runtime(engine: Engine, variant: Variant, settings: Settings,
                  name: str | None = None) -> WorkerRuntime:
    global _runtime
    _runtime = WorkerRuntime(engine, variant, settings,
                             name or f"{variant.queue}@{socket.gethostname()}:{os.getpid()}")
    return _runtime


def handle_chunk(chunk_id: int) -> dict[str, Any]:
    """The Celery task body. Returns a summary, which Flower shows as the task's result."""
    if _runtime is None:
        raise RuntimeError("this process has no loaded model; start it with `batchq worker`")
    return run_chunk(chunk_id, _runtime)


def _claim(chunk_id: int, runtime: WorkerRuntime) -> tuple[Job, Chunk, list[Line]] | str:
    """Take the chunk if nobody holds a live lease on it. Returns why not, as a string."""
    now = utcnow()
    with session_scope(runtime.settings) as session:
        chunk = session.get(Chunk, chunk_id)
        if chunk is None:
            return "unknown chunk"
        job = session.get(Job, chunk.job_id)
        assert job is not None
        if job.queue != runtime.variant.queue:
            log.error("chunk %s belongs to queue %s, not %s; skipped", chunk_id, job.queue,
                      runtime.variant.queue)
            return f"wrong variant ({job.queue})"
        if job.status in ("completed", "failed", "cancelled") or chunk.status == "done":
            return "already final"
        claimed = session.execute(
            update(Chunk)
            .where(Chunk.id == chunk_id)
            .where((Chunk.status == "queued") | (Chunk.lease_expires_at < now))
            .values(status="running", worker=runtime.name, attempts=Chunk.attempts + 1,
                    started_at=now,
                    lease_expires_at=now + timedelta(seconds=runtime.settings.lease_seconds))
        ).rowcount
        if not claimed:
            return "held by another worker"
        if job.status == "queued":
            job.status = "running"
            job.started_at = now
        lines = session.scalars(
            select(Line).where(Line.job_id == job.id, Line.chunk_seq == chunk.seq,
                               Line.status == "pending")
            .order_by(Line.line_no)).all()
        session.execute(update(Line).where(Line.id.in_([line.id for line in lines]))
                        .values(attempts=Line.attempts + 1, started_at=now))
        session.flush()
        return job, chunk, list(lines)


def _prompts(job: Job, lines: list[Line]) -> list[PromptIn]:
    job_settings = json.loads(job.settings)
    prompts = []
    for line in lines:
        request = Request.from_row(line.custom_id, line.kind, line.request)
        settings = GenerationSettings.merged(job_settings, request.params)
        prompts.append(PromptIn(line.id, request.messages, request.text, settings))
    return prompts


def _record(output: BatchOutput, chunk_id: int, job_id: str, runtime: WorkerRuntime) -> bool:
    """Store one batch's lines and metrics in one commit. Returns False if the job was cancelled."""
    now = utcnow()
    with session_scope(runtime.settings) as session:
        for c in output.completions:
            values: dict[str, Any] = {"prompt_tokens": c.prompt_tokens, "finished_at": now}
            if c.error is None:
                values.update(status="succeeded", output=c.text, finish_reason=c.finish_reason,
                              completion_tokens=c.completion_tokens)
            else:
                values.update(status="failed", error=c.error, completion_tokens=0)
            # Only a pending line is written: a line is final once, whoever gets there first.
            session.execute(update(Line).where(Line.id == c.key, Line.status == "pending")
                            .values(**values))
        s = output.stats
        session.execute(update(Chunk).where(Chunk.id == chunk_id).values(
            batches=Chunk.batches + (1 if s.rows else 0),
            prompt_tokens=Chunk.prompt_tokens + s.prompt_tokens,
            padded_prompt_tokens=Chunk.padded_prompt_tokens + s.padded_prompt_tokens,
            completion_tokens=Chunk.completion_tokens + s.completion_tokens,
            decode_slots=Chunk.decode_slots + s.decode_slots,
            generate_seconds=Chunk.generate_seconds + s.seconds,
            peak_memory_bytes=s.peak_memory_bytes,
            lease_expires_at=now + timedelta(seconds=runtime.settings.lease_seconds)))
        status = session.scalar(select(Job.status).where(Job.id == job_id))
        return status != "cancelled"


def _fail_open_lines(chunk: Chunk, runtime: WorkerRuntime, reason: str) -> None:
    with session_scope(runtime.settings) as session:
        session.execute(update(Line).where(
            Line.job_id == chunk.job_id, Line.chunk_seq == chunk.seq, Line.status == "pending")
            .values(status="failed", error=reason, finished_at=utcnow()))


def _finish(chunk: Chunk, runtime: WorkerRuntime) -> None:
    with session_scope(runtime.settings) as session:
        session.execute(update(Chunk).where(Chunk.id == chunk.id).values(
            status="done", finished_at=utcnow(), lease_expires_at=None))
        final = finish_job_if_done(session, chunk.job_id)
    if final:
        log.info("job %s %s", chunk.job_id, final)


def run_chunk(chunk_id: int, runtime: WorkerRuntime) -> dict[str, Any]:
    claim = _claim(chunk_id, runtime)
    if isinstance(claim, str):
        log.info("chunk %s skipped: %s", chunk_id, claim)
        return {"chunk": chunk_id, "skipped": claim}
    job, chunk, lines = claim
    label = f"job={job.id} chunk={chunk.seq}/{job.total_chunks} lines={chunk.first_line}-{chunk.last_line}"
    log.info("%s started (%d open lines)", label, len(lines))
    done = failed = tokens = 0
    seconds = 0.0
    cancelled = False
    try:
        for output in runtime.engine.generate(_prompts(job, lines)):
            keep_going = _record(output, chunk.id, job.id, runtime)
            done += sum(c.error is None for c in output.completions)
            failed += sum(c.error is not None for c in output.completions)
            tokens += output.stats.completion_tokens
            seconds += output.stats.seconds
            if not keep_going:
                cancelled = True
                break
    except Exception as exc:
        log.exception("%s failed", label)
        _fail_open_lines(chunk, runtime, f"generation failed: {type(exc).__name__}: {exc}")
    _finish(chunk, runtime)
    summary = {"job": job.id, "chunk": chunk.seq, "lines": len(lines), "succeeded": done,
               "failed": failed, "completion_tokens": tokens,
               "tokens_per_second": round(tokens / seconds, 1) if seconds else None}
    if cancelled:
        summary["cancelled"] = True
    log.info("%s finished: %s", label, summary)
    return summary


def serve_job(job_id: str, runtime: WorkerRuntime, on_chunk=None) -> None:
    """Run every chunk of one job in this process (`batchq run`), through the same claim path
    as a queued message, so a concurrent worker and a later redelivery are both harmless."""
    from batchq.jobs import chunk_ids, status

    for chunk_id in chunk_ids(job_id, runtime.settings):
        run_chunk(chunk_id, runtime)
        if on_chunk is not None:
            on_chunk(status(job_id, runtime.settings))
