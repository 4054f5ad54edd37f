"""Ringing the doorbell: a chunk that is queued in the database gets its broker message.

If the broker cannot take it, nothing is lost: the chunk stays queued in the database and the
workers' sweep sends it once the broker is back (batchq.worker.sweep). Submit, retry, the
hand-back at shutdown and the sweep all send through here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from batchq.config import Settings, redact
from batchq.store.views import ChunkRef

log = logging.getLogger(__name__)


def send(settings: Settings, chunks: Sequence[ChunkRef]) -> bool:
    """One message per chunk. Returns False if the broker could not take them: they stay
    queued in the database, and the sweep sends them later."""
    if not chunks:
        return True
    # Imported here: Celery is heavy, and the commands that only read never need it.
    from batchq.queue.publish import ChunkMessage, publish

    try:
        publish(settings, [ChunkMessage(c.id, c.queue, c.label) for c in chunks])
    except Exception as exc:  # kombu raises several types for one meaning
        log.warning("%d chunk(s) of job %s are stored but could not be queued on %s (%s); the "
                    "workers' sweep will queue them when the broker is back", len(chunks),
                    chunks[0].job_id, redact(settings.broker_url), exc)
        return False
    return True
