"""Continuous batching is exact: each stream equals solo greedy `generate()` token for token."""

from __future__ import annotations

import asyncio

from engines.llm.types import FinishReason, GenerationRequest, SamplingParams
from llm_helpers import PROMPTS, collect, greedy_reference, running

async def test_llm_concurrent_greedy_matches_generate(engine, reference):
    n = 24
    reqs = [GenerationRequest(f"g{i}", prompt=p, sampling=SamplingParams(max_new_tokens=n))
            for i, p in enumerate(PROMPTS)]
    results = await asyncio.gather(*(collect(engine, r) for r in reqs))
    for prompt, (ids, _, final) in zip(PROMPTS, results):
        assert ids == greedy_reference(reference, prompt, n), prompt
        assert final.completion_tokens == len(ids)
        assert final.finish_reason in (FinishReason.LENGTH, FinishReason.EOS)
    assert engine.running_count == 0 and engine.waiting_count == 0


async def test_llm_arrivals_mid_flight_match_generate(engine, reference):
    """Requests joining a batch that is already decoding still match solo generate()."""
    first = await running(engine, GenerationRequest("early", prompt=PROMPTS[2], sampling=SamplingParams(max_new_tokens=40)))
    late = [asyncio.create_task(collect(engine, GenerationRequest(
        f"late{i}", prompt=p, sampling=SamplingParams(max_new_tokens=12 + 3 * i)))) for i, p in enumerate(PROMPTS[3:])]
    results = await asyncio.gather(first, *late)
    assert results[0][0] == greedy_reference(reference, PROMPTS[2], 40)
    for i, (p, (ids, _, _)) in enumerate(zip(PROMPTS[3:], results[1:])):
        assert ids == greedy_reference(reference, p, 12 + 3 * i), p


async def test_llm_neighbour_cancelled_mid_stream(engine, reference):
    """Closing one stream mid-way frees its slot and leaves its neighbours' output exact."""
    keep = asyncio.create_task(collect(engine, GenerationRequest(
        "keep", prompt=PROMPTS[0], sampling=SamplingParams(max_new_tokens=30))))
    gen = engine.generate(GenerationRequest("quit", prompt=PROMPTS[1], sampling=SamplingParams(max_new_tokens=60)))
    got = 0
    async for item in gen:
        got += 1
        if got == 3:
            break
    await gen.aclose()
    await engine.wait_until(lambda e: e.running_count <= 1, timeout=30)
    ids, _, _ = await keep
    assert ids == greedy_reference(reference, PROMPTS[0], 30)
    await engine.wait_until(lambda e: e.running_count == 0, timeout=30)


async def test_llm_burst_prefilled_together_matches_generate(tiny_dir, adapters_root, reference):
    """With a large prefill budget a burst is prefilled in one left-padded forward."""
    import asyncio as _asyncio

    from engines.llm.engine import LLMEngine
    from llm_helpers import make_config

    eng = LLMEngine(make_config(tiny_dir, adapters_root, prefill_chunk_tokens=512))
    eng.load(lambda msg: None)
    await eng.start(_asyncio.get_running_loop())
    try:
        n = 16
        results = await _asyncio.gather(*(collect(eng, GenerationRequest(
            f"burst{i}", prompt=p, sampling=SamplingParams(max_new_tokens=n))) for i, p in enumerate(PROMPTS)))
        for p, (ids, _, _) in zip(PROMPTS, results):
            assert ids == greedy_reference(reference, p, n), p
    finally:
        await eng.stop(1)


async def test_llm_random_traffic_keeps_the_stream_contract(engine, reference, tiny_dir, adapters_root):
    """Staggered arrivals, random lengths, sampling, adapters and cancellations: every stream
    ends with exactly one FinalOutput, greedy base streams stay exact, and the engine drains."""
    import random

    from engines.llm.types import FinalOutput, TokenChunk

    rng = random.Random(1234)
    await engine.load_adapter("alpha", "alpha")
    await engine.load_adapter("gamma", "gamma")
    try:
        async def one(i: int):
            await asyncio.sleep(rng.random() * 0.05)  # staggered arrivals, not a correctness wait
            n = rng.randint(1, 30)
            greedy = rng.random() < 0.5
            adapter = None if greedy else rng.choice([None, "alpha", "gamma"])
            params = SamplingParams(max_new_tokens=n) if greedy else SamplingParams(
                max_new_tokens=n, temperature=0.8, top_p=0.9, seed=i)
            prompt = rng.choice(PROMPTS)
            cancel_after = rng.choice([None, None, None, 1, 3])
            ids, finals = [], []
            gen = engine.generate(GenerationRequest(f"rt{i}", prompt=prompt, adapter=adapter, sampling=params))
            async for item in gen:
                if isinstance(item, TokenChunk):
                    ids.extend(item.token_ids)
                    if cancel_after is not None and len(ids) >= cancel_after:
                        engine.cancel(f"rt{i}")
                        cancel_after = None
                else:
                    assert isinstance(item, FinalOutput)
                    finals.append(item)
            assert len(finals) == 1 and finals[0].completion_tokens == len(ids)
            return greedy, prompt, n, ids, finals[0]

        results = await asyncio.gather(*(one(i) for i in range(16)))  # <= max_running + max_waiting
        for greedy, prompt, n, ids, final in results:
            if greedy and final.finish_reason is not FinishReason.CANCELLED:
                assert ids == greedy_reference(reference, prompt, n)
        await engine.wait_until(lambda e: e.running_count == 0 and e.waiting_count == 0, timeout=30)
        assert engine.stats()["reserved_tokens"] == 0
    finally:
        await engine.unload_adapter("alpha")
        await engine.unload_adapter("gamma")
