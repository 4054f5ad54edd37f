"""The fault suite: real workers, PostgreSQL and Redis, and something going wrong mid-job.

Run it alone with `pytest -m fault`. Every test ends with the same check (tests/exactly_once.py):
one final state and at most one output per accepted line, counts that add up, results that
match the inputs by id. Faults are injected by tests/fault_launcher.py, never by batchq itself.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest
from sqlalchemy import create_engine, text

from batchq.testing import check_exactly_once
from tests.conftest import BATCHQ, batchq, sql, stored_status, wait_for

pytestmark = [pytest.mark.fault, pytest.mark.services]


@pytest.fixture
def env(services_env):
    # Short leases, so a dead worker's chunk comes back in seconds (the sweep runs every 1 s).
    return {**services_env, "BATCHQ_LEASE_SECONDS": "2"}


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def rows_of(n, marker_at=None, marker="POISON"):
    return [{"custom_id": f"q{i}", "prompt": f"Question {i}: {marker if i == marker_at else 'why'}?"}
            for i in range(n)]


def submit(env, tiny_model, path, *extra):
    res = batchq("submit", str(path), "--model", str(tiny_model), "--max-new-tokens", "4",
                 *extra, env=env)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def succeeded(env, job):
    return sql(env, "SELECT count(*) FROM lines WHERE job_id = :j AND status = 'succeeded'",
               j=job)[0][0]


def job_status(env, job):
    """The job's status as `batchq status --json` shows it."""
    return json.loads(batchq("status", job, "--json", env=env).stdout)["status"]


def wait_final(env, job, timeout=180):
    """Wait for the job to end; its final status as `batchq status` shows it."""
    wait_for(lambda: stored_status(env, job) in ("completed", "failed", "cancelled"),
             timeout=timeout, what=f"job {job} to finish")
    return job_status(env, job)


def tiny(tiny_model, *extra):
    return ("--model", str(tiny_model), *extra)


def test_kill_9_mid_chunk_runs_the_chunk_again_on_another_worker(env, start_worker, tiny_model,
                                                                  tmp_path):
    env = {**env, "BATCHQ_CHUNK_SIZE": "8"}
    rows = rows_of(16)
    args = tiny(tiny_model, "--max-batch-rows", "2")
    workers = [start_worker(*args, env=env, faults="slow:0.6") for _ in range(2)]
    job = submit(env, tiny_model, write_rows(tmp_path / "p.jsonl", rows))
    wait_for(lambda: len(sql(env, "SELECT 1 FROM chunks WHERE job_id = :j AND status = 'running'",
                             j=job)) == 2 and succeeded(env, job) >= 2, what="both chunks running")
    (seq, holder), = sql(env, "SELECT seq, worker FROM chunks WHERE job_id = :j AND seq = 1", j=job)
    victim = next(w for w in workers if holder.endswith(f":{w.proc.pid}"))
    survivor = next(w for w in workers if w is not victim)
    victim.kill()
    killed = time.monotonic()
    assert wait_final(env, job) == "completed"
    recovery = time.monotonic() - killed
    check_exactly_once(env, job, [r["custom_id"] for r in rows])
    (attempts, worker), = sql(env, "SELECT attempts, worker FROM chunks WHERE job_id = :j "
                                   "AND seq = 1", j=job)
    assert attempts == 2 and worker.endswith(f":{survivor.proc.pid}")
    assert "expired; queued again" in survivor.text()
    assert recovery < 60


def test_broker_flushed_mid_job_loses_no_chunk(env, start_worker, tiny_model, tmp_path,
                                               redis_url):
    import redis

    env = {**env, "BATCHQ_CHUNK_SIZE": "4"}
    rows = rows_of(16)
    worker = start_worker(*tiny(tiny_model, "--max-batch-rows", "2"), env=env,
                          faults="slow:0.4")
    job = submit(env, tiny_model, write_rows(tmp_path / "p.jsonl", rows))
    wait_for(lambda: succeeded(env, job) >= 1, what="the first batch")
    redis.Redis.from_url(redis_url).flushdb()  # three chunks' messages are gone
    assert wait_final(env, job) == "completed"
    check_exactly_once(env, job, [r["custom_id"] for r in rows])
    assert "broker message is missing; sent again" in worker.text()


