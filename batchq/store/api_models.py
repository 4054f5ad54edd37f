"""The HTTP API's tables: keys (tenants), files and batches."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from batchq.store.columns import Base, SafeText, UtcDateTime


class ApiKey(Base):
    """A key of the HTTP API, and the tenant it names: a key sees only its own files and
    batches. Only a digest of the secret is kept."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(24), primary_key=True)  # the secret's public part
    name: Mapped[str] = mapped_column(String(100), unique=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    max_active_batches: Mapped[int | None] = mapped_column(Integer)
    max_pending_lines: Mapped[int | None] = mapped_column(Integer)
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class StoredFile(Base):
    """A file of the Files API: an upload (its bytes in the file store, named by id) or a
    batch's output or errors (rendered from the lines whenever it is read)."""

    __tablename__ = "files"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key"),
        Index("ix_files_tenant_created_at", "tenant", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100))
    purpose: Mapped[str] = mapped_column(String(32))  # batch | batch_output
    filename: Mapped[str] = mapped_column(SafeText)
    bytes: Mapped[int] = mapped_column(BigInteger)
    lines: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    deleted_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    batch_id: Mapped[str | None] = mapped_column(String(64))  # for rendered files
    rendered: Mapped[str | None] = mapped_column(String(16))  # output | errors
    idempotency_key: Mapped[str | None] = mapped_column(String(200))


class ApiBatch(Base):
    """A batch of the Batches API: its request, and the job that runs it (none if its file
    failed validation). Its status is derived from the job's (README, the status table)."""

    __tablename__ = "batches"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key"),
        Index("ix_batches_tenant_created_at", "tenant", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100))
    input_file_id: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(16))
    meta: Mapped[str | None] = mapped_column("metadata", Text)  # JSON object
    model: Mapped[str | None] = mapped_column(Text)  # as the lines named it
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    errors: Mapped[str | None] = mapped_column(SafeText)  # JSON list: why validation failed
    errors_total: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    failed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    cancelling_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
