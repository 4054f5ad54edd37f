"""What the tests and the soak share: running real workers, and the check every fault test
ends with.

`check_exactly_once` asserts the promise of the README's reliability section for a finished
job: each accepted line ended exactly once. It reads through the real CLI (`status --json`,
`results`) and then straight from the database, so a wrong count in either place shows.
`WorkerProcess` runs `batchq worker` as a subprocess that can be killed (-9) or stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

from sqlalchemy import create_engine, text

BATCHQ = str(Path(sys.executable).parent / "batchq")
FINAL = ("succeeded", "failed", "cancelled")

# How a worker's process starts: subprocess.Popen, or what a test suite puts in its place
# with the same arguments and the same Popen methods (tests/forkserver.py forks workers
# from a process that has imported batchq already).
start_process: Callable[..., Any] = subprocess.Popen

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 120, interval: float | None = None,
             what: str = "condition") -> T:
    """Poll until `predicate` returns something true, and return it. With no `interval`, the
    pause starts at 0.2 s and grows to 1 s: a quick condition is seen at once, and a long wait
    does not spend the machine's CPU on polling (many predicates run the `batchq` CLI)."""
    deadline = time.monotonic() + timeout
    pause = interval or 0.2
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        if interval is None:
            pause = min(pause * 1.5, 1.0)
    raise AssertionError(f"timed out waiting for {what}")


class WorkerProcess:
    """`batchq worker ARGS` in its own process group, logging to `log`. `command` replaces
    the `batchq` executable (the tests' fault launcher)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path,
                 command: list[str] | None = None, cwd: Path | None = None):
        self.log = log
        self._file: IO[str] = log.open("w")
        self.proc = start_process([*(command or [BATCHQ]), "worker", *args], env=env,
                                  stdout=self._file, stderr=subprocess.STDOUT,
                                  start_new_session=True, cwd=cwd)

    def text(self) -> str:
        return self.log.read_text()

    def wait_ready(self, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.text():
                return self.text()
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.text()}")
            time.sleep(0.2)
        raise AssertionError(f"worker not ready after {timeout}s:\n{self.text()}")

    def kill(self) -> None:
        """kill -9: no handback, no goodbye; its lease must run out."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        stop_all([self])


def stop_all(workers: list[WorkerProcess], timeout: float = 30) -> None:
    """SIGTERM every worker at once (each hands back its chunk), then wait for them all;
    any still running after `timeout` is killed."""
    running = [w for w in workers if w.proc.poll() is None]
    for worker in running:
        os.killpg(worker.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for worker in running:
        try:
            worker.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(worker.proc.pid, signal.SIGKILL)
            worker.proc.wait()
    for worker in workers:
        worker._file.close()


def _cli(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run([BATCHQ, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def check_exactly_once(env: dict[str, str], job_id: str, expected_ids: list[str],
                       generated_once: bool = True) -> dict[str, int]:
    """Assert the promises of a finished job; returns its counts by line status.

    expected_ids: the custom_id of every input line, in input order.
    generated_once: also require that the tokens the chunks recorded equal the tokens of the
    succeeded lines, i.e. no batch's results were computed for lines already final. (Not true
    after a cancel: the batch in flight runs to its end and its lines stay cancelled.)
    """
    info = json.loads(_cli("status", job_id, "--json", env=env))
    assert info["status"] in ("completed", "failed", "cancelled"), info["status"]
    counts = info["counts"]
    assert counts["pending"] == 0, counts
    assert counts["total"] == len(expected_ids), (counts, len(expected_ids))
    assert counts["completed"] + counts["failed"] + counts["cancelled"] == counts["total"], counts

    lines = [json.loads(x) for x in _cli("results", job_id, env=env).splitlines()]
    assert [line["custom_id"] for line in lines] == expected_ids  # every line, in input order
    seen = {"succeeded": 0, "failed": 0, "cancelled": 0}
    for line in lines:
        if "response" in line:  # the OpenAI batch format
            state = "succeeded" if line["response"] else (
                "cancelled" if line["error"]["code"] == "cancelled" else "failed")
            assert (line["response"] is None) != (line["error"] is None), line
        else:
            state = line["status"]
            assert state in FINAL, line
            assert (line["output"] is not None) == (state == "succeeded"), line
            assert (line["error"] is None) == (state == "succeeded"), line
        if state != "succeeded":
            assert line["error"]["message"], line
        seen[state] += 1
    assert seen == {"succeeded": counts["completed"], "failed": counts["failed"],
                    "cancelled": counts["cancelled"]}, (seen, counts)

    engine = create_engine(env["BATCHQ_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT line_no, status, output IS NOT NULL, completion_tokens, attempts "
                "FROM lines WHERE job_id = :job"), {"job": info["id"]}).all()
            chunk_tokens = conn.execute(text(
                "SELECT COALESCE(SUM(completion_tokens), 0) FROM chunks WHERE job_id = :job"),
                {"job": info["id"]}).scalar_one()
    finally:
        engine.dispose()
    assert len(rows) == len({r[0] for r in rows}) == len(expected_ids)  # one row per line
    for _, status, has_output, _, attempts in rows:
        assert status in FINAL and has_output == (status == "succeeded")
        if status == "succeeded":
            assert attempts >= 1
    if generated_once:
        line_tokens = sum(r[3] or 0 for r in rows if r[1] == "succeeded")
        assert int(chunk_tokens) == line_tokens, (int(chunk_tokens), line_tokens)
    return seen

