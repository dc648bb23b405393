"""asyncio client for the galactic daemon.

One `AsyncClient` owns one `grpc.aio` channel. The channel carries a gRPC service config
that load-balances with `round_robin` over every address of the target and retries
UNAVAILABLE (a daemon restarting or draining) with exponential backoff, so a fleet needs no
proxy: pass `"10.0.0.1:50051,10.0.0.2:50051"` or `"dns:///galactic.internal:50051"`.

Every call carries a deadline (the client's `timeout`, or the call's own `timeout=`); the
daemon turns it into the request's expiry in its scheduler. Every RPC failure is raised as
a typed `GalacticError` (see `errors`).

Generation returns plain dataclasses (`Chunk`, `Final`); admin and coordination calls
return the protobuf messages of the contract.
"""

from __future__ import annotations

import asyncio
import importlib
import ipaddress
import itertools
import json
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from galactic.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    tensor_pb2,
)

from .errors import Cancelled, DeadlineExceeded, GalacticError, from_code, from_rpc_error, from_status

__all__ = [
    "AsyncClient",
    "AsyncSession",
    "SessionRequest",
    "Chunk",
    "Final",
    "resolve_target",
    "service_config",
    "DEFAULT_TARGET",
    "MAX_MESSAGE_BYTES",
]

DEFAULT_TARGET = "127.0.0.1:50051"
# Tensor requests can be large; both directions get the same explicit ceiling instead of
# gRPC's 4 MiB receive default, which would fail a big InferResponse with RESOURCE_EXHAUSTED.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

_SERVICES = (
    "galactic.v1.Generation",
    "galactic.v1.Inference",
    "galactic.v1.Admin",
    "galactic.v1.Coordination",
    "grpc.health.v1.Health",
)
_COORDINATE = "/galactic.v1.Coordination/Coordinate"


def service_config(*, max_attempts: int = 4, initial_backoff_s: float = 0.1, max_backoff_s: float = 2.0) -> str:
    """The channel's service config: round_robin, and retries of UNAVAILABLE.

    gRPC retries a call only while no response message has reached the application, so a
    stream that already delivered tokens is never replayed (no duplicated text).
    """
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [
                {
                    "name": [{"service": service} for service in _SERVICES],
                    "retryPolicy": {
                        "maxAttempts": max_attempts,
                        "initialBackoff": f"{initial_backoff_s}s",
                        "maxBackoff": f"{max_backoff_s}s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
        }
    )


def resolve_target(target: str) -> str:
    """Turn a fleet target into a gRPC target URI.

    "host:port" passes through (gRPC resolves it by DNS); anything with a scheme
    ("dns:///name:port", "ipv4:...", "unix:...") passes through; a comma-separated list of
    literal addresses becomes "ipv4:a:p,b:p" or "ipv6:[a]:p,[b]:p" so round_robin spreads
    calls over all of them. A list of host names cannot be expressed as one URI: publish
    them under one DNS name and use "dns:///name:port".
    """
    target = target.strip()
    if "," not in target:
        return target
    if target.split(":", 1)[0] in {"dns", "ipv4", "ipv6", "unix"}:
        return target
    families = set()
    addresses = []
    for part in (p.strip() for p in target.split(",")):
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"target {part!r}: expected host:port")
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            raise ValueError(
                f"target {part!r}: a list needs literal IP addresses; for host names use dns:///name:port"
            ) from None
        families.add(ip.version)
        addresses.append(f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}")
    if len(families) != 1:
        raise ValueError(f"target {target!r}: cannot mix IPv4 and IPv6 addresses in one list")
    scheme = "ipv6" if families == {6} else "ipv4"
    return f"{scheme}:{','.join(addresses)}"


