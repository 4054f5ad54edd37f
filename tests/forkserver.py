"""A fork server for the tests' `batchq` processes: one process per test process imports what a
`batchq worker` imports (torch, transformers, Celery, batchq) once, then forks each worker the
tests start from that state. A worker started as a subprocess spent 5-6 s of CPU on its
imports alone, and the suite starts some fifty: a third of its time.

The child is what a subprocess would be, but for the interpreter's start-up and the imports:
the same `batchq` entry point (or the fault launcher's) with the same argv, environment,
working directory, output file and process group of its own. It computes nothing before the
fork, so torch's thread pool does not exist yet (forking after it runs is what is unsafe).

    server = ForkServer.start()                  # in the test process, once
    proc = server.popen(argv, env=..., stdout=f, stderr=subprocess.STDOUT,
                        start_new_session=True, cwd=...)
    proc.poll(); proc.wait(timeout); proc.pid    # as subprocess.Popen's

`python -m tests.forkserver FD` is the server's side: it serves requests on the socket FD.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]
FAULT_LAUNCHER = "tests.fault_launcher"


class ForkServer:
    """The test process's end: a socket to the server, one request at a time."""

    def __init__(self, process: subprocess.Popen, sock: socket.socket):
        self.process, self.sock = process, sock
        self._reader = sock.makefile("r", encoding="utf-8")
        self._turn = threading.Lock()  # one request and its answer at a time

    @classmethod
    def start(cls) -> ForkServer:
        ours, theirs = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        process = subprocess.Popen([sys.executable, "-u", "-m", "tests.forkserver",
                                    str(theirs.fileno())], pass_fds=[theirs.fileno()],
                                   env=env, cwd=REPO, stdin=subprocess.DEVNULL)
        theirs.close()
        server = cls(process, ours)
        server._ask({"op": "hello"})  # answered once its imports are done
        return server

    def _ask(self, request: dict[str, Any], fds: list[int] | None = None) -> dict[str, Any]:
        message = (json.dumps(request) + "\n").encode()
        with self._turn:
            if fds:
                socket.send_fds(self.sock, [message], fds)
            else:
                self.sock.sendall(message)
            line = self._reader.readline()
        if not line:
            raise RuntimeError(f"the fork server exited ({self.process.poll()})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"fork server: {answer['error']}")
        return answer

    def popen(self, args: list[str], *, env: dict[str, str], stdout: IO[Any],
              stderr: int | None = None, start_new_session: bool = False,
              cwd: str | Path | None = None) -> Forked:
        """subprocess.Popen's subset that WorkerProcess uses: stderr goes where stdout does."""
        assert stderr == subprocess.STDOUT and start_new_session, "not served: use Popen"
        # `batchq ARGS`, or `python -m tests.fault_launcher ARGS` (faults installed first).
        faults = len(args) > 2 and args[1:3] == ["-m", FAULT_LAUNCHER]
        argv = ["batchq", *(args[3:] if faults else args[1:])]
        answer = self._ask({"op": "spawn", "argv": argv, "env": env, "faults": faults,
                            "cwd": str(cwd or os.getcwd())}, [stdout.fileno()])
        return Forked(self, answer["pid"], args)

    def returncode(self, pid: int) -> int | None:
        return self._ask({"op": "poll", "pid": pid})["returncode"]

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # the server sees the end and exits
        self._reader.close()
        self.sock.close()
        self.process.wait(30)


class Forked:
    """A forked process, as much of subprocess.Popen as the tests use. Its parent is the
    server, which reaps it and tells its exit code."""

    def __init__(self, server: ForkServer, pid: int, args: list[str]):
        self.server, self.pid, self.args = server, pid, args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.returncode(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            time.sleep(0.05)
        assert self.returncode is not None
        return self.returncode


# ---------------------------------------------------------------- the server's side

# What a worker imports before it is ready, imported once here: batchq's CLI and worker, the
# model code (torch, transformers and the Qwen architectures, the tokenizers, the grammar
# engine), Celery's worker and its transports, and the database driver. Importing runs no
# torch operation, so no thread pool exists yet when a worker is forked.
WARM = ("batchq.cli", "batchq.worker.boot", "batchq.worker.task", "batchq.engine.core",
        "batchq.engine.loading", "batchq.engine.constraints", "tests.fault_launcher",
        "torch", "transformers", "transformers.generation.utils",
        "transformers.models.qwen2.modeling_qwen2", "transformers.models.qwen3.modeling_qwen3",
        "transformers.models.qwen2.tokenization_qwen2", "tokenizers", "accelerate",
        "llguidance", "llguidance.hf", "llguidance.torch", "celery.bin.celery", "celery.apps.worker",
        "celery.worker.consumer", "celery.concurrency.solo", "celery.events",
        "kombu.transport.redis", "kombu.transport.sqlalchemy", "redis", "psycopg",
        "sqlalchemy.dialects.postgresql.psycopg", "sqlalchemy.dialects.sqlite")


def _serve(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    for name in WARM:
        importlib.import_module(name)
    # No Python thread may run at a fork (its locks would be copied held). numpy's OpenBLAS
    # starts a native pool of its own at import, which it re-creates in a forked child.
    assert threading.active_count() == 1, threading.enumerate()

    exited: dict[int, int] = {}
    buffer, fds = b"", []
    while True:
        message, received, _, _ = socket.recv_fds(sock, 1 << 20, 4)
        if not message:
            return  # the test process closed its end
        buffer += message
        fds += received  # they come with the first part of their request
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            try:
                answer = _answer(json.loads(line), fds, sock, exited)
            except Exception as exc:  # told to the test, which fails with it
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            finally:
                for fd_ in fds:
                    os.close(fd_)
                fds = []
            sock.sendall((json.dumps(answer) + "\n").encode())


def _answer(request: dict[str, Any], fds: list[int], sock: socket.socket,
            exited: dict[int, int]) -> dict[str, Any]:
    if request["op"] == "hello":
        return {}
    if request["op"] == "spawn":
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request, fds[0], sock)
        return {"pid": pid}
    if request["op"] == "poll":
        pid = request["pid"]
        if pid not in exited:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                exited[pid] = os.waitstatus_to_exitcode(status)
        return {"returncode": exited.get(pid)}
    raise ValueError(f"unknown request {request['op']!r}")


def _child(request: dict[str, Any], out: int, sock: socket.socket) -> None:
    """Become `batchq ARGV` as a new process would, then exit with its code."""
    code = 1
    try:
        sock.close()
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(null)
        os.close(out)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = request["argv"]
        if request["faults"]:
            from tests.fault_launcher import install

            install(os.environ.get("BATCHQ_TEST_FAULT", ""))
        from batchq.cli import main

        main()
        code = 0
    except SystemExit as done:  # as the interpreter ends with it
        if isinstance(done.code, int) or done.code is None:
            code = done.code or 0
        else:
            print(done.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
