"""Pure planning of GPU batches: no torch, no database, easy to test exhaustively.

A batch costs roughly rows x (longest prompt + new tokens) of KV cache, so batches are formed
from length-sorted prompts under a token budget and a row limit. Sorting keeps the padding of
each batch small; longest first means an out-of-memory error shows up on the first batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchBudget:
    max_tokens: int = 16384  # rows x (padded prompt length + max new tokens)
    max_rows: int = 32

    def __post_init__(self) -> None:
        if self.max_tokens < 1 or self.max_rows < 1:
            raise ValueError("batch budgets must be positive")


def batch_cost(prompt_lengths: Sequence[int], max_new_tokens: int) -> int:
    return len(prompt_lengths) * (max(prompt_lengths) + max_new_tokens)


def plan_batches(
    prompt_lengths: Sequence[int], max_new_tokens: int, budget: BatchBudget
) -> list[list[int]]:
    """Indices into prompt_lengths, grouped into batches, longest prompts first.

    Every batch respects the budget, except a single prompt that alone exceeds it: it runs by
    itself rather than not at all.
    """
    order = sorted(range(len(prompt_lengths)), key=lambda i: (-prompt_lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # Sorted longest first, so the batch's padded width is its first prompt's length.
        width = prompt_lengths[current[0]] if current else prompt_lengths[index]
        fits = (len(current) + 1) * (width + max_new_tokens) <= budget.max_tokens
        if current and (not fits or len(current) >= budget.max_rows):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches
