"""A big file is checked in two processes (service.check_parts): what it finds must be what
one process checking the whole file finds, line for line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from batchq.config import Settings
from batchq.errors import InputError
from batchq.service.check_parts import check_file
from batchq.service.intake import Checked, check_all
from batchq.service.routing import ModelRouter
from batchq.variants import resolve


def _settings(tmp_path: Path, **changes: int) -> Settings:
    settings = Settings.from_env({"BATCHQ_HOME": str(tmp_path / "home")})
    return dataclasses.replace(settings, **changes)


def _router(settings: Settings) -> ModelRouter:
    return ModelRouter(resolve("qwen2.5-0.5b-instruct", None, settings.model_aliases), settings)


def _both(path: Path, settings: Settings) -> tuple[Checked, Checked]:
    """The file checked by one process, then in two (split whatever its size)."""
    alone_router, parts_router = _router(settings), _router(settings)
    with path.open("rb") as stream:
        alone = check_all(str(path), stream, settings, 64, route=alone_router)
    parts = check_file(str(path), path, settings, 64, parts_router, from_bytes=1)
    alone.variants, parts.variants = alone_router.variants, parts_router.variants
    return alone, parts


def _same(alone: Checked, parts: Checked) -> None:
    assert parts.accepted == alone.accepted
    assert {n: (str(e), e.code, e.param) for n, e in parts.refused.items()} == {
        n: (str(e), e.code, e.param) for n, e in alone.refused.items()}
    assert parts.problems == alone.problems
    assert parts.sizes == alone.sizes
    assert [parts.variants[v] for v in parts.variant_of] == [
        alone.variants[v] for v in alone.variant_of]
    assert parts.rows is not None and alone.rows is not None
    assert list(parts.rows.rows()) == list(alone.rows.rows())
    parts.rows.close()
    alone.rows.close()


def _lines(n: int) -> list[str]:
    """Good lines of every shape, lines naming other models, bad lines and a duplicate id,
    spread over the file (so both halves hold each)."""
    out = []
    for i in range(n):
        # The halves meet the two models in opposite orders (each numbers variants its way).
        first, second = ("qwen2.5-7b-instruct:nf4", "qwen2.5-1.5b-instruct")[::1 if i < n // 2
                                                                             else -1]
        if i % 37 == 5:
            out.append('{"prompt": "x", "temperature": 9}')  # refused: out of range
        elif i % 41 == 7:
            out.append("not json")
        elif i % 23 == 3:
            out.append(json.dumps({"custom_id": f"m{i}", "prompt": "hi " * (i % 50),
                                   "model": first}))
        elif i % 2:
            out.append(json.dumps({"custom_id": f"r{i}", "method": "POST",
                                   "url": "/v1/chat/completions",
                                   "body": {"model": second, "max_tokens": i % 9 + 1,
                                            "messages": [{"role": "user", "content": "é" * i}]}}))
        else:
            out.append(json.dumps({"prompt": "word " * (i % 70), "max_new_tokens": 3}))
    out[-3] = json.dumps({"custom_id": f"r{n - 9 if (n - 9) % 2 else n - 10}", "prompt": "dup"})
    return out


def test_two_halves_find_what_one_check_finds(tmp_path):
    path = tmp_path / "in.jsonl"
    lines = _lines(500)
    # A byte-order mark, blank lines and CRLF line ends count as one check counts them.
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines[:250]).encode() + b"\r\n\n\n"
                     + "\n".join(lines[250:]).encode() + b"\n")
    settings = _settings(tmp_path)
    alone, parts = _both(path, settings)
    assert alone.refused and len(alone.variants) == 3 and 30 < len(alone.refused) < 100
    assert any("duplicate custom_id" in str(e) for e in alone.refused.values())
    _same(alone, parts)


def test_an_id_used_in_both_halves_is_refused_as_one_check_refuses_it(tmp_path):
    path = tmp_path / "in.jsonl"
    lines = [json.dumps({"custom_id": f"c{i}", "prompt": f"p{i}"}) for i in range(400)]
    lines[390] = json.dumps({"custom_id": "c3", "prompt": "again"})  # c3 is in the first half
    path.write_text("\n".join(lines) + "\n")
    alone, parts = _both(path, _settings(tmp_path))
    assert [str(e) for e in alone.refused.values()] == [
        "duplicate custom_id 'c3' (first used on line 4)"]
    _same(alone, parts)


def test_the_line_cap_counts_both_halves(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(300)))
    settings = _settings(tmp_path, max_file_lines=299)
    with pytest.raises(InputError, match="more than 299 lines"):
        check_file(str(path), path, settings, 64, _router(settings), from_bytes=1)
    ok = check_file(str(path), path, _settings(tmp_path, max_file_lines=300), 64,
                    _router(settings), from_bytes=1)
    assert ok.accepted == 300 and ok.rows is not None
    assert [row[0] for row in ok.rows.rows()] == list(range(1, 301))
    ok.rows.close()


def test_a_second_process_that_cannot_run_leaves_the_check_to_this_one(tmp_path, monkeypatch):
    from batchq.service import second_process

    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(_lines(200)) + "\n")
    spools = tmp_path / "spools"
    spools.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(spools))
    settings = _settings(tmp_path)
    monkeypatch.setattr(second_process.sys, "executable", "/bin/false")  # exits 1 at once
    alone, parts = _both(path, settings)
    _same(alone, parts)
    # A first half over the cap stops the second process; no spool is left behind either way.
    monkeypatch.undo()
    monkeypatch.setattr("tempfile.tempdir", str(spools))
    with pytest.raises(InputError, match="more than 50 lines"):
        check_file(str(path), path, _settings(tmp_path, max_file_lines=50), 64,
                   _router(settings), from_bytes=1)
    assert list(spools.iterdir()) == []
