"""Adding, listing, pausing and removing schedules. Everything is checked before anything is
stored (cron, zone, folder, template, model), so a mistake is one line at `add`, not a
failed run at 02:00, and nothing is half-created."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from batchq.config import Settings
from batchq.errors import ConfigError, NotFound
from batchq.schedule.planning import GRACE_SECONDS, Policy
from batchq.schedule.templates import PromptTemplate
from batchq.schedule.timing import Timing
from batchq.service import JobSettings
from batchq.states import RunStatus, RunTrigger
from batchq.store import schedules as rows
from batchq.store.database import utcnow
from batchq.store.schedules import RunView, ScheduleView
from batchq.variants import resolve

LONG = ("split", "map-reduce", "fail")  # what to do with a document longer than the context
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class NewSchedule:
    name: str
    source_dir: str
    model: str
    cron: str | None = None
    every_seconds: int | None = None
    tz: str = "UTC"
    glob: str = "**/*"
    template_path: str | None = None
    prompt: str | None = None
    quant: str | None = None
    output_dir: str | None = None
    generation: JobSettings = JobSettings()
    variables: tuple[tuple[str, str], ...] = ()
    overlap: str = "skip"
    catch_up: str = "latest"
    catch_up_window_seconds: int = 6 * 3600
    long: str = "split"
    per_document: bool = False


def generation_of(schedule: ScheduleView) -> JobSettings:
    """The job-level generation settings each run's job is submitted with."""
    return JobSettings(**schedule.options.get("generation", {}))


def timing_of(schedule: ScheduleView) -> Timing:
    return Timing(schedule.cron, schedule.every_seconds, schedule.tz, schedule.created_at)


def policy_of(schedule: ScheduleView) -> Policy:
    return Policy(schedule.overlap, schedule.catch_up, schedule.catch_up_window_seconds)


def template_of(schedule: ScheduleView) -> PromptTemplate:
    """The prompt template as it is now (a template file is read again at every run)."""
    variables = schedule.options.get("variables", {})
    if schedule.template_path is None:
        return PromptTemplate(schedule.prompt or "", "--prompt", variables)
    path = Path(schedule.template_path)
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"template {path}: cannot be read ({exc})") from None
    return PromptTemplate(source, str(path), variables)


def add(new: NewSchedule, settings: Settings) -> ScheduleView:
    if not _NAME.match(new.name):
        raise ConfigError(f"schedule name {new.name!r}: use letters, digits, '.', '_' or '-'")
    if (new.template_path is None) == (new.prompt is None):
        raise ConfigError("give --template FILE.j2 or --prompt TEXT (one of them)")
    if new.long not in LONG:
        raise ConfigError(f"--long {new.long!r}: use {', '.join(LONG)}")
    source = Path(new.source_dir).expanduser()
    if not source.is_dir():
        raise NotFound(f"--source {new.source_dir}: no such folder")
    now = utcnow()
    timing = Timing(new.cron, new.every_seconds, new.tz, now)  # checks cron and zone
    Policy(new.overlap, new.catch_up, new.catch_up_window_seconds)
    resolve(new.model, new.quant, settings.model_aliases)  # an unknown model is refused now
    options: dict[str, Any] = {
        "generation": new.generation.to_dict(), "variables": dict(new.variables),
        "long": new.long,
        "per_document": new.per_document}
    view = ScheduleView(
        id=secrets.token_hex(16), name=new.name, cron=timing.cron,
        every_seconds=timing.every_seconds, tz=new.tz, source_dir=str(source.resolve()),
        glob=new.glob,
        template_path=str(Path(new.template_path).expanduser().resolve())
        if new.template_path else None,
        prompt=new.prompt, model=new.model, quant=new.quant,
        options={k: v for k, v in options.items() if v is not None},
        output_dir=str(Path(new.output_dir or settings.home / "runs").expanduser().resolve()),
        overlap=new.overlap, catch_up=new.catch_up,
        catch_up_window_seconds=new.catch_up_window_seconds, created_at=now)
    template_of(view)  # a template that does not compile or render shows its line now
    if not rows.add_schedule(settings, view):
        raise ConfigError(f"a schedule named {new.name!r} exists already (`batchq schedule "
                          "list`)")
    return view


def get(name: str, settings: Settings) -> ScheduleView:
    found = rows.get_schedule(settings, name)
    if found is None:
        raise NotFound(f"no schedule {name!r} (`batchq schedule list`)")
    return found


def pause(name: str, note: str | None, settings: Settings) -> None:
    get(name, settings)
    rows.set_paused(settings, name, utcnow(), note)


def resume(name: str, settings: Settings) -> None:
    """Resumed from now: times that passed while paused are not caught up."""
    schedule = get(name, settings)
    if schedule.paused_at is None:
        return
    paused_from, now = schedule.paused_at, utcnow()
    for slot in list(timing_of(schedule).slots(paused_from, now))[-20:]:
        rows.add_run(settings, RunView(secrets.token_hex(16), schedule.id, slot,
                                       RunTrigger.ON_TIME, RunStatus.MISSED, now,
                                       reason="the schedule was paused", finished_at=now))
    rows.set_paused(settings, name, None, None)


def remove(name: str, settings: Settings) -> None:
    if not rows.remove_schedule(settings, name):
        raise NotFound(f"no schedule {name!r} (`batchq schedule list`)")


@dataclass(frozen=True)
class Overview:
    schedule: ScheduleView
    description: str
    next_runs: list[datetime]
    last: RunView | None
    # The oldest scheduled time that passed a while ago with nothing recorded for it (not
    # even as missed): no beat is running. None when every time that came was decided.
    unfired: datetime | None = None
    # When the oldest run still waiting to start (run-now's, or a decided time's) was queued,
    # if that was a while ago and no other run of the schedule holds it back: no beat is
    # running to start it.
    stalled: datetime | None = None


def overview(schedule: ScheduleView, settings: Settings, next_n: int = 3) -> Overview:
    timing, now = timing_of(schedule), utcnow()
    recent = rows.runs_of(settings, schedule.id, limit=1)
    unfired = None
    if schedule.paused_at is None:
        decided = rows.last_slot(settings, schedule.id) or schedule.created_at
        unfired = next(timing.slots(decided, now - timedelta(seconds=GRACE_SECONDS)), None)
    return Overview(schedule, timing.describe(),
                    [] if schedule.paused_at else timing.next_slots(now, next_n),
                    recent[0] if recent else None, unfired, _stalled(schedule, settings, now))


def _stalled(schedule: ScheduleView, settings: Settings, now: datetime) -> datetime | None:
    """When the oldest waiting run was queued, if a beat would have started it by now: it was
    queued over GRACE_SECONDS ago (a beat ticks every few seconds) and no run of the
    schedule is preparing or running (which would hold it back, by --overlap)."""
    open_runs = rows.runs_of(settings, schedule.id, limit=100, statuses=[
        RunStatus.WAITING, RunStatus.PREPARING, RunStatus.RUNNING])
    if any(run.status != RunStatus.WAITING for run in open_runs):
        return None
    queued = min((run.created_at for run in open_runs), default=None)
    return queued if queued and now - queued > timedelta(seconds=GRACE_SECONDS) else None


def listing(settings: Settings) -> list[Overview]:
    return [overview(schedule, settings) for schedule in rows.all_schedules(settings)]
