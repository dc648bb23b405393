"""Structured output: constrained decoding (engines/llm/constraints.py) on the tiny model.

Every answer that ends because its grammar completed (EOS) must parse and validate against
its schema (`jsonschema`), or match its regex in full; free rows sharing the batch must get
exactly the tokens they get alone; a bad constraint is INVALID_ARGUMENT naming its field;
a constraint compiles off the event loop, so a slow one holds up nobody else, and past its
bound it is INVALID_ARGUMENT too.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading

import jsonschema
import pytest

from engines.errors import InvalidArgument
from engines.llm.constraints import Grammars
from engines.llm.types import Constraint, FinishReason, GenerationRequest, SamplingParams
from llm_helpers import collect, make_config

SCHEMAS = {
    "flat": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "boolean"}},
             "required": ["a", "b"], "additionalProperties": False},
    "nested": {"type": "object", "properties": {"user": {"type": "object", "properties": {
        "id": {"type": "integer"}, "admin": {"type": "boolean"}}, "required": ["id", "admin"],
        "additionalProperties": False}}, "required": ["user"], "additionalProperties": False},
    "array_bounded": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9},
                      "minItems": 2, "maxItems": 4},
    "enum": {"type": "string", "enum": ["red", "green", "blue"]},
    "enum_in_object": {"type": "object", "properties": {"status": {"enum": ["ok", "error", "pending"]}},
                       "required": ["status"], "additionalProperties": False},
    "bounded_int": {"type": "integer", "minimum": -5, "maximum": 5},
    "bounded_number": {"type": "object", "properties": {"p": {"type": "number", "minimum": 0, "maximum": 1}},
                       "required": ["p"], "additionalProperties": False},
    "string_pattern": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
    "string_length": {"type": "string", "minLength": 1, "maxLength": 6},
    "format_date": {"type": "object", "properties": {"day": {"type": "string", "format": "date"}},
                    "required": ["day"], "additionalProperties": False},
    "format_uuid": {"type": "string", "format": "uuid"},
    "required_optional": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 5},
                                                           "age": {"type": "integer", "minimum": 0, "maximum": 99}},
                          "required": ["age"], "additionalProperties": False},
    "any_of": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 100}, {"type": "boolean"}]},
    "any_of_objects": {"type": "object", "properties": {"v": {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 4}]}},
                       "required": ["v"], "additionalProperties": False},
    "ref": {"$defs": {"pt": {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9},
                                                              "y": {"type": "integer", "minimum": 0, "maximum": 9}},
                             "required": ["x", "y"], "additionalProperties": False}},
            "type": "object", "properties": {"from": {"$ref": "#/$defs/pt"}, "to": {"$ref": "#/$defs/pt"}},
            "required": ["from", "to"], "additionalProperties": False},
    "array_of_objects": {"type": "array", "maxItems": 3, "items": {
        "type": "object", "properties": {"k": {"enum": ["a", "b"]}, "n": {"type": "integer", "minimum": 1, "maximum": 3}},
        "required": ["k", "n"], "additionalProperties": False}},
    "const": {"type": "object", "properties": {"version": {"const": 2}, "ok": {"type": "boolean"}},
              "required": ["version", "ok"], "additionalProperties": False},
    "nullable": {"type": ["integer", "null"], "minimum": 0, "maximum": 50},
    "tuple_like": {"type": "array", "prefixItems": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "boolean"}],
                   "items": False, "minItems": 2},
    "classification": {"type": "object", "properties": {
        "label": {"enum": ["spam", "ham"]}, "score": {"type": "number", "minimum": 0, "maximum": 1},
        "tags": {"type": "array", "items": {"enum": ["x", "y", "z"]}, "maxItems": 2}},
        "required": ["label", "score", "tags"], "additionalProperties": False},
    "bool": {"type": "boolean"},
}
REGEXES = [r"[0-9]{3}-[0-9]{4}", r"(yes|no)", r"[a-z]{2,5}@example\.com", r"\d{4}-\d{2}-\d{2}"]
RUNS = 3  # samples per schema and adapter, temperature 1.0
MAX_NEW = 160  # enough for the tiny model to finish these schemas most of the time; LENGTH is allowed


def _request(rid: str, constraint: Constraint | None, adapter: str | None = None, seed: int | None = None,
             temperature: float = 1.0, max_new: int = MAX_NEW, prompt: str = "Answer in JSON:") -> GenerationRequest:
    return GenerationRequest(rid, prompt=prompt, adapter=adapter, sampling=SamplingParams(
        max_new_tokens=max_new, temperature=temperature, seed=seed, constraint=constraint))


async def _sample_all(engine, constraint: Constraint, name: str, adapter: str | None) -> list[tuple[str, FinishReason]]:
    results = await asyncio.gather(*(collect(engine, _request(f"{name}-{adapter}-{i}", constraint, adapter, seed=i))
                                     for i in range(RUNS)))
    return [(text, final.finish_reason) for _, text, final in results]


@pytest.mark.parametrize("adapter", [None, "alpha"])
async def test_every_completed_answer_validates(engine, adapter):
    if adapter is not None and adapter not in {a.name for a in engine.list_adapters()}:
        await engine.load_adapter(adapter, adapter)
    completed = 0
    for name, schema in SCHEMAS.items():
        for text, reason in await _sample_all(engine, Constraint("json_schema", json.dumps(schema)), name, adapter):
            assert reason in (FinishReason.EOS, FinishReason.LENGTH), (name, reason)
            if reason is FinishReason.EOS:
                completed += 1
                jsonschema.validate(json.loads(text), schema, format_checker=jsonschema.FormatChecker())
    # Most must complete, or the test shows nothing: the mask leads even a random model to the end.
    assert completed >= len(SCHEMAS) * RUNS // 2


async def test_json_object_and_regexes(engine):
    for i in range(RUNS):
        _, text, final = await collect(engine, _request(f"obj-{i}", Constraint("json_object"), seed=i, max_new=64))
        if final.finish_reason is FinishReason.EOS:
            assert isinstance(json.loads(text), dict)
    for j, rx in enumerate(REGEXES):
        for i in range(RUNS):
            _, text, final = await collect(engine, _request(f"rx-{j}-{i}", Constraint("regex", rx), seed=i, max_new=64))
            assert final.finish_reason is FinishReason.EOS, (rx, text)
            assert re.fullmatch(rx, text), (rx, text)


async def test_length_ends_an_incomplete_answer(engine):
    schema = {"type": "array", "items": {"type": "integer"}, "minItems": 50}
    _, text, final = await collect(engine, _request("short", Constraint("json_schema", json.dumps(schema)), max_new=5))
    assert final.finish_reason is FinishReason.LENGTH
    assert final.completion_tokens == 5 and text.startswith("[")


async def test_free_rows_are_unchanged_by_constrained_rows(engine):
    """Greedy and seeded free rows beside constrained rows: token for token what they get alone."""
    free = [_request("free-greedy", None, temperature=0.0, max_new=24),
            _request("free-seeded", None, seed=7, max_new=24, prompt="The quick brown fox")]
    alone = [ids for ids, _, _ in await asyncio.gather(*(collect(engine, r) for r in free))]
    schema = json.dumps(SCHEMAS["classification"])
    mixed = await asyncio.gather(*(collect(engine, r) for r in [
        _request("c-0", Constraint("json_schema", schema), seed=1), free[0],
        _request("c-1", Constraint("regex", REGEXES[0]), seed=2, temperature=0.0), free[1],
        _request("c-2", Constraint("json_object"), seed=3)]))
    assert [mixed[1][0], mixed[3][0]] == alone


@pytest.mark.parametrize("constraint, field", [
    (Constraint("json_schema", "{not json"), "constraint.json_schema"),
    (Constraint("json_schema", '{"type": "frobnicate"}'), "constraint.json_schema"),
    (Constraint("json_schema", "[1, 2]"), "constraint.json_schema"),
    (Constraint("json_schema", '{"type": "array", "uniqueItems": true}'), "constraint.json_schema"),  # unsupported keyword
    (Constraint("regex", "(unclosed"), "constraint.regex"),
    (Constraint("grammar", "start: foo("), "constraint.grammar"),
    (Constraint("regex", ""), "constraint.regex"),
    (Constraint("yaml", "a: 1"), "constraint"),
    (Constraint("regex", "a" * 70000), "constraint.regex"),
    (Constraint("json_schema", '{"a": ' * 40 + "1" + "}" * 40), "constraint.json_schema"),  # past max_depth
    (Constraint("json_schema", "[" * 60000 + "]" * 60000), "constraint.json_schema"),  # past max_bytes
    (Constraint("json_schema", '{"a":' * 5000 + "1" + "}" * 5000), "constraint.json_schema"),  # too deep to parse
])
async def test_bad_constraint_is_invalid_argument(engine, constraint, field):
    # Raised by generate() when cheap to see, else by the first item (once compiled off the loop).
    with pytest.raises(InvalidArgument) as err:
        await collect(engine, _request("bad", constraint))
    assert err.value.field == field
    assert engine.running_count + engine.waiting_count == 0


class HeldCompile:
    """A barrier in `Grammars.compile` (on the compile thread) for constraints whose text
    contains `marker`: `entered` is set once one waits there, `release()` lets them go."""

    def __init__(self, monkeypatch, marker: str) -> None:
        self.entered, self._open = threading.Event(), threading.Event()
        real = Grammars.compile

        def held(grammars, c):
            if marker in c.text:
                self.entered.set()
                assert self._open.wait(120), "HeldCompile: never released"
            return real(grammars, c)
        monkeypatch.setattr(Grammars, "compile", held)

    async def reached(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 60), "no compile reached the barrier"

    def release(self) -> None:
        self._open.set()


async def test_a_slow_compile_holds_up_no_other_request(engine, monkeypatch):
    """A constraint still compiling (held on its thread) delays neither a free request nor
    another constraint's compile; a second request with the same constraint joins the same
    compile, and cancelling it ends it at once, the compile going on for the first."""
    slow = {"type": "object", "properties": {"held_here": {"type": "integer", "minimum": 0, "maximum": 9}},
            "required": ["held_here"], "additionalProperties": False}
    held = HeldCompile(monkeypatch, "held_here")
    try:
        first = asyncio.create_task(collect(engine, _request("slow-1", Constraint("json_schema", json.dumps(slow)), seed=1)))
        await held.reached()
        _, _, free = await collect(engine, _request("free", None, temperature=0.0, max_new=8))
        _, text, other = await collect(engine, _request("other", Constraint("regex", r"[0-9]{2}x"), seed=2))
        assert free.finish_reason in (FinishReason.EOS, FinishReason.LENGTH)
        assert other.finish_reason is FinishReason.EOS and re.fullmatch(r"[0-9]{2}x", text)
        joined = engine.generate(_request("slow-2", Constraint("json_schema", json.dumps(slow))))
        waiting = asyncio.create_task(anext(joined))
        await asyncio.sleep(0)  # let it reach its wait for the compile
        assert engine.cancel("slow-2")
        final = await waiting
        assert final.finish_reason is FinishReason.CANCELLED
        assert not first.done()
    finally:
        held.release()
    _, text, final = await first
    assert final.finish_reason in (FinishReason.EOS, FinishReason.LENGTH)
    if final.finish_reason is FinishReason.EOS:
        jsonschema.validate(json.loads(text), slow)
    assert engine.running_count + engine.waiting_count == 0


async def test_a_compile_past_its_bound_is_invalid_argument(tiny_dir, adapters_root, monkeypatch):
    from engines.llm.engine import LLMEngine

    held = HeldCompile(monkeypatch, "never_compiles")
    eng = LLMEngine(make_config(tiny_dir, adapters_root, llm={"constraints": {"compile_timeout_s": 0.05}}))
    eng.load(lambda msg: None)
    await eng.start(asyncio.get_running_loop())
    try:
        schema = json.dumps({"type": "object", "properties": {"never_compiles": {"type": "boolean"}}})
        with pytest.raises(InvalidArgument) as err:
            await collect(eng, _request("bounded", Constraint("json_schema", schema)))
        assert err.value.field == "constraint.json_schema" and "compile_timeout_s" in err.value.message
        assert held.entered.is_set()  # it was refused while compiling, not before
        _, _, final = await collect(eng, _request("after", None, temperature=0.0, max_new=4))
        assert final.finish_reason in (FinishReason.EOS, FinishReason.LENGTH)
    finally:
        held.release()
        await eng.stop(5)


async def test_ignore_eos_with_a_constraint_is_refused(engine):
    req = GenerationRequest("ie", prompt="x", sampling=SamplingParams(ignore_eos=True, constraint=Constraint("json_object")))
    with pytest.raises(InvalidArgument) as err:
        engine.generate(req)
    assert err.value.field == "sampling.ignore_eos"


async def test_process_runner_masks_in_the_model_process(tiny_dir, adapters_root):
    """runner = "process": the constraint travels with the plan and the child masks."""
    from engines.llm.engine import LLMEngine

    eng = LLMEngine(make_config(tiny_dir, adapters_root, runner="process"))
    eng.load(lambda msg: None)
    await eng.start(asyncio.get_running_loop())
    try:
        schema = SCHEMAS["classification"]
        results = await asyncio.gather(
            *(collect(eng, _request(f"p-{i}", Constraint("json_schema", json.dumps(schema)), seed=i)) for i in range(RUNS)),
            collect(eng, _request("p-rx", Constraint("regex", REGEXES[2]), seed=9)))
        for _, text, final in results[:-1]:
            if final.finish_reason is FinishReason.EOS:
                jsonschema.validate(json.loads(text), schema)
        _, text, final = results[-1]
        assert final.finish_reason is FinishReason.EOS and re.fullmatch(REGEXES[2], text)
        assert eng.stats()["requests_finished_total"] == RUNS + 1
    finally:
        await eng.stop(5)


async def test_through_grpc_client_and_errors_name_the_field(llm_daemon):
    from galactic_client import AsyncClient, errors

    schema = SCHEMAS["ref"]
    async with AsyncClient(f"127.0.0.1:{llm_daemon.port}", timeout=60) as client:
        for seed in range(RUNS):
            text, final = await client.generate_text("Answer in JSON:", json_schema=schema, temperature=1.0,
                                                     seed=seed, max_new_tokens=MAX_NEW)
            assert final.finish_reason in ("EOS", "LENGTH")
            if final.finish_reason == "EOS":
                jsonschema.validate(json.loads(text), schema)
        text, final = await client.generate_text("x", regex=REGEXES[1], max_new_tokens=16)
        assert final.finish_reason == "EOS" and re.fullmatch(REGEXES[1], text)
        with pytest.raises(errors.InvalidArgument) as err:
            await client.generate_text("x", json_schema='{"type": "frobnicate"}')
        assert err.value.field == "constraint.json_schema" and "frobnicate" in str(err.value)
        async with client.session() as s:  # a Session's Submit carries the same constraint
            free = await s.submit("x", max_new_tokens=8)
            shaped = await s.submit("x", regex=REGEXES[0], max_new_tokens=16)
            text, final = await shaped.text()
            assert final.finish_reason == "EOS" and re.fullmatch(REGEXES[0], text)
            _, final = await free.text()
            assert final.finish_reason in ("EOS", "LENGTH")
    metrics = await asyncio.to_thread(_scrape, llm_daemon.metrics_port)
    # The same schema three times: compiled once, then found in the cache.
    assert _value(metrics, "galactic_llm_grammar_cache_hits_total") >= RUNS - 1
    assert _value(metrics, "galactic_llm_constrained_requests_total") >= RUNS + 1
    assert _value(metrics, "galactic_llm_mask_seconds_count") >= 1


def _scrape(port: int) -> str:
    import urllib.request

    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def _value(text: str, name: str) -> float:
    """The sample of `name` labelled model="tiny" (the tests share one registry)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and 'model="tiny"' in line)


