"""Between text and tokens: prompts through the chat template, generated ids back to text.

The one place that knows how a model's output is read: where it ends (its end tokens, or a
stop string), what the finish reason is and how many tokens count. Qwen3's thinking block
belongs here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from batchq.engine.types import Completion, PromptIn, WorkItem


def end_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends an output: the model's generation config and the tokenizer's EOS."""
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


class PromptCodec:
    def __init__(self, tokenizer: Any, eos_ids: Sequence[int], ignore_eos: bool = False):
        self.tokenizer = tokenizer
        self.eos_ids = list(eos_ids)
        # Benchmarks on random weights set this so every row generates its full limit.
        self.ignore_eos = ignore_eos
        pad = tokenizer.pad_token_id
        self.pad_id: int = pad if pad is not None else self.eos_ids[0]

    @property
    def stop_ids(self) -> list[int]:
        """What `generate` stops on. An empty list, not None: None would let it fall back to
        the model's own end token."""
        return [] if self.ignore_eos else self.eos_ids

    def encode(self, prompt: PromptIn) -> list[int]:
        if prompt.token_ids is not None:
            return list(prompt.token_ids)
        if prompt.messages is not None:
            text = self.tokenizer.apply_chat_template(
                [dict(m) for m in prompt.messages], tokenize=False, add_generation_prompt=True)
        else:
            text = prompt.text or ""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, item: WorkItem, row: Sequence[int]) -> Completion:
        """One row of generated ids as a completion, cut at the first end token or stop string."""
        row = list(row[:item.limit])  # a padded batch may run past this row's own limit
        end = None if self.ignore_eos else next(
            (i for i, tok in enumerate(row) if tok in self.eos_ids), None)
        tokens = row if end is None else row[:end]
        text: str = self.tokenizer.decode(tokens, skip_special_tokens=True)
        finish = "length" if end is None else "stop"
        counted = len(tokens) + (0 if end is None else 1)  # the stop token was generated too
        cuts = [cut for cut in (text.find(stop) for stop in item.prompt.settings.stop)
                if cut != -1]
        if cuts:
            # OpenAI semantics: the earliest stop string ends the output and is not part of it.
            text, finish, counted = text[:min(cuts)], "stop", len(tokens)
        return Completion(item.prompt.key, text, finish, len(item.ids), counted)
