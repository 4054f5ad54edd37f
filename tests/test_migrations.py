"""The schema changes only through migrations/: migrated databases must equal the models."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from batchq.store.database import get_engine
from batchq.store.migrate import head_revision, upgrade
from batchq.store.schema import Base


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


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def empty_database(request, tmp_path):
    """A URL of an empty database of each kind (the PostgreSQL one dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    from tests.conftest import new_pg_database

    request.getfixturevalue("pg_url")  # PostgreSQL is there (or the test skips or fails)
    with new_pg_database() as url:
        yield url


def _alembic(url, step, revision):
    """Alembic's upgrade or downgrade (`step`) to `revision`, on one connection of ours."""
    from batchq.store.migrate import alembic_config

    with get_engine(url).begin() as conn:
        cfg = alembic_config(url)
        cfg.attributes["connection"] = conn
        step(cfg, revision)


def _add_job(conn, job, queue, *, lines, chunks):
    """A queued job with `lines` pending lines in chunk 1, in SQL: the columns every revision
    since 0001 has."""
    from sqlalchemy import text

    conn.execute(text(
        "INSERT INTO jobs (id, model, quant, queue, status, settings, total_lines, "
        "total_chunks, created_at) VALUES (:id, 'm', 'none', :queue, 'queued', '{}', "
        ":lines, :chunks, CURRENT_TIMESTAMP)"),
        {"id": job, "queue": queue, "lines": lines, "chunks": chunks})
    for n in range(1, lines + 1):
        conn.execute(text(
            "INSERT INTO lines (job_id, line_no, chunk_seq, custom_id, kind, request, status, "
            "attempts, created_at) VALUES (:job, :n, 1, :c, 'prompt', '{}', 'pending', 0, "
            "CURRENT_TIMESTAMP)"), {"job": job, "n": n, "c": f"c{n}"})


def test_upgrading_a_database_with_jobs_keeps_every_row_and_gives_chunks_their_queue(
        empty_database):
    """Jobs stored before an upgrade keep all their lines and chunks (SQLite rebuilds a table
    to change it, which cascades unless foreign keys are off), and migration 0005, which
    moved the queue from the job to each chunk, gives each chunk its job's queue."""
    from alembic import command
    from sqlalchemy import text

    url = empty_database
    engine = get_engine(url)
    _alembic(url, command.upgrade, "0004")
    with engine.begin() as conn:
        for job, queue in (("a" * 32, "batchq.one.none"), ("b" * 32, "batchq.two.nf4")):
            _add_job(conn, job, queue, lines=1, chunks=2)
            for seq in (1, 2):
                conn.execute(text(
                    "INSERT INTO chunks (job_id, seq, first_line, last_line, status, attempts, "
                    "batches, prompt_tokens, padded_prompt_tokens, completion_tokens, "
                    "decode_slots, generate_seconds, peak_memory_bytes) VALUES (:job, :seq, 1, "
                    "1, 'queued', 0, 0, 0, 0, 0, 0, 0, 0)"), {"job": job, "seq": seq})
    assert upgrade(url) == head_revision()
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT j.queue, c.queue FROM chunks c JOIN jobs j "
                                 "ON j.id = c.job_id ORDER BY c.id")).all()
        lines = conn.execute(text("SELECT count(*) FROM lines")).scalar_one()
    assert rows == [("batchq.one.none",) * 2] * 2 + [("batchq.two.nf4",) * 2] * 2
    assert lines == 2
    assert diff(url) == []


def test_deleting_a_job_deletes_its_lines_and_the_last_migration_goes_both_ways(
        empty_database):
    """Lines have no foreign key to their job (migration 0014: it was a third of COPY's work
    on PostgreSQL); a trigger on jobs deletes a deleted job's lines instead, as the key's
    cascade did, and only that job's. Migration 0014 goes down and up again keeping every row,
    and the trigger survives it."""
    from alembic import command
    from sqlalchemy import text

    url = empty_database
    assert upgrade(url) == head_revision()
    engine = get_engine(url)
    with engine.begin() as conn:
        for job in ("a" * 32, "b" * 32):
            _add_job(conn, job, "q", lines=2, chunks=1)
    _alembic(url, command.downgrade, "0013")
    _alembic(url, command.upgrade, "head")
    assert diff(url) == []
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM jobs WHERE id = :id"), {"id": "a" * 32})
    with engine.connect() as conn:
        left = conn.execute(text("SELECT job_id, line_no FROM lines ORDER BY line_no")).all()
    assert left == [("b" * 32, 1), ("b" * 32, 2)]


def test_final_counts_are_filled_for_the_jobs_already_final(empty_database):
    """Migration 0015 stores the counts of every job that is final already (the metrics add
    those up instead of counting lines), and none for an active job."""
    from alembic import command
    from sqlalchemy import text

    url = empty_database
    _alembic(url, command.upgrade, "0014")
    engine = get_engine(url)
    with engine.begin() as conn:
        _add_job(conn, "a" * 32, "batchq.one.none", lines=3, chunks=0)
        _add_job(conn, "b" * 32, "batchq.two.none", lines=2, chunks=0)
        conn.execute(text("UPDATE jobs SET status = 'failed' WHERE id = :a"), {"a": "a" * 32})
        conn.execute(text("UPDATE lines SET status = 'succeeded' WHERE job_id = :a AND "
                          "line_no < 3"), {"a": "a" * 32})
        conn.execute(text("UPDATE lines SET status = 'failed' WHERE job_id = :a AND "
                          "line_no = 3"), {"a": "a" * 32})
    assert upgrade(url) == head_revision()
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT job_id, queue, status, lines FROM final_counts "
                                 "ORDER BY status")).all()
    assert rows == [("a" * 32, "batchq.one.none", "failed", 1),
                    ("a" * 32, "batchq.one.none", "succeeded", 2)]
    assert diff(url) == []


