"""The one owner of state changes (batchq.store.transitions), driven directly on both databases:
claims are fenced, a line is written once, cancel and retry move exactly what they should."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
from sqlalchemy import select, text, update

from batchq.config import Settings
from batchq.errors import NotNow
from batchq.formats import LineKind
from batchq.states import ChunkStatus, JobStatus
from batchq.store.database import get_engine
from batchq.store.intake import NewJob, NewLine, create_job
from batchq.store.models import Chunk
from batchq.store.reads import batch_records, job_view, line_results
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
    reasoning_tokens: int = 0
    decode_slots: int = 2
    seconds: float = 0.1
    peak_memory_bytes: int = 0


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


def test_a_claim_returns_the_chunk_its_lines_and_the_job_settings_and_starts_the_job(settings):
    """PostgreSQL claims in two statements (batchq.store.quick_claim), SQLite in a session: the
    same claim, read through the columns' own types (a custom_id with NUL, the line kinds)."""
    import uuid

    from batchq.store.reads import chunk_refs

    job = NewJob(id=uuid.uuid4().hex, name=None, source="t.jsonl", model="m", quant="none",
                 queue=QUEUE, settings={"max_new_tokens": 5}, total_lines=3, expires_at=None)
    rows = [NewLine(1, "a\x00b", LineKind.PROMPT, '{"params": {}, "text": "x"}', chunk_seq=1),
            NewLine(2, "c2", LineKind.MESSAGES, '{"params": {}, "messages": []}', chunk_seq=1),
            NewLine(3, "bad", LineKind.INVALID, refused="invalid JSON")]
    chunk, = create_job(settings, job, rows, {1: VARIANT})
    store = Transitions(settings)
    claim = store.claim(chunk.id, "w1", QUEUE)
    assert not isinstance(claim, str)
    assert claim.chunk == chunk_refs(settings, [chunk.id])[0] and claim.token == 1
    assert claim.job_settings == {"max_new_tokens": 5}
    assert [(line.custom_id, line.kind, line.request, line.attempts, line.error)
            for line in claim.lines] == [
        ("a\x00b", LineKind.PROMPT, '{"params": {}, "text": "x"}', 0, None),
        ("c2", LineKind.MESSAGES, '{"params": {}, "messages": []}', 0, None)]
    view = job_view(settings, job.id)
    assert view.status is JobStatus.RUNNING and view.metrics.started_at is not None
    assert store.claim(chunk.id, "w2", QUEUE) == "held by another worker"
    store.cancel(job.id)
    assert store.claim(chunk.id, "w2", QUEUE) == "already final"


def interleaved_job(settings: Settings, lines: int, chunks: int) -> tuple[str, list]:
    """A job whose line n runs in chunk n % chunks + 1 (submit's chunks interleave in the file
    like this: they group lines by length), and whose every seventh line was refused."""
    import uuid

    job = NewJob(id=uuid.uuid4().hex, name=None, source="t.jsonl", model="m", quant="none",
                 queue=QUEUE, settings={}, total_lines=lines, expires_at=None)
    rows = [NewLine(n, f"bad{n}", LineKind.INVALID, refused="invalid JSON") if n % 7 == 0
            else NewLine(n, f"c{n}", LineKind.PROMPT, '{"params": {}, "messages": []}',
                         chunk_seq=n % chunks + 1) for n in range(1, lines + 1)]
    return job.id, create_job(settings, job, rows, {seq: VARIANT
                                                    for seq in range(1, chunks + 1)})


