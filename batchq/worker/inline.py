"""`batchq run`: a worker inside the process that submitted the job, for one machine."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import replace

from batchq.config import Settings
from batchq.service import reading
from batchq.store.views import JobView
from batchq.variants import Variant, resolve
from batchq.worker.boot import WorkerPlan, load_runtime
from batchq.worker.chunk_run import run_chunk
from batchq.worker.runtime import WorkerRuntime, release_runtime


class InlineWorker:
    """The plan's model, loaded in this process before anything is submitted (a model that
    cannot load fails before a job exists). It holds the only reference to its runtime, so
    that it can let one model go before it loads the next."""

    def __init__(self, plan: WorkerPlan, settings: Settings):
        self.plan, self.settings = plan, settings
        self.runtime: WorkerRuntime | None = load_runtime(plan, settings)

    def serve(self, job_id: str, on_chunk: Callable[[JobView], None] | None = None) -> None:
        """Run every chunk of one job here, through the same claim path as a queued message,
        so a concurrent worker and a later redelivery are both harmless.

        A job whose lines name several models runs one variant after another, the loaded
        one first, one model in memory at a time (on one GPU, as on a CPU)."""
        for share in reading.status(job_id, self.settings).variants:
            if not share.counts.pending:
                continue  # nothing of it left to run (another worker ran it): no model load
            # Only self.runtime refers to the loaded runtime, so _hold can let it go.
            self._hold(resolve(share.model, share.quant))
            for chunk in reading.chunks(job_id, self.settings):
                if chunk.queue == share.queue:
                    assert self.runtime is not None
                    run_chunk(chunk.id, self.runtime)
                    self.runtime.tail.wait()  # the chunk's finish, which the status shows
                    if on_chunk is not None:
                        on_chunk(reading.status(job_id, self.settings))

    def _hold(self, variant: Variant) -> None:
        """Hold `variant`'s runtime: the loaded one, or one loaded in its place."""
        if self.runtime is not None and self.runtime.variant.queue == variant.queue:
            return
        if self.runtime is not None:
            self.runtime.tail.wait()
            device = self.runtime.engine.runner.device
            self.runtime = None
            release_runtime()
            gc.collect()  # the model's tensors, now unreferenced
            device.release_memory()
        self.runtime = load_runtime(replace(self.plan, variant=variant), self.settings)
