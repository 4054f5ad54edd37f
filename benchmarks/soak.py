"""Soak: one big job over several workers that are killed (-9) at random, then the
exactly-once check. Figures for the README's reliability section.

    python -m benchmarks.soak                      # 10,000 lines, 2 workers, kills every 4-10 s
    python -m benchmarks.soak --lines 2000 --json soak.json

It runs on the real services: BATCHQ_DATABASE_URL and BATCHQ_BROKER_URL if set, else a fresh
database on the local PostgreSQL (127.0.0.1:5432) and Redis database 12 (127.0.0.1:6379),
with the tiny offline model. The script is the supervisor: it restarts each killed worker, as
Docker's restart policy would.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

from batchq.testing import BATCHQ, WorkerProcess, check_exactly_once, stop_all

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _fresh_database() -> str:
    name = f"batchq_soak_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"


class Worker:
    """One supervised worker slot: started again, with a new log, each time it dies."""

    def __init__(self, n: int, args: list[str], env: dict[str, str], logs: Path):
        self.n, self.args, self.env, self.logs = n, args, env, logs
        self.process: WorkerProcess | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.process = WorkerProcess(self.args, self.env,
                                     self.logs / f"worker-{self.n}.{self.starts}.log")

    @property
    def proc(self) -> subprocess.Popen:
        assert self.process is not None
        return self.process.proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kill-every", type=float, nargs=2, default=(4.0, 10.0),
                        metavar=("MIN", "MAX"), help="seconds between kills (uniform)")
    parser.add_argument("--lease", type=int, default=5, help="BATCHQ_LEASE_SECONDS")
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--json", dest="json_path")
    opts = parser.parse_args()
    rng = random.Random(opts.seed)

    work = Path(tempfile.mkdtemp(prefix="batchq-soak-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHQ_")}
    env.update(BATCHQ_HOME=str(work / "home"), BATCHQ_LEASE_SECONDS=str(opts.lease),
               BATCHQ_CHUNK_SIZE=str(opts.chunk_size), PYTHONUNBUFFERED="1",
               BATCHQ_DATABASE_URL=os.environ.get("BATCHQ_DATABASE_URL") or _fresh_database(),
               BATCHQ_BROKER_URL=os.environ.get("BATCHQ_BROKER_URL")
               or "redis://127.0.0.1:6379/12")
    if "BATCHQ_DATABASE_URL" not in os.environ:
        subprocess.run([BATCHQ, "db", "upgrade"], env=env, check=True, capture_output=True)
    model = subprocess.run([BATCHQ, "make-tiny-model", str(work / "tiny")], env=env, check=True,
                           capture_output=True, text=True).stdout.strip()

    topics = ["queues", "leases", "GPUs", "tokenizers", "databases", "sorting", "caches"]
    rows = [{"custom_id": f"soak-{i}",
             "prompt": f"Line {i}: explain {rng.choice(topics)} " + "briefly " * rng.randint(0, 40)}
            for i in range(opts.lines)]
    data = work / "soak.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    workers = [Worker(n, ["--model", model], env, work) for n in range(opts.workers)]
    for w in workers:
        w.start()
    time.sleep(8)  # let them load before the clock starts
    started = time.monotonic()
    job = subprocess.run([BATCHQ, "submit", str(data), "--model", model, "--max-new-tokens",
                          str(opts.max_new_tokens)], env=env, check=True, capture_output=True,
                         text=True).stdout.strip()
    db = create_engine(env["BATCHQ_DATABASE_URL"])

    def query(sql: str, **params):
        with db.connect() as conn:
            return conn.execute(text(sql), params).all()

    def finished() -> bool:
        return query("SELECT status FROM jobs WHERE id = :j", j=job)[0][0] in (
            "completed", "failed", "cancelled")

    kills: list[dict] = []
    next_kill = time.monotonic() + rng.uniform(*opts.kill_every)
    while not finished():
        if time.monotonic() > started + opts.timeout:
            sys.exit(f"soak: job {job} not finished after {opts.timeout}s")
        for w in workers:  # the supervisor: restart what died
            if w.proc.poll() is not None:
                w.start()
        for k in kills:
            if k["chunk"] is None or k["recovered_s"] is not None:
                continue
            (attempts, status), = query("SELECT attempts, status FROM chunks WHERE id = :c",
                                        c=k["chunk"])
            since = round(time.monotonic() - k["at"], 2)
            moved = attempts > k["attempts"] or status == "done"
            if k["requeued_s"] is None and (moved or status == "queued"):
                k["requeued_s"] = since  # the sweep found the expired lease
            if moved:
                k["recovered_s"] = since  # a worker claimed it again
        if time.monotonic() >= next_kill:
            victim = rng.choice(workers)
            held = query("SELECT id, attempts FROM chunks WHERE status = 'running' AND "
                         "worker LIKE :w", w=f"%:{victim.proc.pid}")
            assert victim.process is not None
            victim.process.kill()
            kills.append({"worker": victim.n, "chunk": held[0][0] if held else None,
                          "attempts": held[0][1] if held else None, "at": time.monotonic(),
                          "requeued_s": None, "recovered_s": None})
            victim.start()
            next_kill = time.monotonic() + rng.uniform(*opts.kill_every)
        time.sleep(0.2)
    wall = time.monotonic() - started
    stop_all([w.process for w in workers if w.process is not None])

    seen = check_exactly_once(env, job, [r["custom_id"] for r in rows], generated_once=False)
    (stored, distinct, rerun), = query(
        "SELECT count(*), count(DISTINCT line_no), count(*) FILTER (WHERE attempts > 1) "
        "FROM lines WHERE job_id = :j", j=job)
    (chunk_tokens,), = query("SELECT COALESCE(SUM(completion_tokens), 0) FROM chunks "
                             "WHERE job_id = :j", j=job)
    (line_tokens,), = query("SELECT COALESCE(SUM(completion_tokens), 0) FROM lines "
                            "WHERE job_id = :j AND status = 'succeeded'", j=job)
    recoveries = [k["recovered_s"] for k in kills if k["recovered_s"] is not None]
    requeues = [k["requeued_s"] for k in kills if k["requeued_s"] is not None]
    report = {
        "date": time.strftime("%Y-%m-%d"), "lines": opts.lines, "workers": opts.workers,
        "lease_seconds": opts.lease, "chunk_size": opts.chunk_size,
        "kills": len(kills), "kills_mid_chunk": sum(1 for k in kills if k["chunk"]),
        "outcome": seen, "stored_rows": stored, "duplicate_outputs": stored - distinct,
        "lines_run_more_than_once": rerun,
        "tokens_recorded_twice": int(chunk_tokens) - int(line_tokens),
        # Kill -> the sweep puts the chunk back in the queue (lease expiry + sweep interval).
        "requeue_seconds_median": statistics.median(requeues) if requeues else None,
        "requeue_seconds_max": max(requeues) if requeues else None,
        # Kill -> a worker claims it again: includes waiting behind the job's queued chunks.
        "reclaim_seconds_median": statistics.median(recoveries) if recoveries else None,
        "reclaim_seconds_max": max(recoveries) if recoveries else None,
        "wall_seconds": round(wall, 1), "lines_per_second": round(opts.lines / wall, 1)}
    print(json.dumps(report, indent=2))
    if opts.json_path:
        Path(opts.json_path).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
