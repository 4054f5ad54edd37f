"""Scheduled document processing as it runs at night: real `batchq beat` processes and a real
worker on PostgreSQL and Redis, over a folder the test writes (a real PDF and DOCX, HTML,
Markdown, text, a corrupt PDF, and a document longer than the tiny model's context)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import BATCHQ, REPO, batchq, sql, wait_for

pytestmark = [pytest.mark.services, pytest.mark.e2e]


def make_pdf(path: Path, line: str) -> None:
    """A one-page PDF with a text layer, written with pypdf (no other tool needed)."""
    from pypdf import PdfWriter
    from pypdf.generic import DictionaryObject, NameObject, StreamObject

    writer = PdfWriter()
    page = writer.add_blank_page(width=400, height=200)
    font = writer._add_object(DictionaryObject({
        NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
        NameObject("/BaseFont"): NameObject("/Helvetica")}))
    page[NameObject("/Resources")] = DictionaryObject({
        NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})})
    content = StreamObject()
    content.set_data(f"BT /F1 12 Tf 20 100 Td ({line}) Tj ET".encode())
    page[NameObject("/Contents")] = writer._add_object(content)
    writer.write(path)


def make_docx(path: Path, paragraphs: list[str]) -> None:
    from docx import Document

    document = Document()
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    document.save(path)


@pytest.fixture
def folder(tmp_path) -> Path:
    docs = tmp_path / "inbox"
    (docs / "notes").mkdir(parents=True)
    make_pdf(docs / "memo.pdf", "Memo: the meeting moved to Friday.")
    make_docx(docs / "report.docx", ["Quarterly report.", "Revenue grew by four percent."])
    (docs / "page.html").write_text("<html><head><script>var x = 1;</script></head><body>"
                                    "<h1>Release notes</h1><p>Faster batches.</p></body></html>")
    (docs / "notes" / "todo.md").write_text("# To do\n\n- write tests\n- ship\n")
    (docs / "plain.txt").write_text("A short plain text.")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a PDF")
    long = "\n\n".join(f"Paragraph {i}: " + "the queue keeps every line safe. " * 12
                       for i in range(120))
    (docs / "long.txt").write_text(long)  # ~13,000 tokens; the tiny model's context is 4,096
    return docs


def beat(env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([BATCHQ, "beat", "--interval", "1"], env=env,
                            stdout=log.open("a"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
        process.wait(30)


def runs(env: dict[str, str], name: str) -> list[tuple]:
    return sql(env, "SELECT r.scheduled_for, r.trigger, r.status, r.reason, r.job_id, "
                    "r.output_path FROM schedule_runs r JOIN schedules s ON s.id = r.schedule_id "
                    "WHERE s.name = :n ORDER BY r.scheduled_for", n=name)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_run_over_a_folder_then_only_what_changed(services_env, shared_worker, tiny_model,
                                                     folder, tmp_path):
    env = {**services_env, "PYTHONPATH": str(REPO)}
    out = tmp_path / "out"
    added = batchq("schedule", "add", "inbox", "--every", "1h", "--source", str(folder),
                   "--prompt", "Summarise this in one line.", "--model", str(tiny_model),
                   "--max-new-tokens", "4", "--output", str(out), "--per-document", env=env)
    assert added.returncode == 0, added.stderr
    preview = batchq("schedule", "preview", "inbox", env=env)
    assert preview.returncode == 0, preview.stderr
    rows = {line.split()[0]: line.split() for line in preview.stdout.splitlines()[1:]}
    assert rows["long.txt"][1] == "runs" and int(rows["long.txt"][3]) >= 3  # parts
    assert rows["broken.pdf"][1] == "unreadable" and "not a readable PDF" in preview.stdout
    assert "would run" in preview.stderr and not runs(env, "inbox")  # a preview runs nothing

    beats = [beat(env, tmp_path / "beat.log")]
    try:
        assert batchq("schedule", "run-now", "inbox", env=env).returncode == 0
        first = wait_for(lambda: [r for r in runs(env, "inbox") if r[2] == "completed"],
                         timeout=120, what="the first run")[0]
        run_dir = Path(first[5])
        results = jsonl(run_dir / "results.jsonl")
        by_path = {}
        for line in results:
            by_path.setdefault(line["path"], []).append(line)
        assert sorted(by_path) == ["long.txt", "memo.pdf", "notes/todo.md", "page.html",
                                   "plain.txt", "report.docx"]
        assert all(line["status"] == "succeeded" and line["output"] for line in results)
        assert len(by_path["long.txt"]) >= 3 and {p["parts"] for p in by_path["long.txt"]} == {
            len(by_path["long.txt"])}  # split on paragraphs, never truncated
        (error,) = jsonl(run_dir / "errors.jsonl")
        assert error["path"] == "broken.pdf" and "not a readable PDF" in error["error"]
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["job"] == first[4] and manifest["documents"]["unreadable"] == 1
        assert (run_dir / "documents" / "memo.pdf.txt").read_text()
        # The run is an ordinary job: `batchq results` has the same answers.
        job_lines = batchq("results", first[4], env=env).stdout.splitlines()
        assert len(job_lines) == len(results)
        assert {json.loads(x)["output"] for x in job_lines} == {r["output"] for r in results}

        (folder / "plain.txt").write_text("A short plain text, now changed.")
        (folder / "notes" / "todo.md").unlink()
        assert batchq("schedule", "run-now", "inbox", env=env).returncode == 0
        second = wait_for(lambda: [r for r in runs(env, "inbox") if r[2] == "completed"][1:],
                          timeout=120, what="the second run")[0]
        again = jsonl(Path(second[5]) / "results.jsonl")
        assert [line["path"] for line in again] == ["plain.txt"]  # only what changed
        manifest = json.loads((Path(second[5]) / "manifest.json").read_text())
        assert manifest["deleted"] == ["notes/todo.md"]  # noted, not an error
        # The broken PDF is not read again, but it never ran: unreadable again, not unchanged.
        assert manifest["documents"]["unchanged"] == 4 and manifest["documents"]["unreadable"] == 1
        (still,) = jsonl(Path(second[5]) / "errors.jsonl")
        assert still["path"] == "broken.pdf" and still["error"] == error["error"]
        shown = batchq("schedule", "preview", "inbox", env=env).stdout.splitlines()
        (broken,) = [line for line in shown if line.startswith("broken.pdf")]
        assert broken.split()[1] == "unreadable" and "not a readable PDF" in broken
        listed = batchq("schedule", "list", env=env).stdout
        assert "inbox" in listed and "completed" in listed
        from prometheus_client import generate_latest

        from batchq.config import Settings
        from batchq.observe.metrics import registry

        page = generate_latest(registry(Settings.from_env(env))).decode()
        assert 'batchq_schedule_runs{schedule="inbox",status="completed"} 2.0' in page
        assert 'batchq_schedule_last_success_timestamp_seconds{schedule="inbox"}' in page
        assert 'batchq_schedule_documents{schedule="inbox",status="unreadable"} 2.0' in page
    finally:
        for process in beats:
            stop(process)


def test_two_beats_fire_each_time_once_and_a_restarted_beat_catches_up(
        services_env, shared_worker, tiny_model, tmp_path):
    env = {**services_env, "PYTHONPATH": str(REPO)}
    docs = tmp_path / "few"
    docs.mkdir()
    (docs / "one.txt").write_text("One small document.")
    assert batchq("schedule", "add", "tick", "--every", "3s", "--source", str(docs),
                  "--prompt", "Say hi.", "--model", str(tiny_model), "--max-new-tokens", "2",
                  "--output", str(tmp_path / "out"), "--catch-up", "latest", env=env,
                  ).returncode == 0
    beats = [beat(env, tmp_path / f"beat-{n}.log") for n in range(2)]
    try:
        wait_for(lambda: len(runs(env, "tick")) >= 4, timeout=90, what="four times")
        for process in beats:
            stop(process, signal.SIGKILL)  # beat goes away past several times
        decided = runs(env, "tick")
        slots = [r[0] for r in decided]
        assert len(slots) == len(set(slots))  # each time once, whichever beat got there
        assert all("beat: Starting" in (tmp_path / f"beat-{n}.log").read_text() for n in (0, 1))
        time.sleep(10)  # three times pass with no beat
        beats = [beat(env, tmp_path / "beat-2.log")]
        wait_for(lambda: len(runs(env, "tick")) >= len(decided) + 3, timeout=60,
                 what="the times beat missed to be decided")
        after = runs(env, "tick")[len(decided):]
        missed = [r for r in after if r[2] == "missed"]
        assert missed and all("beat was not running" in r[3] for r in missed)
        caught = [r for r in after if r[1] in ("catch-up", "on-time") and r[2] != "missed"]
        assert caught  # the latest time (or an on-time one) runs; the others are recorded
        shown = batchq("schedule", "show", "tick", "--history", "50", env=env).stdout
        assert "missed" in shown and "beat was not running" in shown
    finally:
        for process in beats:
            stop(process)


def test_map_reduce_gives_one_answer_per_long_document(services_env, shared_worker, tiny_model,
                                                        tmp_path):
    env = {**services_env, "PYTHONPATH": str(REPO)}
    docs = tmp_path / "books"
    docs.mkdir()
    (docs / "short.txt").write_text("A short note.")
    (docs / "long.txt").write_text("\n\n".join(f"Chapter {i}: " + "the worker reads on. " * 20
                                               for i in range(60)))  # past the context
    out = tmp_path / "out"
    added = batchq("schedule", "add", "books", "--every", "1h", "--source", str(docs),
                   "--template", str(template_file(tmp_path)), "--model", str(tiny_model),
                   "--max-new-tokens", "3", "--long", "map-reduce", "--output", str(out), env=env)
    assert added.returncode == 0, added.stderr
    process = beat(env, tmp_path / "beat.log")
    try:
        assert batchq("schedule", "run-now", "books", env=env).returncode == 0
        (run,) = wait_for(lambda: [r for r in runs(env, "books") if r[2] == "completed"],
                          timeout=120, what="the run")
    finally:
        stop(process)
    run_dir = Path(run[5])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["job"] == run[4] and manifest["combine_job"] not in (None, run[4])
    results = {line["path"]: line for line in jsonl(run_dir / "results.jsonl")}
    # One line per document: the long one's answer is the combining prompt's, over its parts.
    assert sorted(results) == ["long.txt", "short.txt"]
    whole, short = results["long.txt"], results["short.txt"]
    assert whole["status"] == short["status"] == "succeeded" and whole["output"]
    assert whole["part"] == 0 and whole["parts"] >= 2 and short["parts"] == 1
    assert not (run_dir / "errors.jsonl").read_text()
    # The map job ran every part; the combine job, an ordinary job too, one line per document.
    parts = [json.loads(x) for x in batchq("results", run[4], env=env).stdout.splitlines()]
    assert len(parts) == whole["parts"] + 1
    (combined,) = [json.loads(x) for x in
                   batchq("results", manifest["combine_job"], env=env).stdout.splitlines()]
    assert combined["output"] == whole["output"]
    (prompt,) = sql(env, "SELECT request FROM lines WHERE job_id = :j", j=manifest["combine_job"])
    assert "(part 1 of" in str(prompt) and "combine:" in str(prompt)


def template_file(tmp_path: Path) -> Path:
    """A template that shows which pass it is: each part, or the parts' answers combined."""
    path = tmp_path / "summary.j2"
    path.write_text("{% if part == 0 %}combine: {% endif %}Summarise {{ filename }}"
                    "{% if parts > 1 %} (part {{ part }}/{{ parts }}){% endif %}:\n{{ document }}")
    return path
