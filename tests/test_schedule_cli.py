"""`batchq schedule` commands through the real CLI: added, listed, paused, resumed, removed;
every mistake one line with its exit code, and nothing half-created."""

from __future__ import annotations

import pytest

from tests.conftest import batchq

MODEL = ["--model", "Qwen/Qwen2.5-0.5B-Instruct"]


@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("hello")
    (tmp_path / "bad.j2").write_text("Summarise {{ filename }}:\n{{ document }\n")
    (tmp_path / "undefined.j2").write_text("Summarise\n{{ document }}\n{{ audience }}\n")
    return folder


def test_add_list_show_pause_resume_remove(embedded_env, docs, tmp_path):
    env = embedded_env
    (tmp_path / "t.j2").write_text("For {{ team }}: summarise {{ filename }}\n\n{{ document }}")
    (tmp_path / "s.json").write_text('{"type": "object", "properties": {"topic": {"type": '
                                     '"string"}}, "required": ["topic"]}')
    added = batchq("schedule", "add", "nightly", "--cron", "0 2 * * *", "--tz",
                   "Europe/Belgrade", "--source", str(docs), "--template", str(tmp_path / "t.j2"),
                   "--var", "team=ops", *MODEL, "--max-new-tokens", "64", "--json-schema",
                   str(tmp_path / "s.json"), "--thinking", "off", env=env)
    assert added.returncode == 0, added.stderr
    assert "At 02:00 AM (Europe/Belgrade); next " in added.stderr
    assert batchq("schedule", "add", "fast", "--every", "30s", "--source", str(docs),
                  "--prompt", "Summarise.", *MODEL, env=env).returncode == 0
    listed = batchq("schedule", "list", env=env).stdout.splitlines()
    assert [line.split()[0] for line in listed] == ["NAME", "fast", "nightly"]
    assert "every 30s" in listed[1] and "At 02:00 AM (Europe/Belgrade)" in listed[2]
    assert "it fires while `batchq beat` (or a `batchq worker --beat`) runs" in added.stderr

    # Five minutes on, with no beat running, `fast`'s times have passed unfired: said plainly.
    _backdate(env, "fast", minutes=5)
    listed = batchq("schedule", "list", env=env)
    (warning,) = listed.stderr.splitlines()
    assert warning.startswith("batchq: warning: schedule 'fast': ") and (
        "passed and nothing fired it; nothing runs until `batchq beat`") in warning
    assert "passed and nothing fired it" in batchq("schedule", "show", "fast", env=env).stderr

    assert batchq("schedule", "pause", "fast", "--note", "disk full", env=env).returncode == 0
    assert "paused (disk full)" in batchq("schedule", "list", env=env).stdout
    shown = batchq("schedule", "show", "nightly", "--next", "2", env=env).stdout
    assert "when      At 02:00 AM (Europe/Belgrade)" in shown and "overlap skip" in shown
    # Each night's job is submitted with these: valid JSON per document, no thinking.
    assert "settings  max_new_tokens 64, thinking False, json_schema (" in shown
    assert shown.count("T01:00:00+00:00") + shown.count("T00:00:00+00:00") == 2  # UTC
    assert batchq("schedule", "resume", "fast", env=env).returncode == 0
    assert "paused" not in batchq("schedule", "list", env=env).stdout
    assert batchq("schedule", "remove", "fast", env=env).returncode == 0
    assert "fast" not in batchq("schedule", "list", env=env).stdout

    # A run asked for now waits for a beat: said when it is queued, and again once a beat
    # would have started it.
    queued = batchq("schedule", "run-now", "nightly", env=env)
    assert queued.returncode == 0 and queued.stderr.endswith(
        " of 'nightly' queued; `batchq beat` (or a `batchq worker --beat`) starts it at its "
        "next tick\n")
    assert batchq("schedule", "list", env=env).stderr == ""  # just queued: no beat missed yet
    _backdate_runs(env, minutes=5)
    (warning,) = batchq("schedule", "list", env=env).stderr.splitlines()
    assert warning.startswith("batchq: warning: schedule 'nightly': a run queued at ") and (
        "has not started; it starts when `batchq beat` (or a `batchq worker --beat`) runs"
        in warning)
    assert "a run queued at" in batchq("schedule", "show", "nightly", env=env).stderr


def _backdate(env, name, minutes):
    """The schedule as if added `minutes` ago (its interval counts from its creation)."""
    from datetime import timedelta

    from sqlalchemy import select

    from batchq.config import Settings
    from batchq.store.schedule_models import Schedule
    from batchq.store.sessions import session_scope

    with session_scope(Settings.from_env(env)) as session:
        schedule = session.scalars(select(Schedule).where(Schedule.name == name)).one()
        schedule.created_at -= timedelta(minutes=minutes)


