"""Loading a model once per worker, and sizing its batches from the memory left beside it."""

from __future__ import annotations

import logging
from typing import Any

from batchq.engine.device import Device, available_ram
from batchq.engine.planning import BatchBudget
from batchq.errors import NotFound

log = logging.getLogger(__name__)


def quantization_config(quant: str, device: str) -> Any:
    """bitsandbytes settings for int8 and nf4; None for unquantized weights."""
    import torch
    from transformers import BitsAndBytesConfig

    if quant == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quant == "nf4":
        compute = torch.bfloat16 if device.startswith("cuda") else torch.float32
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)
    return None


def load_pretrained(model_ref: str, quant: str, device: str) -> tuple[Any, Any]:
    """(model, tokenizer), ready for left-padded batches. A local directory and a Hugging Face
    id take the same path. Code shipped beside a model never runs (trust_remote_code is off):
    Qwen2 and Qwen3 are built into transformers; any other architecture is refused."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from batchq.engine import attention

    # A CPU prefills padded rows without paying for their padding (batchq.engine.attention);
    # a GPU keeps transformers' choice, which is unmeasured against it there.
    options: dict[str, Any] = {"trust_remote_code": False}
    if device == "cpu":
        options["attn_implementation"] = attention.register()
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_ref, trust_remote_code=False)
        qconfig = quantization_config(quant, device)
        if qconfig is None:
            dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
            model = AutoModelForCausalLM.from_pretrained(model_ref, dtype=dtype, **options).to(device)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                model_ref, quantization_config=qconfig, device_map={"": device}, **options)
    except (OSError, ValueError) as exc:
        # ValueError: among others, a model that needs its own code.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NotFound(f"cannot load model {model_ref!r}: {first}") from exc
    model.eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_tokenizer(model_ref: str) -> tuple[Any, int | None]:
    """(tokenizer, context length) without loading the weights: enough to count tokens and
    to split what would not fit (a schedule's documents)."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_ref, trust_remote_code=False)
        config = AutoConfig.from_pretrained(model_ref, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NotFound(f"cannot load the tokenizer of {model_ref!r}: {first}") from exc
    context = getattr(getattr(config, "text_config", None) or config,
                      "max_position_embeddings", None)
    return tokenizer, int(context) if context else None


def kv_bytes_per_token(config: Any, dtype_bytes: int = 2) -> int:
    """KV-cache bytes one token costs: keys and values, every layer, every KV head."""
    text = getattr(config, "text_config", None) or config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return int(2 * text.num_hidden_layers * kv_heads * head_dim * dtype_bytes)


# A CPU's batch budget, at most. Against the naive loop (16 rows padded to the longest), a
# uniform mix of 100 prompts of 16-2,048 tokens ran 1.33x with 16,384 tokens, 1.63x with
# 32,768 and 1.52x with 65,536 (benchmarks/RESULTS.md).
CPU_MAX_TOKENS = 32_768


def default_budget(model: Any, device: Device) -> BatchBudget:
    """Batch budget from what is free on the GPU once the model is loaded (a worker profile or
    --max-batch-tokens overrides it). On CPU, CPU_MAX_TOKENS, or fewer where their KV cache
    would take more than a fifth of the RAM available: a CPU running out of memory is not an
    error the batch can be split on, the kernel kills the process."""
    if not device.on_cuda:
        tokens = CPU_MAX_TOKENS
        available = available_ram()
        if available is not None:
            per_token = kv_bytes_per_token(model.config, model.dtype.itemsize)
            tokens = max(1024, min(tokens, int(available * 0.2 / per_token)))
        return BatchBudget(max_tokens=tokens)
    free, total = device.free_memory()
    # Keep a tenth of the card and a fifth of what is free for activations, logits and the
    # allocator's fragmentation; the rest holds the KV cache of one batch.
    usable = max(0, free - total // 10) * 0.8
    max_tokens = max(1024, min(4_000_000, int(usable / kv_bytes_per_token(model.config))))
    return BatchBudget(max_tokens=max_tokens, max_rows=max(8, min(256, max_tokens // 1024)))
