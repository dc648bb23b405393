"""The OpenAI-compatible HTTP listener: aiohttp in the daemon's own event loop.

    client --HTTP/JSON--> OpenAIServer._call (admission, tenant, span, metrics, errors)
        --> translate.to_call (JSON -> GenerationRequests) --> tenants.bind --> engine.generate
        --> merged outputs --> one JSON object, or server-sent events ending `data: [DONE]`

The boundary is the gRPC one, called rather than copied: `Admission.check` (drain,
readiness, bearer token), the same `Tenant.admit`/`release` and `tenants.CURRENT`, the same
in-flight count (so a drain waits for live SSE streams), the same RPC metrics with the HTTP
route as the method label, and the exception -> status table of `daemon/errors.py`. Every
request reaches the engine through `tenants.bind`, so the tenant's token budget is charged
as the engine uses tokens, as for gRPC. A client that goes away cancels its handler
(aiohttp's handler cancellation), which closes its engine streams within one step.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import ssl
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping

import grpc
import structlog
from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from daemon import errors, metrics, tenants
from daemon.config import OpenAIConfig, SecurityConfig
from daemon.errors import shorten
from daemon.interceptors import Admission
from daemon.openai import errors as http_errors
from daemon.openai.translate import Answer, Call, to_call
from daemon.validation import Bounds
from engines.errors import DeadlineExceeded, GalacticError, InvalidArgument, NotFound, Unavailable
from engines.llm.types import FinalOutput, FinishReason, TokenChunk

log = structlog.get_logger("galacticd.openai")
tracer = trace.get_tracer("galacticd")

# Seconds aiohttp gives handlers still running when the listener closes. It closes after
# the drain's grace and after the engines stopped, so what is left is writing last bytes.
_CLOSE_TIMEOUT_S = 2.0
_DONE = b"data: [DONE]\n\n"


class _ClientGone(Exception):
    """A write found the client's connection closed; `response` is the one it was writing."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__("client disconnected")
        self.response = response


class _StreamFailed(Exception):
    """A stream ended with an error event after its 200: `response` is sent, `error` is
    what the call is counted and logged as."""

    def __init__(self, response: web.StreamResponse, error: Exception) -> None:
        super().__init__(str(error))
        self.response, self.error = response, error


class OpenAIServer:
    """Routes and the boundary of the OpenAI-compatible API over the LLM engines."""

    def __init__(self, config: OpenAIConfig, security: SecurityConfig, llms: Mapping[str, Any],
                 admission: Admission, bounds: Bounds) -> None:
        self._config = config
        self._security = security
        self._llms = llms  # name -> LLM engine (those behind galactic.v1.Generation)
        self._admission = admission
        self._bounds = bounds
        self._runner: web.AppRunner | None = None
        self._created = int(time.time())  # `created` of the base models
        self.port = 0

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> int:
        """Bind and serve; returns the bound port. Calls before the daemon is ready get 503."""
        app = web.Application(client_max_size=self._config.max_body_bytes, middlewares=[_json_http_errors])
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model}", self._model)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        # handler_cancellation: a client that disconnects cancels its handler at once (and so
        # its engine requests), not only at the next write.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                                     shutdown_timeout=_CLOSE_TIMEOUT_S)
        await self._runner.setup()
        host, _, port = self._config.listen.rpartition(":")
        site = web.TCPSite(self._runner, host.strip("[]"), int(port), ssl_context=self._ssl_context())
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _ssl_context(self) -> ssl.SSLContext | None:
        sec = self._security
        if not sec.tls_cert:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(sec.tls_cert, sec.tls_key)
        if sec.tls_client_ca:  # mutual TLS, as on the gRPC port
            ctx.load_verify_locations(cafile=sec.tls_client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    # ---- routes ----------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.StreamResponse:
        async def work(span) -> web.StreamResponse:
            return web.json_response({"object": "list", "data": await self._model_cards()})
        return await self._call(request, "GET /v1/models", work, uses_tokens=False)

    async def _model(self, request: web.Request) -> web.StreamResponse:
        async def work(span) -> web.StreamResponse:
            name = request.match_info["model"]
            for card in await self._model_cards():
                if card["id"] == name:
                    return web.json_response(card)
            raise self._unknown(name)
        return await self._call(request, "GET /v1/models/{model}", work, uses_tokens=False)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._call(request, "POST /v1/completions",
                                lambda span: self._generate(request, "completions", span), uses_tokens=True)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._call(request, "POST /v1/chat/completions",
                                lambda span: self._generate(request, "chat", span), uses_tokens=True)

    async def _model_cards(self) -> list[dict[str, Any]]:
        """Every base model, then its adapters with `parent` naming it (as vLLM lists them):
        the loaded ones, and those a request would load on demand (directories under
        adapters.root; `root` is the directory, `created` the listing's time). A name is
        listed once, under the model that `_resolve` picks for it."""
        cards: list[dict[str, Any]] = []
        seen = set(self._llms)
        for name, engine in self._llms.items():
            info = engine.info()
            cards.append({"id": name, "object": "model", "created": self._created, "owned_by": "galactic",
                          "root": info.version, "parent": None})
            for a in engine.list_adapters():
                if a.name not in seen:
                    seen.add(a.name)
                    cards.append({"id": a.name, "object": "model", "created": int(a.loaded_at),
                                  "owned_by": "galactic", "root": a.path, "parent": name})
        for name, engine in self._llms.items():  # after every loaded one: `_resolve` prefers those
            root = engine.config.adapters.resolved_root()
            for adapter in await engine.resolvable_adapters():
                if adapter not in seen:
                    seen.add(adapter)
                    cards.append({"id": adapter, "object": "model", "created": int(time.time()),
                                  "owned_by": "galactic", "root": str(root / adapter), "parent": name})
        return cards

    def _unknown(self, name: str) -> NotFound:
        return NotFound(f"unknown model {shorten(name, self._bounds.limits.max_echo_chars)!r} "
                        "(GET /v1/models lists base models and adapters)", field="model")

    def _resolve(self, body: Any) -> tuple[Any, str | None]:
        """The engine and adapter that the body's `model` names."""
        name = body.get("model") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            raise InvalidArgument("expected the name of a model (GET /v1/models)", field="model")
        self._bounds.check_value(name, "name", "model")
        if name in self._llms:
            return self._llms[name], None
        for engine in self._llms.values():
            if any(a.name == name for a in engine.list_adapters()):
                return engine, name
        for engine in self._llms.values():  # not loaded: one that would load it on demand
            if engine.resolves_adapter(name):
                return engine, name
        raise self._unknown(name)

    # ---- generation ------------------------------------------------------------------

    async def _generate(self, request: web.Request, kind: str, span) -> web.StreamResponse:
        body = await self._body(request)
        engine, adapter = self._resolve(body)
        call = to_call(kind, body, adapter, self._bounds, self._config.max_choices)
        span.set_attribute("galactic.model", call.model)
        span.set_attribute("galactic.choices", len(call.requests))
        streams = []
        try:
            trace_context = otel_context.get_current()
            for req in call.requests:
                req = dataclasses.replace(req, trace_context=trace_context)
                streams.append(engine.generate(tenants.bind(req)))
            # A request may wait before it is queued (its schema compiling, its adapter
            # loading): its errors come here, before any output, naming the OpenAI parameter.
            if len(streams) == 1:  # the common case, without gather's task and its loop turns
                await streams[0].queued()
            else:
                await asyncio.gather(*(stream.queued() for stream in streams))
        except GalacticError as exc:
            for stream in streams:
                stream.close()
            exc.field = call.param_of(exc.field)
            raise
        answer = Answer(call, lambda token: engine.tokenizer.decode([token]))
        try:
            if call.stream:
                return await self._stream(request, answer, streams)
            return await self._whole(answer, streams)
        finally:
            for stream in streams:
                stream.close()

    async def _whole(self, answer: Answer, streams: list) -> web.Response:
        n = len(streams)
        texts: dict[int, str] = {i: "" for i in range(n)}
        ids: dict[int, list[int]] = {i: [] for i in range(n)}
        logprobs: dict[int, list[float]] = {i: [] for i in range(n)}
        finals: dict[int, FinalOutput] = {}
        async with contextlib.aclosing(_merged(streams)) as items:
            async for i, item in items:
                if isinstance(item, TokenChunk):
                    texts[i] += item.text
                    ids[i].extend(item.token_ids)
                    logprobs[i].extend(item.logprobs or ())
                else:
                    _raise_if_cut_short(item)
                    finals[i] = item
        return web.json_response(answer.whole(texts, ids, logprobs, finals))

    async def _stream(self, request: web.Request, answer: Answer, streams: list) -> web.StreamResponse:
        started: set[int] = set()
        finals: dict[int, FinalOutput] = {}
        chat = answer.call.kind == "chat"
        async with contextlib.aclosing(_merged(streams)) as merged:
            # The 200 waits for the first output: what fails before any token (an adapter
            # that does not load on demand, a full queue, a deadline spent waiting) gets its
            # own status (404, 400, 429...) as a non-streaming call would, instead of an
            # error event after a 200 that the SDK cannot map to its exception types.
            first = await anext(merged)
            if isinstance(first[1], FinalOutput):
                _raise_if_cut_short(first[1])
            resp = _EventStream(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await resp.prepare(request)
            logprobs = answer.call.logprobs
            try:
                async for i, item in _prepend(first, merged):
                    opens = chat and i not in started
                    started.add(i)
                    if isinstance(item, TokenChunk):
                        if item.text and not (opens or logprobs):  # most events: only the text differs
                            await _write(resp, answer.text_event(i, item.text))
                        elif item.text or opens or logprobs:
                            await _send(resp, answer.chunk(i, item, None, opens))
                    else:
                        _raise_if_cut_short(item)
                        finals[i] = item
                        await _send(resp, answer.chunk(i, None, item, opens))
                if answer.call.include_usage:
                    await _send(resp, answer.usage_chunk(finals))
            except (_ClientGone, asyncio.CancelledError):
                raise
            except Exception as exc:  # noqa: BLE001 - after the 200 the error travels as an event
                param = answer.call.param_of(getattr(exc, "field", None))
                await _send(resp, http_errors.error_object(exc, param))
                await _write(resp, _DONE)
                raise _StreamFailed(resp, exc) from exc
        await _write(resp, _DONE)
        return resp

    async def _body(self, request: web.Request) -> Any:
        limit = self._config.max_body_bytes
        if request.content_type != "application/json":
            raise http_errors.NotJSON(f"Content-Type must be application/json, got {shorten(request.content_type)!r}")
        if request.content_length is not None and request.content_length > limit:
            raise http_errors.BodyTooLarge(f"the body ({request.content_length} bytes) is past the limit of {limit}")
        try:
            async with asyncio.timeout(self._config.body_timeout_s):
                raw = await request.read()
        except web.HTTPRequestEntityTooLarge:  # a chunked body that grew past the limit
            raise http_errors.BodyTooLarge(f"the body is past the limit of {limit} bytes") from None
        except TimeoutError:
            raise http_errors.BodyTimeout(
                f"the body did not arrive within {self._config.body_timeout_s:g} s") from None
        try:
            body = json.loads(raw)
            # A lone surrogate ("\ud800") parses, but is no text: refused here as protobuf
            # refuses invalid UTF-8, before a tokenizer meets it.
            json.dumps(body, ensure_ascii=False).encode()
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeError, nesting too deep
            raise errors.MalformedMessage(f"the body is not valid JSON: {shorten(str(exc), 200)}") from None
        return body

    # ---- the boundary ----------------------------------------------------------------

    async def _call(self, request: web.Request, method: str, work: Callable[[Any], Awaitable[web.StreamResponse]],
                    uses_tokens: bool) -> web.StreamResponse:
        """Admission, tenant, span, logs and metrics around `work(span)`; an exception
        becomes OpenAI's error object here and nowhere else."""
        headers = request.headers
        request_id = headers.get("x-request-id", "")[:64] or uuid.uuid4().hex[:16]
        parent = propagate.extract(headers)  # continues the client's W3C traceparent
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        metrics.RPC_REQUESTS.labels(method).inc()
        entered = False
        admitted: tenants.Tenant | None = None
        current = None
        with tracer.start_as_current_span(method, context=parent, kind=SpanKind.SERVER) as span, \
                structlog.contextvars.bound_contextvars(request_id=request_id, method=method):
            span.set_attribute("http.request.method", request.method)
            span.set_attribute("http.route", method.partition(" ")[2])
            span.set_attribute("galactic.request_id", request_id)
            try:
                token = self._admission.check(method, headers.get("Authorization", ""))
                self._admission.enter()
                entered = True
                tenant = self._admission.tenants.get(token) if token else None
                if tenant is not None:
                    tenant.admit(uses_tokens=uses_tokens)
                    admitted = tenant
                    current = tenants.CURRENT.set(tenant)
                    structlog.contextvars.bind_contextvars(tenant=tenant.name)
                response = await work(span)
                span.set_attribute("http.response.status_code", response.status)
                return response
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED  # the client went away (handler cancellation)
                raise
            except _ClientGone as gone:  # ... noticed by a write instead
                code = grpc.StatusCode.CANCELLED
                return gone.response
            except Exception as exc:  # the one place an exception becomes an HTTP status
                failed = exc.error if isinstance(exc, _StreamFailed) else exc
                code = errors.code_for(failed)
                if code is grpc.StatusCode.INTERNAL:
                    log.error("request failed", exc_info=failed)
                else:
                    log.info("request rejected", code=code.name, reason=errors.message_for(failed))
                if isinstance(exc, _StreamFailed):  # its error event is sent
                    return exc.response
                response = http_errors.response(exc, getattr(exc, "field", None))
                span.set_attribute("http.response.status_code", response.status)
                return response
            finally:
                if current is not None:
                    tenants.CURRENT.reset(current)
                if admitted is not None:
                    admitted.release()
                if entered:
                    self._admission.leave()
                elapsed = time.perf_counter() - started
                metrics.RPC_LATENCY.labels(method).observe(elapsed)
                if code is not grpc.StatusCode.OK:
                    metrics.RPC_ERRORS.labels(method, code.name).inc()
                    span.set_status(Status(StatusCode.ERROR, code.name))
                log.debug("request done", code=code.name, ms=round(elapsed * 1e3, 2))


def _raise_if_cut_short(final: FinalOutput) -> None:
    """A request the server ended (drain past its grace, a forced adapter unload, its
    deadline) has no OpenAI finish_reason: it is an error, not a short answer."""
    if final.finish_reason is FinishReason.CANCELLED:
        raise Unavailable("the server cancelled this request (draining, or its adapter was unloaded); retry")
    if final.finish_reason is FinishReason.DEADLINE:
        raise DeadlineExceeded("the request's deadline passed")


class _EventStream(web.StreamResponse):
    """A server-sent event stream whose headers leave with its first event, in one write
    (aiohttp's own Response does so; a StreamResponse sends them at once): a write of their
    own would cost a send here and a wake-up in the client before the first token."""

    _send_headers_immediately = False


async def _merged(streams: list) -> AsyncIterator[tuple[int, Any]]:
    """(choice index, output) from every engine stream as outputs arrive. Leaving early
    (an error, the client gone) cancels the readers; the caller closes the streams."""
    if len(streams) == 1:  # the common case: no task, no queue, between engine and socket
        async for item in streams[0]:
            yield 0, item
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, stream) -> None:
        try:
            async for item in stream:
                queue.put_nowait((i, item, None))
        except Exception as exc:  # noqa: BLE001 - re-raised by the consumer below
            queue.put_nowait((i, None, exc))

    readers = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        finished = 0
        while finished < len(streams):
            i, item, exc = await queue.get()
            if exc is not None:
                raise exc
            finished += isinstance(item, FinalOutput)
            yield i, item
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


async def _prepend(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield first
    async for item in rest:
        yield item


async def _write(resp: web.StreamResponse, data: bytes) -> None:
    try:
        await resp.write(data)
    except ConnectionError:
        raise _ClientGone(resp) from None


async def _send(resp: web.StreamResponse, obj: dict[str, Any]) -> None:
    await _write(resp, b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")


@web.middleware
async def _json_http_errors(request: web.Request, handler) -> web.StreamResponse:
    """The router's own refusals (no such route, wrong method) as OpenAI error objects."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = "not_found_error" if exc.status == 404 else "invalid_request_error"
        body = {"error": {"message": f"{request.method} {shorten(request.path)}: {exc.reason}", "type": kind,
                          "param": None, "code": None}}
        return web.json_response(body, status=exc.status, headers={
            k: v for k, v in exc.headers.items() if k.lower() == "allow"})
