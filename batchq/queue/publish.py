"""Sending chunk messages and reading queue depths. Nothing here touches the database: the
caller says which chunk goes to which queue, and how people should see it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

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
    with app.producer_or_acquire() as producer:
        for message in messages:
            app.send_task(RUN_CHUNK, kwargs={"chunk_id": message.chunk_id}, queue=message.queue,
                          producer=producer, argsrepr=message.label)


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
