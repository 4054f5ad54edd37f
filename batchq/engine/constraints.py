"""Outputs that must be JSON matching a schema, by grammar-constrained decoding (llguidance):
the logits processor. Compiling and checking schemas is engine/schemas.py (no torch there).

At each step a row's grammar state decides which tokens may come next; every other token's
logit is set to -inf before the choice is made, so a finished output always parses and
validates. Rows of one batch may follow different schemas (each has its own matcher), and rows
with none are left alone: a file of mixed extraction tasks still batches as one.

llguidance (MIT, no dependencies, a Rust core) was chosen over xgrammar, which pulls in triton
on Linux, and outlines-core, whose vocabulary index is built per schema ahead of time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_TOKENIZERS: dict[tuple[int, int], Any] = {}


def _ll_tokenizer(tokenizer: Any, vocab: int, eos: Sequence[int]) -> Any:
    """llguidance's view of the model's tokenizer (built once per tokenizer: it takes ~1 s)."""
    import llguidance.hf

    key = (id(tokenizer), vocab)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab,
                                                        eos_token=list(eos))
    return _TOKENIZERS[key]


class GrammarConstraint:
    """A logits processor: each row with a grammar (a schema's JSON, or the tool calls it
    must make) may only continue it (and end once it is whole). Then, for sampled rows, the
    top-k/top-p/min-p filters run on what is left: filtering first could leave a row with no
    allowed token."""

    def __init__(self, start: int, grammars: Sequence[str | None], tokenizer: Any, vocab: int,
                 eos: Sequence[int], filters: Sequence[Any] = ()):
        import llguidance

        ll = _ll_tokenizer(tokenizer, vocab, eos)
        self.start, self.vocab, self.filters, self.eos = start, vocab, list(filters), list(eos)
        self.matchers = [None if grammar is None
                         else llguidance.LLMatcher(ll, grammar, log_level=0)
                         for grammar in grammars]
        self.seen = 0  # output tokens consumed so far, per row

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import llguidance.torch
        import torch

        # Only the tokens generated since the last step are new to the matchers.
        fresh = input_ids[:, self.start + self.seen:].tolist()
        bitmask = llguidance.torch.allocate_token_bitmask(len(self.matchers), self.vocab)
        rows, ended = [], []
        for row, matcher in enumerate(self.matchers):
            if matcher is None:
                continue  # a free row
            if not (matcher.is_stopped() or matcher.is_error()):
                for token in fresh[row]:
                    matcher.consume_token(token)
            if matcher.is_stopped() or matcher.is_error():
                ended.append(row)  # the JSON is whole: only an end token may follow
                continue
            llguidance.torch.fill_next_token_bitmask(matcher, bitmask, row)
            rows.append(row)
        self.seen += len(fresh[0]) if fresh else 0
        if rows:
            index = torch.tensor(rows, device=scores.device)
            masked = scores[index]
            llguidance.torch.apply_token_bitmask_inplace(
                masked, bitmask[rows].to(scores.device))
            scores[index] = masked
        if ended:
            index = torch.tensor(ended, device=scores.device)
            keep = scores[index][:, self.eos]
            scores[index] = float("-inf")
            scores[index.unsqueeze(1), torch.tensor(self.eos, device=scores.device)] = keep
        for step in self.filters:
            scores = step(input_ids, scores)
        return scores
