"""Every change of a job's, a chunk's or a line's state, and nowhere else.

Each method is one transaction. The rules they keep (README, "How it holds together"):

- A line is written only while it is pending, so it ends in one final state, once, whoever
  gets there first; a redelivered chunk skips finished lines.
- A chunk is claimed with one conditional UPDATE (queued, or its lease expired); the claim's
  number is its fencing token, and only the holder of the current claim renews, hands back
  or finishes it.
- A job is final once none of its lines is pending: completed, or failed if any line failed;
  a cancelled job stays cancelled.

Workers wrap these in batchq.store.sessions.retrying to wait out a database outage; every
method is safe to run again after a rollback.

    job    queued -> running (first claim) -> completed | failed (last line) ; any open -> cancelled
           completed | failed -> queued (retry)
    chunk  queued -> running (claim) -> done (finish) ; running -> queued (hand back, lease expired)
           done -> queued (retry)
    line   pending -> succeeded | failed (a batch's result, or out of attempts) ; -> cancelled
           failed -> pending (retry)
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from batchq.config import Settings
from batchq.errors import NotNow
from batchq.formats import LineKind
from batchq.states import ACTIVE_JOB_STATUSES, ChunkStatus, JobStatus, LineStatus
from batchq.store import batch_write, final_counts, quick_claim
from batchq.store.batch_write import Measured, Outcome, write_batch
from batchq.store.database import utcnow
from batchq.store.models import Chunk, Job, Line, line_numbers
from batchq.store.reads import describe, find_job, has_lines, select_chunks
from batchq.store.running_marker import RunningMarker
from batchq.store.sessions import KeptConnection, changed_rows, session_scope
from batchq.store.views import ChunkRef, Claim, ClaimedLine, JobView


@dataclass(frozen=True)
class Reset:
    """What `retry` put back in the queue."""

    job_id: str
    lines: int  # failed lines made pending again
    chunks: list[ChunkRef]
    refused: int  # failed lines that were refused input: they cannot run again


class Transitions:
    def __init__(self, settings: Settings):
        self.settings = settings
        # PostgreSQL's hot path, one statement a transaction: claims and batch writes.
        self._kept = KeptConnection(settings)
        self._marker = RunningMarker(settings)

    # ------------------------------------------------------------ chunks, by their worker

    def claim(self, chunk_id: int, worker: str, queue: str) -> Claim | str:
        """Take the chunk if nobody holds a live lease on it. Returns why not, as a string."""
        now = utcnow()
        if batch_write.one_statement(self.settings):  # PostgreSQL: two statements, or why not
            with self._kept.statement() as db:
                taken = quick_claim.claim(db, chunk_id, worker, queue, now, self._lease_from(now))
            if taken is not None:
                return taken
        with session_scope(self.settings) as session:
            chunk = session.get(Chunk, chunk_id)
            if chunk is None:
                return "unknown chunk"
            if chunk.queue != queue:
                return f"wrong variant ({chunk.queue})"
            job = session.get(Job, chunk.job_id)
            assert job is not None
            if job.status.final or chunk.status is ChunkStatus.DONE:
                return "already final"
            # As the last holder left them: if it died, the batch that was running.
            crashed = batch_write.crashed_lines(chunk.in_flight, chunk.running)
            claim = (
                update(Chunk)
                .where(Chunk.id == chunk_id)
                .where((Chunk.status == ChunkStatus.QUEUED) | (Chunk.lease_expires_at < now))
                .values(status=ChunkStatus.RUNNING, worker=worker, attempts=Chunk.attempts + 1,
                        started_at=now, lease_expires_at=self._lease_from(now), in_flight=None,
                        running=None))
            if not changed_rows(session, claim):
                return "held by another worker"
            if crashed:  # its worker died with these lines running: each was an attempt
                session.execute(update(Line).where(Line.id.in_(crashed),
                                                   Line.status == LineStatus.PENDING)
                                .values(attempts=Line.attempts + 1))
            session.refresh(chunk)
            if job.status is JobStatus.QUEUED:
                job.status = JobStatus.RUNNING
                job.started_at = job.started_at or now  # a retried job keeps its first start
            # Columns, not Line objects: the ORM's bookkeeping of a chunk's worth of them
            # cost more than the query.
            lines = [ClaimedLine(*line) for numbers in _slices(line_numbers(chunk.line_nos))
                     for line in session.execute(
                         select(Line.id, Line.custom_id, Line.kind, Line.request,
                                Line.attempts, Line.error)
                         .where(Line.job_id == job.id, Line.line_no.in_(numbers),
                                Line.status == LineStatus.PENDING)
                         .order_by(Line.line_no))]
            ref, = select_chunks(session, Chunk.id == chunk.id)
            return Claim(chunk=ref, job_settings=json.loads(job.settings), lines=lines,
                         token=chunk.attempts)

    def renew(self, chunk_id: int, token: int) -> bool:
        """Extend the lease; False if another claim has taken the chunk."""
        with session_scope(self.settings) as session:
            return bool(changed_rows(session, update(Chunk)
                                 .where(Chunk.id == chunk_id, Chunk.attempts == token,
                                        Chunk.status == ChunkStatus.RUNNING)
                                 .values(lease_expires_at=self._lease_from(utcnow()))))

    def hand_back(self, chunk_id: int, token: int) -> bool:
        """Give the chunk up now (shutdown): queued again, for any worker. The caller sends
        its message; False if the claim was no longer this worker's."""
        with session_scope(self.settings) as session:
            return bool(changed_rows(session, update(Chunk)
                                 .where(Chunk.id == chunk_id, Chunk.attempts == token)
                                 .values(**_requeued(utcnow()))))

    def finish(self, chunk: ChunkRef, token: int) -> JobStatus | None:
        """The chunk ran to its end. Returns the job's final status if this made it final."""
        with session_scope(self.settings) as session:
            session.execute(update(Chunk).where(Chunk.id == chunk.id, Chunk.attempts == token)
                            .values(status=ChunkStatus.DONE, finished_at=utcnow(),
                                    lease_expires_at=None, in_flight=None))
            return _finish_job_if_done(session, chunk.job_id)

    # ------------------------------------------------------------ lines, by their worker

    def start_batch(self, chunk: ChunkRef, token: int, line_ids: Sequence[int],
                    starting: Sequence[int] = ()) -> JobStatus:
        """An attempt must be known before its batch runs: a pending line with attempts was in
        a batch that never ended (crash, kill, error). The lines about to run become the
        chunk's lines in flight, which its next claim counts an attempt on if they are still
        pending (batchq.store.batch_write). Returns the job's status; unless it is queued or
        running (cancelled, expired), the batch should not run. `starting`, the first of
        them, is the batch that starts now (batchq.store.running_marker)."""
        with self._batch_transaction() as db:
            return batch_write.start_batch(db, chunk, token, line_ids, starting)

    def mark_running(self, chunk: ChunkRef, token: int, line_ids: Sequence[int]) -> bool:
        """A batch named in flight by an earlier write starts now: marked without waiting, so
        that a claim after a crash counts the attempt on its lines alone. False if it could
        not be: the batch should start after a write that names it (`start_batch`)."""
        return self._marker.mark(chunk.id, token, line_ids)

    def note_error(self, chunk: ChunkRef, token: int, line_ids: Sequence[int],
                   reason: str) -> None:
        """A batch raised: the lines stay pending, with the reason they fail with if it lasts,
        and the attempt counted. None of the chunk's lines is in flight any more."""
        with session_scope(self.settings) as session:
            session.execute(update(Line).where(Line.id.in_(list(line_ids)),
                                               Line.status == LineStatus.PENDING)
                            .values(error=reason, attempts=Line.attempts + 1))
            session.execute(update(Chunk).where(Chunk.id == chunk.id, Chunk.attempts == token)
                            .values(in_flight=None))

    def give_up(self, line_id: int, reason: str) -> None:
        """A line that used its attempts fails with its last reason."""
        self._update_pending([line_id], status=LineStatus.FAILED, error=reason,
                             finished_at=utcnow())

    def record_batches(self, chunk: ChunkRef, token: int, worker: str,
                       outcomes: Sequence[Outcome], runs: Sequence[Measured],
                       next_batch: Sequence[int] = (), deduplicated: int = 0,
                       starting: Sequence[int] = ()) -> JobStatus:
        """Store the lines (each result with its attempt) and metrics of the batches that ran
        since the last write (`runs`, one batch_runs row each) in one commit, and make
        `next_batch` (the lines about to run, and perhaps those of the batches after them)
        the chunk's lines in flight, `starting` (the first of them) the batch that starts
        now: one round of the database a write. Returns the job's status: if it is no longer
        queued or running (cancelled, expired), the chunk should stop. `deduplicated` of the
        outcomes are copies of another line's generation (counted, never generated)."""
        with self._batch_transaction() as db:
            return write_batch(db, chunk, token, worker, outcomes, runs, next_batch,
                               deduplicated, utcnow(), starting)

    @contextlib.contextmanager
    def _batch_transaction(self) -> Iterator[Connection]:
        """Where a batch's write is one statement (PostgreSQL), the connection kept for it;
        elsewhere a session's, for the portable statements (Core, not the ORM, whose
        bookkeeping cost more than the database does on a fast engine's batches)."""
        if batch_write.one_statement(self.settings):
            with self._kept.statement() as db:
                yield db
        else:
            with session_scope(self.settings) as session:
                yield session.connection()

    # ------------------------------------------------------------ chunks, by the sweep

    def requeue_expired(self, queue: str) -> list[tuple[ChunkRef, str | None]]:
        """Running chunks of `queue` whose lease expired go back to queued (their worker died
        or hung); returns each with the worker that held it. A chunk is taken by one sweeper
        only: compare-and-set on its row."""
        now = utcnow()
        expired = Chunk.status == ChunkStatus.RUNNING, Chunk.lease_expires_at < now
        with session_scope(self.settings) as session:
            held = session.execute(select(Chunk.id, Chunk.worker).join(Job).where(
                Chunk.queue == queue, Job.status.in_(ACTIVE_JOB_STATUSES), *expired)).all()
            taken = {chunk_id: worker for chunk_id, worker in held
                     if changed_rows(session, update(Chunk).where(Chunk.id == chunk_id, *expired)
                                 .values(**_requeued(now)))}
            return [(ref, taken[ref.id]) for ref in select_chunks(session, Chunk.id.in_(taken))]

    def take_unsent(self, queue: str) -> list[ChunkRef]:
        """Queued chunks of `queue` whose message should have been delivered a lease ago, or
        was never sent. Call it only when the broker queue is empty: then none of them has a
        message waiting. Each is marked sent now, by one sweeper only."""
        now = utcnow()
        old = now - timedelta(seconds=self.settings.lease_seconds)
        with session_scope(self.settings) as session:
            stale = session.execute(select(Chunk.id, Chunk.enqueued_at).join(Job).where(
                Chunk.queue == queue, Job.status.in_(ACTIVE_JOB_STATUSES),
                Chunk.status == ChunkStatus.QUEUED,
                or_(Chunk.enqueued_at.is_(None), Chunk.enqueued_at < old))).all()
            taken = []
            for chunk_id, sent in stale:
                same = Chunk.enqueued_at.is_(None) if sent is None else Chunk.enqueued_at == sent
                if changed_rows(session, update(Chunk).where(Chunk.id == chunk_id, same)
                            .values(enqueued_at=now)):
                    taken.append(chunk_id)
            return select_chunks(session, Chunk.id.in_(taken))

    def expire_overdue(self, job_id: str | None = None) -> list[str]:
        """Jobs (or the one given) whose completion window has ended with lines still open:
        those lines expire, code batch_expired, and the job with them; what finished stays.
        Returns the ids of the jobs that expired now."""
        now = utcnow()
        overdue = [Job.status.in_(ACTIVE_JOB_STATUSES), Job.expires_at < now]
        if job_id is not None:
            overdue.append(Job.id == job_id)
        expired = []
        with session_scope(self.settings) as session:
            for found in session.scalars(select(Job.id).where(*overdue)).all():
                if changed_rows(session, update(Job).where(Job.id == found, *overdue).values(
                        status=JobStatus.EXPIRED, finished_at=now)):
                    session.execute(update(Line).where(
                        Line.job_id == found, Line.status == LineStatus.PENDING).values(
                        status=LineStatus.EXPIRED, finished_at=now,
                        error="batch_expired: the batch's completion window ended before "
                              "this line ran"))
                    final_counts.keep(session, found)
                    expired.append(found)
        return expired

    # ------------------------------------------------------------ jobs, by their owner

    def cancel(self, job_ref: str) -> JobView:
        """Pending lines become cancelled now; a running chunk stops at its next batch
        boundary (record_batch tells it)."""
        with session_scope(self.settings) as session:
            job = find_job(session, job_ref)
            # Locked, as a chunk's end locks it: a job that ended meanwhile stays as it ended
            # (its counts kept once), rather than being marked cancelled over its end.
            session.refresh(job, with_for_update=True)
            if not job.status.final:
                now = utcnow()
                session.execute(update(Line).where(Line.job_id == job.id,
                                                   Line.status == LineStatus.PENDING)
                                .values(status=LineStatus.CANCELLED, error="cancelled by user",
                                        finished_at=now))
                job.status = JobStatus.CANCELLED
                job.finished_at = now
                final_counts.keep(session, job.id)
            session.flush()
            return describe(session, job)

    def retry(self, job_ref: str) -> Reset:
        """A finished job's failed lines become pending again, as new attempts, and their
        chunks queued. Lines refused at submit have nothing valid to run and stay failed."""
        now = utcnow()
        with session_scope(self.settings) as session:
            job = find_job(session, job_ref)
            session.refresh(job, with_for_update=True)
            if job.status not in (JobStatus.COMPLETED, JobStatus.FAILED):
                what = ("was cancelled; submit its lines again"
                        if job.status is JobStatus.CANCELLED
                        else f"is still {job.status}; retry it once it has finished")
                raise NotNow(f"job {job.id} {what}")
            failed = Line.job_id == job.id, Line.status == LineStatus.FAILED
            refused = session.scalar(select(func.count()).where(
                *failed, Line.kind == LineKind.INVALID)) or 0
            runnable = (*failed, Line.kind != LineKind.INVALID)
            seqs = sorted(set(session.scalars(select(Line.chunk_seq).where(*runnable))))
            if not seqs:
                return Reset(job.id, 0, [], refused)
            lines = changed_rows(session, update(Line).where(*runnable).values(
                status=LineStatus.PENDING, attempts=0, error=None, output=None,
                finish_reason=None, prompt_tokens=None, completion_tokens=None, reasoning=None,
                reasoning_tokens=None, tool_calls=None, started_at=None, finished_at=None))
            session.execute(update(Chunk).where(Chunk.job_id == job.id, Chunk.seq.in_(seqs))
                            .values(**_requeued(now), finished_at=None, in_flight=None))
            job.status = JobStatus.QUEUED
            job.finished_at = None
            final_counts.forget(session, job.id)
            chunks = select_chunks(session, Chunk.job_id == job.id, Chunk.seq.in_(seqs))
            return Reset(job.id, lines, chunks, refused)

    # ------------------------------------------------------------ helpers

    def _lease_from(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.settings.lease_seconds)

    def _update_pending(self, line_ids: Sequence[int], **values: Any) -> None:
        with session_scope(self.settings) as session:
            session.execute(update(Line).where(Line.id.in_(list(line_ids)),
                                               Line.status == LineStatus.PENDING)
                            .values(**values))


