"""The planner's batches respect their budgets, cover every prompt once and keep padding low."""

import random

import pytest

from batchq.engine.planning import BatchBudget, batch_cost, plan_batches


@pytest.mark.parametrize("seed", range(25))
def test_batches_cover_every_prompt_once_within_budget(seed):
    rng = random.Random(seed)
    lengths = [int(2 ** rng.uniform(4, 11)) for _ in range(rng.randint(1, 300))]
    max_new = rng.choice([16, 64, 512])
    budget = BatchBudget(max_tokens=rng.choice([2048, 8192, 65536]), max_rows=rng.choice([1, 8, 64]))
    batches = plan_batches(lengths, max_new, budget)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= budget.max_rows
        if len(batch) > 1:
            assert batch_cost([lengths[i] for i in batch], max_new) <= budget.max_tokens


def test_sorted_batches_pad_less_than_arrival_order():
    rng = random.Random(7)
    lengths = [int(2 ** rng.uniform(4, 11)) for _ in range(256)]
    planned = plan_batches(lengths, 64, BatchBudget(max_tokens=10**9, max_rows=16))
    arrival = [list(range(i, min(i + 16, 256))) for i in range(0, 256, 16)]

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    assert padded(planned) < 0.6 * padded(arrival)


def test_a_prompt_over_budget_runs_alone_longest_first():
    assert plan_batches([10, 5000, 20], 100, BatchBudget(max_tokens=1000, max_rows=8)) == [[1], [2, 0]]
