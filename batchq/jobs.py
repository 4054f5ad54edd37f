"""The service API: submit, status, list, cancel, wait and results. The CLI is a thin shell on it."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import tempfile
import time
import uuid
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sqlalchemy import func, insert, select, update

from batchq.batching import order_key
from batchq.db import aware, session_scope, utcnow
from batchq.engine import DEFAULT_MAX_NEW_TOKENS
from batchq.errors import BatchqError, InputError, NotFound, NotNow, ServiceUnavailable
from batchq.inputs import LineError, LineResult, Request, iter_raw_lines, parse_line, render_result
from batchq.models import INVALID_KIND, Chunk, Job, Line
from batchq.settings import Settings, get_settings, redact
from batchq.variants import resolve, variant_name

log = logging.getLogger(__name__)

MAX_PROBLEMS_SHOWN = 20
INSERT_BATCH = 1000
FINAL_JOB_STATUSES = ("completed", "failed", "cancelled")
ACTIVE_JOB_STATUSES = ("queued", "running")


@dataclass(frozen=True)
class JobSettings:
    """Job-level generation settings; each line's own settings override them."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


# ---------------------------------------------------------------- submit

def _too_big(name: str, size: int | str, settings: Settings) -> InputError:
    return InputError(name, [], 0, f"{name}: {size} bytes, over the limit of "
                      f"{settings.max_file_bytes} (BATCHQ_MAX_FILE_BYTES); no job created")


@contextmanager
def _open_input(path: str, settings: Settings) -> Iterator[tuple[str, Callable[[], IO[bytes]]]]:
    """A name for messages and a way to read the input twice (stdin is spooled to disk)."""
    if path == "-":
        with tempfile.TemporaryFile() as spool:
            copied = 0
            while block := sys.stdin.buffer.read(1 << 20):
                copied += len(block)
                if copied > settings.max_file_bytes:
                    raise _too_big("<stdin>", "more than " + str(settings.max_file_bytes),
                                   settings)
                spool.write(block)

            def reopen() -> IO[bytes]:
                spool.seek(0)
                return _Unclosed(spool)

            yield "<stdin>", reopen
        return
    file = Path(path)
    if not file.is_file():
        raise NotFound(f"{path}: no such file")
    size = file.stat().st_size
    if size > settings.max_file_bytes:
        raise _too_big(path, size, settings)
    yield path, lambda: file.open("rb")


class _Unclosed:
    """Lets `with` read a spooled file twice without closing it."""

    def __init__(self, f: IO[bytes]):
        self.f = f

    def __enter__(self) -> IO[bytes]:
        return self.f

    def __exit__(self, *exc: object) -> None:
        pass


def _size_key(request: Request, default_limit: int) -> int:
    """A line's place in length order, packed in one int (planner's key, characters for tokens)."""
    chars = len(request.text or "") + sum(len(m.get("content", "")) for m in request.messages or ())
    bucket, length = order_key(chars, request.params.get("max_new_tokens", default_limit))
    return (bucket << 40) | min(length, (1 << 40) - 1)


def _check_line(raw: bytes, line_no: int, settings: Settings) -> Request:
    if len(raw) > settings.max_line_bytes:
        raise LineError(f"line is {len(raw)} bytes, over the limit of "
                        f"{settings.max_line_bytes} (BATCHQ_MAX_LINE_BYTES)")
    return parse_line(raw, line_no)


@dataclass
class _Checked:
    """What the first pass keeps: counts, the refused lines' reasons and each line's size key."""

    accepted: int = 0
    refused: dict[int, str] = field(default_factory=dict)  # line number -> reason
    problems: list[str] = field(default_factory=list)  # the first few, for people
    sizes: array = field(default_factory=lambda: array("q"))


def _validate(name: str, stream: IO[bytes], settings: Settings,
              default_limit: int = DEFAULT_MAX_NEW_TOKENS) -> _Checked:
    """First pass: every line checked; nothing kept but counts, id digests and size keys."""
    checked = _Checked()
    seen: dict[bytes, int] = {}  # 8-byte digest of custom_id -> first line number
    for line_no, raw in iter_raw_lines(stream):
        try:
            request = _check_line(raw, line_no, settings)
            digest = hashlib.blake2b(request.custom_id.encode(), digest_size=8).digest()
            if digest in seen:
                raise LineError(f"duplicate custom_id {request.custom_id!r} "
                                f"(first used on line {seen[digest]})")
            seen[digest] = line_no
            checked.accepted += 1
            checked.sizes.append(_size_key(request, default_limit))
        except LineError as exc:
            checked.refused[line_no] = str(exc)
            if len(checked.problems) < MAX_PROBLEMS_SHOWN:
                checked.problems.append(f"{name}:{line_no}: {exc}")
        if checked.accepted + len(checked.refused) > settings.max_file_lines:
            raise InputError(name, [], 0, f"{name}: more than {settings.max_file_lines} lines "
                             "(BATCHQ_MAX_FILE_LINES); no job created")
    return checked


