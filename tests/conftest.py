"""Shared fixtures: a tiny offline Qwen2 model, real PostgreSQL and Redis, the real CLI.

A missing service skips its tests on a laptop and fails them in CI (CI=true).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from batchq.testing import WorkerProcess, stop_all, wait_for

__all__ = ["BATCHQ", "batchq", "free_port", "scrape", "sql", "wait_for"]

PG_ADMIN_URL = os.environ.get("BATCHQ_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
# One Redis database per test process (pytest-xdist runs several): 11 alone, 13 and up with
# xdist. Workers of one process then never take another's messages.
_XDIST = os.environ.get("PYTEST_XDIST_WORKER", "")
_REDIS_DB = 13 + int(_XDIST.removeprefix("gw")) if _XDIST else 11
REDIS_URL = os.environ.get("BATCHQ_TEST_REDIS", f"redis://127.0.0.1:6379/{_REDIS_DB}")
BATCHQ = str(Path(sys.executable).parent / "batchq")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


# The modules whose tests start workers run first: with several test processes, the long tests
# are then spread out instead of finishing last on one of them.
SLOW_FIRST = ("test_faults", "test_e2e", "test_routing", "test_schedules", "test_api", "test_bench",
              "test_security", "test_observe", "test_thinking", "test_bad_input",
              "test_schedule_cli")


@pytest.fixture(scope="session", autouse=True)
def forked_workers():
    """Workers forked from one process that has imported batchq already (tests/forkserver.py):
    each starts in about a second of CPU instead of six. BATCHQ_TEST_FORKSERVER=0 starts
    them as plain subprocesses."""
    import batchq.testing

    if os.environ.get("BATCHQ_TEST_FORKSERVER", "1") == "0":
        yield
        return
    from tests.forkserver import ForkServer

    server = ForkServer.start()
    batchq.testing.start_process = server.popen
    yield
    batchq.testing.start_process = subprocess.Popen
    server.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        return SLOW_FIRST.index(module) if module in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is not reachable, and CI needs it")
    pytest.skip(f"{what} is not reachable")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str) -> dict[str, float]:
    """`name{labels} value` lines of a Prometheus text page, as a dict."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def sql(env: dict[str, str], query: str, **params: object) -> list:
    """A query on the database a test's CLI uses (BATCHQ_DATABASE_URL, or the embedded one of
    its BATCHQ_HOME), its rows as a list."""
    from sqlalchemy import create_engine, text

    from batchq.config import Settings

    engine = create_engine(Settings.from_env(env).database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(query), params).all())
    finally:
        engine.dispose()


def stored_status(env: dict[str, str], job: str) -> str:
    """A job's status in the database: what a wait polls. Each `batchq` process costs most of a
    second of CPU, which the workers under test need, and a wait polls up to once a second;
    the test then reads what it asserts with the CLI, as a user would."""
    status: str = sql(env, "SELECT status FROM jobs WHERE id = :j", j=job)[0][0]
    return status


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _built_once(request, tmp_path_factory, name: str, build: Callable[[Path], object]) -> Path:
    """A model built once per run: with xdist, the test processes share one copy (a file lock
    keeps the others waiting while the first builds it).

    Its config carries this run's id, so its queue name (which digests the config) is this
    run's own: a worker left over from an earlier run on the same Redis database can never
    take this run's messages."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    run_id = getattr(request.config, "workerinput", {}).get("testrunuid") or uuid.uuid4().hex
    if _XDIST:
        root = root.parent  # the run's directory, above each process's own
    path, done = root / name, root / f"{name}.built"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            build(path)
            config = json.loads((path / "config.json").read_text())
            (path / "config.json").write_text(json.dumps({**config, "batchq_test_run": run_id}))
            done.touch()
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, request) -> Path:
    """A tiny random-weight Qwen2 with the real Qwen2.5 tokenizer."""
    from batchq.tools.tiny import make_tiny_model

    return _built_once(request, tmp_path_factory, "tiny-qwen2", make_tiny_model)


@pytest.fixture(scope="session")
def thinking_model(tmp_path_factory, request) -> Path:
    """A tiny Qwen3 whose greedy decoding thinks, then answers 'Three.' (tools/tiny.py)."""
    from batchq.tools.tiny import make_thinking_model

    return _built_once(request, tmp_path_factory, "tiny-qwen3", make_thinking_model)


@contextlib.contextmanager
def new_pg_database() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped afterwards."""
    from sqlalchemy import create_engine, text

    from batchq.store.database import get_engine

    name = f"batchq_test_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        get_engine(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session."""
    if not _port_open("127.0.0.1", 5432):
        _missing("PostgreSQL at 127.0.0.1:5432")
    from batchq.store.migrate import upgrade

    with new_pg_database() as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    if not _port_open("127.0.0.1", 6379):
        _missing("Redis at 127.0.0.1:6379")
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    return REDIS_URL


