"""`batchq beat`: Celery beat for batchq, the process that makes schedules fire.

Each tick (every few seconds) it reads the schedules from the database, so an edit takes
effect at once and beat keeps no state of its own:
  1. every scheduled time that has come is decided once: a run, or a missed time with its
     reason (the unique key on schedule and time decides between several beats);
  2. runs waiting to start start, unless the previous run still runs (overlap skip|queue);
  3. running runs whose job has ended get their combining job (map-reduce) or their folder.
"""

from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from celery import beat

from batchq.config import Settings, get_settings
from batchq.errors import BatchqError
from batchq.schedule.documents import Unreadable
from batchq.schedule.finish import advance, write
from batchq.schedule.planning import plan
from batchq.schedule.prepare import Sizer, prepare, submit
from batchq.schedule.registry import policy_of, timing_of
from batchq.states import DocumentStatus, RunStatus, RunTrigger
from batchq.store import schedules as rows
from batchq.store.database import utcnow
from batchq.store.schedules import RunView, ScheduleView
from batchq.store.views import iso

log = logging.getLogger(__name__)

TICK_SECONDS = 5.0
PREPARE_LEASE = timedelta(minutes=15)  # a run preparing longer than this was orphaned


class Ticker:
    """One tick's work, with the clock passed in (tests drive it directly)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._sizers: dict[str, Sizer] = {}

    def sizer(self, model_ref: str) -> Sizer:
        if model_ref not in self._sizers:
            self._sizers[model_ref] = Sizer(model_ref)
        return self._sizers[model_ref]

    def tick_or_warn(self) -> None:
        """A tick now; a database away is logged, and the next tick tries again."""
        try:
            self.tick()
        except BatchqError as exc:
            log.warning("beat tick: %s", exc)

    def tick(self, now: datetime | None = None) -> None:
        now = now or utcnow()
        schedules = {s.id: s for s in rows.all_schedules(self.settings)}
        for schedule in schedules.values():
            if schedule.paused_at is None:
                self._decide(schedule, now)
        for run in rows.runs_in(self.settings, [RunStatus.PREPARING]):
            if run.started_at and run.started_at + PREPARE_LEASE < now:  # its beat died
                rows.move_run(self.settings, run.id, [RunStatus.PREPARING],
                              status=RunStatus.WAITING)
        for run in rows.runs_in(self.settings, [RunStatus.WAITING]):
            if run.schedule_id in schedules:
                self._start(schedules[run.schedule_id], run, now)
        for run in rows.runs_in(self.settings, [RunStatus.RUNNING]):
            if run.schedule_id in schedules:
                try:
                    advance(self.settings, schedules[run.schedule_id], run, self.sizer)
                except BatchqError as exc:
                    log.warning("run %s of %s: %s", run.id, schedules[run.schedule_id].name, exc)

    def _decide(self, schedule: ScheduleView, now: datetime) -> None:
        after = rows.last_slot(self.settings, schedule.id) or schedule.created_at
        for decision in plan(timing_of(schedule), policy_of(schedule), after, now):
            created = rows.add_run(self.settings, RunView(
                secrets.token_hex(16), schedule.id, decision.slot, decision.trigger,
                RunStatus.WAITING if decision.run else RunStatus.MISSED, now,
                reason=decision.reason,
                finished_at=None if decision.run else now))
            if created and not decision.run:
                log.warning("schedule %s: %s not run: %s", schedule.name,
                            iso(decision.slot), decision.reason)

    def _start(self, schedule: ScheduleView, run: RunView, now: datetime) -> None:
        busy = [r for r in rows.runs_of(self.settings, schedule.id,
                                        statuses=(RunStatus.PREPARING, RunStatus.RUNNING))
                if r.id != run.id]
        if busy and run.trigger is not RunTrigger.MANUAL:
            if schedule.overlap == "skip":
                rows.move_run(self.settings, run.id, [RunStatus.WAITING],
                              status=RunStatus.SKIPPED,
                              finished_at=now, reason=f"the previous run (job "
                              f"{busy[0].job_id or '-'}) was still running")
            return  # overlap queue: it starts when the previous one has ended
        if not rows.move_run(self.settings, run.id, [RunStatus.WAITING],
                             status=RunStatus.PREPARING, started_at=now):
            return  # another beat took it
        run = replace(run, status=RunStatus.PREPARING, started_at=now)
        try:
            prepared = prepare(self.settings, schedule, run, self.sizer)
        except (BatchqError, Unreadable) as exc:
            rows.move_run(self.settings, run.id, [RunStatus.PREPARING], status=RunStatus.FAILED,
                          finished_at=utcnow(), reason=str(exc))
            log.warning("schedule %s: run for %s failed: %s", schedule.name,
                        iso(run.scheduled_for), exc)
            return
        rows.add_documents(self.settings, schedule.id, run.id, prepared.documents)
        summary = {"fingerprint": prepared.fingerprint, "lines": len(prepared.lines),
                   "new": prepared.count(DocumentStatus.QUEUED),
                   "unchanged": prepared.count(DocumentStatus.UNCHANGED),
                   "unreadable": prepared.count(DocumentStatus.UNREADABLE),
                   "deleted": prepared.count(DocumentStatus.DELETED)}
        if not prepared.lines:  # nothing new: the folder still gets its manifest
            write(self.settings, schedule, run, prepared.documents, summary)
            return
        job_id = submit(self.settings, schedule, run, prepared.lines,
                        f"{schedule.name} {iso(run.scheduled_for)}")
        rows.move_run(self.settings, run.id, [RunStatus.PREPARING], status=RunStatus.RUNNING,
                      job_id=job_id, summary=summary)
        log.info("schedule %s: run for %s started job %s (%d lines)", schedule.name,
                 iso(run.scheduled_for), job_id, len(prepared.lines))


class DatabaseScheduler(beat.Scheduler):
    """Celery beat's scheduler for batchq: no schedule file, no entries of its own; each tick
    is batchq's (above), from the database."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.ticker = Ticker(get_settings())
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        pass

    def tick(self, *args: Any, **kwargs: Any) -> float:
        self.ticker.tick_or_warn()
        return float(self.app.conf.get("batchq_beat_seconds") or TICK_SECONDS)

    @property
    def schedule(self) -> dict[str, Any]:
        return {}