def test_each_claim_takes_its_own_chunks_pending_lines_in_order(settings, monkeypatch):
    """A claim finds its chunk's lines by the numbers the chunk lists (chunks.line_nos): each
    chunk exactly its own, in line order, only the pending ones, however many it has. SQLite
    binds them in parts (transitions.IN_LIST), made small here so that a chunk takes three."""
    from batchq.store import transitions

    monkeypatch.setattr(transitions, "IN_LIST", 5)
    job_id, chunks = interleaved_job(settings, lines=40, chunks=3)
    with session_scope(settings) as session:  # a line that is final already is not claimed
        session.execute(text("UPDATE lines SET status = 'succeeded' WHERE job_id = :j AND "
                             "line_no = 4"), {"j": job_id})
    store = Transitions(settings)
    for chunk in chunks:
        claim = store.claim(chunk.id, "w1", QUEUE)
        assert not isinstance(claim, str)
        assert [line.custom_id for line in claim.lines] == [
            f"c{n}" for n in range(1, 41)
            if n % 3 + 1 == chunk.seq and n % 7 and n != 4], chunk.seq
        assert (chunk.first_line, chunk.last_line) == (
            min(n for n in range(1, 41) if n % 3 + 1 == chunk.seq and n % 7),
            max(n for n in range(1, 41) if n % 3 + 1 == chunk.seq and n % 7))
    view = job_view(settings, job_id)
    assert (view.counts.failed, view.counts.succeeded, view.counts.pending) == (5, 1, 34)
    assert view.variants[0].counts.failed == 0  # the refused lines have no chunk, no variant


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
    assert store.record_batches(chunk, 2, "w2", [Out(ids[0], "from w2")], [Stats()]) == "running"
    assert store.record_batches(chunk, 1, "w1", [Out(ids[0], "from w1")], [Stats()]) == "running"
    store.record_batches(chunk, 2, "w2", [Out(i, "from w2") for i in ids[1:]], [Stats(rows=2)])
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
    assert store.start_batch(chunk, 1, [a, b]) is JobStatus.RUNNING
    store.record_batches(chunk, 1, "w1", [Out(a, "ok")], [Stats()])
    store.note_error(chunk, 1, [b], "generation failed: boom")
    store.give_up(b, "gave up after 3 attempts: generation failed: boom")
    with pytest.raises(NotNow, match="is still running"):
        store.retry(job_id)
    store.record_batches(chunk, 1, "w1", [Out(c, "ok")], [Stats()])
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
    assert store.record_batches(chunk, 1, "w1", [], []) == "cancelled"  # it stops
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
    store.record_batches(chunk, 1, "w1", [Out(first, "in time")], [Stats()])
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
    assert store.record_batches(chunk, 1, "w1", [Out(claim.lines[1].id, "late")], [Stats()]) == "expired"
    assert [r.output for r in line_results(settings, job_id)][1] is None
    assert job_view(settings, on_time).status is JobStatus.QUEUED


