"""Glue between a Celery message and the engine: claim a chunk, run it, record every line once.

A worker process is pinned to one variant and holds one loaded Engine (`start_runtime`).
Results are written per GPU batch, so progress is visible and a crash loses at most a batch;
each line is written only while it is still pending, so a redelivered chunk never doubles one.
Each batch counts an attempt on its lines before it starts; a line left pending with attempts
was in a batch that never ended, and runs alone until it succeeds or uses BATCHQ_MAX_ATTEMPTS.
Database outages are waited out (`retrying`); leases and the sweep live in batchq.recovery.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from batchq.db import retrying, session_scope, utcnow
from batchq.engine import BatchOutput, Engine, GenerationSettings, PromptIn
from batchq.errors import ServiceUnavailable
from batchq.inputs import Request
from batchq.jobs import FINAL_JOB_STATUSES, chunk_label, finish_job_if_done
from batchq.models import BatchRun, Chunk, Job, Line
from batchq.recovery import LeaseKeeper, shutdown_requested
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


def install_worker_hooks(settings: Settings, queue: str) -> None:
    """In a `batchq worker` process: sweep once Celery is ready; on SIGTERM, hand back the
    running chunk at its next batch boundary (Celery's warm shutdown then exits)."""
    from celery import signals

    from batchq.recovery import Sweeper

    sweeper = Sweeper(settings, queue)

    def ready(**_: Any) -> None:
        sweeper.start()

    def stopping(**_: Any) -> None:
        shutdown_requested.set()
        sweeper.stop()

    signals.worker_ready.connect(ready, weak=False)
    signals.worker_shutting_down.connect(stopping, weak=False)


def handle_chunk(chunk_id: int, task: Any = None) -> dict[str, Any]:
    """The Celery task body. Returns a summary, which Flower shows as the task's result;
    while it runs, each batch sends a `task-progress` event, which Flower shows as the task's
    state (PROGRESS) and result (how far it is) until the summary replaces them."""
    if _runtime is None:
        raise RuntimeError("this process has no loaded model; start it with `batchq worker`")

    def progress(text: str) -> None:
        try:
            # No retries: progress is for people, and must never hold up the chunk.
            task.send_event("task-progress", retry=False, result=text)
        except Exception as exc:
            log.debug("progress event not sent: %s", exc)

    return run_chunk(chunk_id, _runtime, progress if task is not None else None)


@dataclass
class _Claim:
    job: Job
    chunk: Chunk
    lines: list[Line]  # its pending lines, each with the attempts it has had
    token: int  # this claim's number: the lease's fencing token


def _claim(chunk_id: int, runtime: WorkerRuntime) -> _Claim | str:
    """Take the chunk if nobody holds a live lease on it. Returns why not, as a string."""
    now = utcnow()
    settings = runtime.settings
    with session_scope(settings) as session:
        chunk = session.get(Chunk, chunk_id)
        if chunk is None:
            return "unknown chunk"
        job = session.get(Job, chunk.job_id)
        assert job is not None
        if job.queue != runtime.variant.queue:
            log.error("chunk %s belongs to queue %s, not %s; skipped", chunk_id, job.queue,
                      runtime.variant.queue)
            return f"wrong variant ({job.queue})"
        if job.status in FINAL_JOB_STATUSES or chunk.status == "done":
            return "already final"
        claimed = session.execute(
            update(Chunk)
            .where(Chunk.id == chunk_id)
            .where((Chunk.status == "queued") | (Chunk.lease_expires_at < now))
            .values(status="running", worker=runtime.name, attempts=Chunk.attempts + 1,
                    started_at=now,
                    lease_expires_at=now + timedelta(seconds=settings.lease_seconds))
        ).rowcount
        if not claimed:
            return "held by another worker"
        session.refresh(chunk)
        if job.status == "queued":
            job.status = "running"
            job.started_at = job.started_at or now  # a retried job keeps its first start
        lines = list(session.scalars(
            select(Line).where(Line.job_id == job.id, Line.chunk_seq == chunk.seq,
                               Line.status == "pending")
            .order_by(Line.line_no)))
        return _Claim(job, chunk, lines, chunk.attempts)


def _gave_up(attempts: int, last_error: str | None) -> str:
    why = last_error or ("the worker running it stopped each time (crashed, was killed, or "
                         "lost its lease)")
    return f"gave up after {attempts} attempts: {why}"


def _prompt(job_settings: dict[str, Any], line: Line) -> PromptIn:
    request = Request.from_row(line.custom_id, line.kind, line.request)
    settings = GenerationSettings.merged(job_settings, request.params)
    return PromptIn(line.id, request.messages, request.text, settings)


def _update_pending(runtime: WorkerRuntime, what: str, line_ids: list[int],
                    **values: Any) -> None:
    """Change lines that are still pending, in one transaction that outlasts an outage."""
    def update_lines() -> None:
        with session_scope(runtime.settings) as session:
            session.execute(update(Line).where(Line.id.in_(line_ids), Line.status == "pending")
                            .values(**values))

    retrying(runtime.settings, what, update_lines)


def _record(output: BatchOutput, chunk: Chunk, runtime: WorkerRuntime) -> bool:
    """Store one batch's lines and metrics in one commit. Returns False if the job was cancelled."""
    def write() -> bool:
        now = utcnow()
        with session_scope(runtime.settings) as session:
            for c in output.completions:
                values: dict[str, Any] = {"prompt_tokens": c.prompt_tokens, "finished_at": now}
                if c.error is None:
                    values.update(status="succeeded", output=c.text, error=None,
                                  finish_reason=c.finish_reason,
                                  completion_tokens=c.completion_tokens)
                else:
                    values.update(status="failed", error=c.error, completion_tokens=0)
                # Only a pending line is written: a line is final once, whoever gets there first.
                session.execute(update(Line).where(Line.id == c.key, Line.status == "pending")
                                .values(**values))
            s = output.stats
            session.execute(update(Chunk).where(Chunk.id == chunk.id).values(
                batches=Chunk.batches + (1 if s.rows else 0),
                prompt_tokens=Chunk.prompt_tokens + s.prompt_tokens,
                padded_prompt_tokens=Chunk.padded_prompt_tokens + s.padded_prompt_tokens,
                completion_tokens=Chunk.completion_tokens + s.completion_tokens,
                decode_slots=Chunk.decode_slots + s.decode_slots,
                generate_seconds=Chunk.generate_seconds + s.seconds,
                peak_memory_bytes=s.peak_memory_bytes))
            if s.rows:
                session.add(BatchRun(
                    job_id=chunk.job_id, chunk_seq=chunk.seq, worker=runtime.name,
                    finished_at=now, seconds=s.seconds, rows=s.rows,
                    prompt_tokens=s.prompt_tokens, padded_prompt_tokens=s.padded_prompt_tokens,
                    completion_tokens=s.completion_tokens, decode_slots=s.decode_slots))
            return session.scalar(select(Job.status).where(Job.id == chunk.job_id)) != "cancelled"

    return retrying(runtime.settings, "storing a batch's results", write)


def _finish(chunk: Chunk, token: int, runtime: WorkerRuntime) -> None:
    def finish() -> str | None:
        with session_scope(runtime.settings) as session:
            session.execute(update(Chunk).where(Chunk.id == chunk.id, Chunk.attempts == token)
                            .values(status="done", finished_at=utcnow(), lease_expires_at=None))
            return finish_job_if_done(session, chunk.job_id)

    final = retrying(runtime.settings, "finishing a chunk", finish)
    if final:
        log.info("job %s %s", chunk.job_id, final)


def _hand_back(chunk: Chunk, token: int, runtime: WorkerRuntime) -> None:
    """Give the chunk up now (shutdown): queued again, with a message, for any worker."""
    from batchq.celery_app import publish_chunks

    def release() -> bool:
        with session_scope(runtime.settings) as session:
            return bool(session.execute(
                update(Chunk).where(Chunk.id == chunk.id, Chunk.attempts == token)
                .values(status="queued", worker=None, lease_expires_at=None,
                        enqueued_at=utcnow())).rowcount)

    if retrying(runtime.settings, "handing a chunk back", release):
        try:
            publish_chunks(runtime.settings, runtime.variant.queue, [chunk.id])
        except Exception as exc:  # the sweep sends it once the broker is back
            log.warning("chunk %s handed back, but its message could not be sent: %s",
                        chunk.id, exc)


class _ChunkRun:
    """One claim's generation: batches of the lines never tried, then each suspect alone."""

    def __init__(self, claim: _Claim, runtime: WorkerRuntime, lease: LeaseKeeper,
                 on_progress: Callable[[str], None] | None = None):
        self.claim = claim
        self.on_progress = on_progress
        self.runtime = runtime
        self.lease = lease
        job_settings = json.loads(claim.job.settings)
        self.prompts = {line.id: _prompt(job_settings, line) for line in claim.lines}
        self.attempts = {line.id: line.attempts for line in claim.lines}
        self.errors = {line.id: line.error for line in claim.lines}
        self.in_flight: list[int] = []
        self.done = self.failed = self.tokens = 0
        self.seconds = 0.0
        self.stopped: str | None = None  # cancelled | shutdown | lease lost

    def run(self) -> None:
        fresh = [i for i in self.prompts if self.attempts[i] == 0]
        # Lines that were in a batch that never ended run alone: a line that crashes its
        # worker then takes down only itself, and fails once it has used its attempts.
        suspects = [i for i in self.prompts if self.attempts[i] > 0]
        while fresh and not self.stopped:
            fresh, raised = self._batches(fresh)
            suspects += raised
        for line_id in suspects:
            while not self.stopped and self._alone(line_id):
                pass

    def _on_batch(self, keys: list[int]) -> None:
        self.in_flight = list(keys)
        for key in keys:
            self.attempts[key] += 1
        # An attempt counts before the batch runs (see Line.attempts).
        _update_pending(self.runtime, "counting a batch's attempts", keys,
                        attempts=Line.attempts + 1, started_at=utcnow())

    def _batches(self, line_ids: list[int]) -> tuple[list[int], list[int]]:
        """Run lines in the engine's batches. On an error, returns the lines not yet started
        and those of the batch that raised."""
        left = set(line_ids)
        self.in_flight = []
        try:
            for output in self.runtime.engine.generate([self.prompts[i] for i in line_ids],
                                                       on_batch=self._on_batch):
                self._store(output)
                left -= {c.key for c in output.completions}
                if self.stopped:
                    break
        except ServiceUnavailable:
            raise  # the database stayed away: not the lines' fault; the lease runs out instead
        except Exception as exc:
            # Outside any batch (while encoding, say), every line not yet done is a suspect.
            raised = [i for i in self.in_flight if i in left] or [i for i in line_ids if i in left]
            self._raised(raised, exc)
            left -= set(raised)
            return [i for i in line_ids if i in left], raised
        return [], []

    def _alone(self, line_id: int) -> bool:
        """One attempt at one line; True if it should be tried again."""
        if self.attempts[line_id] >= self.runtime.settings.max_attempts:
            # It used its attempts, in this claim or earlier ones: it fails with its last reason.
            log.warning("job=%s line id %s failed after %d attempts", self.claim.job.id,
                        line_id, self.attempts[line_id])
            _update_pending(self.runtime, "failing a line", [line_id], status="failed",
                            error=_gave_up(self.attempts[line_id], self.errors[line_id]),
                            finished_at=utcnow())
            self.failed += 1
            return False
        self.in_flight = []
        try:
            for output in self.runtime.engine.generate([self.prompts[line_id]],
                                                       on_batch=self._on_batch):
                self._store(output)
        except ServiceUnavailable:
            raise
        except Exception as exc:
            if line_id not in self.in_flight:  # it raised before its batch began: still a try
                self._on_batch([line_id])
            self._raised([line_id], exc)
            return True
        return False

    def _raised(self, line_ids: list[int], exc: Exception) -> None:
        reason = f"generation failed: {type(exc).__name__}: {exc}"
        log.warning("job=%s chunk=%s: a batch of %d line(s) raised %s; each runs alone next",
                    self.claim.job.id, self.claim.chunk.seq, len(line_ids), type(exc).__name__)
        for line_id in line_ids:
            self.errors[line_id] = reason
        if line_ids:
            # They stay pending, with the reason they will fail with if it lasts.
            _update_pending(self.runtime, "noting a failed batch", line_ids, error=reason)

    def progress(self) -> str:
        rate = f", {self.tokens / self.seconds:.1f} tok/s" if self.seconds else ""
        return (f"{self.done + self.failed}/{len(self.claim.lines)} lines done "
                f"({self.failed} failed), {self.tokens} tokens out{rate}")

    def _store(self, output: BatchOutput) -> None:
        keep_going = _record(output, self.claim.chunk, self.runtime)
        self.done += sum(c.error is None for c in output.completions)
        self.failed += sum(c.error is not None for c in output.completions)
        self.tokens += output.stats.completion_tokens
        self.seconds += output.stats.seconds
        if self.on_progress is not None:
            self.on_progress(self.progress())
        if not keep_going:
            self.stopped = "cancelled"
        elif self.lease.lost.is_set():
            self.stopped = "lease lost"
        elif shutdown_requested.is_set():
            self.stopped = "shutdown"


def run_chunk(chunk_id: int, runtime: WorkerRuntime,
              on_progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    claim = retrying(runtime.settings, "claiming a chunk", lambda: _claim(chunk_id, runtime))
    if isinstance(claim, str):
        log.info("chunk %s skipped: %s", chunk_id, claim)
        return {"chunk": chunk_id, "skipped": claim}
    job, chunk = claim.job, claim.chunk
    label = chunk_label(job.id, chunk.seq, job.total_chunks, chunk.first_line, chunk.last_line,
                        job.queue)
    log.info("%s started (%d open lines)", label, len(claim.lines))
    with LeaseKeeper(runtime.settings, chunk.id, claim.token) as lease:
        work = _ChunkRun(claim, runtime, lease, on_progress)
        work.run()
    if work.stopped == "shutdown":
        _hand_back(chunk, claim.token, runtime)
        log.info("%s handed back at shutdown", label)
    elif work.stopped != "lease lost":
        _finish(chunk, claim.token, runtime)
    # Flower shows this dict as the task's result, in its narrow column: the counts first.
    summary: dict[str, Any] = {
        "succeeded": work.done, "failed": work.failed, "lines": len(claim.lines),
        "completion_tokens": work.tokens,
        "tokens_per_second": round(work.tokens / work.seconds, 1) if work.seconds else None,
        "job": job.id, "chunk": chunk.seq}
    if work.stopped:
        summary["stopped"] = work.stopped
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