def test_chunks_stored_before_0016_get_their_line_numbers_and_go_down_and_up_again(
        empty_database):
    """Migration 0016 lists each existing chunk's lines in chunks.line_nos (claims find them by
    number now, not by an index on lines' chunk_seq), ascending, none for a refused line, an
    empty list for a chunk without lines; it goes down and up again keeping every row."""
    from alembic import command
    from sqlalchemy import text

    from batchq.store.models import line_numbers

    url = empty_database
    _alembic(url, command.upgrade, "0015")
    engine = get_engine(url)
    chunk_of = {1: 1, 2: 2, 3: 1, 4: 0, 5: 1, 6: 2}  # line 4 was refused: no chunk
    with engine.begin() as conn:
        _add_job(conn, "a" * 32, "q", lines=6, chunks=3)
        for line_no, seq in chunk_of.items():
            conn.execute(text("UPDATE lines SET chunk_seq = :seq WHERE line_no = :n"),
                         {"seq": seq, "n": line_no})
        for seq in (1, 2, 3):
            conn.execute(text(
                "INSERT INTO chunks (job_id, seq, first_line, last_line, queue, model, quant, "
                "status, attempts, batches, prompt_tokens, padded_prompt_tokens, "
                "completion_tokens, decode_slots, generate_seconds, peak_memory_bytes) VALUES "
                "(:job, :seq, 1, 6, 'q', 'm', 'none', 'queued', 0, 0, 0, 0, 0, 0, 0, 0)"),
                {"job": "a" * 32, "seq": seq})

    def listed() -> dict[int, list[int]]:
        with engine.connect() as conn:
            return {seq: line_numbers(numbers) for seq, numbers in conn.execute(text(
                "SELECT seq, line_nos FROM chunks ORDER BY seq"))}

    assert upgrade(url) == head_revision()
    assert listed() == {1: [1, 3, 5], 2: [2, 6], 3: []}
    _alembic(url, command.downgrade, "0015")
    _alembic(url, command.upgrade, "head")
    assert listed() == {1: [1, 3, 5], 2: [2, 6], 3: []}
    assert diff(url) == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM lines")).scalar_one() == 6


def test_chunks_stored_before_0017_get_their_reasoning_tokens_from_their_lines(
        empty_database, tmp_path):
    """Migration 0017 sums the reasoning tokens of each existing chunk's lines into
    chunks.reasoning_tokens, which a job's metrics (and an HTTP batch's usage) now read."""
    from alembic import command
    from sqlalchemy import text

    from batchq.config import Settings
    from batchq.store.reads import job_view

    url = empty_database
    _alembic(url, command.upgrade, "0016")
    engine = get_engine(url)
    reasoning = {1: 5, 2: None, 3: 7, 4: 2}  # lines 1-2 in chunk 1, lines 3-4 in chunk 2
    with engine.begin() as conn:
        _add_job(conn, "b" * 32, "q", lines=4, chunks=2)
        for line_no, tokens in reasoning.items():
            conn.execute(text("UPDATE lines SET chunk_seq = :seq, status = 'succeeded', "
                              "reasoning_tokens = :tokens WHERE line_no = :n"),
                         {"seq": 1 if line_no <= 2 else 2, "tokens": tokens, "n": line_no})
        for seq in (1, 2):
            conn.execute(text(
                "INSERT INTO chunks (job_id, seq, first_line, last_line, line_nos, queue, model, "
                "quant, status, attempts, batches, prompt_tokens, padded_prompt_tokens, "
                "completion_tokens, decode_slots, generate_seconds, peak_memory_bytes) VALUES "
                "(:job, :seq, 1, 4, '[]', 'q', 'm', 'none', 'done', 1, 1, 0, 0, 20, 0, 0, 0)"),
                {"job": "b" * 32, "seq": seq})

    assert upgrade(url) == head_revision()
    with engine.connect() as conn:
        assert dict(conn.execute(text("SELECT seq, reasoning_tokens FROM chunks")).tuples().all()) == {
            1: 5, 2: 9}
    settings = Settings.from_env({"BATCHQ_HOME": str(tmp_path), "BATCHQ_DATABASE_URL": url})
    metrics = job_view(settings, "b" * 32).metrics
    assert (metrics.completion_tokens, metrics.reasoning_tokens) == (40, 14)
    _alembic(url, command.downgrade, "0016")
    _alembic(url, command.upgrade, "head")
    assert diff(url) == []


def test_the_head_read_from_the_files_is_alembics_head():
    """The schema check reads the head without Alembic (it is cheaper); both must agree."""
    from alembic.script import ScriptDirectory

    from batchq.store.migrate import alembic_config

    assert head_revision() == ScriptDirectory.from_config(alembic_config("")).get_current_head()