def test_a_batch_write_stores_every_field_and_names_the_next_batch_in_flight(settings):
    """One statement on PostgreSQL, several on SQLite (batchq.store.batch_write): the same rows."""
    from sqlalchemy import select

    from batchq.store.models import BatchRun, Line

    store = Transitions(settings)
    job_id, (chunk,) = new_job(settings, lines=5)
    claim = store.claim(chunk.id, "w1", QUEUE)
    assert not isinstance(claim, str)
    a, b, c, d, e = (line.id for line in claim.lines)
    assert store.start_batch(chunk, 1, [a, b, c]) is JobStatus.RUNNING
    calls = [{"name": "f", "arguments": '{"x": "é"}'}]
    status = store.record_batches(chunk, 1, "w1", [
        Out(a, "NUL \x00 inside, \x01 mark", "length", prompt_tokens=7, completion_tokens=4),
        Out(b, '{"cut', "length", completion_tokens=9, error="JSON cut off"),
        Out(c, "answer", reasoning="because\x00", reasoning_tokens=3, tool_calls=calls),
    ], [Stats(rows=3, prompt_tokens=20, padded_prompt_tokens=24, completion_tokens=15,
             reasoning_tokens=3, decode_slots=18, seconds=0.5, peak_memory_bytes=123)],
        next_batch=[d, e],
        deduplicated=1)
    assert status is JobStatus.RUNNING

    def lines() -> list[tuple]:
        with session_scope(settings) as session:
            return [(r.status.value, r.output, r.error, r.finish_reason, r.prompt_tokens,
                     r.completion_tokens, r.reasoning, r.reasoning_tokens, r.tool_calls,
                     r.attempts, r.started_at is not None, r.finished_at is not None)
                    for r in session.scalars(select(Line).where(Line.job_id == job_id)
                                             .order_by(Line.line_no))]

    assert lines() == [
        ("succeeded", "NUL \x00 inside, \x01 mark", None, "length", 7, 4, None, None, None, 1,
         True, True),
        # A failed line keeps its finish reason and tokens, never an output.
        ("failed", None, "JSON cut off", "length", 3, 9, None, None, None, 1, True, True),
        ("succeeded", "answer", None, "stop", 3, 2, "because\x00", 3,
         '[{"name": "f", "arguments": "{\\"x\\": \\"é\\"}"}]', 1, True, True),
        # Named in flight, not counted: their attempts count with their results, or at the
        # next claim if this worker dies first.
        ("pending", None, None, None, None, None, None, None, None, 0, False, False),
        ("pending", None, None, None, None, None, None, None, None, 0, False, False)]
    assert in_flight(settings, chunk.id) == [d, e]
    view = job_view(settings, job_id)
    m = view.metrics
    assert (m.batches, m.prompt_tokens, m.completion_tokens, m.reasoning_tokens) == (1, 20, 15, 3)
    with session_scope(settings) as session:
        run, = session.scalars(select(BatchRun).where(BatchRun.job_id == job_id))
        assert (run.chunk_seq, run.worker, run.rows, run.padded_prompt_tokens,
                run.decode_slots, run.seconds) == (1, "w1", 3, 24, 18, 0.5)
        sums = session.execute(text(
            "SELECT generate_seconds, decode_slots, deduplicated_lines, peak_memory_bytes "
            "FROM chunks WHERE id = :c"), {"c": chunk.id}).one()
    assert tuple(sums) == (0.5, 18, 1, 123)

    store.record_batches(chunk, 1, "w1", [Out(d, "done")], [Stats()], next_batch=[e])
    assert [row[9] for row in lines()] == [1, 1, 1, 1, 0]
    # Once the job is cancelled, the next batch's attempts no longer count, a late result is
    # dropped, and a batch without rows adds no batch run.
    store.cancel(job_id)
    assert store.record_batches(chunk, 1, "w1", [Out(e, "late")], [],
                              next_batch=[e]) is JobStatus.CANCELLED
    assert [row[:2] for row in lines()][3:] == [("succeeded", "done"), ("cancelled", None)]
    assert [row[9] for row in lines()] == [1, 1, 1, 1, 0]
    # A batch about to start learns it too.
    assert store.start_batch(chunk, 1, [e]) is JobStatus.CANCELLED
    with session_scope(settings) as session:
        assert len(session.scalars(select(BatchRun).where(BatchRun.job_id == job_id)).all()) == 2


def in_flight(settings: Settings, chunk_id: int, column: str = "in_flight") -> list[int] | None:
    import json

    with get_engine(settings.database_url).connect() as db:
        value = db.execute(text(f"SELECT {column} FROM chunks WHERE id = :c"),
                           {"c": chunk_id}).scalar_one()
    return None if value is None else json.loads(value)


def marked_running(settings: Settings, chunk_id: int, lines: list[int]) -> None:
    """Wait for a mark, which the worker sends without waiting for it (PostgreSQL)."""
    deadline = time.monotonic() + 10
    while in_flight(settings, chunk_id, "running") != lines:
        assert time.monotonic() < deadline, "the mark never arrived"
        time.sleep(0.01)


def attempts_of(settings: Settings, job_id: str) -> list[tuple[str, str, int]]:
    with get_engine(settings.database_url).connect() as db:
        return [tuple(r) for r in db.execute(text(
            "SELECT custom_id, status, attempts FROM lines WHERE job_id = :j ORDER BY line_no"),
            {"j": job_id})]


