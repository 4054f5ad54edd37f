"""The Files API's side of the service: uploads kept in the file store (named by id, never
by the uploaded name), and batch outputs rendered from the database whenever they are read."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from batchq.config import Settings
from batchq.errors import InvalidRequest, NotFound, TooLarge
from batchq.service import reading
from batchq.states import UNANSWERED, LineStatus
from batchq.store import tenancy
from batchq.store.database import utcnow
from batchq.store.tenancy import FileView

UPLOAD_PURPOSES = ("batch",)
_ID = re.compile(r"^file-[0-9a-f]{24}$")
READ_BLOCK = 1 << 16
# Rendered lines go out in blocks: the HTTP server hands each piece of a streamed body from a
# worker thread to its event loop, a round trip that a piece per line paid a million times.
LINES_A_BLOCK = 256


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


def _path(settings: Settings, file_id: str) -> Path:
    if not _ID.match(file_id):  # ids are ours: never a path a request made up
        raise NotFound(f"no file {file_id!r}")
    return settings.files_dir / file_id


class Receiver:
    """Writes an upload to disk as it arrives, counting bytes and lines against the limits.
    Past a limit it raises TooLarge, and the caller throws the partial file away."""

    def __init__(self, out: IO[bytes], max_bytes: int, max_lines: int):
        self.out = out
        self.max_bytes = max_bytes
        self.max_lines = max_lines
        self.bytes = 0
        self.newlines = 0
        self.last = b"\n"

    @property
    def lines(self) -> int:
        return self.newlines + (0 if self.last == b"\n" else 1)

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.bytes += len(data)
        self.newlines += data.count(b"\n")
        self.last = data[-1:]
        if self.bytes > self.max_bytes:
            raise TooLarge(f"the file is over the limit of {self.max_bytes} bytes "
                           "(BATCHQ_API_MAX_FILE_BYTES)")
        if self.lines > self.max_lines:
            raise TooLarge(f"the file has more than {self.max_lines} lines "
                           "(BATCHQ_API_MAX_FILE_LINES)")
        self.out.write(data)


@contextlib.contextmanager
def receiving(settings: Settings, file_id: str) -> Iterator[Receiver]:
    """A Receiver whose file becomes `file_id` in the file store only if the block ends
    without an error; otherwise nothing is left behind."""
    final = _path(settings, file_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f".{file_id}.part")
    try:
        with partial.open("wb") as out:
            yield Receiver(out, settings.api_max_file_bytes, settings.api_max_file_lines)
            out.flush()
            os.fsync(out.fileno())
        partial.rename(final)
    finally:
        partial.unlink(missing_ok=True)


def delete_stored(settings: Settings, file_id: str) -> None:
    """Remove an upload's bytes that never got a row (a refused upload)."""
    _path(settings, file_id).unlink(missing_ok=True)


def register_upload(settings: Settings, tenant: str, file_id: str, filename: str,
                    purpose: str, received: Receiver, idempotency_key: str | None
                    ) -> FileView:
    """The row for an upload now in the file store. A repeated idempotency key returns the
    file stored the first time, and this copy is removed."""
    if purpose not in UPLOAD_PURPOSES:
        delete_stored(settings, file_id)
        raise InvalidRequest(f"purpose {purpose!r} is not supported; use "
                             f"{' or '.join(UPLOAD_PURPOSES)}", "purpose")
    view = FileView(file_id, tenant, purpose, os.path.basename(filename) or "upload.jsonl",
                    received.bytes, received.lines, utcnow())
    stored = tenancy.add_file(settings, view, idempotency_key)
    if stored.id != file_id:
        delete_stored(settings, file_id)
    return stored


def get(settings: Settings, tenant: str, file_id: str) -> FileView:
    found = tenancy.get_file(settings, tenant, file_id)
    if found is None:
        raise NotFound(f"no file {file_id!r}")
    return found


def upload_path(settings: Settings, view: FileView) -> Path:
    """Where an uploaded file's bytes are (for reading them as a job's input)."""
    return _path(settings, view.id)


def delete(settings: Settings, tenant: str, file_id: str) -> None:
    view = get(settings, tenant, file_id)
    tenancy.delete_file(settings, tenant, file_id)
    if view.rendered is None:
        _path(settings, file_id).unlink(missing_ok=True)


def content(settings: Settings, tenant: str, file_id: str) -> Iterator[bytes]:
    """A file's bytes, streamed: an upload as stored, a batch's output or errors rendered
    line by line from the database."""
    view = get(settings, tenant, file_id)
    if view.rendered is None:
        return _read(_path(settings, file_id))
    if view.batch_id is None:
        raise NotFound(f"no file {file_id!r}")
    batch = tenancy.get_batch(settings, tenant, view.batch_id)
    if batch is None or batch.job_id is None:
        raise NotFound(f"no file {file_id!r}")
    return render_lines(settings, batch.job_id, errors=view.rendered == "errors")


def _read(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while block := f.read(READ_BLOCK):
            yield block


def render_lines(settings: Settings, job_id: str, *, errors: bool) -> Iterator[bytes]:
    """A job's result lines in input order: those with an output, or (errors) those that
    ended without one. Lines still pending are in neither."""
    _, lines = reading.rendered(job_id, settings)
    block: list[bytes] = []
    for status, line in lines:
        if status is not LineStatus.PENDING and (status in UNANSWERED) == errors:
            block.append(line)
            if len(block) == LINES_A_BLOCK:
                yield b"".join(block)
                block = []
    if block:
        yield b"".join(block)


def list_files(settings: Settings, tenant: str, after: str | None, limit: int,
               purpose: str | None = None) -> tuple[list[FileView], bool]:
    return tenancy.list_files(settings, tenant, after, limit, purpose)
