"""The planner's batches respect their budgets, cover every prompt once and keep padding low;
the cost-minimising plan is never costlier than the greedy one; the cost model is fitted from
timings."""

import random

import pytest

from batchq.engine.costs import (
    ASSUMED,
    PADDING_FREE_MIN_WIDTH,
    WIDE_SECONDS,
    WIDE_SHAPES,
    CostModel,
    calibrate,
    calibration_shapes,
    fit,
    wide_shapes,
)
from batchq.engine.planning import (
    BatchBudget,
    batch_cost,
    plan_batches,
    plan_greedy,
    plan_optimal,
    plan_seconds,
)

TERMS = ("per_step", "per_row_step", "per_prompt_token", "per_prompt_pair", "per_context_token")

# Costs measured on the development machine for two model sizes (worker start-up lines), and a
# GPU-like shape where a step is nearly free next to the rows it carries.
COSTS = [ASSUMED,
         CostModel(per_step=6e-3, per_row_step=9e-4, per_prompt_token=3e-6, per_context_token=3e-9),
         CostModel(per_step=1.2e-2, per_row_step=2.5e-3, per_prompt_token=5e-5,
                   per_context_token=3e-9),
         CostModel(per_step=1e-4, per_row_step=1e-6, per_prompt_token=1e-7, per_context_token=0),
         # The small model on this CPU with the padding-free prefill (batchq.engine.attention).
         CostModel(per_step=2e-2, per_row_step=7.5e-4, per_prompt_token=4.9e-5,
                   per_context_token=7e-7, per_prompt_pair=1.1e-8, padding_free_prefill=True)]


def _mix(rng):
    n = rng.randint(1, 300)
    lengths = [min(2048, int(16 * rng.paretovariate(1.1))) if rng.random() < 0.5
               else int(2 ** rng.uniform(4, 11)) for _ in range(n)]
    limits = rng.choice([rng.choice([16, 64, 512]), [int(2 ** rng.uniform(4, 9)) for _ in range(n)]])
    budget = BatchBudget(max_tokens=rng.choice([2048, 8192, 65536]), max_rows=rng.choice([1, 8, 64]))
    return lengths, limits, budget


def _within_budget(batches, lengths, limits, budget):
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= budget.max_rows
        if len(batch) > 1:
            rows_limits = limits if isinstance(limits, int) else [limits[i] for i in batch]
            assert batch_cost([lengths[i] for i in batch], rows_limits) <= budget.max_tokens


@pytest.mark.parametrize("seed", range(25))
def test_batches_cover_every_prompt_once_within_budget(seed):
    rng = random.Random(seed)
    lengths, limits, budget = _mix(rng)
    _within_budget(plan_batches(lengths, limits, budget), lengths, limits, budget)
    _within_budget(plan_batches(lengths, limits, budget, rng.choice(COSTS)), lengths, limits,
                   budget)


@pytest.mark.parametrize("seed", range(25))
def test_the_optimal_plan_never_costs_more_than_the_greedy_one(seed):
    rng = random.Random(1000 + seed)
    lengths, limits, budget = _mix(rng)
    for cost in COSTS:
        optimal = plan_seconds(plan_optimal(lengths, limits, budget, cost), lengths, limits, cost)
        greedy = plan_seconds(plan_greedy(lengths, limits, budget), lengths, limits, cost)
        assert optimal <= greedy * (1 + 1e-9)


def test_a_long_prompt_among_short_ones_gets_a_batch_of_its_own_when_padding_costs_more():
    # One 2,000-token prompt and 15 short ones, a 16-token output: padding the short ones to
    # 2,000 tokens costs far more than the extra decode steps of a second batch.
    lengths = [2000] + [20] * 15
    cost = COSTS[2]
    budget = BatchBudget(max_tokens=10**6, max_rows=32)
    assert plan_greedy(lengths, 16, budget) == [list(range(16))]
    assert plan_optimal(lengths, 16, budget, cost) == [[0], list(range(1, 16))]
    # Where a decode step is what costs, the same prompts stay together.
    steps = CostModel(per_step=1.0, per_row_step=0, per_prompt_token=1e-9, per_context_token=0)
    assert len(plan_optimal(lengths, 16, budget, steps)) == 1