def test_one_write_stores_several_batches_and_a_dead_workers_lines_in_flight_count_at_the_next_claim(
        settings):
    """A write covers the batches since the last one (a batch_runs row each, their sums on the
    chunk), counts each result's attempt, and names the lines of the batches before the next
    write in flight. If the worker dies, the next claim counts an attempt on those still
    pending; the dead claim's late writes can no longer name lines in flight."""
    store = Transitions(settings)
    job_id, (chunk,) = new_job(settings, lines=6)
    claim = store.claim(chunk.id, "w1", QUEUE)
    assert not isinstance(claim, str)
    a, b, c, d, e, f = (line.id for line in claim.lines)
    assert store.start_batch(chunk, 1, [a, b, c, d]) is JobStatus.RUNNING  # two batches ahead
    assert in_flight(settings, chunk.id) == [a, b, c, d]
    assert store.record_batches(chunk, 1, "w1", [Out(a, "1"), Out(b, "2"), Out(c, "3")],
                                [Stats(rows=2, seconds=0.5, peak_memory_bytes=7),
                                 Stats(rows=1, seconds=0.25, peak_memory_bytes=9)],
                                next_batch=[d, e]) is JobStatus.RUNNING
    assert in_flight(settings, chunk.id) == [d, e]
    with get_engine(settings.database_url).connect() as db:
        runs = db.execute(text("SELECT rows, seconds FROM batch_runs WHERE job_id = :j "
                               "ORDER BY id"), {"j": job_id}).all()
        ends = [r.finished_at for r in batch_records(settings, job_id)]
        sums = db.execute(text("SELECT batches, generate_seconds, completion_tokens, "
                               "peak_memory_bytes FROM chunks WHERE id = :c"),
                          {"c": chunk.id}).one()
    assert [tuple(r) for r in runs] == [(2, 0.5), (1, 0.25)]
    # They ran back to back: the first ended as the second began (what `batchq report` plots).
    assert (ends[1] - ends[0]).total_seconds() == pytest.approx(0.25, abs=1e-3)
    assert tuple(sums) == (2, 0.75, 4, 9)
    assert attempts_of(settings, job_id) == [
        ("c1", "succeeded", 1), ("c2", "succeeded", 1), ("c3", "succeeded", 1),
        ("c4", "pending", 0), ("c5", "pending", 0), ("c6", "pending", 0)]

    expire(settings, chunk.id)  # w1 died running d and e
    store.requeue_expired(QUEUE)
    again = store.claim(chunk.id, "w2", QUEUE)
    assert not isinstance(again, str) and again.token == 2
    assert [(line.custom_id, line.attempts) for line in again.lines] == [
        ("c4", 1), ("c5", 1), ("c6", 0)]
    assert in_flight(settings, chunk.id) is None
    store.start_batch(chunk, 2, [d])
    store.record_batches(chunk, 1, "w1", [Out(e, "late, from w1")], [Stats()], next_batch=[f])
    assert in_flight(settings, chunk.id) == [d]  # w2's, which w1 cannot replace
    store.record_batches(chunk, 2, "w2", [Out(d, "4")], [Stats()])
    assert in_flight(settings, chunk.id) is None
    assert attempts_of(settings, job_id)[3:] == [
        ("c4", "succeeded", 2), ("c5", "succeeded", 2), ("c6", "pending", 0)]
    store.cancel(job_id)  # nothing left running for the other tests on this database


