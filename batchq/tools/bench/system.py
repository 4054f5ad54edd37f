"""The whole system against the engine alone: the same prompts as a real job through the
broker, the database and a `batchq worker` subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchq import service
from batchq.config import Settings
from batchq.engine import Engine, PromptIn
from batchq.tools.bench.strategies import run_strategy


@dataclass
class SystemResult:
    backend: str
    engine_tokens_per_s: float
    naive_tokens_per_s: float  # the tutorial loop on the same prompts, EOS honoured as a job's
    system_tokens_per_s: float
    system_seconds: float
    worker_generate_seconds: float  # inside the engine, summed over the job's batches
    batches: int
    completion_tokens: int
    job_id: str
    ratio: float
    speedup_vs_naive: float
    outputs_match: bool  # the job's outputs are the engine alone's and the naive loop's


def as_job_lines(engine: Engine, prompts: list[PromptIn]) -> tuple[list[PromptIn], list[str]]:
    """A synthetic workload as raw-completion text, the form a job line can carry, and its
    lines (custom_id is the prompt's key)."""
    text = [PromptIn(str(p.key), text=engine.tokenizer.decode(p.token_ids), settings=p.settings)
            for p in prompts]
    return text, [json.dumps({"custom_id": p.key, "method": "POST", "url": "/v1/completions",
                              "body": {"prompt": p.text,
                                       "max_tokens": p.settings.max_new_tokens}})
                  for p in text]


def measure_system(engine: Engine, model_ref: str, quant: str, prompts: list[PromptIn],
                   lines: list[str], strategy: str, log: Callable[[str], None]) -> SystemResult:
    """The naive loop and `strategy` in-process on `prompts`, then `lines` (the same prompts) as
    a job through the broker, the database and a `batchq worker` subprocess (timed from submit
    to the job's end; the worker loads its model before the clock starts). Without configured
    services, a throwaway embedded store and broker are used."""
    # A job line cannot ignore EOS, so neither do the runs it is compared with.
    honest = engine.with_options(ignore_eos=False)
    naive = run_strategy(honest, "naive", prompts)
    log(f"naive loop: {naive.output_tokens_per_s:,.0f} output tokens/s")
    alone = run_strategy(honest, strategy, prompts)
    log(f"engine alone ({strategy}): {alone.output_tokens_per_s:,.0f} output tokens/s")

    b = engine.budget
    done = run_job(model_ref, quant, lines, ["--strategy", strategy, "--max-batch-tokens",
                                              str(b.max_tokens), "--max-batch-rows",
                                              str(b.max_rows)])
    job, results = done.job, done.results
    tokens = job.metrics.completion_tokens
    match = all(results[str(k)].output == text == naive.outputs[k][0]
                for k, (text, _) in alone.outputs.items())
    system = tokens / done.seconds
    return SystemResult(
        backend=done.backend, engine_tokens_per_s=alone.output_tokens_per_s,
        naive_tokens_per_s=naive.output_tokens_per_s, system_tokens_per_s=system,
        system_seconds=done.seconds, worker_generate_seconds=job.metrics.generate_seconds,
        batches=job.metrics.batches, completion_tokens=tokens, job_id=job.id,
        ratio=system / alone.output_tokens_per_s,
        speedup_vs_naive=system / naive.output_tokens_per_s, outputs_match=match)


@dataclass
class CeilingResult:
    backend: str
    workers: int
    lines: int
    submit_seconds: float  # of system_seconds: validating and storing the file, queueing it
    system_seconds: float
    lines_per_s: float
    job_id: str


def measure_ceiling(model_ref: str, quant: str, lines: list[str], workers: int,
                    max_rows: int | None) -> CeilingResult:
    """`lines` as a job run by `workers` workers whose engine generates nothing: the lines/s
    the system itself can carry (claims, writes, progress, leases), from submit to the end."""
    extra = ["--engine", "null"] + (["--max-batch-rows", str(max_rows)] if max_rows else [])
    done = run_job(model_ref, quant, lines, extra, workers)
    return CeilingResult(done.backend, workers, len(lines), done.submit_seconds, done.seconds,
                         len(lines) / done.seconds, done.job.id)


@dataclass
class JobRun:
    backend: str
    job: Any
    results: dict[str, Any]  # custom_id -> result line
    seconds: float  # submit to the job's end
    submit_seconds: float


def run_job(model_ref: str, quant: str, lines: list[str], worker_args: list[str],
            workers: int = 1) -> JobRun:
    """Start `workers` worker subprocesses, wait until each is ready, then submit `lines` and
    time the job to its end. Without configured services, a throwaway embedded store and
    broker are used."""
    with tempfile.TemporaryDirectory(prefix="batchq-bench-") as tmp:
        env = dict(os.environ)
        if not env.get("BATCHQ_DATABASE_URL"):
            env["BATCHQ_HOME"] = tmp
            env.pop("BATCHQ_BROKER_URL", None)
        settings = Settings.from_env(env)
        path = Path(tmp) / "workload.jsonl"
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        command = [sys.executable, "-m", "batchq", "worker", "--model", model_ref,
                   "--quant", quant, *worker_args, "--loglevel", "INFO"]
        running: list[subprocess.Popen] = []
        try:
            for n in range(workers):
                worker_log = Path(tmp) / f"worker{n}.log"
                with worker_log.open("wb") as out:
                    running.append(subprocess.Popen(
                        [*command, "--name", f"bench{n}"] if workers > 1 else command, env=env,
                        stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
                _wait_ready(running[-1], worker_log)
            started = time.perf_counter()
            job_id = service.submit(str(path), model_ref, quant, settings=settings,
                                    model_override=True)
            submitted = time.perf_counter() - started
            job = service.wait(job_id, settings, poll_seconds=0.1)
            seconds = time.perf_counter() - started
        finally:
            for worker in running:
                _stop(worker)
        if job.status != "completed":
            raise RuntimeError(f"bench job {job_id} ended {job.status}")
        _, results = service.results(job_id, settings)
        return JobRun("embedded (SQLite)" if settings.embedded else "configured services", job,
                      {r.custom_id: r for r in results}, seconds, submitted)


def _wait_ready(worker: subprocess.Popen, log_path: Path, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if " ready." in text:
            return
        if worker.poll() is not None:
            raise RuntimeError(f"the bench worker exited ({worker.returncode}):\n{text[-2000:]}")
        time.sleep(0.2)
    raise RuntimeError("the bench worker did not get ready in time")


def _stop(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


