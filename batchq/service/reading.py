"""Reading jobs back: their views, and their results in the formats users asked in."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from batchq.config import Settings, get_settings
from batchq.formats import LineResult, compact_json, render_result
from batchq.states import UNANSWERED, LineStatus
from batchq.store import reads
from batchq.store.views import ChunkRef, JobView


def status(job_ref: str, settings: Settings | None = None) -> JobView:
    """One job by id or unique id prefix."""
    return reads.job_view(settings or get_settings(), job_ref)


def list_jobs(limit: int = 20, settings: Settings | None = None) -> list[JobView]:
    """The most recent jobs, newest first."""
    return reads.recent_jobs(settings or get_settings(), limit)


def active_jobs(settings: Settings | None = None) -> list[JobView]:
    """Jobs still queued or running, oldest first."""
    return reads.active_jobs(settings or get_settings())


def chunks(job_ref: str, settings: Settings | None = None) -> list[ChunkRef]:
    return reads.job_chunks(settings or get_settings(), job_ref)


def results(job_ref: str, settings: Settings | None = None
            ) -> tuple[JobView, Iterator[LineResult]]:
    """The job's view and its lines in input order, streamed from the database."""
    settings = settings or get_settings()
    view = status(job_ref, settings)
    return view, reads.line_results(settings, view.id)


def rendered(job_ref: str, settings: Settings | None = None
             ) -> tuple[JobView, Iterator[tuple[LineStatus, str]]]:
    """The job's view and each line as a result line (JSON, no newline) with its status, in
    input order, streamed: the one place results are rendered."""
    view, rows = results(job_ref, settings)
    created = int(view.metrics.created_at.timestamp())
    return view, ((row.status, compact_json(render_result(row, view.id, view.model, created)))
                  for row in rows)


@dataclass(frozen=True)
class Written:
    results: int  # lines written to the results
    errors: int  # failed, cancelled and expired lines written to the errors file


def write_results(job_ref: str, out: IO[str], errors: IO[str] | None = None,
                  settings: Settings | None = None) -> tuple[JobView, Written]:
    """Write one JSON line per input line, in input order; lines that ended without an
    output go to `errors` when it is given."""
    view, lines = rendered(job_ref, settings)
    written = failed = 0
    for status, line in lines:
        if errors is not None and status in UNANSWERED:
            errors.write(line + "\n")
            failed += 1
        else:
            out.write(line + "\n")
            written += 1
    return view, Written(written, failed)