def _refuse(name: str, checked: _Checked, skip_invalid: bool) -> None:
    """Raise InputError unless the file may become a job (with --skip-invalid, bad lines may)."""
    if checked.refused and not skip_invalid:
        raise InputError(name, checked.problems, len(checked.refused))
    if checked.accepted == 0:
        if checked.refused:
            raise InputError(name, checked.problems, len(checked.refused),
                             f"{name}: no valid line among {len(checked.refused)}, no job created")
        raise InputError(name, [], 0, f"{name}: the file has no lines to run; no job created")


def _guess_custom_id(raw: bytes, line_no: int, settings: Settings) -> str:
    """A refused line's own custom_id when it has a readable one, else line-N."""
    if len(raw) <= settings.max_line_bytes:
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("custom_id"), str) and obj["custom_id"]:
            return obj["custom_id"]
    return f"line-{line_no}"


def validate_file(path: str, settings: Settings | None = None) -> int:
    """Check every line of a file without storing anything; returns the number of lines.

    Raises InputError naming each bad line (the first 20, then a count).
    """
    settings = settings or get_settings()
    with _open_input(path, settings) as (source, reopen), reopen() as stream:
        checked = _validate(source, stream, settings)
    _refuse(source, checked, skip_invalid=False)
    return checked.accepted


def check_broker(settings: Settings) -> None:
    from batchq.celery_app import app_for

    try:
        with app_for(settings).connection_for_write() as conn:
            # About ten seconds of retries: a broker that is restarting is waited for.
            conn.ensure_connection(max_retries=4, interval_start=0.5, interval_step=1,
                                   interval_max=3, timeout=5)
    except Exception as exc:  # kombu raises several types for one meaning
        raise ServiceUnavailable(
            f"cannot reach the broker at {redact(settings.broker_url)}: {exc}") from exc


def submit(path: str, model: str, quant: str | None = None, *,
           job_settings: JobSettings | None = None, name: str | None = None,
           settings: Settings | None = None, skip_invalid: bool = False,
           refused: list[str] | None = None) -> str:
    """Validate the whole file, store job, lines and chunks in one transaction, then enqueue.

    Returns the new job's id. Raises InputError (nothing stored) if any line is invalid, unless
    skip_invalid: then each bad line is stored as a failed line with its reason (the first
    few reasons are appended to `refused`), and the good ones run.
    """
    settings = settings or get_settings()
    variant = resolve(model, quant)
    job_settings = job_settings or JobSettings()
    default_limit = job_settings.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    with _open_input(path, settings) as (source, reopen):
        with reopen() as stream:
            checked = _validate(source, stream, settings, default_limit)
        _refuse(source, checked, skip_invalid)
        if refused is not None:
            refused.extend(checked.problems)
        chunk_of = _chunk_by_size(checked.sizes, settings.chunk_size)
        checked.sizes = array("q")
        check_broker(settings)
        job_id = uuid.uuid4().hex
        now = utcnow()
        with session_scope(settings) as session:
            session.add(Job(
                id=job_id, name=name, source=source, model=variant.model, quant=variant.quant,
                queue=variant.queue, status="queued", settings=json.dumps(job_settings.to_dict()),
                total_lines=checked.accepted + len(checked.refused), total_chunks=0,
                created_at=now))
            session.flush()
            rows: list[dict[str, Any]] = []
            spans: dict[int, list[int]] = {}  # chunk seq -> [first line, last line]
            accepted = 0
            with reopen() as stream:
                for line_no, raw in iter_raw_lines(stream):
                    if line_no in checked.refused:
                        rows.append(_refused_row(job_id, line_no, checked.refused[line_no],
                                                 _guess_custom_id(raw, line_no, settings), now))
                    else:
                        request = _check_line(raw, line_no, settings)
                        seq = chunk_of[accepted]
                        accepted += 1
                        spans.setdefault(seq, [line_no, line_no])[1] = line_no
                        rows.append({"job_id": job_id, "line_no": line_no, "chunk_seq": seq,
                                     "custom_id": request.custom_id, "kind": request.kind,
                                     "request": request.to_json(), "status": "pending",
                                     "attempts": 0, "created_at": now})
                    if len(rows) >= INSERT_BATCH:
                        session.execute(insert(Line), rows)
                        rows = []
            if rows:
                session.execute(insert(Line), rows)
            chunks = [_chunk_row(job_id, seq, *spans[seq], now) for seq in sorted(spans)]
            session.execute(insert(Chunk), chunks)
            session.execute(update(Job).where(Job.id == job_id).values(total_chunks=len(chunks)))
        enqueue_chunks(job_id, settings)
    return job_id


