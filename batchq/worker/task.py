"""The Celery task that runs a chunk, registered on the app by the process that serves it."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery, Task

from batchq.queue.app import RUN_CHUNK
from batchq.worker.chunk_run import run_chunk
from batchq.worker.runtime import current_runtime

log = logging.getLogger(__name__)

# Seconds between two progress events of one chunk, at most (the summary ends it anyway).
PROGRESS_INTERVAL = 0.25


def handle_chunk(chunk_id: int, task: Task | None = None) -> dict[str, Any]:
    """The task body. Returns a summary, which Flower shows as the task's result; while it
    runs, each batch sends a `task-progress` event (at most one per PROGRESS_INTERVAL), which
    Flower shows as the task's state (PROGRESS) and result (how far it is) until the summary
    replaces them."""
    runtime = current_runtime()
    if task is None:
        return run_chunk(chunk_id, runtime)

    last_sent = [float("-inf")]

    def progress(text: str) -> None:
        # Progress is for people: a few events a second are plenty, and a fast engine's
        # hundred batches a second would spend a tenth of the worker on them.
        now = time.monotonic()
        if now - last_sent[0] < PROGRESS_INTERVAL:
            return
        last_sent[0] = now
        try:
            # No retries: it must never hold up the chunk.
            task.send_event("task-progress", retry=False, result=text)
        except Exception as exc:
            log.debug("progress event not sent: %s", exc)

    return run_chunk(chunk_id, runtime, progress)


def register(app: Celery) -> None:
    """Give the app the chunk task (once)."""
    if RUN_CHUNK in app.tasks:
        return

    @app.task(name=RUN_CHUNK, bind=True)
    def run_chunk_task(task: Task, chunk_id: int) -> dict[str, Any]:
        return handle_chunk(chunk_id, task)
