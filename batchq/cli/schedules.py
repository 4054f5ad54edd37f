"""`batchq schedule …`: nightly (or any) runs over a folder of documents."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from batchq.cli.base import cli, generation_options, quant_option
from batchq.config import get_settings
from batchq.errors import ConfigError
from batchq.service import JobSettings
from batchq.store.views import iso

if TYPE_CHECKING:
    from batchq.schedule.registry import Overview


def _duration(value: str | None, what: str) -> int | None:
    from batchq.schedule.timing import parse_duration

    return None if value is None else parse_duration(value, what)


def _variables(pairs: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    found = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.isidentifier():
            raise ConfigError(f"--var {pair!r}: use NAME=VALUE (NAME a template variable name)")
        found.append((name, value))
    return tuple(found)


@cli.group()
def schedule() -> None:
    """Scheduled runs over a folder of documents (`batchq beat` makes them fire)."""


@schedule.command("add")
@click.argument("name")
@click.option("--cron", help="A cron expression, e.g. '0 2 * * *' (02:00 every night).")
@click.option("--every", help="Or an interval: 30s, 15m, 6h, 1d.")
@click.option("--tz", default="UTC", show_default=True, help="The IANA zone --cron is in.")
@click.option("--source", required=True, help="The folder of documents.")
@click.option("--glob", default="**/*", show_default=True,
              help="Which files of the folder (recursive with **).")
@click.option("--template", "template_path", help="A Jinja2 prompt template file (.j2).")
@click.option("--prompt", help="Or an instruction; the document follows it.")
@click.option("--model", "-m", required=True, help="Alias, Hugging Face id or directory.")
@quant_option
@generation_options
@click.option("--var", "variables", multiple=True, metavar="NAME=VALUE",
              help="A variable of the template's own (repeatable).")
@click.option("--output", help="Where run folders go (default: $BATCHQ_HOME/runs).")
@click.option("--overlap", type=click.Choice(["skip", "queue"]), default="skip",
              show_default=True, help="When the previous run still runs at the next time.")
@click.option("--catch-up", type=click.Choice(["none", "latest", "all"]), default="latest",
              show_default=True, help="Times beat was not running for, within the window.")
@click.option("--catch-up-window", default="6h", show_default=True,
              help="How far back missed times are caught up.")
@click.option("--long", "long_mode", type=click.Choice(["split", "map-reduce", "fail"]),
              default="split", show_default=True,
              help="A document longer than the model's context: parts, parts then one "
                   "combined answer, or a failure.")
@click.option("--per-document", is_flag=True, help="Also write one text file per document.")
def schedule_add(name: str, cron: str | None, every: str | None, tz: str, source: str,
                 glob: str, template_path: str | None, prompt: str | None, model: str,
                 quant: str | None, job_settings: JobSettings, variables: tuple[str, ...],
                 output: str | None,
                 overlap: str, catch_up: str, catch_up_window: str, long_mode: str,
                 per_document: bool) -> None:
    """Add schedule NAME: every --cron time (or --every interval), the new or changed
    documents of --source go through the template to --model."""
    from batchq.schedule import registry

    settings = get_settings()
    added = registry.add(registry.NewSchedule(
        name=name, source_dir=source, model=model, cron=cron,
        every_seconds=_duration(every, "--every"), tz=tz, glob=glob,
        template_path=template_path, prompt=prompt, quant=quant, output_dir=output,
        generation=job_settings,
        variables=_variables(variables), overlap=overlap, catch_up=catch_up,
        catch_up_window_seconds=_duration(catch_up_window, "--catch-up-window") or 0,
        long=long_mode, per_document=per_document), settings)
    view = registry.overview(added, settings)
    click.echo(f"schedule {name!r} added: {view.description}; next "
               f"{', '.join(iso(t) or '' for t in view.next_runs)}", err=True)
    click.echo(f"it fires while {FIRES} runs", err=True)


@schedule.command("list")
def schedule_list() -> None:
    """Every schedule: when it runs, whether it is paused, its next times and its last run."""
    from batchq.schedule import registry

    found = registry.listing(get_settings())
    if not found:
        click.echo("no schedules yet (`batchq schedule add`)", err=True)
        return
    click.echo(f"{'NAME':<20}  {'SCHEDULE':<34}  {'NEXT':<25}  {'LAST RUN':<25}  STATUS")
    for item in found:
        s, last = item.schedule, item.last
        state = "paused" + (f" ({s.pause_note})" if s.pause_note else "") if s.paused_at else (
            last.status if last else "-")
        next_time = iso(item.next_runs[0]) if item.next_runs else "-"
        click.echo(f"{s.name:<20}  {item.description[:34]:<34}  {next_time:<25}  "
                   f"{(iso(last.scheduled_for) if last else '-'):<25}  {state}")
    _warn_unfired(found)


# The one thing that makes schedules fire, as the warnings name it.
FIRES = "`batchq beat` (or a `batchq worker --beat`)"


def _warn_unfired(overviews: list[Overview]) -> None:
    """Say plainly when times have passed with no beat to fire them."""
    for item in overviews:
        if item.unfired is not None:
            click.echo(f"batchq: warning: schedule {item.schedule.name!r}: "
                       f"{iso(item.unfired)} passed and nothing fired it; nothing runs "
                       f"until {FIRES} does (it then catches up by --catch-up)", err=True)
        if item.stalled is not None:
            click.echo(f"batchq: warning: schedule {item.schedule.name!r}: a run queued at "
                       f"{iso(item.stalled)} has not started; it starts when {FIRES} runs",
                       err=True)


def _generation_line(generation: dict[str, object]) -> list[str]:
    """The generation settings a schedule's runs are submitted with (a schema by its size)."""
    shown = [f"json_schema ({len(str(v))} chars)" if k == "json_schema" else f"{k} {v}"
             for k, v in generation.items()]
    return [f"settings  {', '.join(shown)}"] if shown else []


