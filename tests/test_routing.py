"""Several models in one file: each line goes to the variant it names (or the job's --model),
chunks belong to one variant, and the job finishes when all its lines do. Two real variants on
PostgreSQL and Redis: the tiny random Qwen2 and the scripted Qwen3 (which answers 'Three.')."""

from __future__ import annotations

import json
import re

import pytest

from batchq.testing import check_exactly_once
from tests.conftest import batchq, sql, wait_for
from tests.test_faults import job_status, succeeded, wait_final, write_rows

pytestmark = [pytest.mark.services, pytest.mark.e2e]


def rows_for(qwen3: str, n: int) -> list[dict]:
    """Alternating lines: the job's own model, then the Qwen3 by `model` or `body.model`."""
    rows = []
    for i in range(n):
        if i % 3 == 0:
            rows.append({"custom_id": f"own{i}", "prompt": f"Question {i}?"})
        elif i % 3 == 1:
            rows.append({"custom_id": f"q3-{i}", "prompt": f"Count {i}.", "model": qwen3,
                         "enable_thinking": False})
        else:
            rows.append({"custom_id": f"oa-{i}", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": f"{qwen3}:none", "max_tokens": 8,
                                  "messages": [{"role": "user", "content": f"Count {i}."}],
                                  "chat_template_kwargs": {"enable_thinking": False}}})
    return rows


def test_each_line_runs_on_its_own_variant_and_waits_only_for_its_own_worker(
        services_env, tiny_model, thinking_model, start_worker, tmp_path):
    env = {**services_env, "BATCHQ_CHUNK_SIZE": "4", "BATCHQ_LEASE_SECONDS": "2"}
    rows = rows_for(str(thinking_model), 12)
    data = write_rows(tmp_path / "p.jsonl", rows)
    start_worker("--model", str(tiny_model), env=env)
    submitted = batchq("submit", str(data), "--model", str(tiny_model), "--max-new-tokens", "4",
                       env=env)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    assert re.search(r"queued 12 lines in 3 chunk\(s\): 4 on batchq\.local-tiny-qwen2-\w+"
                     r"\.none, 8 on batchq\.local-tiny-qwen3-\w+\.none", submitted.stderr)

    # Only the Qwen2 worker runs: its lines finish; the Qwen3's wait, and status says why.
    wait_for(lambda: succeeded(env, job) == 4, what="the job's own lines")
    shown = json.loads(batchq("status", job, "--json", env=env).stdout)
    assert shown["status"] == "running"
    own, qwen3 = shown["variants"]
    assert (own["counts"]["completed"], own["waiting_for_worker"]) == (4, False)
    assert (qwen3["counts"]["pending"], qwen3["chunks"], qwen3["waiting_for_worker"]) == (8, 2, True)
    assert qwen3["model"] == str(thinking_model) and qwen3["variant"].startswith("local-tiny-qwen3")
    human = batchq("status", job, env=env).stdout
    assert re.search(r"tiny-qwen3 \(none\) on queue \S+: 0/8 done, 0 failed, 8 pending  "
                     r"\(waiting for a worker\)", human), human

    # A Qwen3 worker, killed mid-chunk, and another: every line once, on its own variant.
    victim = start_worker("--model", str(thinking_model), "--max-batch-rows", "2", env=env,
                          faults="slow:1")
    wait_for(lambda: succeeded(env, job) >= 6, what="a Qwen3 batch")
    victim.kill()
    start_worker("--model", str(thinking_model), env=env)
    assert wait_final(env, job) == "completed"
    check_exactly_once(env, job, [r["custom_id"] for r in rows])
    results = [json.loads(x) for x in batchq("results", job, env=env).stdout.splitlines()]
    for row, result in zip(rows, results, strict=True):
        if "body" in row:
            body = result["response"]["body"]
            assert body["model"] == str(thinking_model)  # the real model, not what was named
            assert body["choices"][0]["message"]["content"] == "Three."
        elif "model" in row:
            assert (result["model"], result["output"]) == (str(thinking_model), "Three.")
        else:
            assert result["model"] == str(tiny_model) and result["output"] != "Three."
    page = tmp_path / "job.html"
    assert batchq("report", job, "-o", str(page), env=env).returncode == 0
    text = page.read_text()
    assert "variant 1" in text and "variant 2" in text and "8 lines, 8 succeeded" in text


