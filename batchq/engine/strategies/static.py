"""Length-sorted padded batches, cut where the runner's cost model says they cost least under the
token budget (batchq.engine.planning); each row stops at its own limit; on out-of-memory the
batch is split in half and retried, and the budget shrinks."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from batchq.engine.device import is_out_of_memory
from batchq.engine.planning import BatchBudget, batch_cost, plan_batches, plan_seconds
from batchq.engine.runner import ModelRunner
from batchq.engine.strategies.base import Strategy, batch_keys
from batchq.engine.types import BatchOutput, OnBatch, WorkItem

log = logging.getLogger(__name__)

OUT_OF_MEMORY = "out of memory"


Planned = tuple[list[list[int]], list[int], list[int]]  # batches (indexes), lengths, limits


class StaticBatches(Strategy):
    name = "static"

    def __init__(self, runner: ModelRunner):
        super().__init__(runner)
        # The last plan, with the items and budget it was made for: auto asks for the
        # predicted cost and then runs the same items, and the plan is made once for both.
        self._last: tuple[list[WorkItem], BatchBudget, Planned] | None = None

    def run(self, items: list[WorkItem], started: OnBatch) -> Iterator[BatchOutput]:
        budget = self.runner.budget
        planned = self.plan(items)
        keys = batch_keys(planned)  # once a plan, not once a batch
        while planned:
            first = planned.pop(0)
            started(keys.pop(0), list(keys))
            yield from self._split_on_oom(first)
            if self.runner.budget != budget:
                # An out-of-memory split shrank the budget: every later batch must already
                # keep to the smaller size.
                budget = self.runner.budget
                planned = self.plan([item for batch in planned for item in batch])
                keys = batch_keys(planned)

    def plan(self, items: list[WorkItem]) -> list[list[WorkItem]]:
        """The batches, cheapest first-to-last under the runner's cost model."""
        return [[items[i] for i in batch] for batch in self._planned(items)[0]]

    def predicted_seconds(self, items: list[WorkItem]) -> float:
        """What the planned batches of `items` cost under the runner's cost model."""
        batches, lengths, limits = self._planned(items)
        return plan_seconds(batches, lengths, limits, self.runner.cost)

    def _planned(self, items: list[WorkItem]) -> Planned:
        budget = self.runner.budget
        if self._last is not None and self._last[0] is items and self._last[1] == budget:
            return self._last[2]
        lengths, limits = [len(i.ids) for i in items], [i.limit for i in items]
        planned = plan_batches(lengths, limits, budget, self.runner.cost), lengths, limits
        self._last = items, budget, planned
        return planned

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
