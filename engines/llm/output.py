"""Output handling: turns the runner's sampled tokens into each request's stream.

Per request a `RequestOutput` holds the stream, the incremental decoder (text, stop
strings), tracing spans and timings. `OutputProcessor.emit` applies one sampled token and
says whether it ended the request (EOS, length, stop string); `finish` sends the single
`FinalOutput`; `fail` ends the stream with an exception. Stream contract: any number of
`TokenChunk`s, then exactly one `FinalOutput` (or one exception).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace

from engines.llm import metrics as m
from engines.llm.types import FinalOutput, FinishReason, Timings, TokenChunk

tracer = trace.get_tracer("engines.llm.engine")


@dataclass(eq=False)
class RequestOutput:
    """The output side of one request (owned by the worker thread once queued)."""

    stream: Any  # ResultStream[TokenChunk | FinalOutput]
    decoder: Any  # IncrementalDecoder
    adapter: Any  # the registry's Adapter, or None
    span: Any  # the request's OpenTelemetry span
    queue_span: Any
    t_enqueue: float
    prefill_span: Any = None
    t_admit: float | None = None
    t_first: float | None = None
    t_last: float | None = None
    generated: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens found in the prefix cache on admission
    meter: Any = None  # GenerationRequest.meter: charged each sampled token


@dataclass
class OutputProcessor:
    eos: set[int]
    metrics: m.ModelMetrics
    counters: dict[str, float] = field(default_factory=dict)

    def admitted(self, out: RequestOutput, now: float, cached: int = 0) -> None:
        out.t_admit = now
        out.cached_tokens = cached
        out.queue_span.end()
        self.metrics.queue.observe(now - out.t_enqueue)
        out.prefill_span = tracer.start_span("llm.prefill", context=trace.set_span_in_context(out.span))

    def emit(self, out: RequestOutput, params: Any, token: int, logprob: float | None, first: bool,
             now: float) -> FinishReason | None:
        """Stream one sampled token; returns why the request ended, or None."""
        if first:
            out.prefill_span.set_attribute("llm.prompt_tokens", out.prompt_tokens)
            out.prefill_span.end()
            self.counters["prompt_tokens_total"] += out.prompt_tokens
            self.metrics.prompt.inc(out.prompt_tokens)
        if out.t_first is None:
            out.t_first = now
            out.span.add_event("first_token")
            self.metrics.ttft.observe(now - out.t_enqueue)
        else:
            self.metrics.itl.observe(now - out.t_last)
        out.t_last = now
        out.generated += 1
        if out.meter is not None:
            out.meter(1)
        self.counters["generated_tokens_total"] += 1
        self.metrics.generated.inc()
        reason = None
        if token in self.eos and not params.ignore_eos:
            text, reason = out.decoder.flush(), FinishReason.EOS
        else:
            text = out.decoder.push(token)
            if out.decoder.stopped:
                reason = FinishReason.STOP_SEQUENCE
            elif out.generated >= params.max_new_tokens:
                text, reason = text + out.decoder.flush(), FinishReason.LENGTH
        out.stream.put(TokenChunk((token,), text, (logprob,) if params.logprobs else None))
        return reason

    def finish(self, out: RequestOutput, reason: FinishReason) -> None:
        """Send the request's FinalOutput and close its stream. The engine has already
        removed the request from its books: the consumer may act on the final at once."""
        now = time.monotonic()
        if reason is FinishReason.DEADLINE:
            tail = out.decoder.flush()
            if tail:
                out.stream.put(TokenChunk((), tail))
        if out.t_admit is None:
            out.queue_span.end()
        elif out.prefill_span is not None and out.t_first is None:
            out.prefill_span.end()
        out.span.set_attribute("llm.finish_reason", reason.value)
        out.span.set_attribute("llm.completion_tokens", out.generated)
        out.span.end()
        out.stream.put(self._final(out, reason, now))
        out.stream.close()
        self.counters["requests_finished_total"] += 1
        self.metrics.finished(reason.value)
        self.metrics.e2e.observe(now - out.t_enqueue)

    def fail(self, out: RequestOutput, exc: BaseException) -> None:
        if out.t_admit is None:
            out.queue_span.end()
        out.span.record_exception(exc)
        out.span.end()
        out.stream.fail(exc)
        self.counters["requests_failed_total"] += 1

    @staticmethod
    def _final(out: RequestOutput, reason: FinishReason, now: float) -> FinalOutput:
        def ms(t: float | None) -> float:
            return 0.0 if t is None else (t - out.t_enqueue) * 1000.0

        return FinalOutput(reason, out.prompt_tokens, out.generated,
                           Timings(queue_ms=ms(out.t_admit), ttft_ms=ms(out.t_first), total_ms=ms(now)),
                           cached_prompt_tokens=out.cached_tokens)
