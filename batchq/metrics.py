"""`batchq metrics`: batchq's own Prometheus metrics, read from the database at each scrape.

The database is the truth, so any number of these processes (or none) can run, and they all
agree; nothing is counted in memory and lost on restart. Flower's /metrics covers the Celery
side (task events per worker); this covers the jobs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import timedelta

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import exists, func, select

from batchq.db import aware, session_scope, utcnow
from batchq.jobs import ACTIVE_JOB_STATUSES
from batchq.models import JOB_STATUSES, LINE_STATUSES, BatchRun, Chunk, Job, Line
from batchq.settings import Settings
from batchq.variants import variant_name

log = logging.getLogger(__name__)

# tokens/s is over the batches that ended in this window: recent enough to show a stall.
RATE_WINDOW_SECONDS = 60


class JobMetrics(Collector):
    def __init__(self, settings: Settings):
        self.settings = settings

    def collect(self) -> Iterator:
        up = GaugeMetricFamily("batchq_database_up",
                               "1 if the last scrape could read the database")
        try:
            active_queues: set[str] = set()
            families = list(self._from_database(active_queues))
        except Exception as exc:  # a scrape that fails says so, rather than erroring
            log.warning("metrics: cannot read the database: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families
        yield from self._queue_depths(sorted(active_queues))

    def _from_database(self, active_queues: set[str]) -> Iterator:
        """The database's families; fills `active_queues` with the queues of unfinished jobs."""
        now = utcnow()
        with session_scope(self.settings) as session:
            jobs = GaugeMetricFamily("batchq_jobs", "Jobs by status", labels=["status"])
            by_status = dict(session.execute(select(Job.status, func.count())
                                             .group_by(Job.status)).all())
            for status in JOB_STATUSES:
                jobs.add_metric([status], by_status.get(status, 0))
            yield jobs

            lines = GaugeMetricFamily(
                "batchq_lines", "Lines by variant and status (pending, succeeded, failed, "
                "cancelled); a retry moves failed lines back to pending", labels=["variant",
                                                                                  "status"])
            counts = session.execute(select(Job.queue, Line.status, func.count())
                                     .join(Job, Job.id == Line.job_id)
                                     .group_by(Job.queue, Line.status)).all()
            found = {(queue, status): n for queue, status, n in counts}
            for queue in sorted({queue for queue, _ in found}):
                for status in LINE_STATUSES:
                    lines.add_metric([variant_name(queue), status], found.get((queue, status), 0))
            yield lines

            tokens_in = CounterMetricFamily("batchq_prompt_tokens", "Prompt tokens generated "
                                            "from, by variant", labels=["variant"])
            tokens_out = CounterMetricFamily("batchq_completion_tokens", "Tokens generated, "
                                             "by variant", labels=["variant"])
            for queue, prompt, completion in session.execute(
                    select(Job.queue, func.coalesce(func.sum(Chunk.prompt_tokens), 0),
                           func.coalesce(func.sum(Chunk.completion_tokens), 0))
                    .join(Job, Job.id == Chunk.job_id).group_by(Job.queue)):
                tokens_in.add_metric([variant_name(queue)], int(prompt))
                tokens_out.add_metric([variant_name(queue)], int(completion))
            yield tokens_in
            yield tokens_out

            rate = GaugeMetricFamily(
                "batchq_tokens_per_second", f"Output tokens per second by variant, over the "
                f"batches that ended in the last {RATE_WINDOW_SECONDS} s", labels=["variant"])
            since = now - timedelta(seconds=RATE_WINDOW_SECONDS)
            for queue, completion in session.execute(
                    select(Job.queue, func.sum(BatchRun.completion_tokens))
                    .join(Job, Job.id == BatchRun.job_id)
                    .where(BatchRun.finished_at >= since).group_by(Job.queue)):
                rate.add_metric([variant_name(queue)], int(completion) / RATE_WINDOW_SECONDS)
            yield rate

            chunks = GaugeMetricFamily("batchq_chunks", "Chunks of queued and running jobs, "
                                       "by variant and status", labels=["variant", "status"])
            for queue, status, n in session.execute(
                    select(Job.queue, Chunk.status, func.count())
                    .join(Job, Job.id == Chunk.job_id)
                    .where(Job.status.in_(ACTIVE_JOB_STATUSES))
                    .group_by(Job.queue, Chunk.status)):
                chunks.add_metric([variant_name(queue), status], n)
                active_queues.add(queue)
            yield chunks

            oldest = GaugeMetricFamily(
                "batchq_oldest_pending_line_age_seconds", "Age of the oldest line still "
                "waiting for a result, by variant (since its job was submitted)",
                labels=["variant"])
            pending = exists().where(Line.job_id == Job.id, Line.status == "pending")
            for queue, created in session.execute(
                    select(Job.queue, func.min(Job.created_at))
                    .where(Job.status.in_(ACTIVE_JOB_STATUSES), pending).group_by(Job.queue)):
                oldest.add_metric([variant_name(queue)], (now - aware(created)).total_seconds())
            yield oldest

    def _queue_depths(self, queues: list[str]) -> Iterator:
        """Messages waiting on each broker queue that has unfinished jobs."""
        from batchq.celery_app import queue_depth

        depth = GaugeMetricFamily("batchq_queue_depth", "Messages waiting in the broker queue, "
                                  "by variant", labels=["variant"])
        up = GaugeMetricFamily("batchq_broker_up", "1 if the last scrape could read the broker")
        try:
            for queue in queues:
                depth.add_metric([variant_name(queue)], queue_depth(self.settings, queue))
            up.add_metric([], 1)
        except Exception as exc:
            log.warning("metrics: cannot read the broker: %s", exc)
            up.add_metric([], 0)
        yield up
        yield depth


def registry(settings: Settings) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobMetrics(settings))
    return registry


def serve(settings: Settings, address: str, port: int) -> None:
    """Serve /metrics until interrupted."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=address, registry=registry(settings))
    while True:
        time.sleep(3600)
