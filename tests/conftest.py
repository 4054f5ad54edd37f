"""Shared fixtures: a tiny offline Qwen2 model, real PostgreSQL and Redis, the real CLI.

A missing service skips its tests on a laptop and fails them in CI (CI=true).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

PG_ADMIN_URL = os.environ.get("BATCHQ_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BATCHQ_TEST_REDIS", "redis://127.0.0.1:6379/11")
BATCHQ = str(Path(sys.executable).parent / "batchq")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is not reachable, and CI needs it")
    pytest.skip(f"{what} is not reachable")


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from batchq.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen2")


@pytest.fixture(scope="session")
def pg_url() -> str:
    """A fresh, migrated PostgreSQL database for this test session."""
    if not _port_open("127.0.0.1", 5432):
        _missing("PostgreSQL at 127.0.0.1:5432")
    from sqlalchemy import create_engine, text

    name = f"batchq_test_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    from batchq.db import upgrade

    upgrade(url)
    yield url
    from batchq.db import get_engine

    get_engine(url).dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    if not _port_open("127.0.0.1", 6379):
        _missing("Redis at 127.0.0.1:6379")
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    return REDIS_URL


@pytest.fixture
def services_env(pg_url, redis_url, tmp_path) -> dict[str, str]:
    """Environment for the CLI on real PostgreSQL and Redis."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHQ_")}
    env.update(BATCHQ_DATABASE_URL=pg_url, BATCHQ_BROKER_URL=redis_url,
               BATCHQ_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1")
    return env


@pytest.fixture
def embedded_env(tmp_path) -> dict[str, str]:
    """Environment for the CLI with no configuration but its home: SQLite database and broker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHQ_")}
    env.update(BATCHQ_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1")
    return env


def batchq(*args: str, env: dict[str, str], input: str | None = None,
           timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed `batchq` command, as a user would."""
    return subprocess.run([BATCHQ, *args], env=env, input=input, capture_output=True,
                          text=True, timeout=timeout)


REPO = Path(__file__).resolve().parent.parent
# The real CLI with faults injected into the engine (tests/fault_launcher.py).
FAULTY_BATCHQ = [sys.executable, "-m", "tests.fault_launcher"]


class WorkerProcess:
    def __init__(self, args: list[str], env: dict[str, str], log: Path,
                 command: list[str] | None = None):
        self.log = log
        self._file = log.open("w")
        env = {**env, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([*(command or [BATCHQ]), "worker", *args], env=env,
                                     stdout=self._file, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=REPO)

    def text(self) -> str:
        return self.log.read_text()

    def wait_ready(self, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.text():
                return self.text()
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.text()}")
            time.sleep(0.2)
        raise AssertionError(f"worker not ready after {timeout}s:\n{self.text()}")

    def kill(self) -> None:
        """kill -9: no handback, no goodbye; its lease must run out."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._file.close()


@pytest.fixture
def start_worker(tmp_path):
    """Start `batchq worker` subprocesses; all are stopped at the end of the test."""
    started: list[WorkerProcess] = []

    def start(*args: str, env: dict[str, str], faults: str | None = None,
              ready: bool = True) -> WorkerProcess:
        command = None
        if faults is not None:
            env, command = {**env, "BATCHQ_TEST_FAULT": faults}, FAULTY_BATCHQ
        worker = WorkerProcess(list(args), env, tmp_path / f"worker-{len(started)}.log", command)
        started.append(worker)
        if ready:
            worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


def wait_for(predicate, timeout: float = 120, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")