@pytest.mark.services
def test_batch_writes_on_a_kept_connection_survive_its_loss(pg_url, tmp_path, monkeypatch):
    """PostgreSQL's batch writes run on a connection the worker keeps (no pool checkout, no
    ping, no BEGIN/COMMIT). Killed while idle past STALE_SECONDS, it is pinged and replaced
    unseen; killed between two batches, the write fails as an outage (the worker's `retrying`
    waits it out) and the next one gets a new connection. Nothing is written twice or lost."""
    from batchq.errors import ServiceUnavailable
    from batchq.store.sessions import KeptConnection, retrying

    settings = Settings.from_env({"BATCHQ_HOME": str(tmp_path), "BATCHQ_DATABASE_URL": pg_url,
                                  "BATCHQ_OUTAGE_SECONDS": "30"})
    store = Transitions(settings)
    job_id, (chunk,) = new_job(settings, lines=4)
    claim = store.claim(chunk.id, "w1", QUEUE)
    assert not isinstance(claim, str)
    a, b, c, d = (line.id for line in claim.lines)

    def kill_all() -> None:
        with get_engine(pg_url).connect() as db:
            db.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                            "datname = current_database() AND pid <> pg_backend_pid()"))

    store.start_batch(chunk, 1, [a])
    store.record_batches(chunk, 1, "w1", [Out(a, "one")], [Stats()], next_batch=[b])

    kill_all()
    monkeypatch.setattr(KeptConnection, "STALE_SECONDS", 0.0)
    assert store.record_batches(chunk, 1, "w1", [Out(b, "two")], [Stats()],
                              next_batch=[c]) is JobStatus.RUNNING

    kill_all()  # a pool connection would be pinged and replaced; the kept one is not
    monkeypatch.setattr(KeptConnection, "STALE_SECONDS", 3600.0)
    with pytest.raises(ServiceUnavailable, match="cannot reach the database"):
        store.record_batches(chunk, 1, "w1", [Out(c, "three")], [Stats()], next_batch=[d])
    assert retrying(settings, "storing", lambda: store.record_batches(
        chunk, 1, "w1", [Out(c, "three")], [Stats()], next_batch=[d])) is JobStatus.RUNNING
    store.record_batches(chunk, 1, "w1", [Out(d, "four")], [Stats()])

    with get_engine(pg_url).connect() as db:
        rows = db.execute(text("SELECT custom_id, output, attempts FROM lines WHERE job_id = :j "
                               "ORDER BY line_no"), {"j": job_id}).all()
    assert [tuple(r) for r in rows] == [("c1", "one", 1), ("c2", "two", 1), ("c3", "three", 1),
                                        ("c4", "four", 1)]
    assert job_view(settings, job_id).metrics.batches == 4

    # The marks of batches running have a connection of their own: lost, the next mark says
    # so (its batch starts after a write instead), and the one after has a new connection.
    assert store.mark_running(chunk, 1, [d])
    with get_engine(pg_url).connect() as db:
        db.execute(text("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE "
                        "datname = current_database() AND pid <> pg_backend_pid()"))
    assert not store.mark_running(chunk, 1, [c])
    assert store.mark_running(chunk, 1, [b])
    marked_running(settings, chunk.id, [b])
    assert store.finish(chunk, claim.token) is JobStatus.COMPLETED


def test_after_a_crash_a_claim_counts_the_attempt_on_the_batch_marked_running_alone(settings):
    """A write names three batches in flight, the first of them starting; the second is
    marked running when it starts (PostgreSQL). The worker dies: the next claim counts the
    attempt on the marked batch's lines alone (the first batch ended, the third never
    started: both run in batches again). Elsewhere nothing is marked, and every line in flight
    counts. A mark that is not among the lines in flight, or comes from a dead claim, counts
    for nothing."""
    store = Transitions(settings)
    marks = settings.database_url.startswith("postgres")
    job_id, (chunk,) = new_job(settings, lines=6)
    claim = store.claim(chunk.id, "w1", QUEUE)
    assert not isinstance(claim, str)
    a, b, c, d, e, f = (line.id for line in claim.lines)
    store.start_batch(chunk, 1, [a, b, c, d, e, f], starting=[a, b])
    assert in_flight(settings, chunk.id, "running") == ([a, b] if marks else None)
    assert store.mark_running(chunk, 1, [c, d])
    if marks:
        marked_running(settings, chunk.id, [c, d])
    expire(settings, chunk.id)  # w1 died running c and d
    store.requeue_expired(QUEUE)
    again = store.claim(chunk.id, "w2", QUEUE)
    assert not isinstance(again, str)
    assert [(line.custom_id, line.attempts) for line in again.lines] == (
        [("c1", 0), ("c2", 0), ("c3", 1), ("c4", 1), ("c5", 0), ("c6", 0)] if marks
        else [(f"c{n}", 1) for n in range(1, 7)])
    assert in_flight(settings, chunk.id, "running") is None

    # w2 names e and f, starting them; w1's late mark is not w2's; a mark outside the lines
    # in flight (say, left from an earlier group) is no evidence: both lines in flight count.
    store.start_batch(chunk, 2, [e, f], starting=[e, f])
    assert store.mark_running(chunk, 1, [a])
    if marks:
        store.mark_running(chunk, 2, [a])
        marked_running(settings, chunk.id, [a])
    expire(settings, chunk.id)
    store.requeue_expired(QUEUE)
    third = store.claim(chunk.id, "w3", QUEUE)
    assert not isinstance(third, str)
    assert [(line.custom_id, line.attempts) for line in third.lines][4:] == (
        [("c5", 1), ("c6", 1)] if marks else [("c5", 2), ("c6", 2)])
    store.cancel(job_id)


