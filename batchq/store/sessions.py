"""Transactions: one `session_scope` per unit of work, and `retrying` for the workers, which
wait out a database that restarts rather than failing the work."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, Executable
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
