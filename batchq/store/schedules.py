"""Schedules, their runs and the documents each run took, as rows. A run is created at most
once per schedule and scheduled time (the unique key decides between beats); its status
moves by compare-and-set, so two processes never both prepare or finalize it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from batchq.config import Settings
from batchq.states import DocumentStatus, RunStatus, RunTrigger
from batchq.store.schedule_models import Schedule, ScheduleDocument, ScheduleRun
from batchq.store.sessions import changed_rows, session_scope


@dataclass(frozen=True)
class ScheduleView:
    id: str
    name: str
    cron: str | None
    every_seconds: int | None
    tz: str
    source_dir: str
    glob: str
    template_path: str | None
    prompt: str | None
    model: str
    quant: str | None
    options: dict[str, Any]  # generation settings, variables, long, per_document
    output_dir: str
    overlap: str
    catch_up: str
    catch_up_window_seconds: int
    created_at: datetime
    paused_at: datetime | None = None
    pause_note: str | None = None


@dataclass(frozen=True)
class RunView:
    id: str
    schedule_id: str
    scheduled_for: datetime
    trigger: RunTrigger
    status: RunStatus
    created_at: datetime
    reason: str | None = None
    force: bool = False
    job_id: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    output_path: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    written_at: datetime | None = None


@dataclass(frozen=True)
class DocumentRow:
    path: str
    content_hash: str
    fingerprint: str
    status: DocumentStatus
    custom_id: str | None = None
    part: int = 1
    parts: int = 1
    tokens: int | None = None
    error: str | None = None


def _schedule(row: Schedule) -> ScheduleView:
    return ScheduleView(row.id, row.name, row.cron, row.every_seconds, row.tz, row.source_dir,
                        row.glob, row.template_path, row.prompt, row.model, row.quant,
                        json.loads(row.options), row.output_dir, row.overlap, row.catch_up,
                        row.catch_up_window_seconds, row.created_at, row.paused_at,
                        row.pause_note)


def _run(row: ScheduleRun) -> RunView:
    return RunView(row.id, row.schedule_id, row.scheduled_for, row.trigger, row.status,
                   row.created_at, row.reason, row.force, row.job_id,
                   json.loads(row.summary) if row.summary else {}, row.output_path,
                   row.started_at, row.finished_at, row.written_at)


# ---------------------------------------------------------------- schedules

def add_schedule(settings: Settings, view: ScheduleView) -> bool:
    """Store a new schedule; False if its name is taken."""
    try:
        with session_scope(settings) as session:
            session.add(Schedule(
                id=view.id, name=view.name, cron=view.cron, every_seconds=view.every_seconds,
                tz=view.tz, source_dir=view.source_dir, glob=view.glob,
                template_path=view.template_path, prompt=view.prompt, model=view.model,
                quant=view.quant, options=json.dumps(view.options), output_dir=view.output_dir,
                overlap=view.overlap, catch_up=view.catch_up,
                catch_up_window_seconds=view.catch_up_window_seconds,
                created_at=view.created_at))
    except IntegrityError:
        return False
    return True


def get_schedule(settings: Settings, name: str) -> ScheduleView | None:
    with session_scope(settings) as session:
        row = session.scalar(select(Schedule).where(Schedule.name == name))
        return _schedule(row) if row is not None else None


def all_schedules(settings: Settings) -> list[ScheduleView]:
    with session_scope(settings) as session:
        return [_schedule(row) for row in session.scalars(select(Schedule)
                                                          .order_by(Schedule.name))]


def set_paused(settings: Settings, name: str, paused_at: datetime | None,
               note: str | None) -> bool:
    with session_scope(settings) as session:
        return bool(changed_rows(session, update(Schedule).where(Schedule.name == name)
                                 .values(paused_at=paused_at, pause_note=note)))


def remove_schedule(settings: Settings, name: str) -> bool:
    """The schedule, its runs and its documents (the jobs and output folders stay)."""
    with session_scope(settings) as session:
        found = session.scalar(select(Schedule.id).where(Schedule.name == name))
        if found is None:
            return False
        session.execute(delete(ScheduleDocument).where(ScheduleDocument.schedule_id == found))
        session.execute(delete(ScheduleRun).where(ScheduleRun.schedule_id == found))
        session.execute(delete(Schedule).where(Schedule.id == found))
        return True


# ---------------------------------------------------------------- runs

def last_slot(settings: Settings, schedule_id: str) -> datetime | None:
    """The latest scheduled time decided so far (manual runs do not count)."""
    with session_scope(settings) as session:
        latest: datetime | None = session.scalar(
            select(func.max(ScheduleRun.scheduled_for))
            .where(ScheduleRun.schedule_id == schedule_id, ScheduleRun.trigger != RunTrigger.MANUAL))
        return latest


def add_run(settings: Settings, run: RunView) -> bool:
    """Create the run of a scheduled time; False if it exists (another beat created it)."""
    try:
        with session_scope(settings) as session:
            session.add(ScheduleRun(
                id=run.id, schedule_id=run.schedule_id, scheduled_for=run.scheduled_for,
                trigger=run.trigger, status=run.status, reason=run.reason, force=run.force,
                created_at=run.created_at, finished_at=run.finished_at))
    except IntegrityError:
        return False
    return True


def runs_of(settings: Settings, schedule_id: str, limit: int = 20,
            statuses: Sequence[RunStatus] | None = None) -> list[RunView]:
    """Newest scheduled time first."""
    with session_scope(settings) as session:
        query = select(ScheduleRun).where(ScheduleRun.schedule_id == schedule_id)
        if statuses is not None:
            query = query.where(ScheduleRun.status.in_(statuses))
        rows = session.scalars(query.order_by(ScheduleRun.scheduled_for.desc()).limit(limit))
        return [_run(row) for row in rows]


def runs_in(settings: Settings, statuses: Sequence[RunStatus]) -> list[RunView]:
    """Every schedule's runs in these statuses, oldest scheduled time first."""
    with session_scope(settings) as session:
        rows = session.scalars(select(ScheduleRun).where(ScheduleRun.status.in_(statuses))
                               .order_by(ScheduleRun.scheduled_for))
        return [_run(row) for row in rows]


