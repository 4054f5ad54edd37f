"""A second batchq process for the work that splits in two on a machine with a second core
(checking a big file: check_parts; writing a big job's results: result_parts).

`start(function, argument)` runs `function(argument)` in a fresh interpreter
(`python -m batchq.service.second_process`) and `result_of` hands back what it returned. Both
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
from typing import Any, TypeVar

log = logging.getLogger(__name__)

A = TypeVar("A")


class Failed(Exception):
    """The second process could not do its part (why is logged for -v); do it here."""


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def start(function: Callable[[A], Any], argument: A) -> subprocess.Popen[bytes]:
    """`function(argument)` under way in a second process (a module-level function)."""
    process = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdin is not None
    try:
        process.stdin.write(pickle.dumps((function, argument), protocol=pickle.HIGHEST_PROTOCOL))
        process.stdin.close()
    except OSError:  # it died at once; result_of says so
        pass
    process.stdin = None  # sent: communicate() must not touch it again
    return process


def result_of(process: subprocess.Popen[bytes]) -> Any:
    """What the function returned, once it has; Failed if the process did not finish well."""
    out, err = process.communicate()
    if process.returncode != 0:
        log.debug("the second process failed (%s): %s", process.returncode,
                  err.decode(errors="replace")[-2000:])
        raise Failed(f"the second process exited {process.returncode}")
    return pickle.loads(out)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop it (this process is giving up: an error, or Ctrl-C)."""
    process.kill()
    process.communicate()


def main() -> None:
    function, argument = pickle.load(sys.stdin.buffer)
    sys.stdout.buffer.write(pickle.dumps(function(argument), protocol=pickle.HIGHEST_PROTOCOL))


if __name__ == "__main__":
    main()
