"""The engine's values: what goes in (a prompt and its settings), what comes out (a completion
and the batch's measurements). Plain frozen data, importable without torch."""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from typing import Any

DEFAULT_MAX_NEW_TOKENS = 256

# Called just before a batch starts, with its prompts' keys and the keys of the batches planned
# to run after it (none where the strategy cannot tell): the worker counts attempts by it, for
# this batch and, so that it need not write before each of them, for some of those after it.
OnBatch = Callable[[list[Any], list[list[Any]]], None]


# What `--sampling model` takes from a model's generation_config (Qwen ships its recommended
# values there), under the job's and the line's own settings.
MODEL_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_k: int = 0  # 0: off
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0  # 1: off (Hugging Face's: prompt and output tokens)
    presence_penalty: float = 0.0  # OpenAI's two: output tokens only
    frequency_penalty: float = 0.0
    thinking: bool | None = None  # the chat template's enable_thinking; None: its default
    json_schema: str | None = None  # canonical JSON of the schema the output must match
    tool_choice: str | None = None  # with tools: auto, none, required or function:NAME

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def penalised(self) -> bool:
        return (self.repetition_penalty != 1.0 or self.presence_penalty != 0.0
                or self.frequency_penalty != 0.0)

    @cached_property  # the engine groups every prompt by it; `replace` walks the fields
    def sampling(self) -> GenerationSettings:
        """Everything but the output limit, thinking (which changes only a prompt and how its
        output is read), the schema and the tool choice (each row has its own grammar):
        prompts that agree on it may share a batch."""
        return replace(self, max_new_tokens=0, thinking=None, json_schema=None, tool_choice=None)

    @classmethod
    def merged(cls, job: Mapping[str, Any], line: Mapping[str, Any],
               model: Mapping[str, Any] | None = None) -> GenerationSettings:
        """A line's own settings override the job's, which override the model's (with
        `--sampling model`), which override the defaults."""
        return cls.over(cls.base(job, model), line)

    @staticmethod
    def base(job: Mapping[str, Any], model: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The job's settings over the model's, the unset left out: what each of a job's lines
        starts from (`over`). A worker takes it once a chunk, not once a line."""
        return {k: v for part in (model or {}, job) for k, v in part.items()
                if v is not None and k in _SETTING_NAMES}

    @classmethod
    def over(cls, base: Mapping[str, Any], line: Mapping[str, Any]) -> GenerationSettings:
        """A line's own settings over its job's (`base`)."""
        values = {**base, **{k: v for k, v in line.items() if k in _SETTING_NAMES}}
        if "stop" in values:
            values["stop"] = tuple(values["stop"])
        if isinstance(values.get("json_schema"), dict):
            # Key order kept: the output's properties come in the schema's order.
            values["json_schema"] = json.dumps(values["json_schema"])
        return cls(**values)


# Read once: dataclasses.fields() walks the class each call, and a worker merges the settings
# of every line it claims (it was 60% of reading a claimed chunk's requests).
_SETTING_NAMES = frozenset(f.name for f in fields(GenerationSettings))


@dataclass(frozen=True)
class PromptIn:
    key: Hashable  # the caller's id for this prompt, handed back unchanged
    messages: Sequence[Mapping[str, Any]] | None = None  # rendered with the chat template
    text: str | None = None  # used as it is (raw completion)
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    token_ids: Sequence[int] | None = None  # already tokenized (benchmarks)
    tools: Sequence[Mapping[str, Any]] | None = None  # OpenAI functions the model may call

    @property
    def calls_tools(self) -> bool:
        """Whether the template offers tools and the output is read for <tool_call> blocks."""
        return bool(self.tools) and self.settings.tool_choice != "none"

    @property
    def must_call(self) -> bool:
        """Whether decoding is held to tool calls (required, or one named function)."""
        return self.calls_tools and self.settings.tool_choice not in (None, "auto")


@dataclass(frozen=True)
class Completion:
    key: Any
    text: str | None
    finish_reason: str | None  # "stop" | "length"; None when error is set
    prompt_tokens: int
    completion_tokens: int  # the reasoning's tokens included, as OpenAI counts them
    error: str | None = None
    # A thinking model's reasoning, apart from the answer in `text`; None when it had none.
    reasoning: str | None = None
    reasoning_tokens: int = 0
    # The functions it called ({"name", "arguments": JSON text}), or None: no tool call.
    tool_calls: list[dict[str, str]] | None = None


@dataclass(frozen=True)
class BatchStats:
    rows: int = 0
    prompt_tokens: int = 0
    padded_prompt_tokens: int = 0  # what prefill paid for: rows x width for a padded batch
    completion_tokens: int = 0
    reasoning_tokens: int = 0  # of completion_tokens, a thinking model's reasoning
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
