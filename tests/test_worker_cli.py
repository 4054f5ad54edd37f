"""`batchq worker` refuses bad profiles and models with one line, before loading anything."""

import pytest

from tests.conftest import batchq


def test_every_shipped_profile_parses_and_names_a_known_model():
    from pathlib import Path

    from batchq.variants import resolve
    from batchq.worker.boot import read_profile

    profiles = sorted(Path(__file__).parent.parent.glob("workers/*.toml"))
    assert len(profiles) >= 6
    for path in profiles:
        prof = read_profile(str(path))
        variant = resolve(prof["model"], prof.get("quant"))
        assert variant.entry is not None, path  # a catalogue model, so its queue is well known
        assert all(prof.get(k, 1) > 0 for k in ("max_batch_tokens", "max_batch_rows"))
        assert prof.get("strategy", "auto") in ("auto", "static", "continuous")


@pytest.mark.parametrize("profile, code, fragment", [
    ("[worker]\nmodel = 'qwen2.5-0.5b-instruct'\nbatch = 3\n", 2, "unknown key(s) in [worker]: batch"),
    ("[worker\n", 2, "invalid TOML"),
    ("[worker]\nquant = 'nf4'\n", 2, "give --model or a --profile that names one"),
    ("[worker]\nmodel = 'qwen9-nope'\n", 4, "neither a catalogue alias"),
])
def test_bad_profiles_are_one_line_errors(embedded_env, tmp_path, profile, code, fragment):
    path = tmp_path / "w.toml"
    path.write_text(profile)
    res = batchq("worker", "--profile", str(path), env=embedded_env, timeout=60)
    assert res.returncode == code, res.stderr
    assert fragment in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_missing_profile_and_missing_model_directory(embedded_env, tmp_path):
    res = batchq("worker", "--profile", str(tmp_path / "nope.toml"), env=embedded_env, timeout=60)
    assert res.returncode == 2 and "no such worker profile" in res.stderr
    res = batchq("worker", "--model", str(tmp_path / "gone"), env=embedded_env, timeout=60)
    assert res.returncode == 4 and "neither a catalogue alias nor an existing directory" in res.stderr
    assert "Traceback" not in res.stderr