def test_a_padding_free_prefill_prices_each_prompt_by_its_own_length():
    pairs_only = CostModel(per_step=0, per_row_step=0, per_prompt_token=0, per_context_token=0,
                           per_prompt_pair=1.0)
    free = pairs_only.with_prefill(padding_free=True)
    own = 200**2 + 10**2
    assert pairs_only.batch_seconds(2, 200, 0, own) == 2 * 200**2  # the pad is attended too
    assert free.batch_seconds(2, 200, 0, own) == own
    assert free.batch_seconds(2, 200, 0) == 2 * 200**2  # lengths unknown: every row as wide
    # Narrower than that width, the prefill is transformers' masked one (engine.attention).
    narrow = PADDING_FREE_MIN_WIDTH - 1
    assert free.batch_seconds(2, narrow, 0, narrow**2 + 1) == 2 * narrow**2
    # So a long prompt costs its short batch-mates less, and plans cut fewer batches for it.
    lengths = [2000] + [20] * 15
    budget = BatchBudget(max_tokens=10**6, max_rows=32)
    padded = CostModel(per_step=0.2, per_row_step=0, per_prompt_token=1e-6, per_context_token=0,
                       per_prompt_pair=1e-6)
    assert plan_optimal(lengths, 16, budget, padded) == [[0], list(range(1, 16))]
    assert plan_optimal(lengths, 16, budget, padded.with_prefill(padding_free=True)) == [
        list(range(16))]


def test_sorted_batches_pad_less_than_arrival_order():
    rng = random.Random(7)
    lengths = [int(2 ** rng.uniform(4, 11)) for _ in range(256)]
    planned = plan_batches(lengths, 64, BatchBudget(max_tokens=10**9, max_rows=16))
    arrival = [list(range(i, min(i + 16, 256))) for i in range(0, 256, 16)]

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    assert padded(planned) < 0.6 * padded(arrival)


def test_a_prompt_over_budget_runs_alone_longest_first():
    budget = BatchBudget(max_tokens=1000, max_rows=8)
    assert plan_batches([10, 5000, 20], 100, budget) == [[1], [2, 0]]
    assert plan_batches([10, 5000, 20], 100, budget, ASSUMED) == [[1], [2, 0]]


def test_the_cost_model_is_fitted_back_from_timings_of_its_shapes():
    truth = CostModel(per_step=6e-3, per_row_step=9e-4, per_prompt_token=4e-6,
                      per_context_token=2e-9, per_prompt_pair=3e-9)
    shapes = calibration_shapes(max_rows=32, max_tokens=16384)
    fitted = fit([(r, w, s, truth.batch_seconds(r, w, s)) for r, w, s in shapes])
    assert fitted.measured
    for name in TERMS:
        assert getattr(fitted, name) == pytest.approx(getattr(truth, name), rel=1e-6)
    # Timings no term explains (or noise making one negative) never give a negative cost.
    noisy = fit([(r, w, s, 0.01 + (0.005 if i % 2 else 0)) for i, (r, w, s) in enumerate(shapes)])
    assert min(getattr(noisy, name) for name in TERMS) >= 0
    # Timings best explained without a step (a busy machine can give such) still make a
    # measured model, with a step that costs something: never the assumed one.
    busy = fit([(r, w, s, 1e-3 * r * s) for r, w, s in shapes])
    assert busy.measured and busy.per_step > 0


def test_calibration_shapes_fit_a_small_budget():
    for rows, width, steps in calibration_shapes(max_rows=4, max_tokens=600):
        assert rows <= 4 and rows * (width + steps) <= 600


def test_wide_shapes_are_narrowed_to_what_the_small_shapes_say_is_quick():
    quick = CostModel(per_step=1e-3, per_row_step=1e-5, per_prompt_token=1e-7,
                      per_context_token=1e-9, measured=True)
    assert wide_shapes(quick, max_rows=32, max_tokens=32768) == list(WIDE_SHAPES)
    slow = CostModel(per_step=2e-2, per_row_step=1e-3, per_prompt_token=3e-5,
                     per_context_token=1e-5, measured=True)
    narrowed = wide_shapes(slow, max_rows=32, max_tokens=32768)
    assert narrowed and all(slow.batch_seconds(*shape) <= WIDE_SECONDS
                            for shape in narrowed)
    assert [(r, s) for r, _, s in narrowed] == [(r, s) for r, _, s in WIDE_SHAPES]
    assert [w for _, w, _ in narrowed] < [w for _, w, _ in WIDE_SHAPES]
    # Too slow even at 16 tokens: not timed at all (a big model on a slow device).
    assert wide_shapes(CostModel(2.0, 0, 0, 0, measured=True), 32, 32768) == []
    for rows, width, steps in wide_shapes(quick, max_rows=4, max_tokens=600):
        assert rows <= 4 and rows * (width + steps) <= 600


def test_calibration_times_the_wide_shapes_too_and_fits_them_all():
    truth = CostModel(per_step=2e-2, per_row_step=5e-4, per_prompt_token=3e-5,
                      per_context_token=7e-7, per_prompt_pair=1.1e-8)
    timed = []

    def timer(rows, width, steps):
        timed.append((rows, width, steps))
        return truth.batch_seconds(rows, width, steps)

    fitted = calibrate(timer, max_rows=32, max_tokens=32768)
    wide = [shape for shape in timed if shape not in calibration_shapes(32, 32768)]
    assert wide and all(truth.batch_seconds(*shape) <= WIDE_SECONDS for shape in wide)
    for name in TERMS:
        assert getattr(fitted, name) == pytest.approx(getattr(truth, name), rel=1e-6)
