"""One chunk, from claim to finish: the glue between a Celery message and the engine.

Results are written every BATCHQ_WRITE_SECONDS of batches (or after each batch, where one
takes longer), so progress is visible and a crash makes at most that much run again; each
line is written only while it is still pending, so a redelivered chunk never doubles one.
Before a batch starts, the database knows its lines: a write names the lines of the batches
that will run before the next write as its chunk's lines in flight, and each of those
batches is marked running as it starts (batchq.store.running_marker). Their attempts count
with their results, or at the next claim if the worker dies first: on the batch marked
running, or on all the lines in flight where none is. A line left pending with attempts was
in a batch that never ended, and runs alone until it succeeds or uses BATCHQ_MAX_ATTEMPTS.
Database outages are waited out (`retrying`); a database that stays away longer is not the
lines' fault: the chunk is left to its lease. A chunk that runs to its end leaves its last
write and its finish to the worker's tail (batchq.worker.tail), which runs them while the
next chunk is claimed and encoded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from batchq.engine import BatchOutput, GenerationSettings, PromptIn
from batchq.errors import ServiceUnavailable
from batchq.formats import Request
from batchq.service import dispatch
from batchq.states import ACTIVE_JOB_STATUSES, JobStatus
from batchq.store.sessions import retrying
from batchq.store.views import Claim, ClaimedLine
from batchq.worker.leases import LeaseKeeper, shutdown_requested
from batchq.worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


def _gave_up(attempts: int, last_error: str | None) -> str:
    why = last_error or ("the worker running it stopped each time (crashed, was killed, or "
                         "lost its lease)")
    return f"gave up after {attempts} attempts: {why}"


def _prompt(base: dict[str, Any], line: ClaimedLine,
            seen: dict[Any, GenerationSettings]) -> PromptIn:
    """The line's request as the engine takes it; `base` is its job's settings
    (GenerationSettings.base). Lines with the same settings of their own share one settings
    object (`seen`, one a chunk), whose `sampling` the engine then works out once."""
    request = Request.from_row(line.custom_id, line.kind, line.request)
    try:
        # Stored params were checked at submit, each field to one type (formats.fields), so
        # equal keys (2 and 2.0 are equal) cannot hide settings of different types.
        key: Any = tuple(request.params.items())
        settings = seen.get(key)
    except TypeError:  # a list or an object among them (stop, a schema): not shared
        key, settings = None, None
    if settings is None:
        settings = GenerationSettings.over(base, request.params)
        if key is not None:
            seen[key] = settings
    return PromptIn(line.id, request.messages, request.text, settings, tools=request.tools)


class ChunkRun:
    """One claim's generation: batches of the lines never tried, then each suspect alone."""

    def __init__(self, claim: Claim, runtime: WorkerRuntime, lease: LeaseKeeper,
                 on_progress: Progress | None = None):
        self.claim = claim
        self.on_progress = on_progress
        self.runtime = runtime
        self.store = runtime.store
        self.lease = lease
        # `--sampling model`: the model's recommended settings under the job's and the lines'.
        model_sampling = (runtime.engine.recommended_sampling()
                          if claim.job_settings.get("sampling") == "model" else None)
        base = GenerationSettings.base(claim.job_settings, model_sampling)
        seen: dict[Any, GenerationSettings] = {}
        self.prompts = {line.id: _prompt(base, line, seen) for line in claim.lines}
        # Identical greedy lines (same stored request under the same job settings: the same
        # rendered prompt) are generated once; each copy gets the first one's output.
        self.copies: dict[int, list[int]] = {}
        if claim.job_settings.get("dedup", True):
            self.copies = _identical(claim.lines, self.prompts)
        self.attempts = {line.id: line.attempts for line in claim.lines}
        self.errors = {line.id: line.error for line in claim.lines}
        self.running: list[int] = []  # the keys of the batch running now
        # Lines a write named in flight ahead of their batch, which has not started yet.
        self.named_ahead: set[int] = set()
        self.batch_started: float | None = None  # the running batch's start (monotonic)
        # The outputs of the batches since the last write: written together with the lines of
        # the batches about to run (one commit a write), or by `_flush` once lines run out.
        self.unwritten: list[BatchOutput] = []
        self.done = self.failed = self.tokens = 0
        self.deduplicated = 0  # copies among the unwritten output's completions, then written
        self.seconds = 0.0
        self.stopped: str | None = None  # cancelled | expired | shutdown | lease lost
        # Whether the last chunk's tail has committed: this chunk's first write waits for it.
        self.after_last_tail = False

    def _patiently(self, what: str, transaction: Callable[[], Any]) -> Any:
        if not self.after_last_tail:
            self.runtime.tail.wait()
            self.after_last_tail = True
        return retrying(self.runtime.settings, what, transaction)

    def run(self) -> None:
        fresh = [i for i in self.prompts if self.attempts[i] == 0]
        # Lines that were in a batch that never ended run alone: a line that crashes its
        # worker then takes down only itself, and fails once it has used its attempts.
        suspects = [i for i in self.prompts if self.attempts[i] > 0]
        while fresh and not self.stopped:
            fresh, raised = self._batches(fresh)
            suspects += raised
        for line_id in suspects:
            while not self.stopped and self._alone(line_id):
                pass
        # The outputs still unwritten are written by `write_rest`, in run_chunk or its tail.

    def write_rest(self) -> None:
        """Write the outputs not written yet; none of the chunk's lines is in flight after."""
        self._flush()

    def _on_batch(self, keys: list[int], upcoming: list[list[int]]) -> None:
        """Just before a batch starts, the database must know its lines. Where a write named
        them ahead, it is marked running (without waiting) and starts. Otherwise the results
        so far, its lines and those of the batches after it that should end within
        BATCHQ_WRITE_SECONDS go in one commit. If the job was cancelled or expired meanwhile,
        the batch never starts."""
        chunk, token = self.claim.chunk, self.claim.token
        if not (self.named_ahead.issuperset(keys)
                and self.store.mark_running(chunk, token, keys)):
            # The write replaces the chunk's lines in flight: this batch's and those ahead.
            ahead = self._ahead(upcoming)
            group = keys + ahead
            if not self.unwritten:
                status = self._patiently("naming the lines about to run", lambda: (
                    self.store.start_batch(chunk, token, group, keys)))
                self._stop_unless_active(status)
            else:
                self._flush(next_batch=group, starting=keys)
            self.named_ahead = set(ahead)
        if self.stopped:
            raise _JobStopped
        self.named_ahead.difference_update(keys)
        self.running = list(keys)
        for key in keys:
            self.attempts[key] += 1
        self.batch_started = time.monotonic()

    def _ahead(self, upcoming: list[list[int]]) -> list[int]:
        """The lines of the batches after this one that should end within BATCHQ_WRITE_SECONDS
        of its start, each batch taking as long as the last one did (the largest run first)."""
        budget, last = self.runtime.settings.write_seconds, self.runtime.last_batch_seconds
        if not budget or last is None:
            return []
        ahead: list[int] = []
        for n, batch in enumerate(upcoming, start=2):
            if n * last > budget:
                break
            ahead += batch
        return ahead

    def _batches(self, line_ids: list[int]) -> tuple[list[int], list[int]]:
        """Run lines in the engine's batches. On an error, returns the lines not yet started
        and those of the batch that raised."""
        left = set(line_ids)
        self.running = []
        copied = {c for first in line_ids for c in self.copies.get(first, ())}
        try:
            for output in self.runtime.engine.generate(
                    [self.prompts[i] for i in line_ids if i not in copied],
                    on_batch=self._on_batch):
                output = self._with_copies(output, left)
                self._store(output)
                left -= {c.key for c in output.completions}
                if self.stopped:
                    break
        except _JobStopped:
            return [], []
        except ServiceUnavailable:
            raise  # the database stayed away: not the lines' fault; the lease runs out instead
        except Exception as exc:
            self._flush()
            # Outside any batch (while encoding, say), every line not yet done is a suspect.
            raised = [i for i in self.running if i in left] or [i for i in line_ids if i in left]
            self._raised(raised, exc)
            left -= set(raised)
            return [i for i in line_ids if i in left], raised
        return [], []

    def _with_copies(self, output: BatchOutput, left: set[int]) -> BatchOutput:
        """The batch's completions and their copies' (those still open in this run): the same
        output, or the same failure (greedy decoding of the same prompt fails the same way),
        under each copy's own line."""
        extra = [replace(c, key=copy) for c in output.completions
                 for copy in self.copies.get(c.key, ()) if copy in left]
        if not extra:
            return output
        self.deduplicated += len(extra)
        return BatchOutput(output.completions + extra, output.stats)

    def _alone(self, line_id: int) -> bool:
        """One attempt at one line; True if it should be tried again."""
        if self.attempts[line_id] >= self.runtime.settings.max_attempts:
            # It used its attempts, in this claim or earlier ones: it fails with its last reason.
            log.warning("job=%s line id %s failed after %d attempts", self.claim.chunk.job_id,
                        line_id, self.attempts[line_id])
            reason = _gave_up(self.attempts[line_id], self.errors[line_id])
            self._patiently("failing a line", lambda: self.store.give_up(line_id, reason))
            self.failed += 1
            return False
        self.running = []
        try:
            # Its result is written with the next line's start (one write a line run alone),
            # or at the end of the run.
            for output in self.runtime.engine.generate([self.prompts[line_id]],
                                                       on_batch=self._on_batch):
                self._store(output)
        except _JobStopped:
            return False
        except ServiceUnavailable:
            raise
        except Exception as exc:
            self._flush()
            if line_id not in self.running:  # it raised before its batch began: still a try
                try:
                    self._on_batch([line_id], [])
                except _JobStopped:
                    return False
            self._raised([line_id], exc)
            return True
        return False

    def _raised(self, line_ids: list[int], exc: Exception) -> None:
        reason = f"generation failed: {type(exc).__name__}: {exc}"
        log.warning("job=%s chunk=%s: a batch of %d line(s) raised %s; each runs alone next",
                    self.claim.chunk.job_id, self.claim.chunk.seq, len(line_ids),
                    type(exc).__name__)
        for line_id in line_ids:
            self.errors[line_id] = reason
        if line_ids:
            self._patiently("noting a failed batch", lambda: self.store.note_error(
                self.claim.chunk, self.claim.token, line_ids, reason))
            self.named_ahead.clear()  # none is in flight any more: the next batch says so

    def progress(self) -> str:
        rate = f", {self.tokens / self.seconds:.1f} tok/s" if self.seconds else ""
        return (f"{self.done + self.failed}/{len(self.claim.lines)} lines done "
                f"({self.failed} failed), {self.tokens} tokens out{rate}")

    def _store(self, output: BatchOutput) -> None:
        """A batch is done: counted now, written with the next write."""
        self.unwritten.append(output)
        if output.stats.rows and self.batch_started is not None:
            # The worker's own clock: what a crash would make it do again, all of it.
            self.runtime.last_batch_seconds = time.monotonic() - self.batch_started
            self.batch_started = None
        self.done += sum(c.error is None for c in output.completions)
        self.failed += sum(c.error is not None for c in output.completions)
        self.tokens += output.stats.completion_tokens
        self.seconds += output.stats.seconds
        if self.on_progress is not None:
            self.on_progress(self.progress())
        if self.lease.lost.is_set():
            self.stopped = "lease lost"
        elif shutdown_requested.is_set():
            self.stopped = "shutdown"

    def _flush(self, next_batch: list[int] | None = None,
               starting: list[int] | None = None) -> None:
        """Write the outputs since the last write; `next_batch` becomes the lines in flight
        (none: no batch is about to start, and the lines named ahead are named no more), and
        `starting`, the first of them, the batch running."""
        outputs = self.unwritten
        if not outputs:
            return
        copies, self.deduplicated = self.deduplicated, 0
        job_status = self._patiently("storing a batch's results", lambda: self.store.record_batches(
            self.claim.chunk, self.claim.token, self.runtime.name,
            [c for o in outputs for c in o.completions], [o.stats for o in outputs],
            next_batch or (), copies, starting or ()))
        self.unwritten = []
        if not next_batch:
            self.named_ahead.clear()
        self._stop_unless_active(job_status)

    def _stop_unless_active(self, job_status: JobStatus) -> None:
        if job_status not in ACTIVE_JOB_STATUSES:
            self.stopped = job_status.value  # cancelled or expired


