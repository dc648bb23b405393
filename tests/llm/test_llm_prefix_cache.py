"""Prefix caching: answers with the cache equal answers without it (and `generate()`), the
cache is hit where it should be and never across adapters, and stays within its size."""

from __future__ import annotations

import asyncio

import pytest

from engines.llm.types import GenerationRequest, SamplingParams
from llm_helpers import collect, greedy_reference
from test_llm_adapters import peft_reference

SYSTEM = ("You are a helpful assistant for galactic, which serves models over gRPC with streaming "
          "tokens, LoRA adapters and continuous batching. Answer briefly. ")
QUESTIONS = ["What is a token?", "def add(a, b):", "The quick brown fox", "Lorem ipsum dolor"]


async def _engine(tiny_dir, adapters_root, runner="thread", **prefix):
    from engines.llm.engine import LLMEngine
    from llm_helpers import make_config

    eng = LLMEngine(make_config(tiny_dir, adapters_root, runner=runner, llm={"prefix_cache": prefix}))
    eng.load(lambda msg: None)
    await eng.start(asyncio.get_running_loop())
    return eng


@pytest.fixture
async def make_engine(tiny_dir, adapters_root):
    made = []

    async def make(**kw):
        eng = await _engine(tiny_dir, adapters_root, **kw)
        made.append(eng)
        return eng

    yield make
    for eng in made:
        await eng.stop(5)


def req(rid: str, prompt: str, n: int = 8, adapter: str | None = None, **sampling) -> GenerationRequest:
    return GenerationRequest(rid, prompt=prompt, adapter=adapter, sampling=SamplingParams(max_new_tokens=n, **sampling))


def _stored_tokens(engine) -> int:
    """What the layout's block store holds (the thread runner: the layout is in this process)."""
    return len(engine.runner.layout.store) * 16


def _blocks(engine, prompt: str) -> int:
    """Tokens of `prompt` a later request sharing all of it can reuse: full blocks, short of the last token."""
    return (len(engine.tokenizer(prompt)["input_ids"]) - 1) // 16 * 16


def _metric(name: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, {"model": "tiny"}) or 0.0  # every test engine is "tiny"


async def test_shared_prefix_greedy_matches_generate_and_hits(make_engine, reference):
    eng = await make_engine()
    hit_before = _metric("galactic_llm_prefix_cache_hit_tokens_total")
    queried_before = _metric("galactic_llm_prefix_cache_queried_tokens_total")
    first = await collect(eng, req("p0", SYSTEM + QUESTIONS[0]))
    assert first[2].cached_prompt_tokens == 0
    assert first[0] == greedy_reference(reference, SYSTEM + QUESTIONS[0], 8)
    # Sequentially (across batches), then together (within one batch).
    for i, q in enumerate(QUESTIONS[1:]):
        ids, _, final = await collect(eng, req(f"s{i}", SYSTEM + q))
        assert ids == greedy_reference(reference, SYSTEM + q, 8)
        assert final.cached_prompt_tokens >= 32, final
    results = await asyncio.gather(*(collect(eng, req(f"b{i}", SYSTEM + q)) for i, q in enumerate(QUESTIONS)))
    for q, (ids, _, final) in zip(QUESTIONS, results):
        assert ids == greedy_reference(reference, SYSTEM + q, 8)
        assert final.cached_prompt_tokens >= 32
    stats = eng.stats()
    assert stats["prefix_cache_hit_tokens_total"] > 0
    assert 0 < stats["prefix_cache_hit_rate"] < 1
    assert stats["prefix_cache_tokens"] > 0
    assert _metric("galactic_llm_prefix_cache_hit_tokens_total") - hit_before == stats["prefix_cache_hit_tokens_total"]
    assert (_metric("galactic_llm_prefix_cache_queried_tokens_total") - queried_before
            == stats["prefix_cache_queried_tokens_total"])
    assert _metric("galactic_llm_prefix_cache_tokens") == stats["prefix_cache_tokens"]


async def test_prompt_entirely_cached_still_computes_its_last_token(make_engine, reference):
    eng = await make_engine()
    prompt = SYSTEM + QUESTIONS[1]
    want = greedy_reference(reference, prompt, 10)
    for i in range(3):
        ids, _, final = await collect(eng, req(f"e{i}", prompt, 10))
        assert ids == want
        assert final.cached_prompt_tokens == (0 if i == 0 else _blocks(eng, prompt))
        assert final.cached_prompt_tokens < final.prompt_tokens


async def test_prefix_ending_mid_block_reuses_the_blocks_before_it(make_engine, reference):
    eng = await make_engine()
    tok = eng.tokenizer
    base = tok(SYSTEM)["input_ids"]
    cut = 16 * 2 + 7  # two full blocks, then 7 tokens of a third
    prefix = tok.decode(base[:cut])
    a, b = prefix + " one more question", prefix + " and something else entirely"
    assert tok(a)["input_ids"][:cut] == tok(b)["input_ids"][:cut] == base[:cut]
    assert tok(a)["input_ids"][cut:cut + 1] != tok(b)["input_ids"][cut:cut + 1]
    await collect(eng, req("m0", a))
    ids, _, final = await collect(eng, req("m1", b))
    assert ids == greedy_reference(reference, b, 8)
    assert final.cached_prompt_tokens == 32


