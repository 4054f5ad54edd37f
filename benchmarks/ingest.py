"""Ingest: how fast a big file is validated and stored, at what peak memory, and how fast its
results stream back out. Figures for the README's performance section.

    python -m benchmarks.ingest                          # 1,000,000 lines on PostgreSQL
    python -m benchmarks.ingest --lines 200000 --embedded   # on the embedded SQLite default

It writes the file (chat lines and OpenAI batch lines, alternately, 5-60 words each), times
`batchq submit` as a user runs it (a subprocess: its peak RSS is the one reported), marks every
line succeeded with a short output in one SQL statement (no worker: this measures reading, not
generating), then times `batchq results JOB -o FILE`, twice. PostgreSQL runs on a fresh
database on 127.0.0.1:5432 unless BATCHQ_DATABASE_URL is set; the broker is Redis database 12
unless BATCHQ_BROKER_URL is set.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

from batchq.testing import BATCHQ

WORDS = ("alpha", "beta", "gamma", "delta", "summarise", "the", "report", "of", "2026", "naïve")


def write_file(path: Path, lines: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for i in range(lines):
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60)))
            messages = [{"role": "user", "content": words}]
            if i % 2:
                row = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "bench", "messages": messages, "max_tokens": 64}}
            else:
                row = {"custom_id": f"r{i}", "messages": messages, "max_new_tokens": 32}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[-4:])} failed ({done.returncode}):\n{done.stderr}")
    return seconds, done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--embedded", action="store_true", help="SQLite and its broker")
    parser.add_argument("--model", default="qwen2.5-0.5b-instruct",
                        help="the job's model (only named: nothing is loaded)")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="batchq-ingest-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHQ_")}
    env.update(BATCHQ_HOME=str(tmp / "home"), BATCHQ_MAX_FILE_LINES=str(max(args.lines, 1)))
    admin = None
    if not args.embedded:
        url = os.environ.get("BATCHQ_DATABASE_URL")
        if not url:
            name = f"batchq_ingest_{uuid.uuid4().hex[:8]}"
            admin = create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                                  isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        env.update(BATCHQ_DATABASE_URL=url,
                   BATCHQ_BROKER_URL=os.environ.get("BATCHQ_BROKER_URL",
                                                    "redis://127.0.0.1:6379/12"))
    try:
        data = tmp / "lines.jsonl"
        write_file(data, args.lines)
        size = data.stat().st_size
        subprocess.run([BATCHQ, "db", "upgrade"], env=env, capture_output=True, check=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        submit_s, job = timed([BATCHQ, "submit", str(data), "--model", args.model,
                               "--model-override"], env)
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        database = env.get("BATCHQ_DATABASE_URL") or f"sqlite:///{tmp / 'home' / 'batchq.db'}"
        engine = create_engine(database)
        with engine.begin() as conn:  # every line done, as a worker would leave it
            conn.execute(text("UPDATE lines SET status = 'succeeded', output = 'A short answer.', "
                              "finish_reason = 'stop', prompt_tokens = 20, completion_tokens = 4 "
                              "WHERE job_id = :job"), {"job": job})
        engine.dispose()
        # Twice: the first read after the UPDATE also visits every dead row version it left
        # (as a read soon after workers finish would) and sets their hint bits.
        results_s, _ = timed([BATCHQ, "results", job, "-o", str(tmp / "out.jsonl")], env)
        again_s, _ = timed([BATCHQ, "results", job, "-o", str(tmp / "out.jsonl")], env)
        out_lines = sum(1 for _ in (tmp / "out.jsonl").open("rb"))
        assert out_lines == args.lines, (out_lines, args.lines)
        report = {
            "lines": args.lines, "bytes": size,
            "backend": "SQLite (embedded)" if args.embedded else "PostgreSQL + Redis",
            "submit_seconds": round(submit_s, 2),
            "submit_lines_per_s": round(args.lines / submit_s),
            "submit_peak_rss_mib": round(max(peak_kib, before) / 1024, 1),
            "results_seconds": round(results_s, 2),
            "results_lines_per_s": round(args.lines / results_s),
            "results_again_seconds": round(again_s, 2),
            "results_again_lines_per_s": round(args.lines / again_s),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }
        print(json.dumps(report, indent=2))
        if args.json_path:
            Path(args.json_path).write_text(json.dumps(report, indent=2) + "\n")
    finally:
        # The input and output files of a million lines are 600 MB, the SQLite database more.
        shutil.rmtree(tmp, ignore_errors=True)
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


if __name__ == "__main__":
    main()