@dataclass(frozen=True, slots=True)
class Chunk:
    """Newly generated tokens of one request."""

    token_ids: tuple[int, ...]
    text: str
    logprobs: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class Final:
    """The end of one request: why it ended, token counts and the daemon's timings (ms)."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    queue_ms: float
    ttft_ms: float
    total_ms: float


def _chunk(pb: generation_pb2.TokenChunk) -> Chunk:
    return Chunk(tuple(pb.token_ids), pb.text, tuple(pb.logprobs))


def _final(pb: generation_pb2.Final) -> Final:
    return Final(
        finish_reason=generation_pb2.FinishReason.Name(pb.finish_reason),
        prompt_tokens=pb.usage.prompt_tokens,
        completion_tokens=pb.usage.completion_tokens,
        queue_ms=pb.timings.queue_ms,
        ttft_ms=pb.timings.time_to_first_token_ms,
        total_ms=pb.timings.total_ms,
    )


def build_generate_request(
    prompt: str | None = None,
    *,
    messages: Iterable[Mapping[str, str] | tuple[str, str]] | None = None,
    model: str = "",
    adapter: str | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float | None = None,
    seed: int | None = None,
    stop: Sequence[str] = (),
    logprobs: bool = False,
    priority: int = 0,
) -> generation_pb2.GenerateRequest:
    """A GenerateRequest; parameters left None stay unset so the daemon's defaults apply."""
    if (prompt is None) == (messages is None):
        raise ValueError("pass exactly one of prompt or messages")
    request = generation_pb2.GenerateRequest(model=model, logprobs=logprobs, priority=priority)
    if prompt is not None:
        request.prompt = prompt
    else:
        turns = [
            generation_pb2.ChatMessage(role=m["role"], content=m["content"])
            if isinstance(m, Mapping)
            else generation_pb2.ChatMessage(role=m[0], content=m[1])
            for m in messages
        ]
        request.messages.messages.extend(turns)
    if adapter is not None:
        request.adapter = adapter
    sampling = {
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "repetition_penalty": repetition_penalty,
        "seed": seed,
    }
    for name, value in sampling.items():
        if value is not None:
            setattr(request.sampling, name, value)
    if max_new_tokens is not None:
        request.stopping.max_new_tokens = max_new_tokens
    request.stopping.stop.extend(stop)
    return request


