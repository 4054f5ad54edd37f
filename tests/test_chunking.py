"""Submit groups a job's lines into chunks of similar length and output limit, largest first."""

from __future__ import annotations

import json
import subprocess
import sys

from sqlalchemy import select

from batchq import service
from batchq.config import Settings
from batchq.store.models import Chunk, Line
from batchq.store.sessions import session_scope


def test_chunks_hold_lines_of_similar_size_largest_first(embedded_env, tmp_path, monkeypatch):
    for key, value in {**embedded_env, "BATCHQ_CHUNK_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env()
    # Short and long prompts alternate in the file; two lines ask for far more output.
    rows = [{"prompt": "x" * (10 if i % 2 else 900)} for i in range(6)]
    rows += [{"prompt": "y", "max_tokens": 900}, {"prompt": "z" * 5, "max_tokens": 800}]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    job_id = service.submit(str(path), "Qwen/Qwen2.5-0.5B-Instruct", settings=settings)

    with session_scope(settings) as session:
        seq_of = dict(session.execute(select(Line.line_no, Line.chunk_seq)
                                      .where(Line.job_id == job_id)).all())
        spans = {c.seq: (c.first_line, c.last_line) for c in session.scalars(
            select(Chunk).where(Chunk.job_id == job_id))}
    by_chunk: dict[int, list[int]] = {}
    for line_no, seq in sorted(seq_of.items()):
        by_chunk.setdefault(seq, []).append(line_no)
    # Largest output limit first, then the long prompts, then the short ones.
    assert by_chunk == {1: [7, 8], 2: [1, 3], 3: [2, 5], 4: [4, 6]}
    assert spans == {seq: (min(lines), max(lines)) for seq, lines in by_chunk.items()}
    assert service.status(job_id, settings).chunks == 4


def _submit_peak_rss(env: dict[str, str], path, lines: int) -> int:
    """Peak RSS (bytes) of `batchq submit` on a file of `lines` generated chat lines, measured
    by a parent process of its own so nothing else counts."""
    from benchmarks.ingest import write_file
    from tests.conftest import BATCHQ

    write_file(path, lines)
    probe = ("import resource, subprocess, sys; "
             "done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "assert done.returncode == 0, done.stderr; "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, BATCHQ, "submit", str(path), "--model",
                          "qwen2.5-0.5b-instruct", "--model-override"],
                         env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip()) * 1024


def test_submit_streams_a_large_file_in_bounded_memory(embedded_env, tmp_path):
    # Memory that grows with the file is the check's per-line bookkeeping (a size key, an id
    # digest), never the lines: 60,000 lines (19 MB) may cost at most 200 bytes a line more
    # than 5,000 lines do, and the whole process stays far under the 300 MB a million-line
    # file is allowed (benchmarks/ingest.py measures that one: 260 MB).
    env = {**embedded_env, "BATCHQ_CHUNK_SIZE": "20000"}
    small = _submit_peak_rss(env, tmp_path / "small.jsonl", 5_000)
    large = _submit_peak_rss(env, tmp_path / "large.jsonl", 60_000)
    assert (tmp_path / "large.jsonl").stat().st_size > 15e6
    assert large - small < 55_000 * 200, (small, large)
    assert large < 200 * 2**20, large


def test_a_big_job_on_postgres_is_planned_on_fresh_statistics(services_env, tmp_path):
    # Right after a bulk load the planner's statistics still say "a few rows", and reads of
    # the job (status, results) took seconds per 100k lines until autovacuum caught up; a
    # big submit analyzes the table itself. Its results come back whole, in input order.
    from benchmarks.ingest import write_file
    from tests.conftest import batchq, sql

    path = tmp_path / "big.jsonl"
    write_file(path, 21_000)
    job = batchq("submit", str(path), "--model", "qwen2.5-0.5b-instruct", "--model-override",
                 env=services_env).stdout.strip()
    [[estimate]] = sql(services_env, "SELECT reltuples FROM pg_class WHERE relname = 'lines'")
    assert estimate >= 21_000
    done = batchq("results", job, env=services_env)
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["custom_id"] for line in out] == [f"r{i}" for i in range(21_000)]
    # Nothing ran yet: plain lines say pending, OpenAI lines have neither response nor error.
    assert all(line["status"] == "pending" for line in out[0::2])
    assert all(line["response"] is None and line["error"] is None for line in out[1::2])


def test_chunk_plan_matches_a_plain_sort_for_every_variant_and_size():
    import random
    from array import array

    from batchq.service.intake import chunk_by_size, variant_of_chunks

    def reference(sizes, chunk_size, variant_of):
        chunk_of, first_seq = [0] * len(sizes), 1
        for group in sorted(set(variant_of)):
            members = [i for i in range(len(sizes)) if variant_of[i] == group]
            order = sorted(members, key=lambda i: (sizes[i], -i), reverse=True)
            for position, index in enumerate(order):
                chunk_of[index] = first_seq + position // chunk_size
            first_seq += -(-len(order) // chunk_size)
        return chunk_of

    rng = random.Random(7)
    for trial in range(200):
        n = rng.randint(1, 60)
        # Ties on size (few distinct values) and the largest keys _size_key can make.
        sizes = array("q", (rng.choice([0, 5, 5, 9, (61 << 40) | ((1 << 40) - 1)])
                            if trial % 2 else rng.randint(0, 1 << 46) for _ in range(n)))
        variants = array("h", (rng.randint(0, rng.randint(0, 3)) for _ in range(n)))
        chunk_size = rng.randint(1, 7)
        chunk_of = chunk_by_size(sizes, chunk_size, variants)
        assert list(chunk_of) == reference(sizes, chunk_size, variants)
        assert variant_of_chunks(chunk_of, variants) == {
            seq: variants[i] for i, seq in enumerate(chunk_of)}
        assert list(chunk_by_size(sizes, chunk_size)) == reference(sizes, chunk_size, [0] * n)
