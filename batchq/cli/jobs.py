"""The commands a job's owner types: submit, run, status, results, report, cancel, retry."""

from __future__ import annotations

import json
import sys

import click

from batchq import service
from batchq.cli import show
from batchq.cli.base import cli, gpu_option, job_options, output_options
from batchq.config import get_settings
from batchq.observe.progress import job_progress
from batchq.service import JobSettings


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@job_options
@click.option("--skip-invalid", is_flag=True,
              help="Run the valid lines and record each invalid one as a failed line with its "
                   "reason, instead of refusing the whole file.")
@click.option("--wait", is_flag=True, help="Show progress and exit 0 only if the job completed.")
@click.option("--model-override", is_flag=True,
              help="Run every line on --model, whatever model a line names (files written "
                   "for another provider). Without it, a line's own model is its variant.")
def submit(file: str, model: str, quant: str | None, job_settings: JobSettings,
           name: str | None, skip_invalid: bool, wait: bool, model_override: bool) -> None:
    """Validate FILE (JSONL, '-' for stdin), store it as a job and queue its chunks.

    Prints the job id, alone, on stdout.
    """
    refused: list[str] = []
    job_id = service.submit(file, model, quant, name=name, skip_invalid=skip_invalid,
                            refused=refused, job_settings=job_settings,
                            model_override=model_override)
    click.echo(job_id)
    job = service.status(job_id)
    c = job.counts
    where = f" on {job.queue}" if len(job.variants) <= 1 else ": " + ", ".join(
        f"{share.counts.pending} on {share.queue}" for share in job.variants)
    click.echo(f"queued {c.pending} lines in {job.chunks} chunk(s){where}", err=True)
    if c.failed:
        click.echo(f"skipped {c.failed} invalid line(s), recorded as failed "
                   f"(`batchq results {job_id[:12]} --errors FILE` lists them):", err=True)
        for problem in refused:
            click.echo(f"  {problem}", err=True)
        if c.failed > len(refused):
            click.echo(f"  ... and {c.failed - len(refused)} more", err=True)
    if wait:
        show.final_exit(service.wait(job_id, on_progress=job_progress(sys.stderr)))


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@job_options
@gpu_option
@output_options
@click.option("--model-override", is_flag=True,
              help="Run every line on --model, whatever model a line names.")
def run(file: str, model: str, quant: str | None, job_settings: JobSettings,
        name: str | None, gpu: int | None, output: str | None, errors_file: str | None,
        model_override: bool) -> None:
    """Submit FILE and serve it with an in-process worker until it is final; write the results.

    The one-machine path. The job is queued like any other, so a `batchq worker` of the same
    variant can help, and can finish it if this command is interrupted. Lines that name
    other models run after --model's, each model loaded in turn.
    """
    from batchq.worker.boot import WorkerPlan
    from batchq.worker.inline import InlineWorker

    settings = get_settings()
    plan = WorkerPlan.from_options(None, model=model, quant=quant, gpu=gpu)
    # Refuse a bad file before a long model load.
    service.validate_file(file, settings, model=plan.variant, model_override=model_override)
    worker = InlineWorker(plan, settings)
    job_id = service.submit(file, model, quant, name=name, settings=settings,
                            job_settings=job_settings, model_override=model_override)
    click.echo(f"job {job_id}", err=True)
    progress = job_progress(sys.stderr)
    worker.serve(job_id, on_chunk=progress)
    job = service.wait(job_id, settings, on_progress=progress)
    show.write_results(job_id, output, errors_file)
    show.final_exit(job)


@cli.command()
@click.argument("job", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--limit", default=20, show_default=True, help="How many recent jobs to list.")
@click.option("--watch", "-w", is_flag=True,
              help="Live progress bars of the running jobs (or of JOB), until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(0.1), default=2.0, show_default=True,
              help="Seconds between refreshes with --watch.")
def status(job: str | None, as_json: bool, limit: int, watch: bool, interval: float) -> None:
    """One job's status, counts and metrics; without JOB, the recent jobs."""
    if watch:
        if as_json:
            raise click.UsageError("--watch draws bars; use --json without it")
        show.watch(job, interval)
        return
    if job:
        view = service.status(job)
        if as_json:
            click.echo(json.dumps(view.to_dict(), indent=2))
        else:
            show.print_status(view)
        return
    views = service.list_jobs(limit)
    if as_json:
        click.echo(json.dumps([view.to_dict() for view in views], indent=2))
    elif not views:
        click.echo("no jobs yet", err=True)
    else:
        show.print_list(views)


@cli.command()
@click.argument("job")
@output_options
def results(job: str, output: str | None, errors_file: str | None) -> None:
    """JOB's results as JSONL, one line per input line, in input order (also while it runs)."""
    view, written = show.write_results(job, output, errors_file)
    if not view.status.final:
        click.echo(f"batchq: job {view.id[:12]} is {view.status}: "
                   f"{view.counts.pending} line(s) still pending", err=True)
    if output or errors_file:
        click.echo(f"wrote {written.results} result line(s)"
                   + (f" and {written.errors} error line(s)" if errors_file else ""), err=True)


@cli.command()
@click.argument("job")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, writable=True),
              help="FILE.png (a picture) or FILE.html (the picture and the numbers, one file).")
def report(job: str, output: str) -> None:
    """A picture of how JOB ran: throughput over time, batch latency, padding efficiency,
    each worker's share."""
    from batchq.observe.report import write

    data = write(job, output)
    click.echo(f"{output}: job {data.job.id[:12]}, {len(data.batches)} batches", err=True)


@cli.command()
@click.argument("job")
def cancel(job: str) -> None:
    """Cancel JOB: pending lines now, running chunks at their next batch boundary."""
    view = service.cancel(job)
    c = view.counts
    click.echo(f"job {view.id} {view.status}: {c.succeeded} succeeded, {c.failed} failed, "
               f"{c.cancelled} cancelled")


@cli.command()
@click.argument("job")
@click.option("--wait", is_flag=True, help="Show progress and exit 0 only if the job completed.")
def retry(job: str, wait: bool) -> None:
    """Run JOB's failed lines again as new attempts; its succeeded lines stay as they are."""
    done = service.retry(job)
    if done.lines == 0:
        click.echo(f"job {done.job_id}: no failed line to retry"
                   + (f" ({done.refused} refused input line(s) cannot run; fix them and submit "
                      "them again)" if done.refused else ""), err=True)
        return
    click.echo(f"job {done.job_id}: {done.lines} failed line(s) queued again in {done.chunks} "
               f"chunk(s)" + (f"; {done.refused} refused input line(s) stay failed"
                              if done.refused else ""), err=True)
    if wait:
        show.final_exit(service.wait(done.job_id, on_progress=job_progress(sys.stderr)))