def test_mask_covers_a_padded_model_vocabulary():
    """A model whose logits are wider than the tokenizer's vocabulary: the tail is refused."""
    import torch

    from engines.llm.sampling import sample_row

    logits = torch.zeros(12)
    logits[10] = 100.0  # the padded tail is where the raw model would go
    allowed = torch.zeros(8, dtype=torch.bool)
    allowed[[2, 5]] = True
    params = SamplingParams(temperature=1.0, seed=0)
    from engines.llm.sampling import make_generator

    gen = make_generator(params)
    picks = {sample_row(logits, params, None, gen, allowed)[0] for _ in range(50)}
    assert picks <= {2, 5}
    assert sample_row(logits, SamplingParams(), None, None, allowed)[0] in (2, 5)


async def test_the_model_side_builds_matchers_beside_the_step(engine, monkeypatch):
    """The runner compiles a new request's grammar on its mask thread, beside the forward,
    not on the thread that runs the step."""
    threads = []
    real = Grammars.matcher

    def spy(grammars, c):
        threads.append(threading.current_thread().name)
        return real(grammars, c)
    monkeypatch.setattr(Grammars, "matcher", spy)
    _, text, final = await collect(engine, _request("where", Constraint("regex", r"[a-c]{3}"), max_new=8))
    assert final.finish_reason is FinishReason.EOS and re.fullmatch(r"[a-c]{3}", text)
    assert threads and all(name.startswith("llm-mask") for name in threads), threads
