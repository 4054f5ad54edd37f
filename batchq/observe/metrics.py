"""`batchq metrics`: batchq's own Prometheus metrics, read from the database at each scrape.

The database is the truth, so any number of these processes (or none) can run, and they all
agree; nothing is counted in memory and lost on restart. Flower's /metrics covers the Celery
side (task events per worker); this covers the jobs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from batchq.config import Settings
from batchq.queue.publish import queue_depth
from batchq.states import JobStatus, LineStatus
from batchq.store.stats import Totals, totals
from batchq.variants import variant_name

log = logging.getLogger(__name__)

# tokens/s is over the batches that ended in this window: recent enough to show a stall.
RATE_WINDOW_SECONDS = 60


class JobMetrics(Collector):
    def __init__(self, settings: Settings):
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("batchq_database_up",
                               "1 if the last scrape could read the database")
        try:
            found = totals(self.settings, RATE_WINDOW_SECONDS)
        except Exception as exc:  # a scrape that fails says so, rather than erroring
            log.warning("metrics: cannot read the database: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from _families(found)
        yield from self._queue_depths(found.active_queues)

    def _queue_depths(self, queues: list[str]) -> Iterator[Metric]:
        """Messages waiting on each broker queue that has unfinished jobs."""
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


def _families(found: Totals) -> Iterator[Metric]:
    jobs = GaugeMetricFamily("batchq_jobs", "Jobs by status", labels=["status"])
    for status in JobStatus:
        jobs.add_metric([status.value], found.jobs.get(status, 0))
    yield jobs

    lines = GaugeMetricFamily(
        "batchq_lines", "Lines by variant and status (pending, succeeded, failed, "
        "cancelled); a retry moves failed lines back to pending", labels=["variant", "status"])
    for queue in sorted({queue for queue, _ in found.lines}):
        for line_status in LineStatus:
            lines.add_metric([variant_name(queue), line_status.value],
                             found.lines.get((queue, line_status), 0))
    yield lines

    tokens_in = CounterMetricFamily("batchq_prompt_tokens", "Prompt tokens generated from, "
                                    "by variant", labels=["variant"])
    tokens_out = CounterMetricFamily("batchq_completion_tokens", "Tokens generated, by variant",
                                     labels=["variant"])
    for queue, (prompt, completion) in found.tokens.items():
        tokens_in.add_metric([variant_name(queue)], prompt)
        tokens_out.add_metric([variant_name(queue)], completion)
    yield tokens_in
    yield tokens_out

    rate = GaugeMetricFamily(
        "batchq_tokens_per_second", f"Output tokens per second by variant, over the batches "
        f"that ended in the last {RATE_WINDOW_SECONDS} s", labels=["variant"])
    for queue, completion in found.recent_tokens.items():
        rate.add_metric([variant_name(queue)], completion / RATE_WINDOW_SECONDS)
    yield rate

    chunks = GaugeMetricFamily("batchq_chunks", "Chunks of queued and running jobs, by variant "
                               "and status", labels=["variant", "status"])
    for (queue, chunk_status), n in found.chunks.items():
        chunks.add_metric([variant_name(queue), chunk_status.value], n)
    yield chunks

    oldest = GaugeMetricFamily(
        "batchq_oldest_pending_line_age_seconds", "Age of the oldest line still waiting for a "
        "result, by variant (since its job was submitted)", labels=["variant"])
    for queue, age in found.oldest_pending.items():
        oldest.add_metric([variant_name(queue)], age)
    yield oldest

    runs = GaugeMetricFamily("batchq_schedule_runs", "Runs of each schedule by status (completed, "
                             "failed, skipped, missed, running, ...)", labels=["schedule", "status"])
    for (name, run_status), n in found.schedule_runs.items():
        runs.add_metric([name, run_status], n)
    yield runs
    success = GaugeMetricFamily("batchq_schedule_last_success_timestamp_seconds", "When each "
                                "schedule's last completed run ended (alert if too old)",
                                labels=["schedule"])
    for name, when in found.schedule_last_success.items():
        success.add_metric([name], when)
    yield success
    documents = GaugeMetricFamily("batchq_schedule_documents", "Documents each schedule's runs "
                                  "took, by what became of them (succeeded, failed, unreadable, "
                                  "unchanged, deleted)", labels=["schedule", "status"])
    for (name, document_status), n in found.schedule_documents.items():
        documents.add_metric([name, document_status], n)
    yield documents


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
