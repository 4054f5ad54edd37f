"""What a batch costs, in seconds, on this model and device: the planner minimises it.

A padded `generate` call over `rows` prompts padded to `width` tokens that runs `steps` decode
steps costs about

    per_step * steps                       one forward pass per step, however few rows: Python,
                                           kernel launches, reading every weight (the 151,936-
                                           column vocabulary projection of a small Qwen is most
                                           of it on a CPU); launch overhead on a GPU
  + per_row_step * rows * steps            each row's share of a step: the MLP, the vocabulary
                                           projection's arithmetic
  + per_prompt_token * rows * width        the prefill of every padded prompt slot
  + per_prompt_pair * pairs                the prefill's attention: every prompt token against
                                           every earlier one. rows * width**2 when padding is
                                           attended too; each prompt's own length squared,
                                           summed, when it is not (batchq.engine.attention)
  + per_context_token * rows * steps * (width + steps / 2)
                                           attention reading (and the cache copying) the KV
                                           cache at each step

The five figures are measured at worker start (`calibrate`): a few batch shapes are timed on the
real device and fitted by non-negative least squares. `ASSUMED` is used when nothing was
measured (tests, pure planning).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

# The narrowest batch whose prefill batchq.engine.attention runs row by row (it is here, not
# there, so that planning never imports transformers). Below it the mask is small and a call
# per row costs more than it saves: 0.84-0.99x at 16-64 tokens, even at 128, 1.10-1.92x from
# 256 to 2,048 (benchmarks/RESULTS.md, 2026-12-08).
PADDING_FREE_MIN_WIDTH = 128

# (rows, width, steps) of the calibration batches, scaled down to fit the budget; chosen so
# that each term has a shape where it is large and one where it is small. Never one row: a
# single row's step is a matrix-vector product, a kernel of its own (on the development CPU
# 21.7 ms a step, against 34-36 ms for 4 to 16 rows, 44 for 32); fitted beside the others it
# made a step look as if its cost grew with the context, at 4-14 us a context token
# against the 0.4-1.1 measured, and the planner feared wide batches it should have run.
CALIBRATION_SHAPES = ((4, 16, 1), (4, 16, 8), (16, 16, 8), (4, 256, 1), (16, 256, 1),
                      (4, 256, 8))
TERMS = 5
# Then shapes like the batches a job runs: many rows, and a long context over many steps.
# Fitted on the small shapes alone, a small model on a CPU priced its real batches at twice
# what they took (its attention over a long cache, its rows at scale), and the planner cut
# seven batches of a mix where five ran 15-25% faster (benchmarks/RESULTS.md, 2026-12-06).
# A wide prompt prefilled alone (steps 1) and decoded (16) tells the prefill's attention, which
# grows with its square, from the decode's reading of the cache: without the pair, the fit gave
# the decode the prefill's quadratic cost, at 5-11 us a context token against 0.7 measured.
# Each is narrowed until the small shapes' fit says it takes at most WIDE_SECONDS, so a big
# model on a slow device is not held up at start.
WIDE_SHAPES = ((16, 64, 16), (8, 512, 16), (4, 1024, 1), (4, 1024, 16))
WIDE_SECONDS = 1.0


@dataclass(frozen=True)
class CostModel:
    per_step: float
    per_row_step: float
    per_prompt_token: float
    per_context_token: float
    per_prompt_pair: float = 0.0
    # Whether the prefill's attention skips padding (batchq.engine.attention): then a batch's
    # prompt pairs are its prompts' own, else every row's are its width's.
    padding_free_prefill: bool = False
    # Continuous batching's own cost of one scheduler step (its Python loop, the paged cache)
    # on top of per_step; None when it was not measured, and then it is never chosen.
    continuous_step: float | None = None
    measured: bool = False

    def batch_seconds(self, rows: int, width: int, steps: int,
                      squared_lengths: int | None = None) -> float:
        """One padded batch. `squared_lengths`, the sum of its prompts' squared lengths,
        prices a padding-free prefill (which runs from PADDING_FREE_MIN_WIDTH wide); without
        it every row is taken to be `width` long."""
        pairs = rows * width * width
        if (self.padding_free_prefill and squared_lengths is not None
                and width >= PADDING_FREE_MIN_WIDTH):
            pairs = squared_lengths
        return (self.per_step * steps + self.per_row_step * rows * steps
                + self.per_prompt_token * rows * width + self.per_prompt_pair * pairs
                + self.per_context_token * rows * steps * (width + steps / 2))

    def with_prefill(self, padding_free: bool) -> CostModel:
        return replace(self, padding_free_prefill=padding_free)

    def continuous_seconds(self, prompt_lengths: Sequence[int], limits: Sequence[int],
                           max_rows: int) -> float | None:
        """A group run by continuous batching: no padding and no finished rows, but at
        least as many scheduler steps as its longest row, or its slots over the row limit."""
        if self.continuous_step is None or not limits:
            return None
        tokens = sum(limits)
        steps = max(max(limits), -(-tokens // max_rows))
        mean_context = sum(n + k / 2 for n, k in zip(prompt_lengths, limits, strict=True)) / len(limits)
        return ((self.per_step + self.continuous_step) * steps + self.per_row_step * tokens
                + self.per_prompt_token * sum(prompt_lengths)
                + self.per_prompt_pair * sum(n * n for n in prompt_lengths)
                + self.per_context_token * tokens * mean_context)

    def describe(self) -> str:
        how = "measured" if self.measured else "assumed"
        text = (f"cost model ({how}): {1e3 * self.per_step:.2f} ms a step, "
                f"{1e3 * self.per_row_step:.3f} ms a row-step, "
                f"{1e6 * self.per_prompt_token:.1f} us a prompt token, "
                f"{1e9 * self.per_prompt_pair:.2f} ns a prompt pair, "
                f"{1e9 * self.per_context_token:.1f} ns a context token")
        if self.continuous_step is not None:
            text += f"; continuous +{1e3 * self.continuous_step:.2f} ms a step"
        if self.padding_free_prefill:
            text += "; padding-free prefill"
        return text


# Used when nothing was measured: the shape of a small model's costs (a step is worth a few
# dozen rows, a row-step a hundred prompt tokens, a prompt token four thousand pairs). Only
# ratios matter to the planner.
ASSUMED = CostModel(per_step=5e-3, per_row_step=2e-4, per_prompt_token=2e-6,
                    per_context_token=1e-9, per_prompt_pair=5e-10)

Timer = Callable[[int, int, int], float]  # (rows, width, steps) -> seconds of one batch


def fit(samples: Sequence[tuple[int, int, int, float]]) -> CostModel:
    """Non-negative least squares over the five terms: every subset of terms that holds the
    step is fitted, and the best fit with no negative coefficient and a step that costs
    something wins (five terms: sixteen tiny solves). The samples are unpadded batches, so
    their prompt pairs are rows * width**2 however the prefill treats padding. A fit that put every second elsewhere,
    which timings from a busy machine can favour, would tell the planner a step is free."""
    import numpy as np

    features = np.array([[s, r * s, r * w, r * w * w, r * s * (w + s / 2)]
                         for r, w, s, _ in samples], dtype=float)
    seconds = np.array([t for *_, t in samples], dtype=float)
    # Relative error: a 5 ms batch matters as much as a 2 s one.
    weights = 1 / np.maximum(seconds, 1e-6)
    best: tuple[float, np.ndarray] | None = None
    for size in range(0, TERMS):
        for others in itertools.combinations(range(1, TERMS), size):
            cols = [0, *others]  # the step, always
            a = features[:, cols] * weights[:, None]
            coef, *_ = np.linalg.lstsq(a, seconds * weights, rcond=None)
            if (coef < 0).any() or coef[0] <= 0:
                continue
            full = np.zeros(TERMS)
            full[cols] = coef
            residual = float(np.sum(((features @ full - seconds) * weights) ** 2))
            if best is None or residual < best[0]:
                best = (residual, full)
    if best is None or best[1][0] <= 0:
        return ASSUMED
    step, row_step, prompt_token, prompt_pair, context_token = (float(v) for v in best[1])
    return CostModel(step, row_step, prompt_token, context_token, per_prompt_pair=prompt_pair,
                     measured=True)


def calibration_shapes(max_rows: int, max_tokens: int,
                       wanted: Sequence[tuple[int, int, int]] = CALIBRATION_SHAPES
                       ) -> list[tuple[int, int, int]]:
    """The `wanted` shapes (CALIBRATION_SHAPES), each shrunk until it fits the budget."""
    shapes = []
    for rows, width, steps in wanted:
        rows = min(rows, max_rows)
        while rows * (width + steps) > max_tokens and width > 8:
            width //= 2
        shapes.append((rows, width, steps))
    return shapes


def wide_shapes(model: CostModel, max_rows: int, max_tokens: int) -> list[tuple[int, int, int]]:
    """WIDE_SHAPES, each fitted to the budget, then narrowed until `model` (the small shapes'
    fit) predicts at most WIDE_SECONDS for it."""
    shapes = []
    for rows, width, steps in calibration_shapes(max_rows, max_tokens, WIDE_SHAPES):
        while model.batch_seconds(rows, width, steps) > WIDE_SECONDS and width > 16:
            width //= 2
        if model.batch_seconds(rows, width, steps) <= WIDE_SECONDS:
            shapes.append((rows, width, steps))
    return shapes


def calibrate(time_batch: Timer, max_rows: int, max_tokens: int,
              time_continuous: Timer | None = None) -> CostModel:
    """Time each shape twice, keep the faster (the machine may be busy), and fit; then the
    wide shapes the fit says are quick enough, and fit again on all. With `time_continuous`,
    a continuous run of the third shape (several rows decoding) prices continuous batching's
    steps: what it took beyond the static prediction, per step."""
    shapes = calibration_shapes(max_rows, max_tokens)
    time_batch(*shapes[0])  # the first call of a process pays for lazy set-up
    samples = [(*shape, min(time_batch(*shape), time_batch(*shape))) for shape in shapes]
    model = fit(samples)
    wide = wide_shapes(model, max_rows, max_tokens) if model.measured else []
    if wide:
        samples += [(*shape, min(time_batch(*shape), time_batch(*shape))) for shape in wide]
        model = fit(samples)
    if time_continuous is None:
        return model
    rows, width, steps = shapes[2]
    time_continuous(rows, width, steps)
    seconds = time_continuous(rows, width, steps)
    extra = (seconds - model.batch_seconds(rows, width, steps)) / steps
    return replace(model, continuous_step=max(extra, 0.0))
