"""A run whose job has ended: with `--long map-reduce`, a follow-up job combines each split
document's parts into one answer; then the run's folder is written, once.

    OUTPUT/NAME/<scheduled time, UTC>/results.jsonl   a line per document (or part)
                                      errors.jsonl    documents that could not run, or failed
                                      manifest.json   the run, its job, counts and timings
                                      documents/      with --per-document: one .txt each

Whichever process notices first writes it: the folder is rendered aside and renamed into
place, and a rename onto an existing folder fails, so it appears once, whole.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from batchq.config import Settings
from batchq.formats import LineResult
from batchq.schedule.prepare import Sizers, submit
from batchq.schedule.registry import template_of
from batchq.states import DocumentStatus, LineStatus, RunStatus
from batchq.store import reads
from batchq.store import schedules as rows
from batchq.store.database import utcnow
from batchq.store.schedules import DocumentRow, RunView, ScheduleView
from batchq.store.views import iso


def folder_name(run: RunView) -> str:
    return run.scheduled_for.strftime("%Y-%m-%dT%H%M%SZ")


def _lines(settings: Settings, job_id: str | None) -> dict[str, LineResult]:
    return {r.custom_id: r for r in reads.line_results(settings, job_id)} if job_id else {}


def advance(settings: Settings, schedule: ScheduleView, run: RunView, sizers: Sizers) -> bool:
    """Move a running run on if its job has ended. Returns True once the run is complete."""
    summary = dict(run.summary)
    for key in ("job", "reduce_job"):
        job_id = run.job_id if key == "job" else summary.get("reduce_job")
        if job_id and not reads.job_view(settings, job_id).status.final:
            return False
    documents = rows.documents_of(settings, run.id)
    if schedule.options.get("long") == "map-reduce" and "reduce_job" not in summary:
        combine = _combine_lines(settings, schedule, run, documents)
        if combine:
            summary["reduce_job"] = submit(settings, schedule, run, combine,
                                           f"{schedule.name} {iso(run.scheduled_for)} combine")
            rows.move_run(settings, run.id, [RunStatus.RUNNING], summary=summary)
            return False
    write(settings, schedule, run, documents, summary)
    return True


def _combine_lines(settings: Settings, schedule: ScheduleView, run: RunView,
                   documents: list[DocumentRow]) -> list[dict[str, Any]]:
    """One prompt per split document: the template over its parts' answers, in order."""
    results = _lines(settings, run.job_id)
    template = template_of(schedule)
    by_path: dict[str, list[tuple[DocumentRow, str]]] = defaultdict(list)
    for d in documents:
        if d.custom_id and d.parts > 1:
            by_path[d.path].append((d, d.custom_id))
    lines = []
    for path, parts in by_path.items():
        answers = [results[cid].output for _, cid in parts if cid in results
                   and results[cid].status is LineStatus.SUCCEEDED]
        if len(answers) == len(parts):
            combined = "\n\n".join(f"(part {d.part} of {d.parts})\n{a}"
                                   for (d, _), a in zip(parts, answers, strict=True))
            lines.append({"custom_id": _whole(parts[0][1]),
                          "prompt": template.render(document=combined,
                                                    filename=Path(path).name, path=path,
                                                    part=0, parts=len(parts))})
    return lines


def write(settings: Settings, schedule: ScheduleView, run: RunView,
          documents: list[DocumentRow], summary: dict[str, Any]) -> None:
    results = _lines(settings, run.job_id)
    combined = _lines(settings, summary.get("reduce_job"))
    final = Path(schedule.output_dir) / schedule.name / folder_name(run)
    aside = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}")
    (aside / "documents").mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = defaultdict(int)
    with (aside / "results.jsonl").open("w", encoding="utf-8") as out, \
            (aside / "errors.jsonl").open("w", encoding="utf-8") as errors:
        for doc in documents:
            line = _result(doc, results, combined)
            if line is None:  # a part whose document has one combined answer instead
                continue
            status = DocumentStatus(line["status"])
            counts[status] += 1
            target = out if status is DocumentStatus.SUCCEEDED else errors
            if status in (DocumentStatus.UNCHANGED, DocumentStatus.DELETED):
                continue  # noted in the manifest, not errors
            target.write(json.dumps(line, ensure_ascii=False) + "\n")
            if status is DocumentStatus.SUCCEEDED and schedule.options.get("per_document"):
                name = doc.path + ("" if doc.parts == 1 or line["part"] == 0
                                   else f".part{doc.part}") + ".txt"
                (aside / "documents" / name).parent.mkdir(parents=True, exist_ok=True)
                (aside / "documents" / name).write_text(line["output"] or "", encoding="utf-8")
    now = utcnow()
    manifest = {
        "schedule": schedule.name, "run": run.id, "scheduled_for": iso(run.scheduled_for),
        "trigger": run.trigger, "job": run.job_id, "combine_job": summary.get("reduce_job"),
        "model": schedule.model, "fingerprint": summary.get("fingerprint"),
        "documents": dict(counts),
        "deleted": sorted(d.path for d in documents if d.status is DocumentStatus.DELETED),
        "created_at": iso(run.created_at), "started_at": iso(run.started_at),
        "finished_at": iso(now)}
    (aside / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if not schedule.options.get("per_document"):
        (aside / "documents").rmdir()
    try:
        aside.rename(final)  # atomic; fails if another process's folder is there already
    except OSError:
        shutil.rmtree(aside, ignore_errors=True)
    rows.claim_writing(settings, run.id, now)
    for doc in documents:
        if doc.custom_id and doc.custom_id in results:
            r = results[doc.custom_id]
            rows.set_document_status(settings, run.id, doc.custom_id,
                                     DocumentStatus(r.status.value), r.error)
    rows.move_run(settings, run.id, [RunStatus.RUNNING, RunStatus.PREPARING],
                  status=RunStatus.COMPLETED,
                  finished_at=now, output_path=str(final),
                  summary={**summary, **{k: v for k, v in counts.items()}})


def _result(doc: DocumentRow, results: dict[str, LineResult],
            combined: dict[str, LineResult]) -> dict[str, Any] | None:
    base = {"path": doc.path, "content_hash": doc.content_hash, "part": doc.part,
            "parts": doc.parts}
    if doc.custom_id is None:  # not run: unchanged, deleted, or unreadable
        return {**base, "status": doc.status, "output": None, "error": doc.error}
    if doc.parts > 1 and combined:
        if doc.part != 1:
            return None
        row = combined.get(_whole(doc.custom_id))
        base["part"] = 0  # the whole document
    else:
        row = results.get(doc.custom_id)
    if row is None:
        return {**base, "status": DocumentStatus.FAILED, "output": None,
                "error": "its line has no result (the job was cancelled?)"}
    line = {**base, "custom_id": row.custom_id, "status": row.status.value,
            "output": row.output, "finish_reason": row.finish_reason, "usage": row.usage,
            "error": row.error}
    if row.reasoning is not None:
        line["reasoning"] = row.reasoning
    return line


def _whole(custom_id: str) -> str:
    """The combined answer's line id of a split document: d7p2 -> d7all."""
    return custom_id.split("p")[0] + "all"
