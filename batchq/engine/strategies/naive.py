"""The loop the tutorials teach, kept as the baseline of `batchq bench`: arrival order, batches
of 16, padded to the longest, one `generate` per batch, every row run to the largest limit, on
transformers' own attention (not batchq.engine.attention's padding-free prefill)."""

from __future__ import annotations

from collections.abc import Iterator

from batchq.engine.attention import stock_attention
from batchq.engine.strategies.base import Strategy, batch_keys
from batchq.engine.types import BatchOutput, OnBatch, WorkItem

NAIVE_BATCH_ROWS = 16


class NaiveLoop(Strategy):
    name = "naive"

    def run(self, items: list[WorkItem], started: OnBatch) -> Iterator[BatchOutput]:
        batches = [items[start:start + NAIVE_BATCH_ROWS]
                   for start in range(0, len(items), NAIVE_BATCH_ROWS)]
        keys = batch_keys(batches)
        for n, batch in enumerate(batches):
            started(keys[n], keys[n + 1:])
            with stock_attention(self.runner.model):
                output = self.runner.run_padded(batch, per_row_limits=False)
            yield output
