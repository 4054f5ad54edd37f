"""The bad-input matrix, through the real `batchq submit`: refused whole, named by line, no job
created, no traceback; or, with --skip-invalid, the good lines run and each bad one is a
failed line with its reason. And what must be accepted as it is, NUL characters included."""

from __future__ import annotations

import json

import pytest

from batchq.testing import check_exactly_once
from tests.conftest import batchq, sql, stored_status, wait_for

pytestmark = [pytest.mark.fault]

GOOD = b'{"prompt": "fine"}\n'

# (what, the bad line, the reason batchq gives for it). Each file is GOOD then the bad line.
BAD_LINES = [
    ("invalid JSON", b'{"prompt": "a"', "invalid JSON: Expecting ',' delimiter (column 15)"),
    ("invalid UTF-8", b'{"prompt": "caf\xe9"}', "not valid UTF-8 (byte 16)"),
    ("not an object", b'["prompt", "a"]', "expected a JSON object, got a list"),
    ("missing prompt", b'{"custom_id": "x"}', "missing 'prompt' or 'messages'"),
    ("empty prompt", b'{"prompt": "   "}', "field 'prompt' is empty"),
    ("empty messages", b'{"messages": []}', "field 'messages': expected a non-empty list"),
    ("prompt of the wrong type", b'{"prompt": 5}', "field 'prompt': expected a string, got an integer"),
    ("limit of the wrong type", b'{"prompt": "a", "max_tokens": "9"}',
     "field 'max_tokens': expected an integer, got a string"),
    ("NaN", b'{"prompt": "a", "temperature": NaN}', "NaN is not valid JSON (numbers must be finite)"),
    ("Infinity", b'{"prompt": "a", "top_p": Infinity}', "Infinity is not valid JSON (numbers must be finite)"),
    ("a number JSON reads as infinity", b'{"prompt": "a", "temperature": 1e999}',
     "field 'temperature': a number too large to represent is outside 0.0..2.0"),
    ("a limit JSON reads as infinity", b'{"prompt": "a", "max_tokens": -1e999}',
     "field 'max_tokens': expected an integer, got a number too large to represent"),
    ("duplicate custom_id", b'{"prompt": "b", "custom_id": "line-1"}',
     "duplicate custom_id 'line-1' (first used on line 1)"),
    ("unsupported url", b'{"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": {}}',
     "field 'url': unsupported '/v1/embeddings'"),
    ("unsupported method", b'{"custom_id": "g", "method": "GET", "url": "/v1/completions", "body": {}}',
     "field 'method': only POST is supported, got 'GET'"),
]


def jobs_listed(env):
    return json.loads(batchq("status", "--json", "--limit", "1000", env=env).stdout or "[]")


def refused(res, path, line, reason):
    assert res.returncode == 3 and res.stdout == "", res
    err = res.stderr.splitlines()
    assert err[0] == f"batchq: error: {path}: 1 invalid line(s), no job created"
    assert len(err) == 2 and err[1].startswith(f"{path}:{line}: {reason}"), err


def test_every_kind_of_bad_line_is_refused_by_number_and_creates_no_job(embedded_env, tmp_path):
    env = embedded_env
    before = jobs_listed(env)
    for n, (what, line, reason) in enumerate(BAD_LINES):
        path = tmp_path / f"bad{n}.jsonl"
        path.write_bytes(GOOD + line + b"\n")
        res = batchq("submit", str(path), "--model", "qwen2.5-0.5b-instruct", env=env)
        refused(res, path, 2, reason)
        assert "Traceback" not in res.stderr, what
    assert jobs_listed(env) == before


def test_files_over_the_limits_and_empty_files_are_refused(embedded_env, tmp_path):
    env = embedded_env
    cases = [
        ({"BATCHQ_MAX_LINE_BYTES": "40"}, GOOD + b'{"prompt": "' + b"x" * 40 + b'"}\n',
         lambda p: [f"batchq: error: {p}: 1 invalid line(s), no job created",
                    f"{p}:2: line is 54 bytes, over the limit of 40 (BATCHQ_MAX_LINE_BYTES)"]),
        ({"BATCHQ_MAX_FILE_LINES": "3"}, GOOD * 4,
         lambda p: [f"batchq: error: {p}: more than 3 lines (BATCHQ_MAX_FILE_LINES); "
                    "no job created"]),
        ({"BATCHQ_MAX_FILE_BYTES": "50"}, GOOD * 3,
         lambda p: [f"batchq: error: {p}: 57 bytes, over the limit of 50 "
                    "(BATCHQ_MAX_FILE_BYTES); no job created"]),
        ({}, b"", lambda p: [f"batchq: error: {p}: the file has no lines to run; no job created"]),
        ({}, b"\n  \n\r\n", lambda p: [f"batchq: error: {p}: the file has no lines to run; "
                                       "no job created"]),
    ]
    before = jobs_listed(env)
    for n, (limits, content, expected) in enumerate(cases):
        path = tmp_path / f"f{n}.jsonl"
        path.write_bytes(content)
        res = batchq("submit", str(path), "--model", "qwen2.5-0.5b-instruct",
                     env={**env, **limits})
        assert res.returncode == 3 and res.stderr.splitlines() == expected(path), res.stderr
    piped = batchq("submit", "-", "--model", "qwen2.5-0.5b-instruct", input="x" * 100,
                   env={**env, "BATCHQ_MAX_FILE_BYTES": "50"})
    assert piped.returncode == 3 and "<stdin>: more than 50 bytes" in piped.stderr
    assert jobs_listed(env) == before


