"""`batchq bench` on the tiny model: every strategy, the same greedy outputs, figures that add up.

Speed itself is never asserted here; these tests check what the numbers are made of.
"""

from __future__ import annotations

import json
import re

import pytest

from batchq.tools.bench.workload import Workload
from tests.conftest import batchq

SMALL = ["-n", "10", "--prompt-tokens", "8", "96", "--output-tokens", "4", "24", "--seed", "3"]


def test_workload_is_log_uniform_within_its_ranges_and_fixed_by_its_seed():
    prompts = Workload(prompts=400, seed=1).build()
    assert prompts == Workload(prompts=400, seed=1).build()
    lengths = [len(p.token_ids) for p in prompts]
    limits = [p.settings.max_new_tokens for p in prompts]
    assert min(lengths) >= 16 and max(lengths) <= 2048 and 16 <= min(limits) <= max(limits) <= 512
    # Log-uniform: about as many prompts under 181 tokens (the geometric middle) as over it.
    assert 0.4 < sum(n < 181 for n in lengths) / len(lengths) < 0.6
    assert all(200 <= t < 150_000 for p in prompts[:20] for t in p.token_ids)


def test_heavy_tailed_mix_is_mostly_short_with_a_few_very_long_prompts():
    lengths = [len(p.token_ids) for p in Workload(prompts=2000, seed=2, mix="heavy-tailed").build()]
    assert min(lengths) >= 16 and max(lengths) == 2048
    assert sorted(lengths)[1000] < 40  # the median is short
    assert 0.01 < sum(n > 500 for n in lengths) / len(lengths) < 0.05  # the tail is long
    uniform = [len(p.token_ids) for p in Workload(prompts=2000, seed=2, mix="uniform").build()]
    assert 0.45 < sum(n < 1032 for n in uniform) / len(uniform) < 0.55


def test_bench_runs_the_users_own_workload_file_in_process_and_as_a_job(tiny_model, embedded_env,
                                                                       tmp_path):
    mine = tmp_path / "mine.jsonl"
    mine.write_text("\n".join(json.dumps(line) for line in [
        {"custom_id": "short", "messages": [{"role": "user", "content": "Hi"}], "max_new_tokens": 5},
        {"custom_id": "long", "messages": [{"role": "user", "content": "word " * 300}],
         "max_new_tokens": 3},
        {"custom_id": "raw", "method": "POST", "url": "/v1/completions",
         "body": {"model": "x", "prompt": "Once upon a time", "max_tokens": 7}}]) + "\n")
    out = tmp_path / "bench.json"
    res = batchq("bench", str(tiny_model), "--workload", str(mine), "--ignore-eos",
                 "--strategies", "naive,static,auto", "--system", "--repeat", "2",
                 "--json", str(out), env=embedded_env)
    assert res.returncode == 0, res.stderr
    assert f"3 prompts of {mine}" in res.stderr
    assert (f"note: 1 line(s) of {mine} name a model (x: 1); the bench measures one variant "
            f"and runs every line on {tiny_model}\n") in res.stderr
    # Measured, unless timings on a machine this busy made no sense (then the assumed costs).
    how = re.search(r"cost model \((measured|assumed)\): [\d.]+ ms a step", res.stderr)
    assert how, res.stderr
    assert "outputs identical across strategies: yes" in res.stdout
    report = json.loads(out.read_text())
    assert report["workload"] == {"file": str(mine), "prompts": 3}
    assert report["cost_model"]["measured"] is (how.group(1) == "measured")
    for s in report["strategies"]:  # each line's own limit, every row run to it
        assert s["prompts"] == 3 and s["completion_tokens"] == 5 + 3 + 7
    # --repeat 2: two rounds of the strategies in turn, each against its round's naive loop;
    # each reports its median round (the lower of two).
    rounds = {s["strategy"]: s["speedups"] for s in report["strategies"]}
    assert len(rounds["static"]) == len(rounds["auto"]) == 2 and rounds["naive"] == [1.0, 1.0]
    for s in report["strategies"]:
        assert s["speedup_vs_naive"] == min(s["speedups"])
    assert ("median of 2 rounds, in turn; each round's speedup: static " + ", ".join(
        f"{x:.2f}x" for x in rounds["static"])) in res.stdout

    # The same lines as a real job (EOS honoured, as a job's lines must), against the naive
    # loop and the engine alone on the same prompts.
    assert "through queue, database and worker" in res.stdout and "outputs match" in res.stdout
    assert re.search(r"end to end vs the naive loop \(EOS honoured, [\d,]+ output tokens/s\): "
                     r"[\d.]+x", res.stdout)
    system = report["system"]
    assert system["backend"] == "embedded (SQLite)" and system["outputs_match"] is True
    assert system["completion_tokens"] > 0 and system["batches"] >= 1
    assert system["ratio"] == pytest.approx(system["system_tokens_per_s"]
                                            / system["engine_tokens_per_s"])
    # --repeat 2: two pairs, engine alone then job, and the figures are the median pair's
    # (the lower of two).
    runs = system["runs"]
    assert len(runs) == 2 and all(r["ratio"] == pytest.approx(
        r["system_tokens_per_s"] / r["engine_tokens_per_s"]) for r in runs)
    assert system["ratio"] == min(r["ratio"] for r in runs)
    shares = ", ".join(f"{100 * r['ratio']:.0f}%" for r in runs)
    assert f"median of 2 runs, alternating; the job's share in each: {shares}" in res.stdout
    assert res.stderr.count("engine alone (static)") + res.stderr.count(
        "engine alone (auto)") == 2
    for n, r in enumerate(runs, 1):  # and where each pair's time went
        assert 0 < r["engine_generate_seconds"] < r["engine_seconds"]
        assert 0 < r["system_generate_seconds"] < r["system_seconds"]
        line = next(x for x in res.stderr.splitlines() if f"run {n} of 2: " in x)
        assert line.endswith(
            f"in the model's batches {r['engine_generate_seconds']:.2f} s of "
            f"{r['engine_seconds']:.2f} s alone, {r['system_generate_seconds']:.2f} s of "
            f"{r['system_seconds']:.2f} s in the job")
    # Each round ran its own naive loop; the speedup is the median round's (the lower of two).
    for r in runs:
        assert r["speedup_vs_naive"] == pytest.approx(r["system_tokens_per_s"]
                                                      / r["naive_tokens_per_s"])
    assert system["speedup_vs_naive"] == min(r["speedup_vs_naive"] for r in runs)
    assert res.stderr.count("naive loop: ") == 2
    assert ("(median; each round: " + ", ".join(f"{r['speedup_vs_naive']:.2f}x" for r in runs)
            + ")") in res.stdout
    # The bench job ran in a throwaway store: the user's own job list is untouched.
    listed = batchq("status", env=embedded_env)
    assert system["job_id"] not in listed.stdout

    mine.write_text('{"custom_id": "a", "prompt": "fine"}\n{"custom_id": "b", "max_new_tokens": 4}\n')
    res = batchq("bench", str(tiny_model), "--workload", str(mine), env=embedded_env)
    assert res.returncode == 3 and "Traceback" not in res.stderr
    assert f"{mine}: 1 invalid line(s); nothing was run" in res.stderr
    assert f"{mine}:2:" in res.stderr and "loading" not in res.stderr


