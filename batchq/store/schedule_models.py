"""The tables of schedules: definitions, runs (one per scheduled time), documents."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from batchq.states import DocumentStatus, RunStatus, RunTrigger
from batchq.store.columns import Base, BigId, EnumText, SafeText, UtcDateTime


class Schedule(Base):
    """A recurring run over a folder of documents. Its definition lives here, not in a beat
    state file: an edit takes effect at the next tick, and beat can lose its state freely."""

    __tablename__ = "schedules"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    cron: Mapped[str | None] = mapped_column(String(200))  # or every_seconds
    every_seconds: Mapped[int | None] = mapped_column(Integer)
    tz: Mapped[str] = mapped_column(String(64))  # an IANA zone; times are stored in UTC
    source_dir: Mapped[str] = mapped_column(Text)
    glob: Mapped[str] = mapped_column(String(200))
    template_path: Mapped[str | None] = mapped_column(Text)  # read at each run
    prompt: Mapped[str | None] = mapped_column(Text)  # or a template given inline
    model: Mapped[str] = mapped_column(Text)  # as the user named it
    quant: Mapped[str | None] = mapped_column(String(8))
    options: Mapped[str] = mapped_column(Text)  # JSON: generation settings, variables, ...
    output_dir: Mapped[str] = mapped_column(Text)
    overlap: Mapped[str] = mapped_column(String(8))  # skip | queue
    catch_up: Mapped[str] = mapped_column(String(8))  # none | latest | all
    catch_up_window_seconds: Mapped[int] = mapped_column(Integer)
    paused_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    pause_note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ScheduleRun(Base):
    """One scheduled time of a schedule: at most one row each (the unique key decides which
    of several beats creates it), whatever became of it (ran, skipped, missed)."""

    __tablename__ = "schedule_runs"
    __table_args__ = (UniqueConstraint("schedule_id", "scheduled_for"),
                      Index("ix_schedule_runs_status", "status"))

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    schedule_id: Mapped[str] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"))
    scheduled_for: Mapped[datetime] = mapped_column(UtcDateTime())
    trigger: Mapped[RunTrigger] = mapped_column(EnumText(RunTrigger, 16))
    status: Mapped[RunStatus] = mapped_column(EnumText(RunStatus, 16))
    reason: Mapped[str | None] = mapped_column(Text)  # why skipped, missed or failed
    force: Mapped[bool] = mapped_column(default=False)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    summary: Mapped[str | None] = mapped_column(Text)  # JSON: documents, parts, counts
    output_path: Mapped[str | None] = mapped_column(Text)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    written_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class ScheduleDocument(Base):
    """A document (or a part of one) as a run took it: what makes the next run incremental."""

    __tablename__ = "schedule_documents"
    __table_args__ = (Index("ix_schedule_documents_schedule_hash", "schedule_id",
                            "content_hash", "fingerprint"),
                      Index("ix_schedule_documents_run_id", "run_id"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    schedule_id: Mapped[str] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"))
    run_id: Mapped[str] = mapped_column(ForeignKey("schedule_runs.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(SafeText)  # relative to the source folder
    content_hash: Mapped[str] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(64))  # template, model and settings
    custom_id: Mapped[str | None] = mapped_column(String(100))  # its line (None: not run)
    part: Mapped[int] = mapped_column(Integer, default=1)
    parts: Mapped[int] = mapped_column(Integer, default=1)
    tokens: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[DocumentStatus] = mapped_column(EnumText(DocumentStatus, 16))
    error: Mapped[str | None] = mapped_column(SafeText)
