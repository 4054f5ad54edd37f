"""A new job's rows: the job, every line and the chunks, written in one transaction, so a job
exists whole or not at all."""

from __future__ import annotations

import itertools
import json
import logging
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, insert, text, update
from sqlalchemy.orm import Session

from batchq.config import Settings
from batchq.formats import LineKind
from batchq.states import ChunkStatus, JobStatus, LineStatus
from batchq.store.database import utcnow
from batchq.store.models import LINES, Chunk, Job, line_numbers_json, text_bind
from batchq.store.reads import select_chunks
from batchq.store.sessions import session_scope
from batchq.store.views import ChunkRef
from batchq.variants import Variant

log = logging.getLogger(__name__)

INSERT_BATCH = 1000

# More rows written in the job's transaction (an HTTP batch's own row): called with the
# session once the job's rows are in it.
Also = Callable[[Session], None]


@dataclass(frozen=True)
class NewJob:
    id: str
    name: str | None
    source: str | None  # the file it came from, for people
    model: str
    quant: str
    queue: str
    settings: dict[str, Any]  # job-level generation settings
    total_lines: int
    expires_at: datetime | None = None  # the end of its completion window, if it has one


class NewLine(NamedTuple):
    """An accepted line (with its request and chunk), or a refused one (with its reason). A
    tuple: a frozen dataclass's __init__ was a tenth of the client's side of a big COPY."""

    line_no: int
    custom_id: str
    kind: LineKind
    request: str | None = None  # JSON of the normalised request
    chunk_seq: int = 0  # 0 is no chunk: a refused line never runs
    refused: str | None = None


def create_job(settings: Settings, job: NewJob, lines: Iterable[NewLine],
               variant_of_chunk: Mapping[int, Variant], also: Also | None = None
               ) -> list[ChunkRef]:
    """Store the job, its lines (streamed, inserted a thousand at a time) and one chunk per
    chunk_seq the accepted lines use, on its variant's queue, and `also`'s rows. Returns the
    chunks, to be queued."""
    now = utcnow()
    with session_scope(settings) as session:
        session.add(Job(
            id=job.id, name=job.name, source=job.source, model=job.model, quant=job.quant,
            queue=job.queue, status=JobStatus.QUEUED, settings=json.dumps(job.settings),
            total_lines=job.total_lines, total_chunks=0, created_at=now,
            expires_at=job.expires_at))
        session.flush()
        members: dict[int, array[int]] = {}  # chunk seq -> its line numbers, ascending

        def spanned() -> Iterator[NewLine]:
            for line in lines:
                if line.refused is None:
                    if (numbers := members.get(line.chunk_seq)) is None:
                        numbers = members[line.chunk_seq] = array("i")
                    numbers.append(line.line_no)
                yield line

        db = session.connection()
        postgres = db.dialect.name == "postgresql"
        if postgres:
            _copy_lines(db, job.id, spanned(), now)
        else:
            _insert_lines(db, (_line_row(job.id, line, now) for line in spanned()))
        session.execute(insert(Chunk), [_chunk_row(job.id, seq, members[seq],
                                                   variant_of_chunk[seq], now)
                                        for seq in sorted(members)])
        session.execute(update(Job).where(Job.id == job.id).values(total_chunks=len(members)))
        if also is not None:
            also(session)
        chunks = select_chunks(session, Chunk.job_id == job.id)
    if postgres and job.total_lines >= ANALYZE_AFTER_LINES:
        _analyze(settings)
    return chunks


# A job this big changes the statistics of lines and chunks enough that the planner, until
# autovacuum catches up (a minute or more), picks nested loops over a million rows.
ANALYZE_AFTER_LINES = 20_000


def _analyze(settings: Settings) -> None:
    """Best effort: the job is stored already, and its chunks still have to be queued."""
    try:
        with session_scope(settings) as session:
            session.execute(text("ANALYZE lines, chunks"))
    except Exception as exc:  # autovacuum will get there; the job must not fail for it
        log.warning("could not ANALYZE after a big job (%s); reads may be slow until "
                    "autovacuum does", exc)


# Every column a new line's row sets (_line_row), in the order the statements below name them.
LINE_COLUMNS = ("job_id", "line_no", "chunk_seq", "custom_id", "kind", "attempts", "created_at",
                "request", "status", "finished_at", "error")