class AsyncClient:
    """asyncio client of one daemon or a fleet; use as `async with AsyncClient(...) as c:`.

    `timeout` is the default deadline in seconds of every call; `metadata` is sent with
    every call (e.g. `(("authorization", "Bearer ..."),)`); `credentials` selects a secure
    channel; `options` are extra channel options, applied after (and so overriding) ours.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float = 30.0,
        metadata: Sequence[tuple[str, str]] = (),
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target = resolve_target(target)
        self.timeout = timeout
        self.metadata = tuple(metadata)
        channel_options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", service_config()),
            *options,
        ]
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(self.target, options=channel_options)
        else:
            self._channel = grpc.aio.secure_channel(self.target, credentials, options=channel_options)
        self._generation = generation_pb2_grpc.GenerationStub(self._channel)
        self._inference = inference_pb2_grpc.InferenceStub(self._channel)
        self._admin = admin_pb2_grpc.AdminStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    # -- lifecycle ---------------------------------------------------------------------

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the channel has connected; DeadlineExceeded if it does not in time."""
        try:
            await asyncio.wait_for(self._channel.channel_ready(), self._deadline(timeout))
        except TimeoutError:
            raise DeadlineExceeded(f"channel to {self.target} not ready") from None

    def _deadline(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    async def _unary(self, method, request, timeout: float | None):
        try:
            return await method(request, timeout=self._deadline(timeout), metadata=self.metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    # -- generation --------------------------------------------------------------------

    async def generate(
        self, prompt: str | None = None, *, timeout: float | None = None, **params: Any
    ) -> AsyncIterator[Chunk | Final]:
        """Stream one request: `Chunk`s as tokens are produced, then exactly one `Final`.

        `params` are those of `build_generate_request` (messages, model, adapter,
        max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop,
        logprobs, priority). Leaving the loop early cancels the call, which frees the
        request's batch slot on the daemon.
        """
        request = build_generate_request(prompt, **params)
        call = self._generation.Generate(request, timeout=self._deadline(timeout), metadata=self.metadata)
        try:
            async for response in call:
                if response.HasField("tokens"):
                    yield _chunk(response.tokens)
                elif response.HasField("final"):
                    yield _final(response.final)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()  # no-op once finished; otherwise the daemon would keep generating

    async def generate_text(
        self, prompt: str | None = None, *, timeout: float | None = None, **params: Any
    ) -> tuple[str, Final]:
        """Run one request to the end; returns its whole text and its Final."""
        parts: list[str] = []
        final: Final | None = None
        async for item in self.generate(prompt, timeout=timeout, **params):
            if isinstance(item, Chunk):
                parts.append(item.text)
            else:
                final = item
        if final is None:  # the contract promises one Final; a stream without one is a bug
            raise GalacticError("stream ended without a Final frame", code=grpc.StatusCode.INTERNAL)
        return "".join(parts), final

    def session(self, *, timeout: float | None = None) -> AsyncSession:
        """A bidi Session multiplexing many requests; use as `async with client.session() as s`.

        The session itself has no deadline unless `timeout` is given (it may live long);
        each submitted request gets the client's default timeout unless it names its own.
        """
        return AsyncSession(self, timeout=timeout)

    # -- tensors -----------------------------------------------------------------------

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        version: str = "",
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Named arrays in, named numpy arrays out (needs numpy). Values may also be Tensors."""
        from .tensors import from_tensor, to_tensor

        request = inference_pb2.InferRequest(
            model=model,
            version=version,
            inputs=[
                value if isinstance(value, tensor_pb2.Tensor) else to_tensor(name, value)
                for name, value in inputs.items()
            ],
        )
        response = await self._unary(self._inference.Infer, request, timeout)
        return {tensor.name: from_tensor(tensor) for tensor in response.outputs}

    async def coordinate(self, request, *, timeout: float | None = None):
        """Coordination.Coordinate: a CoordinateRequest message in, a CoordinateResponse out.

        The coordination module is imported on first use, so this client works with stubs
        generated before coordination existed.
        """
        coordination_pb2 = importlib.import_module("galactic.v1.coordination_pb2")
        # The request's own class serialises it; only the response type comes from the module.
        method = self._channel.unary_unary(
            _COORDINATE,
            request_serializer=type(request).SerializeToString,
            response_deserializer=coordination_pb2.CoordinateResponse.FromString,
        )
        return await self._unary(method, request, timeout)

    # -- admin (protobuf messages of admin.proto) -------------------------------------

    async def list_models(self, *, timeout: float | None = None) -> list[admin_pb2.ModelInfo]:
        response = await self._unary(self._admin.ListModels, admin_pb2.ListModelsRequest(), timeout)
        return list(response.models)

    async def get_model(self, name: str, *, timeout: float | None = None) -> admin_pb2.ModelInfo:
        return await self._unary(self._admin.GetModel, admin_pb2.GetModelRequest(name=name), timeout)

    async def load_adapter(
        self, name: str, path: str, *, model: str = "", timeout: float | None = None
    ) -> admin_pb2.AdapterInfo:
        """Hot-load a LoRA adapter directory (under the daemon's adapter root)."""
        request = admin_pb2.LoadAdapterRequest(model=model, name=name, path=path)
        return await self._unary(self._admin.LoadAdapter, request, timeout)

    async def unload_adapter(
        self, name: str, *, model: str = "", force: bool = False, timeout: float | None = None
    ) -> None:
        """Unload an adapter; FailedPrecondition while requests use it, unless `force`."""
        request = admin_pb2.UnloadAdapterRequest(model=model, name=name, force=force)
        await self._unary(self._admin.UnloadAdapter, request, timeout)

    async def list_adapters(self, *, model: str = "", timeout: float | None = None) -> list[admin_pb2.AdapterInfo]:
        response = await self._unary(self._admin.ListAdapters, admin_pb2.ListAdaptersRequest(model=model), timeout)
        return list(response.adapters)

    async def stats(self, *, timeout: float | None = None) -> admin_pb2.GetStatsResponse:
        return await self._unary(self._admin.GetStats, admin_pb2.GetStatsRequest(), timeout)

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """grpc.health.v1 status of `service` ("" is the whole daemon): "SERVING", ..."""
        request = health_pb2.HealthCheckRequest(service=service)
        response = await self._unary(self._health.Check, request, timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


_CLOSED = object()  # queue sentinel: the request ended without a Final (session gone)


class SessionRequest:
    """One request inside a Session: iterate it for its `Chunk`s and its `Final`.

    An Error frame for this request raises its typed exception here; other requests of the
    session are unaffected. `queue_position` is set once the daemon accepts it.
    """

    def __init__(self, session: AsyncSession, request_id: str) -> None:
        self.request_id = request_id
        self.queue_position: int | None = None
        self.final: Final | None = None
        self._session = session
        self._queue: asyncio.Queue = asyncio.Queue()
        self._done = False

    def __aiter__(self) -> SessionRequest:
        return self

    async def __anext__(self) -> Chunk | Final:
        if self._done:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if item is _CLOSED:
            self._done = True
            raise Cancelled("session closed before the request finished", request_id=self.request_id)
        if isinstance(item, Final):
            self._done = True
            self.final = item
        return item

    async def text(self) -> tuple[str, Final]:
        """Consume the rest of the request; returns its text and Final."""
        parts = [item.text async for item in self if isinstance(item, Chunk)]
        assert self.final is not None  # __anext__ stops only after a Final or by raising
        return "".join(parts), self.final

    async def cancel(self) -> None:
        """Ask the daemon to cancel this request; it still ends with a Final (CANCELLED)."""
        await self._session.cancel(self.request_id)


class AsyncSession:
    """A bidi Generation.Session: many requests over one stream, routed by request_id.

    One background task reads server frames and puts each on its request's queue, so a
    slow consumer of one request never blocks the others' frames from being read.
    """

    def __init__(self, client: AsyncClient, *, timeout: float | None = None) -> None:
        self._client = client
        self._timeout = timeout
        self._call = None
        self._reader: asyncio.Task | None = None
        self._requests: dict[str, SessionRequest] = {}
        self._write_lock = asyncio.Lock()  # grpc.aio allows one write in flight at a time
        self._ids = itertools.count(1)
        self._failure: GalacticError | None = None

    async def __aenter__(self) -> AsyncSession:
        self._call = self._client._generation.Session(timeout=self._timeout, metadata=self._client.metadata)
        self._reader = asyncio.create_task(self._read(), name="galactic-session-reader")
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        await self.close(cancel=exc_type is not None or bool(self._requests))

    async def close(self, *, cancel: bool = False) -> None:
        """End the session. With live requests (or `cancel`) the call is cancelled, which
        cancels them on the daemon; otherwise the stream is half-closed and drained."""
        if self._call is None:
            return
        if cancel:
            self._call.cancel()
        else:
            try:
                async with self._write_lock:
                    await self._call.done_writing()
            except grpc.RpcError:
                pass  # the stream already failed; the reader has recorded why
        if self._reader is not None:
            await self._reader

    async def submit(
        self,
        prompt: str | None = None,
        *,
        request_id: str | None = None,
        timeout_ms: int | None = None,
        **params: Any,
    ) -> SessionRequest:
        """Start a request; returns its handle at once (iterate it for the results).

        `timeout_ms` is this request's deadline; None uses the client's default timeout,
        0 the session's own deadline. `params` are those of `AsyncClient.generate`.
        """
        if self._call is None:
            raise RuntimeError("use the session as `async with client.session() as session`")
        if self._failure is not None:
            raise self._failure
        request = build_generate_request(prompt, **params)
        if request_id is None:
            request_id = f"r{next(self._ids)}"
            while request_id in self._requests:
                request_id = f"r{next(self._ids)}"
        elif request_id in self._requests:
            raise ValueError(f"request_id {request_id!r} is already live in this session")
        if timeout_ms is None:
            timeout_ms = int(self._client.timeout * 1000)
        handle = SessionRequest(self, request_id)
        self._requests[request_id] = handle
        frame = generation_pb2.SessionRequest(
            submit=generation_pb2.Submit(request_id=request_id, request=request, timeout_ms=timeout_ms)
        )
        try:
            await self._write(frame)
        except BaseException:
            self._requests.pop(request_id, None)
            raise
        return handle

    async def cancel(self, request_id: str) -> None:
        """Send a Cancel frame for one request; the others keep running."""
        frame = generation_pb2.SessionRequest(cancel=generation_pb2.Cancel(request_id=request_id))
        await self._write(frame)

    async def _write(self, frame: generation_pb2.SessionRequest) -> None:
        try:
            async with self._write_lock:
                await self._call.write(frame)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        except asyncio.InvalidStateError:
            # Writing after the call finished: report why it finished.
            raise self._failure or Cancelled("session is closed") from None

    async def _read(self) -> None:
        try:
            while True:
                frame = await self._call.read()
                if frame is grpc.aio.EOF:
                    break
                self._route(frame)
        except grpc.RpcError as exc:
            self._failure = from_rpc_error(exc)
        except asyncio.CancelledError:
            self._failure = Cancelled("session cancelled")
        finally:
            # Every request still live ends now, or its consumer would wait forever.
            failure = self._failure
            for request_id, handle in self._requests.items():
                handle._queue.put_nowait(
                    _CLOSED if failure is None else from_code(failure.code, failure.details, request_id=request_id)
                )
            self._requests.clear()

    def _route(self, frame: generation_pb2.SessionResponse) -> None:
        handle = self._requests.get(frame.request_id)
        if handle is None:
            return  # a late frame of a request already ended; nothing waits for it
        kind = frame.WhichOneof("frame")
        if kind == "accepted":
            handle.queue_position = frame.accepted.queue_position
        elif kind == "tokens":
            handle._queue.put_nowait(_chunk(frame.tokens))
        elif kind == "final":
            del self._requests[frame.request_id]
            handle._queue.put_nowait(_final(frame.final))
        elif kind == "error":
            del self._requests[frame.request_id]
            handle._queue.put_nowait(from_status(frame.error, request_id=frame.request_id))
