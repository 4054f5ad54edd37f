"""The HTTP API as its users drive it: the official `openai` client, unchanged but for its
base_url, against a live `batchq serve` and a real worker on PostgreSQL and Redis.

One API server and one worker serve the whole module (a worker start costs ~9 s of CPU).
The worker's batches are slowed a little (tests/fault_launcher.py), so that a batch can be
watched, cancelled or expired while it runs.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from batchq.config import Settings
from batchq.testing import WorkerProcess, stop_all
from tests.conftest import (
    ASSUMED_COSTS,
    BATCHQ,
    FAULTY_BATCHQ,
    REPO,
    batchq,
    free_port,
    scrape,
    wait_for,
)

pytestmark = [pytest.mark.services, pytest.mark.e2e]

openai = pytest.importorskip("openai")

MAX_BYTES, MAX_LINES = 200_000, 400  # the server's upload limits in this module


class Server:
    """`batchq serve` on a free port; restartable (the API keeps nothing in memory)."""

    def __init__(self, env: dict[str, str], log: Path):
        self.env, self.log, self.port = env, log, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        self.proc = subprocess.Popen([BATCHQ, "serve", "--port", str(self.port)], env=self.env,
                                     stdout=self.log.open("a"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_for(self._up, timeout=60, what="batchq serve")
        return self

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"batchq serve exited:\n{self.log.read_text()}")
        try:
            urllib.request.urlopen(f"{self.url}/healthz", timeout=2).close()
            return True
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(30)


@pytest.fixture(scope="module")
def api_env(pg_url, redis_url, tmp_path_factory) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHQ_")}
    env.update(BATCHQ_DATABASE_URL=pg_url, BATCHQ_BROKER_URL=redis_url, PYTHONUNBUFFERED="1",
               BATCHQ_HOME=str(tmp_path_factory.mktemp("api-home")), BATCHQ_LEASE_SECONDS="3",
               BATCHQ_API_MAX_FILE_BYTES=str(MAX_BYTES), BATCHQ_API_MAX_FILE_LINES=str(MAX_LINES),
               BATCHQ_MODEL_ALIASES="gpt-4o-mini=tiny-for-tests", PYTHONPATH=str(REPO),
               **ASSUMED_COSTS)
    return env


@pytest.fixture(scope="module")
def server(api_env, tiny_model, tmp_path_factory):
    # The alias names the test model by its directory (resolved on the server's machine).
    env = {**api_env, "BATCHQ_MODEL_ALIASES": f"gpt-4o-mini={tiny_model}"}
    running = Server(env, tmp_path_factory.mktemp("api") / "serve.log").start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def worker(api_env, tiny_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("api-worker") / "worker.log"
    started = WorkerProcess(["--model", str(tiny_model), "--max-batch-rows", "2"],
                            {**api_env, "BATCHQ_TEST_FAULT": "slow:0.15"}, log, FAULTY_BATCHQ,
                            cwd=REPO)
    started.wait_ready()
    yield started
    stop_all([started])


@pytest.fixture(scope="module")
def thinking_worker(api_env, thinking_model, tmp_path_factory):
    """A worker of a second variant: the scripted Qwen3, which reasons, then answers 'Three.'"""
    log = tmp_path_factory.mktemp("api-qwen3-worker") / "worker.log"
    started = WorkerProcess(["--model", str(thinking_model)], api_env, log, cwd=REPO)
    started.wait_ready()
    yield started
    stop_all([started])


def new_key(env: dict[str, str], name: str, **limits: int) -> str:
    from batchq import service

    return service.create_key(f"{name}-{os.urandom(3).hex()}", settings=Settings.from_env(env),
                              **limits).secret


def client(server: Server, key: str):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0,
                         _strict_response_validation=True)


def chat_line(i: int, model: str, **body) -> dict:
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "max_tokens": 4,
                     "messages": [{"role": "user", "content": f"Question number {i}?"}], **body}}


def upload(c, rows: list, name: str = "batch.jsonl"):
    data = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()
    return c.files.create(file=(name, io.BytesIO(data)), purpose="batch"), data


def run_batch(c, rows: list, **create):
    file, _ = upload(c, rows)
    return c.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                            completion_window=create.pop("completion_window", "24h"), **create)


def final(c, batch_id: str, timeout: float = 120):
    return wait_for(lambda: (b := c.batches.retrieve(batch_id)).status in (
        "completed", "failed", "expired", "cancelled") and b, timeout=timeout,
        what=f"batch {batch_id} to end")


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_upload_create_poll_download_with_the_openai_client(server, worker, api_env,
                                                            tiny_model):
    c = client(server, new_key(api_env, "alice"))
    rows = [chat_line(i, "gpt-4o-mini") for i in range(6)]
    rows.append(chat_line(6, "gpt-4o-mini", max_tokens=2, temperature=0.7, seed=5))
    file, data = upload(c, rows)
    assert (file.purpose, file.bytes, file.status) == ("batch", len(data), "processed")
    assert c.files.content(file.id).content == data
    assert c.files.retrieve(file.id) == file

    batch = c.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                             completion_window="24h", metadata={"team": "search"})
    assert batch.status == "in_progress" and batch.model == "gpt-4o-mini"
    assert batch.request_counts.total == 7 and batch.metadata == {"team": "search"}
    done = final(c, batch.id)
    assert done.status == "completed" and done.error_file_id is None
    assert (done.request_counts.completed, done.request_counts.failed) == (7, 0)
    assert done.completed_at >= done.in_progress_at >= done.created_at
    assert done.usage.output_tokens > 0 and done.usage.total_tokens == (
        done.usage.input_tokens + done.usage.output_tokens)

    output = jsonl(c.files.content(done.output_file_id).text)
    assert [line["custom_id"] for line in output] == [r["custom_id"] for r in rows]
    for line, row in zip(output, rows, strict=True):
        body = line["response"]["body"]
        assert line["error"] is None and line["response"]["status_code"] == 200
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]
        tokens = body["usage"]["completion_tokens"]
        assert 1 <= tokens <= row["body"]["max_tokens"]
        assert body["choices"][0]["finish_reason"] in ("stop", "length")
    out_file = c.files.retrieve(done.output_file_id)
    assert out_file.purpose == "batch_output" and out_file.bytes == len(
        c.files.content(done.output_file_id).content)
    assert done.output_file_id in [f.id for f in c.files.list()]
    # The partial-results endpoint (batchq's own) gives the same lines.
    with urllib.request.urlopen(urllib.request.Request(
            f"{server.url}/v1/batches/{done.id}/output",
            headers={"Authorization": f"Bearer {c.api_key}"})) as response:
        assert jsonl(response.read().decode()) == output

    assert c.files.delete(file.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(file.id)
    with pytest.raises(openai.NotFoundError):  # a deleted input file makes no new batch
        c.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                         completion_window="24h")


def test_a_file_with_bad_lines_fails_validation_naming_every_one(server, api_env, tiny_model):
    c = client(server, new_key(api_env, "bob"))
    completion = {"custom_id": "wrong-url", "method": "POST", "url": "/v1/completions",
                  "body": {"model": "gpt-4o-mini", "prompt": "hi"}}
    rows = [chat_line(1, "gpt-4o-mini"), "{not json", completion,
            {**chat_line(4, "gpt-4o-mini"), "custom_id": "req-1"},
            chat_line(5, "gpt-9-turbo"),  # no alias, no catalogue entry, no directory
            {"custom_id": "no-model", "method": "POST", "url": "/v1/chat/completions",
             "body": {"messages": [{"role": "user", "content": "hi"}]}},
            chat_line(7, "gpt-4o-mini", temperature=9)]
    batch = run_batch(c, rows)
    assert batch.status == "failed" and batch.failed_at and batch.output_file_id is None
    assert batch.request_counts.total == 0
    errors = {e.line: e for e in batch.errors.data}
    assert sorted(errors) == [2, 3, 4, 5, 6, 7]
    assert errors[2].message.startswith("invalid JSON")
    assert (errors[3].code, errors[3].param) == ("mismatched_endpoint", "url")
    assert errors[4].code == "duplicate_custom_id" and "first used on line 1" in errors[4].message
    assert (errors[5].code, errors[5].param) == ("model_not_found", "body.model")
    assert "BATCHQ_MODEL_ALIASES" in errors[5].message
    assert (errors[6].code, errors[6].param) == ("missing_required_parameter", "body.model")
    assert "temperature" in errors[7].message
    assert c.batches.retrieve(batch.id) == batch

    unknown = run_batch(c, [chat_line(1, "gpt-9-turbo")])
    assert unknown.status == "failed"
    (error,) = unknown.errors.data
    assert error.code == "model_not_found" and error.line == 1 and "gpt-9-turbo" in error.message


def test_a_batch_may_mix_models_and_counts_their_reasoning(server, worker, thinking_worker,
                                                          api_env, tiny_model, thinking_model):
    """Beyond OpenAI's API (which refuses a second model in a batch): each line runs on the
    model its body names, as with `batchq submit`; a thinking model's reasoning comes back
    apart from the answer and is counted in the batch's usage."""
    c = client(server, new_key(api_env, "mixer"))
    off = {"chat_template_kwargs": {"enable_thinking": False}}
    rows = [chat_line(0, "gpt-4o-mini"), chat_line(1, str(thinking_model), max_tokens=40),
            chat_line(2, "gpt-4o-mini"), chat_line(3, str(thinking_model), max_tokens=40, **off)]
    batch = run_batch(c, rows)
    assert batch.status == "in_progress" and batch.model == f"gpt-4o-mini,{thinking_model}"
    done = final(c, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 4
    output = jsonl(c.files.content(done.output_file_id).text)
    bodies = [line["response"]["body"] for line in output]
    assert [b["model"] for b in bodies] == [str(tiny_model), str(thinking_model)] * 2
    thought, answered = bodies[1]["choices"][0]["message"], bodies[3]["choices"][0]["message"]
    assert (thought["content"], thought["reasoning_content"]) == (
        "Three.", "Okay, the user wants a count")
    assert answered == {"role": "assistant", "content": "Three."}
    reasoning = [b["usage"].get("completion_tokens_details", {}).get("reasoning_tokens", 0)
                 for b in bodies]
    assert reasoning[1] > 0 and reasoning[0] == reasoning[2] == reasoning[3] == 0
    assert done.usage.output_tokens_details.reasoning_tokens == sum(reasoning)
    assert done.usage.output_tokens == sum(b["usage"]["completion_tokens"] for b in bodies)


def test_cancel_mid_run_keeps_the_finished_lines(server, worker, api_env):
    c = client(server, new_key(api_env, "carol"))
    batch = run_batch(c, [chat_line(i, "gpt-4o-mini") for i in range(40)])
    auth = {"Authorization": f"Bearer {c.api_key}"}

    def some_output() -> bool:
        request = urllib.request.Request(f"{server.url}/v1/batches/{batch.id}/output",
                                         headers=auth)
        with urllib.request.urlopen(request) as response:
            return len(response.read().splitlines()) >= 2

    wait_for(some_output, what="the first lines' results")
    cancelled = c.batches.cancel(batch.id)
    assert cancelled.status in ("cancelling", "cancelled") and cancelled.cancelling_at
    done = final(c, batch.id, timeout=60)
    assert done.status == "cancelled" and done.cancelled_at
    kept = jsonl(c.files.content(done.output_file_id).text)
    dropped = jsonl(c.files.content(done.error_file_id).text)
    assert len(kept) >= 2 and len(kept) + len(dropped) == 40
    assert {line["error"]["code"] for line in dropped} == {"cancelled"}
    assert all(line["response"]["status_code"] == 200 for line in kept)
    with pytest.raises(openai.ConflictError, match="only a batch in progress"):
        c.batches.cancel(batch.id)


def test_lines_still_open_when_the_window_ends_expire(server, worker, api_env):
    c = client(server, new_key(api_env, "dave"))
    batch = run_batch(c, [chat_line(i, "gpt-4o-mini") for i in range(60)],
                      completion_window="3s")
    assert batch.expires_at - batch.created_at == 3
    done = final(c, batch.id, timeout=60)
    assert done.status == "expired" and done.expired_at
    expired = jsonl(c.files.content(done.error_file_id).text)
    assert expired and {line["error"]["code"] for line in expired} == {"batch_expired"}
    finished = jsonl(c.files.content(done.output_file_id).text) if done.output_file_id else []
    assert len(finished) + len(expired) == 60
    assert done.request_counts.failed == len(expired)


def test_retry_runs_the_failed_lines_again(server, worker, api_env):
    c = client(server, new_key(api_env, "erin"))
    long = {"role": "user", "content": "word " * 5000}  # past the tiny model's context
    rows = [chat_line(0, "gpt-4o-mini"), {**chat_line(1, "gpt-4o-mini")}]
    rows[1]["body"]["messages"] = [long]
    done = final(c, run_batch(c, rows).id)
    assert done.status == "completed" and done.request_counts.failed == 1
    (failed,) = jsonl(c.files.content(done.error_file_id).text)
    assert failed["custom_id"] == "req-1" and failed["error"]["code"] == "generation_failed"
    retried = c.post(f"/batches/{done.id}/retry", cast_to=openai.types.Batch)
    # The failed line is queued again; a quick worker may have run it before the answer left.
    assert (retried.status, retried.request_counts.failed) in (("in_progress", 0), ("completed", 1))
    again = final(c, done.id)
    assert again.status == "completed" and again.request_counts.failed == 1
    assert again.error_file_id != done.error_file_id  # a new file for the new outcome
    with pytest.raises(openai.ConflictError):
        c.post(f"/batches/{run_batch(c, [chat_line(0, 'gpt-4o-mini')]).id}/retry",
               cast_to=openai.types.Batch)


def test_each_key_sees_only_its_own_files_and_batches(server, api_env):
    mine, theirs = client(server, new_key(api_env, "t1")), client(server, new_key(api_env, "t2"))
    file, _ = upload(mine, ["{bad"])
    batch = mine.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                completion_window="24h")
    for call in (lambda: theirs.files.retrieve(file.id),
                 lambda: theirs.files.content(file.id),
                 lambda: theirs.files.delete(file.id),
                 lambda: theirs.batches.retrieve(batch.id),
                 lambda: theirs.batches.cancel(batch.id),
                 lambda: theirs.batches.create(input_file_id=file.id, completion_window="24h",
                                               endpoint="/v1/chat/completions")):
        with pytest.raises(openai.NotFoundError):  # a 404, not a 403: it does not exist for them
            call()
    assert file.id not in [f.id for f in theirs.files.list()]
    assert batch.id not in [b.id for b in theirs.batches.list()]
    assert mine.files.retrieve(file.id).id == file.id


