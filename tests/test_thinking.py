"""Qwen3 thinking mode, proved on a tiny Qwen3 whose greedy decoding really thinks: it writes
`<think>Okay, the user wants a count</think>` and then answers `Three.` (batchq/tools/tiny.py).
The reasoning is kept apart from the answer in every result format, through the real worker."""

import json

import pytest

from batchq.engine import Engine, GenerationSettings, PromptIn
from tests.conftest import batchq

REASONING, ANSWER = "Okay, the user wants a count", "Three."


@pytest.fixture(scope="module")
def engine(thinking_model):
    return Engine.load(str(thinking_model), "none", "cpu")


def ask(engine, *prompts):
    out = {c.key: c for batch in engine.generate(prompts) for c in batch.completions}
    return [out[p.key] for p in prompts]


def chat(key, content="How many sheep?", **settings):
    return PromptIn(key, [{"role": "user", "content": content}],
                    settings=GenerationSettings(**{"max_new_tokens": 30, **settings}))


def test_reasoning_is_kept_apart_and_thinking_off_answers_at_once(engine):
    default, on, off = ask(engine, chat(0), chat(1, thinking=True), chat(2, thinking=False))
    for thought in (default, on):  # Qwen3's template thinks unless told not to
        assert (thought.text, thought.reasoning, thought.finish_reason) == (ANSWER, REASONING,
                                                                            "stop")
        # <think>, 7 tokens of reasoning, </think>; then "\n\n", "Three", "." and <|im_end|>.
        assert (thought.reasoning_tokens, thought.completion_tokens) == (9, 13)
    assert (off.text, off.reasoning, off.reasoning_tokens, off.completion_tokens) == (
        ANSWER, None, 0, 3)
    assert off.prompt_tokens == default.prompt_tokens + 4  # the empty block the template adds


def test_lines_that_differ_only_in_thinking_share_a_batch(engine):
    batches = list(engine.generate([chat(0), chat(1, thinking=False), chat(2, thinking=True)]))
    assert [b.stats.rows for b in batches] == [3]


def test_an_output_cut_off_while_thinking_says_so_and_keeps_the_partial_reasoning(engine):
    (cut,) = ask(engine, chat(0, max_new_tokens=3))
    assert (cut.text, cut.finish_reason, cut.reasoning) == ("", "length", "Okay,")
    assert cut.reasoning_tokens == cut.completion_tokens == 3


def test_stop_strings_apply_to_the_answer_never_to_the_reasoning(engine):
    in_reasoning, in_answer, off = ask(engine, chat(0, stop=("user",)), chat(1, stop=("ee.",)),
                                       chat(2, stop=("ee.",), thinking=False))
    assert (in_reasoning.text, in_reasoning.reasoning) == (ANSWER, REASONING)
    assert (in_answer.text, in_answer.finish_reason, in_answer.reasoning) == ("Thr", "stop",
                                                                              REASONING)
    assert (off.text, off.reasoning) == ("Thr", None)


def test_soft_switches_reach_the_model_and_an_empty_block_is_read(engine):
    codec = engine.codec
    ids = codec.encode(chat(0, "How many? /no_think"))
    assert codec.tokenizer.decode(ids).endswith("How many? /no_think<|im_end|>\n<|im_start|>assistant\n")
    # What Qwen3 writes after /no_think: an empty block, then the answer.
    empty = codec.tokenizer("<think>\n\n</think>\n\nSure.", add_special_tokens=False)["input_ids"]
    thought, answer = codec.split_reasoning(ids, empty)
    assert codec.tokenizer.decode(thought).strip() == "" and codec.tokenizer.decode(answer).strip() == "Sure."
    # Thinking-2507 templates open the block in the prompt: the output holds only </think>.
    opened = ids + [codec.think_ids[0]]
    tail = codec.tokenizer("Hmm.</think>\n\nSure.", add_special_tokens=False)["input_ids"]
    thought, answer = codec.split_reasoning(opened, tail)
    assert codec.tokenizer.decode(thought) == "Hmm." and codec.tokenizer.decode(answer).strip() == "Sure."


