"""transformers' continuous batching (`init_continuous_batching`, a paged KV cache): a finished
row frees its slot for the next prompt at once, so no decode step is spent on a finished row.
It serves greedy groups without stop strings; static batches run the others."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Generator, Iterator

from batchq.engine.attention import stock_attention
from batchq.engine.strategies.base import Strategy
from batchq.engine.strategies.static import StaticBatches
from batchq.engine.types import (
    BatchOutput,
    BatchStats,
    Completion,
    GenerationSettings,
    OnBatch,
    WorkItem,
)

log = logging.getLogger(__name__)

PAGE_TOKENS = 256


class ContinuousBatches(Strategy):
    name = "continuous"

    def serves(self, sampling: GenerationSettings) -> bool:
        # Its manager takes no logits processor: penalties run as static batches.
        return sampling.greedy and not sampling.stop and not sampling.penalised

    def run(self, items: list[WorkItem], started: OnBatch) -> Iterator[BatchOutput]:
        """Paged KV cache sized to the same token budget as a static batch, and the same row
        limit. Results are handed out in groups of up to max_rows as they finish. If the manager
        stops before every prompt is done (out of memory, say), the rest run as static batches.
        """
        # The manager accepts transformers' own attention only; it pads nothing anyway.
        with stock_attention(self.runner.model):
            unfinished = yield from self._paged(items, started)
        if unfinished:
            log.warning("continuous batching stopped with %d prompts open; running them as "
                        "static batches", len(unfinished))
            self.runner.device.release_memory()
            yield from StaticBatches(self.runner).run(unfinished, started)

    def _paged(self, items: list[WorkItem],
               started: OnBatch) -> Generator[BatchOutput, None, list[WorkItem]]:
        """The manager's run; what it left unfinished is returned."""
        from transformers import ContinuousBatchingConfig

        runner, codec, budget = self.runner, self.runner.codec, self.runner.budget
        largest = max(len(item.ids) + item.limit for item in items)
        config = ContinuousBatchingConfig(
            page_size=PAGE_TOKENS,
            num_blocks=math.ceil(max(budget.max_tokens, largest) / PAGE_TOKENS) + 1,
            max_requests_per_batch=budget.max_rows,
            max_batch_tokens=max(budget.max_tokens // 4, largest, 256))
        generation_config = runner.generation_config(items[0].prompt.settings,
                                                     max(i.limit for i in items))
        if codec.ignore_eos:
            generation_config.eos_token_id = -1  # how the manager spells "no end token"
        manager = runner.model.init_continuous_batching(
            generation_config=generation_config, continuous_batching_config=config)
        by_request: dict[str, WorkItem] = {}
        started([item.key for item in items], [])  # every prompt is in flight at once
        clock = runner.device.start()
        manager.start()
        try:
            for n, item in enumerate(items):
                request_id = manager.add_request(
                    item.ids, request_id=f"r{n}", max_new_tokens=item.limit,
                    eos_token_id=codec.stop_ids)
                by_request[request_id] = item
            done: list[Completion] = []
            while by_request:
                result = manager.get_result(timeout=1)
                if result is None:
                    if not manager.is_running():
                        break
                    continue
                if not result.is_finished() or result.request_id not in by_request:
                    continue
                item = by_request.pop(result.request_id)
                done.append(item.failed(f"generation failed: {result.error}") if result.error
                            else codec.decode(item, result.generated_tokens))
                if len(done) >= budget.max_rows or not by_request:
                    yield self._output(done, clock)
                    done = []
                    clock = time.perf_counter()
            if done:
                yield self._output(done, clock)
        finally:
            manager.stop(block=True)
        return list(by_request.values())

    def _output(self, done: list[Completion], clock: float) -> BatchOutput:
        tokens = sum(c.completion_tokens for c in done)
        prompt_tokens = sum(c.prompt_tokens for c in done)
        return BatchOutput(done, BatchStats(
            rows=len(done), prompt_tokens=prompt_tokens, padded_prompt_tokens=prompt_tokens,
            completion_tokens=tokens, decode_slots=tokens,
            reasoning_tokens=sum(c.reasoning_tokens for c in done),
            seconds=self.runner.device.elapsed(clock),
            peak_memory_bytes=self.runner.device.peak_memory()))
