"""Spans (request, queue, prefill, step with links) and Prometheus metrics."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from engines.llm.types import GenerationRequest, SamplingParams
from llm_helpers import PROMPTS, collect


def _exporter() -> InMemorySpanExporter:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # nobody installed an SDK provider yet
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


async def test_llm_spans_and_metrics(engine):
    exporter = _exporter()
    before = REGISTRY.get_sample_value("galactic_llm_generated_tokens_total", {"model": "tiny"}) or 0.0
    parent_tracer = trace.get_tracer("test")
    with parent_tracer.start_as_current_span("rpc") as rpc:
        ctx = trace.set_span_in_context(rpc)
        ids, _, _ = await collect(engine, GenerationRequest(
            "traced", prompt=PROMPTS[0], trace_context=ctx, sampling=SamplingParams(max_new_tokens=5)))
    spans = exporter.get_finished_spans()
    by_name: dict[str, list] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    request = next(s for s in by_name["llm.request"] if s.attributes["llm.request_id"] == "traced")
    assert request.parent.span_id == rpc.get_span_context().span_id
    assert any(e.name == "first_token" for e in request.events)
    assert request.attributes["llm.completion_tokens"] == len(ids)
    for name in ("llm.queue", "llm.prefill"):
        assert any(s.parent.span_id == request.context.span_id for s in by_name[name])
    steps = [s for s in by_name["llm.step"] if any(l.context.span_id == request.context.span_id for l in s.links)]
    assert steps and all("llm.batch_size" in s.attributes for s in steps)
    after = REGISTRY.get_sample_value("galactic_llm_generated_tokens_total", {"model": "tiny"})
    assert after - before == len(ids)
    assert REGISTRY.get_sample_value("galactic_llm_ttft_seconds_count", {"model": "tiny"}) >= 1


async def test_llm_engine_meets_the_engine_protocol(engine):
    from engines.base import Engine

    assert isinstance(engine, Engine)
    info = engine.info()
    assert (info.kind, info.state, info.services) == ("llm", "ready", ("galactic.v1.Generation",))
    assert info.parameters > 0 and info.memory_bytes > 0 and info.config["name"] == "tiny"
    stats = engine.stats()
    assert {"running_requests", "waiting_requests", "generated_tokens_total", "kv_cache_tokens"} <= set(stats)
