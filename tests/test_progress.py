"""The progress bar `status --watch` and `submit --wait` draw, as text."""

import io
from datetime import UTC, datetime, timedelta

from batchq.observe.progress import Screen, bar
from batchq.states import JobStatus
from batchq.store.views import Counts, JobMetrics, JobView

START = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def job(status="running", done=250, failed=3, total=1000, rate=512.4, name=None, run=None,
        started=START):
    """A job's view as read `run` seconds after it started (50 s while it still runs)."""
    seconds = run or 50
    read_at = START + timedelta(seconds=seconds)
    metrics = JobMetrics(created_at=START, started_at=started,
                         finished_at=read_at if run else None, now=read_at, generate_seconds=0,
                         batches=0, prompt_tokens=0, padded_prompt_tokens=0,
                         completion_tokens=round((rate or 0) * seconds), decode_slots=0,
                         peak_memory_bytes=0)
    return JobView(id="a1b2c3d4e5f6a7b8", name=name, status=JobStatus(status), model="m",
                   quant="nf4", queue="batchq.qwen2.5-7b-instruct.nf4", source=None, settings={},
                   counts=Counts(total, done - failed, failed, 0, total - done), chunks=1,
                   metrics=metrics)


def test_running_job_bar_shows_done_failed_rate_eta_and_variant():
    # 250 of 1000 lines in 50 s: 750 left at 5 lines/s is 150 s.
    line = bar(job(), now=START + timedelta(seconds=50), width=20)
    assert line == ("a1b2c3d4e5f6 running    [#####...............]  250/1000  25%  "
                    "3 failed  512 tok/s  ETA 2m30s  qwen2.5-7b-instruct/nf4")


def test_a_job_on_several_variants_names_them_all():
    from dataclasses import replace

    from batchq.store.views import VariantShare

    shares = tuple(VariantShare(m, q, f"batchq.{m}.{q}", Counts(), 1, 0) for m, q in (
        ("qwen2.5-7b-instruct", "nf4"), ("qwen3-8b", "none")))
    line = bar(replace(job(), variants=shares), now=START + timedelta(seconds=50), width=20)
    assert line.endswith("ETA 2m30s  qwen2.5-7b-instruct/nf4 + qwen3-8b/none")


def test_finished_job_says_how_long_it_took_and_names_the_job():
    line = bar(job("completed", done=1000, failed=0, run=3725, name="nightly"), width=10)
    assert line == ("a1b2c3d4e5f6 completed  [##########]  1000/1000 100%  0 failed  "
                    "512 tok/s  took 1h02m  qwen2.5-7b-instruct/nf4  (nightly)")


def test_queued_job_has_no_eta_and_no_rate_yet():
    info = job("queued", done=0, failed=0, rate=None, started=None)
    assert bar(info, width=4) == ("a1b2c3d4e5f6 queued     [....]  0/1000   0%  0 failed  "
                                  "qwen2.5-7b-instruct/nf4")


def test_a_log_gets_each_change_once_and_a_terminal_is_redrawn_in_place():
    log = io.StringIO()
    screen = Screen(log, tty=False)
    screen.show(["a 1"], key=1)
    screen.show(["a 1 (eta changed)"], key=1)
    screen.show(["a 2"], key=2)
    assert log.getvalue() == "a 1\na 2\n"

    term = io.StringIO()
    screen = Screen(term, tty=True)
    screen.show(["job 1", "job 2"])
    screen.show(["job 1 done", "job 2"])
    assert term.getvalue() == ("\r\033[Kjob 1\n\r\033[Kjob 2\n\033[J"
                               "\033[F\033[F\r\033[Kjob 1 done\n\r\033[Kjob 2\n\033[J")
