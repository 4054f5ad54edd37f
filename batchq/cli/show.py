"""How jobs look in the terminal: one job's status, the list of recent jobs, live bars, and
the exit code a waited-for job ends with."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import IO

import click

from batchq import service
from batchq.errors import JobNotCompleted
from batchq.observe.progress import Screen, bar, change_key, percent
from batchq.service import Written
from batchq.states import JobStatus
from batchq.store.views import JobView, iso


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def print_status(job: JobView) -> None:
    c, m = job.counts, job.metrics
    lines = [
        f"job       {job.id}" + (f"  ({job.name})" if job.name else ""),
        f"status    {job.status}",
        *_variant_lines(job),
        f"lines     {c.total} total: {c.succeeded} succeeded, {c.failed} failed, "
        f"{c.cancelled} cancelled, {c.pending} pending"
        + (f", {c.expired} expired" if c.expired else ""),
        f"created   {iso(m.created_at)}   started {iso(m.started_at) or '-'}   "
        f"finished {iso(m.finished_at) or '-'}",
        f"timing    queue wait {_secs(m.queue_wait_seconds)}, run {_secs(m.run_seconds)}, "
        f"generating {_secs(round(m.generate_seconds, 3))} in {m.batches} batch(es)",
        f"tokens    {m.prompt_tokens} prompt, {m.completion_tokens} completion"
        + (f" ({m.reasoning_tokens} of them reasoning)" if m.reasoning_tokens else "")
        + f", {m.tokens_per_second or '-'} tok/s"
        + (f"; {m.deduplicated_lines} line(s) answered from an identical line, not generated"
           if m.deduplicated_lines else ""),
        f"padding   efficiency {percent(m.padding_efficiency)} of prompt slots, "
        f"decode {percent(m.decode_efficiency)} of decode slots",
    ]
    click.echo("\n".join(lines))


def _variant_lines(job: JobView) -> list[str]:
    """The job's variant; for a job whose lines name several, each with its share, and any
    whose lines wait for a worker of their own."""
    live = not job.status.final
    if len(job.variants) <= 1:
        waiting = live and any(share.waiting_for_worker for share in job.variants)
        return [f"variant   {job.model} ({job.quant}) on queue {job.queue}"
                + ("  (waiting for a worker)" if waiting else "")]
    out = [f"variants  {len(job.variants)}; lines without a model of their own run on "
           f"{job.model} ({job.quant})"]
    for share in job.variants:
        c = share.counts
        out.append(f"  {share.model} ({share.quant}) on queue {share.queue}: {c.done}/{c.total} "
                   f"done, {c.failed} failed, {c.pending} pending"
                   + ("  (waiting for a worker)" if live and share.waiting_for_worker else ""))
    return out


def print_list(jobs: list[JobView]) -> None:
    click.echo(f"{'JOB':<12}  {'STATUS':<9}  {'DONE':>13}  {'FAILED':>6}  {'CREATED':<25}  MODEL")
    for job in jobs:
        c = job.counts
        done = f"{c.done}/{c.total}"
        click.echo(f"{job.id[:12]}  {job.status:<9}  {done:>13}  {c.failed:>6}  "
                   f"{iso(job.metrics.created_at):<25}  {job.model} ({job.quant})")


def watch(job_ref: str | None, interval: float) -> None:
    """Redraw until Ctrl-C. A job that ends stays on screen, marked, until the watch ends.

    Ctrl-C only sets a flag: the watch ends between refreshes, never with a database call cut
    in half (an interrupt inside the driver could leave the process waiting on the server)."""
    screen = Screen(sys.stdout)
    shown: dict[str, JobView] = {}
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        while not stop.is_set():
            if job_ref:
                jobs = [service.status(job_ref)]
            else:
                active = {job.id: job for job in service.active_jobs()}
                # A job that ended since the last refresh: its final state, once.
                for job_id, job in list(shown.items()):
                    if job_id not in active and not job.status.final:
                        shown[job_id] = service.status(job_id)
                shown.update(active)
                jobs = list(shown.values())
            lines = [bar(job) for job in jobs] or ["no queued or running jobs"]
            screen.show(lines, key=change_key(jobs))
            stop.wait(interval)
    finally:
        signal.signal(signal.SIGINT, previous)


def final_exit(job: JobView) -> None:
    """Exit 6 unless the job completed (`--wait`, `run`)."""
    if job.status is not JobStatus.COMPLETED:
        c = job.counts
        raise JobNotCompleted(f"job {job.id} {job.status}: {c.succeeded} succeeded, "
                              f"{c.failed} failed, {c.cancelled} cancelled "
                              f"(`batchq results {job.id[:12]}` shows each line)")


def write_results(job_ref: str, output: str | None, errors_file: str | None
                  ) -> tuple[JobView, Written]:
    """Results to a file or stdout, errors to their own file if one is named."""
    with contextlib.ExitStack() as stack:
        sys.stdout.flush()  # what was printed before the results goes first
        out: IO[bytes] = (stack.enter_context(open(output, "wb")) if output
                          else sys.stdout.buffer)
        err = stack.enter_context(open(errors_file, "wb")) if errors_file else None
        try:
            return service.write_results(job_ref, out, err)
        finally:
            out.flush()
