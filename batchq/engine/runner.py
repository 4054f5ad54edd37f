"""One loaded model on its device, and the one padded `generate` call the strategies share."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from batchq.engine.codec import PromptCodec
from batchq.engine.costs import ASSUMED, CostModel
from batchq.engine.device import Device
from batchq.engine.planning import BatchBudget
from batchq.engine.types import BatchOutput, BatchStats, GenerationSettings, WorkItem


def row_grammar(item: WorkItem) -> str | None:
    """What a row's decoding is held to: its schema's JSON, the tool calls it must make, or
    nothing."""
    from batchq.engine.schemas import grammar, tool_grammar

    settings = item.prompt.settings
    if settings.json_schema is not None:
        return grammar(settings.json_schema)
    if item.prompt.must_call and settings.tool_choice is not None:
        return tool_grammar(json.dumps(list(map(dict, item.prompt.tools or ()))),
                            settings.tool_choice)
    return None


class _OutputPenalties:
    """OpenAI's presence and frequency penalties: a token's logit drops by presence_penalty
    once it is in this row's output, and by frequency_penalty for each time it is. The prompt
    does not count (OpenAI's and vLLM's meaning; repetition_penalty is the one that does)."""

    def __init__(self, start: int, presence: float, frequency: float):
        self.start, self.presence, self.frequency = start, presence, frequency

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        output = input_ids[:, self.start:]
        if output.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(
            1, output, torch.ones_like(output, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


class _AnswerStops:
    """Stop strings for a thinking model: a row stops once its answer (never its reasoning)
    holds one. Only the answer's tail is decoded at each step: a stop string completed by
    the newest token lies within its last len(bytes) tokens."""

    def __init__(self, start: int, items: list[WorkItem], codec: PromptCodec):
        self.start, self.items, self.codec = start, items, codec
        self.stops = items[0].prompt.settings.stop
        self.tail = max(len(stop.encode()) for stop in self.stops) + 2

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        output = input_ids[:, self.start:].tolist()  # the prompts are not read again
        done = [any(stop in self.codec.answer_tail(item.ids, row, self.tail)
                    for stop in self.stops)
                for item, row in zip(self.items, output, strict=True)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _RowLimits:
    """Stopping criterion: each row of a padded batch stops at its own output limit."""

    def __init__(self, start: int, limits: Any):
        self.start = start
        self.limits = limits

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        return (input_ids.shape[1] - self.start) >= self.limits


@dataclass
class ModelRunner:
    """What every strategy works with. `budget` is the runner's state: an out-of-memory batch
    shrinks it, and every later batch keeps to the smaller size. `cost` prices a batch on this
    device (batchq.engine.calibration measures it); the planner minimises it."""

    model: Any
    codec: PromptCodec
    device: Device
    budget: BatchBudget
    cost: CostModel = ASSUMED

    def generation_config(self, settings: GenerationSettings, max_new_tokens: int) -> Any:
        from transformers import GenerationConfig

        # Every sampling field is set, to its neutral value if the job's settings leave it:
        # `generate` fills each field left None from the model's own generation_config, and a
        # Qwen release ships do_sample, temperature, top_k, top_p and repetition_penalty=1.05
        # there. The job's settings alone decide (`--sampling model` asks for the model's).
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=not settings.greedy,
            eos_token_id=self.codec.stop_ids, pad_token_id=self.codec.pad_id,
            repetition_penalty=settings.repetition_penalty, no_repeat_ngram_size=0)
        if settings.greedy:  # HF's own neutral values: greedy decoding ignores them
            config.update(temperature=1.0, top_p=1.0, top_k=50)
        else:
            config.update(temperature=settings.temperature, top_p=settings.top_p,
                          top_k=settings.top_k, min_p=settings.min_p, typical_p=1.0,
                          epsilon_cutoff=0.0, eta_cutoff=0.0)
        if settings.stop and self.codec.think_ids is None:
            config.stop_strings = list(settings.stop)  # a thinking model's: _AnswerStops
        return config

    def _constraint(self, width: int, grammars: list[str | None],
                    settings: GenerationSettings, config: Any) -> Any:
        """The schemas' mask, then (sampling) top-k, top-p and min-p after it, not before:
        filtering first could leave a row no token its grammar allows."""
        from transformers import MinPLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        from batchq.engine.constraints import GrammarConstraint

        filters: list[Any] = []
        if not settings.greedy:
            if settings.top_k:
                filters.append(TopKLogitsWarper(settings.top_k))
            if settings.top_p < 1.0:
                filters.append(TopPLogitsWarper(settings.top_p))
            if settings.min_p:
                filters.append(MinPLogitsWarper(settings.min_p))
            config.update(top_k=0, top_p=1.0, min_p=None)
        vocab = self.model.get_output_embeddings().weight.shape[0]
        return GrammarConstraint(width, grammars, self.codec.tokenizer, vocab,
                                 self.codec.eos_ids, filters)

    def run_padded(self, items: list[WorkItem], per_row_limits: bool) -> BatchOutput:
        """One `generate` call over left-padded rows that share sampling settings. With
        per_row_limits, each row stops at its own output limit, not the batch's largest."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        width = max(len(item.ids) for item in items)
        input_ids = torch.full((len(items), width), self.codec.pad_id, dtype=torch.long)
        attention = torch.zeros((len(items), width), dtype=torch.long)
        for row, item in enumerate(items):
            input_ids[row, width - len(item.ids):] = torch.tensor(item.ids, dtype=torch.long)
            attention[row, width - len(item.ids):] = 1
        settings = items[0].prompt.settings
        limits = [item.limit for item in items]
        extra: dict[str, Any] = {}
        criteria = StoppingCriteriaList()
        if settings.stop and self.codec.think_ids is None:
            extra["tokenizer"] = self.codec.tokenizer
        elif settings.stop:
            criteria.append(_AnswerStops(width, items, self.codec))
        processors = LogitsProcessorList()
        if settings.presence_penalty or settings.frequency_penalty:
            processors.append(_OutputPenalties(width, settings.presence_penalty,
                                               settings.frequency_penalty))
        grammars = [row_grammar(item) for item in items]
        config = self.generation_config(settings, max(limits))
        if any(grammars):
            processors.append(self._constraint(width, grammars, settings, config))
        if processors:
            extra["logits_processor"] = processors
        if per_row_limits and min(limits) != max(limits):
            row_limits = torch.tensor(limits, device=self.model.device)
            criteria.append(_RowLimits(width, row_limits))
        if criteria:
            extra["stopping_criteria"] = criteria
        clock = self.device.start()
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.model.device),
                attention_mask=attention.to(self.model.device),
                generation_config=config,
                **extra,
            )
        seconds = self.device.elapsed(clock)
        generated = out[:, width:].tolist()
        completions = [self.codec.decode(item, row)
                       for item, row in zip(items, generated, strict=True)]
        return BatchOutput(completions, BatchStats(
            rows=len(items),
            prompt_tokens=sum(len(item.ids) for item in items),
            padded_prompt_tokens=width * len(items),
            completion_tokens=sum(c.completion_tokens for c in completions),
            reasoning_tokens=sum(c.reasoning_tokens for c in completions),
            decode_slots=len(items) * len(generated[0]) if generated else 0,
            seconds=seconds,
            peak_memory_bytes=self.device.peak_memory()))
