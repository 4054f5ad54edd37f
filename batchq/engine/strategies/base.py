"""The interface every strategy implements: work items in, one output per batch out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from batchq.engine.runner import ModelRunner
from batchq.engine.types import BatchOutput, GenerationSettings, OnBatch, WorkItem


class Strategy(ABC):
    """Turns prompts that share sampling settings into batches and runs them on the runner.

    `run` yields one BatchOutput per batch, so callers can store results as they come, and calls
    `started(keys, upcoming)` just before each batch begins (upcoming: the keys of the
    batches planned after it, as far as the strategy knows them).
    """

    name: ClassVar[str]

    def __init__(self, runner: ModelRunner):
        self.runner = runner

    def serves(self, sampling: GenerationSettings) -> bool:
        """Whether this strategy can run a group with these settings (else static runs it)."""
        return True

    @abstractmethod
    def run(self, items: list[WorkItem], started: OnBatch) -> Iterator[BatchOutput]:
        ...


def batch_keys(batches: Sequence[Sequence[WorkItem]]) -> list[list[Any]]:
    """Each batch's prompt keys, for `started`: built once a plan (announcing the batches after
    each one, batch by batch, would build them again every batch)."""
    return [[item.key for item in batch] for batch in batches]