def _refused_row(job_id: str, line_no: int, reason: str, custom_id: str, now) -> dict[str, Any]:
    # Chunk 0 is no chunk: the line never runs. Its request is not kept: it was not valid.
    return {"job_id": job_id, "line_no": line_no, "chunk_seq": 0, "custom_id": custom_id,
            "kind": INVALID_KIND, "request": "null", "status": "failed",
            "error": f"invalid input line {line_no}: {reason}", "attempts": 0,
            "created_at": now, "finished_at": now}


def _chunk_by_size(sizes: array, chunk_size: int) -> array:
    """Chunk seq of each accepted line (in file order): largest lines first, chunk_size a chunk.

    Lines of similar length and output limit share a chunk, so the worker's batches pad little;
    the largest chunks run first, so memory trouble shows early rather than at the end.
    """
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i], -i), reverse=True)
    chunk_of = array("i", bytes(4 * len(sizes)))
    for position, index in enumerate(order):
        chunk_of[index] = position // chunk_size + 1
    return chunk_of


def _chunk_row(job_id: str, seq: int, first_line: int, last_line: int, now) -> dict[str, Any]:
    return {"job_id": job_id, "seq": seq, "first_line": first_line, "last_line": last_line,
            "status": "queued", "attempts": 0, "enqueued_at": now, "batches": 0,
            "prompt_tokens": 0,
            "padded_prompt_tokens": 0, "completion_tokens": 0, "decode_slots": 0,
            "generate_seconds": 0.0, "peak_memory_bytes": 0}


def chunk_label(job_id: str, seq: int, total: int, first: int, last: int, queue: str) -> str:
    """How a chunk is named in Flower and in worker logs: findable by `job=<id>`, and carrying
    no prompt text (input lines may be confidential; Flower shows this to its viewers)."""
    return (f"job={job_id} chunk={seq}/{total} lines={first}-{last} "
            f"variant={variant_name(queue)}")


def chunk_labels(settings: Settings, chunk_ids: list[int]) -> dict[int, str]:
    with session_scope(settings) as session:
        rows = session.execute(
            select(Chunk.id, Chunk.job_id, Chunk.seq, Job.total_chunks, Chunk.first_line,
                   Chunk.last_line, Job.queue).join(Job).where(Chunk.id.in_(chunk_ids)))
        return {row[0]: chunk_label(*row[1:]) for row in rows}


def enqueue_chunks(job_id: str, settings: Settings, chunk_ids: list[int] | None = None) -> bool:
    """One message per queued chunk of the job (or the given ones), carrying only the chunk id.

    Returns False if the broker could not take them: the job is stored all the same, and the
    workers' sweep sends the messages once the broker is back (batchq.recovery).
    """
    from batchq.celery_app import publish_chunks

    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        assert job is not None
        if chunk_ids is None:
            chunk_ids = list(session.scalars(
                select(Chunk.id).where(Chunk.job_id == job_id, Chunk.status == "queued")
                .order_by(Chunk.seq)))
        queue = job.queue
    try:
        publish_chunks(settings, queue, chunk_ids)
    except Exception as exc:  # kombu raises several types for one meaning
        log.warning("job %s is stored, but its chunks could not be queued on %s (%s); the "
                    "workers' sweep will queue them when the broker is back", job_id,
                    redact(settings.broker_url), exc)
        return False
    return True


# ---------------------------------------------------------------- reading jobs

def _find(session, job_ref: str) -> Job:
    """A job by full id or by a unique prefix of at least 4 characters, like git."""
    job = session.get(Job, job_ref)
    if job is not None:
        return job
    if len(job_ref) >= 4 and all(c in "0123456789abcdef" for c in job_ref.lower()):
        found = session.scalars(
            select(Job).where(Job.id.like(job_ref.lower() + "%")).limit(2)).all()
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise NotFound(f"job id prefix {job_ref!r} is ambiguous; give more characters")
    raise NotFound(f"no job {job_ref!r} (`batchq status` lists recent jobs)")