@pytest.mark.services
def test_skip_invalid_runs_the_good_lines_and_records_each_bad_one(services_env, shared_worker,
                                                                   tiny_model, tmp_path):
    lines = [GOOD, BAD_LINES[0][1] + b"\n", b'{"custom_id": "dup", "prompt": "a"}\n',
             b'{"custom_id": "dup", "prompt": "b"}\n', BAD_LINES[1][1] + b"\n",
             b'{"prompt": "also fine", "max_tokens": 3}\n']
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"".join(lines))
    res = batchq("submit", str(path), "--model", str(tiny_model), "--max-new-tokens", "4",
                 "--skip-invalid", env=services_env)
    assert res.returncode == 0, res.stderr
    job = res.stdout.strip()
    assert res.stderr.splitlines()[1:] == [
        f"skipped 3 invalid line(s), recorded as failed (`batchq results {job[:12]} --errors "
        "FILE` lists them):",
        f"  {path}:2: invalid JSON: Expecting ',' delimiter (column 15)",
        f"  {path}:4: duplicate custom_id 'dup' (first used on line 3)",
        f"  {path}:5: not valid UTF-8 (byte 16)"]
    wait_for(lambda: stored_status(services_env, job) == "failed", what="the job")
    assert json.loads(batchq("status", job, "--json", env=services_env).stdout)[
        "status"] == "failed"
    ids = ["line-1", "line-2", "dup", "dup", "line-5", "line-6"]
    assert check_exactly_once(services_env, job, ids) == {
        "succeeded": 3, "failed": 3, "cancelled": 0}
    out = [json.loads(x) for x in batchq("results", job, env=services_env).stdout.splitlines()]
    assert [x["status"] for x in out] == ["succeeded", "failed", "succeeded", "failed", "failed",
                                          "succeeded"]
    assert out[3]["error"] == {"code": "invalid_input", "message": "invalid input line 4: "
                               "duplicate custom_id 'dup' (first used on line 3)"}
    retried = batchq("retry", job, env=services_env)  # refused lines have nothing to run again
    assert "no failed line to retry (3 refused input line(s) cannot run" in retried.stderr


@pytest.mark.services
def test_bom_crlf_blank_lines_unicode_and_nul_are_accepted_and_given_back(
        services_env, shared_worker, tiny_model, tmp_path):
    rows = [{"custom_id": "nul\u0000id", "prompt": "before\u0000after", "max_tokens": 3},
            # COPY's own escapes (backslash, tab, line ends) in an id and a prompt.
            {"custom_id": "\u0001starts-with-the-marker \\ \t \r\n", "prompt": "x \\N\t\n",
             "max_tokens": 3},
            {"custom_id": "ünï 🚀 漢字", "messages": [{"role": "user", "content": "Grüße 🚀"}],
             "max_tokens": 3},
            {"custom_id": "openai\u0000", "method": "POST", "url": "/v1/completions",
             "body": {"prompt": "nul \u0000 here", "max_tokens": 3}}]
    body = "\r\n\r\n".join(json.dumps(r) for r in rows)  # ASCII JSON: \u0000 escapes
    path = tmp_path / "odd.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode() + b"\r\n\n")
    res = batchq("submit", str(path), "--model", str(tiny_model), env=services_env)
    assert res.returncode == 0, res.stderr
    job = res.stdout.strip()
    wait_for(lambda: stored_status(services_env, job) == "completed", what="the job")
    assert json.loads(batchq("status", job, "--json", env=services_env).stdout)[
        "status"] == "completed"
    ids = [r["custom_id"] for r in rows]
    check_exactly_once(services_env, job, ids)  # the ids come back exactly, NUL and all
    stored = sql(services_env, "SELECT request FROM lines WHERE job_id = :job ORDER BY line_no",
                 job=job)
    assert json.loads(stored[1][0])["messages"] == [{"role": "user", "content": "x \\N\t\n"}]
    out = [json.loads(x) for x in batchq("results", job, env=services_env).stdout.splitlines()]
    assert out[3]["response"]["status_code"] == 200
    assert [x.get("status", "succeeded") for x in out] == ["succeeded"] * 4
