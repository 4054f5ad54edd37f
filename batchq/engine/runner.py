"""One loaded model on its device, and the one padded `generate` call the strategies share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from batchq.engine.codec import PromptCodec
from batchq.engine.device import Device
from batchq.engine.planning import BatchBudget
from batchq.engine.types import BatchOutput, BatchStats, GenerationSettings, WorkItem


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
    shrinks it, and every later batch keeps to the smaller size."""

    model: Any
    codec: PromptCodec
    device: Device
    budget: BatchBudget

    def generation_config(self, settings: GenerationSettings, max_new_tokens: int) -> Any:
        from transformers import GenerationConfig

        # A fresh config: the job's settings alone decide sampling, not the model's defaults.
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=not settings.greedy,
            eos_token_id=self.codec.stop_ids, pad_token_id=self.codec.pad_id)
        if not settings.greedy:
            config.temperature = settings.temperature
            config.top_p = settings.top_p
            config.top_k = 0
        if settings.stop:
            config.stop_strings = list(settings.stop)
        return config

    def run_padded(self, items: list[WorkItem], per_row_limits: bool) -> BatchOutput:
        """One `generate` call over left-padded rows that share sampling settings. With
        per_row_limits, each row stops at its own output limit, not the batch's largest."""
        import torch
        from transformers import StoppingCriteriaList

        width = max(len(item.ids) for item in items)
        input_ids = torch.full((len(items), width), self.codec.pad_id, dtype=torch.long)
        attention = torch.zeros((len(items), width), dtype=torch.long)
        for row, item in enumerate(items):
            input_ids[row, width - len(item.ids):] = torch.tensor(item.ids, dtype=torch.long)
            attention[row, width - len(item.ids):] = 1
        settings = items[0].prompt.settings
        limits = [item.limit for item in items]
        extra: dict[str, Any] = {}
        if settings.stop:
            extra["tokenizer"] = self.codec.tokenizer
        if per_row_limits and min(limits) != max(limits):
            row_limits = torch.tensor(limits, device=self.model.device)
            extra["stopping_criteria"] = StoppingCriteriaList([_RowLimits(width, row_limits)])
        clock = self.device.start()
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.model.device),
                attention_mask=attention.to(self.model.device),
                generation_config=self.generation_config(settings, max(limits)),
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
            decode_slots=len(items) * len(generated[0]) if generated else 0,
            seconds=seconds,
            peak_memory_bytes=self.device.peak_memory()))
