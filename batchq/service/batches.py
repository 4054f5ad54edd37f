"""The Batches API's side of the service. A batch is a job made from an uploaded file, plus
what OpenAI's API shows of it; its status is derived from the job's (README: the status
table), so the CLI, the Python API and HTTP tell one story."""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from batchq.config import Settings
from batchq.engine.types import DEFAULT_MAX_NEW_TOKENS
from batchq.errors import InvalidRequest, NotFound, NotNow, OverQuota
from batchq.formats import OPENAI_URLS, LineError, Request, openai_kind
from batchq.service import files, lifecycle
from batchq.service.intake import check_all, open_input
from batchq.service.routing import API_HINT, ModelRouter
from batchq.service.submit import store_checked
from batchq.states import BatchStatus, JobStatus
from batchq.store import reads, tenancy
from batchq.store.database import utcnow
from batchq.store.intake import NewJob
from batchq.store.tenancy import BatchRow, FileView, Tenant
from batchq.store.transitions import Transitions
from batchq.store.views import JobView

MAX_ERRORS_SHOWN = 1000  # errors.data lists this many; errors_total counts them all
MAX_WINDOW_SECONDS = 30 * 86400
_WINDOW = re.compile(r"^([1-9][0-9]{0,6})([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class BatchView:
    row: BatchRow
    job: JobView | None
    output_file_id: str | None = None
    error_file_id: str | None = None

    @property
    def status(self) -> BatchStatus:
        """What its job is doing, in OpenAI's words (README: "The Batches API", status
        table)."""
        row, job = self.row, self.job
        if row.failed_at is not None:
            return BatchStatus.FAILED
        if job is None:
            return BatchStatus.VALIDATING
        if not job.status.final:
            return BatchStatus.CANCELLING if row.cancelling_at else BatchStatus.IN_PROGRESS
        if job.status is JobStatus.CANCELLED:
            return BatchStatus.CANCELLING if job.running_chunks else BatchStatus.CANCELLED
        if job.status is JobStatus.EXPIRED:
            return BatchStatus.EXPIRED
        return BatchStatus.COMPLETED  # every line ended; failed ones are counted, as OpenAI does

    @property
    def final(self) -> bool:
        return self.status.final


def window_seconds(window: str) -> int:
    """`24h` (OpenAI's one value), or any N followed by s, m, h or d, up to 30 days."""
    match = _WINDOW.match(window)
    seconds = int(match.group(1)) * _SECONDS[match.group(2)] if match else 0
    if not 0 < seconds <= MAX_WINDOW_SECONDS:
        raise InvalidRequest(f"completion_window {window!r}: use 24h (or a duration such as "
                             "30m, 2h or 7d, up to 30d)", "completion_window")
    return seconds


class OneEndpoint:
    """The rule every line of a batch keeps: its url is the batch's endpoint."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.kind = openai_kind(endpoint)

    def __call__(self, request: Request) -> None:
        if request.kind is not self.kind:
            url = next((u for u, k in OPENAI_URLS.items() if k is request.kind), None)
            raise LineError(f"field 'url': the batch's endpoint is {self.endpoint}, this line's "
                            f"is {url or 'missing'}", "mismatched_endpoint", "url")


def create(settings: Settings, tenant: Tenant, input_file_id: str, endpoint: str,
           completion_window: str, metadata: dict[str, str] | None,
           idempotency_key: str | None = None) -> BatchView:
    """Validate the input file and start its job; a file with bad lines makes a failed batch
    that names every bad line (the first thousand, and how many in all).

    Each line runs on the model its body names (a batch may mix them, as `batchq submit`
    does; OpenAI's API refuses that); the batch's `model` lists the names, as the lines spelt
    them, in the order first used."""
    if idempotency_key is not None:
        earlier = tenancy.batch_by_idempotency_key(settings, tenant.name, idempotency_key)
        if earlier is not None:
            return view(settings, tenant, earlier.id)
    if openai_kind(endpoint) is None:
        raise InvalidRequest(f"endpoint {endpoint!r} is not supported; use "
                             f"{' or '.join(OPENAI_URLS)}", "endpoint")
    window = window_seconds(completion_window)
    _check_metadata(metadata)
    source = files.get(settings, tenant.name, input_file_id)
    if source.purpose != "batch" or source.rendered is not None:
        raise InvalidRequest(f"file {input_file_id!r} was not uploaded with purpose 'batch'",
                             "input_file_id")
    _check_quotas(settings, tenant, source)
    now = utcnow()
    row = BatchRow(id=f"batch_{secrets.token_hex(12)}", tenant=tenant.name,
                   input_file_id=source.id, endpoint=endpoint,
                   completion_window=completion_window, metadata=metadata, model=None,
                   job_id=None, errors=[], errors_total=0, created_at=now,
                   expires_at=now + timedelta(seconds=window), failed_at=None,
                   cancelling_at=None)
    router = ModelRouter(None, settings, hint=API_HINT)
    with open_input(str(files.upload_path(settings, source)), settings) as (_, stream):
        checked = check_all(source.filename, stream, settings, DEFAULT_MAX_NEW_TOKENS,
                            OneEndpoint(endpoint), router)
        model = ",".join(router.names) or None
        if checked.refused or not checked.accepted:
            errors = [{"code": exc.code, "message": str(exc), "param": exc.param, "line": line}
                      for line, exc in sorted(checked.refused.items())[:MAX_ERRORS_SHOWN]]
            if len(checked.refused) > MAX_ERRORS_SHOWN:
                errors.append({"code": "too_many_errors", "param": None, "line": None,
                               "message": f"{len(checked.refused) - MAX_ERRORS_SHOWN} more "
                                          "invalid line(s) not listed"})
            if not checked.refused:
                errors = [{"code": "empty_file", "message": "the file has no lines to run",
                           "param": None, "line": None}]
            failed = replace(row, model=model, errors=errors,
                             errors_total=len(checked.refused) or 1, failed_at=now)
            return view(settings, tenant, tenancy.add_batch(settings, failed, idempotency_key).id)
        variant = router.variants[0]
        checked.variants = router.variants
        row = replace(row, model=model)
        job = NewJob(id=secrets.token_hex(16), name=row.id, source=f"{source.filename} "
                     f"({source.id})", model=variant.model, quant=variant.quant,
                     queue=variant.queue, settings={}, total_lines=checked.accepted,
                     expires_at=row.expires_at)

        def batch_row(session: Session) -> None:
            session.add(tenancy.batch_record(replace(row, job_id=job.id), idempotency_key))

        try:
            store_checked(settings, source.filename, checked, variant, job, batch_row)
        except IntegrityError:  # the same idempotency key at the same moment: theirs stands
            earlier = (tenancy.batch_by_idempotency_key(settings, tenant.name, idempotency_key)
                       if idempotency_key else None)
            if earlier is None:
                raise
            return view(settings, tenant, earlier.id)
    return view(settings, tenant, row.id)


def _check_metadata(metadata: dict[str, str] | None) -> None:
    if metadata is None:
        return
    if len(metadata) > 16 or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
            for k, v in metadata.items()):
        raise InvalidRequest("metadata: up to 16 pairs of strings, keys up to 64 characters "
                             "and values up to 512", "metadata")


def _check_quotas(settings: Settings, tenant: Tenant, source: FileView) -> None:
    if tenant.max_active_batches is None and tenant.max_pending_lines is None:
        return
    active, pending = tenancy.open_work(settings, tenant.name)
    if tenant.max_active_batches is not None and active >= tenant.max_active_batches:
        raise OverQuota(f"{active} batches are running, the most key {tenant.name!r} may "
                        "have at once; try again when one has finished", retry_after=30)
    if tenant.max_pending_lines is not None and pending + source.lines > tenant.max_pending_lines:
        raise OverQuota(f"{pending} lines are waiting and this file has {source.lines}; key "
                        f"{tenant.name!r} may have {tenant.max_pending_lines} waiting at once",
                        retry_after=30)


def view(settings: Settings, tenant: Tenant, batch_id: str) -> BatchView:
    """The batch as it stands now. A job past its window expires here too, so a batch whose
    workers are all down still ends on time."""
    row = tenancy.get_batch(settings, tenant.name, batch_id)
    if row is None:
        raise NotFound(f"no batch {batch_id!r}")
    return _view(settings, row)


def _view(settings: Settings, row: BatchRow) -> BatchView:
    if row.job_id is None:
        return BatchView(row, None)
    job = reads.job_view(settings, row.job_id)
    if not job.status.final and job.expires_at is not None and job.expires_at < utcnow():
        Transitions(settings).expire_overdue(job.id)
        job = reads.job_view(settings, row.job_id)
    batch = BatchView(row, job)
    if batch.status not in (BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED):
        return batch
    c = job.counts
    output = _rendered_file(settings, row, job, "output") if c.succeeded else None
    errors = _rendered_file(settings, row, job, "errors") if c.done - c.succeeded else None
    return BatchView(row, job, output, errors)


def _rendered_file(settings: Settings, row: BatchRow, job: JobView, kind: str) -> str:
    """The id of a final batch's output or errors file, created the first time it is asked
    for. The id derives from the batch and the job's end, so every API process agrees on it,
    and a retried batch gets new files."""
    finished = job.metrics.finished_at.isoformat() if job.metrics.finished_at else ""
    digest = hashlib.sha256(f"{row.id}:{kind}:{finished}".encode()).hexdigest()[:24]
    file_id = f"file-{digest}"
    if tenancy.get_file(settings, row.tenant, file_id) is None:
        size = sum(len(b) for b in files.render_lines(settings, job.id, errors=kind == "errors"))
        name = f"{row.id}_{'output' if kind == 'output' else 'error'}.jsonl"
        with contextlib.suppress(IntegrityError):  # another request created it just now
            tenancy.add_file(settings, FileView(
                file_id, row.tenant, "batch_output", name, size, 0, utcnow(), row.id, kind))
    return file_id


def list_batches(settings: Settings, tenant: Tenant, after: str | None, limit: int
                 ) -> tuple[list[BatchView], bool]:
    rows, more = tenancy.list_batches(settings, tenant.name, after, limit)
    return [_view(settings, row) for row in rows], more


def cancel(settings: Settings, tenant: Tenant, batch_id: str) -> BatchView:
    """Lines not yet run are cancelled now; a chunk that is running stops at its next batch
    boundary (`cancelling` until then). What finished is kept."""
    batch = view(settings, tenant, batch_id)
    if batch.job is None or batch.final:
        raise NotNow(f"batch {batch_id} is {batch.status}; only a batch in progress can be "
                     "cancelled")
    tenancy.mark_cancelling(settings, tenant.name, batch_id)
    lifecycle.cancel(batch.job.id, settings)
    return view(settings, tenant, batch_id)


def retry(settings: Settings, tenant: Tenant, batch_id: str) -> BatchView:
    """Run a completed batch's failed lines again (`batchq retry`)."""
    batch = view(settings, tenant, batch_id)
    if batch.job is None or batch.status is not BatchStatus.COMPLETED:
        raise NotNow(f"batch {batch_id} is {batch.status}; only a completed batch with failed "
                     "lines can be retried")
    if not batch.job.counts.failed:
        raise NotNow(f"batch {batch_id} has no failed line to retry")
    lifecycle.retry(batch.job.id, settings)
    return view(settings, tenant, batch_id)


def results(settings: Settings, tenant: Tenant, batch_id: str, errors: bool
            ) -> Iterator[bytes]:
    """The lines finished so far (with an output, or, with errors, without one), while the
    batch runs and after: what OpenAI's API offers only once a batch has ended."""
    batch = view(settings, tenant, batch_id)
    if batch.job is None:
        return iter(())
    return files.render_lines(settings, batch.job.id, errors=errors)

