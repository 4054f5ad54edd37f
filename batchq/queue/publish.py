"""Sending chunk messages and reading queue depths. Nothing here touches the database: the
caller says which chunk goes to which queue, and how people should see it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from batchq.config import Settings, redact
from batchq.errors import ServiceUnavailable
from batchq.queue.app import RUN_CHUNK, app_for


@dataclass(frozen=True)
class ChunkMessage:
    chunk_id: int
    queue: str  # the variant's queue (batchq.variants.queue_name)
    label: str  # what Flower shows as the task's args; never prompt text


def publish(settings: Settings, messages: Iterable[ChunkMessage]) -> None:
    """One message per chunk, carrying only its id. Raises what kombu raises if the broker is
    away after the publish retries; callers decide what that means.

    Flower shows each task's args as the chunk's label (`argsrepr`), so its search finds a
    job's tasks by `job=<id>`; the message itself still carries just the id.
    """
    app = app_for(settings)
    with app.producer_or_acquire() as producer, _pipelined(producer):
        for message in messages:
            app.send_task(RUN_CHUNK, kwargs={"chunk_id": message.chunk_id}, queue=message.queue,
                          producer=producer, argsrepr=message.label)


# Redis commands sent in one round trip: two a chunk (its message and Flower's task-sent event).
PIPELINE_COMMANDS = 1000


def _pipelined(producer: Any) -> AbstractContextManager[object]:
    """Publishes buffered and sent PIPELINE_COMMANDS at a time (kombu 5.7's Producer.batch, a
    Redis pipeline): a big job's thousands of chunks cost a round trip each, twice, without.
    If a flush fails, the messages not sent stay queued in the database for the sweep, as
    any failed publish does. Older kombu, or a transport that cannot batch, sends each at once."""
    batch = getattr(producer, "batch", None)
    return batch(max_size=PIPELINE_COMMANDS) if batch is not None else contextlib.nullcontext()


def queue_depth(settings: Settings, queue: str) -> int:
    """Messages waiting in a variant's queue (not counting those a worker holds)."""
    from kombu.exceptions import ChannelError

    with app_for(settings).connection_for_read() as conn:
        try:
            depth: int = conn.default_channel.queue_declare(queue=queue,
                                                            passive=True).message_count
            return depth
        except ChannelError as exc:
            if "NOT_FOUND" in str(exc):  # Redis keeps no empty list: no queue is an empty one
                return 0
            raise


def check_broker(settings: Settings) -> None:
    """Raise ServiceUnavailable unless the broker answers (a restarting one is waited for)."""
    try:
        with app_for(settings).connection_for_write() as conn:
            # About ten seconds of retries: a broker that is restarting is waited for.
            conn.ensure_connection(max_retries=4, interval_start=0.5, interval_step=1,
                                   interval_max=3, timeout=5)
    except Exception as exc:  # kombu raises several types for one meaning
        raise ServiceUnavailable(
            f"cannot reach the broker at {redact(settings.broker_url)}: {exc}") from exc
