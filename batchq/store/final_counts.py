"""Lines by variant queue and status, as `batchq metrics` shows them, without counting every
line ever stored at each scrape (1.4 s with four million lines, and growing with every job).

A job's lines keep their statuses once the job is final: nothing writes a line of a final
job, and a retry, which writes them again, first reopens the job. So the transaction that makes
a job final also stores its counts (`keep`, models.FinalCount), a retry deletes them
(`forget`), and the totals are those rows added to a count of the active jobs' lines alone.
A final job's own counts (`batchq status`, the HTTP API's request_counts) come from them too:
counting a million-line job's lines took 0.5-1 s at each look.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, and_, delete, func, insert, select, union_all
from sqlalchemy.orm import Session

from batchq.states import ACTIVE_JOB_STATUSES, LineStatus
from batchq.store.models import Chunk, FinalCount, Job, Line

# A line's variant is its chunk's queue; a refused line, which has no chunk, counts under its
# job's.
_QUEUE = func.coalesce(Chunk.queue, Job.queue)


def _counted(*columns: Any, where: ColumnElement[bool]) -> Select[Any]:
    """The lines that match, counted by the columns given (and _QUEUE)."""
    return (select(*columns, func.count().label("lines")).select_from(Line)
            .join(Job, Job.id == Line.job_id)
            .outerjoin(Chunk, and_(Chunk.job_id == Line.job_id, Chunk.seq == Line.chunk_seq))
            .where(where).group_by(*columns))


def keep(session: Session, job_id: str) -> None:
    """The job has just become final (in this transaction): store its counts."""
    session.flush()  # its lines' last changes, made through the session, are counted too
    session.execute(insert(FinalCount).from_select(
        ["job_id", "queue", "status", "lines"],
        _counted(Line.job_id, _QUEUE, Line.status, where=Line.job_id == job_id)))


def forget(session: Session, job_id: str) -> None:
    """The job is open again (a retry): its lines are counted as they go."""
    session.execute(delete(FinalCount).where(FinalCount.job_id == job_id))


def of_job(session: Session, job_id: str) -> dict[LineStatus, int]:
    """A final job's kept counts by status; empty if none are kept (a retry has reopened it
    since it was read)."""
    found: dict[LineStatus, int] = {}
    for status, lines in session.execute(select(FinalCount.status, FinalCount.lines)
                                         .where(FinalCount.job_id == job_id)):
        found[status] = found.get(status, 0) + lines
    return found


def lines_by_queue(session: Session) -> dict[tuple[str, LineStatus], int]:
    """Every line, by (queue, status): the active jobs' counted, the final ones' kept.

    The active jobs are read first, and their lines counted by id: joined to the jobs by
    status, PostgreSQL may plan a scan of all lines from stale statistics. A job that ends
    in between is counted from its lines (its kept rows are left out); one retried in between
    is missed by this read alone."""
    active = list(session.scalars(select(Job.id).where(Job.status.in_(ACTIVE_JOB_STATUSES))))
    kept = select(FinalCount.queue, FinalCount.status, FinalCount.lines)
    if active:
        kept = kept.where(FinalCount.job_id.not_in(active))
        both = union_all(_counted(_QUEUE.label("queue"), Line.status,
                                  where=Line.job_id.in_(active)), kept).subquery()
    else:
        both = kept.subquery()
    return {(queue, LineStatus(status)): int(lines) for queue, status, lines in session.execute(
        select(both.c.queue, both.c.status, func.sum(both.c.lines))
        .group_by(both.c.queue, both.c.status))}
