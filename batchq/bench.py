"""`batchq bench`: the engine's strategies against the tutorial loop, and the system against the
engine, on one synthetic workload that looks like batch traffic.

Every figure is a ratio measured in the same run on the same prompts; nothing here is asserted
as a wall-clock limit anywhere.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from batchq.engine import STRATEGIES, Completion, Engine, GenerationSettings, PromptIn

# Memory bandwidth (bytes/s) by GPU name, for the decode roofline (FACTS.md; vendor specs).
BANDWIDTH = (("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12), ("A100", 2.0e12),
             ("L40S", 0.864e12), ("A10", 0.6e12), ("L4", 0.3e12))
FIRST_PLAIN_TOKEN, LAST_PLAIN_TOKEN = 200, 150_000  # clear of Qwen's special tokens


@dataclass(frozen=True)
class Workload:
    prompts: int = 256
    seed: int = 0
    min_prompt: int = 16
    max_prompt: int = 2048
    min_output: int = 16
    max_output: int = 512

    def build(self) -> list[PromptIn]:
        """Prompt lengths and output limits log-uniform in their ranges; random plain tokens."""
        rng = random.Random(self.seed)
        out = []
        for i in range(self.prompts):
            length = _log_uniform(rng, self.min_prompt, self.max_prompt)
            limit = _log_uniform(rng, self.min_output, self.max_output)
            ids = [rng.randrange(FIRST_PLAIN_TOKEN, LAST_PLAIN_TOKEN) for _ in range(length)]
            out.append(PromptIn(i, token_ids=ids, settings=GenerationSettings(max_new_tokens=limit)))
        return out


def _log_uniform(rng: random.Random, low: int, high: int) -> int:
    return int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))


@dataclass
class StrategyResult:
    strategy: str
    seconds: float
    prompts: int
    prompt_tokens: int
    completion_tokens: int
    output_tokens_per_s: float
    prompts_per_s: float
    padding_pct: float  # prompt slots spent on padding
    wasted_decode_pct: float  # decode slots spent on rows that had already finished
    batches: int
    peak_memory_bytes: int | None
    roofline_pct: float | None = None
    speedup_vs_naive: float | None = None
    outputs: dict[Any, tuple] = field(default_factory=dict, repr=False)


def run_strategy(engine: Engine, strategy: str, prompts: list[PromptIn]) -> StrategyResult:
    engine.strategy = strategy
    started = time.perf_counter()
    outputs = list(engine.generate(prompts))
    seconds = time.perf_counter() - started
    completions: list[Completion] = [c for o in outputs for c in o.completions]
    failed = [c for c in completions if c.error]
    if failed:
        raise RuntimeError(f"{strategy}: {len(failed)} prompt(s) failed, first: {failed[0].error}")
    stats = [o.stats for o in outputs]
    prompt_tokens = sum(s.prompt_tokens for s in stats)
    padded = sum(s.padded_prompt_tokens for s in stats)
    tokens = sum(s.completion_tokens for s in stats)
    slots = sum(s.decode_slots for s in stats)
    on_gpu = engine.device.startswith("cuda")
    return StrategyResult(
        strategy=strategy, seconds=seconds, prompts=len(completions), prompt_tokens=prompt_tokens,
        completion_tokens=tokens, output_tokens_per_s=tokens / seconds,
        prompts_per_s=len(completions) / seconds,
        padding_pct=100 * (1 - prompt_tokens / padded) if padded else 0.0,
        wasted_decode_pct=100 * (1 - tokens / slots) if slots else 0.0,
        batches=sum(1 for s in stats if s.rows),
        peak_memory_bytes=max((s.peak_memory_bytes for s in stats), default=0) if on_gpu else None,
        outputs={c.key: (c.text, c.completion_tokens) for c in completions})


def roofline_tokens_per_s(engine: Engine, prompts: list[PromptIn], bandwidth: float) -> float:
    """Decode ceiling at the budget's row limit: each step reads all weights plus the batch's
    KV cache, at mean context; tokens/s <= rows / step time (FACTS.md)."""
    from batchq.engine import kv_bytes_per_token

    weights = engine.model.get_memory_footprint()
    kv = kv_bytes_per_token(engine.model.config)
    mean_context = sum(len(p.token_ids or ()) + p.settings.max_new_tokens / 2
                       for p in prompts) / len(prompts)
    rows = min(engine.budget.max_rows, len(prompts))
    return rows * bandwidth / (weights + rows * mean_context * kv)


def gpu_bandwidth(device: str) -> tuple[str, float | None]:
    import torch

    name = torch.cuda.get_device_name(torch.device(device))
    return name, next((bw for key, bw in BANDWIDTH if key in name), None)


def compare(engine: Engine, prompts: list[PromptIn], strategies: list[str],
            bandwidth: float | None = None) -> list[StrategyResult]:
    """Each strategy on the same prompts, after one short warm-up; speedups against naive."""
    warmup = [PromptIn(("warmup", i), token_ids=p.token_ids,
                       settings=GenerationSettings(max_new_tokens=4)) for i, p in enumerate(prompts[:4])]
    for strategy in dict.fromkeys(strategies):
        engine.strategy = strategy
        list(engine.generate(warmup))
    results = [run_strategy(engine, s, prompts) for s in strategies]
    ceiling = roofline_tokens_per_s(engine, prompts, bandwidth) if bandwidth else None
    naive = next((r for r in results if r.strategy == "naive"), None)
    for r in results:
        if ceiling:
            r.roofline_pct = 100 * r.output_tokens_per_s / ceiling
        if naive:
            r.speedup_vs_naive = r.output_tokens_per_s / naive.output_tokens_per_s
    return results


def outputs_agree(results: list[StrategyResult]) -> bool:
    return not differing(results)


def differing(results: list[StrategyResult]) -> dict[str, list]:
    """Per strategy, the prompts whose output differs from the first strategy's."""
    first = results[0].outputs
    out = {r.strategy: sorted(k for k in first if r.outputs.get(k) != first[k])
           for r in results[1:]}
    return {name: keys for name, keys in out.items() if keys}