@pytest.mark.services
@pytest.mark.e2e
def test_thinking_through_the_worker_in_every_result_format(services_env, thinking_model,
                                                            start_worker, tmp_path):
    start_worker("--model", str(thinking_model), env=services_env)
    rows = [
        {"custom_id": "default", "prompt": "How many sheep?"},
        {"custom_id": "off", "prompt": "How many sheep?", "enable_thinking": False},
        {"custom_id": "cut", "prompt": "How many sheep?", "max_tokens": 3},
        {"custom_id": "stop", "prompt": "How many sheep?", "stop": ["ee.", "user"]},
        {"custom_id": "oa-think", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": str(thinking_model), "messages": [{"role": "user", "content": "Count."}]}},
        {"custom_id": "oa-off", "method": "POST", "url": "/v1/chat/completions",
         "body": {"messages": [{"role": "user", "content": "Count."}],
                  "chat_template_kwargs": {"enable_thinking": False}}},
    ]
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = batchq("submit", str(data), "--model", str(thinking_model), "--wait",
                  env=services_env)
    assert done.returncode == 0, done.stderr
    out = {r["custom_id"]: r for r in map(json.loads, batchq(
        "results", done.stdout.strip(), env=services_env).stdout.splitlines())}
    assert list(out) == [r["custom_id"] for r in rows]  # input order

    assert out["default"]["output"] == ANSWER and out["default"]["reasoning"] == REASONING
    assert out["default"]["usage"] == {"prompt_tokens": out["default"]["usage"]["prompt_tokens"],
                                       "completion_tokens": 13, "total_tokens":
                                       out["default"]["usage"]["prompt_tokens"] + 13,
                                       "completion_tokens_details": {"reasoning_tokens": 9}}
    assert out["off"]["output"] == ANSWER and "reasoning" not in out["off"]
    assert "completion_tokens_details" not in out["off"]["usage"]
    assert (out["cut"]["output"], out["cut"]["finish_reason"], out["cut"]["reasoning"]) == (
        "", "length", "Okay,")
    assert (out["stop"]["output"], out["stop"]["reasoning"]) == ("Thr", REASONING)

    body = out["oa-think"]["response"]["body"]
    message = body["choices"][0]["message"]
    assert (message["content"], message["reasoning_content"]) == (ANSWER, REASONING)
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 9}
    message = out["oa-off"]["response"]["body"]["choices"][0]["message"]
    assert message == {"role": "assistant", "content": ANSWER}
    # The job counts its lines' reasoning among its completion tokens (and an HTTP batch's
    # usage.output_tokens_details.reasoning_tokens is this count).
    usages = [r["usage"] if "usage" in r else r["response"]["body"]["usage"] for r in out.values()]
    metrics = json.loads(batchq("status", done.stdout.strip(), "--json",
                                env=services_env).stdout)["metrics"]
    assert metrics["reasoning_tokens"] == sum(
        u.get("completion_tokens_details", {}).get("reasoning_tokens", 0) for u in usages) > 18
    assert metrics["completion_tokens"] == sum(u["completion_tokens"] for u in usages)

    # The whole job with thinking off, where no line says otherwise.
    data.write_text(json.dumps({"custom_id": "a", "prompt": "How many sheep?"}) + "\n"
                    + json.dumps({"custom_id": "b", "prompt": "And now?",
                                  "enable_thinking": True}) + "\n")
    done = batchq("submit", str(data), "--model", str(thinking_model), "--thinking", "off",
                  "--wait", env=services_env)
    assert done.returncode == 0, done.stderr
    a, b = map(json.loads, batchq("results", done.stdout.strip(), env=services_env)
               .stdout.splitlines())
    assert "reasoning" not in a and b["reasoning"] == REASONING and a["output"] == b["output"]