class BeatThread:
    """The beat on a thread of this process: `batchq worker --beat`, on one machine.

    Not Celery's embedded beat (`celery worker --beat`): that forks a process which closes
    every descriptor it inherited, while SQLite's own bookkeeping of the database files,
    per process in the library, still points at them. On the embedded database every tick
    of it failed with 'locking protocol'. A tick is mostly waiting on the database and the
    files; preparing a run also tokenizes its documents, beside the worker's batches."""

    # How long a stop waits for a tick under way (a run that is cut off while preparing is
    # prepared again by a later beat, after PREPARE_LEASE).
    STOP_SECONDS = 10.0

    def __init__(self, settings: Settings, seconds: float = TICK_SECONDS):
        self.ticker, self.seconds = Ticker(settings), seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="batchq-beat", daemon=True)

    def start(self) -> None:
        log.info("beat: every %gs in this process, schedules from the database", self.seconds)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.STOP_SECONDS)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.ticker.tick_or_warn()
            except Exception:  # a thread that ended here would leave nothing firing, unsaid
                log.exception("beat tick failed; the next one tries again")
            self._stop.wait(self.seconds)


def run_now(settings: Settings, schedule: ScheduleView, force: bool) -> RunView:
    """A run for now, outside the schedule's times; beat starts it at its next tick."""
    now = utcnow()
    run = RunView(secrets.token_hex(16), schedule.id, now, RunTrigger.MANUAL, RunStatus.WAITING,
                  now, force=force)
    rows.add_run(settings, run)
    return run