# Workers in tests plan with assumed costs: measuring them at every one of ~40 worker starts
# costs a minute of the suite, and batches then come out the same on every machine.
# test_e2e's embedded worker test and the bench tests measure them.
ASSUMED_COSTS = {"BATCHQ_MEASURE_COSTS": "0"}


def _services(pg_url: str, redis_url: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHQ_")}
    env.update(BATCHQ_DATABASE_URL=pg_url, BATCHQ_BROKER_URL=redis_url, BATCHQ_HOME=str(home),
               PYTHONUNBUFFERED="1", **ASSUMED_COSTS)
    return env


@pytest.fixture
def services_env(pg_url, redis_url, tmp_path) -> dict[str, str]:
    """Environment for the CLI on real PostgreSQL and Redis."""
    return _services(pg_url, redis_url, tmp_path / "home")


@pytest.fixture(scope="module")
def shared_worker(pg_url, redis_url, tiny_model, tmp_path_factory):
    """One plain worker (the tiny model, on PostgreSQL and Redis) for the tests of a module
    that ask nothing special of it: a worker start costs ~9 s of CPU. It stops before any
    other module's test runs in this process, so no test meets a worker it did not expect."""
    home = tmp_path_factory.mktemp("shared-worker")
    env = {**_services(pg_url, redis_url, home), "PYTHONPATH": str(REPO)}
    worker = WorkerProcess(["--model", str(tiny_model)], env, home / "worker.log", cwd=REPO)
    worker.wait_ready()
    yield worker
    stop_all([worker])


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def settings(request, tmp_path):
    """Settings on a fresh SQLite database, then on this process's PostgreSQL one: a test of
    the store that asks for them runs on both."""
    from batchq.config import Settings

    url = (f"sqlite:///{tmp_path / 'batchq.db'}" if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))
    return Settings.from_env({"BATCHQ_HOME": str(tmp_path), "BATCHQ_DATABASE_URL": url})


@pytest.fixture
def embedded_env(tmp_path) -> dict[str, str]:
    """Environment for the CLI with no configuration but its home: SQLite database and broker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHQ_")}
    env.update(BATCHQ_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1", **ASSUMED_COSTS)
    return env


def batchq(*args: str, env: dict[str, str], input: str | None = None,
           timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed `batchq` command, as a user would."""
    return subprocess.run([BATCHQ, *args], env=env, input=input, capture_output=True,
                          text=True, timeout=timeout)


REPO = Path(__file__).resolve().parent.parent
# The real CLI with faults injected into the engine (tests/fault_launcher.py).
FAULTY_BATCHQ = [sys.executable, "-m", "tests.fault_launcher"]


@pytest.fixture
def start_worker(tmp_path):
    """Start `batchq worker` subprocesses; all are stopped at the end of the test."""
    started: list[WorkerProcess] = []

    def start(*args: str, env: dict[str, str], faults: str | None = None,
              ready: bool = True) -> WorkerProcess:
        command = None
        if faults is not None:
            env, command = {**env, "BATCHQ_TEST_FAULT": faults}, FAULTY_BATCHQ
        worker = WorkerProcess(list(args), {**env, "PYTHONPATH": str(REPO)},
                               tmp_path / f"worker-{len(started)}.log", command, cwd=REPO)
        started.append(worker)
        if ready:
            worker.wait_ready()
        return worker

    yield start
    stop_all(started)
