"""Frozen values read from the database: what the service, the worker and the printers get
instead of table rows (which a session could change or expire under them)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, overload

from batchq.formats import LineKind
from batchq.states import JobStatus
from batchq.variants import variant_name


@dataclass(frozen=True)
class Counts:
    """A job's lines by status."""

    total: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    pending: int = 0
    expired: int = 0

    @property
    def done(self) -> int:
        """Lines that reached a final state."""
        return self.succeeded + self.failed + self.cancelled + self.expired

    def to_dict(self) -> dict[str, int]:
        # "completed" counts succeeded lines: the name `status --json` has always used.
        return {"total": self.total, "completed": self.succeeded, "failed": self.failed,
                "cancelled": self.cancelled, "pending": self.pending, "expired": self.expired}


    @classmethod
    def of(cls, by_status: dict[Any, int]) -> Counts:
        """From lines counted by LineStatus."""
        from batchq.states import LineStatus

        return cls(total=sum(by_status.values()),
                   succeeded=by_status.get(LineStatus.SUCCEEDED, 0),
                   failed=by_status.get(LineStatus.FAILED, 0),
                   cancelled=by_status.get(LineStatus.CANCELLED, 0),
                   pending=by_status.get(LineStatus.PENDING, 0),
                   expired=by_status.get(LineStatus.EXPIRED, 0))


@dataclass(frozen=True)
class VariantShare:
    """One variant's part of a job: the lines its chunks hold, and those chunks."""

    model: str
    quant: str
    queue: str
    counts: Counts
    chunks: int
    running_chunks: int

    @property
    def variant(self) -> str:
        return variant_name(self.queue)

    @property
    def waiting_for_worker(self) -> bool:
        """Lines to run and no chunk held: no worker of this variant is taking its work."""
        return self.counts.pending > 0 and self.running_chunks == 0

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "model": self.model, "quant": self.quant,
                "queue": self.queue, "counts": self.counts.to_dict(), "chunks": self.chunks,
                "running_chunks": self.running_chunks,
                "waiting_for_worker": self.waiting_for_worker}


@dataclass(frozen=True)
class JobMetrics:
    """A job's timings and its batches' totals (summed over its chunks)."""

    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    now: datetime  # when this was read: a running job's run time counts up to it
    generate_seconds: float
    batches: int
    prompt_tokens: int
    padded_prompt_tokens: int
    completion_tokens: int
    decode_slots: int
    peak_memory_bytes: int
    deduplicated_lines: int = 0  # answered with an identical line's output, not generated
    reasoning_tokens: int = 0  # of completion_tokens, a thinking model's reasoning

    @property
    def queue_wait_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        return round((self.started_at - self.created_at).total_seconds(), 3)

    @property
    def run_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        return round(((self.finished_at or self.now) - self.started_at).total_seconds(), 3)

    @property
    def tokens_per_second(self) -> float | None:
        if self.started_at is None:
            return None
        elapsed = ((self.finished_at or self.now) - self.started_at).total_seconds()
        return round(self.completion_tokens / elapsed, 2) if elapsed else None

    @property
    def padding_efficiency(self) -> float | None:
        """Real prompt tokens over the padded slots prefill paid for."""
        if not self.padded_prompt_tokens:
            return None
        return round(self.prompt_tokens / self.padded_prompt_tokens, 4)

    @property
    def decode_efficiency(self) -> float | None:
        """Generated tokens over the decode slots (rows x steps) paid for."""
        return round(self.completion_tokens / self.decode_slots, 4) if self.decode_slots else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "created_at": iso(self.created_at), "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "queue_wait_seconds": self.queue_wait_seconds, "run_seconds": self.run_seconds,
            "generate_seconds": round(self.generate_seconds, 3), "batches": self.batches,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "tokens_per_second": self.tokens_per_second,
            "padding_efficiency": self.padding_efficiency,
            "decode_efficiency": self.decode_efficiency,
            "peak_memory_bytes": self.peak_memory_bytes,
            "deduplicated_lines": self.deduplicated_lines,
        }


@overload
def iso(value: datetime) -> str: ...
@overload
def iso(value: datetime | None) -> str | None: ...


def iso(value: datetime | None) -> str | None:
    """A stored time as people and JSON read it: 2026-11-23T17:29:10+00:00."""
    return value.isoformat(timespec="seconds") if value else None


@dataclass(frozen=True)
class JobView:
    """One job as it stood when read."""

    id: str
    name: str | None
    status: JobStatus
    model: str
    quant: str
    queue: str  # the job's model's queue (a chunk may name its own)
    source: str | None
    settings: dict[str, Any]  # the job-level generation settings
    counts: Counts
    chunks: int
    metrics: JobMetrics
    expires_at: datetime | None = None  # the end of its completion window, if it has one
    running_chunks: int = 0  # held by a worker now (a cancelled job's may still run a batch)
    variants: tuple[VariantShare, ...] = ()  # by variant, the job's own (--model) first

    @property
    def variant(self) -> str:
        """`slug/quant`, as people read a variant."""
        return variant_name(self.queue)

    def to_dict(self) -> dict[str, Any]:
        """What `batchq status --json` prints."""
        return {"id": self.id, "name": self.name, "status": self.status.value,
                "model": self.model, "quant": self.quant, "queue": self.queue,
                "source": self.source, "settings": self.settings,
                "counts": self.counts.to_dict(), "chunks": self.chunks,
                "variants": [share.to_dict() for share in self.variants],
                "metrics": self.metrics.to_dict()}


@dataclass(frozen=True)
class ChunkRef:
    """Enough of a chunk to queue it, log it and show it in Flower."""

    id: int
    job_id: str
    seq: int
    total: int  # chunks in its job
    first_line: int
    last_line: int
    queue: str

    @property
    def label(self) -> str:
        """How a chunk is named in Flower and in worker logs: findable by `job=<id>`, and
        carrying no prompt text (input lines may be confidential; Flower shows this to its
        viewers)."""
        return (f"job={self.job_id} chunk={self.seq}/{self.total} "
                f"lines={self.first_line}-{self.last_line} variant={variant_name(self.queue)}")


@dataclass(frozen=True)
class ClaimedLine:
    """A pending line of a claimed chunk, with what earlier attempts left on it."""

    id: int
    custom_id: str
    kind: LineKind
    request: str  # the stored JSON of the normalised request
    attempts: int
    error: str | None


@dataclass(frozen=True)
class Claim:
    """A chunk this worker now holds. `token` is the claim's number, the lease's fencing
    token: only its holder may renew, hand back or finish the chunk."""

    chunk: ChunkRef
    job_settings: dict[str, Any]
    lines: list[ClaimedLine]
    token: int


@dataclass(frozen=True)
class BatchRecord:
    """One batch that ended, as `batchq report` draws it."""

    finished_at: datetime
    seconds: float
    rows: int
    worker: str
    prompt_tokens: int
    padded_prompt_tokens: int
    completion_tokens: int
    decode_slots: int
