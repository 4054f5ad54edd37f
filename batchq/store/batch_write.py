"""A worker's write of the batches that finished since its last one: their lines' results, their
chunk's totals, a row in batch_runs for each, and the attempts of the batches about to run, in
one transaction, with the job's status read back.

A small model's batch takes a few milliseconds on a GPU, so this write is on the hot path of
every job: on PostgreSQL it is one statement (one round trip, one plan), elsewhere a handful
of portable ones. Both are built once: per call, building one cost about as much as the
database took to run it. Only batchq.store.transitions calls this module: Transitions stays
the one owner of every state change.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import bindparam, case, insert, select, update
from sqlalchemy.engine import Connection, Dialect

from batchq.config import Settings
from batchq.states import ACTIVE_JOB_STATUSES, JobStatus, LineStatus
from batchq.store.database import get_engine
from batchq.store.models import BATCH_RUNS, CHUNKS, JOBS, LINES, text_bind
from batchq.store.views import ChunkRef


class Outcome(Protocol):
    """One line's result as the engine gives it (batchq.engine.Completion fits)."""

    @property
    def key(self) -> Any: ...
    @property
    def text(self) -> str | None: ...
    @property
    def finish_reason(self) -> str | None: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def error(self) -> str | None: ...
    @property
    def reasoning(self) -> str | None: ...
    @property
    def reasoning_tokens(self) -> int: ...
    @property
    def tool_calls(self) -> list[dict[str, str]] | None: ...


class Measured(Protocol):
    """A batch's figures (batchq.engine.BatchStats fits)."""

    @property
    def rows(self) -> int: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def padded_prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def decode_slots(self) -> int: ...
    @property
    def seconds(self) -> float: ...
    @property
    def peak_memory_bytes(self) -> int: ...


# What a batch adds to its chunk's totals (the job's metrics sum them).
CHUNK_SUMS = ("batches", "prompt_tokens", "padded_prompt_tokens", "completion_tokens",
              "decode_slots", "generate_seconds", "deduplicated_lines")
# A line's result columns, in this order in every statement below, each with the type of the
# array PostgreSQL's one statement passes it in.
RESULT_TYPES = {"status": "varchar", "output": "text", "error": "text", "finish_reason": "varchar",
                "prompt_tokens": "int", "completion_tokens": "int", "reasoning": "text",
                "reasoning_tokens": "int", "tool_calls": "text"}
RESULT_COLUMNS = tuple(RESULT_TYPES)
RUN_TYPES = {"seconds": "float8", "rows": "int", "prompt_tokens": "int",
             "padded_prompt_tokens": "int", "completion_tokens": "int", "decode_slots": "int"}
RUN_COLUMNS = tuple(RUN_TYPES)


def write_batch(db: Connection, chunk: ChunkRef, worker: str, outcomes: Sequence[Outcome],
                runs: Sequence[Measured], next_batch: Sequence[int], deduplicated: int,
                release: Sequence[int], now: datetime) -> JobStatus:
    """Write the batches in the caller's transaction; returns the job's status. The attempts
    of `next_batch` count only while the job is queued or running; those of `release` (lines
    counted ahead that never started) are taken back."""
    results = [_result(c) for c in outcomes]
    runs = [run for run in runs if run.rows]
    sums = (len(runs), *(sum(getattr(run, name) for run in runs) for name in (
        "prompt_tokens", "padded_prompt_tokens", "completion_tokens", "decode_slots", "seconds")),
        deduplicated)
    peak = max((run.peak_memory_bytes for run in runs), default=0)
    if _is_one_statement(db.dialect):
        return _in_one_statement(db, chunk, worker, results, sums, peak, runs, next_batch,
                                 release, now)
    if results:
        # One statement for the whole batch, executed over its rows: a round trip per line
        # would cost more than a small model's whole batch (README, Performance).
        db.execute(LINE_RESULT, [{"b_id": key, "b_finished_at": now,
                                  **{f"b_{name}": v for name, v in zip(RESULT_COLUMNS, row, strict=True)}}
                                 for key, row in results])
    db.execute(CHUNK_BATCH, {"c_id": chunk.id, "c_peak_memory_bytes": peak,
                             **{f"c_{name}": v for name, v in zip(CHUNK_SUMS, sums, strict=True)}})
    if runs:
        db.execute(insert(BATCH_RUNS), [{
            "job_id": chunk.job_id, "chunk_seq": chunk.seq, "worker": worker,
            "finished_at": now, **{name: getattr(run, name) for name in RUN_COLUMNS}}
            for run in runs])
    if release:
        db.execute(RELEASE_ATTEMPTS, {"r_ids": list(release)})
    return _attempts_while_active(db, chunk, next_batch, now)


