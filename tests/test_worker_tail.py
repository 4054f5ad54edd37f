"""A chunk's last write and finish run in the worker's tail, beside the next chunk: the chunk's
task returns first, the next chunk's first write waits for them, and the job still ends once,
when its last chunk's tail commits. Driven in-process on both databases, with the engine
that generates nothing."""

from __future__ import annotations

import threading
import uuid

from batchq.engine.null import NullEngine
from batchq.engine.planning import BatchBudget
from batchq.formats import LineKind
from batchq.states import JobStatus, LineStatus
from batchq.store.intake import NewJob, NewLine, create_job
from batchq.store.reads import job_view, line_results
from batchq.worker.chunk_run import run_chunk
from batchq.worker.runtime import WorkerRuntime
from tests.test_transitions import VARIANT


def two_chunk_job(settings) -> tuple[str, list]:
    job = NewJob(id=uuid.uuid4().hex, name=None, source="t.jsonl", model="m", quant="none",
                 queue=VARIANT.queue, settings={}, total_lines=6, expires_at=None)
    rows = [NewLine(n, f"c{n}", LineKind.PROMPT, '{"params": {}, "messages": []}',
                    chunk_seq=1 + (n > 3)) for n in range(1, 7)]
    return job.id, create_job(settings, job, rows, {1: VARIANT, 2: VARIANT})


def test_a_chunks_finish_runs_beside_the_next_chunk_which_writes_only_after_it(settings):
    job_id, (first, second) = two_chunk_job(settings)
    runtime = WorkerRuntime(NullEngine(BatchBudget(max_rows=2)), VARIANT, settings, "w")
    store, order = runtime.store, []
    held = threading.Event()  # the first chunk's finish waits for it
    finish, start_batch = store.finish, store.start_batch

    def slow_finish(chunk, token):
        if chunk.seq == 1:
            assert held.wait(30)
        order.append(("finish", chunk.seq))
        return finish(chunk, token)

    def noted_start(chunk, token, line_ids, starting=()):
        order.append(("first write", chunk.seq))
        return start_batch(chunk, token, line_ids, starting)

    store.finish, store.start_batch = slow_finish, noted_start

    # The task returns its counts while its finish waits.
    summary = run_chunk(first.id, runtime)
    assert (summary["succeeded"], summary["lines"]) == (3, 3)
    job = job_view(settings, job_id)
    assert (job.status, job.running_chunks) == (JobStatus.RUNNING, 1)

    # The next chunk is claimed meanwhile, but its first write waits for that finish.
    next_chunk = threading.Thread(target=run_chunk, args=(second.id, runtime))
    next_chunk.start()
    next_chunk.join(0.5)
    assert next_chunk.is_alive() and order == [("first write", 1)]
    held.set()
    next_chunk.join(30)
    runtime.tail.wait()
    assert order == [("first write", 1), ("finish", 1), ("first write", 2), ("finish", 2)]
    job = job_view(settings, job_id)
    assert (job.status, job.running_chunks) == (JobStatus.COMPLETED, 0)
    assert all(r.status is LineStatus.SUCCEEDED for r in line_results(settings, job_id))