def test_bench_compares_every_strategy_on_the_same_prompts(tiny_model, embedded_env, tmp_path):
    out = tmp_path / "bench.json"
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["tags"]}))
    res = batchq("bench", str(tiny_model), *SMALL, "--ignore-eos", "--max-batch-rows", "4",
                 "--json", str(out), "--json-schema", str(schema), env=embedded_env)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["strategy", "out", "tok/s"]
    assert [line.split()[0] for line in lines[1:4]] == ["naive", "static", "continuous"]
    assert lines[4] == "outputs identical across strategies: yes"
    assert re.fullmatch(rf"constrained decoding \(static, every prompt held to {re.escape(str(schema))}\): "
                        r"[\d,]+ output tokens/s against [\d,]+ free = \d+%", lines[5])
    assert len(lines) == 6

    report = json.loads(out.read_text())
    assert report["outputs_identical"] is True and report["ignore_eos"] is True
    assert report["budget"]["max_rows"] == 4 and report["system"] is None
    held = report["constrained"]
    assert held["ratio"] == pytest.approx(held["constrained_tokens_per_s"]
                                          / held["free_tokens_per_s"])
    limits = [p.settings.max_new_tokens for p in Workload(10, 3, 8, 96, 4, 24).build()]
    by_name = {s["strategy"]: s for s in report["strategies"]}
    for s in by_name.values():
        assert s["prompts"] == 10
        assert s["completion_tokens"] == sum(limits)  # --ignore-eos: every row runs to its limit
        assert s["output_tokens_per_s"] == pytest.approx(s["completion_tokens"] / s["seconds"])
        assert s["peak_memory_bytes"] is None and s["roofline_pct"] is None  # CPU: no GPU figures
    assert by_name["naive"]["speedup_vs_naive"] == pytest.approx(1.0)
    assert by_name["naive"]["batches"] == 1  # the tutorial loop: 16 rows a batch, arrival order
    assert by_name["static"]["batches"] >= 3  # 4 rows a batch
    assert by_name["continuous"]["padding_pct"] == 0.0
    assert by_name["static"]["wasted_decode_pct"] < by_name["naive"]["wasted_decode_pct"]