def one_statement(settings: Settings) -> bool:
    """Whether a batch write is one statement (its own transaction) on this database."""
    return _is_one_statement(get_engine(settings.database_url).dialect)


def _is_one_statement(dialect: Dialect) -> bool:
    return dialect.name == "postgresql" and dialect.driver == "psycopg"


def start_batch(db: Connection, chunk: ChunkRef, line_ids: Sequence[int],
                now: datetime) -> JobStatus:
    """Count the attempts of a batch about to run, while its job is queued or running (in
    the caller's transaction); returns the job's status."""
    if _is_one_statement(db.dialect):
        return JobStatus(db.exec_driver_sql(ATTEMPTS_STATEMENT, {
            "job": chunk.job_id, "now": now, "next": list(line_ids)}).scalar_one())
    return _attempts_while_active(db, chunk, line_ids, now)


def _attempts_while_active(db: Connection, chunk: ChunkRef, line_ids: Sequence[int],
                           now: datetime) -> JobStatus:
    """The portable statements' last step: the job's status, and the lines' attempts counted
    if it is queued or running."""
    status = JobStatus(db.execute(JOB_STATUS, {"j_id": chunk.job_id}).scalar_one())
    if line_ids and status in ACTIVE_JOB_STATUSES:
        count_attempts(db, line_ids, now)
    return status


def count_attempts(db: Connection, line_ids: Sequence[int], now: datetime) -> None:
    """An attempt counts before its batch runs: a pending line with attempts was in a batch
    that never ended (crash, kill, error)."""
    db.execute(COUNT_ATTEMPTS, {"a_ids": list(line_ids), "a_now": now})


def _result(c: Outcome) -> tuple[Any, tuple[Any, ...]]:
    """A line's final values, in RESULT_COLUMNS order; a JSON cut off by the output limit
    fails but keeps its finish reason and tokens."""
    ok = c.error is None
    return c.key, ((LineStatus.SUCCEEDED if ok else LineStatus.FAILED).value,
                   c.text if ok else None, c.error, c.finish_reason, c.prompt_tokens,
                   c.completion_tokens, c.reasoning if ok else None,
                   c.reasoning_tokens if ok and c.reasoning is not None else None,
                   json.dumps(c.tool_calls, ensure_ascii=False)
                   if ok and c.tool_calls is not None else None)


# ---------------------------------------------------------------- portable statements

_lines, _chunks = LINES.c, CHUNKS.c
COUNT_ATTEMPTS = (update(LINES)
                  .where(_lines.id.in_(bindparam("a_ids", expanding=True)),
                         _lines.status == LineStatus.PENDING)
                  .values(attempts=_lines.attempts + 1, started_at=bindparam("a_now")))
CHUNK_BATCH = (update(CHUNKS).where(_chunks.id == bindparam("c_id"))
               .values({name: _chunks[name] + bindparam(f"c_{name}") for name in CHUNK_SUMS})
               # the largest of its batches' peaks (each batch measures its own)
               .values(peak_memory_bytes=case(
                   (_chunks.peak_memory_bytes < bindparam("c_peak_memory_bytes"),
                    bindparam("c_peak_memory_bytes")), else_=_chunks.peak_memory_bytes)))
RELEASE_ATTEMPTS = (update(LINES)
                    .where(_lines.id.in_(bindparam("r_ids", expanding=True)),
                           _lines.status == LineStatus.PENDING, _lines.attempts > 0)
                    .values(attempts=_lines.attempts - 1))
JOB_STATUS = select(JOBS.c.status).where(JOBS.c.id == bindparam("j_id"))
# One parameter set per line (bind names may not be column names).
LINE_RESULT = (update(LINES)
               .where(_lines.id == bindparam("b_id"), _lines.status == LineStatus.PENDING)
               .values({name: bindparam(f"b_{name}") for name in (*RESULT_COLUMNS,
                                                                    "finished_at")}))


