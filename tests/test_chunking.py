"""Submit groups a job's lines into chunks of similar length and output limit, largest first."""

from __future__ import annotations

import json

from sqlalchemy import select

from batchq import service
from batchq.config import Settings
from batchq.store.models import Chunk, Line
from batchq.store.sessions import session_scope


def test_chunks_hold_lines_of_similar_size_largest_first(embedded_env, tmp_path, monkeypatch):
    for key, value in {**embedded_env, "BATCHQ_CHUNK_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env()
    # Short and long prompts alternate in the file; two lines ask for far more output.
    rows = [{"prompt": "x" * (10 if i % 2 else 900)} for i in range(6)]
    rows += [{"prompt": "y", "max_tokens": 900}, {"prompt": "z" * 5, "max_tokens": 800}]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    job_id = service.submit(str(path), "Qwen/Qwen2.5-0.5B-Instruct", settings=settings)

    with session_scope(settings) as session:
        seq_of = dict(session.execute(select(Line.line_no, Line.chunk_seq)
                                      .where(Line.job_id == job_id)).all())
        spans = {c.seq: (c.first_line, c.last_line) for c in session.scalars(
            select(Chunk).where(Chunk.job_id == job_id))}
    by_chunk: dict[int, list[int]] = {}
    for line_no, seq in sorted(seq_of.items()):
        by_chunk.setdefault(seq, []).append(line_no)
    # Largest output limit first, then the long prompts, then the short ones.
    assert by_chunk == {1: [7, 8], 2: [1, 3], 3: [2, 5], 4: [4, 6]}
    assert spans == {seq: (min(lines), max(lines)) for seq, lines in by_chunk.items()}
    assert service.status(job_id, settings).chunks == 4