async def test_seeded_sampling_equal_with_and_without_the_cache(make_engine):
    on, off = await make_engine(), await make_engine(enabled=False)
    sampling = dict(temperature=0.9, top_p=0.95, seed=7)
    got = {}
    for name, eng in (("on", on), ("off", off)):
        got[name] = [await collect(eng, req(f"{name}{i}", SYSTEM + q, 12, **sampling)) for i, q in enumerate(QUESTIONS)]
    assert [ids for ids, _, _ in got["on"]] == [ids for ids, _, _ in got["off"]]
    assert any(f.cached_prompt_tokens for _, _, f in got["on"][1:])
    assert all(f.cached_prompt_tokens == 0 for _, _, f in got["off"])


async def test_adapters_reuse_their_own_prefixes_only(make_engine, tiny_dir, adapters_root, reference):
    eng = await make_engine()
    await eng.load_adapter("alpha", "alpha")
    await eng.load_adapter("beta", "beta")
    prompt = SYSTEM + QUESTIONS[2]
    ids, _, final = await collect(eng, req("a0", prompt, adapter="alpha"))
    want_alpha = peft_reference(tiny_dir, adapters_root, "alpha", prompt, 8)
    assert ids == want_alpha and final.cached_prompt_tokens == 0
    # Neither another adapter nor the base model reuses alpha's KV.
    ids, _, final = await collect(eng, req("b0", prompt, adapter="beta"))
    assert ids == peft_reference(tiny_dir, adapters_root, "beta", prompt, 8)
    assert final.cached_prompt_tokens == 0
    ids, _, final = await collect(eng, req("n0", prompt))
    assert ids == greedy_reference(reference, prompt, 8)
    assert final.cached_prompt_tokens == 0
    # alpha's own next request does.
    ids, _, final = await collect(eng, req("a1", prompt, adapter="alpha"))
    assert ids == want_alpha and final.cached_prompt_tokens == _blocks(eng, prompt)


async def test_unloaded_or_replaced_adapter_entries_are_dropped(make_engine, tiny_dir, adapters_root):
    eng = await make_engine()
    await eng.load_adapter("alpha", "alpha")
    prompt = SYSTEM + QUESTIONS[3]
    await collect(eng, req("u0", prompt, adapter="alpha"))
    held = eng.stats()["prefix_cache_tokens"]
    assert held >= _blocks(eng, prompt)
    await eng.unload_adapter("alpha")
    assert eng.stats()["prefix_cache_tokens"] == 0
    assert _stored_tokens(eng) == held  # the store forgets them with the next step
    # The same name loaded again is a new adapter: nothing of the old one matches.
    await eng.load_adapter("alpha", "gamma")
    ids, _, final = await collect(eng, req("u1", prompt, adapter="alpha"))
    assert final.cached_prompt_tokens == 0
    assert ids == peft_reference(tiny_dir, adapters_root, "gamma", prompt, 8)
    assert _stored_tokens(eng) == eng.stats()["prefix_cache_tokens"] == held


async def test_eviction_under_pressure_keeps_answers_exact(make_engine, reference):
    eng = await make_engine(max_tokens=48)  # three blocks: every prompt evicts others
    prompts = [SYSTEM + q for q in QUESTIONS] + [q + " " + SYSTEM for q in QUESTIONS]
    for rnd in range(2):
        results = await asyncio.gather(*(collect(eng, req(f"v{rnd}-{i}", p, 6)) for i, p in enumerate(prompts)))
        for p, (ids, _, _) in zip(prompts, results):
            assert ids == greedy_reference(reference, p, 6)
        assert eng.stats()["prefix_cache_tokens"] == _stored_tokens(eng) == 48
    # The last prompt cached keeps its leading blocks (a block is useless without those
    # before it), and is served from them.
    ids, _, final = await collect(eng, req("v-last", prompts[-1], 6))
    assert ids == greedy_reference(reference, prompts[-1], 6)
    assert final.cached_prompt_tokens == 48


@pytest.mark.parametrize("overlap", ["off", "on"])
async def test_process_runner_reuses_prefixes(tiny_dir, adapters_root, reference, overlap):
    """The model process keeps the blocks; with overlapped steps a plan is sent before the
    previous one's tokens are applied, and blocks registered by one plan are saved by the
    child before the next one runs."""
    from engines.llm.engine import LLMEngine
    from llm_helpers import make_config

    eng = LLMEngine(make_config(tiny_dir, adapters_root, runner="process", llm={"overlap_steps": overlap}))
    eng.load(lambda msg: None)
    await eng.start(asyncio.get_running_loop())
    try:
        await _reuses_prefixes(eng, reference)
    finally:
        await eng.stop(5)


