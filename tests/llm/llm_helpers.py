"""Shared helpers of the LLM engine tests (a uniquely named module, unlike conftest)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import torch

from engines.llm.types import FinalOutput, GenerationRequest, TokenChunk

PROMPTS = [
    "The quick brown fox",
    "def add(a, b):",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt",
    "galactic",
    "Unicode: naïve café",
    "A much longer prompt that needs several prefill chunks because it goes on and on about "
    "serving models, batching requests, caching keys and values, and streaming tokens back.",
]


def greedy_reference(reference, prompt: str, n: int) -> list[int]:
    model, tok = reference
    ids = torch.tensor([tok(prompt)["input_ids"]])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False)
    return out[0, ids.shape[1]:].tolist()


async def collect(engine, request: GenerationRequest) -> tuple[list[int], str, FinalOutput]:
    return await _collect(engine.generate(request))


async def running(engine, request: GenerationRequest) -> "asyncio.Task[tuple[list[int], str, FinalOutput]]":
    """Queue `request` and return once its first token is out, so it is running whatever the
    machine's speed (waiting on `running_count` can miss a short request); the task returns
    what `collect` would."""
    stream = engine.generate(request)
    first = await stream.__anext__()
    return asyncio.create_task(_collect(stream, [first]))


async def _collect(stream, items=()) -> tuple[list[int], str, FinalOutput]:
    ids, text, final = [], "", None

    async def all_items():
        for item in items:
            yield item
        async for item in stream:
            yield item

    async for item in all_items():
        if isinstance(item, TokenChunk):
            ids.extend(item.token_ids)
            text += item.text
        else:
            assert final is None
            final = item
    assert final is not None
    return ids, text, final


def make_config(tiny_dir: Path, adapters_root: Path, runner: str = "thread", llm: dict | None = None, **sched):
    """The engine on its worker thread by default (no child process to spawn per test);
    test_llm_process.py runs the daemon's default, the model in its own process."""
    from engines.config import from_mapping
    from engines.llm.config import LLMConfig

    scheduler = {"max_running": 8, "max_batch_tokens": 2048, "max_waiting": 16, "prefill_chunk_tokens": 16,
                 "max_prompt_tokens": 256}
    scheduler.update(sched)
    return from_mapping(LLMConfig, {
        "name": "tiny", "path": str(tiny_dir), "device": "cpu", "runner": runner,
        "scheduler": scheduler, "adapters": {"root": str(adapters_root), "max_loaded": 3}, **(llm or {}),
    }, "llm")




def drain_idle_results(monkeypatch, daemon) -> list[bool]:
    """What each of the daemon's waits for in-flight calls returns (the drain's wait within
    its grace): [True] after a drain that found the daemon idle before the grace ran out."""
    results: list[bool] = []
    wait_idle = daemon.admission.wait_idle

    async def spy(timeout: float) -> bool:
        results.append(await wait_idle(timeout))
        return results[-1]
    monkeypatch.setattr(daemon.admission, "wait_idle", spy)
    return results
