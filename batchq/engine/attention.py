"""Prefill attention that pays nothing for padding: each left-padded row attends over its own
tokens alone, with the causal kernel.

A padded batch's prefill hands transformers' SDPA attention a boolean mask (causal and the
padding). On a CPU that costs twice: torch turns the mask into a float tensor of
rows x prompt x prompt in every layer, and the masked kernel cannot skip the blocks above the
diagonal. Measured on a 4-layer model with 16 rows of 2,048 tokens, half of them padded to
twice their length: the masked prefill took 4.41-5.30 s, this one 2.76-3.25 s, with the same
greedy outputs (benchmarks/RESULTS.md, 2026-12-08). Each row's slice holds exactly the keys
the mask would have let it see, so the result is the same attention; only the order of the
floating-point sums may differ, as it does between any two batch widths already.

Everything else (decoding one token at a time, a prefill that continues a cache, sliding
windows, position biases, masks of another shape) goes to transformers' own SDPA unchanged.
It is the CPU's default (`load_pretrained`); on a GPU the masked kernels are different ones and
this has not been measured there, so a GPU keeps transformers' choice.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from batchq.engine.costs import PADDING_FREE_MIN_WIDTH as MIN_WIDTH

NAME = "batchq_rowwise"
STOCK = "sdpa"


def _left_padding(mask: Any, rows: int, length: int) -> list[int] | None:
    """Each row's count of leading pad tokens, if `mask` is a fresh causal prefill's mask over
    left-padded rows (what `generate` builds), else None."""
    import torch

    if mask is None or mask.dtype != torch.bool or tuple(mask.shape) != (rows, 1, length, length):
        return None
    last = mask[:, 0, -1, :]  # the last query sees every real token of its row and no pad
    pads = (~last).sum(dim=1)
    expected = torch.arange(length, device=mask.device)[None, :] >= pads[:, None]
    if not torch.equal(last, expected):
        return None
    return [int(p) for p in pads.tolist()]


def rowwise_prefill_attention(module: Any, query: Any, key: Any, value: Any,
                              attention_mask: Any, dropout: float = 0.0,
                              scaling: float | None = None, is_causal: bool | None = None,
                              **kwargs: Any) -> tuple[Any, None]:
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows, _, length, _ = query.shape
    pads = None
    if (length >= MIN_WIDTH and key.shape[2] == length and kwargs.get("position_bias") is None
            and getattr(module, "is_causal", True) and not getattr(module, "sliding_window", None)
            and not module.training):
        pads = _left_padding(attention_mask, rows, length)
    if pads is None:
        stock: tuple[Any, None] = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs)
        return stock
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    # Pad positions keep zeros: no real token attends to them, and zeros stay finite through
    # the next layer's norm (NaN there would reach the real tokens through masked-out keys).
    out = torch.zeros_like(query)
    for row, pad in enumerate(pads):
        out[row:row + 1, :, pad:] = torch.nn.functional.scaled_dot_product_attention(
            query[row:row + 1, :, pad:], key[row:row + 1, :, pad:], value[row:row + 1, :, pad:],
            is_causal=True, scale=scaling, enable_gqa=gqa)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make NAME an attention implementation transformers knows (masks as for SDPA)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, rowwise_prefill_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def is_padding_free(model: Any) -> bool:
    """Whether `model` prefills on this module's attention."""
    return getattr(model.config, "_attn_implementation", None) == NAME


@contextmanager
def stock_attention(model: Any) -> Iterator[None]:
    """Run `model` on transformers' own SDPA for a while (the naive baseline is the loop the
    tutorials teach, on the attention they get)."""
    if not is_padding_free(model):
        yield
        return
    model.set_attn_implementation(STOCK)
    try:
        yield
    finally:
        model.set_attn_implementation(NAME)
