"""The whole system against the engine alone: the same prompts as a real job through the
broker, the database and a `batchq worker` subprocess."""

from __future__ import annotations

import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchq import service
from batchq.config import Settings
from batchq.engine import Engine, PromptIn
from batchq.tools.bench.strategies import median_round, run_strategy


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
    outputs_match: bool  # every job's outputs are the engine alone's and the naive loop's
    # Each (engine alone, job) pair of --repeat, in order; the figures above are the median
    # pair's (by ratio).
    runs: list[dict[str, float]] = field(default_factory=list)


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
                   lines: list[str], strategy: str, log: Callable[[str], None],
                   repeat: int = 1) -> SystemResult:
    """`repeat` times in turn: the naive loop and `strategy` in-process on `prompts`, and
    `lines` (the same prompts) as a job through the broker, the database and a `batchq
    worker` subprocess (timed from submit to the job's end). Taking turns gives all three the
    same machine: on a shared one, the engine alone moved by a third between runs minutes
    apart. Without configured services, a throwaway embedded store and broker are used."""
    # A job line cannot ignore EOS, so neither do the runs it is compared with.
    honest = engine.with_options(ignore_eos=False)
    b = engine.budget
    pairs = []
    match = True
    with BenchWorkers(model_ref, quant, ["--strategy", strategy, "--max-batch-tokens",
                                         str(b.max_tokens), "--max-batch-rows",
                                         str(b.max_rows)]) as workers:
        workers.warm_up(lines)
        for n in range(repeat):
            # The runs before left their outputs behind: collected now, not inside this one
            # (a collection there made one engine-alone run of five 20% slower, every time).
            gc.collect()
            naive = run_strategy(honest, "naive", prompts)
            log(f"naive loop: {naive.output_tokens_per_s:,.0f} output tokens/s"
                + (f" (round {n + 1} of {repeat})" if repeat > 1 else ""))
            gc.collect()
            alone = run_strategy(honest, strategy, prompts)
            done = workers.time_job(lines)
            match = match and all(done.results[str(k)].output == text == naive.outputs[k][0]
                                  for k, (text, _) in alone.outputs.items())
            system = done.job.metrics.completion_tokens / done.seconds
            pairs.append((alone, done, system, naive))
            # Where a pair's difference goes: inside the model's batches (the same work, on a
            # busier machine in the worker), or around them (the system's own, and encoding).
            log(f"{f'run {n + 1} of {repeat}: ' if repeat > 1 else ''}engine alone "
                f"({strategy}): {alone.output_tokens_per_s:,.0f} output tokens/s; the job: "
                f"{system:,.0f} ({100 * system / alone.output_tokens_per_s:.0f}%); in the "
                f"model's batches {alone.generate_seconds:.2f} s of {alone.seconds:.2f} s "
                f"alone, {done.job.metrics.generate_seconds:.2f} s of {done.seconds:.2f} s "
                "in the job")
    runs = [{"engine_tokens_per_s": alone.output_tokens_per_s, "system_tokens_per_s": system,
             "system_seconds": done.seconds, "ratio": system / alone.output_tokens_per_s,
             "engine_seconds": alone.seconds, "engine_generate_seconds": alone.generate_seconds,
             "system_generate_seconds": done.job.metrics.generate_seconds,
             "naive_tokens_per_s": naive.output_tokens_per_s,
             "speedup_vs_naive": system / naive.output_tokens_per_s}
            for alone, done, system, naive in pairs]
    # The median pair (the lower of the middle two for an even count); the speedup against
    # the naive loop is the median of each round's, whichever pair that was.
    alone, done, system, naive = median_round(pairs, key=lambda p: p[2] / p[0].output_tokens_per_s)
    speedup = statistics.median_low(r["speedup_vs_naive"] for r in runs)
    job = done.job
    return SystemResult(
        backend=done.backend, engine_tokens_per_s=alone.output_tokens_per_s,
        naive_tokens_per_s=naive.output_tokens_per_s, system_tokens_per_s=system,
        system_seconds=done.seconds, worker_generate_seconds=job.metrics.generate_seconds,
        batches=job.metrics.batches, completion_tokens=job.metrics.completion_tokens,
        job_id=job.id, ratio=system / alone.output_tokens_per_s,
        speedup_vs_naive=speedup, outputs_match=match, runs=runs)


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
    with BenchWorkers(model_ref, quant, extra, workers) as running:
        running.warm_up(lines)
        done = running.time_job(lines)
    return CeilingResult(done.backend, workers, len(lines), done.submit_seconds, done.seconds,
                         len(lines) / done.seconds, done.job.id)


