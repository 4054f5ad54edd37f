"""Host memory for generation: a freed buffer is kept for the next step, not given back to the
operating system and faulted in again.

glibc's malloc serves a large block (above a threshold that starts at 128 KiB) with a fresh
mmap and unmaps it when it is freed, and gives the top of its heap back once it passes another
threshold. A decode step allocates and frees the same large buffers every time: for 32 rows,
the float32 copy of the logits over Qwen's 151,936-token vocabulary alone is 19 MB. So every
step faulted its pages in anew and the kernel zeroed each one: 670,000-830,000 page faults for
2,000 prompts at 1-2 output tokens on the tiny model, which generated them 1.5-1.7x faster once
they were gone (benchmarks/RESULTS.md; no change was measured on Qwen2.5-0.5B's architecture).
With mmap off and the heap never trimmed, freed blocks are reused from the heap: a worker keeps
the memory of its largest batch, which it needs again for the next one.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

# mallopt(3) parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# Free memory the heap keeps at its top before it gives any back: more than a batch ever frees.
_KEEP_BYTES = 2**31 - 1


def keep_freed_memory() -> bool:
    """Make this process's malloc reuse freed memory instead of returning it to the system.
    True if it applied: glibc on Linux; elsewhere (musl, macOS, Windows) nothing changes."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        glibc = hasattr(libc, "gnu_get_libc_version")  # musl has mallopt, which does nothing
        applied = glibc and bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
    except (OSError, AttributeError):
        return False
    log.debug("malloc keeps freed memory: %s", applied)
    return applied
