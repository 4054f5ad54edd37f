"""A claimed chunk's stored requests become the engine's prompts, with the job's settings under
each line's own (batchq.worker.chunk_run._prompt)."""

from __future__ import annotations

from batchq.engine import GenerationSettings
from batchq.formats.lines import LineKind, Request
from batchq.store.views import ClaimedLine
from batchq.worker.chunk_run import _prompt

JOB = {"max_new_tokens": 8, "temperature": None, "dedup": True, "sampling": "model"}
MODEL = {"temperature": 0.7, "top_p": 0.8}


def _line(n: int, **params: object) -> ClaimedLine:
    """A line as a claim reads it: its request as submit stored it."""
    stored = Request(f"q{n}", LineKind.PROMPT, text=f"line {n}", params=params).to_json()
    return ClaimedLine(n, f"q{n}", LineKind.PROMPT, stored, 0, None)


def test_each_line_gets_its_own_settings_over_the_jobs_and_equal_ones_are_shared():
    base = GenerationSettings.base(JOB, MODEL)
    assert base == {"max_new_tokens": 8, "temperature": 0.7, "top_p": 0.8}  # no job-only keys
    seen: dict[object, GenerationSettings] = {}
    lines = [_line(0), _line(1), _line(2, max_new_tokens=3), _line(3, max_new_tokens=3),
             _line(4, stop=["\n"], temperature=0), _line(5, stop=["\n"], temperature=0)]
    prompts = [_prompt(base, line, seen) for line in lines]

    assert [p.key for p in prompts] == [0, 1, 2, 3, 4, 5]
    assert [p.text for p in prompts] == [f"line {n}" for n in range(6)]
    expected = [GenerationSettings.merged(JOB, params, MODEL) for params in (
        {}, {}, {"max_new_tokens": 3}, {"max_new_tokens": 3},
        {"stop": ["\n"], "temperature": 0}, {"stop": ["\n"], "temperature": 0})]
    assert [p.settings for p in prompts] == expected
    assert prompts[0].settings.max_new_tokens == 8 and prompts[2].settings.max_new_tokens == 3
    assert prompts[4].settings.stop == ("\n",) and prompts[4].settings.greedy
    # Equal settings of a line's own: one object, so the engine works out its sampling once.
    assert prompts[0].settings is prompts[1].settings
    assert prompts[2].settings is prompts[3].settings
    assert prompts[0].settings is not prompts[2].settings
    assert prompts[4].settings is not prompts[5].settings  # a list among them: built anew
    assert prompts[0].settings.sampling is prompts[1].settings.sampling
