"""Prometheus metrics of the LLM engine, defined once (default registry), labelled by model.

Defined at import because prometheus_client refuses duplicate names in one registry; every
engine instance uses `.labels(model=name)`. Reading no environment and doing no I/O here.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384)

TTFT = Histogram("galactic_llm_ttft_seconds", "Enqueue to first token.", ["model"], buckets=_LATENCY_BUCKETS)
ITL = Histogram("galactic_llm_inter_token_seconds", "Time between a request's tokens.", ["model"], buckets=_ITL_BUCKETS)
E2E = Histogram("galactic_llm_e2e_seconds", "Enqueue to final output.", ["model"], buckets=_LATENCY_BUCKETS)
QUEUE = Histogram("galactic_llm_queue_seconds", "Enqueue to admission.", ["model"], buckets=_LATENCY_BUCKETS)
RUNNING = Gauge("galactic_llm_running_requests", "Requests prefilling or decoding.", ["model"])
WAITING = Gauge("galactic_llm_waiting_requests", "Requests in the waiting queue.", ["model"])
BATCH_SIZE = Histogram("galactic_llm_step_batch_size", "Rows per decode step.", ["model"], buckets=_COUNT_BUCKETS)
STEP_TOKENS = Histogram("galactic_llm_step_tokens", "Tokens processed per step (prefill + decode).", ["model"], buckets=_TOKEN_BUCKETS)
KV_TOKENS = Gauge("galactic_llm_kv_cache_tokens", "Token slots held by the batched KV cache (rows x length).", ["model"])
KV_USAGE = Gauge("galactic_llm_kv_cache_usage_ratio", "Reserved tokens / scheduler.max_batch_tokens.", ["model"])
ADAPTERS_LOADED = Gauge("galactic_llm_adapters_loaded", "LoRA adapters resident.", ["model"])
ADAPTERS_ACTIVE = Gauge("galactic_llm_adapters_active", "LoRA adapters used by queued or running requests.", ["model"])
ADAPTER_LOADS = Counter("galactic_llm_adapter_loads_on_demand", "Adapters loaded because a request named them.", ["model"])
ADAPTER_LOAD_FAILURES = Counter("galactic_llm_adapter_load_failures", "On-demand adapter loads that failed.", ["model"])
ADAPTER_EVICTIONS = Counter("galactic_llm_adapter_evictions", "Idle adapters evicted to make room for another.", ["model"])
PREFIX_QUERIED = Counter("galactic_llm_prefix_cache_queried_tokens",
                         "Prompt tokens looked up in the prefix cache (hit rate = hit / queried).", ["model"])
PREFIX_HIT = Counter("galactic_llm_prefix_cache_hit_tokens", "Prompt tokens reused from the prefix cache.", ["model"])
PREFIX_TOKENS = Gauge("galactic_llm_prefix_cache_tokens", "Prompt tokens the prefix cache holds.", ["model"])
GENERATED = Counter("galactic_llm_generated_tokens", "Tokens generated.", ["model"])
PROMPT = Counter("galactic_llm_prompt_tokens", "Prompt tokens prefilled.", ["model"])
CONSTRAINED = Counter("galactic_llm_constrained_requests", "Requests queued with a structured-output constraint.", ["model"])
GRAMMAR_CACHE_HITS = Counter("galactic_llm_grammar_cache_hits", "Constraints found compiled in the grammar cache at admission.", ["model"])
GRAMMAR_CACHE_MISSES = Counter("galactic_llm_grammar_cache_misses", "Constraints compiled at admission (not cached).", ["model"])
MASK_SECONDS = Histogram("galactic_llm_mask_seconds", "Per step with constrained rows: time sampling waited for their token masks (computed beside the forward) and advanced their matchers.",
                         ["model"], buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1))
FINISHED = Counter("galactic_llm_requests_finished", "Requests finished, by reason.", ["model", "reason"])


class ModelMetrics:
    """The metrics above bound to one model's label once (`labels()` per token costs a lock
    and a dict lookup; this is on the decode path)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.ttft, self.itl, self.e2e, self.queue = (h.labels(model=model) for h in (TTFT, ITL, E2E, QUEUE))
        self.running, self.waiting = RUNNING.labels(model=model), WAITING.labels(model=model)
        self.batch_size, self.step_tokens = BATCH_SIZE.labels(model=model), STEP_TOKENS.labels(model=model)
        self.kv_tokens, self.kv_usage = KV_TOKENS.labels(model=model), KV_USAGE.labels(model=model)
        self.adapters_loaded = ADAPTERS_LOADED.labels(model=model)
        self.adapters_active = ADAPTERS_ACTIVE.labels(model=model)
        self.adapter_loads_on_demand = ADAPTER_LOADS.labels(model=model)
        self.adapter_load_failures = ADAPTER_LOAD_FAILURES.labels(model=model)
        self.adapter_evictions = ADAPTER_EVICTIONS.labels(model=model)
        self.generated, self.prompt = GENERATED.labels(model=model), PROMPT.labels(model=model)
        self.prefix_queried, self.prefix_hit = PREFIX_QUERIED.labels(model=model), PREFIX_HIT.labels(model=model)
        self.prefix_tokens = PREFIX_TOKENS.labels(model=model)
        self.constrained, self.mask = CONSTRAINED.labels(model=model), MASK_SECONDS.labels(model=model)
        self.grammar_hits = GRAMMAR_CACHE_HITS.labels(model=model)
        self.grammar_misses = GRAMMAR_CACHE_MISSES.labels(model=model)

    def finished(self, reason: str) -> None:
        FINISHED.labels(model=self.model, reason=reason).inc()