def _backdate_runs(env, minutes):
    """Every run as if queued `minutes` ago."""
    from datetime import timedelta

    from sqlalchemy import select

    from batchq.config import Settings
    from batchq.store import schema  # noqa: F401  (the jobs table a run's job_id refers to)
    from batchq.store.schedule_models import ScheduleRun
    from batchq.store.sessions import session_scope

    with session_scope(Settings.from_env(env)) as session:
        for run in session.scalars(select(ScheduleRun)):
            run.created_at -= timedelta(minutes=minutes)


MISTAKES = [
    (["--cron", "0 25 * * *"], 2, "--cron '0 25 * * *': Bad hour"),
    (["--cron", "0 2 * * *", "--tz", "Mars/Olympus"], 2, "not an IANA time zone"),
    (["--every", "soon"], 2, "--every 'soon': give a duration"),
    (["--cron", "0 2 * * *", "--every", "5s"], 2, "one of them"),
    (["--every", "5s", "--source", "MISSING"], 4, "no such folder"),
    (["--every", "5s", "--template", "BAD"], 2, "bad.j2:2: unexpected '}'"),
    (["--every", "5s", "--template", "UNDEFINED"], 2, "undefined.j2:3: 'audience' is undefined"),
    (["--every", "5s", "--prompt", "x", "--model", "qwen9-nope"], 4, "neither a catalogue alias"),
    (["--every", "5s", "--prompt", "x", "--var", "document=x"], 2, "the template's own"),
]


def test_every_mistake_is_one_line_and_nothing_is_created(embedded_env, docs, tmp_path):
    swap = {"MISSING": str(tmp_path / "missing"), "BAD": str(tmp_path / "bad.j2"),
            "UNDEFINED": str(tmp_path / "undefined.j2")}
    for args, code, fragment in MISTAKES:
        args = [swap.get(a, a) for a in args]
        base = {"--source": str(docs), "--model": "Qwen/Qwen2.5-0.5B-Instruct"}
        if "--template" not in args and "--prompt" not in args:
            base["--prompt"] = "Summarise."
        for option, value in base.items():
            if option not in args:
                args += [option, value]
        res = batchq("schedule", "add", "s", *args, env=embedded_env)
        assert res.returncode == code, (args, res.stderr)
        assert fragment in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "no schedules yet" in batchq("schedule", "list", env=embedded_env).stderr


def test_unknown_schedules_are_not_found(embedded_env):
    for command in ("show", "pause", "resume", "remove"):
        res = batchq("schedule", command, "nope", env=embedded_env)
        assert res.returncode == 4 and "no schedule 'nope'" in res.stderr


@pytest.mark.e2e
def test_on_one_machine_a_worker_with_beat_fires_schedules_on_the_embedded_store(
        embedded_env, tiny_model, start_worker, tmp_path):
    """`batchq worker --beat` on the default SQLite store: the run-now runs, its folder is
    written. Celery's embedded beat, which it used before, ran in a forked process where
    SQLite failed every tick with 'locking protocol', and nothing ever fired."""
    import json
    from pathlib import Path

    from tests.conftest import sql, wait_for

    env, docs = embedded_env, tmp_path / "inbox"
    docs.mkdir()
    (docs / "a.txt").write_text("The cat sat on the mat.")
    (docs / "b.md").write_text("# Notes\n\nShip on Friday.")
    out = tmp_path / "out"
    assert batchq("schedule", "add", "notes", "--every", "1h", "--source", str(docs),
                  "--prompt", "Summarise.", "--model", str(tiny_model), "--max-new-tokens", "4",
                  "--output", str(out), env=env).returncode == 0
    worker = start_worker("--model", str(tiny_model), "--beat", env=env)
    assert batchq("schedule", "run-now", "notes", env=env).returncode == 0

    def finished() -> list:
        return sql(env, "SELECT status, output_path FROM schedule_runs WHERE status "
                        "IN ('completed', 'failed')")

    ((status, folder),) = wait_for(finished, timeout=90, what="the run")
    assert status == "completed", worker.text()
    results = [json.loads(line) for line in
               (Path(folder) / "results.jsonl").read_text().splitlines()]
    assert sorted(r["path"] for r in results) == ["a.txt", "b.md"]
    assert all(r["status"] == "succeeded" for r in results)
    assert "beat: every 5s in this process" in worker.text()
    assert "beat tick:" not in worker.text()  # no tick failed
