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
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from galactic.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    generation_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    tensor_pb2,
)

from .errors import DeadlineExceeded, Internal, from_rpc_error
from .generation import Chunk, Final, build_generate_request, chunk_from_pb, final_from_pb
from .session import AsyncSession, SessionRequest
from .streams import AsyncInferStream, AsyncPlanStream

__all__ = [
    "AsyncClient",
    "AsyncSession",
    "SessionRequest",
    "AsyncPlanStream",
    "AsyncInferStream",
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
_PLAN_STREAM = "/galactic.v1.Coordination/PlanStream"


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

    async def wait_ready(self, timeout: float | None = None, *, service: str = "") -> None:
        """Wait until the daemon reports `service` (default: the whole server) SERVING.

        Uses the health Watch stream, so it wakes on the status change rather than polling;
        a daemon still loading its models answers NOT_SERVING until it is ready.
        DeadlineExceeded if that does not happen in time.
        """
        async def watch() -> None:
            await self._channel.channel_ready()
            stub = health_pb2_grpc.HealthStub(self._channel)
            async for resp in stub.Watch(health_pb2.HealthCheckRequest(service=service)):
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return

        try:
            await asyncio.wait_for(watch(), self._deadline(timeout))
        except TimeoutError:
            raise DeadlineExceeded(f"{self.target} not serving {service or 'its models'} in time") from None
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

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
        logprobs, priority, ignore_eos, and one constraint of json_schema, json_object, regex,
        grammar). Leaving the loop early cancels the call, which frees the
        request's batch slot on the daemon.
        """
        request = build_generate_request(prompt, **params)
        call = self._generation.Generate(request, timeout=self._deadline(timeout), metadata=self.metadata)
        try:
            async for response in call:
                if response.HasField("tokens"):
                    yield chunk_from_pb(response.tokens)
                elif response.HasField("final"):
                    yield final_from_pb(response.final)
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
            raise Internal("stream ended without a Final frame")
        return "".join(parts), final

    def session(self, *, timeout: float | None = None) -> AsyncSession:
        """A bidi Session multiplexing many requests; use as `async with client.session() as s`.

        The session itself has no deadline unless `timeout` is given (it may live long);
        each submitted request gets the client's default timeout unless it names its own.
        """
        return AsyncSession(
            lambda: self._generation.Session(timeout=timeout, metadata=self.metadata),
            default_timeout_ms=int(self.timeout * 1000),
        )

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

    def infer_stream(self, *, timeout: float | None = None) -> AsyncInferStream:
        """Many Infer calls over one InferStream; use as `async with client.infer_stream() as s`.

        The stream has no deadline unless `timeout` is given (it may live long)."""
        return AsyncInferStream(lambda: self._inference.InferStream(timeout=timeout, metadata=self.metadata))

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

    def coordinate_stream(
        self,
        *,
        time_unix: float,
        observatories: Sequence[Any] = (),
        targets: Sequence[Any] = (),
        model: str = "",
        window_s: float | None = None,
        snr_required: float | None = None,
        coalesce_ms: float | None = None,
        full_plan_every_frame: bool = False,
        protocol_version: int = 1,
        timeout: float | None = None,
    ) -> AsyncPlanStream:
        """A standing plan on the daemon (Coordination.PlanStream); use as
        `async with client.coordinate_stream(time_unix=t, observatories=obs) as plan:`.

        Entering sends the PlanOpen (`observatories` and `targets` are coordination_pb2
        Observatory / Target messages); `await plan.next()` returns each new plan as a
        PlanUpdate diff. The stream has no deadline unless `timeout` is given.
        """
        coordination_pb2 = importlib.import_module("galactic.v1.coordination_pb2")
        open_event = coordination_pb2.PlanOpen(
            protocol_version=protocol_version, model=model, time_unix=time_unix, observatories=observatories,
            targets=targets, full_plan_every_frame=full_plan_every_frame)
        for name, value in (("window_s", window_s), ("snr_required", snr_required), ("coalesce_ms", coalesce_ms)):
            if value is not None:
                setattr(open_event, name, value)
        return self.plan_stream(open_event, timeout=timeout)

    def plan_stream(self, open_event, *, timeout: float | None = None) -> AsyncPlanStream:
        """coordinate_stream() with a ready-made PlanOpen message."""
        coordination_pb2 = importlib.import_module("galactic.v1.coordination_pb2")
        method = self._channel.stream_stream(
            _PLAN_STREAM,
            request_serializer=coordination_pb2.PlanEvent.SerializeToString,
            response_deserializer=coordination_pb2.PlanFrame.FromString,
        )
        return AsyncPlanStream(lambda: method(timeout=timeout, metadata=self.metadata), open_event)

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
        """The adapters loaded on `model` (`pinned` = by LoadAdapter, else on demand)."""
        return list((await self.adapter_listing(model=model, timeout=timeout)).adapters)

    async def adapter_listing(self, *, model: str = "", timeout: float | None = None) -> admin_pb2.ListAdaptersResponse:
        """ListAdapters whole: the loaded adapters (`adapters`) and the names a request may
        use without LoadAdapter, loaded on first use (`resolvable`)."""
        return await self._unary(self._admin.ListAdapters, admin_pb2.ListAdaptersRequest(model=model), timeout)

    async def reload_model(self, name: str, path: str, *, timeout: float | None = None) -> admin_pb2.ModelInfo:
        """Admin.ReloadModel: swap in the checkpoint at `path` (on the daemon's host) without a
        restart. A bad checkpoint raises (InvalidArgument, FailedPrecondition, NotFound) and
        the daemon keeps the old one. Needs an admin token where the daemon requires one."""
        request = admin_pb2.ReloadModelRequest(name=name, path=path)
        return await self._unary(self._admin.ReloadModel, request, timeout)

    async def stats(self, *, timeout: float | None = None) -> admin_pb2.GetStatsResponse:
        return await self._unary(self._admin.GetStats, admin_pb2.GetStatsRequest(), timeout)

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """grpc.health.v1 status of `service` ("" is the whole daemon): "SERVING", ..."""
        request = health_pb2.HealthCheckRequest(service=service)
        response = await self._unary(self._health.Check, request, timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
