"""A running chunk's lease, renewed from a thread while its batches run.

The lease is renewed every third of BATCHQ_LEASE_SECONDS, so a long batch keeps it. Only the
holder of the current claim renews: the claim's number is its fencing token. If another claim
has taken the chunk (this worker was presumed dead), `lost` is set and the chunk run stops at
its next batch boundary.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from batchq.store.transitions import Transitions

log = logging.getLogger(__name__)

# Set when the worker is asked to stop (SIGTERM): a running chunk is handed back at its next
# batch boundary instead of running to its end.
shutdown_requested = threading.Event()


class LeaseKeeper:
    def __init__(self, store: Transitions, chunk_id: int, token: int):
        self.store = store
        self.chunk_id = chunk_id
        self.token = token
        self.lost = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{chunk_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        interval = max(self.store.settings.lease_seconds / 3, 0.2)
        while not self._done.wait(interval):
            try:
                if not self.store.renew(self.chunk_id, self.token):
                    log.warning("chunk %s: lease lost to another claim; stopping at the next "
                                "batch boundary", self.chunk_id)
                    self.lost.set()
                    return
            except Exception as exc:  # a database outage: keep trying, the lease has slack
                log.warning("chunk %s: could not renew the lease: %s", self.chunk_id, exc)
