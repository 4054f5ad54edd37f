"""Where a job's seconds go: `batchq bench --system` with the steps of its worker timed.
Figures for the README's performance section.

    python -m benchmarks.worker_budget ./tiny -n 2000 --prompt-tokens 16 64 --output-tokens 1 2

It runs `batchq bench MODEL [options] --strategies static --system` (the pairs of engine alone
and job, printed as usual; the strategy is always static, whose planning is timed), but its
worker is this module in `--worker` mode: the real `batchq worker`, with a timer around each
step of a chunk (the claim, reading the claimed lines, encoding and planning the prompts, the
model's batches, each batch's write, the finish, starting and stopping the lease keeper, the
progress events). Then it prints, for every timed job, how its seconds from submit to the end
the database records split into those steps, and the median of each over the jobs. What no
step covers is split by where the worker was: before its first chunk's task, between its tasks
(Celery's hop from one message to the next), after its last task (the last chunk's tail), and
inside its tasks between their steps. The timers only wrap functions (a few microseconds a
call); nothing the worker does changes. Set BATCHQ_DATABASE_URL and BATCHQ_BROKER_URL for
PostgreSQL + Redis, as for `batchq bench --system`; without them, the bench's throwaway
embedded store and broker are used.
"""

from __future__ import annotations

import functools
import importlib
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

EVENTS = "BATCHQ_BUDGET_EVENTS"  # the file the worker and the bench append their timings to

# What a job's seconds are made of, in the order printed: (column, the timed steps it sums).
STEPS = [
    ("submit", ("submit",)),
    ("claim", ("claim",)),
    ("encode+plan", ("encode", "plan")),
    ("batches", ("batch",)),
    ("writes", ("write", "first lines in flight")),
    ("finish", ("finish", "last tail")),
    ("lines in", ("lines in",)),
    ("lease", ("lease",)),
    ("progress", ("progress",)),
]


class Timings:
    """Appends `start seconds step` lines to a file, on the wall clock that the bench and
    the worker share. Only the main thread's calls count: the lease keeper's renewals run
    beside the chunk, not in its time."""

    def __init__(self, path: str):
        self.out = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (process-long)

    def note(self, step: str, started: float, seconds: float) -> None:
        self.out.write(f"{started:.6f} {seconds:.6f} {step}\n")

    def wrap(self, owner: Any, name: str, step: str) -> None:
        original: Callable[..., Any] = getattr(owner, name)  # a name that moved fails here, loudly

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.time()
            try:
                return original(*args, **kwargs)
            finally:
                if threading.current_thread() is threading.main_thread():
                    self.note(step, started, time.time() - started)

        setattr(owner, name, timed)


# The worker's functions timed, by the step each counts in: (module, class, function, step).
TIMED = [
    ("batchq.store.transitions", "Transitions", "claim", "claim"),
    ("batchq.store.transitions", "Transitions", "start_batch", "first lines in flight"),
    ("batchq.store.transitions", "Transitions", "record_batches", "write"),
    ("batchq.store.transitions", "Transitions", "finish", "finish"),
    # A finish runs in the worker's tail, beside the next chunk: what the chunk waits for it.
    ("batchq.worker.tail", "ChunkTail", "wait", "last tail"),
    ("batchq.engine.codec", "PromptCodec", "encode_all", "encode"),
    ("batchq.engine.strategies.static", "StaticBatches", "plan", "plan"),
    ("batchq.engine.runner", "ModelRunner", "run_padded", "batch"),
    ("batchq.worker.chunk_run", "ChunkRun", "__init__", "lines in"),  # their requests parsed
    ("batchq.worker.leases", "LeaseKeeper", "__enter__", "lease"),
    ("batchq.worker.leases", "LeaseKeeper", "__exit__", "lease"),
    ("celery", "Task", "send_event", "progress"),
    # The task's body: not a step of its own, but where "the rest" is spent, around it or in it.
    ("batchq.worker.task", None, "handle_chunk", "task"),
]


def timed_functions() -> list[tuple[Any, str, str]]:
    """(class or module, function name, step) for each of TIMED, imported."""
    return [(getattr(importlib.import_module(module), owner) if owner
             else importlib.import_module(module), name, step)
            for module, owner, name, step in TIMED]


