"""Checking a big input file in two processes: this one checks the first half while a second
process checks the rest, then the two halves' findings are joined as one check would have
found them.

Checking is pure Python (parse, validate, normalise: about 9 us a line) and the database sits
idle while it runs, so on a machine with a second core the check of a million-line file takes
about half as long. The join is exact: the same line numbers, refusals, problems, size keys,
variants and spooled rows, in file order. One thing a half cannot see is a custom_id used in
both halves; the rare file that has one is checked again, whole, in this process, so the
duplicate is reported the usual way (with the line that first used it).
"""

from __future__ import annotations

import copy
import logging
import multiprocessing
import os
import sys
import tempfile
from array import array
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from batchq.config import Settings
from batchq.formats import iter_raw_lines
from batchq.service.intake import (
    MAX_PROBLEMS_SHOWN,
    Checked,
    RowSpool,
    check_all,
    check_lines,
    too_many_lines,
)
from batchq.service.routing import ModelRouter

log = logging.getLogger(__name__)

# Below this a second process (about 0.4 s to start and import) saves less than it costs.
PARALLEL_FROM_BYTES = 32 << 20


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_file(name: str, path: Path, settings: Settings, default_limit: int,
               router: ModelRouter, *, from_bytes: int = PARALLEL_FROM_BYTES) -> Checked:
    """check_all(…, route=router) on a file on disk, in two processes when it is big enough
    and a second core is there."""
    size = path.stat().st_size
    with path.open("rb") as stream:
        if size < max(from_bytes, 1) or cores() < 2:
            return check_all(name, stream, settings, default_limit, route=router)
        middle = _line_start_after(stream, size // 2)
        if middle >= size:  # one huge line: nothing to split
            stream.seek(0)
            return check_all(name, stream, settings, default_limit, route=router)
        first_line_no = _lines_before(stream, middle) + 1
        head_rows = RowSpool()
        # spawn, not fork: this process may hold threads and connections a fork would copy.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            # The router as it is now: the arguments are pickled later, by another thread,
            # while this one's check goes on changing it.
            rest = pool.submit(_check_rest, name, str(path), middle, first_line_no, settings,
                               default_limit, copy.deepcopy(router))
            try:
                stream.seek(0)
                head, seen = check_lines(name, iter_raw_lines(_until(stream, middle)), settings,
                                         default_limit, None, router, head_rows)
            except BaseException:
                head_rows.close()
                rest.add_done_callback(_discard)
                raise
        try:
            tail = rest.result()
        except BrokenProcessPool:
            # It could not start: a program that was read from stdin has no file for it to
            # import, a script without a __main__ guard refuses to. One process checks all.
            log.warning("could not check %s in two processes; checking it in one", name)
            head_rows.close()
            stream.seek(0)
            return check_all(name, stream, settings, default_limit, route=router)
        head_rows.append(open(tail.spool, "rb"))  # noqa: SIM115 (closed with head_rows)
        os.unlink(tail.spool)
        if any(tail.digests[i:i + 8] in seen for i in range(0, len(tail.digests), 8)):
            head_rows.close()  # a custom_id in both halves: checked again, whole, to say so
            stream.seek(0)
            return check_all(name, stream, settings, default_limit, route=router)
        return _joined(name, head, tail, router, settings)


def _discard(rest: Future[_Rest]) -> None:
    """The second half's spool, when the first half failed and nothing will read it."""
    if not rest.cancelled() and rest.exception() is None:
        os.unlink(rest.result().spool)


@dataclass
class _Rest:
    """What the second process found in its half, to be joined to the first half's."""

    checked: Checked  # without its spool: that is the file named `spool`
    spool: str
    digests: bytes  # the accepted lines' custom_id digests, 8 bytes each
    variants: list  # the router's variants, which checked.variant_of indexes


def _check_rest(name: str, path: str, start: int, first_line_no: int, settings: Settings,
                default_limit: int, router: ModelRouter) -> _Rest:
    """The second process: check the lines from byte `start` to the end. The cap on lines is
    the whole file's, so it is checked once both halves are counted (_joined)."""
    settings = replace(settings, max_file_lines=sys.maxsize)
    spool_file = tempfile.NamedTemporaryFile(prefix="batchq-rows-", delete=False)  # noqa: SIM115
    with open(path, "rb") as stream:
        stream.seek(start)
        lines = iter_raw_lines(stream, first_line_no)
        checked, seen = check_lines(name, lines, settings, default_limit, None, router,
                                    RowSpool(spool_file))
    spool_file.close()
    checked.rows = None
    return _Rest(checked, spool_file.name, b"".join(seen), router.variants)


def _joined(name: str, head: Checked, tail: _Rest, router: ModelRouter,
            settings: Settings) -> Checked:
    rest = tail.checked
    index = [router.index_of(variant) for variant in tail.variants]
    head.accepted += rest.accepted
    head.refused.update(rest.refused)
    head.problems += rest.problems[:MAX_PROBLEMS_SHOWN - len(head.problems)]
    head.sizes += rest.sizes
    head.variant_of += array("h", (index[v] for v in rest.variant_of))
    if head.accepted + len(head.refused) > settings.max_file_lines:
        if head.rows is not None:
            head.rows.close()
        raise too_many_lines(name, settings)
    return head


def _line_start_after(stream: IO[bytes], offset: int) -> int:
    """The offset of the first line that starts after `offset` (the end, if none does)."""
    stream.seek(offset)
    stream.readline()
    return stream.tell()


def _lines_before(stream: IO[bytes], offset: int) -> int:
    """How many lines end before `offset` (a line's start): the line numbers the first half
    uses, counted as iter_raw_lines counts them (every \\n ends one)."""
    stream.seek(0)
    count, left = 0, offset
    while left > 0 and (block := stream.read(min(left, 1 << 22))):
        count += block.count(b"\n")
        left -= len(block)
    return count


def _until(stream: IO[bytes], end: int) -> Iterator[bytes]:
    """The stream's lines from where it is up to byte `end` (a line's start)."""
    consumed = stream.tell()
    for raw in stream:
        if consumed >= end:
            return
        consumed += len(raw)
        yield raw
