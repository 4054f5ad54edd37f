"""Measuring the cost model (batchq.engine.costs) on the loaded model and its device: a few
padded batches of plain tokens, each timed as `generate` runs it, end tokens ignored so every
batch decodes exactly its steps. On a CPU with a tiny model this takes about a second."""

from __future__ import annotations

import logging
from dataclasses import replace

from batchq.engine.codec import PromptCodec
from batchq.engine.costs import ASSUMED, CostModel, calibrate
from batchq.engine.device import is_out_of_memory
from batchq.engine.runner import ModelRunner
from batchq.engine.types import GenerationSettings, PromptIn, WorkItem

log = logging.getLogger(__name__)

FIRST_PLAIN_TOKEN = 1000  # ordinary word pieces, clear of the special tokens


def _items(rows: int, width: int, steps: int) -> list[WorkItem]:
    settings = GenerationSettings(max_new_tokens=steps)
    return [WorkItem(PromptIn(("calibration", row), settings=settings),
                     [FIRST_PLAIN_TOKEN + (row * 7 + i) % 5000 for i in range(width)])
            for row in range(rows)]


def measure_costs(runner: ModelRunner, continuous: bool = False) -> CostModel:
    """The runner's cost model, measured. With `continuous`, continuous batching's own step
    is priced too, so a group can be given to it where it would be faster."""
    # End tokens ignored: a random-weight or real model must decode every step it is timed for.
    quiet = replace(runner, codec=PromptCodec(runner.codec.tokenizer, runner.codec.eos_ids,
                                              ignore_eos=True))
    device = runner.device

    def static(rows: int, width: int, steps: int) -> float:
        clock = device.start()
        quiet.run_padded(_items(rows, width, steps), per_row_limits=False)
        return device.elapsed(clock)

    def paged(rows: int, width: int, steps: int) -> float:
        from batchq.engine.strategies.continuous import ContinuousBatches

        clock = device.start()
        for _ in ContinuousBatches(quiet).run(_items(rows, width, steps), lambda keys, upcoming: None):
            pass
        return device.elapsed(clock)

    budget = runner.budget
    try:
        return calibrate(static, budget.max_rows, budget.max_tokens,
                         paged if continuous else None)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        # The budget is wrong for this device: the first real batch will shrink it. The plan
        # meanwhile uses the assumed costs, which only order batch shapes, never size them.
        device.release_memory()
        log.warning("out of memory while measuring batch costs; planning with assumed costs")
        return ASSUMED
