"""Continuous batching is exact: each stream equals solo greedy `generate()` token for token."""

from __future__ import annotations

import asyncio

from engines.llm.types import FinishReason, GenerationRequest, SamplingParams
from llm_helpers import PROMPTS, collect, greedy_reference

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
    first = asyncio.create_task(collect(engine, GenerationRequest(
        "early", prompt=PROMPTS[2], sampling=SamplingParams(max_new_tokens=40))))
    await engine.wait_until(lambda e: e.running_count == 1, timeout=30)
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
