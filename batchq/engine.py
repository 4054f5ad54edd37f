"""The engine: text and generation settings in, text and token counts out.

It imports no database and no Celery, so it can be tested, benchmarked and reused alone.
Prompts with different sampling settings never share a generation call; output limits may
differ within one. Three strategies:

  static      length-sorted padded batches under a token budget (batchq.batching); each row
              stops at its own limit; on out-of-memory the batch is split in half and retried.
  continuous  transformers' continuous batching (`init_continuous_batching`, a paged KV cache):
              a finished row frees its slot for the next prompt at once. Used for greedy groups
              without stop strings; others fall back to static.
  naive       the loop the tutorials teach: arrival order, batches of 16, padded to the longest,
              one `generate` per batch. It exists as the baseline of `batchq bench`.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from batchq.batching import BatchBudget, batch_cost, plan_batches
from batchq.errors import ConfigError, NotFound

log = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 256
STRATEGIES = ("static", "continuous", "naive")
NAIVE_BATCH_ROWS = 16
OUT_OF_MEMORY = "out of memory"


def default_strategy(device: str) -> str:
    """The strategy that measured fastest on this kind of device (README, Performance)."""
    return "static"


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
    token_ids: Sequence[int] | None = None  # already tokenized (benchmarks)


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
    padded_prompt_tokens: int = 0  # what prefill paid for: rows x width for a padded batch
    completion_tokens: int = 0
    decode_slots: int = 0  # rows x decode steps: what decoding paid for
    seconds: float = 0.0
    peak_memory_bytes: int = 0


@dataclass
class BatchOutput:
    completions: list[Completion]
    stats: BatchStats


@dataclass
class _Item:
    prompt: PromptIn
    ids: list[int]

    @property
    def limit(self) -> int:
        return self.prompt.settings.max_new_tokens


def _ignore(keys: list[Any]) -> None:
    pass


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


def kv_bytes_per_token(config, dtype_bytes: int = 2) -> int:
    """KV-cache bytes one token costs: keys and values, every layer, every KV head."""
    text = getattr(config, "text_config", None) or config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return 2 * text.num_hidden_layers * kv_heads * head_dim * dtype_bytes


def default_budget(model, device: str) -> BatchBudget:
    """Batch budget from what is free on the GPU once the model is loaded (a worker profile or
    --max-batch-tokens overrides it). On CPU, the fixed defaults."""
    if not device.startswith("cuda"):
        return BatchBudget()
    import torch

    free, total = torch.cuda.mem_get_info(torch.device(device))
    # Keep a tenth of the card and a fifth of what is free for activations, logits and the
    # allocator's fragmentation; the rest holds the KV cache of one batch.
    usable = max(0, free - total // 10) * 0.8
    max_tokens = max(1024, min(4_000_000, int(usable / kv_bytes_per_token(model.config))))
    return BatchBudget(max_tokens=max_tokens, max_rows=max(8, min(256, max_tokens // 1024)))


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    # Some kernels (bitsandbytes, cuBLAS) report it as a plain RuntimeError.
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class _RowLimits:
    """Stopping criterion: each row of a padded batch stops at its own output limit."""

    def __init__(self, start: int, limits):
        self.start = start
        self.limits = limits

    def __call__(self, input_ids, scores, **kwargs):
        return (input_ids.shape[1] - self.start) >= self.limits


class Engine:
    def __init__(self, model, tokenizer, device: str, budget: BatchBudget | None = None,
                 strategy: str | None = None, ignore_eos: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.budget = budget or default_budget(model, device)
        self.strategy = strategy or default_strategy(device)
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; choose one of "
                              f"{', '.join(STRATEGIES)}")
        # Benchmarks on random weights set this so every row generates its full limit.
        self.ignore_eos = ignore_eos
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
             budget: BatchBudget | None = None, strategy: str | None = None,
             trust_remote_code: bool = False) -> Engine:
        """Load once per worker. A local directory and a Hugging Face id take the same path.

        Code shipped with a model runs only if its catalogue entry says so (trust_remote_code);
        Qwen2 and Qwen3 are built into transformers and need none.
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = device or pick_device()
        remote = {"trust_remote_code": trust_remote_code}
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_ref, **remote)
            qconfig = quantization_config(quant, device)
            if qconfig is None:
                dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
                model = AutoModelForCausalLM.from_pretrained(model_ref, dtype=dtype,
                                                             **remote).to(device)
            else:
                model = AutoModelForCausalLM.from_pretrained(
                    model_ref, quantization_config=qconfig, device_map={"": device}, **remote)
        except (OSError, ValueError) as exc:
            # ValueError: among others, a model that needs its own code without permission.
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise NotFound(f"cannot load model {model_ref!r}: {first}") from exc
        model.eval()
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        engine = cls(model, tokenizer, device, budget, strategy)
        log.info("loaded %s (%s) on %s; strategy %s", model_ref, quant, device, engine.strategy)
        return engine

    # ------------------------------------------------------------ tokenizing

    def encode(self, prompt: PromptIn) -> list[int]:
        if prompt.token_ids is not None:
            return list(prompt.token_ids)
        if prompt.messages is not None:
            text = self.tokenizer.apply_chat_template(
                list(prompt.messages), tokenize=False, add_generation_prompt=True)
        else:
            text = prompt.text or ""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # ------------------------------------------------------------ generating

    def generate(self, prompts: Iterable[PromptIn],
                 on_batch: Callable[[list[Any]], None] | None = None) -> Iterator[BatchOutput]:
        """Yield one BatchOutput per GPU batch, so callers can store results as they come.

        `on_batch(keys)` is called just before a batch starts, with its prompts' keys: the
        worker counts attempts with it, so a batch that kills the process is known afterwards.
        """
        started = on_batch or _ignore
        groups: dict[GenerationSettings, list[_Item]] = defaultdict(list)
        for prompt in prompts:
            ids = self.encode(prompt)
            problem = self._does_not_fit(len(ids), prompt.settings.max_new_tokens)
            if problem:
                yield BatchOutput([Completion(prompt.key, None, None, len(ids), 0, problem)],
                                  BatchStats())
                continue
            groups[prompt.settings.sampling].append(_Item(prompt, ids))
        for sampling, items in groups.items():
            if self.strategy == "naive":
                yield from self._naive(items, started)
            elif self.strategy == "continuous" and sampling.greedy and not sampling.stop:
                yield from self._continuous(items, started)
            else:
                yield from self._static(items, started)

    def _does_not_fit(self, prompt_tokens: int, max_new_tokens: int) -> str | None:
        if self.context and prompt_tokens + max_new_tokens > self.context:
            return (f"prompt of {prompt_tokens} tokens plus max_new_tokens {max_new_tokens} "
                    f"exceeds the model's context of {self.context} tokens")
        return None

    # ------------------------------------------------------------ static batches

    def _static(self, items: list[_Item], started: Callable) -> Iterator[BatchOutput]:
        remaining = items
        while remaining:
            # Planned again after every batch: an out-of-memory split shrinks the budget, and
            # every later batch must already use the smaller size.
            batches = plan_batches([len(i.ids) for i in remaining],
                                   [i.limit for i in remaining], self.budget)
            first = [remaining[i] for i in batches[0]]
            remaining = [remaining[i] for batch in batches[1:] for i in batch]
            started([item.prompt.key for item in first])
            yield from self._split_on_oom(first)

    def _split_on_oom(self, items: list[_Item]) -> Iterator[BatchOutput]:
        try:
            output = self._run_batch(items, per_row_limits=True)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            self._release_memory()
            if len(items) == 1:
                log.warning("one prompt of %d tokens does not fit in memory", len(items[0].ids))
                yield BatchOutput([self._failed(items[0], OUT_OF_MEMORY)], BatchStats())
                return
            cost = batch_cost([len(i.ids) for i in items], [i.limit for i in items])
            self.budget = self.budget.shrunk_below(len(items), cost)
            log.warning("out of memory on a batch of %d rows (%d tokens); splitting it, and the "
                        "budget is now %s", len(items), cost, self.budget)
            half = len(items) // 2
            yield from self._split_on_oom(items[:half])
            yield from self._split_on_oom(items[half:])
            return
        yield output

    def _naive(self, items: list[_Item], started: Callable) -> Iterator[BatchOutput]:
        for start in range(0, len(items), NAIVE_BATCH_ROWS):
            batch = items[start:start + NAIVE_BATCH_ROWS]
            started([item.prompt.key for item in batch])
            yield self._run_batch(batch, per_row_limits=False)

    def _run_batch(self, items: list[_Item], per_row_limits: bool) -> BatchOutput:
        import torch
        from transformers import StoppingCriteriaList

        width = max(len(item.ids) for item in items)
        input_ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(items), width), dtype=torch.long)
        for row, item in enumerate(items):
            input_ids[row, width - len(item.ids):] = torch.tensor(item.ids, dtype=torch.long)
            attention[row, width - len(item.ids):] = 1
        settings = items[0].prompt.settings
        limits = [item.limit for item in items]
        extra: dict[str, Any] = {}
        if settings.stop:
            extra["tokenizer"] = self.tokenizer
        if per_row_limits and min(limits) != max(limits):
            row_limits = torch.tensor(limits, device=self.model.device)
            extra["stopping_criteria"] = StoppingCriteriaList([_RowLimits(width, row_limits)])
        self._start_measuring()
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        started = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.model.device),
                attention_mask=attention.to(self.model.device),
                generation_config=self._generation_config(settings, max(limits)),
                **extra,
            )
        seconds = self._elapsed(started)
        generated = out[:, width:].tolist()
        completions = [self._completion(item, row) for item, row in zip(items, generated,
                                                                          strict=True)]
        return BatchOutput(completions, BatchStats(
            rows=len(items),
            prompt_tokens=sum(len(item.ids) for item in items),
            padded_prompt_tokens=width * len(items),
            completion_tokens=sum(c.completion_tokens for c in completions),
            decode_slots=len(items) * len(generated[0]) if generated else 0,
            seconds=seconds,
            peak_memory_bytes=self._peak_memory()))

    # ------------------------------------------------------------ continuous batching

    def _continuous(self, items: list[_Item], started: Callable) -> Iterator[BatchOutput]:
        """Paged KV cache sized to the same token budget as a static batch, and the same row limit.

        Results are handed out in groups of up to max_rows as they finish. If the manager stops
        before every prompt is done (out of memory, say), the rest run as static batches.
        """
        from transformers import ContinuousBatchingConfig

        page = 256
        largest = max(len(item.ids) + item.limit for item in items)
        config = ContinuousBatchingConfig(
            page_size=page,
            num_blocks=math.ceil(max(self.budget.max_tokens, largest) / page) + 1,
            max_requests_per_batch=self.budget.max_rows,
            max_batch_tokens=max(self.budget.max_tokens // 4, largest, 256))
        generation_config = self._generation_config(items[0].prompt.settings,
                                                    max(i.limit for i in items))
        if self.ignore_eos:
            generation_config.eos_token_id = -1  # how the manager spells "no end token"
        manager = self.model.init_continuous_batching(
            generation_config=generation_config, continuous_batching_config=config)
        by_request: dict[str, _Item] = {}
        started([item.prompt.key for item in items])  # every prompt is in flight at once
        self._start_measuring()
        clock = time.perf_counter()
        manager.start()
        try:
            for n, item in enumerate(items):
                request_id = manager.add_request(
                    item.ids, request_id=f"r{n}", max_new_tokens=item.limit,
                    eos_token_id=[] if self.ignore_eos else self.eos_ids)
                by_request[request_id] = item
            done: list[Completion] = []
            while by_request:
                result = manager.get_result(timeout=1)
                if result is None:
                    if not manager.is_running():
                        break
                    continue
                if not result.is_finished() or result.request_id not in by_request:
                    continue
                item = by_request.pop(result.request_id)
                done.append(self._failed(item, f"generation failed: {result.error}")
                            if result.error else self._completion(item, result.generated_tokens))
                if len(done) >= self.budget.max_rows or not by_request:
                    yield self._continuous_output(done, clock)
                    done = []
                    clock = time.perf_counter()
            if done:
                yield self._continuous_output(done, clock)
        finally:
            manager.stop(block=True)
        if by_request:
            log.warning("continuous batching stopped with %d prompts open; running them as "
                        "static batches", len(by_request))
            self._release_memory()
            yield from self._static(list(by_request.values()), started)

    def _continuous_output(self, done: list[Completion], started: float) -> BatchOutput:
        tokens = sum(c.completion_tokens for c in done)
        prompt_tokens = sum(c.prompt_tokens for c in done)
        return BatchOutput(done, BatchStats(
            rows=len(done), prompt_tokens=prompt_tokens, padded_prompt_tokens=prompt_tokens,
            completion_tokens=tokens, decode_slots=tokens, seconds=self._elapsed(started),
            peak_memory_bytes=self._peak_memory()))

    # ------------------------------------------------------------ shared pieces

    def _on_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def _start_measuring(self) -> None:
        if self._on_cuda():
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)

    def _elapsed(self, started: float) -> float:
        if self._on_cuda():
            import torch

            torch.cuda.synchronize(self.device)
        return time.perf_counter() - started

    def _peak_memory(self) -> int:
        if not self._on_cuda():
            return 0
        import torch

        return torch.cuda.max_memory_allocated(self.device)

    def _release_memory(self) -> None:
        if self._on_cuda():
            import torch

            torch.cuda.empty_cache()

    def _generation_config(self, settings: GenerationSettings, max_new_tokens: int):
        from transformers import GenerationConfig

        # A fresh config: the job's settings alone decide sampling, not the model's defaults.
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=not settings.greedy,
            # An empty list, not None: None lets generate fall back to the model's own EOS.
            eos_token_id=[] if self.ignore_eos else self.eos_ids, pad_token_id=self.pad_id)
        if not settings.greedy:
            config.temperature = settings.temperature
            config.top_p = settings.top_p
            config.top_k = 0
        if settings.stop:
            config.stop_strings = list(settings.stop)
        return config

    def _failed(self, item: _Item, reason: str) -> Completion:
        return Completion(item.prompt.key, None, None, len(item.ids), 0, reason)

    def _completion(self, item: _Item, row: Sequence[int]) -> Completion:
        row = list(row[:item.limit])  # a padded batch may run past this row's own limit
        end = None if self.ignore_eos else next(
            (i for i, tok in enumerate(row) if tok in self.eos_ids), None)
        tokens = row if end is None else row[:end]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        finish = "length" if end is None else "stop"
        counted = len(tokens) + (0 if end is None else 1)  # the stop token was generated too
        cuts = [cut for cut in (text.find(stop) for stop in item.prompt.settings.stop)
                if cut != -1]
        if cuts:
            # OpenAI semantics: the earliest stop string ends the output and is not part of it.
            text, finish, counted = text[:min(cuts)], "stop", len(tokens)
        return Completion(item.prompt.key, text, finish, len(item.ids), counted)
