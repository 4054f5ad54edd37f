"""What a worker process holds while it serves: one loaded engine for one variant."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from batchq.config import Settings
from batchq.engine import Engine
from batchq.store.transitions import Transitions
from batchq.variants import Variant
from batchq.worker.tail import ChunkTail


@dataclass
class WorkerRuntime:
    engine: Engine
    variant: Variant
    settings: Settings
    name: str  # how batches and leases name this process: queue@host:pid
    store: Transitions = field(init=False)
    # The seconds of the last batch that ran: how many batches a write counts attempts ahead
    # for (BATCHQ_WRITE_SECONDS). None until one has run in this process.
    last_batch_seconds: float | None = None
    # The last chunk's final write and finish, running while the next chunk starts.
    tail: ChunkTail = field(init=False, default_factory=ChunkTail)

    def __post_init__(self) -> None:
        self.store = Transitions(self.settings)


_current: WorkerRuntime | None = None


def start_runtime(engine: Engine, variant: Variant, settings: Settings,
                  name: str | None = None) -> WorkerRuntime:
    """Make this process the holder of a loaded model (the Celery task finds it here)."""
    global _current
    _current = WorkerRuntime(engine, variant, settings,
                             name or f"{variant.queue}@{socket.gethostname()}:{os.getpid()}")
    return _current


def release_runtime() -> None:
    """This process holds no model any more (`batchq run` lets one go before the next)."""
    global _current
    _current = None


def current_runtime() -> WorkerRuntime:
    if _current is None:
        raise RuntimeError("this process has no loaded model; start it with `batchq worker`")
    return _current
