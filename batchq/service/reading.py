"""Reading jobs back: their views, and their results in the formats users asked in."""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

from batchq.config import Settings, get_settings
from batchq.formats import LineResult
from batchq.service import result_parts
from batchq.service.result_parts import Written
from batchq.states import LineStatus
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
             ) -> tuple[JobView, Iterator[tuple[LineStatus, bytes]]]:
    """The job's view and each line as a result line (JSON and a newline, UTF-8) with its
    status, in input order, streamed."""
    settings = settings or get_settings()
    view = status(job_ref, settings)
    return view, result_parts.rendered_lines(result_parts.Span.of(settings, view))


def write_results(job_ref: str, out: IO[bytes], errors: IO[bytes] | None = None,
                  settings: Settings | None = None) -> tuple[JobView, Written]:
    """Write one JSON line per input line, in input order; lines that ended without an
    output go to `errors` when it is given."""
    settings = settings or get_settings()
    view = status(job_ref, settings)
    return view, result_parts.write(result_parts.Span.of(settings, view), view.counts.total,
                                    out, errors)
