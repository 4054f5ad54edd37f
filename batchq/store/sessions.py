"""Transactions: one `session_scope` per unit of work, and `retrying` for the workers, which
wait out a database that restarts rather than failing the work."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, Executable
from sqlalchemy.engine import Connection
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from batchq.config import Settings
from batchq.errors import ServiceUnavailable
from batchq.store.database import get_engine, unreachable
from batchq.store.migrate import ensure_schema

log = logging.getLogger(__name__)

T = TypeVar("T")


def session_factory(settings: Settings) -> sessionmaker[Session]:
    ensure_schema(settings.database_url)
    return sessionmaker(get_engine(settings.database_url), expire_on_commit=False)


@contextlib.contextmanager
def session_scope(settings: Settings) -> Iterator[Session]:
    """A session that commits on success and turns a lost connection into a clear error."""
    factory = session_factory(settings)
    try:
        with factory.begin() as session:
            yield session
    except (OperationalError, InterfaceError) as exc:
        # InterfaceError: psycopg's "the connection is closed" when a server killed it.
        raise ServiceUnavailable(unreachable(settings.database_url, exc)) from exc


class KeptConnection:
    """A connection each thread keeps between its transactions, in autocommit, for a hot path
    whose every transaction is one statement (a worker's batch writes on PostgreSQL): no pool
    checkout and ping, no BEGIN and COMMIT, so one round trip each (2.1 -> 1.2 ms a batch
    write on the development machine). Idle longer than STALE_SECONDS (between chunks, say),
    it is pinged first, as the pool pings its own; a failure drops it, and the next use opens
    another."""

    STALE_SECONDS = 5.0

    def __init__(self, settings: Settings):
        self.settings = settings
        self._kept = threading.local()

    @contextlib.contextmanager
    def statement(self) -> Iterator[Connection]:
        """The kept connection, for one statement: its own transaction."""
        try:
            db = self._connection()
            yield db
            db.commit()  # nothing to send in autocommit; it ends SQLAlchemy's own bookkeeping
            self._kept.used = time.monotonic()
        except BaseException as exc:
            self.close()
            if isinstance(exc, (OperationalError, InterfaceError)):
                raise ServiceUnavailable(unreachable(self.settings.database_url, exc)) from exc
            raise

    def _connection(self) -> Connection:
        db: Connection | None = getattr(self._kept, "db", None)
        if db is not None and time.monotonic() - self._kept.used > self.STALE_SECONDS:
            try:
                db.exec_driver_sql("SELECT 1")
            except (OperationalError, InterfaceError):  # a restart or a timeout closed it
                self.close()
                db = None
        if db is None:
            session_factory(self.settings)  # the schema is checked once, as for sessions
            db = get_engine(self.settings.database_url).connect().execution_options(
                isolation_level="AUTOCOMMIT")
            self._kept.db, self._kept.used = db, time.monotonic()
        return db

    def close(self) -> None:
        db = getattr(self._kept, "db", None)
        self._kept.db = None
        if db is not None:
            with contextlib.suppress(Exception):  # a dead connection need not close cleanly
                db.invalidate()
                db.close()


def changed_rows(session: Session, statement: Executable) -> int:
    """How many rows an UPDATE changed: its compare-and-set succeeded if any did."""
    result = session.execute(statement)
    return cast("CursorResult[Any]", result).rowcount


def retrying(settings: Settings, what: str, transaction: Callable[[], T]) -> T:
    """Run one transaction until it gets through, waiting out a database that restarts or
    drops connections (backoff from 0.5 s to 10 s), for up to BATCHQ_OUTAGE_SECONDS.

    The transaction must be safe to run again after it rolled back, as batchq's worker
    writes are: a line is written only while it is still pending.
    """
    deadline = time.monotonic() + settings.outage_seconds
    delay = 0.5
    while True:
        try:
            return transaction()
        except ServiceUnavailable as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s: %s; trying again in %.1fs", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
