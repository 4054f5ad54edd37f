"""A worker's claim of a chunk on PostgreSQL, in two statements on the connection it keeps for
its batch writes: the claim (the chunk taken, its job started, what the worker needs of both
returned) and the chunk's pending lines.

The portable claim (`Transitions.claim`, a session) asks six questions of the database in a
transaction, with the ORM's bookkeeping around them: about 7 ms a chunk under load, which a
fast engine's chunk of 256 lines notices (benchmarks/RESULTS.md). Both claim by the same
compare-and-set on the chunk's row, and both count an attempt on the lines its last holder
left in flight. When this one takes nothing, the portable one runs to say
why (unknown chunk, wrong variant, already final, held by another worker). Both count the
attempt on the batch marked running alone when it is among the lines in flight
(batchq.store.batch_write.crashed_lines). Only
batchq.store.transitions calls this module.
"""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import Integer, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection

from batchq.states import ACTIVE_JOB_STATUSES, ChunkStatus, JobStatus, LineStatus
from batchq.store.models import LINES, line_numbers
from batchq.store.views import ChunkRef, Claim, ClaimedLine

_ACTIVE = ", ".join(f"'{s.value}'" for s in sorted(ACTIVE_JOB_STATUSES))

# The same conditions as the portable claim's: the chunk is queued, or its lease ran out, and
# its job is queued or running. Every part of the statement sees one snapshot: the job's
# status is read as it was when the chunk was taken.
CLAIM = f"""
WITH job AS (
    SELECT jobs.id, jobs.status, jobs.settings, jobs.total_chunks
    FROM jobs JOIN chunks ON chunks.job_id = jobs.id WHERE chunks.id = %(chunk)s),
claimed AS (
    UPDATE chunks SET status = '{ChunkStatus.RUNNING.value}', worker = %(worker)s,
                      attempts = attempts + 1, started_at = %(now)s,
                      lease_expires_at = %(lease)s, in_flight = NULL, running = NULL
    WHERE id = %(chunk)s AND queue = %(queue)s
      AND (status = '{ChunkStatus.QUEUED.value}' OR lease_expires_at < %(now)s)
      AND (SELECT status FROM job) IN ({_ACTIVE})
    RETURNING id, job_id, seq, first_line, last_line, queue, attempts, line_nos),
counted AS (  -- its last holder died with these lines' batch running: each was an attempt
    UPDATE lines SET attempts = attempts + 1
    WHERE id IN (SELECT value::bigint FROM chunks, json_array_elements_text((
                     -- the batch marked running, if it is among the lines in flight
                     CASE WHEN chunks.running IS NOT NULL AND NOT EXISTS (
                              SELECT 1 FROM json_array_elements_text(chunks.running::json) r
                              WHERE r.value NOT IN (SELECT value FROM json_array_elements_text(
                                                        chunks.in_flight::json)))
                          THEN chunks.running ELSE chunks.in_flight END)::json)
                 WHERE chunks.id = %(chunk)s)
      AND status = '{LineStatus.PENDING.value}' AND EXISTS (SELECT 1 FROM claimed)),
started AS (
    UPDATE jobs SET status = '{JobStatus.RUNNING.value}',
                    started_at = COALESCE(started_at, %(now)s)
    WHERE id = (SELECT job_id FROM claimed) AND status = '{JobStatus.QUEUED.value}')
SELECT claimed.id, claimed.job_id, claimed.seq, job.total_chunks, claimed.first_line,
       claimed.last_line, claimed.queue, claimed.attempts, job.settings, claimed.line_nos
FROM claimed CROSS JOIN job
"""

# Core, not text: the columns' own types read them (SafeText, the kinds' enum). The chunk's
# lines by number, as one array: the (job_id, line_no) index, a probe a line.
PENDING_LINES = (
    select(LINES.c.id, LINES.c.custom_id, LINES.c.kind, LINES.c.request, LINES.c.attempts,
           LINES.c.error)
    .where(LINES.c.job_id == bindparam("job"),
           LINES.c.line_no == any_(bindparam("numbers", type_=ARRAY(Integer))),
           LINES.c.status == LineStatus.PENDING)
    .order_by(LINES.c.line_no))


def claim(db: Connection, chunk_id: int, worker: str, queue: str, now: datetime,
          lease_until: datetime) -> Claim | None:
    """The chunk, claimed, with its pending lines; None if it was not taken."""
    row = db.exec_driver_sql(CLAIM, {"chunk": chunk_id, "worker": worker, "queue": queue,
                                     "now": now, "lease": lease_until}).one_or_none()
    if row is None:
        return None
    *ref, token, settings, line_nos = row
    chunk = ChunkRef(*ref)
    lines = db.execute(PENDING_LINES, {"job": chunk.job_id, "numbers": line_numbers(line_nos)})
    return Claim(chunk=chunk, job_settings=json.loads(settings),
                 lines=[ClaimedLine(*line) for line in lines], token=token)
