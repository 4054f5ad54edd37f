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

from batchq import service
from batchq.config import Settings
from batchq.engine import Engine, PromptIn
from batchq.tools.bench.strategies import run_strategy


@dataclass
class SystemResult:
    backend: str
    engine_tokens_per_s: float
    system_tokens_per_s: float
    system_seconds: float
    worker_generate_seconds: float  # inside the engine, summed over the job's batches
    batches: int
    completion_tokens: int
    job_id: str
    ratio: float
    outputs_match: bool


def text_workload(engine: Engine, prompts: list[PromptIn]) -> list[PromptIn]:
    """The same workload as raw-completion text, the form a job line can carry."""
    return [PromptIn(p.key, text=engine.tokenizer.decode(p.token_ids), settings=p.settings)
            for p in prompts]


def measure_system(engine: Engine, model_ref: str, quant: str, prompts: list[PromptIn],
                   strategy: str, log: Callable[[str], None]) -> SystemResult:
    """Engine alone on the text prompts, then the same prompts as a job through the broker, the
    database and a `batchq worker` subprocess (timed from submit to the job's end; the worker
    loads its model before the clock starts). Without configured services, a throwaway
    embedded store and broker are used."""
    text_prompts = text_workload(engine, prompts)
    # A job line cannot ignore EOS, so neither does the engine it is compared with.
    alone = run_strategy(engine.with_options(ignore_eos=False), strategy, text_prompts)
    log(f"engine alone ({strategy}): {alone.output_tokens_per_s:,.0f} output tokens/s")

    with tempfile.TemporaryDirectory(prefix="batchq-bench-") as tmp:
        env = dict(os.environ)
        if not env.get("BATCHQ_DATABASE_URL"):
            env["BATCHQ_HOME"] = tmp
            env.pop("BATCHQ_BROKER_URL", None)
        settings = Settings.from_env(env)
        path = Path(tmp) / "workload.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for p in text_prompts:
                f.write(json.dumps({"custom_id": str(p.key), "method": "POST",
                                    "url": "/v1/completions",
                                    "body": {"prompt": p.text,
                                             "max_tokens": p.settings.max_new_tokens}}) + "\n")
        b = engine.budget
        command = [sys.executable, "-m", "batchq", "worker", "--model", model_ref,
                   "--quant", quant, "--strategy", strategy, "--max-batch-tokens",
                   str(b.max_tokens), "--max-batch-rows", str(b.max_rows), "--loglevel", "INFO"]
        worker_log = Path(tmp) / "worker.log"
        with worker_log.open("wb") as out:
            worker = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)
            try:
                _wait_ready(worker, worker_log)
                started = time.perf_counter()
                job_id = service.submit(str(path), model_ref, quant, settings=settings)
                job = service.wait(job_id, settings, poll_seconds=0.2)
                seconds = time.perf_counter() - started
            finally:
                _stop(worker)
        if job.status != "completed":
            raise RuntimeError(f"bench job {job_id} ended {job.status}")
        _, lines = service.results(job_id, settings)
        results = {r.custom_id: r for r in lines}
    tokens = job.metrics.completion_tokens
    match = all(results[str(k)].output == text for k, (text, _) in alone.outputs.items())
    system = tokens / seconds
    return SystemResult(
        backend="embedded (SQLite)" if settings.embedded else "configured services",
        engine_tokens_per_s=alone.output_tokens_per_s, system_tokens_per_s=system,
        system_seconds=seconds, worker_generate_seconds=job.metrics.generate_seconds,
        batches=job.metrics.batches, completion_tokens=tokens, job_id=job_id,
        ratio=system / alone.output_tokens_per_s, outputs_match=match)


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