@pytest.mark.services
def test_a_jobs_end_probes_the_index_whatever_the_statistics_say(pg_url, tmp_path):
    """Every chunk's end asks whether its job has a pending line (reads.has_lines). Statistics
    taken while a big job's lines were all pending, and not since, make PostgreSQL expect
    many: asked as EXISTS, it planned a scan of the table that stops at the first match, and
    once none was pending that read every line of every job (1.1 s with four million)."""
    from sqlalchemy import event

    from batchq.states import LineStatus
    from batchq.store.reads import has_lines

    settings = Settings.from_env({"BATCHQ_HOME": str(tmp_path), "BATCHQ_DATABASE_URL": pg_url})
    job_id, _ = new_job(settings, lines=30_000)
    engine = get_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE lines"))
        conn.execute(text("UPDATE lines SET status = 'succeeded' WHERE job_id = :j"), {"j": job_id})
    asked: list[tuple[str, object]] = []

    def remember(conn, cursor, statement, parameters, context, executemany):
        asked.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", remember)
    try:
        with session_scope(settings) as session:
            assert not has_lines(session, job_id, LineStatus.PENDING)
            assert has_lines(session, job_id, LineStatus.SUCCEEDED)
            assert not has_lines(session, job_id[::-1], LineStatus.SUCCEEDED)
    finally:
        event.remove(engine, "before_cursor_execute", remember)
    assert len(asked) == 3
    with engine.connect() as conn:
        for statement, parameters in asked:
            plan = conn.exec_driver_sql(f"EXPLAIN {statement}", parameters).scalars().all()
            assert not any("Seq Scan" in step for step in plan), plan


def test_a_claim_and_the_refused_count_probe_indexes_whatever_the_statistics_say(settings):
    """Lines have no index on their chunk (migration 0016): a claim asks for its chunk's lines
    by number, and `batchq status` counts the refused lines through their partial index. With
    PostgreSQL's statistics taken while every line was pending (and SQLite's, none), neither
    may read the job's lines whole."""
    from sqlalchemy import event

    job_id, chunks = interleaved_job(settings, lines=30_000, chunks=1000)
    engine = get_engine(settings.database_url)
    postgres = engine.dialect.name == "postgresql"
    if postgres:
        with engine.begin() as conn:
            conn.execute(text("ANALYZE lines"))
    asked: list[tuple[str, object]] = []

    def remember(conn, cursor, statement, parameters, context, executemany):
        if "chunk_seq = 0" in statement or "line_no = ANY" in statement or (
                "line_no IN" in statement):
            asked.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", remember)
    try:
        claim = Transitions(settings).claim(chunks[-1].id, "w1", QUEUE)
        assert not isinstance(claim, str)
        assert [line.custom_id for line in claim.lines] == [
            f"c{n}" for n in range(999, 30_000, 1000) if n % 7]
        assert job_view(settings, job_id).counts.failed == 30_000 // 7
    finally:
        event.remove(engine, "before_cursor_execute", remember)
    assert len(asked) == 2
    with engine.connect() as conn:
        for statement, parameters in asked:
            plan = " | ".join(str(row[-1]) for row in conn.exec_driver_sql(
                f"EXPLAIN {statement}" if postgres else f"EXPLAIN QUERY PLAN {statement}",
                parameters))
            assert "Seq Scan" not in plan and "SCAN lines" not in plan, plan
            if "chunk_seq = 0" in statement:
                assert "ix_lines_refused" in plan, plan