def _copy_lines(db: Connection, job_id: str, lines: Iterator[NewLine], now: datetime) -> None:
    """PostgreSQL's COPY, in the job's transaction: several times faster than INSERTs for a
    big file. Each row is written as COPY's own text format, sixteen hundred rows to a
    message: going through the driver's per-value adaptation cost more than the server took
    to store the row. The values are _line_row's, as an INSERT would bind them."""
    raw = db.connection.driver_connection
    assert raw is not None
    custom_id, error = (text_bind(db.dialect, name) for name in ("custom_id", "error"))
    at = now.isoformat()
    accepted = f"\t{LineStatus.PENDING.value}\t\\N\t\\N\n"
    with raw.cursor() as cursor, cursor.copy(
            f"COPY lines ({', '.join(LINE_COLUMNS)}) FROM STDIN") as copy:
        while batch := list(itertools.islice(lines, COPY_BATCH)):
            text_rows = []
            for line in batch:
                head = (f"{job_id}\t{line.line_no}\t{line.chunk_seq}\t"
                        f"{_copy_escaped(custom_id(line.custom_id))}\t{line.kind.value}\t0\t"
                        f"{at}\t")
                if line.refused is None:
                    assert line.request is not None
                    # JSON text holds no raw tab or line end (it escapes them), only the
                    # backslashes of its escapes: one replace, not _copy_escaped's four.
                    text_rows.append(head + line.request.replace("\\", "\\\\") + accepted)
                else:
                    text_rows.append(
                        f"{head}null\t{LineStatus.FAILED.value}\t{at}\t"
                        f"{_copy_escaped(error(_refusal(line)))}\n")
            copy.write("".join(text_rows))


COPY_BATCH = 1600


def _copy_escaped(value: str) -> str:
    """A value in COPY's text format: backslash, tab and line ends escaped (\\N is NULL)."""
    return (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


def _refusal(line: NewLine) -> str:
    return f"invalid input line {line.line_no}: {line.refused}"


def _insert_lines(db: Connection, rows: Iterator[dict[str, Any]]) -> None:
    """Elsewhere (SQLite), the driver's own executemany, a thousand rows at a time: through
    SQLAlchemy, handling each row's parameters cost more than SQLite took to store it."""
    raw = db.connection.driver_connection
    if raw is None or db.dialect.paramstyle != "qmark":  # not SQLite's driver: the portable way
        while dicts := list(itertools.islice(rows, INSERT_BATCH)):
            db.execute(insert(LINES), dicts)
        return
    sql = (f"INSERT INTO lines ({', '.join(LINE_COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(LINE_COLUMNS))})")
    cursor = raw.cursor()
    bound = _bound(db, rows)
    while batch := list(itertools.islice(bound, INSERT_BATCH)):
        cursor.executemany(sql, batch)


def _bound(db: Connection, rows: Iterator[dict[str, Any]]) -> Iterator[list[Any]]:
    """Each row's values in LINE_COLUMNS order, each through its column's own bind processing
    (enums to their strings, NUL-safe text, UTC times), as an INSERT's would be."""
    processors = [LINES.c[name].type.bind_processor(db.dialect) for name in LINE_COLUMNS]
    steps = list(zip(LINE_COLUMNS, processors, strict=True))
    for row in rows:
        yield [value if process is None else process(value)
               for name, process in steps for value in (row[name],)]


def _line_row(job_id: str, line: NewLine, now: datetime) -> dict[str, Any]:
    row: dict[str, Any] = {"job_id": job_id, "line_no": line.line_no,
                           "chunk_seq": line.chunk_seq, "custom_id": line.custom_id,
                           "kind": line.kind, "attempts": 0, "created_at": now}
    # Every row has the same keys: one Core executemany takes its columns from the first row.
    if line.refused is None:
        row.update(request=line.request, status=LineStatus.PENDING, finished_at=None,
                   error=None)
    else:
        # Its request is not kept: it was not valid.
        row.update(request="null", status=LineStatus.FAILED, finished_at=now,
                   error=_refusal(line))
    return row


def _chunk_row(job_id: str, seq: int, line_nos: array[int], variant: Variant,
               now: datetime) -> dict[str, Any]:
    return {"job_id": job_id, "seq": seq, "first_line": line_nos[0], "last_line": line_nos[-1],
            "line_nos": line_numbers_json(line_nos), "queue": variant.queue,
            "model": variant.model, "quant": variant.quant, "status": ChunkStatus.QUEUED,
            "attempts": 0, "enqueued_at": now,
            "batches": 0, "prompt_tokens": 0, "padded_prompt_tokens": 0,
            "completion_tokens": 0, "decode_slots": 0, "generate_seconds": 0.0,
            "peak_memory_bytes": 0, "deduplicated_lines": 0, "reasoning_tokens": 0}
