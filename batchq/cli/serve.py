"""The long-running processes: a worker, Flower, the metrics endpoint."""

from __future__ import annotations

import logging

import click

from batchq.cli.base import cli, is_verbose, quant_option, setup_logging
from batchq.config import get_settings, redact
from batchq.engine import STRATEGIES
from batchq.errors import ConfigError


@cli.command()
@click.option("--model", "-m", default=None, help="Catalogue alias, Hugging Face id or directory.")
@quant_option
@click.option("--gpu", type=click.IntRange(0), default=None, help="Pin to this GPU index.")
@click.option("--profile", type=click.Path(dir_okay=False), default=None,
              help="A worker profile (workers/*.toml); options given here override it.")
@click.option("--max-batch-tokens", type=click.IntRange(1), default=None,
              help="Token budget of one GPU batch: rows x (padded prompt + new tokens).")
@click.option("--max-batch-rows", type=click.IntRange(1), default=None,
              help="Most prompts in one GPU batch.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default=None,
              help="Batching strategy (default: auto, static batches or continuous batching per "
                   "group, whichever the worker's measured cost model predicts is faster; see "
                   "README). naive is the tutorial loop, kept as a baseline.")
@click.option("--beat", "with_beat", is_flag=True,
              help="Also make schedules fire from this process (`batchq beat` on a thread of "
                   "the worker; one machine).")
@click.option("--name", default=None,
              help="The first part of its Celery node name (default: variant and GPU); two "
                   "workers of one variant on one host need different names.")
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--engine", type=click.Choice(["transformers", "null"]), default=None, hidden=True,
              help="null generates nothing: `batchq bench --engine null` measures the system.")
def worker(model: str | None, quant: str | None, gpu: int | None, profile: str | None,
           max_batch_tokens: int | None, max_batch_rows: int | None, strategy: str | None,
           with_beat: bool, name: str | None, loglevel: str, engine: str | None) -> None:
    """A Celery worker pinned to one variant (model + quantization) and one GPU."""
    from batchq.queue.publish import check_broker
    from batchq.worker.boot import WorkerPlan, serve

    plan = WorkerPlan.from_options(profile, model=model, quant=quant, gpu=gpu,
                                   max_batch_tokens=max_batch_tokens,
                                   max_batch_rows=max_batch_rows, strategy=strategy,
                                   beat=with_beat or None, engine=engine, name=name)
    settings = get_settings()
    check_broker(settings)  # before the timestamped log: a refusal stays one line
    setup_logging(is_verbose(), timestamps=True)
    logging.getLogger("batchq").setLevel(loglevel.upper())
    companions = []
    if plan.beat:
        from batchq.schedule.beat import BeatThread

        companions.append(BeatThread(settings))
    serve(plan, settings, loglevel, announce=lambda line: click.echo(line, err=True),
          companions=companions)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                               "help_option_names": ["-h", "--help"]})
@click.argument("flower_options", nargs=-1, type=click.UNPROCESSED)
def flower(flower_options: tuple[str, ...]) -> None:
    """Flower for batchq's queues: workers, chunk tasks, progress, /metrics.

    Flower's own options (--port, --basic-auth, --auth, --url_prefix, ...) and FLOWER_*
    variables pass through. It listens on 127.0.0.1 unless --address says otherwise, and any
    other address needs --basic-auth=USER:PASSWORD or Flower's OAuth options. Search the task
    list for `job=<id>` to see one job's chunks.
    """
    from batchq.observe.flower import build, exec_flower

    command = build(flower_options)
    exec_flower(command, get_settings().broker_url)


@cli.command()
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Listen here (0.0.0.0 for a Prometheus on another host).")
@click.option("--port", type=click.IntRange(1, 65535), default=9808, show_default=True)
def metrics(address: str, port: int) -> None:
    """Serve batchq's job metrics for Prometheus at http://ADDRESS:PORT/metrics.

    Jobs by status, lines by variant and status, tokens in and out and tokens/s by variant,
    queue depth by variant, the oldest pending line. Read from the database at each scrape.
    """
    from batchq.observe.metrics import serve

    settings = get_settings()
    click.echo(f"batchq metrics: http://{address}:{port}/metrics (database "
               f"{redact(settings.database_url)})", err=True)
    try:
        serve(settings, address, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {address}:{port}: {exc.strerror or exc}") from exc
    except KeyboardInterrupt:
        pass