def test_the_metrics_line_counts_stay_true_as_jobs_end_reopen_and_go(settings):
    """`batchq metrics` adds up the counts stored when each job became final
    (store.final_counts) to a count of the active jobs' lines: after every kind of end, a
    retry and a deletion, that must be what counting every line says."""
    from batchq.states import LineStatus
    from batchq.store.final_counts import lines_by_queue
    from batchq.store.models import FinalCount
    from batchq.store.views import Counts

    def truth() -> dict:
        with get_engine(settings.database_url).connect() as conn:
            return {(queue, LineStatus(status)): n for queue, status, n in conn.execute(text(
                "SELECT coalesce(c.queue, j.queue), l.status, count(*) FROM lines l "
                "JOIN jobs j ON j.id = l.job_id LEFT JOIN chunks c ON c.job_id = l.job_id "
                "AND c.seq = l.chunk_seq GROUP BY coalesce(c.queue, j.queue), l.status"))}

    def kept(job_id: str) -> int:
        with session_scope(settings) as session:
            return len(session.scalars(select(FinalCount).where(FinalCount.job_id == job_id))
                       .all())

    def same(*jobs: str) -> None:
        with session_scope(settings) as session:
            assert lines_by_queue(session) == truth()
        for job_id in jobs:  # and each job's own counts, as `batchq status` shows them
            with get_engine(settings.database_url).connect() as conn:
                counted = dict(conn.execute(text("SELECT status, count(*) FROM lines WHERE "
                                                 "job_id = :j GROUP BY status"), {"j": job_id}).all())
            assert job_view(settings, job_id).counts == Counts.of(
                {LineStatus(status): n for status, n in counted.items()})

    store = Transitions(settings)
    failed, (chunk,) = new_job(settings, lines=3, refused=1)
    claim = store.claim(chunk.id, "w1", QUEUE)
    assert not isinstance(claim, str)
    a, b, c = (line.id for line in claim.lines)
    store.record_batches(chunk, 1, "w1", [Out(a, "ok"), Out(c, "ok")], [Stats()])
    same()  # running: its lines counted as they are
    store.give_up(b, "gave up after 3 attempts: generation failed: boom")
    assert store.finish(chunk, claim.token) is JobStatus.FAILED
    assert kept(failed) == 2  # succeeded and failed, on one queue
    same(failed)
    store.retry(failed)
    assert kept(failed) == 0
    same(failed)
    again = store.claim(chunk.id, "w2", QUEUE)
    assert not isinstance(again, str)
    store.record_batches(chunk, again.token, "w2", [Out(b, "ok now")], [Stats()])
    assert store.finish(chunk, again.token) is JobStatus.FAILED  # the refused line stays failed
    same(failed)

    cancelled, _ = new_job(settings, lines=2)
    store.cancel(cancelled)
    assert kept(cancelled) == 1
    same(cancelled)
    from datetime import timedelta

    from batchq.store.database import utcnow

    expired, _ = new_job(settings, lines=2, expires_at=utcnow() - timedelta(seconds=1))
    assert store.expire_overdue(expired) == [expired]
    assert kept(expired) == 1
    same(expired)
    with get_engine(settings.database_url).begin() as conn:
        conn.execute(text("DELETE FROM jobs WHERE id = :j"), {"j": failed})
    assert kept(failed) == 0
    same()
