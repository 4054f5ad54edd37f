"""Writing a job's result lines, and a big job's in two processes: this one writes the first
half of its lines while a second process (service.second_process) writes the rest to spool
files, which are then appended, so the output is byte for byte what one process writes.

Rendering is pure Python (fetch, build, encode: about 7 us a line) and the database does
little meanwhile, so on a machine with a second core a million-line job's results take about a
third less time (6.8 s against 4.6 s here: the database's side and the append are shared by
both halves). Each half is read in its own transaction: lines that change while a running
job's results are written may be seen as they were a moment apart, as they may by one reader.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import IO

from batchq.config import Settings
from batchq.formats import json_line, render_result
from batchq.service import second_process
from batchq.states import UNANSWERED, LineStatus
from batchq.store import reads
from batchq.store.views import JobView

log = logging.getLogger(__name__)

# Below this a second process (about 0.65 s to start, import and append its part) saves less
# than it costs: 200,000 lines took 1.3 s in one process and 1.4 s in two, a million 6.8 s
# and 4.6 s (in-process, PostgreSQL, two cores).
PARALLEL_FROM_LINES = 300_000


@dataclass(frozen=True)
class Written:
    results: int  # lines written to the results
    errors: int  # failed, cancelled and expired lines written to the errors file


@dataclass(frozen=True)
class Span:
    """A job's lines numbered `first` to `last` (None: its last), and what rendering needs."""

    settings: Settings
    job_id: str
    model: str  # the job's, for a line that never ran on one of its own
    created: int  # the job's creation, in seconds (OpenAI's `created`)
    first: int = 1
    last: int | None = None

    @classmethod
    def of(cls, settings: Settings, view: JobView) -> Span:
        return cls(settings, view.id, view.model, int(view.metrics.created_at.timestamp()))


def rendered_lines(span: Span) -> Iterator[tuple[LineStatus, bytes]]:
    """Each line of the span as a result line (JSON and a newline, UTF-8), with its status, in
    input order, streamed: the one place results are rendered."""
    for row in reads.line_results(span.settings, span.job_id, span.first, span.last):
        yield row.status, json_line(render_result(row, span.job_id, span.model, span.created))


def write(span: Span, total: int, out: IO[bytes], errors: IO[bytes] | None, *,
          from_lines: int = PARALLEL_FROM_LINES) -> Written:
    """One line per input line of a job of `total` lines, in input order, to `out`; lines that
    ended without an output go to `errors` when it is given. In two processes when the job is
    big enough and a second core is there."""
    if total < max(from_lines, 2) or second_process.cores() < 2:
        return _write_span(span, out, errors)
    middle = span.first + total // 2  # line numbers are the file's: near enough its middle
    spools = _Spools.make(errors is not None)
    rest = replace(span, first=middle)
    try:
        head, tail = second_process.beside(
            _write_rest, (rest, spools),
            lambda: _write_span(replace(span, last=middle - 1), out, errors))
        if tail is None:
            log.warning("could not write the results of job %s in two processes; writing the "
                        "rest in one", span.job_id)
            tail = _write_span(rest, out, errors)
        else:
            _append(out, spools.results)
            if errors is not None and spools.errors is not None:
                _append(errors, spools.errors)
    finally:
        spools.remove()
    return Written(head.results + tail.results, head.errors + tail.errors)


def _write_span(span: Span, out: IO[bytes], errors: IO[bytes] | None) -> Written:
    written = failed = 0
    for status, line in rendered_lines(span):
        if errors is not None and status in UNANSWERED:
            errors.write(line)
            failed += 1
        else:
            out.write(line)
            written += 1
    return Written(written, failed)


@dataclass(frozen=True)
class _Spools:
    """Where the second process writes its results and errors."""

    results: str
    errors: str | None

    @classmethod
    def make(cls, errors: bool) -> _Spools:
        return cls(_spool(), _spool() if errors else None)

    def remove(self) -> None:
        for path in (self.results, self.errors):
            if path is not None:
                os.unlink(path)


def _spool() -> str:
    fd, path = tempfile.mkstemp(prefix="batchq-results-", suffix=".jsonl")
    os.close(fd)
    return path


def _write_rest(task: tuple[Span, _Spools]) -> Written:
    """In the second process: the span's lines into the spools."""
    span, spools = task
    with open(spools.results, "wb") as out:
        if spools.errors is None:
            return _write_span(span, out, None)
        with open(spools.errors, "wb") as errors:
            return _write_span(span, out, errors)


def _append(out: IO[bytes], path: str) -> None:
    with open(path, "rb") as part:
        shutil.copyfileobj(part, out, 1 << 20)