async def _reuses_prefixes(eng, reference) -> None:
    for i, q in enumerate(QUESTIONS[:3]):
        ids, _, final = await collect(eng, req(f"p{i}", SYSTEM + q))
        assert ids == greedy_reference(reference, SYSTEM + q, 8)
        assert (final.cached_prompt_tokens > 0) == (i > 0)


async def test_front_ends_report_cached_prompt_tokens(llm_daemon):
    """The daemon's default (the model process): gRPC's Usage and OpenAI's usage both show
    the prompt tokens reused."""
    import aiohttp

    from galactic_client import AsyncClient
    from galactic_client.generation import Final

    client = AsyncClient(f"127.0.0.1:{llm_daemon.port}", timeout=60)
    try:
        finals = []
        for q in QUESTIONS[:2]:
            finals += [item async for item in client.generate(SYSTEM + q, max_new_tokens=4) if isinstance(item, Final)]
    finally:
        await client.close()
    assert finals[0].cached_prompt_tokens == 0
    assert 32 <= finals[1].cached_prompt_tokens < finals[1].prompt_tokens
    usages = []
    async with aiohttp.ClientSession() as http:
        for q in QUESTIONS[2:]:
            async with http.post(f"http://127.0.0.1:{llm_daemon.openai_port}/v1/completions",
                                 json={"model": "tiny", "prompt": SYSTEM + q, "max_tokens": 4}) as resp:
                assert resp.status == 200
                usages.append((await resp.json())["usage"])
    for usage in usages:
        assert 32 <= usage["prompt_tokens_details"]["cached_tokens"] < usage["prompt_tokens"]


async def test_adapter_evicted_for_another_drops_its_entries(make_engine, tiny_dir, adapters_root):
    """max_loaded = 3: a fourth adapter loaded on demand evicts the idle one used longest
    ago; its blocks go with it, and the same name loaded again never matches them."""
    eng = await make_engine()
    prompt = SYSTEM + QUESTIONS[0]
    for name in ("alpha", "beta", "gamma"):
        await collect(eng, req(name, prompt, 4, adapter=name))
    per_adapter = len(eng.tokenizer(prompt)["input_ids"]) // 16 * 16  # the prompt's full blocks
    assert eng.stats()["prefix_cache_tokens"] == 3 * per_adapter
    await collect(eng, req("delta", prompt, 4, adapter="delta"))  # evicts alpha
    assert {a.name for a in eng.list_adapters()} == {"beta", "gamma", "delta"}
    assert eng.stats()["prefix_cache_tokens"] == 3 * per_adapter
    ids, _, final = await collect(eng, req("alpha-again", prompt, 4, adapter="alpha"))  # evicts beta
    assert final.cached_prompt_tokens == 0
    assert ids == peft_reference(tiny_dir, adapters_root, "alpha", prompt, 4)
    _, _, final = await collect(eng, req("gamma-again", prompt, 4, adapter="gamma"))
    assert final.cached_prompt_tokens == _blocks(eng, prompt)


async def test_a_failed_step_empties_the_cache_and_answers_stay_exact(make_engine, reference, monkeypatch):
    from engines.errors import GalacticError
    from engines.llm.runner import ModelRunner
    from fault_injection import Injected

    eng = await make_engine()
    prompt = SYSTEM + QUESTIONS[1]
    await collect(eng, req("f0", prompt))
    assert eng.stats()["prefix_cache_tokens"] > 0
    Injected(monkeypatch, ModelRunner, "execute", RuntimeError("injected step failure"))
    with pytest.raises((RuntimeError, GalacticError)):
        await collect(eng, req("f1", prompt))
    assert eng.stats()["prefix_cache_tokens"] == _stored_tokens(eng) == 0
    ids, _, final = await collect(eng, req("f2", prompt))
    assert ids == greedy_reference(reference, prompt, 8)
    assert final.cached_prompt_tokens == 0


def test_index_evicts_least_recently_used_tails_first_and_drops_by_key():
    from engines.llm.prefix_cache import PrefixIndex

    index = PrefixIndex(max_tokens=8, block_tokens=2)  # four blocks
    a = index.hashes("", [1, 2, 3, 4, 5, 6])
    assert len(a) == 3
    assert index.hashes("x@1", [1, 2, 3, 4, 5, 6]) != a != index.hashes("", [1, 2, 3, 4, 5, 7])
    assert index.hashes("", [1, 2, 3, 4, 9, 9])[:2] == a[:2]  # chained: equal prefixes, equal hashes
    assert index.hashes("", list(range(20))) == index.hashes("", list(range(8)))  # at most what fits
    index.insert("", a)
    assert index.match(a, 7) == 6 and index.match(a, 6) == 4  # the last token is always computed
    b = index.hashes("k@1", [7, 7, 8, 8])
    index.insert("k@1", b)  # five blocks: a's tail goes first
    assert index.take_evicted() == [a[2]]
    assert index.match(a, 7) == 4 and index.tokens == 8
    index.drop("k@1")
    assert set(index.take_evicted()) == set(b) and index.tokens == 4
    assert index.match(b, 5) == 0
