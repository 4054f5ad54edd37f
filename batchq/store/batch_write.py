"""A worker's write of the batches that finished since its last one: their lines' results, their
chunk's totals, a row in batch_runs for each, and the lines of the batches about to run, in one
transaction, with the job's status read back.

A line's attempt must be known before its batch starts, so that a line that kills its worker
is found out. It is not written on the line's row, which would be a second update of every
line: the write names the lines about to run on their chunk's row (`chunks.in_flight`), and
the next write counts the attempt on each row with its result. If the worker dies first, the
next claim of the chunk counts it on the rows still pending (batchq.store.transitions).

A small model's batch takes a few milliseconds on a GPU, so this write is on the hot path of
every job: on PostgreSQL it is one statement (one round trip, one plan), elsewhere a handful
of portable ones. Both are built once: per call, building one cost about as much as the
database took to run it. Only batchq.store.transitions calls this module: Transitions stays
the one owner of every state change.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import bindparam, case, func, insert, select, update
from sqlalchemy.engine import Connection, Dialect

from batchq.config import Settings
from batchq.states import JobStatus, LineStatus
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
    def reasoning_tokens(self) -> int: ...
    @property
    def decode_slots(self) -> int: ...
    @property
    def seconds(self) -> float: ...
    @property
    def peak_memory_bytes(self) -> int: ...


# What a batch adds to its chunk's totals (the job's metrics sum them).
CHUNK_SUMS = ("batches", "prompt_tokens", "padded_prompt_tokens", "completion_tokens",
              "decode_slots", "generate_seconds", "deduplicated_lines", "reasoning_tokens")
# A line's result columns, in this order in every statement below, each with the type of the
# array PostgreSQL's one statement passes it in.
RESULT_TYPES = {"status": "varchar", "output": "text", "error": "text", "finish_reason": "varchar",
                "prompt_tokens": "int", "completion_tokens": "int", "reasoning": "text",
                "reasoning_tokens": "int", "tool_calls": "text"}
RESULT_COLUMNS = tuple(RESULT_TYPES)
RUN_TYPES = {"seconds": "float8", "rows": "int", "prompt_tokens": "int",
             "padded_prompt_tokens": "int", "completion_tokens": "int", "decode_slots": "int"}
RUN_COLUMNS = tuple(RUN_TYPES)


def write_batch(db: Connection, chunk: ChunkRef, token: int, worker: str,
                outcomes: Sequence[Outcome], runs: Sequence[Measured],
                next_batch: Sequence[int], deduplicated: int, now: datetime,
                starting: Sequence[int] = ()) -> JobStatus:
    """Write the batches in the caller's transaction; returns the job's status. Each result
    counts its line's attempt; `next_batch` becomes the chunk's lines in flight (none: the
    chunk stops or ends) if `token` still holds the chunk, and on PostgreSQL `starting` (the
    first of them, the batch about to start) its batch marked running."""
    results = [_result(c) for c in outcomes]
    runs = [run for run in runs if run.rows]
    sums = (len(runs), *(sum(getattr(run, name) for run in runs) for name in (
        "prompt_tokens", "padded_prompt_tokens", "completion_tokens", "decode_slots", "seconds")),
        deduplicated, sum(run.reasoning_tokens for run in runs))
    peak = max((run.peak_memory_bytes for run in runs), default=0)
    # The batches ran back to back, the last one ending now: when each ended (what `batchq
    # report` plots them by), and when the first started (their lines' start), near enough.
    ended = _ends(runs, now)
    started = now - timedelta(seconds=sum(run.seconds for run in runs))
    in_flight = in_flight_json(next_batch)
    if _is_one_statement(db.dialect):
        return _in_one_statement(db, chunk, token, worker, results, sums, peak, runs, ended,
                                 in_flight, in_flight_json(starting), started, now)
    if results:
        # One statement for the whole batch, executed over its rows: a round trip per line
        # would cost more than a small model's whole batch (benchmarks/RESULTS.md).
        db.execute(LINE_RESULT, [{"b_id": key, "b_finished_at": now, "b_started_at": started,
                                  **{f"b_{name}": v for name, v in zip(RESULT_COLUMNS, row, strict=True)}}
                                 for key, row in results])
    db.execute(CHUNK_BATCH, {"c_id": chunk.id, "c_peak_memory_bytes": peak,
                             **{f"c_{name}": v for name, v in zip(CHUNK_SUMS, sums, strict=True)}})
    if runs:
        db.execute(insert(BATCH_RUNS), [{
            "job_id": chunk.job_id, "chunk_seq": chunk.seq, "worker": worker,
            "finished_at": end, **{name: getattr(run, name) for name in RUN_COLUMNS}}
            for run, end in zip(runs, ended, strict=True)])
    return start_batch(db, chunk, token, next_batch, starting)


def one_statement(settings: Settings) -> bool:
    """Whether a batch write is one statement (its own transaction) on this database."""
    return _is_one_statement(get_engine(settings.database_url).dialect)


def _is_one_statement(dialect: Dialect) -> bool:
    return dialect.name == "postgresql" and dialect.driver == "psycopg"


def _ends(runs: Sequence[Measured], now: datetime) -> list[datetime]:
    ends, end = [], now
    for run in reversed(runs):
        ends.append(end)
        end -= timedelta(seconds=run.seconds)
    return ends[::-1]


def ids_json(line_ids: Sequence[int]) -> str:
    """Line ids as the JSON list `chunks.in_flight` and `chunks.running` hold."""
    return json.dumps(list(line_ids), separators=(",", ":"))


def in_flight_json(line_ids: Sequence[int]) -> str | None:
    return ids_json(line_ids) if line_ids else None


def crashed_lines(in_flight: str | None, running: str | None) -> list[int]:
    """The lines whose attempt a claim counts, as the last holder left its chunk: the batch it
    marked running, if that is among its lines in flight, else all of those (which of them
    was running is not known). The quick claim's SQL says the same."""
    named = json.loads(in_flight) if in_flight else []
    marked = json.loads(running) if running else None
    return marked if marked is not None and set(marked) <= set(named) else named


