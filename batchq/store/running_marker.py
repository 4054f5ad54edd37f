"""A worker's mark of the batch it starts, on its chunk's row, sent without waiting for it.

A write names the lines of a group of batches in flight ahead of them (batchq.store.batch_write);
which of those batches was running when a worker died is not in the names, so a claim after
a crash would count an attempt on every one of them, and each would then run alone: a quarter
second of batches run line by line. A batch that starts without a write is marked instead, an
UPDATE of `chunks.running` on a connection of its own that commits without waiting for the
disk (synchronous_commit off; the mark is evidence, not a result), its reply read at the next
mark. Once sent, a mark survives the worker: a worker killed in the batch has already handed
it to the socket. Only a crash of PostgreSQL itself can lose it, and then the mark found may be
an earlier batch's of the same group; the lines it misses are counted at a later crash.

A mark that cannot be sent (the connection is down, the last one failed) returns False, and
the batch starts after a write that names it instead. PostgreSQL with psycopg only; elsewhere
no batch is marked, and a claim after a crash counts all the lines in flight.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence

import psycopg
from psycopg import pq
from sqlalchemy.engine import make_url

from batchq.config import Settings
from batchq.store import batch_write

log = logging.getLogger(__name__)

# Only the claim's holder marks its chunk: a worker presumed dead cannot mark the next holder's.
MARK = b"UPDATE chunks SET running = $1 WHERE id = $2 AND attempts = $3"


class RunningMarker:
    """Each thread's own connection for its marks (a worker marks from its main thread)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.enabled = batch_write.one_statement(settings)
        self._local = threading.local()

    def mark(self, chunk_id: int, token: int, line_ids: Sequence[int]) -> bool:
        """Mark `line_ids` as the chunk's batch running; False if the mark cannot be relied on
        (then the batch should start after a write instead)."""
        if not self.enabled:
            return True  # nothing is marked here: a claim after a crash counts all in flight
        try:
            pgconn = self._connection()
            self._read_last_reply(pgconn)
            self._check_alive(pgconn)
            # Blocking mode: this returns once the statement is in the socket's hands.
            pgconn.send_query_prepared(b"mark", [batch_write.ids_json(line_ids).encode(),
                                                 str(chunk_id).encode(), str(token).encode()])
            self._local.awaiting = True
            return True
        except (psycopg.Error, OSError, _MarkFailed) as exc:
            log.warning("could not mark a batch running (it starts after a write instead): %s",
                        exc)
            self.close()
            return False

    def _connection(self) -> pq.abc.PGconn:
        conn: psycopg.Connection | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            url = make_url(self.settings.database_url).set(drivername="postgresql")
            conn = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True,
                                   connect_timeout=5)
            self._local.conn, self._local.awaiting = conn, False  # close() closes it from here
            conn.execute("SET synchronous_commit TO off")
            conn.pgconn.nonblocking = 0  # from here on, only the marks' own calls below
            prepared = conn.pgconn.prepare(b"mark", MARK)  # parsed and planned once
            if prepared.status != pq.ExecStatus.COMMAND_OK:
                raise _MarkFailed((prepared.error_message or b"").decode(errors="replace"))
        return conn.pgconn

    def _read_last_reply(self, pgconn: pq.abc.PGconn) -> None:
        if not self._local.awaiting:
            return
        failed = None
        while (result := pgconn.get_result()) is not None:
            if result.status != pq.ExecStatus.COMMAND_OK:
                failed = (result.error_message or b"").decode(errors="replace").strip()
        self._local.awaiting = False
        if failed is not None:
            raise _MarkFailed(f"the last mark failed: {failed}")

    def _check_alive(self, pgconn: pq.abc.PGconn) -> None:
        """A connection the server closed since (a restart, a terminated backend) would still
        take the next statement into the socket: read what has arrived, without waiting."""
        pgconn.consume_input()
        if pgconn.status != pq.ConnStatus.OK:
            raise _MarkFailed("the connection was closed")

    def close(self) -> None:
        conn: psycopg.Connection | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


class _MarkFailed(Exception):
    pass
