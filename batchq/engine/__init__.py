"""The engine: prompts in, completions and batch measurements out; pure of database and broker.

  types       PromptIn, GenerationSettings, Completion, BatchStats, BatchOutput
  planning    batch budgets and the length-sorted plan (also the order submit chunks by),
              cut where the cost model says the batches cost least
  costs       the cost model: seconds per step, row-step, prompt token, context token
  calibration measuring the cost model on the loaded model and its device
  codec       chat template in, end tokens and stop strings out
  loading     one model per worker; budgets sized from free memory
  device      the one device policy (GPU pinning) and CUDA accounting
  runner      the loaded model and the padded `generate` call strategies share
  strategies  auto, static, continuous, naive behind one interface
  null        an engine that generates nothing (benchmarks of the system alone)
  core        Engine: groups prompts by sampling settings and hands them to a strategy

Importing it does not import torch; loading a model does.
"""

from batchq.engine.core import Engine, default_strategy
from batchq.engine.planning import BatchBudget
from batchq.engine.strategies import STRATEGIES
from batchq.engine.types import (
    DEFAULT_MAX_NEW_TOKENS,
    BatchOutput,
    BatchStats,
    Completion,
    GenerationSettings,
    PromptIn,
)

__all__ = ["DEFAULT_MAX_NEW_TOKENS", "STRATEGIES", "BatchBudget", "BatchOutput", "BatchStats",
           "Completion", "Engine", "GenerationSettings", "PromptIn", "default_strategy"]
