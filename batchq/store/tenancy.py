"""The HTTP API's keys, files and batches as rows: who owns what. Every read of a file or a
batch takes its tenant, so one tenant never reaches another's objects: they look absent."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute, Session

from batchq.config import Settings
from batchq.errors import NotFound
from batchq.states import ACTIVE_JOB_STATUSES, LineStatus
from batchq.store.api_models import ApiBatch, ApiKey, StoredFile
from batchq.store.database import utcnow
from batchq.store.models import Job, Line
from batchq.store.sessions import changed_rows, session_scope

Row = TypeVar("Row", StoredFile, ApiBatch)


@dataclass(frozen=True)
class Tenant:
    """An API key's owner and its limits (None: unlimited)."""

    key_id: str
    name: str
    secret_sha256: str
    max_active_batches: int | None = None
    max_pending_lines: int | None = None
    requests_per_minute: int | None = None
    created_at: datetime | None = None
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class FileView:
    id: str
    tenant: str
    purpose: str  # batch | batch_output
    filename: str
    bytes: int
    lines: int
    created_at: datetime
    batch_id: str | None = None  # a batch's rendered output or errors
    rendered: str | None = None  # output | errors


@dataclass(frozen=True)
class BatchRow:
    id: str
    tenant: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    model: str | None
    job_id: str | None
    errors: list[dict[str, Any]]
    errors_total: int
    created_at: datetime
    expires_at: datetime
    failed_at: datetime | None
    cancelling_at: datetime | None


# ---------------------------------------------------------------- keys

def _tenant(row: ApiKey) -> Tenant:
    return Tenant(row.id, row.name, row.secret_sha256, row.max_active_batches,
                  row.max_pending_lines, row.requests_per_minute, row.created_at, row.revoked_at)


def add_key(settings: Settings, key: Tenant) -> bool:
    """Store a new key; False if its name is taken."""
    try:
        with session_scope(settings) as session:
            session.add(ApiKey(id=key.key_id, name=key.name, secret_sha256=key.secret_sha256,
                               max_active_batches=key.max_active_batches,
                               max_pending_lines=key.max_pending_lines,
                               requests_per_minute=key.requests_per_minute,
                               created_at=utcnow()))
    except IntegrityError:
        return False
    return True


def key_by_id(settings: Settings, key_id: str) -> Tenant | None:
    with session_scope(settings) as session:
        row = session.get(ApiKey, key_id)
        return _tenant(row) if row is not None else None


def all_keys(settings: Settings) -> list[Tenant]:
    with session_scope(settings) as session:
        return [_tenant(row) for row in session.scalars(select(ApiKey).order_by(ApiKey.name))]


def revoke_key(settings: Settings, name: str) -> bool:
    """Revoke the key of this name; False if there is no such active key."""
    with session_scope(settings) as session:
        return bool(changed_rows(session, update(ApiKey).where(
            ApiKey.name == name, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow())))


def any_active_key(settings: Settings) -> bool:
    with session_scope(settings) as session:
        return session.scalar(select(ApiKey.id).where(ApiKey.revoked_at.is_(None))
                              .limit(1)) is not None


# ---------------------------------------------------------------- files

def _file(row: StoredFile) -> FileView:
    return FileView(row.id, row.tenant, row.purpose, row.filename, row.bytes, row.lines,
                    row.created_at, row.batch_id, row.rendered)


def add_file(settings: Settings, view: FileView, idempotency_key: str | None = None
             ) -> FileView:
    """Store a file's row. With an idempotency key the tenant used before, the file stored
    then is returned instead (and this one is not stored)."""
    if idempotency_key is not None:
        earlier = _by_idempotency_key(settings, StoredFile, view.tenant, idempotency_key)
        if earlier is not None:
            return _file(earlier)
    try:
        with session_scope(settings) as session:
            session.add(StoredFile(
                id=view.id, tenant=view.tenant, purpose=view.purpose, filename=view.filename,
                bytes=view.bytes, lines=view.lines, created_at=view.created_at,
                batch_id=view.batch_id, rendered=view.rendered,
                idempotency_key=idempotency_key))
    except IntegrityError:  # the same key at the same moment from another request
        earlier = _by_idempotency_key(settings, StoredFile, view.tenant, idempotency_key)
        if earlier is None:
            raise
        return _file(earlier)
    return view


def get_file(settings: Settings, tenant: str, file_id: str) -> FileView | None:
    with session_scope(settings) as session:
        row = session.get(StoredFile, file_id)
        if row is None or row.tenant != tenant or row.deleted_at is not None:
            return None
        return _file(row)


def list_files(settings: Settings, tenant: str, after: str | None, limit: int,
               purpose: str | None = None) -> tuple[list[FileView], bool]:
    with session_scope(settings) as session:
        where = [StoredFile.tenant == tenant, StoredFile.deleted_at.is_(None)]
        if purpose:
            where.append(StoredFile.purpose == purpose)
        rows, more = _page(session, StoredFile, where, after, limit)
        return [_file(row) for row in rows], more