@schedule.command("show")
@click.argument("name")
@click.option("--next", "next_n", type=click.IntRange(0, 100), default=5, show_default=True)
@click.option("--history", "history_n", type=click.IntRange(0, 1000), default=10,
              show_default=True)
def schedule_show(name: str, next_n: int, history_n: int) -> None:
    """NAME's settings, its next times and its run history (with why a time did not run)."""
    from batchq.schedule import registry
    from batchq.store import schedules as rows

    settings = get_settings()
    s = registry.get(name, settings)
    item = registry.overview(s, settings, next_n)
    lines = [f"schedule  {s.name}" + (f"  (paused: {s.pause_note or 'no note'})"
                                      if s.paused_at else ""),
             f"when      {item.description}",
             f"source    {s.source_dir} ({s.glob})",
             f"prompt    {s.template_path or repr(s.prompt)}",
             f"model     {s.model}" + (f" ({s.quant})" if s.quant else ""),
             *_generation_line(s.options.get("generation", {})),
             f"output    {s.output_dir}/{s.name}/",
             f"policies  overlap {s.overlap}, catch-up {s.catch_up} within "
             f"{s.catch_up_window_seconds}s, long documents: {s.options.get('long', 'split')}",
             "next      " + (", ".join(iso(t) or "" for t in item.next_runs) or "-")]
    click.echo("\n".join(lines))
    _warn_unfired([item])
    history = rows.runs_of(settings, s.id, limit=history_n)
    if history:
        click.echo(f"{'SCHEDULED FOR':<25}  {'TRIGGER':<8}  {'STATUS':<9}  {'JOB':<12}  DETAIL")
    for run in history:
        detail = run.reason or ", ".join(f"{k} {v}" for k, v in run.summary.items()
                                         if isinstance(v, int))
        click.echo(f"{iso(run.scheduled_for) or '':<25}  {run.trigger:<8}  {run.status:<9}  "
                   f"{(run.job_id or '-')[:12]:<12}  {detail}")


