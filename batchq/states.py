"""The states a job, a chunk and a line can be in. Their values are what users read (CLI,
JSON, result lines) and what the database stores; which code may move a row from one state
to another is decided in batchq.store.transitions."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"  # every line ended, none failed
    FAILED = "failed"  # every line ended, some failed
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # its completion window ended with lines still open

    @property
    def final(self) -> bool:
        return self in FINAL_JOB_STATUSES


FINAL_JOB_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED,
                                JobStatus.EXPIRED})
ACTIVE_JOB_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})


class LineStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # still pending when its job's completion window ended


# Final states of a line without an output: they go to the errors file.
UNANSWERED = frozenset({LineStatus.FAILED, LineStatus.CANCELLED, LineStatus.EXPIRED})


class ChunkStatus(StrEnum):
    QUEUED = "queued"  # waiting for a worker (its message sent, or to be sent by the sweep)
    RUNNING = "running"  # claimed: a worker holds its lease
    DONE = "done"


def values(states: type[StrEnum]) -> tuple[str, ...]:
    """The stored strings, in declaration order (for CHECK constraints and metrics)."""
    return tuple(state.value for state in states)
