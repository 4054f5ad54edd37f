"""The synthetic workload `batchq bench` runs when the user gives none: lengths that look like
batch traffic, random plain tokens, fixed by a seed."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from batchq.engine import GenerationSettings, PromptIn

FIRST_PLAIN_TOKEN, LAST_PLAIN_TOKEN = 200, 150_000  # clear of Qwen's special tokens


@dataclass(frozen=True)
class Workload:
    prompts: int = 256
    seed: int = 0
    min_prompt: int = 16
    max_prompt: int = 2048
    min_output: int = 16
    max_output: int = 512

    def build(self) -> list[PromptIn]:
        """Prompt lengths and output limits log-uniform in their ranges; random plain tokens."""
        rng = random.Random(self.seed)
        out = []
        for i in range(self.prompts):
            length = _log_uniform(rng, self.min_prompt, self.max_prompt)
            limit = _log_uniform(rng, self.min_output, self.max_output)
            ids = [rng.randrange(FIRST_PLAIN_TOKEN, LAST_PLAIN_TOKEN) for _ in range(length)]
            out.append(PromptIn(i, token_ids=ids, settings=GenerationSettings(max_new_tokens=limit)))
        return out


def _log_uniform(rng: random.Random, low: int, high: int) -> int:
    return int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))


