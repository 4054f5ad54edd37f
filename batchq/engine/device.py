"""Where the model runs, and what it costs there: the one device policy and CUDA accounting.

A process that is given a GPU index is pinned to it with CUDA_VISIBLE_DEVICES before CUDA
starts, so it sees exactly one GPU, as `cuda:0`. Workers, `batchq run` and `batchq bench` all
choose their device here.
"""

from __future__ import annotations

import os
import time


def select_device(gpu: int | None = None) -> str:
    """Pin this process to GPU `gpu` (if given) and name the device to load on: `cuda:0`, or
    `cpu` when no CUDA device is visible. Call it before anything touches CUDA."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def available_ram() -> int | None:
    """Bytes of RAM the kernel says can be had without swapping (Linux's MemAvailable), or
    None where that is not known."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    # Some kernels (bitsandbytes, cuBLAS) report it as a plain RuntimeError.
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class Device:
    """Timing and peak memory of one batch. On a GPU, work is asynchronous: the clock stops
    only once the device has finished. On a CPU there is no memory to account for."""

    def __init__(self, name: str):
        self.name = name
        self.on_cuda = name.startswith("cuda")

    def start(self) -> float:
        """Start measuring a batch; returns the clock to hand to `elapsed`."""
        if self.on_cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(self.name)
        return time.perf_counter()

    def elapsed(self, started: float) -> float:
        if self.on_cuda:
            import torch

            torch.cuda.synchronize(self.name)
        return time.perf_counter() - started

    def peak_memory(self) -> int:
        if not self.on_cuda:
            return 0
        import torch

        return int(torch.cuda.max_memory_allocated(self.name))

    def release_memory(self) -> None:
        if self.on_cuda:
            import torch

            torch.cuda.empty_cache()

    def free_memory(self) -> tuple[int, int]:
        """(free, total) bytes on the GPU."""
        import torch

        free, total = torch.cuda.mem_get_info(torch.device(self.name))
        return int(free), int(total)