def test_a_model_nothing_resolves_is_refused_by_line_and_override_runs_it_on_model(
        services_env, tiny_model, thinking_model, tmp_path):
    rows = [{"prompt": "fine"},
            {"custom_id": "x", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}]
    data = write_rows(tmp_path / "p.jsonl", rows)
    refused = batchq("submit", str(data), "--model", str(tiny_model), env=services_env)
    assert refused.returncode == 3 and refused.stdout == ""
    assert (f"{data}:2: field 'body.model': model 'gpt-4o-mini' is neither a catalogue alias "
            "nor an existing directory") in refused.stderr
    assert "--model-override" in refused.stderr
    ran = batchq("run", str(data), "--model", str(tiny_model), "--model-override",
                 "--max-new-tokens", "2", env=services_env)
    assert ran.returncode == 0, ran.stderr
    lines = [json.loads(x) for x in ran.stdout.splitlines()]
    assert lines[1]["response"]["body"]["model"] == str(tiny_model)
    # Without the override, `run` refuses the unknown model before any model loads or any
    # job exists.
    refused = batchq("run", str(data), "--model", str(tiny_model), env=services_env)
    assert refused.returncode == 3 and "'gpt-4o-mini'" in refused.stderr
    assert "no job created" in refused.stderr and not re.search("^job ", refused.stderr, re.M)

    # `run` serves every model its lines name, one after another in this one process.
    mixed = write_rows(tmp_path / "m.jsonl", [
        {"custom_id": "own", "prompt": "hi"},
        {"custom_id": "q3", "prompt": "Count.", "model": str(thinking_model),
         "enable_thinking": False},
        {"custom_id": "own2", "prompt": "hello"}])
    both = batchq("run", str(mixed), "--model", str(tiny_model), "--max-new-tokens", "8",
                  env=services_env)
    assert both.returncode == 0, both.stderr
    out = [json.loads(x) for x in both.stdout.splitlines()]
    assert [(r["custom_id"], r["status"], r["model"]) for r in out] == [
        ("own", "succeeded", str(tiny_model)), ("q3", "succeeded", str(thinking_model)),
        ("own2", "succeeded", str(tiny_model))]
    assert out[1]["output"] == "Three." and out[0]["output"] != "Three."


def test_cancel_and_retry_reach_every_variant(services_env, tiny_model, thinking_model,
                                              start_worker, tmp_path):
    rows = rows_for(str(thinking_model), 6)
    rows[1]["prompt"] = "word " * 5000  # past the context: fails on the Qwen3 variant
    data = write_rows(tmp_path / "p.jsonl", rows)
    job = batchq("submit", str(data), "--model", str(tiny_model), "--max-new-tokens", "2",
                 env=services_env).stdout.strip()
    assert batchq("cancel", job, env=services_env).returncode == 0  # no worker ran any of it
    assert job_status(services_env, job) == "cancelled"
    assert sql(services_env, "SELECT count(*) FROM lines WHERE job_id = :j AND "
                             "status = 'cancelled'", j=job)[0][0] == 6

    job = batchq("submit", str(data), "--model", str(tiny_model), "--max-new-tokens", "2",
                 env=services_env).stdout.strip()
    start_worker("--model", str(tiny_model), env=services_env)
    start_worker("--model", str(thinking_model), env=services_env)
    assert wait_final(services_env, job) == "failed"
    retried = batchq("retry", job, "--wait", env=services_env)
    assert retried.returncode == 6, retried.stderr  # the long line fails again, alone
    failed = [json.loads(x) for x in batchq("results", job, env=services_env).stdout.splitlines()
              if json.loads(x).get("status") == "failed"]
    assert [(f["custom_id"], f["model"]) for f in failed] == [("q3-1", str(thinking_model))]
