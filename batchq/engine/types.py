"""The engine's values: what goes in (a prompt and its settings), what comes out (a completion
and the batch's measurements). Plain frozen data, importable without torch."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

DEFAULT_MAX_NEW_TOKENS = 256

# Called just before a batch starts, with its prompts' keys (the worker counts attempts by it).
OnBatch = Callable[[list[Any]], None]


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def sampling(self) -> GenerationSettings:
        """Everything but the output limit: prompts that agree on it may share a batch."""
        return replace(self, max_new_tokens=0)

    @classmethod
    def merged(cls, job: Mapping[str, Any], line: Mapping[str, Any]) -> GenerationSettings:
        """A line's own settings override the job's, which override the defaults."""
        values = {**{k: v for k, v in job.items() if v is not None}, **line}
        if "stop" in values:
            values["stop"] = tuple(values["stop"])
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass(frozen=True)
class PromptIn:
    key: Hashable  # the caller's id for this prompt, handed back unchanged
    messages: Sequence[Mapping[str, str]] | None = None  # rendered with the chat template
    text: str | None = None  # used as it is (raw completion)
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    token_ids: Sequence[int] | None = None  # already tokenized (benchmarks)


@dataclass(frozen=True)
class Completion:
    key: Any
    text: str | None
    finish_reason: str | None  # "stop" | "length"; None when error is set
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


@dataclass(frozen=True)
class BatchStats:
    rows: int = 0
    prompt_tokens: int = 0
    padded_prompt_tokens: int = 0  # what prefill paid for: rows x width for a padded batch
    completion_tokens: int = 0
    decode_slots: int = 0  # rows x decode steps: what decoding paid for
    seconds: float = 0.0
    peak_memory_bytes: int = 0


@dataclass(frozen=True)
class BatchOutput:
    completions: list[Completion]
    stats: BatchStats


@dataclass(frozen=True)
class WorkItem:
    """A prompt with its token ids: what the strategies plan and run."""

    prompt: PromptIn
    ids: list[int]

    @property
    def key(self) -> Any:
        return self.prompt.key

    @property
    def limit(self) -> int:
        return self.prompt.settings.max_new_tokens

    def failed(self, reason: str) -> Completion:
        return Completion(self.prompt.key, None, None, len(self.ids), 0, reason)

    def failed_alone(self, reason: str) -> BatchOutput:
        """A prompt that fails without running: an output of its own, with no batch cost."""
        return BatchOutput([self.failed(reason)], BatchStats())