def move_run(settings: Settings, run_id: str, from_statuses: Sequence[RunStatus],
             **values: Any) -> bool:
    """Compare-and-set: change the run only if it is still in one of from_statuses."""
    if "summary" in values and not isinstance(values["summary"], str):
        values["summary"] = json.dumps(values["summary"])
    with session_scope(settings) as session:
        return bool(changed_rows(session, update(ScheduleRun).where(
            ScheduleRun.id == run_id, ScheduleRun.status.in_(from_statuses)).values(**values)))


def claim_writing(settings: Settings, run_id: str, now: datetime) -> bool:
    """The one process that writes a finished run's output folder (compare-and-set)."""
    with session_scope(settings) as session:
        return bool(changed_rows(session, update(ScheduleRun).where(
            ScheduleRun.id == run_id, ScheduleRun.written_at.is_(None))
            .values(written_at=now)))


# ---------------------------------------------------------------- documents

def add_documents(settings: Settings, schedule_id: str, run_id: str,
                  documents: Iterable[DocumentRow]) -> None:
    with session_scope(settings) as session:
        session.add_all(ScheduleDocument(
            schedule_id=schedule_id, run_id=run_id, path=d.path, content_hash=d.content_hash,
            fingerprint=d.fingerprint, custom_id=d.custom_id, part=d.part, parts=d.parts,
            tokens=d.tokens, status=d.status, error=d.error) for d in documents)


def documents_of(settings: Settings, run_id: str) -> list[DocumentRow]:
    with session_scope(settings) as session:
        rows = session.scalars(select(ScheduleDocument).where(ScheduleDocument.run_id == run_id)
                               .order_by(ScheduleDocument.id))
        return [DocumentRow(r.path, r.content_hash, r.fingerprint, r.status, r.custom_id,
                            r.part, r.parts, r.tokens, r.error) for r in rows]


def set_document_status(settings: Settings, run_id: str, custom_id: str,
                        status: DocumentStatus,
                        error: str | None) -> None:
    with session_scope(settings) as session:
        session.execute(update(ScheduleDocument).where(
            ScheduleDocument.run_id == run_id, ScheduleDocument.custom_id == custom_id)
            .values(status=status, error=error))


def processed_hashes(settings: Settings, schedule_id: str,
                     fingerprint: str) -> dict[str, str | None]:
    """Content hashes this schedule need not take again with this fingerprint, each with None
    if it ran, or the reason it could not be read: the same bytes would fail the same way
    (--force reads them again), and each run reports them unreadable again, never unchanged."""
    with session_scope(settings) as session:
        found = session.execute(select(
            ScheduleDocument.content_hash, ScheduleDocument.status, ScheduleDocument.error)
            .where(ScheduleDocument.schedule_id == schedule_id,
                   ScheduleDocument.fingerprint == fingerprint,
                   ScheduleDocument.status.in_((DocumentStatus.SUCCEEDED,
                                                DocumentStatus.UNREADABLE)))
            .order_by(ScheduleDocument.id))
        ran: set[str] = set()
        reasons: dict[str, str] = {}  # each unreadable hash's latest reason
        for content_hash, status, error in found:
            if status is DocumentStatus.SUCCEEDED:
                ran.add(content_hash)
            else:
                reasons[content_hash] = error or "could not be read"
        return {**reasons, **dict.fromkeys(ran)}  # once it ran, it is no longer unreadable


def known_paths(settings: Settings, schedule_id: str) -> set[str]:
    """The paths this schedule's runs have seen and not yet noted as deleted."""
    with session_scope(settings) as session:
        latest = (select(func.max(ScheduleDocument.id))
                  .where(ScheduleDocument.schedule_id == schedule_id)
                  .group_by(ScheduleDocument.path))
        return set(session.scalars(select(ScheduleDocument.path).where(
            ScheduleDocument.id.in_(latest), ScheduleDocument.status != DocumentStatus.DELETED)))
