"""Totals across all jobs, by variant queue, for `batchq metrics`. A line's variant is its
chunk's queue (a refused line, which has no chunk, counts under its job's)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import and_, func, select

from batchq.config import Settings
from batchq.states import (
    ACTIVE_JOB_STATUSES,
    ChunkStatus,
    DocumentStatus,
    JobStatus,
    LineStatus,
    RunStatus,
)
from batchq.store import final_counts
from batchq.store.database import utcnow
from batchq.store.models import BatchRun, Chunk, Job
from batchq.store.schedule_models import Schedule, ScheduleDocument, ScheduleRun
from batchq.store.sessions import session_scope


@dataclass(frozen=True)
class Totals:
    jobs: dict[JobStatus, int]
    lines: dict[tuple[str, LineStatus], int]  # (queue, status) -> lines
    tokens: dict[str, tuple[int, int]]  # queue -> (prompt, completion) tokens
    recent_tokens: dict[str, int]  # queue -> completion tokens of batches that ended lately
    chunks: dict[tuple[str, ChunkStatus], int]  # of unfinished jobs
    oldest_pending: dict[str, float]  # queue -> age in seconds of its oldest pending line's job
    schedule_runs: dict[tuple[str, RunStatus], int] = field(default_factory=dict)  # by name
    schedule_last_success: dict[str, float] = field(default_factory=dict)  # name -> unix time
    schedule_documents: dict[tuple[str, DocumentStatus], int] = field(default_factory=dict)

    @property
    def active_queues(self) -> list[str]:
        """Queues with chunks of unfinished jobs: the ones whose depth is worth reading."""
        return sorted({queue for queue, _ in self.chunks})


def totals(settings: Settings, window_seconds: float) -> Totals:
    now = utcnow()
    since = now - timedelta(seconds=window_seconds)
    active = Job.status.in_(ACTIVE_JOB_STATUSES)
    with session_scope(settings) as session:
        jobs = {JobStatus(s): n for s, n in session.execute(
            select(Job.status, func.count()).group_by(Job.status))}
        lines = final_counts.lines_by_queue(session)
        tokens = {queue: (int(prompt), int(completion)) for queue, prompt, completion in
                  session.execute(select(Chunk.queue,
                                         func.coalesce(func.sum(Chunk.prompt_tokens), 0),
                                         func.coalesce(func.sum(Chunk.completion_tokens), 0))
                                  .group_by(Chunk.queue))}
        recent = {queue: int(n) for queue, n in session.execute(
            select(Chunk.queue, func.sum(BatchRun.completion_tokens))
            .join(Chunk, and_(Chunk.job_id == BatchRun.job_id, Chunk.seq == BatchRun.chunk_seq))
            .where(BatchRun.finished_at >= since).group_by(Chunk.queue))}
        chunks = {(queue, ChunkStatus(status)): n for queue, status, n in session.execute(
            select(Chunk.queue, Chunk.status, func.count()).join(Job).where(active)
            .group_by(Chunk.queue, Chunk.status))}
        # A chunk holds pending lines until it is done, so its status answers for them: an
        # EXISTS over the lines of every active chunk was planned as a scan of the whole
        # lines table (3.7 s with four million lines, at every scrape).
        waiting = Chunk.status.in_((ChunkStatus.QUEUED, ChunkStatus.RUNNING))
        oldest = {queue: (now - created).total_seconds() for queue, created in session.execute(
            select(Chunk.queue, func.min(Job.created_at)).join(Job)
            .where(active, waiting).group_by(Chunk.queue))}
        runs = {(name, status): n for name, status, n in session.execute(
            select(Schedule.name, ScheduleRun.status, func.count()).join(Schedule)
            .group_by(Schedule.name, ScheduleRun.status))}
        succeeded = {name: when.timestamp() for name, when in session.execute(
            select(Schedule.name, func.max(ScheduleRun.finished_at)).join(Schedule)
            .where(ScheduleRun.status == RunStatus.COMPLETED).group_by(Schedule.name)) if when}
        documents = {(name, status): n for name, status, n in session.execute(
            select(Schedule.name, ScheduleDocument.status, func.count())
            .join(Schedule, Schedule.id == ScheduleDocument.schedule_id)
            .group_by(Schedule.name, ScheduleDocument.status))}
    return Totals(jobs, lines, tokens, recent, chunks, oldest, runs, succeeded, documents)
