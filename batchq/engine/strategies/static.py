"""Length-sorted padded batches under a token budget (batchq.engine.planning); each row stops at
its own limit; on out-of-memory the batch is split in half and retried, and the budget shrinks."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from batchq.engine.device import is_out_of_memory
from batchq.engine.planning import batch_cost, plan_batches
from batchq.engine.strategies.base import Strategy
from batchq.engine.types import BatchOutput, OnBatch, WorkItem

log = logging.getLogger(__name__)

OUT_OF_MEMORY = "out of memory"


class StaticBatches(Strategy):
    name = "static"

    def run(self, items: list[WorkItem], started: OnBatch) -> Iterator[BatchOutput]:
        remaining = items
        while remaining:
            # Planned again after every batch: an out-of-memory split shrinks the budget, and
            # every later batch must already use the smaller size.
            batches = plan_batches([len(i.ids) for i in remaining],
                                   [i.limit for i in remaining], self.runner.budget)
            first = [remaining[i] for i in batches[0]]
            remaining = [remaining[i] for batch in batches[1:] for i in batch]
            started([item.key for item in first])
            yield from self._split_on_oom(first)

    def _split_on_oom(self, items: list[WorkItem]) -> Iterator[BatchOutput]:
        runner = self.runner
        try:
            output = runner.run_padded(items, per_row_limits=True)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            runner.device.release_memory()
            if len(items) == 1:
                log.warning("one prompt of %d tokens does not fit in memory", len(items[0].ids))
                yield items[0].failed_alone(OUT_OF_MEMORY)
                return
            cost = batch_cost([len(i.ids) for i in items], [i.limit for i in items])
            runner.budget = runner.budget.shrunk_below(len(items), cost)
            log.warning("out of memory on a batch of %d rows (%d tokens); splitting it, and the "
                        "budget is now %s", len(items), cost, runner.budget)
            half = len(items) // 2
            yield from self._split_on_oom(items[:half])
            yield from self._split_on_oom(items[half:])
            return
        yield output
