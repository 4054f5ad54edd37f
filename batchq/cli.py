"""`batchq`: a thin click shell over batchq.jobs. Errors become one line and a documented exit code.

Exit codes: 0 ok; 1 unexpected error; 2 usage or configuration; 3 invalid input file;
4 unknown job, model or file; 5 database or broker unreachable; 6 a waited-for job did not complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import tomllib
import traceback
from pathlib import Path
from typing import Any

import click

from batchq import jobs
from batchq.engine import STRATEGIES
from batchq.errors import BatchqError, ConfigError, JobNotCompleted
from batchq.progress import Screen, bar, change_key, job_progress, percent
from batchq.settings import get_settings, redact

log = logging.getLogger("batchq")


class BatchqGroup(click.Group):
    """Turns batchq's errors into one line on stderr; a traceback only with -v."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BatchqError as exc:
            if ctx.meta.get("verbose"):
                traceback.print_exc()
            click.echo(f"batchq: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except BrokenPipeError:
            # `batchq results JOB | head`: the reader left; that is not an error.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(0)
        except KeyboardInterrupt:
            click.echo("batchq: interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:
            if ctx.meta.get("verbose"):
                traceback.print_exc()
            click.echo(f"batchq: unexpected error: {type(exc).__name__}: {exc} "
                       "(run with -v for the traceback)", err=True)
            ctx.exit(1)


class _OneLine(logging.Formatter):
    """`batchq: warning: ...` for a person at a terminal; a worker's log keeps timestamps."""

    def format(self, record: logging.LogRecord) -> str:
        return f"batchq: {record.levelname.lower()}: {record.getMessage()}"


def _setup_logging(verbose: bool, default: int = logging.WARNING, timestamps: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
                         if verbose or timestamps else _OneLine())
    logging.basicConfig(level=logging.DEBUG if verbose else default, handlers=[handler],
                        force=True)
    if not verbose:
        for noisy in ("transformers", "httpx", "urllib3", "huggingface_hub", "bitsandbytes"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


@click.group(cls=BatchqGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging and full tracebacks.")
@click.version_option(package_name="batchq")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Batch inference for Qwen models: JSONL in, per-variant queues, pinned workers, results out."""
    ctx.meta["verbose"] = verbose
    _setup_logging(verbose)
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        import warnings

        warnings.filterwarnings("ignore")


# ---------------------------------------------------------------- submit / run

_model_option = click.option("--model", "-m", required=True,
                             help="Catalogue alias, Hugging Face id or local model directory.")
_quant_option = click.option("--quant", "-q", type=click.Choice(["none", "int8", "nf4"]),
                             default=None, help="Quantization (default: the catalogue's "
                             "recommendation, else none).")


def _generation_options(f):
    f = click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=None,
                     help="Nucleus sampling for lines that do not set top_p.")(f)
    f = click.option("--temperature", type=click.FloatRange(0, 2), default=None,
                     help="Sampling temperature for lines that do not set one (default 0: greedy).")(f)
    f = click.option("--max-new-tokens", type=click.IntRange(1), default=None,
                     help="Output limit for lines that do not set one (default 256).")(f)
    return f


def _output_options(f):
    f = click.option("--errors", "errors_file", type=click.Path(dir_okay=False, writable=True),
                     help="Write failed and cancelled lines here instead of with the results.")(f)
    return click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True),
                        help="Write results here instead of stdout.")(f)


def _job_settings(max_new_tokens, temperature, top_p) -> jobs.JobSettings:
    return jobs.JobSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)


def _final_exit(info: dict[str, Any]) -> None:
    if info["status"] != "completed":
        c = info["counts"]
        raise JobNotCompleted(f"job {info['id']} {info['status']}: {c['completed']} succeeded, "
                              f"{c['failed']} failed, {c['cancelled']} cancelled "
                              f"(`batchq results {info['id'][:12]}` shows each line)")


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@_model_option
@_quant_option
@_generation_options
@click.option("--name", help="A name to recognise the job by.")
@click.option("--skip-invalid", is_flag=True,
              help="Run the valid lines and record each invalid one as a failed line with its "
                   "reason, instead of refusing the whole file.")
@click.option("--wait", is_flag=True, help="Show progress and exit 0 only if the job completed.")
def submit(file, model, quant, max_new_tokens, temperature, top_p, name, skip_invalid, wait):
    """Validate FILE (JSONL, '-' for stdin), store it as a job and queue its chunks.

    Prints the job id, alone, on stdout.
    """
    refused: list[str] = []
    job_id = jobs.submit(file, model, quant, name=name, skip_invalid=skip_invalid,
                         refused=refused,
                         job_settings=_job_settings(max_new_tokens, temperature, top_p))
    click.echo(job_id)
    info = jobs.status(job_id)
    c = info["counts"]
    click.echo(f"queued {c['pending']} lines in {info['chunks']} chunk(s) on {info['queue']}",
               err=True)
    if c["failed"]:
        click.echo(f"skipped {c['failed']} invalid line(s), recorded as failed "
                   f"(`batchq results {job_id[:12]} --errors FILE` lists them):", err=True)
        for problem in refused:
            click.echo(f"  {problem}", err=True)
        if c["failed"] > len(refused):
            click.echo(f"  ... and {c['failed'] - len(refused)} more", err=True)
    if wait:
        _final_exit(jobs.wait(job_id, on_progress=job_progress(sys.stderr)))


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@_model_option
@_quant_option
@_generation_options
@click.option("--name", help="A name to recognise the job by.")
@click.option("--gpu", type=click.IntRange(0), default=None, help="GPU index (default: 0 if any).")
@_output_options
def run(file, model, quant, max_new_tokens, temperature, top_p, name, gpu, output, errors_file):
    """Submit FILE and serve it with an in-process worker until it is final; write the results.

    The one-machine path. The job is queued like any other, so a `batchq worker` of the same
    variant can help, and can finish it if this command is interrupted.
    """
    from batchq.variants import resolve
    from batchq.worker import serve_job

    settings = get_settings()
    variant = resolve(model, quant)
    jobs.validate_file(file, settings)  # refuse a bad file before a long model load
    runtime = _load_runtime(variant, gpu, settings, profile={})
    job_id = jobs.submit(file, model, quant, name=name, settings=settings,
                         job_settings=_job_settings(max_new_tokens, temperature, top_p))
    click.echo(f"job {job_id}", err=True)
    show = job_progress(sys.stderr)
    serve_job(job_id, runtime, on_chunk=show)
    info = jobs.wait(job_id, settings, on_progress=show)
    _write_results(job_id, output, errors_file)
    _final_exit(info)


# ---------------------------------------------------------------- worker

def _read_profile(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such worker profile") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    section = data.get("worker", {})
    allowed = {"model", "quant", "gpu", "max_batch_tokens", "max_batch_rows", "strategy", "name"}
    unknown = set(section) - allowed
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) in [worker]: {', '.join(sorted(unknown))} "
                          f"(allowed: {', '.join(sorted(allowed))})")
    return section


_strategy_option = click.option(
    "--strategy", type=click.Choice(STRATEGIES), default=None,
    help="Batching strategy (default: the fastest measured for the device; see README). "
         "naive is the tutorial loop, kept as a baseline.")


def _budget_overrides(budget, options: dict[str, Any]):
    """The engine's default budget, with what a profile or the command line set replacing it."""
    from dataclasses import replace

    given = {field: int(options[key]) for key, field in
             (("max_batch_tokens", "max_tokens"), ("max_batch_rows", "max_rows"))
             if options.get(key) is not None}
    return replace(budget, **given)


def _load_runtime(variant, gpu, settings, profile):
    from batchq.db import session_factory
    from batchq.engine import Engine
    from batchq.worker import start_runtime

    session_factory(settings)  # fail fast, before a long model load, if the database is away
    if gpu is not None:
        # Pin before CUDA starts: the process then sees exactly one GPU, as cuda:0.
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    import torch

    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    if gpu is not None and device == "cpu":
        click.echo(f"batchq: warning: no CUDA device visible; GPU {gpu} ignored, running on CPU",
                   err=True)
    engine = Engine.load(variant.model, variant.quant, device, None, profile.get("strategy"),
                         trust_remote_code=variant.trust_remote_code)
    engine.budget = _budget_overrides(engine.budget, profile)
    return start_runtime(engine, variant, settings)


@cli.command()
@click.option("--model", "-m", default=None, help="Catalogue alias, Hugging Face id or directory.")
@_quant_option
@click.option("--gpu", type=click.IntRange(0), default=None, help="Pin to this GPU index.")
@click.option("--profile", type=click.Path(dir_okay=False), default=None,
              help="A worker profile (workers/*.toml); options given here override it.")
@click.option("--max-batch-tokens", type=click.IntRange(1), default=None,
              help="Token budget of one GPU batch: rows x (padded prompt + new tokens).")
@click.option("--max-batch-rows", type=click.IntRange(1), default=None,
              help="Most prompts in one GPU batch.")
@_strategy_option
@click.option("--loglevel", default="INFO", show_default=True)
def worker(model, quant, gpu, profile, max_batch_tokens, max_batch_rows, strategy, loglevel):
    """A Celery worker pinned to one variant (model + quantization) and one GPU."""
    from batchq.celery_app import app_for
    from batchq.variants import resolve

    prof = _read_profile(profile)
    model = model or prof.get("model")
    if not model:
        raise ConfigError("give --model or a --profile that names one")
    quant = quant or prof.get("quant")
    gpu = gpu if gpu is not None else prof.get("gpu")
    for key, value in (("max_batch_tokens", max_batch_tokens), ("max_batch_rows", max_batch_rows),
                       ("strategy", strategy)):
        if value is not None:
            prof[key] = value
    settings = get_settings()
    variant = resolve(model, quant)
    jobs.check_broker(settings)
    _setup_logging(click.get_current_context().meta.get("verbose", False), timestamps=True)
    logging.getLogger("batchq").setLevel(loglevel.upper())
    runtime = _load_runtime(variant, gpu, settings, prof)
    engine = runtime.engine
    click.echo(f"batchq worker: model {variant.model} ({variant.quant}) on {engine.device}; "
               f"{engine.strategy} batches of up to {engine.budget.max_rows} rows and "
               f"{engine.budget.max_tokens} tokens; queue {variant.queue}; broker "
               f"{redact(settings.broker_url)}", err=True)
    node = prof.get("name") or f"{variant.slug}.{variant.quant}" + (
        f".gpu{gpu}" if gpu is not None else "")
    from batchq.worker import install_worker_hooks

    install_worker_hooks(settings, variant.queue)
    argv = ["worker", "-Q", variant.queue, "-P", "solo", "-c", "1", "-E",
            "-n", f"{node}@%h", "--loglevel", loglevel]
    if settings.embedded:
        argv += ["--without-mingle", "--without-gossip"]  # the SQLite broker has no broadcast
    app_for(settings).worker_main(argv)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                               "help_option_names": ["-h", "--help"]})
@click.argument("flower_options", nargs=-1, type=click.UNPROCESSED)
def flower(flower_options):
    """Flower for batchq's queues: workers, chunk tasks, progress, /metrics.

    Flower's own options (--port, --basic-auth, --auth, --url_prefix, ...) and FLOWER_*
    variables pass through. It listens on 127.0.0.1 unless --address says otherwise, and any
    other address needs --basic-auth=USER:PASSWORD or Flower's OAuth options. Search the task
    list for `job=<id>` to see one job's chunks.
    """
    from batchq.flower import build, exec_flower

    command = build(flower_options)
    exec_flower(command, get_settings().broker_url)


@cli.command()
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Listen here (0.0.0.0 for a Prometheus on another host).")
@click.option("--port", type=click.IntRange(1, 65535), default=9808, show_default=True)
def metrics(address, port):
    """Serve batchq's job metrics for Prometheus at http://ADDRESS:PORT/metrics.

    Jobs by status, lines by variant and status, tokens in and out and tokens/s by variant,
    queue depth by variant, the oldest pending line. Read from the database at each scrape.
    """
    from batchq.metrics import serve

    settings = get_settings()
    click.echo(f"batchq metrics: http://{address}:{port}/metrics (database "
               f"{redact(settings.database_url)})", err=True)
    try:
        serve(settings, address, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {address}:{port}: {exc.strerror or exc}") from exc
    except KeyboardInterrupt:
        pass


# ---------------------------------------------------------------- reading jobs

def _print_status(info: dict[str, Any]) -> None:
    c, m = info["counts"], info["metrics"]
    lines = [
        f"job       {info['id']}" + (f"  ({info['name']})" if info["name"] else ""),
        f"status    {info['status']}",
        f"variant   {info['model']} ({info['quant']}) on queue {info['queue']}",
        f"lines     {c['total']} total: {c['completed']} succeeded, {c['failed']} failed, "
        f"{c['cancelled']} cancelled, {c['pending']} pending",
        f"created   {m['created_at']}   started {m['started_at'] or '-'}   "
        f"finished {m['finished_at'] or '-'}",
        f"timing    queue wait {_secs(m['queue_wait_seconds'])}, run {_secs(m['run_seconds'])}, "
        f"generating {_secs(m['generate_seconds'])} in {m['batches']} batch(es)",
        f"tokens    {m['prompt_tokens']} prompt, {m['completion_tokens']} completion, "
        f"{m['tokens_per_second'] or '-'} tok/s",
        f"padding   efficiency {percent(m['padding_efficiency'])} of prompt slots, "
        f"decode {percent(m['decode_efficiency'])} of decode slots",
    ]
    click.echo("\n".join(lines))


def _secs(value) -> str:
    return "-" if value is None else f"{value:.1f}s"


@cli.command()
@click.argument("job", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--limit", default=20, show_default=True, help="How many recent jobs to list.")
@click.option("--watch", "-w", is_flag=True,
              help="Live progress bars of the running jobs (or of JOB), until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(0.1), default=2.0, show_default=True,
              help="Seconds between refreshes with --watch.")
def status(job, as_json, limit, watch, interval):
    """One job's status, counts and metrics; without JOB, the recent jobs."""
    if watch:
        if as_json:
            raise click.UsageError("--watch draws bars; use --json without it")
        _watch(job, interval)
        return
    if job:
        info = jobs.status(job)
        if as_json:
            click.echo(json.dumps(info, indent=2))
        else:
            _print_status(info)
        return
    infos = jobs.list_jobs(limit)
    if as_json:
        click.echo(json.dumps(infos, indent=2))
        return
    if not infos:
        click.echo("no jobs yet", err=True)
        return
    click.echo(f"{'JOB':<12}  {'STATUS':<9}  {'DONE':>13}  {'FAILED':>6}  {'CREATED':<25}  MODEL")
    for info in infos:
        c = info["counts"]
        done = f"{c['completed'] + c['failed'] + c['cancelled']}/{c['total']}"
        click.echo(f"{info['id'][:12]}  {info['status']:<9}  {done:>13}  {c['failed']:>6}  "
                   f"{info['metrics']['created_at']:<25}  {info['model']} ({info['quant']})")


def _watch(job: str | None, interval: float) -> None:
    """Redraw until Ctrl-C. A job that ends stays on screen, marked, until the watch ends."""
    screen = Screen(sys.stdout)
    shown: dict[str, dict[str, Any]] = {}
    try:
        while True:
            if job:
                infos = [jobs.status(job)]
            else:
                active = {info["id"]: info for info in jobs.active_jobs()}
                # A job that ended since the last refresh: its final state, once.
                for job_id, info in list(shown.items()):
                    if job_id not in active and info["status"] not in jobs.FINAL_JOB_STATUSES:
                        shown[job_id] = jobs.status(job_id)
                shown.update(active)
                infos = list(shown.values())
            lines = [bar(info) for info in infos] or ["no queued or running jobs"]
            screen.show(lines, key=change_key(infos))
            time.sleep(interval)
    except KeyboardInterrupt:
        pass  # the watch's way out, not an error


def _write_results(job: str, output: str | None, errors_file: str | None
                   ) -> tuple[dict[str, Any], dict[str, int]]:
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(output, "w", encoding="utf-8")) if output else sys.stdout
        err = (stack.enter_context(open(errors_file, "w", encoding="utf-8"))
               if errors_file else None)
        return jobs.write_results(job, out, err)


@cli.command()
@click.argument("job")
@_output_options
def results(job, output, errors_file):
    """JOB's results as JSONL, one line per input line, in input order (also while it runs)."""
    info, counts = _write_results(job, output, errors_file)
    if info["status"] not in jobs.FINAL_JOB_STATUSES:
        click.echo(f"batchq: job {info['id'][:12]} is {info['status']}: "
                   f"{info['counts']['pending']} line(s) still pending", err=True)
    if output or errors_file:
        click.echo(f"wrote {counts['written']} result line(s)"
                   + (f" and {counts['errors']} error line(s)" if errors_file else ""), err=True)


@cli.command()
@click.argument("job")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, writable=True),
              help="FILE.png (a picture) or FILE.html (the picture and the numbers, one file).")
def report(job, output):
    """A picture of how JOB ran: throughput over time, batch latency, padding efficiency,
    each worker's share."""
    from batchq.report import write

    data = write(job, output)
    click.echo(f"{output}: job {data.job['id'][:12]}, {len(data.batches)} batches", err=True)


@cli.command()
@click.argument("job")
def cancel(job):
    """Cancel JOB: pending lines now, running chunks at their next batch boundary."""
    info = jobs.cancel(job)
    c = info["counts"]
    click.echo(f"job {info['id']} {info['status']}: {c['completed']} succeeded, "
               f"{c['failed']} failed, {c['cancelled']} cancelled")


@cli.command()
@click.argument("job")
@click.option("--wait", is_flag=True, help="Show progress and exit 0 only if the job completed.")
def retry(job, wait):
    """Run JOB's failed lines again as new attempts; its succeeded lines stay as they are."""
    done = jobs.retry(job)
    if done.lines == 0:
        click.echo(f"job {done.job_id}: no failed line to retry"
                   + (f" ({done.refused} refused input line(s) cannot run; fix them and submit "
                      "them again)" if done.refused else ""), err=True)
        return
    click.echo(f"job {done.job_id}: {done.lines} failed line(s) queued again in {done.chunks} "
               f"chunk(s)" + (f"; {done.refused} refused input line(s) stay failed"
                              if done.refused else ""), err=True)
    if wait:
        _final_exit(jobs.wait(done.job_id, on_progress=job_progress(sys.stderr)))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models(as_json):
    """The model catalogue. Any other Hugging Face id or a local directory works too."""
    from batchq.variants import CATALOGUE, queue_name

    rows = [{"alias": e.alias, "hf_id": e.hf_id, "context": e.context,
             "recommended_quant": e.recommended_quant,
             "queue": queue_name(e.alias, e.recommended_quant)} for e in CATALOGUE]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'ALIAS':<28}  {'HUGGING FACE ID':<34}  {'CONTEXT':>7}  QUANT")
    for r in rows:
        click.echo(f"{r['alias']:<28}  {r['hf_id']:<34}  {r['context']:>7}  "
                   f"{r['recommended_quant']}")


