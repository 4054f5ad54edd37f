"""The schema changes only through migrations/: migrated databases must equal the models."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from batchq.db import get_engine, head_revision, upgrade
from batchq.models import Base


def diff(url):
    with get_engine(url).connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                Base.metadata)


@pytest.mark.services
def test_postgres_migrations_match_models(pg_url):
    assert diff(pg_url) == []


def test_sqlite_migrations_match_models(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    assert upgrade(url) == head_revision()
    assert diff(url) == []
    assert upgrade(url) == head_revision()  # idempotent


def test_processes_starting_at_once_on_a_new_embedded_database_all_work(embedded_env):
    """Two workers started together on a fresh BATCHQ_HOME once raced to create the tables."""
    import subprocess

    from tests.conftest import BATCHQ

    started = [subprocess.Popen([BATCHQ, "status"], env=embedded_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outcomes = [(p.wait(120), p.stderr.read()) for p in started]
    assert outcomes == [(0, "no jobs yet\n")] * 4


@pytest.mark.services
def test_concurrent_upgrades_on_postgres_take_turns(pg_url):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(upgrade, [pg_url] * 3)) == [head_revision()] * 3