def test_keys_from_the_cli_a_bad_key_and_a_revoked_one_get_401(server, api_env):
    name = f"cli-{os.urandom(3).hex()}"
    made = batchq("keys", "create", name, "--requests-per-minute", "100", env=api_env)
    assert made.returncode == 0 and made.stdout.startswith("bq_"), made.stderr
    secret = made.stdout.strip()
    listed = batchq("keys", "list", env=api_env).stdout
    assert name in listed and secret not in listed and secret[-20:] not in listed
    assert client(server, secret).files.list().data == []
    for bad in (secret[:-1] + ("x" if secret[-1] != "x" else "y"), "sk-openai-style", ""):
        with pytest.raises(openai.AuthenticationError) as raised:
            client(server, bad or "none").files.list()
        assert raised.value.body["code"] == "invalid_api_key"
    assert batchq("keys", "revoke", name, env=api_env).returncode == 0
    with pytest.raises(openai.AuthenticationError):
        client(server, secret).files.list()
    assert secret not in Path(server.log).read_text()  # never logged


def test_rate_limit_and_quotas_answer_429_with_retry_after(server, worker, api_env):
    limited = client(server, new_key(api_env, "fast", requests_per_minute=3))
    for _ in range(3):
        limited.files.list()
    with pytest.raises(openai.RateLimitError) as raised:
        limited.files.list()
    assert 1 <= int(raised.value.response.headers["retry-after"]) <= 60
    metrics = scrape(f"{server.url}/metrics")
    assert any(k.startswith("batchq_api_rate_limited_total{key=\"fast-") for k in metrics)
    assert metrics['batchq_api_requests_total{method="GET",route="/v1/files",status="429"}'] >= 1

    one_at_a_time = client(server, new_key(api_env, "slow", max_active_batches=1))
    first = run_batch(one_at_a_time, [chat_line(i, "gpt-4o-mini") for i in range(20)])
    with pytest.raises(openai.RateLimitError, match="the most key"):
        run_batch(one_at_a_time, [chat_line(0, "gpt-4o-mini")])
    final(one_at_a_time, first.id)
    few_lines = client(server, new_key(api_env, "small", max_pending_lines=5))
    with pytest.raises(openai.RateLimitError, match="may have 5 waiting"):
        run_batch(few_lines, [chat_line(i, "gpt-4o-mini") for i in range(6)])


