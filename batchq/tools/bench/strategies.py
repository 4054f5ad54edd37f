"""The engine's strategies against the tutorial loop, on the same prompts, and the figures.

Every figure is a ratio measured in the same run on the same prompts; nothing here is asserted
as a wall-clock limit anywhere.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from batchq.engine import STRATEGIES, Completion, Engine, PromptIn
from batchq.engine.loading import kv_bytes_per_token
from batchq.errors import ConfigError

T = TypeVar("T")


def median_round(rounds: Sequence[T], key: Callable[[T], float]) -> T:
    """The round whose figure is the median; the lower of the middle two for an even count
    (as statistics.median_low, which takes no key)."""
    return sorted(rounds, key=key)[(len(rounds) - 1) // 2]


# Memory bandwidth (bytes/s) by GPU name, for the decode roofline (FACTS.md; vendor specs).
BANDWIDTH = (("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12), ("A100", 2.0e12),
             ("L40S", 0.864e12), ("A10", 0.6e12), ("L4", 0.3e12))


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
    generate_seconds: float = 0.0  # inside the model's batches (the rest: encoding, planning, ...)
    roofline_pct: float | None = None
    speedup_vs_naive: float | None = None
    # With several rounds: this strategy's speedup in each (against that round's naive loop);
    # the figures above are its median round's.
    speedups: list[float] = field(default_factory=list)
    outputs: dict[Any, tuple] = field(default_factory=dict, repr=False)


def run_strategy(engine: Engine, strategy: str, prompts: list[PromptIn],
                 allow_failed: bool = False) -> StrategyResult:
    engine = engine.with_options(strategy=strategy)
    started = time.perf_counter()
    outputs = list(engine.generate(prompts))
    seconds = time.perf_counter() - started
    completions: list[Completion] = [c for o in outputs for c in o.completions]
    failed = [c for c in completions if c.error]
    if failed and not allow_failed:
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
        batches=sum(1 for s in stats if s.rows), generate_seconds=sum(s.seconds for s in stats),
        peak_memory_bytes=max((s.peak_memory_bytes for s in stats), default=0) if on_gpu else None,
        outputs={c.key: (c.text, c.completion_tokens) for c in completions})


def roofline_tokens_per_s(engine: Engine, prompts: list[PromptIn], bandwidth: float) -> float:
    """Decode ceiling at the budget's row limit: each step reads all weights plus the batch's
    KV cache, at mean context; tokens/s <= rows / step time (FACTS.md)."""
    weights = engine.model.get_memory_footprint()
    kv = kv_bytes_per_token(engine.model.config)
    mean_context = sum(len(engine.encode(p)) + p.settings.max_new_tokens / 2
                       for p in prompts) / len(prompts)
    rows = min(engine.budget.max_rows, len(prompts))
    return float(rows * bandwidth / (weights + rows * mean_context * kv))


def gpu_bandwidth(device: str) -> tuple[str, float | None]:
    import torch

    name = torch.cuda.get_device_name(torch.device(device))
    return name, next((bw for key, bw in BANDWIDTH if key in name), None)


def compare(engine: Engine, prompts: list[PromptIn], strategies: list[str],
            bandwidth: float | None = None, rounds: int = 1) -> list[StrategyResult]:
    """Each strategy on the same prompts, after one short warm-up; speedups against naive.

    With several rounds the strategies run in turn that many times, so each speedup is taken
    against a naive loop run beside it; each strategy reports its median round (on a shared
    machine one round's ratio moved by a fifth either way)."""
    warmup = [replace(p, key=("warmup", i), settings=replace(p.settings, max_new_tokens=4))
              for i, p in enumerate(prompts[:4])]
    for strategy in dict.fromkeys(strategies):
        list(engine.with_options(strategy=strategy).generate(warmup))
    ceiling = roofline_tokens_per_s(engine, prompts, bandwidth) if bandwidth else None
    played = [[run_strategy(engine, s, prompts) for s in strategies] for _ in range(rounds)]
    for results in played:
        naive = next((r for r in results if r.strategy == "naive"), None)
        for r in results:
            if ceiling:
                r.roofline_pct = 100 * r.output_tokens_per_s / ceiling
            if naive:
                r.speedup_vs_naive = r.output_tokens_per_s / naive.output_tokens_per_s
    chosen = []
    for runs in zip(*played, strict=True):
        median = median_round(runs, key=lambda r: r.speedup_vs_naive or r.output_tokens_per_s)
        median.speedups = [r.speedup_vs_naive for r in runs if r.speedup_vs_naive is not None]
        chosen.append(median)
    return chosen


def constrained_cost(engine: Engine, prompts: list[PromptIn], schema: dict[str, Any]
                     ) -> dict[str, float]:
    """The same prompts free and held to `schema`, both as static batches: what the grammar's
    per-step mask costs. With ignore_eos a row whose JSON is whole is held to end tokens, so
    both runs generate the same number of tokens."""
    held = [replace(p, settings=replace(p.settings, json_schema=json.dumps(schema)))
            for p in prompts]
    list(engine.with_options(strategy="static").generate(held[:2]))  # warm-up: tokenizer index
    free = run_strategy(engine, "static", prompts)
    # A JSON the limit cuts off fails its line; its tokens were generated all the same.
    constrained = run_strategy(engine, "static", held, allow_failed=True)
    return {"free_tokens_per_s": free.output_tokens_per_s,
            "constrained_tokens_per_s": constrained.output_tokens_per_s,
            "ratio": constrained.output_tokens_per_s / free.output_tokens_per_s}


def outputs_agree(results: list[StrategyResult]) -> bool:
    return not differing(results)


def differing(results: list[StrategyResult]) -> dict[str, list]:
    """Per strategy, the prompts whose output differs from the first strategy's."""
    first = results[0].outputs
    out = {r.strategy: sorted(k for k in first if r.outputs.get(k) != first[k])
           for r in results[1:]}
    return {name: keys for name, keys in out.items() if keys}


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


def strategies_from(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown or not names:
        raise ConfigError(f"--strategies: unknown {', '.join(unknown) or '(none given)'}; "
                          f"choose from {', '.join(STRATEGIES)}")
    return names