@pytest.mark.parametrize("args, fragment", [
    ([], "give a MODEL or --random-weights ALIAS"),
    (["--random-weights", "qwen9-huge"], "no architecture 'qwen9-huge' for random weights"),
    (["MODEL", "--strategies", "static,fastest"], "--strategies: unknown fastest"),
    (["MODEL", "--prompt-tokens", "50", "10"], "--prompt-tokens: the low end 50 is above"),
    (["MODEL", "--mix", "zipf"], "--mix: unknown 'zipf'; choose one of log-uniform, uniform"),
])
def test_bench_refuses_bad_options_in_one_line(tiny_model, embedded_env, args, fragment):
    args = [str(tiny_model) if a == "MODEL" else a for a in args]
    res = batchq("bench", *args, env=embedded_env, timeout=120)
    assert res.returncode == 2 or res.returncode == 4, res.stderr
    assert fragment in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.services
@pytest.mark.parametrize("missing", ["schema", "broker"])
def test_bench_refuses_services_that_could_not_run_a_job_before_timing_anything(
        tiny_model, services_env, missing):
    """Before: the strategies ran for minutes, then the first bench worker exited and the
    refusal came back as 'unexpected error: RuntimeError' with the worker's log."""
    from tests.conftest import free_port, new_pg_database

    with new_pg_database() as empty:
        if missing == "schema":
            env = {**services_env, "BATCHQ_DATABASE_URL": empty}
            fragment = "has no batchq schema; run `batchq db upgrade` first"
        else:
            env = {**services_env, "BATCHQ_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
            fragment = "cannot reach the broker at redis://127.0.0.1:"
        for args in (["--system"], ["--engine", "null"]):
            res = batchq("bench", str(tiny_model), "-n", "4", *args, env=env, timeout=120)
            assert res.returncode == 5, res.stderr
            assert fragment in res.stderr and "Traceback" not in res.stderr
            assert res.stdout == ""  # nothing was measured


def test_worker_budget_times_functions_that_exist_and_splits_each_job_by_them(capsys):
    # benchmarks/worker_budget.py wraps the worker's functions by name and rewrites the bench's
    # worker command: a rename or a new command must fail here, not in the next person's
    # benchmark. Each column it prints is a step it times.
    from batchq.tools.bench.system import BenchWorkers
    from benchmarks import worker_budget as budget

    assert all(callable(getattr(owner, name)) for owner, name, _ in budget.timed_functions())
    bench = BenchWorkers("./tiny", "none", ["--strategy", "static"]).command
    assert budget.timed_worker_command(bench)[3:] == [
        "--worker", "--model", "./tiny", "--quant", "none", "--strategy", "static",
        "--loglevel", "INFO"]
    # The bench itself times the submit; the task's body only splits what no step covers.
    timed = {step for *_, step in budget.TIMED} - {"task"} | {"submit"}
    assert {step for _, steps in budget.STEPS for step in steps} == timed

    def job(at: float, batch: float) -> list[str]:
        return [f"{at} 2.0 job", f"{at} 0.1 submit", f"{at + 0.11} 0.9 task",
                f"{at + 0.11} 0.05 claim", f"{at + 0.16} 0.1 encode", f"{at + 0.26} 0.02 plan",
                f"{at + 0.28} 0.01 first lines in flight", f"{at + 0.3} {batch} batch",
                f"{at + 1.03} 0.94 task", f"{at + 1.5} 0.3 batch", f"{at + 1.8} 0.1 write",
                f"{at + 1.95} 0.02 finish"]

    # Two jobs, and a worker's step after the first one's end that is not part of it.
    budget.print_split("\n".join([*job(100.0, 1.2), "102.5 0.4 batch", *job(200.0, 1.0)]) + "\n")
    *_, header, first, second, medians = capsys.readouterr().out.splitlines()
    assert header.split() == ["job", "submit", "claim", "encode+plan", "batches", "writes",
                              "finish", "lines", "in", "lease", "progress", "to", "1st", "chunk",
                              "between", "after", "last", "rest", "in", "chunks"]
    # 2.0 s each: 0.1 submit, 0.05 claim, 0.12 encoding and planning, the batches, 0.11 of
    # writes (a batch's and the first lines in flight), 0.02 finish; of what is left, 0.01
    # from submit's end to the first task, 0.02 between the two tasks, 0.03 after the last.
    assert first.split() == ["2.000", "0.100", "0.050", "0.120", "1.500", "0.110", "0.020",
                             "0.000", "0.000", "0.000", "0.010", "0.020", "0.030", "0.040"]
    assert second.split() == ["2.000", "0.100", "0.050", "0.120", "1.300", "0.110", "0.020",
                              "0.000", "0.000", "0.000", "0.010", "0.020", "0.030", "0.240"]
    assert medians.split() == ["2.000", "0.100", "0.050", "0.120", "1.400", "0.110", "0.020",
                               "0.000", "0.000", "0.000", "0.010", "0.020", "0.030", "0.140",
                               "(medians)"]
