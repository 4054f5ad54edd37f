"""`python -m tests.fault_launcher worker ...`: the real `batchq` CLI with faults injected.

The faults live here, in the tests, not in batchq: this wraps the engine's padded batch call
(batchq.engine.runner.ModelRunner.run_padded) and then runs batchq's own entry point. BATCHQ_TEST_FAULT holds comma-separated faults:

  crash-on:MARKER   the process kills itself (SIGKILL) when a batch holds a prompt with MARKER
  raise-on:MARKER   such a batch raises RuntimeError
  oom-on:MARKER     such a batch raises torch.OutOfMemoryError (alone too: it can never fit)
  oom-above:N       a batch of more than N rows raises torch.OutOfMemoryError
  slow:SECONDS      every batch sleeps this long first (to stop, kill or cancel mid-chunk)
  hold:PATH         every batch but the process's first waits while PATH exists (a test removes
                    it once it has seen the job mid-chunk, however loaded the machine is)

The batches a worker times at start to measure its cost model run without faults.
"""

from __future__ import annotations

import os
import signal
import time

from batchq.engine.runner import ModelRunner


def _text(item) -> str:
    prompt = item.prompt
    return "".join(m["content"] for m in prompt.messages or ()) + (prompt.text or "")


def install(spec: str) -> None:
    import torch

    faults = [part.split(":", 1) for part in spec.split(",") if part]
    original = ModelRunner.run_padded
    batches_run = 0

    def run_batch(self, items, per_row_limits):
        nonlocal batches_run
        if items and isinstance(items[0].key, tuple) and items[0].key[0] == "calibration":
            # The worker timing batch shapes at start (batchq.engine.calibration) is not work.
            return original(self, items, per_row_limits)
        texts = [_text(item) for item in items]
        for kind, arg in faults:
            if kind == "slow":
                time.sleep(float(arg))
            elif kind == "hold" and batches_run:
                deadline = time.monotonic() + 300
                while os.path.exists(arg) and time.monotonic() < deadline:
                    time.sleep(0.05)
            elif kind == "crash-on" and any(arg in t for t in texts):
                os.kill(os.getpid(), signal.SIGKILL)
            elif kind == "raise-on" and any(arg in t for t in texts):
                raise RuntimeError("injected failure")
            elif kind == "oom-on" and any(arg in t for t in texts) or kind == "oom-above" and len(items) > int(arg):
                raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        batches_run += 1
        return original(self, items, per_row_limits)

    ModelRunner.run_padded = run_batch


if __name__ == "__main__":
    install(os.environ.get("BATCHQ_TEST_FAULT", ""))
    from batchq.cli import main

    main()
