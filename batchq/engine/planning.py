"""Pure planning of batches: no torch, no database, easy to test exhaustively.

A static batch holds rows x (longest prompt + longest output limit) of KV cache, and it decodes
until its longest-running row is done, so rows that finish early waste decode slots. Prompts are
sorted by output limit first (in coarse buckets) and prompt length second; the same order groups
a job's lines into chunks at submit time, so each chunk is already homogeneous.

Where to cut that sorted list into batches is a trade the budget alone does not decide: one long
prompt in a batch of short ones pads them all to its length, but a batch of its own costs a
decode step per output token. `plan_batches` with a cost model (batchq.engine.costs) cuts it
where the predicted seconds are least: dynamic programming over contiguous runs of the sorted
list, O(prompts x max_rows). Without one it packs greedily up to the budget (`plan_greedy`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batchq.engine.costs import CostModel

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
                 budget: BatchBudget, cost: CostModel | None = None) -> list[list[int]]:
    """Indices into prompt_lengths, grouped into batches, largest first.

    `max_new_tokens` is one limit for all prompts or one per prompt. Every batch respects the
    budget, except a single prompt that alone exceeds it: it runs by itself rather than not at all.
    Largest first means an out-of-memory error shows up on the first batch, not the last. With a
    cost model the batches are the cheapest under it (`plan_optimal`), else greedily packed.
    """
    if cost is None:
        return plan_greedy(prompt_lengths, max_new_tokens, budget)
    return plan_optimal(prompt_lengths, max_new_tokens, budget, cost)


def sorted_order(prompt_lengths: Sequence[int], limits: Sequence[int]) -> list[int]:
    return sorted(range(len(prompt_lengths)),
                  key=lambda i: (order_key(prompt_lengths[i], limits[i]), -i), reverse=True)


def plan_greedy(prompt_lengths: Sequence[int], max_new_tokens: Sequence[int] | int,
                budget: BatchBudget) -> list[list[int]]:
    """Fill each batch up to the budget, in sorted order."""
    limits = _as_limits(max_new_tokens, len(prompt_lengths))
    batches: list[list[int]] = []
    current: list[int] = []
    width = limit = 0
    for index in sorted_order(prompt_lengths, limits):
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


def plan_optimal(prompt_lengths: Sequence[int], max_new_tokens: Sequence[int] | int,
                 budget: BatchBudget, cost: CostModel) -> list[list[int]]:
    """The partition of the sorted prompts into contiguous batches whose summed predicted cost
    is least, under the same budget as `plan_greedy` (whose partition is one of those searched,
    so this one never costs more under `cost`)."""
    limits = _as_limits(max_new_tokens, len(prompt_lengths))
    order = sorted_order(prompt_lengths, limits)
    n = len(order)
    best = [0.0] + [math.inf] * n  # best[i]: cheapest plan of order[:i]
    cut = [0] * (n + 1)  # where the last batch of that plan starts
    for end in range(1, n + 1):
        width = limit = squares = 0
        for start in range(end - 1, max(end - budget.max_rows, 0) - 1, -1):
            index = order[start]
            width = max(width, prompt_lengths[index])
            limit = max(limit, limits[index])
            squares += prompt_lengths[index] ** 2
            rows = end - start
            if rows > 1 and rows * (width + limit) > budget.max_tokens:
                break  # widening only grows it: no earlier start fits either
            total = best[start] + cost.batch_seconds(rows, width, limit, squares)
            if total < best[end]:
                best[end], cut[end] = total, start
    batches: list[list[int]] = []
    end = n
    while end:
        batches.append(order[cut[end]:end])
        end = cut[end]
    return batches[::-1]


def plan_seconds(batches: Sequence[Sequence[int]], prompt_lengths: Sequence[int],
                 max_new_tokens: Sequence[int] | int, cost: CostModel) -> float:
    """What a plan costs under `cost`: the sum of its batches' predicted seconds."""
    limits = _as_limits(max_new_tokens, len(prompt_lengths))
    return sum(cost.batch_seconds(len(b), max(prompt_lengths[i] for i in b),
                                  max(limits[i] for i in b), sum(prompt_lengths[i] ** 2 for i in b))
               for b in batches)
