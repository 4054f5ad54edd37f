"""The engine alone: batching must not change greedy outputs; quantized variants generate."""

import subprocess
import sys

import pytest

from batchq.engine import STRATEGIES, BatchBudget, Engine, GenerationSettings, PromptIn

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


def test_the_padding_free_prefill_sees_what_the_masked_one_sees(engine, monkeypatch):
    """batchq.engine.attention: on a CPU each padded row attends over its own tokens alone;
    its logits are transformers' own SDPA's, and the rows really took that path."""
    import torch

    from batchq.engine import attention

    model = engine.model
    assert attention.is_padding_free(model) and engine.runner.cost.padding_free_prefill
    lengths = [150, 5, 300, 64]  # wider than attention.MIN_WIDTH
    width = max(lengths)
    ids = torch.full((len(lengths), width), engine.codec.pad_id)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, width - n:] = torch.arange(1000 + row, 1000 + row + n)
        mask[row, width - n:] = 1
    seen = []
    found = attention._left_padding
    monkeypatch.setattr(attention, "_left_padding", lambda *a: seen.append(found(*a)) or seen[-1])
    with torch.inference_mode():
        ours = model(input_ids=ids, attention_mask=mask).logits
        with attention.stock_attention(model):
            stock = model(input_ids=ids, attention_mask=mask).logits
    assert attention.is_padding_free(model)  # restored
    layers = model.config.num_hidden_layers
    assert seen == [[width - n for n in lengths]] * layers  # every layer, each row's padding
    for row, n in enumerate(lengths):
        torch.testing.assert_close(ours[row, width - n:], stock[row, width - n:],
                                   rtol=1e-4, atol=1e-4)
    # A batch without padding has no mask, and a narrow one a small mask: transformers' own
    # path for both.
    seen.clear()
    with torch.inference_mode():
        model(input_ids=ids[2:3], attention_mask=mask[2:3])  # 300 tokens, no padding
        narrow = attention.MIN_WIDTH - 1  # row 1 is padded here
        model(input_ids=ids[:, -narrow:], attention_mask=mask[:, -narrow:])
    assert seen == [None] * layers  # the first looked, found no mask; the second never looked


def test_each_line_stops_at_its_own_limit_and_sampling_settings_never_mix(engine):
    prompts = [chat(0, "a", max_new_tokens=3), chat(1, "b", max_new_tokens=9),
               chat(2, "c", max_new_tokens=3, temperature=0.7, seed=1)]
    stats = []
    out = {}
    for batch in engine.generate(prompts):
        stats.append(batch.stats.rows)
        out.update({c.key: c for c in batch.completions})
    assert stats == [2, 1]  # limits share a batch; sampling settings never do
    for p in prompts[:2]:
        alone = run(engine, [p])[p.key]
        assert (out[p.key].text, out[p.key].completion_tokens) == (alone.text,
                                                                  alone.completion_tokens)
    assert out[0].completion_tokens <= 3 and out[1].completion_tokens <= 9
    assert {c.finish_reason for c in out.values()} <= {"stop", "length"}


@pytest.mark.parametrize("strategy", ["static", "naive"])
def test_each_batch_is_announced_with_the_batches_planned_after_it(engine, strategy):
    """The worker counts attempts ahead from what `on_batch` says comes next: it must be
    exactly the batches that then run, in order."""
    prompts = [chat(i, text, max_new_tokens=4) for i, text in enumerate(PROMPTS * 4)]
    announced: list[tuple[list, list]] = []
    ran = []
    engine.strategy = strategy
    try:
        for out in engine.generate(prompts, on_batch=lambda keys, upcoming: announced.append(
                (keys, upcoming))):
            ran.append([c.key for c in out.completions])
    finally:
        engine.strategy = "static"
    assert len(ran) >= 2 and [keys for keys, _ in announced] == ran
    for n, (_, upcoming) in enumerate(announced):
        assert upcoming == ran[n + 1:]


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


MIXED = [("Hi", 5), ("Tell me a long story about a queue " * 6, 17), ("2+2?", 30),
         ("Translate 'cat' to French.", 9), ("List three colours. " * 8, 24), ("Why?", 2),
         ("Explain batching to a child in simple words please.", 13)]