def _counts(session, job_id: str) -> dict[str, int]:
    by_status = dict(session.execute(
        select(Line.status, func.count()).where(Line.job_id == job_id).group_by(Line.status)).all())
    total = sum(by_status.values())
    return {"total": total, "completed": by_status.get("succeeded", 0),
            "failed": by_status.get("failed", 0), "cancelled": by_status.get("cancelled", 0),
            "pending": by_status.get("pending", 0)}


def _iso(value) -> str | None:
    value = aware(value)
    return value.isoformat(timespec="seconds") if value else None


def _describe(session, job: Job) -> dict[str, Any]:
    totals = session.execute(select(
        func.coalesce(func.sum(Chunk.prompt_tokens), 0),
        func.coalesce(func.sum(Chunk.padded_prompt_tokens), 0),
        func.coalesce(func.sum(Chunk.completion_tokens), 0),
        func.coalesce(func.sum(Chunk.decode_slots), 0),
        func.coalesce(func.sum(Chunk.generate_seconds), 0.0),
        func.coalesce(func.sum(Chunk.batches), 0),
        func.coalesce(func.max(Chunk.peak_memory_bytes), 0),
    ).where(Chunk.job_id == job.id)).one()
    # PostgreSQL sums BIGINT columns into NUMERIC: bring them back to Python ints.
    prompt, padded, completion, slots, batches, peak = (int(v) for v in (*totals[:4], *totals[5:]))
    gen_seconds = float(totals[4])
    created, started, finished = aware(job.created_at), aware(job.started_at), aware(job.finished_at)
    end = finished or utcnow()
    elapsed = (end - started).total_seconds() if started else None
    return {
        "id": job.id, "name": job.name, "status": job.status, "model": job.model,
        "quant": job.quant, "queue": job.queue, "source": job.source,
        "settings": json.loads(job.settings),
        "counts": _counts(session, job.id),
        "chunks": job.total_chunks,
        "metrics": {
            "created_at": _iso(created), "started_at": _iso(started),
            "finished_at": _iso(finished),
            "queue_wait_seconds": round((started - created).total_seconds(), 3) if started else None,
            "run_seconds": round(elapsed, 3) if elapsed is not None else None,
            "generate_seconds": round(float(gen_seconds), 3),
            "batches": int(batches),
            "prompt_tokens": int(prompt), "completion_tokens": int(completion),
            "tokens_per_second": round(completion / elapsed, 2) if elapsed else None,
            "padding_efficiency": round(prompt / padded, 4) if padded else None,
            "decode_efficiency": round(completion / slots, 4) if slots else None,
            "peak_memory_bytes": int(peak),
        },
    }


def status(job_ref: str, settings: Settings | None = None) -> dict[str, Any]:
    with session_scope(settings or get_settings()) as session:
        return _describe(session, _find(session, job_ref))


def list_jobs(limit: int = 20, settings: Settings | None = None) -> list[dict[str, Any]]:
    with session_scope(settings or get_settings()) as session:
        jobs = session.scalars(select(Job).order_by(Job.created_at.desc()).limit(limit)).all()
        return [_describe(session, job) for job in jobs]


def active_jobs(settings: Settings | None = None) -> list[dict[str, Any]]:
    """Jobs still queued or running, oldest first."""
    with session_scope(settings or get_settings()) as session:
        found = session.scalars(select(Job).where(Job.status.in_(ACTIVE_JOB_STATUSES))
                                .order_by(Job.created_at)).all()
        return [_describe(session, job) for job in found]


def cancel(job_ref: str, settings: Settings | None = None) -> dict[str, Any]:
    """Pending lines become cancelled now; a running chunk stops at its next batch boundary."""
    with session_scope(settings or get_settings()) as session:
        job = _find(session, job_ref)
        if job.status not in FINAL_JOB_STATUSES:
            now = utcnow()
            session.execute(update(Line).where(Line.job_id == job.id, Line.status == "pending")
                            .values(status="cancelled", error="cancelled by user", finished_at=now))
            job.status = "cancelled"
            job.finished_at = now
        session.flush()
        return _describe(session, job)


@dataclass(frozen=True)
class Retried:
    job_id: str
    lines: int  # failed lines queued again
    chunks: int
    refused: int  # failed lines that were refused input: they cannot run again
    queued: bool  # False if the broker was away (the sweep queues them later)