def test_oversize_uploads_are_refused_with_413_and_nothing_kept(server, api_env):
    c = client(server, new_key(api_env, "big"))
    files_dir = Path(api_env["BATCHQ_HOME"]) / "files"
    before = set(files_dir.iterdir()) if files_dir.exists() else set()
    too_big = [chat_line(i, "gpt-4o-mini", stop=["x" * 900]) for i in range(250)]  # ~275 KB
    too_many = ["{}"] * (MAX_LINES + 1)
    for rows in (too_big, too_many):
        with pytest.raises(openai.APIStatusError) as raised:
            upload(c, rows)
        assert raised.value.status_code == 413
        assert raised.value.body["code"] == "file_too_large"
    after = set(files_dir.iterdir()) if files_dir.exists() else set()
    assert after == before and c.files.list().data == []


def test_pagination_never_skips_or_repeats_while_batches_arrive(server, api_env):
    c = client(server, new_key(api_env, "pages"))
    file, _ = upload(c, ["{bad"])  # failed batches: cheap, and listed like any other

    def create():
        return c.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                completion_window="24h").id

    made = [create() for _ in range(25)]
    seen, after = [], None
    while True:
        page = c.batches.list(limit=10, **({"after": after} if after else {}))
        seen += [b.id for b in page.data]
        made.append(create())  # a new one arrives between pages: it is newer than every page
        if not page.has_more:
            break
        after = page.data[-1].id
    assert seen == list(reversed(made[:25]))
    assert [b.id for b in c.batches.list(limit=100).data][:3] == list(reversed(made[-3:]))