@pytest.mark.parametrize("ignore_eos", [False, True])
def test_every_strategy_gives_the_same_greedy_outputs(tiny_model, ignore_eos):
    prompts = [chat(i, text, max_new_tokens=limit) for i, (text, limit) in enumerate(MIXED)]
    results = {}
    loaded = Engine.load(str(tiny_model), "none", "cpu", BatchBudget(max_tokens=900, max_rows=4))
    for strategy in STRATEGIES:
        e = loaded.with_options(strategy=strategy, ignore_eos=ignore_eos)
        if ignore_eos:
            # Make the model's own end token one it generates often (the first token it gives
            # the first prompt): ignoring EOS must then still run every row to its limit.
            first = next(iter(e.generate([chat(0, MIXED[0][0], max_new_tokens=1)])))
            token = e.tokenizer(first.completions[0].text, add_special_tokens=False)["input_ids"][0]
            e.model.generation_config.eos_token_id = [token]
        outputs = list(e.generate(prompts))
        results[strategy] = {c.key: (c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens)
                             for o in outputs for c in o.completions}
        assert sum(o.stats.completion_tokens for o in outputs) == sum(
            r[3] for r in results[strategy].values())
        if ignore_eos:  # every row generates exactly its own limit
            assert [results[strategy][i][3] for i in range(len(MIXED))] == [m for _, m in MIXED]
    assert results["static"] == results["naive"] == results["continuous"]
    assert len(results["static"]) == len(MIXED)


def test_static_batches_respect_the_budget_and_waste_less_than_naive(tiny_model):
    prompts = [chat(i, text, max_new_tokens=limit) for i, (text, limit) in enumerate(MIXED)]
    budget = BatchBudget(max_tokens=300, max_rows=3)
    waste = {}
    loaded = Engine.load(str(tiny_model), "none", "cpu", budget, ignore_eos=True)
    for strategy in ("static", "naive"):
        e = loaded.with_options(strategy=strategy)
        outputs = list(e.generate(prompts))
        waste[strategy] = sum(o.stats.decode_slots - o.stats.completion_tokens for o in outputs)
        if strategy == "static":
            for o in outputs:
                width = o.stats.padded_prompt_tokens // o.stats.rows
                longest = max(MIXED[c.key][1] for c in o.completions)
                assert o.stats.rows <= budget.max_rows
                assert o.stats.rows == 1 or o.stats.rows * (width + longest) <= budget.max_tokens
    assert waste["static"] < waste["naive"]


def test_out_of_memory_splits_the_batch_and_later_batches_stay_small(tiny_model, monkeypatch):
    import torch

    e = Engine.load(str(tiny_model), "none", "cpu", BatchBudget(max_tokens=10**6, max_rows=8),
                    "static")
    prompts = [chat(i, text, max_new_tokens=6) for i, (text, _) in enumerate(MIXED)]
    expected = {k: c.text for k, c in run(e, prompts).items()}
    real_generate = e.model.generate
    seen_rows = []

    def generate_on_a_small_gpu(*args, **kwargs):
        rows, width = kwargs["input_ids"].shape
        seen_rows.append(rows)
        if rows > 2 or width > 60:  # a batch over 2 rows, or one very long prompt, "does not fit"
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(e.model, "generate", generate_on_a_small_gpu)
    e.budget = BatchBudget(max_tokens=10**6, max_rows=8)
    got = run(e, prompts)
    too_long = {k for k, p in enumerate(prompts) if len(e.encode(p)) > 60}
    assert too_long and len(too_long) < len(prompts)
    for key in range(len(prompts)):
        if key in too_long:
            assert got[key].error == "out of memory" and got[key].text is None
        else:
            assert got[key].error is None and got[key].text == expected[key]
    assert e.budget.max_rows <= 2  # the worker lives on with a smaller batch size
    after_first_split = seen_rows[seen_rows.index(max(seen_rows)) + 1:]
    assert max(seen_rows) > 2 and seen_rows.count(max(seen_rows)) == 1
    assert all(rows <= 4 for rows in after_first_split)


@pytest.mark.parametrize("strategy", ["static", "continuous"])
@pytest.mark.parametrize("penalty", ["frequency_penalty", "presence_penalty"])
def test_openai_penalties_act_on_the_output_under_every_strategy(engine, strategy, penalty):
    # A random model's choices have wide margins; a huge negative penalty (beyond what a line
    # may ask for) makes its effect certain: the first output token wins every later step.
    engine = engine.with_options(strategy=strategy)
    first = run(engine, [chat(0, "hi", max_new_tokens=1)])[0].text
    plain = run(engine, [chat(0, "hi", max_new_tokens=6)])[0]
    looped = run(engine, [chat(0, "hi", max_new_tokens=6, **{penalty: -100.0})])[0]
    assert plain.text != first * 6
    assert looped.text == first * 6 and looped.completion_tokens == 6


