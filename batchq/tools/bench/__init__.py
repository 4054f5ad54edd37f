"""`batchq bench`: the tutorial loop against batchq's strategies on one workload, and
optionally the whole system against the engine alone.

  workload     the prompts: a synthetic mix, or the user's own JSONL
  strategies   each strategy on the same prompts, the table and the JSON report
  system       the same prompts as a real job through broker, database and a worker
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from batchq.config import get_settings
from batchq.engine import Engine
from batchq.engine.device import select_device
from batchq.errors import ConfigError
from batchq.tools.bench import strategies as compare
from batchq.tools.bench.system import (
    SystemResult,
    as_job_lines,
    check_configured_services,
    measure_ceiling,
    measure_system,
)
from batchq.tools.bench.workload import MIXES, Workload, from_file
from batchq.tools.tiny import architecture, make_random_model
from batchq.variants import resolve

Say = Callable[[str], None]


@dataclass(frozen=True)
class BenchOptions:
    model: str | None = None
    random_alias: str | None = None  # build this Qwen architecture with random weights
    quant: str | None = None
    gpu: int | None = None
    prompts: int = 256
    seed: int = 0
    prompt_tokens: tuple[int, int] = (16, 2048)
    output_tokens: tuple[int, int] = (16, 512)
    mix: str = "log-uniform"
    workload: str | None = None  # the user's JSONL instead of a synthetic mix
    ignore_eos: bool | None = None  # default: on with random weights
    strategies: str = "naive,static,continuous"
    max_batch_tokens: int | None = None
    max_batch_rows: int | None = None
    system: bool = False
    repeat: int = 1  # rounds of the strategies, and of --system's pairs; medians reported
    engine: str = "transformers"  # null: the system's own ceiling, nothing generated
    workers: int = 1  # worker processes for --system and --engine null
    json_path: str | None = None
    json_schema: str | None = None  # also measure constrained decoding under this schema file

    def check(self) -> list[str]:
        """The strategies to compare; raises ConfigError for options that cannot go together."""
        names = compare.strategies_from(self.strategies)
        if bool(self.model) == bool(self.random_alias):
            raise ConfigError("give a MODEL or --random-weights ALIAS (one of them)")
        if self.random_alias:
            architecture(self.random_alias)  # an unknown one is refused before torch loads
        if self.mix not in MIXES:
            raise ConfigError(f"--mix: unknown {self.mix!r}; choose one of {', '.join(MIXES)}")
        if self.engine == "null" and not self.model:
            raise ConfigError("--engine null: give the MODEL whose queue the job goes to "
                              "(it is not loaded)")
        if self.workload and not Path(self.workload).is_file():
            raise ConfigError(f"--workload: {self.workload}: no such file")
        for label, (low, high) in (("--prompt-tokens", self.prompt_tokens),
                                   ("--output-tokens", self.output_tokens)):
            if low > high:
                raise ConfigError(f"{label}: the low end {low} is above the high end {high}")
        return names


def run(options: BenchOptions, out: Say, note: Say) -> None:
    """Load the model, compare the strategies, print the table (and the system's figures) on
    `out`, progress on `note`, and write the JSON report if asked."""
    import torch
    import transformers

    names = options.check()
    if options.system or options.engine == "null":
        check_configured_services()
    settings = get_settings()
    workload = Workload(options.prompts, options.seed, *options.prompt_tokens,
                        *options.output_tokens, options.mix)
    if options.workload:  # read first: a bad line is refused before a model loads
        items, lines, named_models = from_file(options.workload, settings)
        if named_models:
            named = ", ".join(f"{name}: {count}" for name, count in named_models.most_common())
            note(f"note: {named_models.total()} line(s) of {options.workload} name a model "
                 f"({named}); the bench measures one variant and runs every line on "
                 f"{options.model or options.random_alias}")
    else:
        items = workload.build()
    if options.engine == "null":
        _ceiling(options, lines if options.workload else _plain_lines(items), out, note)
        return
    model, ignore_eos = options.model, options.ignore_eos
    if options.random_alias:
        model = str(make_random_model(settings.home / "random-models" / options.random_alias,
                                      options.random_alias))
        ignore_eos = True if ignore_eos is None else ignore_eos
    assert model is not None
    variant = resolve(model, options.quant)
    device = select_device(options.gpu)
    note(f"loading {variant.model} ({variant.quant}) on {device}")
    engine = Engine.load(variant.model, variant.quant, device, ignore_eos=bool(ignore_eos),
                         max_batch_tokens=options.max_batch_tokens,
                         max_batch_rows=options.max_batch_rows, calibrate=True)
    gpu_name, bandwidth = (compare.gpu_bandwidth(device) if device.startswith("cuda")
                           else (None, None))
    meta: dict[str, Any] = {"model": variant.model, "random_weights": options.random_alias,
            "quant": variant.quant,
            "device": gpu_name or f"CPU ({platform.processor() or platform.machine()}, "
                                   f"{torch.get_num_threads()} threads)",
            "torch": torch.__version__, "transformers": transformers.__version__,
            "workload": ({"file": options.workload, "prompts": len(items)} if options.workload
                         else asdict(workload)),
            "ignore_eos": engine.ignore_eos, "cost_model": asdict(engine.runner.cost),
            "budget": {"max_tokens": engine.budget.max_tokens,
                       "max_rows": engine.budget.max_rows},
            "bandwidth_bytes_per_s": bandwidth,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    lo, hi = options.prompt_tokens
    out_lo, out_hi = options.output_tokens
    what = (f"{len(items)} prompts of {options.workload}" if options.workload else
            f"{options.prompts} prompts of {lo}-{hi} tokens ({options.mix}), outputs of "
            f"{out_lo}-{out_hi}")
    note(f"{what}, on {meta['device']}; batches of up to {engine.budget.max_rows} rows and "
         f"{engine.budget.max_tokens} tokens; {engine.runner.cost.describe()}")
    results = compare.compare(engine, items, names, bandwidth, options.repeat)
    out(compare.table(results))
    if options.repeat > 1 and "naive" in names:
        out(f"median of {options.repeat} rounds, in turn; each round's speedup: " + "; ".join(
            f"{r.strategy} " + ", ".join(f"{x:.2f}x" for x in r.speedups)
            for r in results if r.strategy != "naive"))
    diff = compare.differing(results)
    out("outputs identical across strategies: " + ("yes" if not diff else "NO: " + "; ".join(
        f"{name} differs from {results[0].strategy} on {len(keys)} prompt(s), first #{keys[0]}"
        for name, keys in diff.items())))
    constrained = None
    if options.json_schema:
        schema = json.loads(Path(options.json_schema).read_text(encoding="utf-8"))
        constrained = compare.constrained_cost(engine, items, schema)
        out(f"constrained decoding (static, every prompt held to {options.json_schema}): "
            f"{constrained['constrained_tokens_per_s']:,.0f} output tokens/s against "
            f"{constrained['free_tokens_per_s']:,.0f} free = "
            f"{100 * constrained['ratio']:.0f}%")
    system = None
    if options.system:
        best = max((r for r in results if r.strategy != "naive"), default=results[0],
                   key=lambda r: r.output_tokens_per_s)
        if not options.workload:
            items, lines = as_job_lines(engine, items)
        system = measure_system(engine, variant.model, variant.quant, items, lines,
                                best.strategy, note, options.repeat)
        out(f"system ({system.backend}, {best.strategy}): "
            f"{system.system_tokens_per_s:,.0f} output tokens/s through queue, database "
            f"and worker = {100 * system.ratio:.0f}% of the engine alone "
            f"({system.engine_tokens_per_s:,.0f}); outputs "
            f"{'match' if system.outputs_match else 'DIFFER'}")
        if len(system.runs) > 1:
            out(f"median of {len(system.runs)} runs, alternating; the job's share in each: "
                + ", ".join(f"{100 * r['ratio']:.0f}%" for r in system.runs))
        out(f"end to end vs the naive loop (EOS honoured, {system.naive_tokens_per_s:,.0f} "
            f"output tokens/s): {system.speedup_vs_naive:.2f}x"
            + (" (median; each round: " + ", ".join(
                f"{r['speedup_vs_naive']:.2f}x" for r in system.runs) + ")"
               if len(system.runs) > 1 else ""))
    if options.json_path:
        report = {**_report(meta, results, system), "constrained": constrained}
        Path(options.json_path).write_text(json.dumps(report, indent=2) + "\n")
        note(f"wrote {options.json_path}")


def _plain_lines(prompts: list[Any]) -> list[str]:
    """Job lines for a synthetic workload without a tokenizer: one word per token."""
    return [json.dumps({"custom_id": str(p.key), "prompt": " ".join(
        f"w{t}" for t in p.token_ids), "max_new_tokens": p.settings.max_new_tokens})
        for p in prompts]


def _ceiling(options: BenchOptions, lines: list[str], out: Say, note: Say) -> None:
    assert options.model is not None
    variant = resolve(options.model, options.quant)
    note(f"{len(lines)} lines through {options.workers} worker(s) that generate nothing")
    result = measure_ceiling(variant.model, variant.quant, lines, options.workers,
                             options.max_batch_rows)
    out(f"system ceiling ({result.backend}, {result.workers} worker(s), null engine): "
        f"{result.lines_per_s:,.0f} lines/s ({result.lines:,} lines in "
        f"{result.system_seconds:.2f} s, of which submit {result.submit_seconds:.2f} s)")
    if options.json_path:
        report = {"engine": "null", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                  "ceiling": asdict(result)}
        Path(options.json_path).write_text(json.dumps(report, indent=2) + "\n")
        note(f"wrote {options.json_path}")


def _report(meta: dict[str, Any], results: list[compare.StrategyResult],
            system: SystemResult | None) -> dict[str, Any]:
    """Every figure of the run, as `--json` writes it."""
    def plain(r: compare.StrategyResult) -> dict[str, Any]:
        d = asdict(r)
        d.pop("outputs")
        return d

    return {**meta, "strategies": [plain(r) for r in results],
            "outputs_identical": compare.outputs_agree(results),
            "outputs_differing": compare.differing(results),
            "system": asdict(system) if system else None}
