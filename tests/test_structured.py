"""Outputs held to a JSON schema by constrained decoding. The tiny model's random weights make
free text garbage, so the proof is that every constrained output parses and validates (checked
by jsonschema, independently of the library that constrains), alone or batched."""

import json

import jsonschema
import pytest

from batchq.engine import Engine, GenerationSettings, PromptIn
from batchq.errors import InputError
from batchq.service import validate_file
from tests.conftest import batchq
from tests.test_engine import run

INVOICE = {"type": "object", "properties": {
    "vendor": {"type": "string", "maxLength": 20},
    "total": {"type": "number", "minimum": 0},
    "currency": {"enum": ["EUR", "USD", "RSD"]},
    "lines": {"type": "array", "maxItems": 3, "items": {
        "type": "object", "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}$"},
                                          "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["sku", "qty"], "additionalProperties": False}}},
    "required": ["vendor", "total", "currency", "lines"], "additionalProperties": False}
VERDICT = {"type": "object", "properties": {"spam": {"type": "boolean"},
                                            "score": {"type": "integer", "minimum": 0,
                                                      "maximum": 5}},
           "required": ["spam", "score"], "additionalProperties": False}
TAGS = {"type": "array", "items": {"enum": ["red", "green"]}, "minItems": 1, "maxItems": 2}


@pytest.fixture(scope="module")
def engine(tiny_model):
    return Engine.load(str(tiny_model), "none", "cpu")


def line(key, schema, **settings):
    return PromptIn(key, [{"role": "user", "content": f"Document {key}: extract it."}],
                    settings=GenerationSettings.merged({"max_new_tokens": 80},
                                                       {"json_schema": schema, **settings}))


def test_every_output_parses_and_validates_alone_or_batched(engine):
    schemas = [INVOICE, VERDICT, TAGS, INVOICE, VERDICT]
    prompts = [line(i, s) for i, s in enumerate(schemas)]
    prompts.append(PromptIn(9, [{"role": "user", "content": "free"}],
                            settings=GenerationSettings(max_new_tokens=8)))
    batched = run(engine, prompts)
    for prompt, schema in zip(prompts, schemas, strict=False):
        out = batched[prompt.key]
        assert out.error is None and out.finish_reason == "stop", out
        jsonschema.validate(json.loads(out.text), schema)
        assert run(engine, [prompt])[prompt.key].text == out.text  # per-row grammars
    # Properties come in the schema's order.
    assert list(json.loads(batched[0].text)) == ["vendor", "total", "currency", "lines"]


def test_sampled_lines_stay_valid_and_reproducible(engine):
    prompts = [line(i, VERDICT, temperature=1.0, top_k=5, top_p=0.9, seed=i) for i in range(3)]
    first, again = run(engine, prompts), run(engine, prompts)
    for p in prompts:
        jsonschema.validate(json.loads(first[p.key].text), VERDICT)
        assert first[p.key].text == again[p.key].text


def test_an_object_cut_off_by_the_limit_says_so(engine):
    (cut,) = run(engine, [line(0, INVOICE, max_new_tokens=4)]).values()
    assert cut.text is None and cut.finish_reason == "length"
    assert cut.error.startswith("json_incomplete: the output limit (4 tokens)")


def test_a_schema_that_cannot_be_enforced_is_refused_at_submit_by_line(tmp_path):
    rows = [{"prompt": "ok", "json_schema": VERDICT},
            {"prompt": "x", "json_schema": {"type": "string", "format": "no-such-format"}},
            {"custom_id": "o", "url": "/v1/chat/completions", "body": {
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_schema", "json_schema": {
                    "name": "n", "schema": {"type": "object", "minProperties": "two"}}}}},
            {"prompt": "x", "json_schema": "not a schema"}]
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError) as refused:
        validate_file(str(data))
    text = str(refused.value)
    assert "3 invalid line(s), no job created" in text
    assert (f"{data}:2: field 'json_schema': the schema cannot be enforced: "
            "Unknown format: no-such-format") in text
    assert f"{data}:3: field 'body.response_format': the schema cannot be enforced" in text
    assert f"{data}:4: field 'json_schema': expected a JSON schema (an object)" in text


@pytest.mark.services
@pytest.mark.e2e
def test_extraction_through_the_worker_in_both_formats(services_env, shared_worker, tiny_model,
                                                       tmp_path):
    schema_file = tmp_path / "invoice.json"
    schema_file.write_text(json.dumps(INVOICE))
    rows = [{"custom_id": "doc-1", "prompt": "Invoice from ACME, 3 widgets, 12 EUR."},
            {"custom_id": "doc-2", "prompt": "Is this spam?", "json_schema": VERDICT},
            {"custom_id": "oa-object", "method": "POST", "url": "/v1/chat/completions",
             "body": {"messages": [{"role": "user", "content": "Give me an object."}],
                      "response_format": {"type": "json_object"}, "max_tokens": 60}},
            {"custom_id": "oa-schema", "method": "POST", "url": "/v1/chat/completions",
             "body": {"messages": [{"role": "user", "content": "Tags?"}], "max_tokens": 40,
                      "response_format": {"type": "json_schema", "json_schema": {
                          "name": "tags", "strict": True, "schema": {
                              "type": "object", "properties": {"tags": TAGS},
                              "required": ["tags"], "additionalProperties": False}}}}},
            {"custom_id": "cut", "prompt": "Too little room.", "max_tokens": 3}]
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = batchq("submit", str(data), "--model", str(tiny_model), "--json-schema",
                  str(schema_file), "--max-new-tokens", "120", "--wait", env=services_env)
    assert done.returncode == 6, done.stderr  # the cut-off line failed; the rest completed
    out = {r["custom_id"]: r for r in map(json.loads, batchq(
        "results", done.stdout.strip(), env=services_env).stdout.splitlines())}
    jsonschema.validate(json.loads(out["doc-1"]["output"]), INVOICE)  # the job's schema
    jsonschema.validate(json.loads(out["doc-2"]["output"]), VERDICT)  # the line's own
    obj = json.loads(out["oa-object"]["response"]["body"]["choices"][0]["message"]["content"])
    assert isinstance(obj, dict) or out["oa-object"]["error"]["code"] == "json_incomplete"
    tags = json.loads(out["oa-schema"]["response"]["body"]["choices"][0]["message"]["content"])
    assert set(tags["tags"]) <= {"red", "green"} and 1 <= len(tags["tags"]) <= 2
    cut = out["cut"]
    assert (cut["status"], cut["output"], cut["finish_reason"]) == ("failed", None, "length")
    assert cut["error"]["code"] == "json_incomplete"
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "object", "properties": {"a": {"type": "nope"}}}')
    refused = batchq("submit", str(data), "--model", str(tiny_model), "--json-schema", str(bad),
                     env=services_env)
    assert refused.returncode == 2 and "the schema cannot be enforced" in refused.stderr
