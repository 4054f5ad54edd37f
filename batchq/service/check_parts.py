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

import logging
import os
import sys
import tempfile
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from batchq.config import Settings
from batchq.formats import iter_raw_lines
from batchq.service import second_process
from batchq.service.intake import (
    MAX_PROBLEMS_SHOWN,
    Checked,
    RowSpool,
    Seen,
    check_all,
    check_lines,
    too_many_lines,
)
from batchq.service.routing import ModelRouter

log = logging.getLogger(__name__)

# Below this a second process (about 0.4 s to start and import) saves less than it costs.
PARALLEL_FROM_BYTES = 32 << 20


def check_file(name: str, path: Path, settings: Settings, default_limit: int,
               router: ModelRouter, *, from_bytes: int = PARALLEL_FROM_BYTES) -> Checked:
    """check_all(…, route=router) on a file on disk, in two processes when it is big enough
    and a second core is there."""
    size = path.stat().st_size
    with path.open("rb") as stream:

        def in_one_process() -> Checked:
            stream.seek(0)
            return check_all(name, stream, settings, default_limit, route=router)

        if size < max(from_bytes, 1) or second_process.cores() < 2:
            return in_one_process()
        middle = _line_start_after(stream, size // 2)
        if middle >= size:  # one huge line: nothing to split
            return in_one_process()
        first_line_no = _lines_before(stream, middle) + 1
        spool = tempfile.NamedTemporaryFile(prefix="batchq-rows-", delete=False)  # noqa: SIM115
        spool.close()
        head_rows = RowSpool()
        try:
            half = _Half(name, str(path), middle, first_line_no, settings, default_limit,
                         router, spool.name)

            def first_half() -> tuple[Checked, Seen]:
                stream.seek(0)
                return check_lines(name, iter_raw_lines(_until(stream, middle)), settings,
                                   default_limit, None, router, head_rows)

            (head, seen), tail = second_process.beside(check_half, half, first_half)
            if tail is None:
                log.warning("could not check %s in two processes; checking it in one", name)
                head_rows.close()
                return in_one_process()
            head_rows.append(open(spool.name, "rb"))  # noqa: SIM115 (closed with head_rows)
        except BaseException:
            head_rows.close()
            raise
        finally:
            os.unlink(spool.name)  # open (or never used): its rows stay readable until closed
        if any(tail.digests[i:i + 8] in seen for i in range(0, len(tail.digests), 8)):
            head_rows.close()  # a custom_id in both halves: checked again, whole, to say so
            return in_one_process()
        return _joined(name, head, tail, router, settings)


@dataclass
class _Half:
    """What the second process is asked to check: the lines of `path` from byte `start`."""

    name: str
    path: str
    start: int
    first_line_no: int
    settings: Settings
    default_limit: int
    router: ModelRouter  # as it was before either half began
    spool: str  # the file its rows go to


def check_half(half: _Half) -> _Rest:
    """In the second process: check the lines from byte `half.start` to the end. The cap on
    lines is the whole file's, so it is checked once both halves are counted (_joined)."""
    settings = replace(half.settings, max_file_lines=sys.maxsize)
    with open(half.path, "rb") as stream, open(half.spool, "wb") as spool:
        stream.seek(half.start)
        checked, seen = check_lines(half.name, iter_raw_lines(stream, half.first_line_no),
                                    settings, half.default_limit, None, half.router,
                                    RowSpool(spool))
    checked.rows = None
    return _Rest(checked, b"".join(seen), half.router.variants)


@dataclass
class _Rest:
    """What the second process found in its half, to be joined to the first half's."""

    checked: Checked  # without its spool: that is the file _Half named
    digests: bytes  # the accepted lines' custom_id digests, 8 bytes each
    variants: list  # the router's variants, which checked.variant_of indexes


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
