"""Starting a worker: profile and options merged, the process pinned to its GPU, the model
loaded once, then Celery's worker loop on the variant's queue (solo pool: one process, one
model, one GPU)."""

from __future__ import annotations

import gc
import logging
import os
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from celery import bootsteps, signals

from batchq.config import Settings, redact
from batchq.engine import BatchBudget, Engine
from batchq.engine.device import select_device
from batchq.errors import ConfigError
from batchq.queue.app import app_for
from batchq.store.sessions import session_factory
from batchq.variants import Variant, resolve
from batchq.worker import task
from batchq.worker.leases import shutdown_requested
from batchq.worker.runtime import WorkerRuntime, start_runtime
from batchq.worker.sweep import Sweeper

log = logging.getLogger(__name__)

PROFILE_KEYS = ("model", "quant", "gpu", "max_batch_tokens", "max_batch_rows", "strategy",
                "name")


def read_profile(path: str | None) -> dict[str, Any]:
    """The [worker] table of a profile (workers/*.toml); {} without one."""
    if not path:
        return {}
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such worker profile") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    section: dict[str, Any] = data.get("worker", {})
    unknown = set(section) - set(PROFILE_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) in [worker]: {', '.join(sorted(unknown))} "
                          f"(allowed: {', '.join(sorted(PROFILE_KEYS))})")
    return section


@dataclass(frozen=True)
class WorkerPlan:
    """What one worker process will be: its variant, its GPU and how it batches."""

    variant: Variant
    gpu: int | None = None
    strategy: str | None = None
    max_batch_tokens: int | None = None
    max_batch_rows: int | None = None
    name: str | None = None  # the Celery node name's first part (default: variant and GPU)
    beat: bool = False  # also run batchq's beat here (one machine): the CLI passes it
    engine: str = "transformers"  # or "null": generates nothing (benchmarks only)

    @classmethod
    def from_options(cls, profile_path: str | None, **options: Any) -> WorkerPlan:
        """The profile's settings, with the options that were given replacing them."""
        merged = {**read_profile(profile_path),
                  **{k: v for k, v in options.items() if v is not None}}
        if not merged.get("model"):
            raise ConfigError("give --model or a --profile that names one")
        variant = resolve(merged.pop("model"), merged.pop("quant", None))
        return cls(variant, **merged)

    @property
    def node(self) -> str:
        return self.name or f"{self.variant.slug}.{self.variant.quant}" + (
            f".gpu{self.gpu}" if self.gpu is not None else "")


def load_runtime(plan: WorkerPlan, settings: Settings) -> WorkerRuntime:
    """Load the plan's model on its device and make this process its holder."""
    session_factory(settings)  # fail fast, before a long model load, if the database is away
    if plan.engine == "null":
        from batchq.engine.null import NullEngine

        budget = BatchBudget().limited(plan.max_batch_tokens, plan.max_batch_rows)
        return start_runtime(NullEngine(budget), plan.variant, settings)
    device = select_device(plan.gpu)
    if plan.gpu is not None and device == "cpu":
        log.warning("no CUDA device visible; GPU %s ignored, running on CPU", plan.gpu)
    engine = Engine.load(plan.variant.model, plan.variant.quant, device,
                         strategy=plan.strategy, max_batch_tokens=plan.max_batch_tokens,
                         max_batch_rows=plan.max_batch_rows, calibrate=settings.measure_costs)
    return start_runtime(engine, plan.variant, settings)


def startup_line(runtime: WorkerRuntime) -> str:
    engine, variant, settings = runtime.engine, runtime.variant, runtime.settings
    return (f"batchq worker: model {variant.model} ({variant.quant}) on {engine.device}; "
            f"{engine.strategy} batches of up to {engine.budget.max_rows} rows and "
            f"{engine.budget.max_tokens} tokens; queue {variant.queue}; broker "
            f"{redact(settings.broker_url)}; {engine.runner.cost.describe()}")


def celery_argv(plan: WorkerPlan, settings: Settings, loglevel: str) -> list[str]:
    # Without mingle: it syncs revoked task ids between workers at start (a second's wait),
    # and batchq never revokes a task; a cancel lives in the database.
    argv = ["worker", "-Q", plan.variant.queue, "-P", "solo", "-c", "1", "-E",
            "-n", f"{plan.node}@%h", "--loglevel", loglevel, "--without-mingle"]
    if settings.embedded:
        argv += ["--without-gossip"]  # the SQLite broker has no broadcast
    return argv


class Companion(Protocol):
    """A service that runs beside the worker's loop, on threads of its own: started when the
    worker is ready, stopped when it shuts down (the beat of `batchq worker --beat`)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class PromptShutdown(bootsteps.StartStopStep):
    """Wakes Celery's event loop every quarter second. The loop otherwise sleeps until its
    next timer (up to a second or two), and only then notices a SIGTERM (`docker stop`)."""

    requires = ("celery.worker.components:Hub",)

    def include_if(self, w: Any) -> bool:
        return bool(w.use_eventloop)

    def start(self, w: Any) -> None:
        w.hub.call_repeatedly(0.25, _nothing)


def _nothing() -> None:
    pass


def install_hooks(settings: Settings, queue: str, companions: Sequence[Companion] = ()) -> None:
    """Once Celery is ready, set the start-up heap aside, sweep and start the companions; on
    SIGTERM, hand back the running chunk at its next batch boundary (Celery's warm shutdown
    then exits) and stop them."""
    sweeper = Sweeper(settings, queue)

    def ready(**_: Any) -> None:
        # torch, transformers and Celery leave some 460,000 objects that live as long as the
        # process. Each full collection walked them all (60-260 ms on the development
        # machine), and one tended to fall in the first claim: 300-420 ms instead of 50.
        # Frozen, the collector never visits them again.
        gc.collect()
        gc.freeze()
        sweeper.start()
        for companion in companions:
            companion.start()

    def stopping(**_: Any) -> None:
        shutdown_requested.set()
        sweeper.stop()
        for companion in companions:
            companion.stop()

    signals.worker_ready.connect(ready, weak=False)
    signals.worker_shutting_down.connect(stopping, weak=False)


def serve(plan: WorkerPlan, settings: Settings, loglevel: str,
          announce: Callable[[str], None] = print,
          companions: Sequence[Companion] = ()) -> None:
    """Run the worker until it is stopped: the model load (after the database is checked),
    then Celery's loop, with `companions` beside it."""
    runtime = load_runtime(plan, settings)
    announce(startup_line(runtime))
    install_hooks(settings, plan.variant.queue, companions)
    app = app_for(settings)
    task.register(app)
    app.steps["worker"].add(PromptShutdown)
    code = 0
    try:
        app.worker_main(celery_argv(plan, settings, loglevel))
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else int(done.code is not None)
    runtime.tail.wait()  # the last chunk's finish, before the process ends below
    # Celery has stopped cleanly (a running chunk was handed back). Tearing the interpreter
    # down now would only free the model and the tokenizer object by object, which takes
    # seconds and holds up `docker stop`: the process ends here instead.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
