"""Setting up and measuring: the catalogue, the schema, the tiny model, the benchmark."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from batchq.cli.base import cli, gpu_option, quant_option
from batchq.config import get_settings, redact


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models(as_json: bool) -> None:
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
def db() -> None:
    """Database schema management."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database to the newest schema (Alembic head)."""
    from batchq.store.migrate import upgrade

    settings = get_settings()
    revision = upgrade(settings.database_url)
    click.echo(f"database {redact(settings.database_url)} is at revision {revision} (head)")


@cli.command("make-tiny-model")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--arch", type=click.Choice(["qwen2", "qwen3"]), default="qwen2", show_default=True,
              help="qwen2: random weights. qwen3: a scripted thinking model that reasons "
                   "(<think>...</think>) then answers 'Three.', greedy.")
def make_tiny_model(directory: str, arch: str) -> None:
    """Write a tiny Qwen model with the real Qwen tokenizer, fully offline."""
    from batchq.tools.tiny import make_thinking_model, make_tiny_model

    path = (make_thinking_model if arch == "qwen3" else make_tiny_model)(directory)
    click.echo(str(Path(path).resolve()))


@cli.command()
@click.argument("model", required=False)
@click.option("--random-weights", "random_alias", metavar="ALIAS", default=None,
              help="Build this real Qwen architecture with random weights (nothing downloaded), "
                   "e.g. qwen2.5-7b-instruct.")
@quant_option
@gpu_option
@click.option("-n", "--prompts", type=click.IntRange(1), default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--prompt-tokens", type=(click.IntRange(1), click.IntRange(1)), default=(16, 2048),
              show_default=True, help="Range of prompt lengths (log-uniform).")
@click.option("--output-tokens", type=(click.IntRange(1), click.IntRange(1)), default=(16, 512),
              show_default=True, help="Range of output limits (log-uniform).")
@click.option("--mix", default="log-uniform", show_default=True,
              help="How prompt lengths spread over --prompt-tokens: log-uniform, uniform or "
                   "heavy-tailed.")
@click.option("--workload", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Your own JSONL (as batchq submit takes it) instead of a synthetic mix.")
@click.option("--ignore-eos/--stop-at-eos", default=None,
              help="Generate every row to its limit (default: on with --random-weights).")
@click.option("--strategies", default="naive,static,continuous", show_default=True,
              help="Comma-separated, compared in this order on the same prompts.")
@click.option("--max-batch-tokens", type=click.IntRange(1), default=None,
              help="Token budget of one batch (default: sized from free GPU memory).")
@click.option("--max-batch-rows", type=click.IntRange(1), default=None)
@click.option("--system", "system", is_flag=True,
              help="Also run the workload as a real job through broker, database and a worker, "
                   "and report its tokens/s against the engine alone.")
@click.option("--repeat", type=click.IntRange(1), default=1, show_default=True,
              help="Run the strategies this many rounds, in turn, each against a naive loop "
                   "run beside it, and report each one's median round; with --system, also "
                   "the engine alone and the job this many times, in turn, and the median "
                   "pair (steadier figures on a busy machine).")
@click.option("--engine", type=click.Choice(["transformers", "null"]), default="transformers",
              show_default=True,
              help="null: generate nothing, and measure the lines/s the system itself carries "
                   "(submit, queue, database, workers); the model is not loaded.")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Worker processes for --engine null.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write every figure to this file as JSON.")
@click.option("--json-schema", "json_schema", type=click.Path(exists=True, dir_okay=False),
              default=None, help="Also run the prompts held to this JSON schema (constrained "
                                 "decoding) and report its tokens/s against free decoding.")
def bench(**options: Any) -> None:
    """Measure generation speed: the tutorial loop against batchq's strategies, on one synthetic
    workload, and optionally the whole system against the engine alone."""
    from batchq.tools.bench import BenchOptions, run

    chosen = BenchOptions(**options)
    chosen.check()  # a bad option is refused before torch is imported
    run(chosen, out=click.echo, note=lambda text: click.echo(text, err=True))
