"""The Celery application: configuration only. The broker is a doorbell; messages carry ids.

`celery -A batchq.celery_app flower` finds the app as `app`, built from the environment.
"""

from __future__ import annotations

import functools

from celery import Celery

from batchq.settings import Settings, get_settings

RUN_CHUNK = "batchq.run_chunk"


def make_app(settings: Settings) -> Celery:
    app = Celery("batchq", broker=settings.broker_url)
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
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        task_publish_retry_policy={"max_retries": 3, "interval_start": 0.2,
                                   "interval_step": 0.5, "interval_max": 2},
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        enable_utc=True,
    )

    @app.task(name=RUN_CHUNK)
    def run_chunk(chunk_id: int) -> dict:
        from batchq.worker import handle_chunk

        return handle_chunk(chunk_id)

    return app


@functools.cache
def app_for(settings: Settings) -> Celery:
    return make_app(settings)


app = app_for(get_settings())
