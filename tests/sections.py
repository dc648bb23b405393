"""Configuration sections for test daemons, merged the way `daemon_factory` merges them
(a uniquely named module: conftest modules cannot be imported by name)."""

from __future__ import annotations

import copy

# The tiny model as the LLM tests serve it: name "tiny", small budgets (tests/llm/conftest.py
# adds its path and a per-test copy of the adapters root).
TINY_LLM = {
    "name": "tiny", "device": "cpu",
    "scheduler": {"max_running": 8, "max_batch_tokens": 2048, "max_waiting": 16,
                  "prefill_chunk_tokens": 16, "max_prompt_tokens": 256},
    "adapters": {"max_loaded": 3},
}

# The embedded coordination model with a short batching window (the tests send few calls).
COORDINATION = {"coordination": {"batching": {"max_queue_delay_ms": 2.0}}}


def merge(base: dict, extra: dict) -> dict:
    """`extra` over `base`, recursively; neither is changed."""
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
