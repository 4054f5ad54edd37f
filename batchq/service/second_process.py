"""A second batchq process for the work that splits in two on a machine with a second core
(checking a big file: check_parts; writing a big job's results: result_parts).

`beside(function, argument, here)` runs `function(argument)` in a fresh interpreter
(`python -m batchq.service.second_process`) while `here()` runs in this one. Both
ends are pickles exchanged between two processes of the same install, never anything a user
gives; the function travels by name. It is not `multiprocessing`: its spawn re-imports the
caller's main module, which ran the top level of a caller's script without a `__main__` guard a
second time. Nothing of this process (its threads, connections or main module) is copied or
run again there.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

A = TypeVar("A")
H = TypeVar("H")
R = TypeVar("R")


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def beside(function: Callable[[A], R], argument: A, here: Callable[[], H]
           ) -> tuple[H, R | None]:
    """`here()` in this process while `function(argument)` (a module-level function that
    never returns None) runs in a second one. Both results; the second's is None if its
    process failed (why is logged for -v). If `here` raises, the second process is stopped."""
    process = _start(function, argument)
    try:
        mine = here()
    except BaseException:
        process.kill()
        process.communicate()
        raise
    out, err = process.communicate()
    if process.returncode != 0:
        log.debug("the second process failed (%s): %s", process.returncode,
                  err.decode(errors="replace")[-2000:])
        return mine, None
    theirs: R = pickle.loads(out)
    return mine, theirs


def _start(function: Callable[[A], R], argument: A) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdin is not None
    try:
        process.stdin.write(pickle.dumps((function, argument), protocol=pickle.HIGHEST_PROTOCOL))
        process.stdin.close()
    except OSError:  # it died at once; its exit status says so
        pass
    process.stdin = None  # sent: communicate() must not touch it again
    return process


def main() -> None:
    function, argument = pickle.load(sys.stdin.buffer)
    sys.stdout.buffer.write(pickle.dumps(function(argument), protocol=pickle.HIGHEST_PROTOCOL))


if __name__ == "__main__":
    main()
