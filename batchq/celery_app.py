"""The Celery application: configuration only. The broker is a doorbell; messages carry ids.

`celery -A batchq.celery_app flower` finds the app as `app`, built from the environment.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from celery import Celery

from batchq.errors import ConfigError, ServiceUnavailable
from batchq.settings import Settings, get_settings

RUN_CHUNK = "batchq.run_chunk"
_CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
_SSL_KEYS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def broker_tls(url: str) -> tuple[str, dict[str, Any] | None]:
    """A rediss:// URL's TLS options, taken out of its query string.

    The server's certificate is verified unless the URL says `ssl_cert_reqs=none`: kombu on its
    own would accept any certificate. `ssl_ca_certs=PATH` names a private CA.
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return url, None
    query = parse_qsl(parts.query, keep_blank_values=True)
    options: dict[str, Any] = {k: v for k, v in query if k in _SSL_KEYS}
    reqs = str(options.get("ssl_cert_reqs", "required")).lower().removeprefix("cert_")
    if reqs not in _CERT_REQS:
        raise ConfigError(f"BATCHQ_BROKER_URL: ssl_cert_reqs={reqs!r}; use required, "
                          "optional or none")
    options["ssl_cert_reqs"] = _CERT_REQS[reqs]
    rest = urlencode([(k, v) for k, v in query if k not in _SSL_KEYS])
    return urlunsplit(parts._replace(query=rest)), options


def make_app(settings: Settings) -> Celery:
    broker_url, tls = broker_tls(settings.broker_url)
    app = Celery("batchq", broker=broker_url)
    transport_options: dict = {}
    # (The SQLite broker hands every transport option to create_engine, so it gets none.)
    if not settings.broker_url.startswith("sqla+"):
        # Leases in the database decide when work runs again; a Redis redelivery must never
        # race a long chunk that is still running, so its visibility timeout is far away.
        transport_options["visibility_timeout"] = 12 * 3600
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_ignore_result=True,
        task_track_started=True,
        broker_transport_options=transport_options,
        broker_use_ssl=tls,
        # A broker restart is waited out, however long; the database keeps the work meanwhile.
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # A running chunk goes on through a broker outage: its results go to the database.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_timeout=5,
        task_publish_retry_policy={"max_retries": 3, "interval_start": 0.2,
                                   "interval_step": 0.5, "interval_max": 2},
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        enable_utc=True,
    )

    @app.task(name=RUN_CHUNK, bind=True)
    def run_chunk(task, chunk_id: int) -> dict:
        from batchq.worker import handle_chunk

        return handle_chunk(chunk_id, task)

    return app


def publish_chunks(settings: Settings, queue: str, chunk_ids: Iterable[int]) -> None:
    """One message per chunk, carrying only its id. Raises what kombu raises if the broker is
    away after the publish retries; callers decide what that means.

    Flower shows each task's args as the chunk's label (`argsrepr`), so its search finds a
    job's tasks by `job=<id>`; the message itself still carries just the id.
    """
    from batchq.jobs import chunk_labels

    chunk_ids = list(chunk_ids)
    try:
        labels = chunk_labels(settings, chunk_ids)
    except ServiceUnavailable:  # a label is for people; the message goes out without one
        labels = {}
    app = app_for(settings)
    with app.producer_or_acquire() as producer:
        for chunk_id in chunk_ids:
            app.send_task(RUN_CHUNK, kwargs={"chunk_id": chunk_id}, queue=queue,
                          producer=producer, argsrepr=labels.get(chunk_id, f"chunk id {chunk_id}"))


def queue_depth(settings: Settings, queue: str) -> int:
    """Messages waiting in a variant's queue (not counting those a worker holds)."""
    from kombu.exceptions import ChannelError

    with app_for(settings).connection_for_read() as conn:
        try:
            return conn.default_channel.queue_declare(queue=queue, passive=True).message_count
        except ChannelError as exc:
            if "NOT_FOUND" in str(exc):  # Redis keeps no empty list: no queue is an empty one
                return 0
            raise


@functools.cache
def app_for(settings: Settings) -> Celery:
    return make_app(settings)


app = app_for(get_settings())
