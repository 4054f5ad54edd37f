"""The one owner of state changes (batchq.store.transitions), driven directly on both databases:
claims are fenced, a line is written once, cancel and retry move exactly what they should."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from sqlalchemy import text, update

from batchq.config import Settings
from batchq.errors import NotNow
from batchq.formats import LineKind
from batchq.states import ChunkStatus, JobStatus
from batchq.store.database import get_engine
from batchq.store.intake import NewJob, NewLine, create_job
from batchq.store.models import Chunk
from batchq.store.reads import job_view, line_results
from batchq.store.sessions import session_scope
from batchq.store.transitions import Transitions
from batchq.variants import Variant

VARIANT = Variant("m", "none", "some-model")
QUEUE = VARIANT.queue


@dataclass(frozen=True)
class Out:  # what the engine hands back for a line (batchq.engine.Completion's shape)
    key: int
    text: str | None
    finish_reason: str | None = "stop"
    prompt_tokens: int = 3
    completion_tokens: int = 2
    error: str | None = None
    reasoning: str | None = None
    reasoning_tokens: int = 0
    tool_calls: list | None = None


@dataclass(frozen=True)
class Stats:
    rows: int = 1
    prompt_tokens: int = 3
    padded_prompt_tokens: int = 3
    completion_tokens: int = 2
    decode_slots: int = 2
    seconds: float = 0.1
    peak_memory_bytes: int = 0


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def settings(request, tmp_path):
    url = (f"sqlite:///{tmp_path / 'batchq.db'}" if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))
    return Settings.from_env({"BATCHQ_HOME": str(tmp_path), "BATCHQ_DATABASE_URL": url})


def new_job(settings: Settings, lines: int = 3, refused: int = 0,
            expires_at=None) -> tuple[str, list]:
    import uuid

    job = NewJob(id=uuid.uuid4().hex, name=None, source="t.jsonl", model="m", quant="none",
                 queue=QUEUE, settings={}, total_lines=lines + refused, expires_at=expires_at)
    rows = [NewLine(n, f"c{n}", LineKind.PROMPT, '{"params": {}, "messages": []}', chunk_seq=1)
            for n in range(1, lines + 1)]
    rows += [NewLine(lines + n, f"bad{n}", LineKind.INVALID, refused="invalid JSON")
             for n in range(1, refused + 1)]
    return job.id, create_job(settings, job, rows, {1: VARIANT})


def expire(settings: Settings, chunk_id: int) -> None:
    with session_scope(settings) as session:
        session.execute(update(Chunk).where(Chunk.id == chunk_id).values(
            lease_expires_at=text("lease_expires_at - interval '1 hour'")
            if settings.database_url.startswith("postgres")
            else text("datetime(lease_expires_at, '-1 hour')")))


def test_a_claim_is_fenced_and_a_line_is_written_once(settings):
    store = Transitions(settings)
    job_id, (chunk,) = new_job(settings)
    first = store.claim(chunk.id, "w1", QUEUE)
    assert not isinstance(first, str) and first.token == 1 and len(first.lines) == 3
    assert job_view(settings, job_id).status is JobStatus.RUNNING
    assert store.claim(chunk.id, "w2", QUEUE) == "held by another worker"
    assert store.claim(chunk.id, "w2", "batchq.other.none") == f"wrong variant ({QUEUE})"

    expire(settings, chunk.id)  # w1 hangs: its lease runs out, the sweep re-queues the chunk
    assert [(ref.id, worker) for ref, worker in store.requeue_expired(QUEUE)] == [(chunk.id, "w1")]
    second = store.claim(chunk.id, "w2", QUEUE)
    assert not isinstance(second, str) and second.token == 2

    # The stale claim can no longer renew, hand back or finish the chunk ...
    assert not store.renew(chunk.id, 1) and not store.hand_back(chunk.id, 1)
    assert store.finish(chunk, 1) is None
    assert store.renew(chunk.id, 2)
    # ... and a line is final once: w2's result stands, w1's late one is dropped.
    ids = [line.id for line in second.lines]
    assert store.record_batch(chunk, "w2", [Out(ids[0], "from w2")], Stats()) == "running"
    assert store.record_batch(chunk, "w1", [Out(ids[0], "from w1")], Stats()) == "running"
    store.record_batch(chunk, "w2", [Out(i, "from w2") for i in ids[1:]], Stats(rows=2))
    assert store.finish(chunk, 2) is JobStatus.COMPLETED
    assert [r.output for r in line_results(settings, job_id)] == ["from w2"] * 3
    view = job_view(settings, job_id)
    assert (view.counts.succeeded, view.metrics.batches) == (3, 3)


def test_cancel_and_retry_move_exactly_the_lines_they_should(settings):
    store = Transitions(settings)
    job_id, (chunk,) = new_job(settings, lines=3, refused=1)
    claim = store.claim(chunk.id, "w1", QUEUE)
    assert not isinstance(claim, str)
    a, b, c = (line.id for line in claim.lines)
    store.start_batch([a, b])
    store.record_batch(chunk, "w1", [Out(a, "ok")], Stats())
    store.note_error([b], "generation failed: boom")
    store.give_up(b, "gave up after 3 attempts: generation failed: boom")
    with pytest.raises(NotNow, match="is still running"):
        store.retry(job_id)
    store.record_batch(chunk, "w1", [Out(c, "ok")], Stats())
    assert store.finish(chunk, claim.token) is JobStatus.FAILED

    reset = store.retry(job_id[:8])
    assert (reset.lines, [r.id for r in reset.chunks], reset.refused) == (1, [chunk.id], 1)
    view = job_view(settings, job_id)
    assert view.status is JobStatus.QUEUED
    assert (view.counts.pending, view.counts.succeeded, view.counts.failed) == (1, 2, 1)
    share, = view.variants  # its chunks' lines: the refused one has no chunk
    assert (share.counts.total, share.counts.succeeded, share.counts.pending) == (3, 2, 1)
    assert (share.counts.failed, share.chunks) == (0, 1)
    with get_engine(settings.database_url).connect() as conn:
        status = conn.execute(text("SELECT status FROM chunks WHERE id = :c"),
                              {"c": chunk.id}).scalar_one()
    assert status == ChunkStatus.QUEUED

    cancelled = store.cancel(job_id)
    assert cancelled.status is JobStatus.CANCELLED and cancelled.counts.cancelled == 1
    again = store.claim(chunk.id, "w2", QUEUE)
    assert again == "already final"
    assert store.record_batch(chunk, "w1", [], Stats(rows=0)) == "cancelled"  # it stops
    with pytest.raises(NotNow, match="was cancelled"):
        store.retry(job_id)


def test_a_job_past_its_window_expires_its_open_lines_and_keeps_the_finished(settings):
    from datetime import timedelta

    from batchq.store.database import utcnow

    store = Transitions(settings)
    on_time, _ = new_job(settings, expires_at=utcnow() + timedelta(hours=1))
    job_id, (chunk,) = new_job(settings, expires_at=utcnow() + timedelta(seconds=1))
    claim = store.claim(chunk.id, "w1", QUEUE)
    assert not isinstance(claim, str)
    first = claim.lines[0].id
    store.record_batch(chunk, "w1", [Out(first, "in time")], Stats())
    assert store.expire_overdue() == []
    import time

    time.sleep(1.2)
    assert store.expire_overdue() == [job_id]
    assert store.expire_overdue() == []  # once
    view = job_view(settings, job_id)
    assert view.status is JobStatus.EXPIRED and view.metrics.finished_at is not None
    assert (view.counts.succeeded, view.counts.expired, view.counts.pending) == (1, 2, 0)
    lines = list(line_results(settings, job_id))
    assert [(r.status, r.output) for r in lines] == [
        ("succeeded", "in time"), ("expired", None), ("expired", None)]
    assert lines[1].error.startswith("batch_expired")
    # The chunk still running is told to stop; a late result does not overwrite an expired line.
    assert store.record_batch(chunk, "w1", [Out(claim.lines[1].id, "late")], Stats()) == "expired"
    assert [r.output for r in line_results(settings, job_id)][1] is None
    assert job_view(settings, on_time).status is JobStatus.QUEUED
