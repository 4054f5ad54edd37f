"""`batchq run`: a worker inside the process that submitted the job, for one machine."""

from __future__ import annotations

from collections.abc import Callable

from batchq.service import reading
from batchq.store.views import JobView
from batchq.worker.chunk_run import run_chunk
from batchq.worker.runtime import WorkerRuntime


def serve_job(job_id: str, runtime: WorkerRuntime,
              on_chunk: Callable[[JobView], None] | None = None) -> None:
    """Run every chunk of one job in this process, through the same claim path as a queued
    message, so a concurrent worker and a later redelivery are both harmless."""
    for chunk in reading.chunks(job_id, runtime.settings):
        run_chunk(chunk.id, runtime)
        runtime.tail.wait()  # the chunk's finish, which the status below should show
        if on_chunk is not None:
            on_chunk(reading.status(job_id, runtime.settings))
