"""The `batchq` group: errors become one line and a documented exit code; logging set up once.

Exit codes: 0 ok; 1 unexpected error; 2 usage or configuration; 3 invalid input file;
4 unknown job, model or file; 5 database or broker unreachable; 6 a waited-for job did not complete.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from batchq.errors import BatchqError

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


def setup_logging(verbose: bool, default: int = logging.WARNING, timestamps: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
                         if verbose or timestamps else _OneLine())
    logging.basicConfig(level=logging.DEBUG if verbose else default, handlers=[handler],
                        force=True)
    if not verbose:
        for noisy in ("transformers", "httpx", "urllib3", "huggingface_hub", "bitsandbytes",
                      "pypdf"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


@click.group(cls=BatchqGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging and full tracebacks.")
@click.version_option(package_name="batchq")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Batch inference for Qwen models: JSONL in, per-variant queues, pinned workers, results out."""
    ctx.meta["verbose"] = verbose
    setup_logging(verbose)
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        import warnings

        warnings.filterwarnings("ignore")


def is_verbose() -> bool:
    return bool(click.get_current_context().meta.get("verbose", False))


# ---------------------------------------------------------------- options several commands share

model_option = click.option("--model", "-m", required=True,
                            help="Catalogue alias, Hugging Face id or local model directory.")
quant_option = click.option("--quant", "-q", type=click.Choice(["none", "int8", "nf4"]),
                            default=None, help="Quantization (default: the catalogue's "
                            "recommendation, else none).")
gpu_option = click.option("--gpu", type=click.IntRange(0), default=None,
                          help="GPU index (default: 0 if any).")


_GENERATION = (
    click.option("--max-new-tokens", type=click.IntRange(1), default=None,
                 help="Output limit for lines that do not set one (default 256)."),
    click.option("--temperature", type=click.FloatRange(0, 2), default=None,
                 help="Sampling temperature for lines that do not set one (default 0: greedy)."),
    click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=None,
                 help="Nucleus sampling for lines that do not set top_p."),
    click.option("--top-k", type=click.IntRange(0), default=None,
                 help="Sample from the K likeliest tokens (0: off)."),
    click.option("--min-p", type=click.FloatRange(0, 1), default=None,
                 help="Drop tokens less likely than this share of the likeliest (0: off)."),
    click.option("--repetition-penalty", type=click.FloatRange(0, 2, min_open=True),
                 default=None, help="Hugging Face's penalty on prompt and output tokens (1: off)."),
    click.option("--presence-penalty", type=click.FloatRange(-2, 2), default=None,
                 help="OpenAI's penalty on tokens already in the output (0: off)."),
    click.option("--frequency-penalty", type=click.FloatRange(-2, 2), default=None,
                 help="OpenAI's penalty per repeat of a token in the output (0: off)."),
    click.option("--sampling", type=click.Choice(["greedy", "model"]), default=None,
                 help="model: start from the model's generation_config (what Qwen recommends); "
                      "the options above and each line's own settings override it. "
                      "Default: greedy, for reproducible results."),
    click.option("--json-schema", "json_schema", type=click.Path(dir_okay=False), default=None,
                 help="A JSON schema file: every line's output is JSON that matches it "
                      "(constrained decoding), unless the line gives its own."),
    click.option("--no-dedup", "no_dedup", is_flag=True,
                 help="Generate every line, even one identical to another (same prompt, greedy, "
                      "same settings and model). Default: such lines are generated once and the "
                      "output shared."),
    click.option("--thinking", type=click.Choice(["on", "off"]), default=None,
                 help="A thinking model's (Qwen3) reasoning before its answer, for lines that "
                      "do not set enable_thinking. Default: the model's chat template's."),
)


def _schema_file(path: str) -> dict[str, Any]:
    """A --json-schema file, read and checked before anything is stored."""
    import json

    from batchq.engine.schemas import schema_problem

    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise click.BadParameter(f"{path}: cannot be read ({exc.strerror})",
                                 param_hint="--json-schema") from None
    except ValueError as exc:
        raise click.BadParameter(f"{path}: not JSON ({exc})", param_hint="--json-schema") from None
    problem = schema_problem(schema)
    if problem:
        raise click.BadParameter(f"{path}: the schema cannot be enforced: {problem}",
                                 param_hint="--json-schema")
    return dict(schema)


def generation_options(f: Any) -> Any:
    """The job-level generation settings, handed to the command as one `job_settings`."""
    from batchq.service import JobSettings

    names = ("max_new_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
             "presence_penalty", "frequency_penalty", "sampling")

    @functools.wraps(f)
    def command(*args: Any, **kwargs: Any) -> Any:
        given = {name: kwargs.pop(name) for name in names}
        thinking = kwargs.pop("thinking")
        schema = kwargs.pop("json_schema")
        dedup = False if kwargs.pop("no_dedup") else None
        return f(*args, job_settings=JobSettings(
            **given, thinking=None if thinking is None else thinking == "on",
            json_schema=None if schema is None else _schema_file(schema), dedup=dedup), **kwargs)

    for option in reversed(_GENERATION):
        command = option(command)
    return command


def job_options(f: Any) -> Any:
    """What a job is made of, for submit and run: its model and its generation settings."""
    name = click.option("--name", help="A name to recognise the job by.")
    for option in (name, generation_options, quant_option, model_option):
        f = option(f)
    return f


def output_options(f: Any) -> Any:
    f = click.option("--errors", "errors_file", type=click.Path(dir_okay=False, writable=True),
                     help="Write failed and cancelled lines here instead of with the results.")(f)
    return click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True),
                        help="Write results here instead of stdout.")(f)
