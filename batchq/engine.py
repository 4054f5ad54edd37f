"""The engine: text and generation settings in, text and token counts out.

It imports no database and no Celery, so it can be tested, benchmarked and reused alone.
Generation is static-batch `generate` with left padding over length-sorted batches planned by
batchq.batching; prompts with different settings never share a `generate` call.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from batchq.batching import BatchBudget, plan_batches
from batchq.errors import NotFound

log = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 256


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

    @classmethod
    def merged(cls, job: dict[str, Any], line: dict[str, Any]) -> GenerationSettings:
        """A line's own settings override the job's, which override the defaults."""
        values = {**{k: v for k, v in job.items() if v is not None}, **line}
        if "stop" in values:
            values["stop"] = tuple(values["stop"])
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class PromptIn:
    key: Any  # the caller's id for this prompt, handed back unchanged
    messages: Sequence[dict[str, str]] | None = None  # rendered with the chat template
    text: str | None = None  # used as it is (raw completion)
    settings: GenerationSettings = field(default_factory=GenerationSettings)


@dataclass(frozen=True)
class Completion:
    key: Any
    text: str | None
    finish_reason: str | None  # "stop" | "length"; None when error is set
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


@dataclass
class BatchStats:
    rows: int = 0
    prompt_tokens: int = 0
    padded_prompt_tokens: int = 0
    completion_tokens: int = 0
    decode_slots: int = 0  # rows x decode steps: what the batch paid for
    seconds: float = 0.0
    peak_memory_bytes: int = 0


@dataclass
class BatchOutput:
    completions: list[Completion]
    stats: BatchStats


def pick_device(gpu: int | None = None) -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda:{gpu or 0}"
    return "cpu"


def quantization_config(quant: str, device: str):
    import torch
    from transformers import BitsAndBytesConfig

    if quant == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quant == "nf4":
        compute = torch.bfloat16 if device.startswith("cuda") else torch.float32
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)
    return None


class Engine:
    def __init__(self, model, tokenizer, device: str, budget: BatchBudget | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.budget = budget or BatchBudget()
        self.context = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids = sorted(eos_ids)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_ids[0]

    @classmethod
    def load(cls, model_ref: str, quant: str = "none", device: str | None = None,
             budget: BatchBudget | None = None) -> Engine:
        """Load once per worker. A local directory and a Hugging Face id take the same path."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = device or pick_device()
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_ref)
            qconfig = quantization_config(quant, device)
            if qconfig is None:
                dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
                model = AutoModelForCausalLM.from_pretrained(model_ref, dtype=dtype).to(device)
            else:
                model = AutoModelForCausalLM.from_pretrained(
                    model_ref, quantization_config=qconfig, device_map={"": device})
        except OSError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise NotFound(f"cannot load model {model_ref!r}: {first}") from exc
        model.eval()
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        log.info("loaded %s (%s) on %s", model_ref, quant, device)
        return cls(model, tokenizer, device, budget)

    # ------------------------------------------------------------ tokenizing

    def encode(self, prompt: PromptIn) -> list[int]:
        if prompt.messages is not None:
            text = self.tokenizer.apply_chat_template(
                list(prompt.messages), tokenize=False, add_generation_prompt=True)
        else:
            text = prompt.text or ""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # ------------------------------------------------------------ generating

    def generate(self, prompts: Iterable[PromptIn]) -> Iterator[BatchOutput]:
        """Yield one BatchOutput per GPU batch, so callers can store results as they come."""
        groups: dict[GenerationSettings, list[tuple[PromptIn, list[int]]]] = defaultdict(list)
        for prompt in prompts:
            ids = self.encode(prompt)
            problem = self._does_not_fit(len(ids), prompt.settings.max_new_tokens)
            if problem:
                yield BatchOutput([Completion(prompt.key, None, None, len(ids), 0, problem)],
                                  BatchStats())
                continue
            groups[prompt.settings].append((prompt, ids))
        for settings, items in groups.items():
            lengths = [len(ids) for _, ids in items]
            for batch in plan_batches(lengths, settings.max_new_tokens, self.budget):
                yield self._run_batch([items[i] for i in batch], settings)

    def _does_not_fit(self, prompt_tokens: int, max_new_tokens: int) -> str | None:
        if self.context and prompt_tokens + max_new_tokens > self.context:
            return (f"prompt of {prompt_tokens} tokens plus max_new_tokens {max_new_tokens} "
                    f"exceeds the model's context of {self.context} tokens")
        return None

    def _run_batch(self, items: list[tuple[PromptIn, list[int]]],
                   settings: GenerationSettings) -> BatchOutput:
        import torch

        width = max(len(ids) for _, ids in items)
        input_ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(items), width), dtype=torch.long)
        for row, (_, ids) in enumerate(items):
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids):] = 1
        on_cuda = self.device.startswith("cuda")
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        started = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.model.device),
                attention_mask=attention.to(self.model.device),
                generation_config=self._generation_config(settings),
                **({"tokenizer": self.tokenizer} if settings.stop else {}),
            )
        if on_cuda:
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started
        generated = out[:, width:].tolist()
        completions = [self._completion(prompt, ids, row, settings)
                       for (prompt, ids), row in zip(items, generated, strict=True)]
        stats = BatchStats(
            rows=len(items),
            prompt_tokens=sum(len(ids) for _, ids in items),
            padded_prompt_tokens=width * len(items),
            completion_tokens=sum(c.completion_tokens for c in completions),
            decode_slots=len(items) * len(generated[0]) if generated else 0,
            seconds=seconds,
            peak_memory_bytes=torch.cuda.max_memory_allocated(self.device) if on_cuda else 0,
        )
        return BatchOutput(completions, stats)

    def _generation_config(self, settings: GenerationSettings):
        from transformers import GenerationConfig

        # A fresh config: the job's settings alone decide sampling, not the model's defaults.
        config = GenerationConfig(
            max_new_tokens=settings.max_new_tokens, do_sample=not settings.greedy,
            eos_token_id=self.eos_ids, pad_token_id=self.pad_id)
        if not settings.greedy:
            config.temperature = settings.temperature
            config.top_p = settings.top_p
            config.top_k = 0
        if settings.stop:
            config.stop_strings = list(settings.stop)
        return config

    def _completion(self, prompt: PromptIn, ids: list[int], row: list[int],
                    settings: GenerationSettings) -> Completion:
        end = next((i for i, tok in enumerate(row) if tok in self.eos_ids), None)
        tokens = row if end is None else row[:end]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        finish = "length" if end is None else "stop"
        counted = len(tokens) + (0 if end is None else 1)  # the stop token was generated too
        cuts = [cut for cut in (text.find(stop) for stop in settings.stop) if cut != -1]
        if cuts:
            # OpenAI semantics: the earliest stop string ends the output and is not part of it.
            text, finish, counted = text[:min(cuts)], "stop", len(tokens)
        return Completion(prompt.key, text, finish, len(ids), counted)