# ---------------------------------------------------------------- the whole system

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
                   strategy: str, log) -> SystemResult:
    """Engine alone on the text prompts, then the same prompts as a job through the broker, the
    database and a `batchq worker` subprocess (timed from submit to the job's end; the worker
    loads its model before the clock starts). Without configured services, a throwaway
    embedded store and broker are used."""
    from batchq import jobs
    from batchq.settings import Settings

    text_prompts = text_workload(engine, prompts)
    ignore_eos, engine.ignore_eos = engine.ignore_eos, False  # a job line cannot ignore EOS
    try:
        alone = run_strategy(engine, strategy, text_prompts)
    finally:
        engine.ignore_eos = ignore_eos
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
                job_id = jobs.submit(str(path), model_ref, quant, settings=settings)
                info = jobs.wait(job_id, settings, poll_seconds=0.2)
                seconds = time.perf_counter() - started
            finally:
                _stop(worker)
        if info["status"] != "completed":
            raise RuntimeError(f"bench job {job_id} ended {info['status']}")
        _, lines = jobs.results(job_id, settings)
        results = {r.custom_id: r for r in lines}
    tokens = info["metrics"]["completion_tokens"]
    match = all(results[str(k)].output == text for k, (text, _) in alone.outputs.items())
    system = tokens / seconds
    return SystemResult(
        backend="embedded (SQLite)" if settings.embedded else "configured services",
        engine_tokens_per_s=alone.output_tokens_per_s, system_tokens_per_s=system,
        system_seconds=seconds, worker_generate_seconds=info["metrics"]["generate_seconds"],
        batches=info["metrics"]["batches"], completion_tokens=tokens, job_id=job_id,
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


# ---------------------------------------------------------------- reporting

def table(results: list[StrategyResult]) -> str:
    head = (f"{'strategy':<11} {'out tok/s':>10} {'prompts/s':>9} {'vs naive':>8} "
            f"{'padding':>7} {'wasted':>7} {'batches':>7} {'peak mem':>9} {'roofline':>8}")
    rows = [head]
    for r in results:
        peak = f"{r.peak_memory_bytes / 2**30:.1f} GiB" if r.peak_memory_bytes else "-"
        rows.append(
            f"{r.strategy:<11} {r.output_tokens_per_s:>10,.0f} {r.prompts_per_s:>9.2f} "
            f"{_x(r.speedup_vs_naive):>8} {r.padding_pct:>6.1f}% {r.wasted_decode_pct:>6.1f}% "
            f"{r.batches:>7} {peak:>9} "
            f"{(f'{r.roofline_pct:.0f}%' if r.roofline_pct is not None else '-'):>8}")
    return "\n".join(rows)


def _x(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def report(meta: dict[str, Any], results: list[StrategyResult],
           system: SystemResult | None) -> dict[str, Any]:
    def plain(r: StrategyResult) -> dict[str, Any]:
        d = asdict(r)
        d.pop("outputs")
        return d

    return {**meta, "strategies": [plain(r) for r in results],
            "outputs_identical": outputs_agree(results),
            "outputs_differing": differing(results),
            "system": asdict(system) if system else None}


def strategies_from(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown or not names:
        from batchq.errors import ConfigError

        raise ConfigError(f"--strategies: unknown {', '.join(unknown) or '(none given)'}; "
                          f"choose from {', '.join(STRATEGIES)}")
    return names
