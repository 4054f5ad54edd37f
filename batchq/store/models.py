"""The job tables: jobs, their chunks and lines, and the batches that ran them. The schema
changes only through migrations/; tests prove the two agree (batchq.store.schema)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import cast

import orjson
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column

from batchq.formats import LineKind
from batchq.states import ChunkStatus, JobStatus, LineStatus
from batchq.store.columns import Base, BigId, EnumText, SafeText, UtcDateTime, one_of


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(one_of(JobStatus), name="status"),
        Index("ix_jobs_created_at", "created_at"),
        Index("ix_jobs_status_expires_at", "status", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    source: Mapped[str | None] = mapped_column(Text)  # the file it came from, for people
    model: Mapped[str] = mapped_column(Text)
    quant: Mapped[str] = mapped_column(String(8))
    queue: Mapped[str] = mapped_column(String(200))  # of the job's model: for people
    status: Mapped[JobStatus] = mapped_column(EnumText(JobStatus, 16), default=JobStatus.QUEUED)
    settings: Mapped[str] = mapped_column(Text)  # JSON: the job-level generation settings
    total_lines: Mapped[int] = mapped_column(Integer)
    total_chunks: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # The end of its completion window (HTTP batches): lines still open then expire.
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class Chunk(Base):
    """A group of a job's lines of similar length; one Celery message, one unit of claiming.

    Its lines are those whose chunk_seq is its seq, listed in line_nos: a claim finds them by
    number. first_line and last_line are their span, for people (a chunk's lines are not
    contiguous: submit groups them by length).
    """

    __tablename__ = "chunks"
    __table_args__ = (
        UniqueConstraint("job_id", "seq"),
        CheckConstraint(one_of(ChunkStatus), name="status"),
        Index("ix_chunks_status_lease", "status", "lease_expires_at"),
        Index("ix_chunks_queue_status", "queue", "status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)  # 1-based position in the job
    first_line: Mapped[int] = mapped_column(Integer)
    last_line: Mapped[int] = mapped_column(Integer)
    # JSON list of its lines' numbers, ascending (line_numbers_json). An index on lines'
    # (job_id, chunk_seq) found them before: rows arrive in file order and chunks group them
    # by length, so each row went to a random place in it: up to a third of a big COPY's
    # time on a database holding earlier jobs (migration 0016; README, twelfth).
    line_nos: Mapped[str] = mapped_column(Text)
    # The variant's queue its message goes to and its workers sweep: a chunk's own, since a
    # job's lines may name different models.
    queue: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(Text)  # the variant that runs it, as resolved at submit
    quant: Mapped[str] = mapped_column(String(8))
    status: Mapped[ChunkStatus] = mapped_column(EnumText(ChunkStatus, 16),
                                                default=ChunkStatus.QUEUED)
    # Claims so far; the claim's number is its fencing token (only its holder renews the lease).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # JSON list of the line ids whose batches may have started since the holder's last write:
    # their attempts count on their rows when their results are written, or, if the worker
    # died first, at the next claim. One write a group of batches, not one a line.
    in_flight: Mapped[str | None] = mapped_column(Text)
    # JSON list: of those, the lines of the batch that started last, where the holder marks
    # each batch (PostgreSQL; batchq.store.running_marker). When it is a part of in_flight, the
    # next claim after a crash counts their attempts alone: the others never ran or ended.
    running: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # When its broker message was last sent; NULL if it never was (broker down at submit).
    enqueued_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # Metrics of the generation that ran for this chunk, summed over its batches.
    batches: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    padded_prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    # Of those, a thinking model's reasoning (between <think> and </think>).
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    decode_slots: Mapped[int] = mapped_column(BigInteger, default=0)
    generate_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    # Lines answered with an identical line's output, not generated again (dedup).
    deduplicated_lines: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    peak_memory_bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class Line(Base):
    """One input line: its request, its single final state and at most one output."""

    __tablename__ = "lines"
    __table_args__ = (
        UniqueConstraint("job_id", "line_no"),
        CheckConstraint(one_of(LineStatus), name="status"),
        Index("ix_lines_job_id_status", "job_id", "status"),
        # The lines refused at submit (no chunk), which `batchq status` counts apart by
        # status. Only they are in it, so storing a big job's accepted lines costs it nothing;
        # with status in it, SQLite's planner prefers it to (job_id, status).
        Index("ix_lines_refused", "job_id", "status", postgresql_where=text("chunk_seq = 0"),
              sqlite_where=text("chunk_seq = 0")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # No foreign key, and no unique index on (job_id, custom_id): submit stores a job's lines
    # in the transaction that creates the job, after checking that accepted lines' ids are
    # unique (a refused line keeps its id, even a duplicate), and those two checks, made
    # again for each row, were half of PostgreSQL's work in a big COPY (migration 0014). A
    # trigger on jobs deletes a deleted job's lines, as the key's cascade did. (SQLite drops
    # a table's triggers with it: a later migration that rebuilds jobs there must create it
    # again, or tests/test_migrations.py says so.)
    job_id: Mapped[str] = mapped_column(String(32))
    line_no: Mapped[int] = mapped_column(Integer)  # 1-based line number in the input file
    chunk_seq: Mapped[int] = mapped_column(Integer)  # the seq of the chunk that runs it
    custom_id: Mapped[str] = mapped_column(SafeText)
    kind: Mapped[LineKind] = mapped_column(EnumText(LineKind, 24))
    request: Mapped[str] = mapped_column(Text)  # JSON of the normalised request
    status: Mapped[LineStatus] = mapped_column(EnumText(LineStatus, 16),
                                               default=LineStatus.PENDING)
    output: Mapped[str | None] = mapped_column(SafeText)
    finish_reason: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(SafeText)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)  # reasoning included
    # A thinking model's reasoning, apart from the answer in `output` (None: it had none).
    reasoning: Mapped[str | None] = mapped_column(SafeText)
    reasoning_tokens: Mapped[int | None] = mapped_column(Integer)
    # JSON list of the functions the answer called ({"name", "arguments"}); None: none.
    tool_calls: Mapped[str | None] = mapped_column(SafeText)
    # GPU batches that started this line since it was submitted or retried. A pending line with
    # attempts was in a batch that never ended (crash, kill, error): it runs alone next time,
    # and fails once it reaches BATCHQ_MAX_ATTEMPTS.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class FinalCount(Base):
    """A finished job's lines of one variant queue and status, stored in the transaction that
    made the job final. A final job's lines keep their statuses (a retry, which reopens the
    job, deletes these rows), so `batchq metrics` adds these few rows up instead of counting
    every line ever stored at each scrape (1.4 s with four million lines)."""

    __tablename__ = "final_counts"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"),
                                        primary_key=True)
    queue: Mapped[str] = mapped_column(String(200), primary_key=True)  # as Chunk.queue
    status: Mapped[LineStatus] = mapped_column(EnumText(LineStatus, 16), primary_key=True)
    lines: Mapped[int] = mapped_column(BigInteger)


class BatchRun(Base):
    """One GPU batch that ended, written in the same commit as its lines' results: what
    `batchq report` draws (throughput over time, latency, padding, each worker's share)."""

    __tablename__ = "batch_runs"
    # By job for reports; by time for the metrics' recent tokens/s.
    __table_args__ = (Index("ix_batch_runs_job_id", "job_id"),
                      Index("ix_batch_runs_finished_at", "finished_at"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    chunk_seq: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str] = mapped_column(String(200))
    finished_at: Mapped[datetime] = mapped_column(UtcDateTime())
    seconds: Mapped[float] = mapped_column(Float)
    rows: Mapped[int] = mapped_column(Integer)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    padded_prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    decode_slots: Mapped[int] = mapped_column(Integer)


# The tables, for Core statements where the ORM's bookkeeping costs more than the database
# does: a worker's writes per batch, and a new job's lines.
LINES, CHUNKS, JOBS, BATCH_RUNS = (cast(Table, m.__table__) for m in (Line, Chunk, Job, BatchRun))


def line_numbers_json(numbers: Sequence[int]) -> str:
    """Line numbers as `chunks.line_nos` holds them."""
    return orjson.dumps(list(numbers)).decode()


def line_numbers(line_nos: str) -> list[int]:
    numbers: list[int] = orjson.loads(line_nos)
    return numbers


def text_bind(dialect: Dialect, column: str) -> Callable[[str], str]:
    """A text column of lines as its own type binds it for `dialect` (SafeText: NUL made
    storable), or the identity: for values handed to the driver past SQLAlchemy (COPY's
    text format, arrays)."""
    process = LINES.c[column].type.bind_processor(dialect)
    return process if process is not None else str