@cli.group()
def db():
    """Database schema management."""


@db.command("upgrade")
def db_upgrade():
    """Migrate the database to the newest schema (Alembic head)."""
    from batchq.db import upgrade

    settings = get_settings()
    revision = upgrade(settings.database_url)
    click.echo(f"database {redact(settings.database_url)} is at revision {revision} (head)")


@cli.command("make-tiny-model")
@click.argument("directory", type=click.Path(file_okay=False))
def make_tiny_model(directory):
    """Write a tiny random-weight Qwen2 model with the real Qwen2.5 tokenizer (offline)."""
    from batchq.tiny import make_tiny_model as make

    path = make(directory)
    click.echo(str(Path(path).resolve()))


@cli.command()
@click.argument("model", required=False)
@click.option("--random-weights", "random_alias", metavar="ALIAS", default=None,
              help="Build this real Qwen architecture with random weights (nothing downloaded), "
                   "e.g. qwen2.5-7b-instruct.")
@_quant_option
@click.option("--gpu", type=click.IntRange(0), default=None, help="GPU index (default: 0 if any).")
@click.option("-n", "--prompts", type=click.IntRange(1), default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--prompt-tokens", type=(click.IntRange(1), click.IntRange(1)), default=(16, 2048),
              show_default=True, help="Range of prompt lengths (log-uniform).")
