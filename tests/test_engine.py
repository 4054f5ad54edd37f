"""The engine alone: batching must not change greedy outputs; quantized variants generate."""

import pytest

from batchq.batching import BatchBudget
from batchq.engine import Engine, GenerationSettings, PromptIn

PROMPTS = ["Hi", "Tell me a long story about a queue " * 6, "2+2?", "Translate 'cat' to French.",
           "List three colours, one per line, and then explain why each one is nice. " * 3]


@pytest.fixture(scope="module")
def engine(tiny_model):
    # A small budget forces several batches of mixed lengths, with real left padding.
    return Engine.load(str(tiny_model), "none", "cpu", BatchBudget(max_tokens=600, max_rows=3))


def run(engine, prompts):
    return {c.key: c for out in engine.generate(prompts) for c in out.completions}


def chat(i, text, **settings):
    return PromptIn(i, messages=[{"role": "user", "content": text}],
                    settings=GenerationSettings(**{"max_new_tokens": 12, **settings}))


def test_greedy_output_of_a_padded_batch_equals_each_prompt_alone(engine):
    prompts = [chat(i, text) for i, text in enumerate(PROMPTS)]
    batched = run(engine, prompts)
    widths = {len(engine.encode(p)) for p in prompts}
    assert len(widths) == len(prompts)  # all different lengths: the batch really pads
    for p in prompts:
        alone = run(engine, [p])[p.key]
        assert batched[p.key].text == alone.text
        assert batched[p.key].completion_tokens == alone.completion_tokens
        assert batched[p.key].prompt_tokens == len(engine.encode(p))


def test_each_line_stops_at_its_own_limit_and_settings_never_mix(engine):
    prompts = [chat(0, "a", max_new_tokens=3), chat(1, "b", max_new_tokens=9),
               chat(2, "c", max_new_tokens=3, temperature=0.7, seed=1)]
    stats = []
    out = {}
    for batch in engine.generate(prompts):
        stats.append(batch.stats.rows)
        out.update({c.key: c for c in batch.completions})
    assert stats == [1, 1, 1]  # three settings, three generate calls
    assert out[0].completion_tokens <= 3 and out[1].completion_tokens <= 9
    assert {c.finish_reason for c in out.values()} <= {"stop", "length"}


def test_stop_string_ends_the_output_and_is_not_part_of_it(engine):
    free = run(engine, [chat(0, "Hello", max_new_tokens=16)])[0].text
    stop = free[3:5]  # a piece of what greedy decoding is known to produce
    cut = run(engine, [chat(0, "Hello", max_new_tokens=16, stop=(stop,))])[0]
    assert cut.finish_reason == "stop"
    assert cut.text == free[: free.find(stop)]


def test_a_prompt_longer_than_the_context_fails_alone(engine):
    huge = chat(0, "word " * 5000, max_new_tokens=8)
    out = run(engine, [huge, chat(1, "short")])
    assert "exceeds the model's context of 4096 tokens" in out[0].error
    assert out[1].error is None and out[1].text


@pytest.mark.parametrize("quant", ["int8", "nf4"])
def test_quantized_variants_load_and_generate(tiny_model, quant):
    import bitsandbytes  # noqa: F401  (the real kernels, not a fallback)

    engine = Engine.load(str(tiny_model), quant, "cpu")
    layer = engine.model.model.layers[0].mlp.down_proj
    expected = {"int8": "Linear8bitLt", "nf4": "Linear4bit"}[quant]
    assert type(layer).__name__ == expected
    out = run(engine, [chat(0, "Hello"), chat(1, "How are you today, friend?")])
    assert all(c.error is None and c.text and c.completion_tokens > 0 for c in out.values())