def test_repetition_penalty_reaches_generate_and_the_model_defaults_do_not(engine):
    plain = run(engine, [chat(0, "hi", max_new_tokens=8)])[0].text
    assert run(engine, [chat(0, "hi", max_new_tokens=8, repetition_penalty=1.0)])[0].text == plain
    assert run(engine, [chat(0, "hi", max_new_tokens=8, repetition_penalty=0.01)])[0].text != plain
    # The tiny model ships Qwen2.5-Instruct's generation_config (sampling, repetition_penalty
    # 1.05): greedy lines stay greedy and unpenalised; `--sampling model` asks for those values.
    assert engine.recommended_sampling() == {"temperature": 0.7, "top_p": 0.8, "top_k": 20,
                                             "repetition_penalty": 1.05}
    again = Engine.load(str(engine.model.name_or_path), "none", "cpu")
    again.model.generation_config.repetition_penalty = 1.0
    again.model.generation_config.do_sample = False
    assert run(again, [chat(0, "hi", max_new_tokens=8)])[0].text == plain


def test_a_lines_settings_override_the_jobs_which_override_the_models():
    model = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}
    merged = GenerationSettings.merged({"top_k": 5, "temperature": None}, {"temperature": 0.2},
                                       model)
    assert (merged.temperature, merged.top_p, merged.top_k, merged.repetition_penalty) == (
        0.2, 0.8, 5, 1.05)
    assert GenerationSettings.merged({}, {}).greedy  # the default stays greedy


def test_running_out_of_memory_while_measuring_costs_plans_with_assumed_ones(engine, monkeypatch,
                                                                              caplog):
    # A worker measures its cost model at start on shapes sized from its budget; a budget too
    # big for the card must not stop the worker: it plans with the assumed costs, and its first
    # real batch shrinks the budget (the test above). Any other error is not swallowed.
    import logging

    import torch

    from batchq.engine.calibration import measure_costs
    from batchq.engine.costs import ASSUMED

    assert measure_costs(engine.runner).measured  # the same engine, with room: measured
    real_generate = engine.model.generate

    def generate_on_a_small_gpu(*args, **kwargs):
        if kwargs["input_ids"].shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(engine.model, "generate", generate_on_a_small_gpu)
    with caplog.at_level(logging.WARNING, logger="batchq.engine.calibration"):
        assert measure_costs(engine.runner) is ASSUMED
    assert "out of memory while measuring batch costs" in caplog.text

    def broken(*args, **kwargs):
        raise RuntimeError("not a memory problem")

    monkeypatch.setattr(engine.model, "generate", broken)
    with pytest.raises(RuntimeError, match="not a memory problem"):
        measure_costs(engine.runner)


def test_a_cpu_budget_keeps_its_kv_cache_within_a_fifth_of_the_available_ram(engine, monkeypatch):
    # Running out of RAM is not an error a batch can be split on: the kernel kills the worker.
    from batchq.engine import loading
    from batchq.engine.device import Device

    cpu = Device("cpu")
    per_token = loading.kv_bytes_per_token(engine.model.config, 4)  # fp32 on a CPU
    monkeypatch.setattr(loading, "available_ram", lambda: 10**12)
    assert loading.default_budget(engine.model, cpu).max_tokens == loading.CPU_MAX_TOKENS
    monkeypatch.setattr(loading, "available_ram", lambda: 50_000 * per_token)
    assert loading.default_budget(engine.model, cpu).max_tokens == 10_000
    monkeypatch.setattr(loading, "available_ram", lambda: None)  # not Linux: the fixed default
    assert loading.default_budget(engine.model, cpu).max_tokens == loading.CPU_MAX_TOKENS


FAULTS_OF_A_BATCH = """
import resource, sys
from batchq.engine import BatchBudget, Engine, GenerationSettings, PromptIn
engine = Engine.load(sys.argv[1], "none", "cpu", BatchBudget(max_tokens=32768, max_rows=32))
prompts = [PromptIn(i, text=f"Tell me about queue number {i} " * 4,
                    settings=GenerationSettings(max_new_tokens=2)) for i in range(32)]
list(engine.generate(prompts))
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    outputs = list(engine.generate(prompts))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(len(outputs), len(outputs[0].completions), min(faults))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_a_batch_reuses_freed_memory_instead_of_faulting_it_in_at_every_step(tiny_model):
    """A 32-row step's float32 logits over the 151,936-token vocabulary are 19 MB. With glibc's
    defaults a fresh process (a worker) mapped them afresh at each step and faulted every page
    in (14,000-19,000 faults for this batch; generation 1.6x slower at 1-2 tokens); a loaded
    engine reuses the heap's. A process of its own: a test process's malloc has a history. The
    fewest faults of three batches: the host may page out a freed buffer that sits cold between
    two (this machine's kernel runs DAMON with a pageout scheme), and one batch then faults it
    back in (4,771 once in CI), while without the fix every batch faults at every step."""
    done = subprocess.run([sys.executable, "-c", FAULTS_OF_A_BATCH, str(tiny_model)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    batches, rows, faults = map(int, done.stdout.split())
    assert (batches, rows) == (1, 32)  # one batch of 32 rows, two steps
    assert faults < 2000, f"{faults} page faults for one batch"
