"""The prompts `batchq bench` runs: a synthetic mix fixed by a seed, or the user's own JSONL.

Synthetic mixes use random plain tokens. Prompt lengths follow the mix over `--prompt-tokens`:
  log-uniform   as many prompts of 16-32 tokens as of 1,024-2,048 (batch traffic at large)
  uniform       every length equally likely
  heavy-tailed  real chat traffic: most prompts short, a few very long (a Pareto tail,
                alpha 1.1, from the low end, cut at the high end: with 16-2,048 tokens half
                are under 30 tokens and one in fifty over 500)
Output limits are log-uniform over `--output-tokens` (give one number twice for one limit).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from batchq.config import Settings
from batchq.engine import GenerationSettings, PromptIn
from batchq.errors import InputError
from batchq.formats.fields import LineError
from batchq.formats.lines import iter_raw_lines

FIRST_PLAIN_TOKEN, LAST_PLAIN_TOKEN = 200, 150_000  # clear of Qwen's special tokens
PARETO_ALPHA = 1.1

Draw = Callable[[random.Random, int, int], int]


def _log_uniform(rng: random.Random, low: int, high: int) -> int:
    return int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))


def _uniform(rng: random.Random, low: int, high: int) -> int:
    return rng.randint(low, high)


def _heavy_tailed(rng: random.Random, low: int, high: int) -> int:
    return min(high, int(round(low * rng.paretovariate(PARETO_ALPHA))))


MIXES: dict[str, Draw] = {"log-uniform": _log_uniform, "uniform": _uniform,
                          "heavy-tailed": _heavy_tailed}


@dataclass(frozen=True)
class Workload:
    prompts: int = 256
    seed: int = 0
    min_prompt: int = 16
    max_prompt: int = 2048
    min_output: int = 16
    max_output: int = 512
    mix: str = "log-uniform"

    def build(self) -> list[PromptIn]:
        rng = random.Random(self.seed)
        length_of = MIXES[self.mix]
        out = []
        for i in range(self.prompts):
            length = length_of(rng, self.min_prompt, self.max_prompt)
            limit = _log_uniform(rng, self.min_output, self.max_output)
            ids = [rng.randrange(FIRST_PLAIN_TOKEN, LAST_PLAIN_TOKEN) for _ in range(length)]
            out.append(PromptIn(i, token_ids=ids, settings=GenerationSettings(max_new_tokens=limit)))
        return out


class UserWorkload(NamedTuple):
    prompts: list[PromptIn]  # keyed by custom_id, with each line's own settings
    lines: list[str]  # for a job of the same file
    # The models its lines name: the bench measures one variant and runs every line on it.
    named_models: Counter[str]


def from_file(path: str, settings: Settings) -> UserWorkload:
    """The user's own JSONL, checked as `batchq submit` checks it. A bad line is an
    InputError naming the file and line, as submit would give."""
    from batchq.service.intake import check_line

    prompts: list[PromptIn] = []
    lines: list[str] = []
    problems: list[str] = []
    named_models: Counter[str] = Counter()
    with Path(path).open("rb") as stream:
        for line_no, raw in iter_raw_lines(stream):
            try:
                request = check_line(raw, line_no, settings)
            except LineError as exc:
                problems.append(f"{path}:{line_no}: {exc}")
                continue
            prompts.append(PromptIn(request.custom_id, request.messages, request.text,
                                    GenerationSettings.merged({}, request.params),
                                    tools=request.tools))
            lines.append(raw.decode("utf-8"))
            if request.model is not None:
                named_models[request.model] += 1
    if problems:
        raise InputError(path, problems[:10], len(problems),
                         f"{path}: {len(problems)} invalid line(s); nothing was run")
    if not prompts:
        raise InputError(path, [], 0, f"{path}: no lines to run")
    return UserWorkload(prompts, lines, named_models)
