"""Pure planning of batches: no torch, no database, easy to test exhaustively.

A static batch costs roughly rows x (longest prompt + longest output limit) of KV cache, and it
decodes until its longest-running row is done, so rows that finish early waste decode slots.
Batches are therefore formed from prompts sorted by output limit first (in coarse buckets) and
prompt length second, under a token budget and a row limit. The same order groups a job's lines
into chunks at submit time, so each chunk is already homogeneous.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

# Output limits within one bucket differ by at most this factor. Decode steps dominate the cost
# of a batch, so limits are grouped first; prompt length (padding) decides order inside a bucket.
LIMIT_BUCKET_RATIO = 1.25


@dataclass(frozen=True)
class BatchBudget:
    max_tokens: int = 16384  # rows x (padded prompt length + max new tokens)
    max_rows: int = 32

    def __post_init__(self) -> None:
        if self.max_tokens < 1 or self.max_rows < 1:
            raise ValueError("batch budgets must be positive")

    def limited(self, max_tokens: int | None = None, max_rows: int | None = None) -> BatchBudget:
        """This budget with the parts that are given replaced (a profile, an option)."""
        return replace(self, max_tokens=self.max_tokens if max_tokens is None else max_tokens,
                       max_rows=self.max_rows if max_rows is None else max_rows)

    def shrunk_below(self, rows: int, cost: int) -> BatchBudget:
        """The budget after a batch of `rows` rows costing `cost` ran out of memory."""
        return replace(self, max_rows=max(1, min(self.max_rows, rows // 2)),
                       max_tokens=max(1, min(self.max_tokens, cost // 2)))


def limit_bucket(max_new_tokens: int) -> int:
    return int(math.log(max(max_new_tokens, 1)) / math.log(LIMIT_BUCKET_RATIO))


def order_key(prompt_length: int, max_new_tokens: int) -> tuple[int, int]:
    """Sort key, largest first: similar output limits together, then similar prompt lengths."""
    return (limit_bucket(max_new_tokens), prompt_length)


def _as_limits(max_new_tokens: Sequence[int] | int, n: int) -> Sequence[int]:
    return [max_new_tokens] * n if isinstance(max_new_tokens, int) else max_new_tokens


def batch_cost(prompt_lengths: Sequence[int], max_new_tokens: Sequence[int] | int) -> int:
    limits = _as_limits(max_new_tokens, len(prompt_lengths))
    return len(prompt_lengths) * (max(prompt_lengths) + max(limits))


def plan_batches(prompt_lengths: Sequence[int], max_new_tokens: Sequence[int] | int,
                 budget: BatchBudget) -> list[list[int]]:
    """Indices into prompt_lengths, grouped into batches, largest first.

    `max_new_tokens` is one limit for all prompts or one per prompt. Every batch respects the
    budget, except a single prompt that alone exceeds it: it runs by itself rather than not at all.
    Largest first means an out-of-memory error shows up on the first batch, not the last.
    """
    limits = _as_limits(max_new_tokens, len(prompt_lengths))
    order = sorted(range(len(prompt_lengths)),
                   key=lambda i: (order_key(prompt_lengths[i], limits[i]), -i), reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    width = limit = 0
    for index in order:
        new_width = max(width, prompt_lengths[index])
        new_limit = max(limit, limits[index])
        fits = (len(current) + 1) * (new_width + new_limit) <= budget.max_tokens
        if current and (not fits or len(current) >= budget.max_rows):
            batches.append(current)
            current = []
            new_width, new_limit = prompt_lengths[index], limits[index]
        current.append(index)
        width, limit = new_width, new_limit
    if current:
        batches.append(current)
    return batches