def test_an_idempotency_key_makes_a_retried_create_return_the_first_batch(server, api_env):
    c = client(server, new_key(api_env, "idem"))
    file, _ = upload(c, ["{bad"])
    headers = {"Idempotency-Key": "create-once-123"}
    first = c.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                             completion_window="24h", extra_headers=headers)
    again = c.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                             completion_window="24h", extra_headers=headers)
    assert again.id == first.id and len(c.batches.list().data) == 1
    up1 = c.files.create(file=("a.jsonl", io.BytesIO(b"{}\n")), purpose="batch",
                         extra_headers={"Idempotency-Key": "upload-1"})
    up2 = c.files.create(file=("a.jsonl", io.BytesIO(b"{}\n")), purpose="batch",
                         extra_headers={"Idempotency-Key": "upload-1"})
    assert up1.id == up2.id


def test_bad_requests_get_a_4xx_in_openais_error_shape(server, api_env):
    c = client(server, new_key(api_env, "bad"))
    file, _ = upload(c, [chat_line(0, "gpt-4o-mini")])
    cases = [
        (lambda: c.files.create(file=("a.jsonl", io.BytesIO(b"{}")), purpose="fine-tune"),
         400, "purpose"),
        (lambda: c.batches.create(input_file_id=file.id, endpoint="/v1/embeddings",
                                  completion_window="24h"), 400, "endpoint"),
        (lambda: c.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                  completion_window="soon"), 400, "completion_window"),
        (lambda: c.batches.create(input_file_id="file-000000000000000000000000",
                                  endpoint="/v1/chat/completions", completion_window="24h"),
         404, None),
        (lambda: c.batches.retrieve("batch_nope"), 404, None),
        (lambda: c.files.content("../../etc/passwd"), 404, None),
        (lambda: c.batches.list(after="batch_unknown"), 404, None),
        (lambda: c.post("/batches", body={"endpoint": "/v1/chat/completions"},
                        cast_to=openai.types.Batch), 400, "input_file_id"),
    ]
    for call, status, param in cases:
        with pytest.raises(openai.APIStatusError) as raised:
            call()
        assert raised.value.status_code == status, raised.value
        error = raised.value.body
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert error["param"] == param and "Traceback" not in error["message"]
    not_json = urllib.request.Request(f"{server.url}/v1/batches", data=b"{not json", method="POST",
                                      headers={"Authorization": f"Bearer {c.api_key}",
                                               "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(not_json)
    assert raised.value.code == 400 and "error" in json.loads(raised.value.read())


def test_the_api_restarting_mid_batch_loses_nothing(server, worker, api_env):
    c = client(server, new_key(api_env, "restart"))
    rows = [chat_line(i, "gpt-4o-mini") for i in range(20)]
    batch = run_batch(c, rows)
    server.stop(signal.SIGKILL)  # no goodbye: all its state is in the database and file store
    server.start()
    done = final(c, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 20
    output = jsonl(c.files.content(done.output_file_id).text)
    assert [line["custom_id"] for line in output] == [r["custom_id"] for r in rows]


def test_serve_refuses_a_reachable_address_until_a_key_exists(embedded_env):
    res = batchq("serve", "--host", "0.0.0.0", "--port", str(free_port()), env=embedded_env,
                 timeout=60)
    assert res.returncode == 2 and "no API key exists yet" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