@click.option("--output-tokens", type=(click.IntRange(1), click.IntRange(1)), default=(16, 512),
              show_default=True, help="Range of output limits (log-uniform).")
@click.option("--ignore-eos/--stop-at-eos", default=None,
              help="Generate every row to its limit (default: on with --random-weights).")
@click.option("--strategies", default="naive,static,continuous", show_default=True,
              help="Comma-separated, compared in this order on the same prompts.")
@click.option("--max-batch-tokens", type=click.IntRange(1), default=None,
              help="Token budget of one batch (default: sized from free GPU memory).")
@click.option("--max-batch-rows", type=click.IntRange(1), default=None)
@click.option("--system", "with_system", is_flag=True,
              help="Also run the workload as a real job through broker, database and a worker, "
                   "and report its tokens/s against the engine alone.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write every figure to this file as JSON.")
def bench(model, random_alias, quant, gpu, prompts, seed, prompt_tokens, output_tokens,
          ignore_eos, strategies, max_batch_tokens, max_batch_rows, with_system, json_path):
    """Measure generation speed: the tutorial loop against batchq's strategies, on one synthetic
    workload, and optionally the whole system against the engine alone."""
    import platform

    import torch
    import transformers

    from batchq import bench as b
    from batchq.engine import Engine, pick_device
    from batchq.tiny import make_random_model
    from batchq.variants import resolve

    names = b.strategies_from(strategies)
    if bool(model) == bool(random_alias):
        raise ConfigError("give a MODEL or --random-weights ALIAS (one of them)")
    for label, (low, high) in (("--prompt-tokens", prompt_tokens), ("--output-tokens", output_tokens)):
        if low > high:
            raise ConfigError(f"{label}: the low end {low} is above the high end {high}")
    settings = get_settings()
    if random_alias:
        model = str(make_random_model(settings.home / "random-models" / random_alias, random_alias))
        ignore_eos = True if ignore_eos is None else ignore_eos
    variant = resolve(model, quant)
    device = pick_device(gpu)
    click.echo(f"loading {variant.model} ({variant.quant}) on {device}", err=True)
    engine = Engine.load(variant.model, variant.quant, device,
                         trust_remote_code=variant.trust_remote_code)
    engine.budget = _budget_overrides(engine.budget, {"max_batch_tokens": max_batch_tokens,
                                                      "max_batch_rows": max_batch_rows})
    engine.ignore_eos = bool(ignore_eos)
    workload = b.Workload(prompts, seed, *prompt_tokens, *output_tokens)
    items = workload.build()
    gpu_name, bandwidth = b.gpu_bandwidth(device) if device.startswith("cuda") else (None, None)
    meta = {"model": variant.model, "random_weights": random_alias, "quant": variant.quant,
            "device": gpu_name or f"CPU ({platform.processor() or platform.machine()}, "
                                   f"{torch.get_num_threads()} threads)",
            "torch": torch.__version__, "transformers": transformers.__version__,
            "workload": workload.__dict__, "ignore_eos": engine.ignore_eos,
            "budget": {"max_tokens": engine.budget.max_tokens,
                       "max_rows": engine.budget.max_rows},
            "bandwidth_bytes_per_s": bandwidth,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    click.echo(f"{prompts} prompts of {prompt_tokens[0]}-{prompt_tokens[1]} tokens, outputs of "
               f"{output_tokens[0]}-{output_tokens[1]}, on {meta['device']}; batches of up to "
               f"{engine.budget.max_rows} rows and {engine.budget.max_tokens} tokens", err=True)
    results = b.compare(engine, items, names, bandwidth)
    click.echo(b.table(results))
    diff = b.differing(results)
    click.echo("outputs identical across strategies: " + ("yes" if not diff else "NO: " + "; ".join(
        f"{name} differs from {results[0].strategy} on {len(keys)} prompt(s), first #{keys[0]}"
        for name, keys in diff.items())))
    system = None
    if with_system:
        best = max((r for r in results if r.strategy != "naive"), default=results[0],
                   key=lambda r: r.output_tokens_per_s)
        system = b.measure_system(engine, variant.model, variant.quant, items, best.strategy,
                                  lambda text: click.echo(text, err=True))
        click.echo(f"system ({system.backend}, {best.strategy}): "
                   f"{system.system_tokens_per_s:,.0f} output tokens/s through queue, database "
                   f"and worker = {100 * system.ratio:.0f}% of the engine alone "
                   f"({system.engine_tokens_per_s:,.0f}); outputs "
                   f"{'match' if system.outputs_match else 'DIFFER'}")
        naive = next((r for r in results if r.strategy == "naive"), None)
        if naive:
            click.echo(f"end to end vs the naive loop: "
                       f"{system.system_tokens_per_s / naive.output_tokens_per_s:.2f}x")
    if json_path:
        Path(json_path).write_text(json.dumps(b.report(meta, results, system), indent=2) + "\n")
        click.echo(f"wrote {json_path}", err=True)


def main() -> None:
    cli(prog_name="batchq")


if __name__ == "__main__":
    main()
