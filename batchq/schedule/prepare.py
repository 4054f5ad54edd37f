"""Turning a folder into a run's job: the documents that are new or changed (by content hash,
for this template, model and settings), their text, split on paragraph boundaries where the
model's context is too small, rendered through the template and submitted as an ordinary job.

Nothing is truncated: a document longer than the context becomes parts (or, with
`--long fail`, fails with its token count), counted with the model's own tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchq import service
from batchq.config import Settings
from batchq.engine.types import DEFAULT_MAX_NEW_TOKENS
from batchq.schedule.documents import Unreadable, paragraphs, scan, text_of
from batchq.schedule.registry import generation_of, template_of
from batchq.schedule.templates import PromptTemplate
from batchq.states import DocumentStatus
from batchq.store import schedules as rows
from batchq.store.schedules import DocumentRow, RunView, ScheduleView
from batchq.variants import resolve

SAFETY_TOKENS = 16  # what a chat template's edge cases may add beyond the counted prompt


class Sizer:
    """Token counts with the model's own tokenizer, and its context (loaded once per model)."""

    def __init__(self, model_ref: str):
        from batchq.engine.codec import PromptCodec
        from batchq.engine.loading import load_tokenizer

        self.tokenizer, self.context = load_tokenizer(model_ref)
        eos = self.tokenizer.eos_token_id
        self.codec = PromptCodec(self.tokenizer, [eos] if eos is not None else [0])

    def prompt_tokens(self, prompt: str) -> int:
        from batchq.engine.types import PromptIn

        return len(self.codec.encode(PromptIn(None, [{"role": "user", "content": prompt}])))

    def text_tokens(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids))


Sizers = Callable[[str], Sizer]  # model reference -> its sizer (cached by the caller)


@dataclass
class Prepared:
    lines: list[dict[str, Any]] = field(default_factory=list)  # the job's lines
    documents: list[DocumentRow] = field(default_factory=list)
    fingerprint: str = ""

    def count(self, status: DocumentStatus) -> int:
        return len({d.path for d in self.documents if d.status == status})


def fingerprint(schedule: ScheduleView, template: PromptTemplate) -> str:
    """What a document's result depends on besides its text: a change runs everything again."""
    keyed = {"template": template.source, "variables": template.variables,
             "model": schedule.model, "quant": schedule.quant,
             "settings": {"generation": schedule.options.get("generation", {}),
                          "long": schedule.options.get("long")}}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()


def split(text: str, budget: int, sizer: Sizer) -> list[str]:
    """Parts of at most `budget` tokens: whole paragraphs where they fit, then whole lines,
    then (a single line longer than the budget) windows of tokens."""
    pieces: list[str] = []
    for paragraph in paragraphs(text):
        if len(sizer.text_tokens(paragraph)) <= budget:
            pieces.append(paragraph)
            continue
        for line in paragraph.split("\n"):
            ids = sizer.text_tokens(line)
            pieces += ([line] if len(ids) <= budget else
                       [sizer.decode(ids[i:i + budget]) for i in range(0, len(ids), budget)])
    parts: list[str] = []
    for piece in pieces:
        joined = f"{parts[-1]}\n\n{piece}" if parts else piece
        if parts and len(sizer.text_tokens(joined)) <= budget:
            parts[-1] = joined
        else:
            parts.append(piece)
    return parts


def prepare(settings: Settings, schedule: ScheduleView, run: RunView,
            sizers: Sizers) -> Prepared:
    """The run's lines and what became of each document (queued, unchanged, failed, deleted).
    Raises ConfigError or NotFound if the run cannot be prepared at all (its template broke,
    its folder or model is gone): the run fails with that reason."""
    template = template_of(schedule)
    folder = Path(schedule.source_dir)
    if not folder.is_dir():
        raise Unreadable(f"the source folder {folder} is gone")
    variant = resolve(schedule.model, schedule.quant, settings.model_aliases)
    sizer = sizers(variant.model)
    limit = int(generation_of(schedule).max_new_tokens or DEFAULT_MAX_NEW_TOKENS)
    overhead = sizer.prompt_tokens(template.render(document="", filename="", path="", part=1,
                                                   parts=1))
    budget = (sizer.context or 10**9) - limit - overhead - SAFETY_TOKENS
    long_mode = schedule.options.get("long", "split")
    prepared = Prepared(fingerprint=fingerprint(schedule, template))
    fp = prepared.fingerprint
    done = {} if run.force else rows.processed_hashes(settings, schedule.id, fp)
    seen = set()
    for index, document in enumerate(scan(folder, schedule.glob), start=1):
        seen.add(document.relative)
        row = DocumentRow(document.relative, document.content_hash, fp, DocumentStatus.QUEUED)
        if document.content_hash in done:
            unreadable = done[document.content_hash]
            # Not read again, but never counted as unchanged: it has not run.
            prepared.documents.append(DocumentRow(
                document.relative, document.content_hash, fp,
                DocumentStatus.UNCHANGED if unreadable is None else DocumentStatus.UNREADABLE,
                error=unreadable))
            continue
        try:
            text = text_of(document)
            tokens = len(sizer.text_tokens(text))
            if tokens > budget and (long_mode == "fail" or budget <= 0):
                raise Unreadable(f"{tokens} tokens, over the {max(budget, 0)} the model's "
                                 f"context leaves for the document (--long {long_mode})")
            parts = [text] if tokens <= budget else split(text, budget, sizer)
        except Unreadable as exc:
            prepared.documents.append(DocumentRow(document.relative, document.content_hash,
                                                  fp, DocumentStatus.UNREADABLE,
                                                  error=str(exc)))
            continue
        for part, piece in enumerate(parts, start=1):
            custom_id = f"d{index}p{part}"
            prompt = template.render(document=piece, filename=document.name,
                                     path=document.relative, part=part, parts=len(parts))
            prepared.lines.append({"custom_id": custom_id, "prompt": prompt})
            prepared.documents.append(DocumentRow(row.path, row.content_hash, fp,
                                                  DocumentStatus.QUEUED,
                                                  custom_id, part, len(parts),
                                                  len(sizer.text_tokens(piece))))
    for gone in sorted(rows.known_paths(settings, schedule.id) - seen):
        prepared.documents.append(DocumentRow(gone, "", fp, DocumentStatus.DELETED))
    return prepared


def submit(settings: Settings, schedule: ScheduleView, run: RunView,
           lines: list[dict[str, Any]], name: str) -> str:
    """The lines as an ordinary batchq job (status, results, retry, report all work on it)."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", encoding="utf-8") as f:
        f.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
        f.flush()
        return service.submit(f.name, schedule.model, schedule.quant, name=name,
                              settings=settings,
                              job_settings=generation_of(schedule))