def test_postgres_connections_killed_mid_job_are_waited_out(env, start_worker, tiny_model,
                                                            tmp_path, pg_url):
    from tests.conftest import PG_ADMIN_URL

    env = {**env, "BATCHQ_CHUNK_SIZE": "4"}
    rows = rows_of(16)
    worker = start_worker(*tiny(tiny_model, "--max-batch-rows", "2"), env=env,
                          faults="slow:0.3")
    job = submit(env, tiny_model, write_rows(tmp_path / "p.jsonl", rows))
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    killed = 0
    try:
        wait_for(lambda: succeeded(env, job) >= 1, what="the first batch")
        database = pg_url.rsplit("/", 1)[1]
        for _ in range(4):
            with admin.connect() as conn:
                killed += len(conn.execute(text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid()"), {"db": database}).all())
            time.sleep(0.7)
    finally:
        admin.dispose()
    assert killed >= 1
    assert wait_final(env, job) == "completed"
    # The counts check would fail if a retried write had doubled a batch; a commit lost in
    # flight could do that, so tokens are checked line by line but not against the chunks.
    check_exactly_once(env, job, [r["custom_id"] for r in rows], generated_once=False)
    assert worker.proc.poll() is None  # it waited the outage out instead of dying


def test_injected_out_of_memory_splits_batches_and_fails_only_what_never_fits(
        env, start_worker, tiny_model, tmp_path):
    rows = rows_of(10) + [{"custom_id": "huge", "prompt": "HUGE prompt"}]
    worker = start_worker(*tiny(tiny_model, "--max-batch-rows", "8"), env=env,
                          faults="oom-above:2,oom-on:HUGE")
    job = submit(env, tiny_model, write_rows(tmp_path / "p.jsonl", rows))
    assert wait_final(env, job) == "failed"
    seen = check_exactly_once(env, job, [r["custom_id"] for r in rows])
    assert seen == {"succeeded": 10, "failed": 1, "cancelled": 0}
    last = json.loads(batchq("results", job, env=env).stdout.splitlines()[-1])
    assert last["custom_id"] == "huge" and last["error"]["message"] == "out of memory"
    assert "out of memory on a batch of" in worker.text()


def test_a_poison_line_that_kills_its_worker_fails_alone_after_max_attempts(
        env, start_worker, tiny_model, tmp_path):
    """The worker is restarted after each crash, as a supervisor would. One write names the
    batches of the next 5 s (once a worker has timed a batch); the poison line's batch starts
    without a write of its own, marked running. Each crash counts an attempt on that batch
    alone: only its lines run alone after it, the batches before and after it run again as
    batches, and the poison line fails after BATCHQ_MAX_ATTEMPTS crashes."""
    env = {**env, "BATCHQ_CHUNK_SIZE": "12", "BATCHQ_MAX_ATTEMPTS": "3",
           "BATCHQ_WRITE_SECONDS": "5"}
    # By length the poison sits between six short lines and five long ones: in the third
    # batch of two or later, whichever end the batches start from. (A new worker's first
    # batch is written alone, untimed; the second write names the rest.)
    rows = [{"custom_id": f"q{i}", "prompt": f"{i} " + "why? " * (1 if i < 6 else 30)}
            for i in range(11)]
    rows.append({"custom_id": "q11", "prompt": "why? " * 12 + "POISON"})
    job = submit(env, tiny_model, write_rows(tmp_path / "p.jsonl", rows))
    crashes = 0
    while stored_status(env, job) not in ("completed", "failed") and crashes < 6:
        worker = start_worker(*tiny(tiny_model, "--max-batch-rows", "2"), env=env,
                              faults="crash-on:POISON")
        wait_for(lambda w=worker: w.proc.poll() is not None
                 or stored_status(env, job) in ("completed", "failed"),
                 what="a crash or the end")
        crashes += worker.proc.poll() is not None
        worker.stop()
    assert crashes == 3
    assert wait_final(env, job) == "failed"
    assert check_exactly_once(env, job, [r["custom_id"] for r in rows]) == {
        "succeeded": 11, "failed": 1, "cancelled": 0}
    poison = json.loads(batchq("results", job, env=env).stdout.splitlines()[11])
    assert poison["custom_id"] == "q11"
    assert poison["error"]["message"].startswith(
        "gave up after 3 attempts: the worker running it stopped each time")
    attempts = dict(sql(env, "SELECT custom_id, attempts FROM lines WHERE job_id = :j", j=job))
    # The poison's batch had one other line at most (two rows a batch), which ran alone once
    # more; all the others ran once. Counting every line in flight, nine ran twice.
    assert attempts.pop("q11") == 3
    assert sorted(attempts.values()) in ([1] * 11, [1] * 10 + [2])


def test_a_line_that_raises_fails_alone_and_retry_runs_only_it_again(
        env, start_worker, tiny_model, tmp_path):
    rows = rows_of(5, marker_at=1, marker="BADLINE")
    ids = [r["custom_id"] for r in rows]
    faulty = start_worker(*tiny(tiny_model), env=env, faults="raise-on:BADLINE")
    job = submit(env, tiny_model, write_rows(tmp_path / "p.jsonl", rows))
    assert wait_final(env, job) == "failed"
    check_exactly_once(env, job, ids)
    before = [json.loads(x) for x in batchq("results", job, env=env).stdout.splitlines()]
    assert before[1]["error"]["message"] == (
        "gave up after 3 attempts: generation failed: RuntimeError: injected failure")
    assert [x["status"] for x in before] == ["succeeded", "failed", "succeeded", "succeeded",
                                             "succeeded"]
    finished = dict(sql(env, "SELECT custom_id, finished_at FROM lines WHERE job_id = :j", j=job))
    faulty.stop()

    start_worker(*tiny(tiny_model), env=env)  # the fault is fixed
    res = batchq("retry", job[:12], "--wait", env=env)
    assert res.returncode == 0, res.stderr
    assert f"job {job}: 1 failed line(s) queued again in 1 chunk(s)" in res.stderr
    check_exactly_once(env, job, ids)
    after = [json.loads(x) for x in batchq("results", job, env=env).stdout.splitlines()]
    assert after[1]["status"] == "succeeded" and after[1]["error"] is None
    assert [a for i, a in enumerate(after) if i != 1] == [b for i, b in enumerate(before) if i != 1]
    again = dict(sql(env, "SELECT custom_id, finished_at FROM lines WHERE job_id = :j", j=job))
    assert all(again[k] == finished[k] for k in ids if k != "q1")  # the others were not rerun
    nothing = batchq("retry", job, env=env)
    assert nothing.returncode == 0 and "no failed line to retry" in nothing.stderr


def test_the_same_chunk_delivered_twice_at_once_runs_once(env, start_worker, tiny_model,
                                                          tmp_path):
    from batchq.config import Settings
    from batchq.queue.publish import ChunkMessage, publish

    env = {**env, "BATCHQ_CHUNK_SIZE": "8"}
    rows = rows_of(8)
    workers = [start_worker(*tiny(tiny_model, "--max-batch-rows", "2"), env=env,
                            faults="slow:0.3") for _ in range(2)]
    job = submit(env, tiny_model, write_rows(tmp_path / "p.jsonl", rows))
    (chunk_id, queue), = sql(env, "SELECT c.id, j.queue FROM chunks c JOIN jobs j "
                                  "ON j.id = c.job_id WHERE c.job_id = :j", j=job)
    publish(Settings.from_env(env), [ChunkMessage(chunk_id, queue, "again")])  # a second one, at once
    assert wait_final(env, job) == "completed"
    check_exactly_once(env, job, [r["custom_id"] for r in rows])
    assert sql(env, "SELECT attempts FROM chunks WHERE id = :c", c=chunk_id) == [(1,)]
    assert {a for (a,) in sql(env, "SELECT attempts FROM lines WHERE job_id = :j", j=job)} == {1}
    wait_for(lambda: any("skipped: held by another worker" in w.text()
                         or "skipped: already final" in w.text() for w in workers),
             what="the second delivery to be skipped")


def test_sigterm_hands_the_chunk_back_at_a_batch_boundary(env, start_worker, tiny_model,
                                                          tmp_path):
    # Batches of 0.5 s, four a write: the shutdown comes while later batches' lines are
    # already named in flight. (The cancel test below writes after every batch.)
    env = {**env, "BATCHQ_CHUNK_SIZE": "12", "BATCHQ_WRITE_SECONDS": "2"}
    rows = rows_of(12)
    first = start_worker(*tiny(tiny_model, "--max-batch-rows", "1"), env=env, faults="slow:0.5")
    job = submit(env, tiny_model, write_rows(tmp_path / "p.jsonl", rows))
    wait_for(lambda: succeeded(env, job) >= 2, what="two lines")
    asked = time.monotonic()
    os.killpg(first.proc.pid, signal.SIGTERM)
    assert first.proc.wait(timeout=20) == 0
    stopped_in = time.monotonic() - asked
    assert stopped_in < 10
    (status, holder), = sql(env, "SELECT status, worker FROM chunks WHERE job_id = :j", j=job)
    done = succeeded(env, job)
    assert status == "queued" and holder is None and 2 <= done < 12
    assert "handed back at shutdown" in first.text()

    start_worker(*tiny(tiny_model), env=env)
    assert wait_final(env, job) == "completed"
    check_exactly_once(env, job, [r["custom_id"] for r in rows])
    # No line was started twice: the batch in flight finished before the handback, and the
    # attempts counted ahead for batches that never started were taken back.
    assert {a for (a,) in sql(env, "SELECT attempts FROM lines WHERE job_id = :j", j=job)} == {1}


def test_cancel_stops_a_running_chunk_at_the_next_batch_and_keeps_what_finished(
        env, start_worker, tiny_model, tmp_path):
    env = {**env, "BATCHQ_CHUNK_SIZE": "12"}
    rows = rows_of(12)
    worker = start_worker(*tiny(tiny_model, "--max-batch-rows", "1"), env=env,
                          faults="slow:0.5")
    job = submit(env, tiny_model, write_rows(tmp_path / "p.jsonl", rows))
    wait_for(lambda: succeeded(env, job) >= 2, what="two lines")
    res = batchq("cancel", job, env=env)
    assert res.returncode == 0 and " cancelled: " in res.stdout
    wait_for(lambda: sql(env, "SELECT status FROM chunks WHERE job_id = :j", j=job) == [("done",)],
             timeout=10, what="the chunk to stop")
    assert "'stopped': 'cancelled'" in worker.text()
    seen = check_exactly_once(env, job, [r["custom_id"] for r in rows], generated_once=False)
    assert seen["succeeded"] >= 2 and seen["cancelled"] >= 1 and seen["failed"] == 0
    assert job_status(env, job) == "cancelled"


# ---------------------------------------------------------------- Redis restarting

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A Redis of this test's own, so it can be stopped and started again (empty)."""

    def __init__(self, tmp_path):
        self.port = _free_port()
        self.dir = tmp_path
        self.proc = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)], stdout=subprocess.DEVNULL)
        wait_for(lambda: _port_open(self.port), timeout=10, interval=0.1, what="redis")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def private_redis(tmp_path):
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def test_redis_restarting_empty_is_waited_out_by_workers_and_submit(
        env, start_worker, tiny_model, tmp_path, private_redis):
    env = {**env, "BATCHQ_BROKER_URL": private_redis.url, "BATCHQ_CHUNK_SIZE": "4"}
    rows = rows_of(12)
    data = write_rows(tmp_path / "p.jsonl", rows)
    start_worker(*tiny(tiny_model, "--max-batch-rows", "2"), env=env, faults="slow:0.3")
    job = submit(env, tiny_model, data)
    wait_for(lambda: succeeded(env, job) >= 1, what="the first batch")
    private_redis.stop()  # the queued messages die with it
    time.sleep(2)
    private_redis.start()
    assert wait_final(env, job) == "completed"
    check_exactly_once(env, job, [r["custom_id"] for r in rows])

    # A submit that starts while Redis is down goes through once it is back.
    private_redis.stop()
    late = subprocess.Popen(
        [BATCHQ, "submit", str(data), "--model", str(tiny_model),
         "--max-new-tokens", "4"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    time.sleep(2)
    private_redis.start()
    out, err = late.communicate(timeout=60)
    assert late.returncode == 0, err
    assert wait_final(env, out.strip()) == "completed"
    check_exactly_once(env, out.strip(), [r["custom_id"] for r in rows])