def delete_file(settings: Settings, tenant: str, file_id: str) -> bool:
    with session_scope(settings) as session:
        return bool(changed_rows(session, update(StoredFile).where(
            StoredFile.id == file_id, StoredFile.tenant == tenant,
            StoredFile.deleted_at.is_(None)).values(deleted_at=utcnow())))


# ---------------------------------------------------------------- batches

def _batch(row: ApiBatch) -> BatchRow:
    return BatchRow(row.id, row.tenant, row.input_file_id, row.endpoint, row.completion_window,
                    json.loads(row.meta) if row.meta else None, row.model, row.job_id,
                    json.loads(row.errors) if row.errors else [], row.errors_total,
                    row.created_at, row.expires_at, row.failed_at, row.cancelling_at)


def batch_record(batch: BatchRow, idempotency_key: str | None = None) -> ApiBatch:
    """The table row of a batch (to add in a session of the caller's, say the job's own)."""
    return ApiBatch(id=batch.id, tenant=batch.tenant, input_file_id=batch.input_file_id,
                    endpoint=batch.endpoint, completion_window=batch.completion_window,
                    meta=json.dumps(batch.metadata) if batch.metadata is not None else None,
                    model=batch.model, job_id=batch.job_id,
                    errors=json.dumps(batch.errors) if batch.errors else None,
                    errors_total=batch.errors_total, created_at=batch.created_at,
                    expires_at=batch.expires_at, failed_at=batch.failed_at,
                    idempotency_key=idempotency_key)


def add_batch(settings: Settings, batch: BatchRow, idempotency_key: str | None = None
              ) -> BatchRow:
    """Store a batch's row (see add_file for the idempotency key)."""
    try:
        with session_scope(settings) as session:
            session.add(batch_record(batch, idempotency_key))
    except IntegrityError:
        earlier = _by_idempotency_key(settings, ApiBatch, batch.tenant, idempotency_key)
        if earlier is None:
            raise
        return _batch(earlier)
    return batch


def batch_by_idempotency_key(settings: Settings, tenant: str, key: str) -> BatchRow | None:
    row = _by_idempotency_key(settings, ApiBatch, tenant, key)
    return _batch(row) if row is not None else None


def get_batch(settings: Settings, tenant: str, batch_id: str) -> BatchRow | None:
    with session_scope(settings) as session:
        row = session.get(ApiBatch, batch_id)
        return _batch(row) if row is not None and row.tenant == tenant else None


def list_batches(settings: Settings, tenant: str, after: str | None, limit: int
                 ) -> tuple[list[BatchRow], bool]:
    with session_scope(settings) as session:
        rows, more = _page(session, ApiBatch, [ApiBatch.tenant == tenant], after, limit)
        return [_batch(row) for row in rows], more


def mark_cancelling(settings: Settings, tenant: str, batch_id: str) -> None:
    with session_scope(settings) as session:
        session.execute(update(ApiBatch).where(
            ApiBatch.id == batch_id, ApiBatch.tenant == tenant,
            ApiBatch.cancelling_at.is_(None)).values(cancelling_at=utcnow()))


def open_work(settings: Settings, tenant: str) -> tuple[int, int]:
    """(batches still running, lines still pending) of a tenant: what its quotas count."""
    with session_scope(settings) as session:
        mine = (select(ApiBatch.job_id).where(ApiBatch.tenant == tenant,
                                              ApiBatch.job_id.is_not(None)))
        active = session.scalar(select(func.count()).select_from(Job).where(
            Job.id.in_(mine), Job.status.in_(ACTIVE_JOB_STATUSES))) or 0
        pending = session.scalar(select(func.count()).select_from(Line).where(
            Line.job_id.in_(mine), Line.status == LineStatus.PENDING)) or 0
        return active, pending


# ---------------------------------------------------------------- shared

def _by_idempotency_key(settings: Settings, table: type[Row], tenant: str,
                        key: str | None) -> Row | None:
    if key is None:
        return None
    with session_scope(settings) as session:
        found: Row | None = session.scalar(select(table).where(
            table.tenant == tenant, table.idempotency_key == key))
        return found


def _page(session: Session, table: type[Row], where: list[Any], after: str | None,
          limit: int) -> tuple[list[Row], bool]:
    """Newest first, by (created_at, id): an object created while a client pages through the
    list shows up on no page it has not reached yet, and none is skipped or repeated."""
    created: InstrumentedAttribute[datetime] = table.created_at
    ident: InstrumentedAttribute[str] = table.id
    if after is not None:
        cursor = session.execute(select(created, ident).where(ident == after, *where)).first()
        if cursor is None:
            raise NotFound(f"no object {after!r} to list after")
        where = [*where, or_(created < cursor[0], and_(created == cursor[0], ident < cursor[1]))]
    rows = list(session.scalars(select(table).where(*where)
                                .order_by(created.desc(), ident.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
