"""What a job's owner does after submitting it: wait for it, cancel it, retry what failed."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from batchq.config import Settings, get_settings
from batchq.service import dispatch
from batchq.store.reads import job_status, job_view
from batchq.store.transitions import Transitions
from batchq.store.views import JobView


def cancel(job_ref: str, settings: Settings | None = None) -> JobView:
    """Pending lines become cancelled now; a running chunk stops at its next batch boundary."""
    return Transitions(settings or get_settings()).cancel(job_ref)


@dataclass(frozen=True)
class Retried:
    job_id: str
    lines: int  # failed lines queued again
    chunks: int
    refused: int  # failed lines that were refused input: they cannot run again
    queued: bool  # False if the broker was away (the sweep queues them later)


def retry(job_ref: str, settings: Settings | None = None) -> Retried:
    """Run a finished job's failed lines again as new attempts; succeeded lines stay as they are.

    Lines refused at submit (--skip-invalid) have nothing valid to run and stay failed.
    """
    settings = settings or get_settings()
    reset = Transitions(settings).retry(job_ref)
    queued = dispatch.send(settings, reset.chunks)
    return Retried(reset.job_id, reset.lines, len(reset.chunks), reset.refused, queued)


def wait(job_ref: str, settings: Settings | None = None, poll_seconds: float = 1.0,
         on_progress: Callable[[JobView], None] | None = None) -> JobView:
    """Block until the job is final; returns its last view. Without `on_progress` it polls
    only the job's status: a view counts the job's lines, which took 40 ms at 200,000 lines,
    and a fast poller would take that from the workers."""
    settings = settings or get_settings()
    while True:
        if on_progress:
            view = job_view(settings, job_ref)
            on_progress(view)
            if view.status.final:
                return view
        elif job_status(settings, job_ref).final:
            return job_view(settings, job_ref)
        time.sleep(poll_seconds)