@dataclass
class JobRun:
    backend: str
    job: Any
    results: dict[str, Any]  # custom_id -> result line
    seconds: float  # submit to the job's end
    submit_seconds: float


# How often the bench looks for a timed job's end (the end itself comes from the database).
WAIT_POLL_SECONDS = 0.5


def uses_configured_services() -> bool:
    """Whether the bench's jobs go to the database and broker the environment names; without
    BATCHQ_DATABASE_URL they go to a throwaway embedded store, not the user's."""
    return bool(os.environ.get("BATCHQ_DATABASE_URL"))


def check_configured_services() -> None:
    """Refuse before anything is timed, not minutes later when the first worker exits, when
    the configured services could not run a job (no schema, nothing answering)."""
    if uses_configured_services():
        service.check_services(Settings.from_env(dict(os.environ)))


class BenchWorkers:
    """`workers` worker subprocesses, started and ready, and jobs timed through them. Without
    configured services, a throwaway embedded store and broker are used."""

    def __init__(self, model_ref: str, quant: str, worker_args: list[str], workers: int = 1):
        self.model_ref, self.quant = model_ref, quant
        self.command = [sys.executable, "-m", "batchq", "worker", "--model", model_ref,
                        "--quant", quant, *worker_args, "--loglevel", "INFO"]
        self.workers = workers
        self.running: list[subprocess.Popen] = []
        self.jobs = 0

    def __enter__(self) -> BenchWorkers:
        self._tmp = tempfile.TemporaryDirectory(prefix="batchq-bench-")
        self.tmp = Path(self._tmp.name)
        env = dict(os.environ)
        if not uses_configured_services():
            env["BATCHQ_HOME"] = str(self.tmp)
            env.pop("BATCHQ_BROKER_URL", None)
        self.settings = Settings.from_env(env)
        try:
            for n in range(self.workers):
                worker_log = self.tmp / f"worker{n}.log"
                with worker_log.open("wb") as out:
                    self.running.append(subprocess.Popen(
                        [*self.command, "--name", f"bench{n}"] if self.workers > 1
                        else self.command, env=env, stdout=out, stderr=subprocess.STDOUT,
                        start_new_session=True))
                _wait_ready(self.running[-1], worker_log)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for worker in self.running:
            _stop(worker)
        self._tmp.cleanup()

    def warm_up(self, lines: list[str]) -> None:
        """A one-line job through the whole path, untimed, as the engine alone is warmed up
        before it is timed: the first submit of a process imports the database driver, the
        broker's transport and Celery's app and connects to both (0.2-0.3 s here), which is
        no part of how fast the system carries a job."""
        self.time_job(lines[:1])

    def time_job(self, lines: list[str]) -> JobRun:
        """Submit `lines` as a job and time it from submit to its end as the database records
        it (the workers run here, on this clock). The end is looked for only every
        WAIT_POLL_SECONDS: a look every 0.05 s made the job's batches about 4% slower on two
        cores, and a poll's slack no longer counts."""
        self.jobs += 1
        path = self.tmp / f"job{self.jobs}.jsonl"
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        settings = self.settings
        started_at, started = time.time(), time.perf_counter()
        job_id = service.submit(str(path), self.model_ref, self.quant, settings=settings,
                                model_override=True)
        submitted = time.perf_counter() - started
        job = service.wait(job_id, settings, poll_seconds=WAIT_POLL_SECONDS)
        if job.status != "completed" or job.metrics.finished_at is None:
            raise RuntimeError(f"bench job {job_id} ended {job.status}")
        seconds = job.metrics.finished_at.timestamp() - started_at
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


