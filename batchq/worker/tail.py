"""A chunk's tail, its last write and its finish, run beside the next chunk.

A fast engine's chunk is a few hundred milliseconds of batches; its last write and its finish
(two commits) added a twentieth to it, while the next chunk waited for them. They touch only
their own chunk's rows, so they run on one background thread while the worker takes the next
message, claims its chunk and encodes its prompts. The next chunk's first write waits for them
(`wait`), and so does the process before it exits: at most one tail is ever running, and the
job's end is still decided by the last finish, in order.

A worker killed while a tail runs loses what a kill lost before: the chunk's lease runs out
and the sweep queues it again; its finished lines are not run twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from batchq.errors import ServiceUnavailable

log = logging.getLogger(__name__)


class ChunkTail:
    """One background thread, created at first use, that runs the tails in turn."""

    def __init__(self) -> None:
        self._thread: ThreadPoolExecutor | None = None
        self._running: Future[None] | None = None

    def start(self, label: str, tail: Callable[[], None]) -> None:
        """Run `tail` after the tail before it. Its failures are logged, not raised: the task
        whose chunk it ends has already reported its counts."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchq-tail")
        self._running = self._thread.submit(_logged, label, tail)

    def wait(self) -> None:
        """Return once no tail is running (at once if none is)."""
        running, self._running = self._running, None
        if running is not None:
            running.result()


def _logged(label: str, tail: Callable[[], None]) -> None:
    try:
        tail()
    except ServiceUnavailable as exc:
        # As when the chunk ran: not the lines' fault; its lease runs out and it runs again.
        log.warning("%s not finished, left to its lease: %s", label, exc)
    except Exception:
        log.exception("%s not finished, left to its lease", label)
