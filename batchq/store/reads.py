"""Reading jobs, chunks and lines. Every function returns frozen values (batchq.store.views)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from sqlalchemy import ColumnElement, func, literal_column, select, tuple_
from sqlalchemy.orm import Session

from batchq.config import Settings
from batchq.errors import NotFound
from batchq.formats import LineResult
from batchq.states import ACTIVE_JOB_STATUSES, ChunkStatus, JobStatus, LineStatus
from batchq.store import final_counts
from batchq.store.database import utcnow
from batchq.store.models import BatchRun, Chunk, Job, Line
from batchq.store.sessions import session_scope
from batchq.store.views import BatchRecord, ChunkRef, Counts, JobMetrics, JobView, VariantShare


def find_job(session: Session, job_ref: str) -> Job:
    """A job by full id or by a unique prefix of at least 4 characters, like git."""
    job = session.get(Job, job_ref)
    if job is not None:
        return job
    if len(job_ref) >= 4 and all(c in "0123456789abcdef" for c in job_ref.lower()):
        found = session.scalars(
            select(Job).where(Job.id.like(job_ref.lower() + "%")).limit(2)).all()
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise NotFound(f"job id prefix {job_ref!r} is ambiguous; give more characters")
    raise NotFound(f"no job {job_ref!r} (`batchq status` lists recent jobs)")


def has_lines(session: Session, job_id: str, status: LineStatus) -> bool:
    """Whether any of the job's lines has `status`: one probe of its (job, status) index,
    where counting reads every line of the job.

    Asked as "the first index entry at or after (job, status)", not as EXISTS. For EXISTS
    (or LIMIT 1) PostgreSQL expects a scan of the whole table to stop early when it thinks
    many lines match, as it does for a big job by its statistics, or for any job once the
    driver has prepared the statement (run five times) and one plan serves every job. Each
    job's end then read every line of every job: 1.1 s with four million lines, which halved
    a 2,000-line job's speed at 1-2 tokens. A seek in the index's order leaves no plan but the
    index: any other would have to sort the table. 0.1 ms, whatever the statistics say."""
    found = session.execute(
        select(Line.job_id, Line.status)
        .where(tuple_(Line.job_id, Line.status) >= tuple_(job_id, status.value))
        .order_by(Line.job_id, Line.status).limit(1)).first()
    return found is not None and tuple(found) == (job_id, status)


def line_counts(session: Session, job: Job) -> Counts:
    """The job's lines by status: kept since it became final (store.final_counts), or
    counted."""
    if job.status.final and (kept := final_counts.of_job(session, job.id)):
        return Counts.of(kept)
    return Counts.of({LineStatus(status): n for status, n in session.execute(
        select(Line.status, func.count()).where(Line.job_id == job.id).group_by(Line.status))})


def variant_shares(session: Session, job: Job, counts: Counts) -> tuple[VariantShare, ...]:
    """The job's lines and chunks by the variant of their chunk, the job's own first.
    `counts` are all the job's lines (line_counts)."""
    variants = session.execute(select(Chunk.queue, Chunk.model, Chunk.quant).distinct()
                               .where(Chunk.job_id == job.id)).all()
    lines: dict[tuple[str, str, str], dict[LineStatus, int]] = {}
    if len(variants) == 1:
        # One variant (most jobs): its lines are the job's but those refused at submit, which
        # have no chunk. Joining lines to chunks to learn that took 160 ms at 200,000 lines,
        # and `batchq status` and every wait ask. A literal 0, as the partial index of
        # refused lines says it (ix_lines_refused): no plan matches a bound value to it.
        refused = Counts.of({LineStatus(status): n for status, n in session.execute(
            select(Line.status, func.count())
            .where(Line.job_id == job.id, Line.chunk_seq == literal_column("0"))
            .group_by(Line.status))})
        queue, model, quant = variants[0]
        lines[(queue, model, quant)] = {
            status: getattr(counts, status.value) - getattr(refused, status.value)
            for status in LineStatus}
    elif variants:
        for queue, model, quant, status, n in session.execute(
                select(Chunk.queue, Chunk.model, Chunk.quant, Line.status, func.count())
                .join(Chunk, (Chunk.job_id == Line.job_id) & (Chunk.seq == Line.chunk_seq))
                .where(Line.job_id == job.id)
                .group_by(Chunk.queue, Chunk.model, Chunk.quant, Line.status)):
            lines.setdefault((queue, model, quant), {})[LineStatus(status)] = n
    chunks: dict[str, list[int]] = {}
    for queue, chunk_status, n in session.execute(
            select(Chunk.queue, Chunk.status, func.count()).where(Chunk.job_id == job.id)
            .group_by(Chunk.queue, Chunk.status)):
        counted = chunks.setdefault(queue, [0, 0])
        counted[0] += n
        counted[1] += n if chunk_status == ChunkStatus.RUNNING else 0
    shares = [VariantShare(model, quant, queue, Counts.of(by_status), *chunks.get(queue, [0, 0]))
              for (queue, model, quant), by_status in lines.items()]
    return tuple(sorted(shares, key=lambda share: (share.queue != job.queue, share.queue)))


