"""A big job's results are written in two processes (service.result_parts): what they write
must be, byte for byte, what one process writes, results and errors alike."""

from __future__ import annotations

import io
import json
import uuid

import pytest

from batchq.config import Settings
from batchq.formats import LineKind
from batchq.service import result_parts, second_process
from batchq.store.intake import NewJob, NewLine, create_job
from batchq.store.reads import job_view
from batchq.store.transitions import Transitions
from tests.test_transitions import QUEUE, VARIANT, Out, Stats

KINDS = (LineKind.PROMPT, LineKind.OPENAI_CHAT, LineKind.MESSAGES, LineKind.OPENAI_COMPLETION)


def finished_job(settings: Settings) -> str:
    """41 lines of every kind: most succeeded (one output holds NUL, others non-ASCII), two
    failed, one refused at submit, and the four still open when the job was cancelled."""
    job = NewJob(id=uuid.uuid4().hex, name=None, source="t.jsonl", model="m", quant="none",
                 queue=QUEUE, settings={}, total_lines=41, expires_at=None)
    rows = [NewLine(n, f"c{n}", KINDS[n % 4], '{"params": {}, "messages": []}', chunk_seq=1)
            for n in range(1, 41)]
    rows.append(NewLine(41, "bad", LineKind.INVALID, refused="invalid JSON"))
    chunk, = create_job(settings, job, rows, {1: VARIANT})
    store = Transitions(settings)
    claim = store.claim(chunk.id, "w1", QUEUE)
    assert not isinstance(claim, str)
    ids = [line.id for line in claim.lines]
    store.record_batches(chunk, 1, "w1", [
        Out(key, "naïve \x00 answer" if n == 7 else f"answer {n} ✓") for n, key in
        enumerate(ids[:34], start=1)], [Stats()])
    for key in ids[34:36]:
        store.give_up(key, "gave up after 3 attempts: generation failed: boom")
    store.cancel(job.id)
    return job.id


def written(settings: Settings, job_id: str, *, errors: bool, from_lines: int
            ) -> tuple[result_parts.Written, bytes, bytes]:
    view = job_view(settings, job_id)
    out, err = io.BytesIO(), io.BytesIO()
    counts = result_parts.write(result_parts.Span.of(settings, view), view.counts.total, out,
                                err if errors else None, from_lines=from_lines)
    return counts, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("errors", [False, True])
def test_two_processes_write_what_one_writes(settings, errors, tmp_path, monkeypatch):
    spools = tmp_path / "spools"
    spools.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(spools))
    job_id = finished_job(settings)
    one = written(settings, job_id, errors=errors, from_lines=10**9)
    two = written(settings, job_id, errors=errors, from_lines=1)
    assert two == one
    counts, out, err = one
    lines = [json.loads(line) for line in (out + err).splitlines()]
    assert counts == (result_parts.Written(34, 7) if errors else result_parts.Written(41, 0))
    by_id = {line["custom_id"]: line for line in lines}
    assert sorted(by_id) == sorted([f"c{n}" for n in range(1, 41)] + ["bad"])
    if not errors:  # in input order
        assert [line["custom_id"] for line in lines] == [f"c{n}" for n in range(1, 41)] + ["bad"]
    assert by_id["c7"]["response"]["body"]["choices"][0]["text"] == "naïve \x00 answer"
    assert by_id["c8"]["output"] == "answer 8 ✓"
    assert by_id["c35"]["error"]["message"].startswith("gave up after 3 attempts")
    assert by_id["c40"]["status"] == "cancelled" and by_id["bad"]["status"] == "failed"
    assert list(spools.iterdir()) == []


def test_a_second_process_that_cannot_run_leaves_the_rest_to_this_one(
        settings, tmp_path, monkeypatch):
    spools = tmp_path / "spools"
    spools.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(spools))
    job_id = finished_job(settings)
    one = written(settings, job_id, errors=True, from_lines=10**9)
    monkeypatch.setattr(second_process.sys, "executable", "/bin/false")  # exits 1 at once
    assert written(settings, job_id, errors=True, from_lines=1) == one
    assert list(spools.iterdir()) == []
