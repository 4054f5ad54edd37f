"""Per group of prompts, the strategy the runner's cost model predicts is faster: static batches
as planned, or continuous batching where it serves the group and its step was measured
(batchq.engine.costs; the worker measures it on a GPU only)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from batchq.engine.strategies.base import Strategy
from batchq.engine.strategies.continuous import ContinuousBatches
from batchq.engine.strategies.static import StaticBatches
from batchq.engine.types import BatchOutput, OnBatch, WorkItem

log = logging.getLogger(__name__)


class AutoStrategy(Strategy):
    name = "auto"

    def run(self, items: list[WorkItem], started: OnBatch) -> Iterator[BatchOutput]:
        yield from self.choose(items).run(items, started)

    def choose(self, items: list[WorkItem]) -> Strategy:
        runner = self.runner
        static, paged = StaticBatches(runner), ContinuousBatches(runner)
        if not paged.serves(items[0].prompt.settings.sampling):
            return static
        paged_seconds = runner.cost.continuous_seconds(
            [len(i.ids) for i in items], [i.limit for i in items], runner.budget.max_rows)
        if paged_seconds is None:
            return static
        static_seconds = static.predicted_seconds(items)
        log.info("%d prompts: static batches %.2f s, continuous %.2f s predicted", len(items),
                 static_seconds, paged_seconds)
        return paged if paged_seconds < static_seconds else static
