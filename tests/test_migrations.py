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