# ---------------------------------------------------------------- PostgreSQL, one statement

_ACTIVE = ", ".join(f"'{s.value}'" for s in sorted(ACTIVE_JOB_STATUSES))
_JOB = "job AS (SELECT status FROM jobs WHERE id = %(job)s)"


def _attempts(also: str = "") -> str:
    """The CTE counting the attempts of `next`'s pending lines while the job is active."""
    return f"""attempts AS (
    UPDATE lines SET attempts = attempts + 1, started_at = %(now)s
    WHERE id = ANY(%(next)s::bigint[]) AND status = '{LineStatus.PENDING.value}'{also}
      AND (SELECT status FROM job) IN ({_ACTIVE}))"""


# Every part sees the same snapshot, so the statement keeps the portable order's effects by
# its conditions: a line this batch finished gets no attempt (it is no longer pending once
# the results are written), and the attempts count only while the job is active.
ONE_STATEMENT = f"""
WITH {_JOB},
results AS (  -- each result column an array of the batch's values, unnested into rows
    UPDATE lines SET {", ".join(f"{c} = v.{c}" for c in RESULT_COLUMNS)}, finished_at = %(now)s
    FROM unnest(%(ids)s::bigint[], {", ".join(f"%({c})s::{t}[]" for c, t in
                                             RESULT_TYPES.items())})
         AS v(id, {", ".join(RESULT_COLUMNS)})
    WHERE lines.id = v.id AND lines.status = '{LineStatus.PENDING.value}'),
chunk AS (
    UPDATE chunks SET {", ".join(f"{c} = {c} + %(c_{c})s" for c in CHUNK_SUMS)},
                      peak_memory_bytes = GREATEST(peak_memory_bytes, %(peak)s)
    WHERE id = %(chunk)s),
batch_run AS (
    INSERT INTO batch_runs (job_id, chunk_seq, worker, finished_at, {", ".join(RUN_COLUMNS)})
    SELECT %(job)s, %(seq)s, %(worker)s, %(now)s, r.*
    FROM unnest({", ".join(f"%(r_{c})s::{t}[]" for c, t in RUN_TYPES.items())})
         AS r({", ".join(RUN_COLUMNS)})),
released AS (  -- lines counted ahead that never started (the chunk stopped first)
    UPDATE lines SET attempts = attempts - 1
    WHERE id = ANY(%(release)s::bigint[]) AND status = '{LineStatus.PENDING.value}'
      AND attempts > 0 AND NOT id = ANY(%(ids)s::bigint[]) AND NOT id = ANY(%(next)s::bigint[])),
{_attempts(also=" AND NOT id = ANY(%(ids)s::bigint[])")}
SELECT status FROM job
"""

# A batch's attempts where no results go with them (a chunk's first batch, a line run alone),
# with the job's status.
ATTEMPTS_STATEMENT = f"""
WITH {_JOB},
{_attempts()}
SELECT status FROM job
"""


def _in_one_statement(db: Connection, chunk: ChunkRef, worker: str,
                      results: list[tuple[Any, tuple[Any, ...]]], sums: tuple[Any, ...],
                      peak: int, runs: Sequence[Measured], next_batch: Sequence[int],
                      release: Sequence[int], now: datetime) -> JobStatus:
    params: dict[str, Any] = {
        "job": chunk.job_id, "now": now, "chunk": chunk.id, "seq": chunk.seq, "worker": worker,
        "peak": peak, "next": list(next_batch), "release": list(release),
        "ids": [key for key, _ in results],
        **{f"c_{name}": v for name, v in zip(CHUNK_SUMS, sums, strict=True)},
        **{f"r_{name}": [getattr(run, name) for run in runs] for name in RUN_COLUMNS}}
    columns = list(zip(*(row for _, row in results), strict=True)) or [()] * len(RESULT_COLUMNS)
    for name, values in zip(RESULT_COLUMNS, columns, strict=True):
        if RESULT_TYPES[name] == "text":  # SafeText, which COPY and arrays bypass
            bind = text_bind(db.dialect, name)
            params[name] = [None if v is None else bind(v) for v in values]
        else:
            params[name] = list(values)
    return JobStatus(db.exec_driver_sql(ONE_STATEMENT, params).scalar_one())
