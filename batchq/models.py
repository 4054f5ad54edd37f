"""Tables. The schema changes only through migrations/; tests prove the two agree."""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JOB_STATUSES = ("queued", "running", "completed", "failed", "cancelled")
LINE_STATUSES = ("pending", "succeeded", "failed", "cancelled")
CHUNK_STATUSES = ("queued", "running", "done")

# A line refused by `submit --skip-invalid`: stored failed with its reason, never run or retried.
INVALID_KIND = "invalid"

# SQLite stores BIGINT primary keys only as INTEGER aliases of the rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class SafeText(TypeDecorator):
    """Text that may hold U+0000, which PostgreSQL's text type refuses.

    A value containing NUL, or starting with the marker itself, is stored as the marker
    followed by its JSON (which escapes both); any other value is stored as it is, so what
    people read in SQL stays readable. Reading reverses it exactly.
    """

    impl = Text
    cache_ok = True
    MARK = "\x01"

    def process_bind_param(self, value: str | None, dialect) -> str | None:
        if value is not None and ("\x00" in value or value.startswith(self.MARK)):
            return self.MARK + json.dumps(value)
        return value

    def process_result_value(self, value: str | None, dialect) -> str | None:
        if value is not None and value.startswith(self.MARK):
            return json.loads(value[1:])
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"status IN {JOB_STATUSES}", name="status"),
        Index("ix_jobs_created_at", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    source: Mapped[str | None] = mapped_column(Text)  # the file it came from, for people
    model: Mapped[str] = mapped_column(Text)
    quant: Mapped[str] = mapped_column(String(8))
    queue: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    settings: Mapped[str] = mapped_column(Text)  # JSON: the job-level generation settings
    total_lines: Mapped[int] = mapped_column(Integer)
    total_chunks: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Chunk(Base):
    """A group of a job's lines of similar length; one Celery message, one unit of claiming.

    Its lines are those whose chunk_seq is its seq; first_line and last_line are their span,
    for people (a chunk's lines are not contiguous: submit groups them by length).
    """

    __tablename__ = "chunks"
    __table_args__ = (
        UniqueConstraint("job_id", "seq"),
        CheckConstraint(f"status IN {CHUNK_STATUSES}", name="status"),
        Index("ix_chunks_status_lease", "status", "lease_expires_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)  # 1-based position in the job
    first_line: Mapped[int] = mapped_column(Integer)
    last_line: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    # Claims so far; the claim's number is its fencing token (only its holder renews the lease).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When its broker message was last sent; NULL if it never was (broker down at submit).
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Metrics of the generation that ran for this chunk, summed over its batches.
    batches: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    padded_prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    decode_slots: Mapped[int] = mapped_column(BigInteger, default=0)
    generate_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    peak_memory_bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class Line(Base):
    """One input line: its request, its single final state and at most one output."""

    __tablename__ = "lines"
    __table_args__ = (
        UniqueConstraint("job_id", "line_no"),
        # Ids of accepted lines are unique; a refused line keeps the id it had, even a duplicate.
        Index("uq_lines_job_id_custom_id", "job_id", "custom_id", unique=True,
              postgresql_where=text(f"kind <> '{INVALID_KIND}'"),
              sqlite_where=text(f"kind <> '{INVALID_KIND}'")),
        CheckConstraint(f"status IN {LINE_STATUSES}", name="status"),
        Index("ix_lines_job_id_status", "job_id", "status"),
        Index("ix_lines_job_id_chunk_seq", "job_id", "chunk_seq"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    line_no: Mapped[int] = mapped_column(Integer)  # 1-based line number in the input file
    chunk_seq: Mapped[int] = mapped_column(Integer)  # the seq of the chunk that runs it
    custom_id: Mapped[str] = mapped_column(SafeText)
    # prompt | messages | openai-chat | openai-completion | invalid
    kind: Mapped[str] = mapped_column(String(24))
    request: Mapped[str] = mapped_column(Text)  # JSON of the normalised request
    status: Mapped[str] = mapped_column(String(16), default="pending")
    output: Mapped[str | None] = mapped_column(SafeText)
    finish_reason: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(SafeText)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    # GPU batches that started this line since it was submitted or retried. A pending line with
    # attempts was in a batch that never ended (crash, kill, error): it runs alone next time,
    # and fails once it reaches BATCHQ_MAX_ATTEMPTS.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


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
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    seconds: Mapped[float] = mapped_column(Float)
    rows: Mapped[int] = mapped_column(Integer)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    padded_prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    decode_slots: Mapped[int] = mapped_column(Integer)
