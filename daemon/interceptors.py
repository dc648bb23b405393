"""The boundary every RPC crosses: admission (drain, auth), tracing, logging context,
metrics, and the mapping of domain errors to gRPC status codes.

One interceptor wraps each method handler, whatever its cardinality, so a servicer holds
only translation code: it raises `engines.errors` exceptions and this module turns them
into a status (`daemon/errors.py`), records the code, and logs unexpected failures with
their traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping

import grpc
import structlog
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from daemon import errors, metrics, tenants
from daemon.tenants import Tenant, TenantLimits
from daemon.config import LimitsConfig
from daemon.validation import Bounds
from engines.errors import PermissionDenied, Unavailable

log = structlog.get_logger("galacticd.rpc")
tracer = trace.get_tracer("galacticd")

# Health and reflection answer during drain (health must say NOT_SERVING) and need no token.
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# KServe v2's liveness and readiness probes answer while loading and draining too (ServerReady
# says false meanwhile) and need no token, like health; unlike health they still cross the
# boundary (a message that does not parse is INVALID_ARGUMENT, the call is traced and counted).
PROBES = frozenset({"/inference.GRPCInferenceService/ServerLive", "/inference.GRPCInferenceService/ServerReady"})
# Calls whose LLM tokens count against a tenant's tokens_per_min. KServe's inference calls
# serve the LLM and the tensor models alike and are admitted before their model is known:
# a tenant past its token budget waits for it on either.
TOKEN_METERED = ("/galactic.v1.Generation/", "/inference.GRPCInferenceService/ModelInfer",
                 "/inference.GRPCInferenceService/ModelStreamInfer")
# Calls that change what the daemon serves; with security.admin_keys_file set, only an
# admin token may make them.
ADMIN_MUTATIONS = frozenset({"/galactic.v1.Admin/LoadAdapter", "/galactic.v1.Admin/UnloadAdapter",
                             "/galactic.v1.Admin/ReloadModel"})


class Admission:
    """Shared state of the boundary: in-flight count and the draining flag."""

    def __init__(self, api_keys: frozenset[str] = frozenset(), admin_keys: frozenset[str] = frozenset(),
                 tenants: Mapping[str, tuple[str, TenantLimits]] | None = None) -> None:
        self.admin_keys = admin_keys
        # token -> its Tenant (limits, and the key of fair admission in the LLM scheduler).
        self.tenants = {token: Tenant(name, limits) for token, (name, limits) in (tenants or {}).items()}
        self.draining = False
        # The same fact as an event, for long-lived streams that must notice it (sessions).
        self.drain_started = asyncio.Event()
        # False until every engine has loaded: calls before then get UNAVAILABLE (health
        # says NOT_SERVING meanwhile), never a half-initialised engine.
        self.ready = False
        self.in_flight = 0
        self.api_keys = api_keys
        self._idle = asyncio.Event()
        self._idle.set()

    def start_drain(self) -> None:
        self.draining = True
        self.drain_started.set()

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()
        metrics.RPC_IN_FLIGHT.inc()

    def leave(self) -> None:
        self.in_flight -= 1
        metrics.RPC_IN_FLIGHT.dec()
        if self.in_flight == 0:
            self._idle.set()

    def check(self, method: str, authorization: str) -> str:
        """Drain, readiness and authentication of a call of any protocol (gRPC metadata or
        an HTTP header: `authorization` is the header's value). Returns the caller's bearer
        token ("" if none); raises Unavailable, Unauthenticated or PermissionDenied."""
        if self.draining:
            raise Unavailable("server is draining; retry on another host")
        if not self.ready:
            raise Unavailable("models are still loading; retry shortly")
        if not (self.api_keys or self.admin_keys):
            return ""
        scheme, _, token = authorization.partition(" ")
        token = token if scheme.lower() == "bearer" else ""
        is_admin = bool(token) and _matches(token, self.admin_keys)
        if method in ADMIN_MUTATIONS and self.admin_keys:
            if not is_admin:  # a data-plane token must not load adapters or cancel others' work
                raise PermissionDenied(f"{method} needs an admin token")
            return token
        if self.api_keys and not (is_admin or (token and _matches(token, self.api_keys))):
            raise errors.Unauthenticated("missing or unknown bearer token")
        return token

    async def wait_idle(self, timeout: float) -> bool:
        """True if every admitted call finished within `timeout` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False


def _trace_ids(span) -> dict[str, str]:
    ctx = span.get_span_context()
    return {"trace_id": format(ctx.trace_id, "032x")} if ctx.is_valid else {}


class _Unparsable:
    """What the tolerant deserializer hands on in place of a message that did not parse:
    the call (or the stream, at that frame) then ends with INVALID_ARGUMENT instead of
    gRPC's own UNKNOWN, or an INTERNAL from deep inside a stream reader."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:  # noqa: BLE001 - DecodeError, invalid UTF-8 in a string, ...
            return _Unparsable(exc)
    return parse


def _parsed(message: Any) -> Any:
    if isinstance(message, _Unparsable):
        raise errors.MalformedMessage(f"the request does not parse: {errors.shorten(str(message.error), 200)}")
    return message


async def _parsed_frames(frames: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A stream's frames; one that does not parse ends the reading with MalformedMessage.
    The servicer lets the requests it already holds finish, then the stream ends with it."""
    async for frame in frames:
        yield _parsed(frame)


class BoundaryInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, admission: Admission, bounds: Bounds | None = None) -> None:
        self._admission = admission
        self._bounds = bounds or Bounds(LimitsConfig())
        # method -> (original handler, its wrapper): wrapping builds closures and a new
        # RpcMethodHandler, ~60 us that every call would otherwise pay again. Keyed by
        # method and checked by identity, so it holds one entry per method at most.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or details.method.startswith(EXEMPT_PREFIXES):
            return handler
        cached = self._wrapped.get(details.method)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[details.method] = (handler, self._wrap(details.method, handler))
        return cached[1]

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        parse, out = _tolerant(handler.request_deserializer), handler.response_serializer
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary, streaming=False), parse, out)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(method, handler.stream_unary, streaming=True), parse, out)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream, streaming=False), parse, out)
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream(method, handler.stream_stream, streaming=True), parse, out)

    def _incoming(self, request: Any, streaming: bool) -> Any:
        """The request as the servicer gets it: parsed and, for a unary request, bounded
        (a streaming servicer bounds each request itself, to answer it with an error frame)."""
        if streaming:
            return _parsed_frames(request)
        request = _parsed(request)
        self._bounds.check(request)
        return request

    def _wrap_unary(self, method: str, behavior: Callable[..., Awaitable[Any]], streaming: bool):
        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with self._call(method, context):
                return await behavior(self._incoming(request, streaming), context)
        return unary

    def _wrap_stream(self, method: str, behavior: Callable[..., AsyncIterator[Any]], streaming: bool):
        # A coroutine that writes, not an async generator that yields: a generator the
        # client abandons is finalised later, in another task and another contextvars
        # Context, where closing the span's context fails ("Failed to detach context") and
        # the call is counted OK. Here cancellation arrives in this task, the servicer's
        # generator is closed in it (`aclosing`), and the call is counted CANCELLED.
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> None:
            async with self._call(method, context):
                async with contextlib.aclosing(behavior(self._incoming(request, streaming), context)) as responses:
                    async for response in responses:
                        await context.write(response)
        return stream

    @contextlib.asynccontextmanager
    async def _call(self, method: str, context: grpc.aio.ServicerContext):
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        token = await self._admit(method, metadata, context)
        tenant = self._admission.tenants.get(token) if token else None
        request_id = metadata.get("x-request-id", "")[:64] or uuid.uuid4().hex[:16]
        parent = propagate.extract(metadata)  # continues the client's W3C traceparent
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        self._admission.enter()
        metrics.RPC_REQUESTS.labels(method).inc()
        admitted: Tenant | None = None
        with tracer.start_as_current_span(method, context=parent, kind=SpanKind.SERVER) as span, \
                structlog.contextvars.bound_contextvars(request_id=request_id, method=method, **_trace_ids(span)):
            span.set_attribute("rpc.system", "grpc")
            span.set_attribute("galactic.request_id", request_id)
            try:
                if tenant is not None:
                    tenant.admit(uses_tokens=method.startswith(TOKEN_METERED))
                    admitted = tenant
                    tenants.CURRENT.set(tenant)  # this call's own task: never seen by another call
                    structlog.contextvars.bind_contextvars(tenant=tenant.name)
                yield
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except asyncio.CancelledError:
                # The client cancelled or went away, or its deadline passed.
                remaining = context.time_remaining()
                code = (grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0
                        else grpc.StatusCode.CANCELLED)
                raise
            except Exception as exc:  # the one place a domain error becomes a status
                code = errors.code_for(exc)
                if code is grpc.StatusCode.INTERNAL:
                    log.exception("rpc failed")
                elif isinstance(exc, errors.MalformedMessage):
                    log.warning("unparsable message", code=code.name, reason=errors.message_for(exc))
                else:
                    log.info("rpc rejected", code=code.name, reason=errors.message_for(exc))
                await context.abort(code, errors.message_for(exc), errors.trailing_metadata(exc))
            finally:
                elapsed = time.perf_counter() - start
                if admitted is not None:
                    admitted.release()
                self._admission.leave()
                metrics.RPC_LATENCY.labels(method).observe(elapsed)
                if code is not grpc.StatusCode.OK:
                    metrics.RPC_ERRORS.labels(method, code.name).inc()
                    span.set_status(Status(StatusCode.ERROR, code.name))
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                log.debug("rpc done", code=code.name, ms=round(elapsed * 1e3, 2))

    async def _admit(self, method: str, metadata: dict[str, str], context) -> str:
        """Drain, readiness and authentication (`Admission.check`), as a gRPC status."""
        if method in PROBES:
            return ""
        try:
            return self._admission.check(method, metadata.get("authorization", ""))
        except (errors.Unauthenticated, PermissionDenied, Unavailable) as exc:
            code = errors.code_for(exc)
            metrics.RPC_ERRORS.labels(method, code.name).inc()
            await context.abort(code, errors.message_for(exc))


def _matches(token: str, keys: frozenset[str]) -> bool:
    # compare_digest against every key: the time taken does not reveal which one was close.
    return any([hmac.compare_digest(token, key) for key in keys])
