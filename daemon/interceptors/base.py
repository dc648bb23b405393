"""What every interceptor of the boundary shares: wrapping a method handler of any
cardinality in one async context manager per call, and the status a call ended with."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncContextManager, Callable, Iterator

import grpc

# Health and reflection answer during drain (health must say NOT_SERVING), need no token,
# and are not counted or traced: they pass every interceptor untouched.
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class Around(grpc.aio.ServerInterceptor):
    """Runs each call of a method inside `around(method, context)`. Subclasses may also
    replace the request deserializer (`deserializer`) or the request (`incoming`)."""

    def __init__(self) -> None:
        # method -> (handler, its wrapper): wrapping builds closures and a new handler,
        # ~60 us a call would otherwise pay again. Checked by identity: one entry a method.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def around(self, method: str, context: grpc.aio.ServicerContext) -> AsyncContextManager[None]:
        raise NotImplementedError

    def deserializer(self, parse: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
        return parse

    def incoming(self, request: Any, streaming: bool) -> Any:
        return request

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or details.method.startswith(EXEMPT_PREFIXES):
            return handler
        cached = self._wrapped.get(details.method)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[details.method] = (handler, self._wrap(details.method, handler))
        return cached[1]

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        parse, out = self.deserializer(handler.request_deserializer), handler.response_serializer
        for kind, make in (("unary_unary", grpc.unary_unary_rpc_method_handler),
                           ("stream_unary", grpc.stream_unary_rpc_method_handler),
                           ("unary_stream", grpc.unary_stream_rpc_method_handler),
                           ("stream_stream", grpc.stream_stream_rpc_method_handler)):
            behavior = getattr(handler, kind)
            if behavior is not None:
                return make(self._call(method, behavior, streaming=kind.startswith("stream")), parse, out)
        raise AssertionError(f"{method}: a handler with no behavior")

    def _call(self, method: str, behavior: Callable[..., Any], streaming: bool):
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with self.around(method, context):
                result = behavior(self.incoming(request, streaming), context)
                if not hasattr(result, "__aiter__"):
                    return await result  # a response, or an inner interceptor's writing call
                # A servicer's stream of responses, written here rather than yielded on: a
                # generator the client abandons is finalised later, in another task and
                # contextvars Context, where closing the span's context fails ("Failed to
                # detach context") and the call is counted OK. Here cancellation arrives in
                # this task, the generator is closed in it, and the call is counted CANCELLED.
                async with contextlib.aclosing(result) as responses:
                    async for response in responses:
                        await context.write(response)
                return None
        return call


@contextlib.contextmanager
def on_end(context: grpc.aio.ServicerContext, then: Callable[[grpc.StatusCode], None]) -> Iterator[None]:
    """Run the block, then `then(code)` with the status the call ended with, however it ended."""
    failure: BaseException | None = None
    try:
        yield
    except BaseException as exc:
        failure = exc
        raise
    finally:
        then(ended_with(failure, context))


def ended_with(exc: BaseException | None, context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The status a call ended with, seen from outside the error interceptor: OK, the code
    it aborted with, CANCELLED or DEADLINE_EXCEEDED for a call the client left."""
    if exc is None:
        return grpc.StatusCode.OK
    if isinstance(exc, grpc.aio.AbortError):
        return context.code() or grpc.StatusCode.UNKNOWN
    if isinstance(exc, asyncio.CancelledError):
        remaining = context.time_remaining()
        return grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN
