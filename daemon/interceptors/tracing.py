"""Tracing: one server span per call, continuing the caller's W3C `traceparent`, and the
log context (request id, method, trace id) every log line of the call carries."""

from __future__ import annotations

import contextlib
import uuid

import grpc
import structlog
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from daemon.interceptors.base import Around, on_end

tracer = trace.get_tracer("galacticd")


def _trace_ids(span) -> dict[str, str]:
    ctx = span.get_span_context()
    return {"trace_id": format(ctx.trace_id, "032x")} if ctx.is_valid else {}


class TracingInterceptor(Around):
    @contextlib.asynccontextmanager
    async def around(self, method: str, context: grpc.aio.ServicerContext):
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        request_id = metadata.get("x-request-id", "")[:64] or uuid.uuid4().hex[:16]
        parent = propagate.extract(metadata)
        with tracer.start_as_current_span(method, context=parent, kind=SpanKind.SERVER) as span, \
                structlog.contextvars.bound_contextvars(request_id=request_id, method=method, **_trace_ids(span)):
            span.set_attribute("rpc.system", "grpc")
            span.set_attribute("galactic.request_id", request_id)
            with on_end(context, lambda code: _record(span, code)):
                yield


def _record(span, code: grpc.StatusCode) -> None:
    if code is not grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.set_attribute("rpc.grpc.status_code", code.value[0])