@schedule.command("pause")
@click.argument("name")
@click.option("--note", help="Why (shown by `schedule list`).")
def schedule_pause(name: str, note: str | None) -> None:
    """Stop NAME from firing until it is resumed (a running run goes on)."""
    from batchq.schedule import registry

    registry.pause(name, note, get_settings())
    click.echo(f"schedule {name!r} paused", err=True)


@schedule.command("resume")
@click.argument("name")
def schedule_resume(name: str) -> None:
    """Fire NAME again from now; the times it was paused for are recorded as missed."""
    from batchq.schedule import registry

    registry.resume(name, get_settings())
    click.echo(f"schedule {name!r} resumed", err=True)


@schedule.command("remove")
@click.argument("name")
def schedule_remove(name: str) -> None:
    """Remove NAME and its run history (its jobs and output folders stay)."""
    from batchq.schedule import registry

    registry.remove(name, get_settings())
    click.echo(f"schedule {name!r} removed", err=True)


@schedule.command("run-now")
@click.argument("name")
@click.option("--force", is_flag=True,
              help="Run every document again, changed or not.")
def schedule_run_now(name: str, force: bool) -> None:
    """Run NAME now, outside its times (`batchq beat` starts it at its next tick)."""
    from batchq.schedule import registry
    from batchq.schedule.beat import run_now

    settings = get_settings()
    run = run_now(settings, registry.get(name, settings), force)
    click.echo(f"run {run.id} of {name!r} queued" + (" (every document)" if force else "")
               + f"; {FIRES} starts it at its next tick", err=True)


@schedule.command("preview")
@click.argument("name")
@click.option("--force", is_flag=True, help="As run-now --force would: every document.")
def schedule_preview(name: str, force: bool) -> None:
    """The documents NAME's next run would take, with token counts and parts; nothing runs."""
    from batchq.schedule import registry
    from batchq.schedule.beat import Ticker
    from batchq.schedule.prepare import prepare
    from batchq.states import DocumentStatus, RunStatus, RunTrigger
    from batchq.store.database import utcnow
    from batchq.store.schedules import RunView

    settings = get_settings()
    s = registry.get(name, settings)
    now = utcnow()
    prepared = prepare(settings, s, RunView("preview", s.id, now, RunTrigger.MANUAL,
                                            RunStatus.WAITING, now, force=force), Ticker(settings).sizer)
    click.echo(f"{'DOCUMENT':<40}  {'STATUS':<10}  {'TOKENS':>7}  {'PARTS':>5}  NOTE")
    for d in prepared.documents:
        if d.part > 1:
            continue
        tokens = sum(x.tokens or 0 for x in prepared.documents
                     if x.path == d.path and x.tokens) or "-"
        state = "runs" if d.status is DocumentStatus.QUEUED else d.status
        click.echo(f"{d.path[:40]:<40}  {state:<10}  {tokens:>7}  {d.parts:>5}  "
                   f"{d.error or ''}")
    click.echo(f"{len(prepared.lines)} line(s) would run", err=True)


@cli.command()
@click.option("--interval", type=click.FloatRange(0.5), default=5.0, show_default=True,
              help="Seconds between ticks.")
@click.option("--loglevel", default="INFO", show_default=True)
def beat(interval: float, loglevel: str) -> None:
    """Celery beat for batchq: the one process that makes schedules fire.

    Several may run (a unique key per schedule and time makes one run of each); the state is
    in the database. On one machine, `batchq worker --beat` embeds it in a worker instead.
    """
    import logging

    from batchq.cli.base import is_verbose, setup_logging
    from batchq.queue.app import app_for
    from batchq.store.sessions import session_factory

    settings = get_settings()
    session_factory(settings)  # the database is there, or this says what to do
    setup_logging(is_verbose(), timestamps=True)
    logging.getLogger("batchq").setLevel(loglevel.upper())
    app = app_for(settings)
    app.conf.batchq_beat_seconds = interval
    click.echo(f"batchq beat: every {interval:g}s, schedules from the database", err=True)
    app.start(["beat", "--scheduler", "batchq.schedule.beat:DatabaseScheduler",
               "--max-interval", str(max(1, round(interval))), "--loglevel", loglevel])
