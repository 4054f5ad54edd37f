"""An engine that generates nothing, for benchmarks only (`batchq bench --engine null`): every
prompt completes at once, with an empty output, in batches of the budget's rows. A worker
running it measures the ceiling of the system around the engine: claims, writes, progress."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, cast

from batchq.engine.codec import PromptCodec
from batchq.engine.core import Engine
from batchq.engine.device import Device
from batchq.engine.planning import BatchBudget
from batchq.engine.runner import ModelRunner
from batchq.engine.types import BatchOutput, BatchStats, Completion, OnBatch, PromptIn


class NullEngine(Engine):
    def __init__(self, budget: BatchBudget | None = None):  # no model: Engine's is not called
        self.runner = ModelRunner(model=None, codec=cast(PromptCodec, None), device=Device("cpu"),
                                  budget=budget or BatchBudget())
        self.strategy = "null"
        self.context = None

    def recommended_sampling(self) -> dict[str, Any]:
        return {"temperature": 0.0}

    def generate(self, prompts: Iterable[PromptIn],
                 on_batch: OnBatch | None = None) -> Iterator[BatchOutput]:
        prompts, rows = list(prompts), self.budget.max_rows
        batches = [prompts[start:start + rows] for start in range(0, len(prompts), rows)]
        keys = [[p.key for p in batch] for batch in batches]
        for n, batch in enumerate(batches):
            if on_batch is not None:
                on_batch(keys[n], keys[n + 1:])
            yield BatchOutput([Completion(p.key, "", "stop", 0, 0) for p in batch],
                              BatchStats(rows=len(batch)))