def retry(job_ref: str, settings: Settings | None = None) -> Retried:
    """Run a finished job's failed lines again as new attempts; succeeded lines stay as they are.

    Lines refused at submit (--skip-invalid) have nothing valid to run and stay failed.
    """
    settings = settings or get_settings()
    now = utcnow()
    with session_scope(settings) as session:
        job = _find(session, job_ref)
        session.refresh(job, with_for_update=True)
        if job.status not in ("completed", "failed"):
            what = ("was cancelled; submit its lines again" if job.status == "cancelled"
                    else f"is still {job.status}; retry it once it has finished")
            raise NotNow(f"job {job.id} {what}")
        failed = Line.job_id == job.id, Line.status == "failed"
        refused = session.scalar(select(func.count()).where(*failed, Line.kind == INVALID_KIND))
        seqs = sorted(set(session.scalars(
            select(Line.chunk_seq).where(*failed, Line.kind != INVALID_KIND))))
        if not seqs:
            return Retried(job.id, 0, 0, refused, True)
        lines = session.execute(
            update(Line).where(*failed, Line.kind != INVALID_KIND)
            .values(status="pending", attempts=0, error=None, output=None, finish_reason=None,
                    prompt_tokens=None, completion_tokens=None, started_at=None,
                    finished_at=None)).rowcount
        chunk_ids = list(session.scalars(select(Chunk.id).where(
            Chunk.job_id == job.id, Chunk.seq.in_(seqs)).order_by(Chunk.seq)))
        session.execute(update(Chunk).where(Chunk.id.in_(chunk_ids)).values(
            status="queued", worker=None, lease_expires_at=None, finished_at=None,
            enqueued_at=now))
        job.status = "queued"
        job.finished_at = None
        job_id = job.id
    queued = enqueue_chunks(job_id, settings, chunk_ids)
    return Retried(job_id, lines, len(chunk_ids), refused, queued)


def wait(job_ref: str, settings: Settings | None = None, poll_seconds: float = 1.0,
         on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Block until the job is final; returns its last description."""
    settings = settings or get_settings()
    while True:
        info = status(job_ref, settings)
        if on_progress:
            on_progress(info)
        if info["status"] in FINAL_JOB_STATUSES:
            return info
        time.sleep(poll_seconds)


def results(job_ref: str, settings: Settings | None = None
            ) -> tuple[dict[str, Any], Iterator[LineResult]]:
    """The job's description and its lines in input order, streamed from the database."""
    settings = settings or get_settings()
    info = status(job_ref, settings)

    def rows() -> Iterator[LineResult]:
        with session_scope(settings) as session:
            query = (select(Line.line_no, Line.custom_id, Line.kind, Line.status, Line.output,
                            Line.finish_reason, Line.error, Line.prompt_tokens,
                            Line.completion_tokens)
                     .where(Line.job_id == info["id"]).order_by(Line.line_no)
                     .execution_options(yield_per=1000))
            for row in session.execute(query):
                yield LineResult(*row)

    return info, rows()


def write_results(job_ref: str, out: IO[str], errors: IO[str] | None = None,
                  settings: Settings | None = None) -> tuple[dict[str, Any], dict[str, int]]:
    """Write one JSON line per input line, in input order; failed and cancelled lines go to
    `errors` when it is given. Returns the job's description and how many lines went where."""
    from datetime import datetime

    info, rows = results(job_ref, settings)
    created = int(datetime.fromisoformat(info["metrics"]["created_at"]).timestamp())
    counts = {"written": 0, "errors": 0}
    for row in rows:
        to_errors = errors is not None and row.status in ("failed", "cancelled")
        line = render_result(row, info["id"], info["model"], created)
        (errors if to_errors else out).write(json.dumps(line, ensure_ascii=False) + "\n")
        counts["errors" if to_errors else "written"] += 1
    return info, counts


def finish_job_if_done(session, job_id: str) -> str | None:
    """Called after lines change: when none is open, the job takes its final status."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None or job.status in FINAL_JOB_STATUSES:
        return None
    counts = _counts(session, job_id)
    if counts["pending"]:
        return None
    job.status = "failed" if counts["failed"] else "completed"
    job.finished_at = utcnow()
    return job.status


__all__ = ["BatchqError", "JobSettings", "cancel", "chunk_ids", "list_jobs", "results", "retry",
           "status", "submit", "validate_file", "wait", "write_results"]


def chunk_ids(job_ref: str, settings: Settings | None = None) -> list[int]:
    with session_scope(settings or get_settings()) as session:
        job = _find(session, job_ref)
        return list(session.scalars(select(Chunk.id).where(Chunk.job_id == job.id)
                                    .order_by(Chunk.seq)))