def _identical(lines: list[ClaimedLine], prompts: dict[int, PromptIn]) -> dict[int, list[int]]:
    """First line id -> the ids of the greedy lines whose request is the same as its."""
    first: dict[str, int] = {}
    copies: dict[int, list[int]] = {}
    for line in lines:
        if not prompts[line.id].settings.greedy or line.attempts:
            continue  # sampling differs by design; a suspect runs alone
        seen = first.setdefault(line.request, line.id)
        if seen != line.id:
            copies.setdefault(seen, []).append(line.id)
    return copies


class _JobStopped(Exception):
    """Raised out of the engine before a batch starts: the job was cancelled or expired."""


def run_chunk(chunk_id: int, runtime: WorkerRuntime,
              on_progress: Progress | None = None) -> dict[str, Any]:
    """Claim the chunk, run it, and finish it in the runtime's tail (or hand it back at
    shutdown). Returns the summary Flower shows as the task's result."""
    store = runtime.store
    claim = retrying(runtime.settings, "claiming a chunk",
                     lambda: store.claim(chunk_id, runtime.name, runtime.variant.queue))
    if isinstance(claim, str):
        # A message on the wrong queue is a deployment mistake; the others are normal.
        log.log(logging.ERROR if claim.startswith("wrong variant") else logging.INFO,
                "chunk %s skipped: %s", chunk_id, claim)
        return {"chunk": chunk_id, "skipped": claim}
    chunk, token = claim.chunk, claim.token
    log.info("%s started (%d open lines)", chunk.label, len(claim.lines))
    with LeaseKeeper(store, chunk.id, token) as lease:
        work = ChunkRun(claim, runtime, lease, on_progress)
        work.run()
        if work.stopped in ("shutdown", "lease lost"):
            work.write_rest()
    if work.stopped == "shutdown":
        if retrying(runtime.settings, "handing a chunk back",
                    lambda: store.hand_back(chunk.id, token)):
            dispatch.send(runtime.settings, [chunk])
        log.info("%s handed back at shutdown", chunk.label)
    elif work.stopped != "lease lost":
        def tail() -> None:
            work.write_rest()
            final = retrying(runtime.settings, "finishing a chunk",
                             lambda: store.finish(chunk, token))
            if final:
                log.info("job %s %s", chunk.job_id, final)

        # It runs after the last chunk's tail, and this chunk's first write waited for that.
        work.after_last_tail = True
        runtime.tail.start(chunk.label, tail)
    # Flower shows this dict as the task's result, in its narrow column: the counts first.
    summary: dict[str, Any] = {
        "succeeded": work.done, "failed": work.failed, "lines": len(claim.lines),
        "completion_tokens": work.tokens,
        "tokens_per_second": round(work.tokens / work.seconds, 1) if work.seconds else None,
        "job": chunk.job_id, "chunk": chunk.seq}
    if work.stopped:
        summary["stopped"] = work.stopped
    log.info("%s finished: %s", chunk.label, summary)
    return summary
