"""The sweep: how a dead worker's chunk, or a lost broker message, runs again.

Every worker process runs it, every half lease, for its own variant's queue, so recovery
needs nothing but the database, the broker and one worker of the variant:

- chunks whose lease expired (their worker died or hung) go back to queued, and are sent;
- when the variant's broker queue is empty, queued chunks whose message was sent more than a
  lease ago (or never) are sent again: their message was lost (Redis restarted empty, was
  flushed, or was down at submit);
- jobs whose completion window ended (HTTP batches) expire, with the lines still open.

A chunk is taken by one sweeper only (compare-and-set on its row), and a redundant message
costs nothing: a claim skips a chunk that is held or done.
"""

from __future__ import annotations

import logging
import threading

from batchq.config import Settings
from batchq.queue.publish import queue_depth
from batchq.service import dispatch
from batchq.store.transitions import Transitions

log = logging.getLogger(__name__)


def sweep(settings: Settings, queue: str) -> int:
    """One pass over one variant's queue. Returns how many chunks were sent."""
    store = Transitions(settings)
    for job_id in store.expire_overdue():
        log.warning("job %s expired: its completion window ended with lines still open",
                    job_id)
    # If a send fails, its chunks stay queued with a fresh enqueued_at, and a later sweep
    # sends them once the broker is back and their lease-long grace has passed.
    expired = store.requeue_expired(queue)
    for chunk, worker in expired:
        log.warning("job=%s chunk=%s: the lease of %s expired; queued again", chunk.job_id,
                    chunk.seq, worker)
    dispatch.send(settings, [chunk for chunk, _ in expired])
    unsent = store.take_unsent(queue) if queue_depth(settings, queue) == 0 else []
    for chunk in unsent:
        log.warning("job=%s chunk=%s: its broker message is missing; sent again", chunk.job_id,
                    chunk.seq)
    dispatch.send(settings, unsent)
    return len(expired) + len(unsent)


class Sweeper:
    """The sweep, every half lease, in a daemon thread of the worker process."""

    def __init__(self, settings: Settings, queue: str):
        self.settings = settings
        self.queue = queue
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="batchq-sweep", daemon=True)

    def start(self) -> Sweeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        interval = min(max(self.settings.lease_seconds / 2, 0.5), 30)
        while not self._stop.wait(interval):
            try:
                sweep(self.settings, self.queue)
            except Exception as exc:  # database or broker away: the next pass tries again
                log.warning("sweep of %s failed: %s", self.queue, exc)
