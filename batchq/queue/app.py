"""The Celery application: configuration only. The broker is a doorbell; messages carry ids.

The chunk task itself is registered by the worker package (batchq.worker.task), the one
process kind that runs it. `celery -A batchq.queue.app flower` finds the app as `app`,
built from the environment.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import ssl
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from celery import Celery

from batchq.config import Settings, get_settings
from batchq.errors import ConfigError

log = logging.getLogger(__name__)

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


def _write_ahead_log(broker_url: str) -> None:
    """Put the embedded broker's SQLite file in WAL mode (a file keeps it): each message's
    commit costs less (publishing a million-line job's 3,900 messages took 2.5 ms each, now
    1.8), and a worker reading the queue no longer blocks a submit writing to it."""
    path = broker_url.removeprefix("sqla+sqlite:///")
    if not path or path == ":memory:":
        return
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(path, timeout=5)) as db:
            db.execute("PRAGMA journal_mode=WAL")
    except (OSError, sqlite3.Error) as exc:  # kombu then works in its default mode
        log.debug("broker file %s stays in its journal mode: %s", path, exc)


# How often an idle worker looks at the embedded broker's queue. kombu's default, a second,
# made a new job wait 0.3-0.7 s for its first chunk (a fast engine's whole job took 2 s); ten
# looks a second cost an idle worker 1.5% of a core. (kombu's `polling_interval` option cannot
# reach this transport, which hands every transport option to SQLAlchemy's create_engine.)
EMBEDDED_POLL_SECONDS = 0.1


def _poll_often() -> None:
    from kombu.transport import sqlalchemy

    sqlalchemy.Transport.polling_interval = EMBEDDED_POLL_SECONDS


def make_app(settings: Settings) -> Celery:
    if settings.broker_url.startswith("sqla+sqlite:///"):
        _write_ahead_log(settings.broker_url)
        _poll_often()
    broker_url, tls = broker_tls(settings.broker_url)
    app = Celery("batchq", broker=broker_url)
    transport_options: dict[str, Any] = {}
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
    return app


@functools.cache
def app_for(settings: Settings) -> Celery:
    return make_app(settings)


app = app_for(get_settings())
