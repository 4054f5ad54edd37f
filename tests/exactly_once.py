"""The check every fault test (and the soak) ends with: each accepted line ended exactly once.

Read through the real CLI (`status --json`, `results`) and then straight from the database,
so a wrong count in either place shows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, text

BATCHQ = str(Path(sys.executable).parent / "batchq")
FINAL = ("succeeded", "failed", "cancelled")


def _cli(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run([BATCHQ, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def check_exactly_once(env: dict[str, str], job_id: str, expected_ids: list[str],
                       generated_once: bool = True) -> dict[str, int]:
    """Assert the promises of a finished job; returns its counts by line status.

    expected_ids: the custom_id of every input line, in input order.
    generated_once: also require that the tokens the chunks recorded equal the tokens of the
    succeeded lines, i.e. no batch's results were computed for lines already final. (Not true
    after a cancel: the batch in flight runs to its end and its lines stay cancelled.)
    """
    info = json.loads(_cli("status", job_id, "--json", env=env))
    assert info["status"] in ("completed", "failed", "cancelled"), info["status"]
    counts = info["counts"]
    assert counts["pending"] == 0, counts
    assert counts["total"] == len(expected_ids), (counts, len(expected_ids))
    assert counts["completed"] + counts["failed"] + counts["cancelled"] == counts["total"], counts

    lines = [json.loads(x) for x in _cli("results", job_id, env=env).splitlines()]
    assert [line["custom_id"] for line in lines] == expected_ids  # every line, in input order
    seen = {"succeeded": 0, "failed": 0, "cancelled": 0}
    for line in lines:
        if "response" in line:  # the OpenAI batch format
            state = "succeeded" if line["response"] else (
                "cancelled" if line["error"]["code"] == "cancelled" else "failed")
            assert (line["response"] is None) != (line["error"] is None), line
        else:
            state = line["status"]
            assert state in FINAL, line
            assert (line["output"] is not None) == (state == "succeeded"), line
            assert (line["error"] is None) == (state == "succeeded"), line
        if state != "succeeded":
            assert line["error"]["message"], line
        seen[state] += 1
    assert seen == {"succeeded": counts["completed"], "failed": counts["failed"],
                    "cancelled": counts["cancelled"]}, (seen, counts)

    engine = create_engine(env["BATCHQ_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT line_no, status, output IS NOT NULL, completion_tokens, attempts "
                "FROM lines WHERE job_id = :job"), {"job": info["id"]}).all()
            chunk_tokens = conn.execute(text(
                "SELECT COALESCE(SUM(completion_tokens), 0) FROM chunks WHERE job_id = :job"),
                {"job": info["id"]}).scalar_one()
    finally:
        engine.dispose()
    assert len(rows) == len({r[0] for r in rows}) == len(expected_ids)  # one row per line
    for _, status, has_output, _, attempts in rows:
        assert status in FINAL and has_output == (status == "succeeded")
        if status == "succeeded":
            assert attempts >= 1
    if generated_once:
        line_tokens = sum(r[3] or 0 for r in rows if r[1] == "succeeded")
        assert int(chunk_tokens) == line_tokens, (int(chunk_tokens), line_tokens)
    return seen

