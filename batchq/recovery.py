"""Leases and the sweep: how a dead worker's chunk, or a lost broker message, runs again.

Every worker process runs both, so recovery needs nothing but the database, the broker and
one worker of the variant:

- A worker holds a lease on the chunk it runs and renews it (every third of
  BATCHQ_LEASE_SECONDS) from a thread, so a long batch keeps it. Only the holder of the
  current claim renews: the claim's number is its fencing token.
- The sweep (every half lease) queues again the chunks of its variant whose lease expired,
  and, when the variant's broker queue is empty, the queued chunks whose message was sent
  more than a lease ago (or never): their message was lost (Redis restarted empty, flushed,
  or down at submit). A chunk is taken by one sweeper only (compare-and-set on its row),
  and a redundant message costs nothing: a claim skips a chunk that is held or done.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy import or_, select, update

from batchq.db import session_scope, utcnow
from batchq.jobs import ACTIVE_JOB_STATUSES
from batchq.models import Chunk, Job
from batchq.settings import Settings

log = logging.getLogger(__name__)


# Set when the worker is asked to stop (SIGTERM): a running chunk is handed back at its next
# batch boundary instead of running to its end.
shutdown_requested = threading.Event()


class LeaseKeeper:
    """Renews a claimed chunk's lease while it runs; `lost` is set if another claim took it."""

    def __init__(self, settings: Settings, chunk_id: int, token: int):
        self.settings = settings
        self.chunk_id = chunk_id
        self.token = token
        self.lost = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{chunk_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        interval = max(self.settings.lease_seconds / 3, 0.2)
        while not self._done.wait(interval):
            try:
                if not self.renew():
                    log.warning("chunk %s: lease lost to another claim; stopping at the next "
                                "batch boundary", self.chunk_id)
                    self.lost.set()
                    return
            except Exception as exc:  # a database outage: keep trying, the lease has slack
                log.warning("chunk %s: could not renew the lease: %s", self.chunk_id, exc)

    def renew(self) -> bool:
        expires = utcnow() + timedelta(seconds=self.settings.lease_seconds)
        with session_scope(self.settings) as session:
            return bool(session.execute(
                update(Chunk)
                .where(Chunk.id == self.chunk_id, Chunk.attempts == self.token,
                       Chunk.status == "running")
                .values(lease_expires_at=expires)).rowcount)


def requeue_expired(settings: Settings, queue: str) -> list[int]:
    """Chunks of `queue` whose lease expired go back to queued; returns their ids."""
    now = utcnow()
    taken = []
    with session_scope(settings) as session:
        expired = session.execute(
            select(Chunk.id, Chunk.job_id, Chunk.seq, Chunk.worker).join(Job)
            .where(Job.queue == queue, Job.status.in_(ACTIVE_JOB_STATUSES),
                   Chunk.status == "running", Chunk.lease_expires_at < now)).all()
        for chunk_id, job_id, seq, worker in expired:
            if session.execute(
                    update(Chunk)
                    .where(Chunk.id == chunk_id, Chunk.status == "running",
                           Chunk.lease_expires_at < now)
                    .values(status="queued", worker=None, lease_expires_at=None,
                            enqueued_at=now)).rowcount:
                log.warning("job=%s chunk=%s: the lease of %s expired; queued again",
                            job_id, seq, worker)
                taken.append(chunk_id)
    return taken


def take_unsent(settings: Settings, queue: str) -> list[int]:
    """Queued chunks of `queue` whose message should have been delivered a lease ago.

    Call it only when the broker queue is empty: then none of them has a message waiting.
    """
    now = utcnow()
    old = now - timedelta(seconds=settings.lease_seconds)
    taken = []
    with session_scope(settings) as session:
        stale = session.execute(
            select(Chunk.id, Chunk.job_id, Chunk.seq, Chunk.enqueued_at).join(Job)
            .where(Job.queue == queue, Job.status.in_(ACTIVE_JOB_STATUSES),
                   Chunk.status == "queued",
                   or_(Chunk.enqueued_at.is_(None), Chunk.enqueued_at < old))).all()
        for chunk_id, job_id, seq, sent in stale:
            same = Chunk.enqueued_at.is_(None) if sent is None else Chunk.enqueued_at == sent
            if session.execute(update(Chunk).where(Chunk.id == chunk_id, same)
                               .values(enqueued_at=now)).rowcount:
                log.warning("job=%s chunk=%s: its broker message is missing; sent again",
                            job_id, seq)
                taken.append(chunk_id)
    return taken


def sweep(settings: Settings, queue: str) -> int:
    """One pass: re-send expired and lost chunks of one variant. Returns how many were sent."""
    from batchq.celery_app import publish_chunks, queue_depth

    # If a publish fails, its chunks stay queued with a fresh enqueued_at, and a later sweep
    # sends them once the broker is back and their lease-long grace has passed.
    expired = requeue_expired(settings, queue)
    if expired:
        publish_chunks(settings, queue, expired)
    unsent = take_unsent(settings, queue) if queue_depth(settings, queue) == 0 else []
    if unsent:
        publish_chunks(settings, queue, unsent)
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
