"""The schema's migration state. The embedded SQLite database is migrated on first use; a
server database is migrated only by `batchq db upgrade`, so that an operator decides when the
schema changes."""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, ProgrammingError

from batchq.config import redact
from batchq.errors import ServiceUnavailable
from batchq.store.database import get_engine, unreachable


def migrations_dir() -> Path:
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("batchq's migrations directory is missing from this installation")


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["url"] = url
    return cfg


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None: no batchq schema), read with plain SQL from
    Alembic's own table: every CLI command checks it, and importing Alembic costs more than
    the rest of a `batchq status`."""
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except (ProgrammingError, OperationalError) as exc:
        if "alembic_version" in str(exc):  # no such table: the database is new
            return None
        raise


_REVISION = re.compile(r"^(down_)?revision\s*=\s*['\"]([^'\"]*)['\"]", re.M)


@functools.cache
def head_revision() -> str:
    """The newest revision in migrations/versions. A linear history is read straight from the
    files (revision and down_revision); anything else is left to Alembic."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (migrations_dir() / "versions").glob("*.py"):
        for down, value in _REVISION.findall(script.read_text()):
            (parents if down else revisions).add(value)
    heads = revisions - parents
    if len(heads) == 1:
        return str(heads.pop())
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    if head is None:
        raise FileNotFoundError("batchq's migrations directory holds no revision")
    return str(head)


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
    sqlite = engine.dialect.name == "sqlite"
    try:
        with _migration_lock(engine), engine.connect() as conn:
            if sqlite:
                # SQLite changes a table by rebuilding it; with foreign keys on, dropping the
                # old jobs table would cascade to every line. Off before the transaction, as
                # SQLite requires; every foreign key is checked again before the commit.
                conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
                conn.commit()
            with conn.begin():
                if engine.dialect.name == "postgresql":
                    # Any fixed key: concurrent `batchq db upgrade`s then run one after another.
                    conn.execute(text("SELECT pg_advisory_xact_lock(7201510)"))
                cfg = alembic_config(url)
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                if sqlite and conn.exec_driver_sql("PRAGMA foreign_key_check").first():
                    raise RuntimeError("the migration left rows whose foreign keys point nowhere")
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()
    except OperationalError as exc:
        raise ServiceUnavailable(unreachable(url, exc)) from exc
    return head_revision()


@functools.cache
def ensure_schema(url: str) -> None:
    """Check once per process that the schema is usable, migrating the embedded database."""
    engine = get_engine(url)
    try:
        if url.startswith("sqlite"):
            if current_revision(engine) != head_revision():
                upgrade(url)
            return
        revision = current_revision(engine)
    except OperationalError as exc:
        raise ServiceUnavailable(unreachable(url, exc)) from exc
    if revision != head_revision():
        state = "has no batchq schema" if revision is None else f"is at revision {revision}"
        raise ServiceUnavailable(
            f"the database at {redact(url)} {state}; run `batchq db upgrade` first"
        )
