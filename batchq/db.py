"""Database engine, sessions and the schema's migration state.

The embedded SQLite database is migrated on first use; a server database is migrated only by
`batchq db upgrade`, so that an operator decides when the schema changes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from batchq.errors import ServiceUnavailable
from batchq.settings import Settings, redact

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def migrations_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "_migrations", here.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("batchq's migrations directory is missing from this installation")


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["url"] = url
    return cfg


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets the CLI read while a worker writes; busy_timeout waits out short write locks.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


@functools.cache
def get_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5})


def current_revision(engine: Engine) -> str | None:
    from alembic.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("")).get_current_head()


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """One migration at a time per SQLite file: several processes starting at once on a new
    embedded database (two workers, say) would otherwise each create its tables and all but
    one fail. PostgreSQL serialises with an advisory lock inside the migration instead."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    import fcntl

    with open(f"{database}.migrate-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def upgrade(url: str) -> str:
    """Bring the schema to the newest migration; returns the revision it is at. Safe to run
    from several processes at once: one migrates, the others then find it done."""
    from alembic import command

    engine = get_engine(url)
    try:
        with _migration_lock(engine), engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                # Any fixed key: concurrent `batchq db upgrade`s then run one after another.
                conn.execute(text("SELECT pg_advisory_xact_lock(7201510)"))
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except OperationalError as exc:
        raise ServiceUnavailable(_unreachable(url, exc)) from exc
    return head_revision()


def _unreachable(url: str, exc: Exception) -> str:
    reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
    return f"cannot reach the database at {redact(url)}: {reason}"


@functools.cache
def _ready(url: str) -> None:
    """Check once per process that the schema is usable, migrating the embedded database."""
    engine = get_engine(url)
    try:
        if url.startswith("sqlite"):
            if current_revision(engine) != head_revision():
                upgrade(url)
            return
        revision = current_revision(engine)
    except OperationalError as exc:
        raise ServiceUnavailable(_unreachable(url, exc)) from exc
    if revision != head_revision():
        state = "has no batchq schema" if revision is None else f"is at revision {revision}"
        raise ServiceUnavailable(
            f"the database at {redact(url)} {state}; run `batchq db upgrade` first"
        )


def session_factory(settings: Settings) -> sessionmaker[Session]:
    _ready(settings.database_url)
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
        raise ServiceUnavailable(_unreachable(settings.database_url, exc)) from exc


def retrying(settings: Settings, what: str, transaction: Callable[[], object]):
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

