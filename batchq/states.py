"""The states a job, a chunk, a line, an HTTP batch and a schedule's run can be in. Their
values are what users read (CLI, JSON, result lines, HTTP objects) and what the database
stores; which code may move a job, chunk or line from one state to another is decided in
batchq.store.transitions, a schedule's run in batchq.store.schedules.move_run."""

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


class BatchStatus(StrEnum):
    """An HTTP batch's status, OpenAI's vocabulary, derived from its job's (README: the
    status table; batchq.service.batches.BatchView.status)."""

    VALIDATING = "validating"
    FAILED = "failed"  # its input file failed validation: no job
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"  # every line ended (failed ones are counted, as OpenAI does)
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED,
                        BatchStatus.CANCELLED)


class RunStatus(StrEnum):
    """A schedule's run: one per scheduled time, whatever became of it."""

    WAITING = "waiting"  # to start at beat's next tick (overlap=queue: when the last run ends)
    PREPARING = "preparing"  # its documents are being read
    RUNNING = "running"  # its job (and a map-reduce's combining job) runs
    COMPLETED = "completed"  # its folder is written
    FAILED = "failed"  # it could not start (the folder or the template is gone)
    SKIPPED = "skipped"  # the previous run still ran (overlap=skip)
    MISSED = "missed"  # beat was not running, or the schedule was paused


class RunTrigger(StrEnum):
    ON_TIME = "on-time"
    CATCH_UP = "catch-up"  # a time beat was not running for, run later by the policy
    MANUAL = "manual"  # `batchq schedule run-now`


class DocumentStatus(StrEnum):
    """A document (or a part of one) as a run took it."""

    QUEUED = "queued"  # its line is in the run's job
    SUCCEEDED = "succeeded"  # as its line ended (also: failed, cancelled, expired)
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    UNREADABLE = "unreadable"  # corrupt, encrypted or empty: not run, its reason kept
    UNCHANGED = "unchanged"  # the same content ran before under the same fingerprint
    DELETED = "deleted"  # gone from the folder since the last run: noted, not an error


def values(states: type[StrEnum]) -> tuple[str, ...]:
    """The stored strings, in declaration order (for CHECK constraints and metrics)."""
    return tuple(state.value for state in states)
