import pytest

from batchq.errors import NotFound
from batchq.variants import CATALOGUE, queue_name, resolve


def test_catalogue_covers_the_qwen_family_with_unique_aliases():
    aliases = [e.alias for e in CATALOGUE]
    assert len(aliases) == len(set(aliases))
    for needed in ("qwen2.5-0.5b-instruct", "qwen2.5-1.5b-instruct", "qwen2.5-3b-instruct",
                   "qwen2.5-7b-instruct", "qwen2.5-coder-7b-instruct", "qwen2.5-math-7b-instruct",
                   "qwen3-0.6b", "qwen3-8b"):
        assert needed in aliases


def test_alias_and_hf_id_name_the_same_variant_and_queue():
    by_alias = resolve("qwen2.5-7b-instruct")
    by_id = resolve("Qwen/Qwen2.5-7B-Instruct")
    assert by_alias == by_id
    assert by_alias.quant == "nf4"  # the catalogue's recommendation
    assert by_alias.queue == queue_name("qwen2.5-7b-instruct", "nf4") == "batchq.qwen2.5-7b-instruct.nf4"
    assert resolve("qwen2.5-7b-instruct", "none").queue == "batchq.qwen2.5-7b-instruct.none"


def test_other_hugging_face_ids_work():
    v = resolve("SomeOrg/My-Model_v2", "int8")
    assert (v.model, v.queue) == ("SomeOrg/My-Model_v2", "batchq.someorg--my-model_v2.int8")


def test_local_directory_queue_is_independent_of_where_it_lives(tmp_path):
    for place in ("a", "b"):
        (tmp_path / place / "m").mkdir(parents=True)
        (tmp_path / place / "m" / "config.json").write_text('{"model_type": "qwen2"}')
    assert resolve(str(tmp_path / "a" / "m")).queue == resolve(str(tmp_path / "b" / "m")).queue


@pytest.mark.parametrize("model, fragment", [
    ("qwen9-unknown", "neither a catalogue alias nor an existing directory"),
    ("./no/such/dir", "neither a catalogue alias nor an existing directory"),
])
def test_unknown_models_are_one_clear_error(model, fragment):
    with pytest.raises(NotFound, match=fragment):
        resolve(model)


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(NotFound, match="has no config.json"):
        resolve(str(tmp_path))
