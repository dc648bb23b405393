"""CUDA paths (bf16 default, bitsandbytes int8/nf4, LoRA on GPU); skipped without CUDA."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import torch

from engines.llm.types import GenerationRequest, SamplingParams
from llm_helpers import PROMPTS, collect, make_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


async def _run(cfg, adapter: str | None = None) -> list[int]:
    from engines.llm.engine import LLMEngine

    eng = LLMEngine(cfg)
    eng.load(lambda msg: None)
    await eng.start(asyncio.get_running_loop())
    try:
        if adapter:
            await eng.load_adapter(adapter, adapter)
        ids, _, final = await collect(eng, GenerationRequest("gpu", prompt=PROMPTS[0], adapter=adapter,
                                                             sampling=SamplingParams(max_new_tokens=8)))
        assert final.completion_tokens == len(ids) > 0
        assert eng.info().device.startswith("cuda")
        return ids
    finally:
        await eng.stop(1)


@pytest.mark.parametrize("quantization", ["none", "int8", "nf4"])
async def test_llm_cuda_quantizations_generate(tiny_dir, adapters_root, quantization):
    cfg = dataclasses.replace(make_config(tiny_dir, adapters_root), device="cuda", quantization=quantization)
    await _run(cfg, adapter="alpha")


async def test_llm_cuda_fp32_greedy_matches_generate(tiny_dir, adapters_root, reference):
    model, tok = reference
    cfg = dataclasses.replace(make_config(tiny_dir, adapters_root), device="cuda", dtype="float32")
    ids = await _run(cfg)
    cuda_model = model.to("cuda")
    x = torch.tensor([tok(PROMPTS[0])["input_ids"]], device="cuda")
    with torch.no_grad():
        want = cuda_model.generate(x, max_new_tokens=8, do_sample=False)[0, x.shape[1]:].tolist()
    model.to("cpu")
    assert ids == want


async def _greedy_streams(cfg, n: int = 12) -> list[list[int]]:
    """Six concurrent greedy streams (rows join and leave: several batch buckets), then one."""
    from engines.llm.engine import LLMEngine

    eng = LLMEngine(cfg)
    eng.load(lambda msg: None)
    await eng.start(asyncio.get_running_loop())
    try:
        results = await asyncio.gather(*(collect(eng, GenerationRequest(
            f"s{i}", prompt=p, sampling=SamplingParams(max_new_tokens=n + 2 * i))) for i, p in enumerate(PROMPTS)))
        solo = await collect(eng, GenerationRequest("solo", prompt=PROMPTS[1], sampling=SamplingParams(max_new_tokens=n)))
        return [ids for ids, _, _ in results] + [solo[0]]
    finally:
        await eng.stop(1)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
async def test_llm_cuda_compiled_decode_matches_eager(tiny_dir, adapters_root, dtype):
    """compile = "decode" (static shapes, torch.compile with CUDA graphs) against the eager
    static layout and the padded dynamic-cache layout, greedy. fp32 must match token for
    token; in bf16 compiled kernels may round differently, so a near-tie may flip late:
    the first tokens must agree."""
    base = dataclasses.replace(make_config(tiny_dir, adapters_root), device="cuda", dtype=dtype)
    eager = await _greedy_streams(base)
    compiled = await _greedy_streams(dataclasses.replace(base, compile="decode"))
    dynamic = await _greedy_streams(dataclasses.replace(base, kv_cache="dynamic"))
    if dtype == "float32":
        assert compiled == eager == dynamic
    else:
        assert [c[:4] for c in compiled] == [e[:4] for e in eager]


async def test_llm_cuda_compiled_decode_with_prefix_cache_matches_cache_off(tiny_dir, adapters_root):
    """compile = "decode" with prefix caching: hits are copied into the graph's static
    buffers in place (prefill steps stay eager), fp32 tokens equal the cache off."""
    from engines.llm.engine import LLMEngine

    system = PROMPTS[5] + " "
    prompts = [system + p for p in PROMPTS[:4]]
    base = dataclasses.replace(make_config(tiny_dir, adapters_root), device="cuda", dtype="float32", compile="decode")
    got = {}
    for on in (True, False):
        cfg = dataclasses.replace(base, prefix_cache=dataclasses.replace(base.prefix_cache, enabled=on))
        eng = LLMEngine(cfg)
        eng.load(lambda msg: None)
        await eng.start(asyncio.get_running_loop())
        try:
            first = [await collect(eng, GenerationRequest(f"q{i}", prompt=p, sampling=SamplingParams(max_new_tokens=10)))
                     for i, p in enumerate(prompts)]
            burst = await asyncio.gather(*(collect(eng, GenerationRequest(
                f"b{i}", prompt=p, sampling=SamplingParams(max_new_tokens=10))) for i, p in enumerate(prompts)))
            got[on] = [ids for ids, _, _ in first + list(burst)]
            cached = [f.cached_prompt_tokens for _, _, f in first + list(burst)]
            assert (sum(cached) > 0) == on
        finally:
            await eng.stop(1)
    assert got[True] == got[False]
