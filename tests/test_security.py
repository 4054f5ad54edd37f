"""Security promises, against real workers: JSON only, no prompt text in logs, Redis with a
password and TLS, no code shipped with a model ever run, secrets never printed."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from tests.conftest import batchq, wait_for

pytestmark = [pytest.mark.services]

SECRET_PROMPT = "zebra-orchid-prompt-5521"


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class Evil:
    """Unpickling this runs a shell command: what a pickled message could do if accepted."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickled_message_is_refused_not_run(services_env, shared_worker, tiny_model, tmp_path):
    from batchq.config import Settings
    from batchq.queue.app import RUN_CHUNK, app_for
    from batchq.variants import resolve

    worker = shared_worker
    marker = tmp_path / "pwned"
    app = app_for(Settings.from_env(services_env))
    app.send_task(RUN_CHUNK, args=[Evil(marker)], queue=resolve(str(tiny_model)).queue,
                  serializer="pickle")
    wait_for(lambda: "untrusted content of type pickle" in worker.text(), timeout=30,
             what="the refusal")
    assert not marker.exists()
    # The worker lives on and serves JSON work as before.
    job = batchq("submit", str(write(tmp_path / "p.jsonl", [{"prompt": "still here?"}])),
                 "--model", str(tiny_model), "--max-new-tokens", "3", "--wait", env=services_env)
    assert job.returncode == 0, job.stderr


def test_no_prompt_text_in_worker_logs_at_info(services_env, shared_worker, tiny_model, tmp_path):
    worker = shared_worker  # its log level is INFO
    rows = [{"prompt": f"{SECRET_PROMPT} {i}"} for i in range(3)]
    rows.append({"custom_id": "long", "prompt": f"{SECRET_PROMPT} " * 3000})  # fails: context
    res = batchq("submit", str(write(tmp_path / "p.jsonl", rows)), "--model", str(tiny_model),
                 "--max-new-tokens", "3", "--wait", env=services_env)
    assert res.returncode == 6, res.stderr  # the long line failed; the others ran
    job = res.stdout.strip()
    wait_for(lambda: f"'job': '{job}'" in worker.text(), what="this job's chunk summary")
    assert "batchq.run_chunk" in worker.text()
    assert SECRET_PROMPT not in worker.text()


def test_code_shipped_with_a_model_never_runs(tiny_model, tmp_path):
    from batchq.engine import Engine
    from batchq.errors import NotFound

    marker = tmp_path / "remote-code-ran"
    model = tmp_path / "with-code"
    shutil.copytree(tiny_model, model)
    (model / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.Config", "AutoModelForCausalLM": "evil.Model"}
    (model / "config.json").write_text(json.dumps(config))
    # A known architecture with code beside it: transformers' own Qwen2 runs, the file does not.
    Engine.load(str(model), "none", "cpu")
    assert not marker.exists()
    # An architecture only its own code knows: refused, with a reason, and still not run.
    config["model_type"] = "evil-arch"
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(NotFound, match="cannot load model"):
        Engine.load(str(model), "none", "cpu")
    assert not marker.exists()


# ---------------------------------------------------------------- Redis with TLS and a password

PASSWORD = "hunter2-pass-9183"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tls_redis(tmp_path):
    """A private Redis that speaks only TLS and wants a password, with a CA of its own."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    d = tmp_path / "tls"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.crt", "-days", "1", "-subj", "/CN=batchq test CA", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
             "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "ext", cwd=d)
    port = _free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", "server.crt", "--tls-key-file", "server.key",
         "--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no",
         "--requirepass", PASSWORD, "--save", "", "--appendonly", "no"],
        cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail("redis-server with TLS did not start")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    yield port, d / "ca.crt"
    server.kill()
    server.wait()


def test_rediss_with_a_password_works_and_never_prints_it(services_env, start_worker,
                                                         tiny_model, tmp_path, tls_redis):
    port, ca = tls_redis
    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    env = {**services_env, "BATCHQ_BROKER_URL": url}
    worker = start_worker("--model", str(tiny_model), env=env)
    data = write(tmp_path / "p.jsonl", [{"prompt": "over TLS"}])
    res = batchq("submit", str(data), "--model", str(tiny_model), "--max-new-tokens", "3",
                 "--wait", env=env)
    assert res.returncode == 0, res.stderr
    assert f"rediss://:***@127.0.0.1:{port}/0" in worker.text()
    for text in (worker.text(), res.stdout, res.stderr):
        assert PASSWORD not in text

    # Without the CA the certificate is not trusted: refused (kombu alone would accept it).
    untrusted = {**env, "BATCHQ_BROKER_URL": f"rediss://:{PASSWORD}@127.0.0.1:{port}/0"}
    res = batchq("submit", str(data), "--model", str(tiny_model), env=untrusted)
    assert res.returncode == 5 and "certificate verify failed" in res.stderr
    wrong = {**env, "BATCHQ_BROKER_URL": url.replace(PASSWORD, "not-the-password")}
    res = batchq("submit", str(data), "--model", str(tiny_model), env=wrong)
    assert res.returncode == 5 and "cannot reach the broker at rediss://:***@" in res.stderr
    for text in (res.stdout, res.stderr):
        assert PASSWORD not in text and "not-the-password" not in text