# A chunk's line numbers are bound in parts of at most this many: SQLite takes up to 32,766
# values in one statement, and BATCHQ_CHUNK_SIZE sets no limit.
IN_LIST = 10_000


def _slices(numbers: list[int]) -> Iterator[list[int]]:
    """`numbers` in parts of IN_LIST, in order (a chunk's numbers are ascending, so the lines
    of each part, read in line order, follow the previous part's)."""
    for start in range(0, len(numbers), IN_LIST):
        yield numbers[start:start + IN_LIST]


def _requeued(now: datetime) -> dict[str, Any]:
    """A chunk back in the queue: nobody holds it, and its message is (about to be) sent."""
    return {"status": ChunkStatus.QUEUED, "worker": None, "lease_expires_at": None,
            "enqueued_at": now}


def _finish_job_if_done(session: Session, job_id: str) -> JobStatus | None:
    """When none of the job's lines is pending, the job takes its final status. Every chunk's
    finish asks, so it asks the index, not a count: counting a 200,000-line job's lines took
    37 ms, at each of its 782 chunks."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None or job.status.final:
        return None
    if has_lines(session, job_id, LineStatus.PENDING):
        return None
    failed = has_lines(session, job_id, LineStatus.FAILED)
    job.status = JobStatus.FAILED if failed else JobStatus.COMPLETED
    job.finished_at = utcnow()
    final_counts.keep(session, job_id)
    return job.status