def start_batch(db: Connection, chunk: ChunkRef, token: int, line_ids: Sequence[int],
                starting: Sequence[int] = ()) -> JobStatus:
    """Name the lines about to run as the chunk's lines in flight, and on PostgreSQL
    `starting` as the batch running, if `token` still holds it (in the caller's
    transaction); returns the job's status."""
    params = {"i_chunk": chunk.id, "i_token": token, "i_lines": in_flight_json(line_ids),
              "i_running": in_flight_json(starting), "j_id": chunk.job_id}
    if _is_one_statement(db.dialect):
        return JobStatus(db.execute(IN_FLIGHT_STATEMENT, params).scalar_one())
    db.execute(SET_IN_FLIGHT, params)
    return JobStatus(db.execute(JOB_STATUS, params).scalar_one())


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
CHUNK_BATCH = (update(CHUNKS).where(_chunks.id == bindparam("c_id"))
               .values({name: _chunks[name] + bindparam(f"c_{name}") for name in CHUNK_SUMS})
               # the largest of its batches' peaks (each batch measures its own)
               .values(peak_memory_bytes=case(
                   (_chunks.peak_memory_bytes < bindparam("c_peak_memory_bytes"),
                    bindparam("c_peak_memory_bytes")), else_=_chunks.peak_memory_bytes)))
# Only the holder of the claim names its lines in flight: a worker presumed dead, whose claim
# was taken, must not overwrite the new holder's.
SET_IN_FLIGHT = (update(CHUNKS).where(_chunks.id == bindparam("i_chunk"),
                                      _chunks.attempts == bindparam("i_token"))
                 .values(in_flight=bindparam("i_lines")))
JOB_STATUS = select(JOBS.c.status).where(JOBS.c.id == bindparam("j_id"))
# One parameter set per line (bind names may not be column names). The result counts the
# attempt that produced it.
LINE_RESULT = (update(LINES)
               .where(_lines.id == bindparam("b_id"), _lines.status == LineStatus.PENDING)
               .values({name: bindparam(f"b_{name}") for name in (*RESULT_COLUMNS,
                                                                    "finished_at")})
               .values(attempts=_lines.attempts + 1,
                       started_at=func.coalesce(_lines.started_at, bindparam("b_started_at"))))
# PostgreSQL: the lines in flight, the batch running, and the job's status in one round trip.
# (Elsewhere no batch is marked running: a claim after a crash counts all the lines in flight.)
IN_FLIGHT_STATEMENT = (
    select(JOBS.c.status).where(JOBS.c.id == bindparam("j_id"))
    .add_cte(SET_IN_FLIGHT.values(running=bindparam("i_running")).cte("in_flight")))


# ---------------------------------------------------------------- PostgreSQL, one statement

# Every part sees the same snapshot. A result is written only while its line is pending, and
# counts the attempt that produced it.
ONE_STATEMENT = f"""
WITH job AS (SELECT status FROM jobs WHERE id = %(job)s),
results AS (  -- each result column an array of the batch's values, unnested into rows
    UPDATE lines SET {", ".join(f"{c} = v.{c}" for c in RESULT_COLUMNS)}, finished_at = %(now)s,
                     attempts = attempts + 1, started_at = COALESCE(started_at, %(started)s)
    FROM unnest(%(ids)s::bigint[], {", ".join(f"%({c})s::{t}[]" for c, t in
                                             RESULT_TYPES.items())})
         AS v(id, {", ".join(RESULT_COLUMNS)})
    WHERE lines.id = v.id AND lines.status = '{LineStatus.PENDING.value}'),
chunk AS (
    UPDATE chunks SET {", ".join(f"{c} = {c} + %(c_{c})s" for c in CHUNK_SUMS)},
                      peak_memory_bytes = GREATEST(peak_memory_bytes, %(peak)s),
                      in_flight = CASE WHEN attempts = %(token)s THEN %(in_flight)s
                                       ELSE in_flight END,
                      running = CASE WHEN attempts = %(token)s THEN %(running)s
                                     ELSE running END
    WHERE id = %(chunk)s),
batch_run AS (
    INSERT INTO batch_runs (job_id, chunk_seq, worker, finished_at, {", ".join(RUN_COLUMNS)})
    SELECT %(job)s, %(seq)s, %(worker)s, r.*
    FROM unnest(%(r_finished_at)s::timestamptz[],
                {", ".join(f"%(r_{c})s::{t}[]" for c, t in RUN_TYPES.items())})
         AS r(finished_at, {", ".join(RUN_COLUMNS)}))
SELECT status FROM job
"""


def _in_one_statement(db: Connection, chunk: ChunkRef, token: int, worker: str,
                      results: list[tuple[Any, tuple[Any, ...]]], sums: tuple[Any, ...],
                      peak: int, runs: Sequence[Measured], ended: list[datetime],
                      in_flight: str | None, running: str | None, started: datetime,
                      now: datetime) -> JobStatus:
    params: dict[str, Any] = {
        "job": chunk.job_id, "now": now, "started": started, "chunk": chunk.id,
        "token": token, "seq": chunk.seq, "worker": worker, "peak": peak,
        "in_flight": in_flight, "running": running, "ids": [key for key, _ in results],
        "r_finished_at": ended,
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
