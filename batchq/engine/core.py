"""The engine: text and generation settings in, text and token counts out.

It imports nothing of batchq but its own modules and errors: no database, no Celery, so it
can be tested, benchmarked and reused alone. Prompts with different sampling settings never
share a generation call; output limits may differ within one. How a group of prompts becomes
batches is a strategy's business (batchq.engine.strategies).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

from batchq.engine.attention import is_padding_free
from batchq.engine.codec import PromptCodec, end_token_ids
from batchq.engine.device import Device, select_device
from batchq.engine.loading import default_budget, load_pretrained
from batchq.engine.memory import keep_freed_memory
from batchq.engine.planning import BatchBudget
from batchq.engine.runner import ModelRunner
from batchq.engine.strategies import BY_NAME, STRATEGIES, Strategy
from batchq.engine.strategies.static import StaticBatches
from batchq.engine.types import (
    MODEL_SAMPLING_KEYS,
    BatchOutput,
    GenerationSettings,
    OnBatch,
    PromptIn,
    WorkItem,
)
from batchq.errors import ConfigError

log = logging.getLogger(__name__)


def default_strategy(device: str) -> str:
    """Static batches or continuous batching per group, whichever the measured cost model
    predicts is faster (batchq.engine.strategies.auto)."""
    return "auto"


def _ignore(keys: list[Any], upcoming: list[list[Any]]) -> None:
    pass


def _known(strategy: str) -> str:
    if strategy not in BY_NAME:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    return strategy


class Engine:
    def __init__(self, runner: ModelRunner, strategy: str | None = None):
        self.runner = runner
        self.strategy = _known(strategy or default_strategy(runner.device.name))
        config = runner.model.config
        self.context = int(getattr(config, "max_position_embeddings", 0) or 0) or None

    @classmethod
    def load(cls, model_ref: str, quant: str = "none", device: str | None = None,
             budget: BatchBudget | None = None, strategy: str | None = None, *,
             ignore_eos: bool = False, max_batch_tokens: int | None = None,
             max_batch_rows: int | None = None, calibrate: bool = False) -> Engine:
        """Load once per worker. The budget is `budget`, else sized from the device's free
        memory; max_batch_tokens and max_batch_rows (a profile, an option) override its parts.
        With `calibrate` (workers, `batchq bench`), the batch cost model is measured on the
        device (about a second on a CPU with a tiny model); without, the planner uses assumed
        costs; continuous batching is priced on a GPU only, since on a CPU
        every measurement put it behind static batches (benchmarks/RESULTS.md)."""
        device = device or select_device()
        keep_freed_memory()  # each step's buffers reused, not faulted in again (engine.memory)
        model, tokenizer = load_pretrained(model_ref, quant, device)
        where = Device(device)
        budget = (budget or default_budget(model, where)).limited(max_batch_tokens,
                                                                   max_batch_rows)
        codec = PromptCodec(tokenizer, end_token_ids(model, tokenizer), ignore_eos)
        runner = ModelRunner(model, codec, where, budget)
        if calibrate:
            from batchq.engine.calibration import measure_costs

            runner.cost = measure_costs(runner, continuous=where.on_cuda)
        runner.cost = runner.cost.with_prefill(padding_free=is_padding_free(model))
        engine = cls(runner, strategy)
        log.info("loaded %s (%s) on %s; strategy %s; %s", model_ref, quant, device,
                 engine.strategy, runner.cost.describe())
        return engine

    def with_options(self, *, strategy: str | None = None,
                     ignore_eos: bool | None = None) -> Engine:
        """The same loaded model, run another way (benchmarks compare strategies with it)."""
        codec = self.codec
        if ignore_eos is not None:
            codec = PromptCodec(codec.tokenizer, codec.eos_ids, ignore_eos)
        return Engine(replace(self.runner, codec=codec), strategy or self.strategy)

    # ------------------------------------------------------------ what callers read

    @property
    def model(self) -> Any:
        return self.runner.model

    @property
    def tokenizer(self) -> Any:
        return self.runner.codec.tokenizer

    @property
    def codec(self) -> PromptCodec:
        return self.runner.codec

    @property
    def device(self) -> str:
        return self.runner.device.name

    @property
    def ignore_eos(self) -> bool:
        return self.runner.codec.ignore_eos

    @property
    def budget(self) -> BatchBudget:
        return self.runner.budget

    @budget.setter
    def budget(self, value: BatchBudget) -> None:
        self.runner.budget = value

    def encode(self, prompt: PromptIn) -> list[int]:
        return self.codec.encode(prompt)

    def recommended_sampling(self) -> dict[str, Any]:
        """The sampling settings the model ships in its generation_config (`--sampling
        model`). A config that does not sample recommends greedy decoding."""
        config = self.model.generation_config
        if not getattr(config, "do_sample", False):
            return {"temperature": 0.0}
        values = {key: getattr(config, key, None) for key in MODEL_SAMPLING_KEYS}
        return {key: value for key, value in values.items() if value is not None}

    # ------------------------------------------------------------ generating

    def generate(self, prompts: Iterable[PromptIn],
                 on_batch: OnBatch | None = None) -> Iterator[BatchOutput]:
        """Yield one BatchOutput per batch, so callers can store results as they come.

        `on_batch(keys, upcoming)` is called just before a batch starts, with its prompts' keys
        and those of the batches planned after it in the same group: the worker counts
        attempts with it, so a batch that kills the process is known afterwards.
        """
        started = on_batch or _ignore
        groups: dict[GenerationSettings, list[WorkItem]] = defaultdict(list)
        prompts = list(prompts)
        for prompt, ids in zip(prompts, self.codec.encode_all(prompts), strict=True):
            item = WorkItem(prompt, ids)
            problem = self._does_not_fit(len(item.ids), item.limit)
            if problem:
                yield item.failed_alone(problem)
                continue
            groups[prompt.settings.sampling].append(item)
        chosen = BY_NAME[self.strategy](self.runner)
        for sampling, items in groups.items():
            # A schema needs a logits processor, which only padded batches take.
            constrained = any(item.prompt.settings.json_schema or item.prompt.must_call
                              for item in items)
            strategy: Strategy = (chosen if chosen.serves(sampling) and not constrained
                                  else StaticBatches(self.runner))
            yield from strategy.run(items, started)

    def _does_not_fit(self, prompt_tokens: int, max_new_tokens: int) -> str | None:
        if self.context and prompt_tokens + max_new_tokens > self.context:
            return (f"prompt of {prompt_tokens} tokens plus max_new_tokens {max_new_tokens} "
                    f"exceeds the model's context of {self.context} tokens")
        return None