def describe(session: Session, job: Job) -> JobView:
    totals = session.execute(select(
        func.coalesce(func.sum(Chunk.prompt_tokens), 0),
        func.coalesce(func.sum(Chunk.padded_prompt_tokens), 0),
        func.coalesce(func.sum(Chunk.completion_tokens), 0),
        func.coalesce(func.sum(Chunk.decode_slots), 0),
        func.coalesce(func.sum(Chunk.generate_seconds), 0.0),
        func.coalesce(func.sum(Chunk.batches), 0),
        func.coalesce(func.max(Chunk.peak_memory_bytes), 0),
        func.coalesce(func.sum(Chunk.deduplicated_lines), 0),
        func.coalesce(func.sum(Chunk.reasoning_tokens), 0),
    ).where(Chunk.job_id == job.id)).one()
    # PostgreSQL sums BIGINT columns into NUMERIC: bring them back to Python ints.
    prompt, padded, completion, slots, batches, peak, deduplicated, reasoning = (
        int(v) for v in (*totals[:4], *totals[5:]))
    metrics = JobMetrics(
        created_at=job.created_at, started_at=job.started_at,
        finished_at=job.finished_at, now=utcnow(), generate_seconds=float(totals[4]),
        batches=batches, prompt_tokens=prompt, padded_prompt_tokens=padded,
        completion_tokens=completion, decode_slots=slots, peak_memory_bytes=peak,
        deduplicated_lines=deduplicated, reasoning_tokens=reasoning)
    counts = line_counts(session, job)
    shares = variant_shares(session, job, counts)
    return JobView(
        id=job.id, name=job.name, status=job.status, model=job.model, quant=job.quant,
        queue=job.queue, source=job.source, settings=json.loads(job.settings),
        counts=counts, chunks=job.total_chunks, metrics=metrics,
        expires_at=job.expires_at, running_chunks=sum(s.running_chunks for s in shares),
        variants=shares)


def job_status(settings: Settings, job_ref: str) -> JobStatus:
    """Only the job's status: what a wait polls (a view counts every line of the job)."""
    with session_scope(settings) as session:
        return find_job(session, job_ref).status


def job_view(settings: Settings, job_ref: str) -> JobView:
    with session_scope(settings) as session:
        return describe(session, find_job(session, job_ref))


def recent_jobs(settings: Settings, limit: int) -> list[JobView]:
    with session_scope(settings) as session:
        jobs = session.scalars(select(Job).order_by(Job.created_at.desc()).limit(limit)).all()
        return [describe(session, job) for job in jobs]


def active_jobs(settings: Settings) -> list[JobView]:
    """Jobs still queued or running, oldest first."""
    with session_scope(settings) as session:
        found = session.scalars(select(Job).where(Job.status.in_(ACTIVE_JOB_STATUSES))
                                .order_by(Job.created_at)).all()
        return [describe(session, job) for job in found]


def line_results(settings: Settings, job_id: str, first: int = 1, last: int | None = None
                 ) -> Iterator[LineResult]:
    """The job's lines numbered `first` to `last` (None: its last) in input order, streamed (a
    million-line job is never held whole)."""
    with session_scope(settings) as session:
        # A line's model is its chunk's (a refused line may have none: None). Chunks are few,
        # so they are read apart: a join with a million fresh lines is at the mercy of the
        # planner's statistics (a nested loop over stale ones took seconds per 100k lines).
        model_of: dict[int, str] = dict(session.execute(
            select(Chunk.seq, Chunk.model).where(Chunk.job_id == job_id)).tuples().all())
        query = (select(Line.line_no, Line.custom_id, Line.kind, Line.status, Line.output,
                        Line.finish_reason, Line.error, Line.prompt_tokens,
                        Line.completion_tokens, Line.reasoning, Line.reasoning_tokens,
                        Line.chunk_seq, Line.tool_calls)
                 .where(Line.job_id == job_id, Line.line_no >= first).order_by(Line.line_no))
        if last is not None:
            query = query.where(Line.line_no <= last)
        rows = session.connection().execution_options(yield_per=2000).execute(query)
        for (line_no, custom_id, kind, status, output, finish_reason, error, prompt_tokens,
             completion_tokens, reasoning, reasoning_tokens, chunk_seq, calls) in rows:
            yield LineResult(line_no, custom_id, kind, status, output, finish_reason, error,
                             prompt_tokens, completion_tokens, reasoning, reasoning_tokens,
                             model_of.get(chunk_seq),
                             None if calls is None else json.loads(calls))


def select_chunks(session: Session, *where: ColumnElement[bool]) -> list[ChunkRef]:
    """The chunks that match, in job order."""
    rows = session.execute(
        select(Chunk.id, Chunk.job_id, Chunk.seq, Job.total_chunks, Chunk.first_line,
               Chunk.last_line, Chunk.queue).join(Job).where(*where).order_by(Chunk.seq))
    return [ChunkRef(*row) for row in rows]


def chunk_refs(settings: Settings, chunk_ids: Iterable[int]) -> list[ChunkRef]:
    with session_scope(settings) as session:
        return select_chunks(session, Chunk.id.in_(list(chunk_ids)))


def job_chunks(settings: Settings, job_ref: str) -> list[ChunkRef]:
    """Every chunk of a job, in order."""
    with session_scope(settings) as session:
        job = find_job(session, job_ref)
        return select_chunks(session, Chunk.job_id == job.id)


def batch_records(settings: Settings, job_id: str) -> list[BatchRecord]:
    """The job's batches in the order they ended."""
    with session_scope(settings) as session:
        rows = session.execute(
            select(BatchRun.finished_at, BatchRun.seconds, BatchRun.rows, BatchRun.worker,
                   BatchRun.prompt_tokens, BatchRun.padded_prompt_tokens,
                   BatchRun.completion_tokens, BatchRun.decode_slots)
            .where(BatchRun.job_id == job_id).order_by(BatchRun.finished_at, BatchRun.id))
        return [BatchRecord(finished_at=r.finished_at,
                            seconds=r.seconds, rows=r.rows, worker=r.worker,
                            prompt_tokens=r.prompt_tokens,
                            padded_prompt_tokens=r.padded_prompt_tokens,
                            completion_tokens=r.completion_tokens, decode_slots=r.decode_slots)
                for r in rows]
