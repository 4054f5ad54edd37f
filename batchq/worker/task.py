"""The Celery task that runs a chunk, registered on the app by the process that serves it."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task

from batchq.queue.app import RUN_CHUNK
from batchq.worker.chunk_run import run_chunk
from batchq.worker.runtime import current_runtime

log = logging.getLogger(__name__)


def handle_chunk(chunk_id: int, task: Task | None = None) -> dict[str, Any]:
    """The task body. Returns a summary, which Flower shows as the task's result; while it
    runs, each batch sends a `task-progress` event, which Flower shows as the task's state
    (PROGRESS) and result (how far it is) until the summary replaces them."""
    runtime = current_runtime()
    if task is None:
        return run_chunk(chunk_id, runtime)

    def progress(text: str) -> None:
        try:
            # No retries: progress is for people, and must never hold up the chunk.
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