def run_worker(argv: list[str]) -> None:
    """`batchq worker ARGS`, timed."""
    from batchq.cli import cli

    timings = Timings(os.environ[EVENTS])
    for owner, name, step in timed_functions():
        timings.wrap(owner, name, step)
    cli(["worker", *argv], prog_name="batchq")


WORKER = [sys.executable, "-m", "batchq", "worker"]  # how the bench starts its workers


def timed_worker_command(command: list[str]) -> list[str]:
    """The bench's `batchq worker ARGS` command as this module's worker mode, same ARGS."""
    if command[:len(WORKER)] != WORKER:  # the bench changed how it starts them: say so
        raise RuntimeError(f"the bench's worker command is not {WORKER} ...: {command}")
    return [sys.executable, "-m", "benchmarks.worker_budget", "--worker",
            *command[len(WORKER):]]


def run_bench(argv: list[str]) -> None:
    """`batchq bench ARGS --strategies static --system`, its worker timed; then the split."""
    from batchq.cli import cli
    from batchq.tools.bench import system

    events = Path(tempfile.mkstemp(prefix="batchq-budget-", suffix=".txt")[1])
    os.environ[EVENTS] = str(events)
    timings = Timings(str(events))
    workers_init = system.BenchWorkers.__init__
    time_job = system.BenchWorkers.time_job

    def timed_workers(self: Any, *args: Any, **kwargs: Any) -> None:
        workers_init(self, *args, **kwargs)
        self.command = timed_worker_command(self.command)

    def timed_job(self: Any, lines: list[str]) -> Any:
        started = time.time()
        run = time_job(self, lines)
        if len(lines) > 1:  # not the warm-up
            timings.note("submit", started, run.submit_seconds)
            timings.note("job", started, run.seconds)
        return run

    system.BenchWorkers.__init__ = timed_workers  # type: ignore[method-assign]
    system.BenchWorkers.time_job = timed_job  # type: ignore[method-assign]
    try:
        cli(["bench", *argv, "--strategies", "static", "--system"], prog_name="batchq",
            standalone_mode=False)
        print_split(events.read_text(encoding="utf-8"))
    finally:
        events.unlink()


def print_split(text: str) -> None:
    """Each timed job's seconds by step, and the medians."""
    events = sorted((float(t), float(s), step) for t, s, step in
                    (line.split(None, 2) for line in text.splitlines()))
    jobs = [(t, s) for t, s, step in events if step == "job"]
    rows = []
    for started, seconds in jobs:
        inside: dict[str, float] = defaultdict(float)
        for t, s, step in events:
            if started <= t <= started + seconds + 0.001:
                inside[step] += s
        row = {column: sum(inside[step] for step in steps) for column, steps in STEPS}
        rest = seconds - sum(row.values())
        tasks = [(t, t + s) for t, s, step in events
                 if step == "task" and started <= t <= started + seconds]
        if tasks:  # the rest, split by where the worker was: before, between or after its tasks
            row["to 1st chunk"] = tasks[0][0] - started - inside["submit"]
            row["between"] = sum(b[0] - a[1] for a, b in zip(tasks, tasks[1:], strict=False))
            row["after last"] = started + seconds - tasks[-1][1]
            rest -= row["to 1st chunk"] + row["between"] + row["after last"]
        row["rest in chunks"] = rest
        rows.append((seconds, row))
    columns = [column for column, _ in STEPS] + [
        c for c in ("to 1st chunk", "between", "after last") if rows and c in rows[0][1]]
    columns.append("rest in chunks")
    print("\nwhere each job's seconds went (s): the steps, then the rest by where the worker "
          "was: from submit's end to its first chunk's task, between its tasks (Celery), after "
          "its last task (the last tail), and in its chunks between their steps")
    print(f"{'job':>7} " + " ".join(f"{c:>11}" for c in columns))
    for seconds, row in rows:
        print(f"{seconds:7.3f} " + " ".join(f"{row.get(c, 0.0):11.3f}" for c in columns))
    if len(rows) > 1:
        print(f"{statistics.median(s for s, _ in rows):7.3f} "
              + " ".join(f"{statistics.median(r.get(c, 0.0) for _, r in rows):11.3f}"
                       for c in columns)
              + "  (medians)")


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        run_worker(sys.argv[2:])
    else:
        run_bench(sys.argv[1:])


if __name__ == "__main__":
    main()
