"""The daemon's lifecycle: build engines, serve, report health and readiness, drain.

    start():  bind the port (health NOT_SERVING) and the OpenAI HTTP port (503 until
              ready), load every engine on a worker thread while
              systemd's start timeout is extended, start them, mark each service SERVING
              once all engines behind it are ready, then READY=1.
    drain():  STOPPING=1, health NOT_SERVING, new calls UNAVAILABLE (HTTP 503), in-flight
              calls and SSE streams get the grace period, engines stop, the servers stop.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from daemon import registry, shipped
from daemon.config import GalacticConfig
from daemon.interceptors import Admission, chain
from daemon.metrics import MetricsEndpoint
from daemon.systemd import Notifier
from daemon.validation import Bounds
from engines.base import LoadCancelled

log = structlog.get_logger("galacticd")

# How much more start-up time to ask systemd for on each progress report while loading.
_LOAD_EXTENSION_S = 120.0


def _add_generation(server, engines, admission, bounds):
    from galactic.v1 import generation_pb2_grpc
    from daemon.servicers.generation import GenerationServicer
    generation_pb2_grpc.add_GenerationServicer_to_server(
        GenerationServicer(engines, admission.drain_started, bounds), server)


def _add_inference(server, engines, admission, bounds):
    from galactic.v1 import inference_pb2_grpc
    from daemon.servicers.inference import InferenceServicer
    inference_pb2_grpc.add_InferenceServicer_to_server(
        InferenceServicer(engines, bounds.limits.max_tensor_elements, bounds), server)


def _add_coordination(server, engines, admission, bounds):
    from galactic.v1 import coordination_pb2_grpc
    from daemon.servicers.coordination import CoordinationServicer
    coordination_pb2_grpc.add_CoordinationServicer_to_server(CoordinationServicer(engines, bounds), server)


def _add_kserve(server, engines, admission, bounds):
    from inference import grpc_service_pb2_grpc
    from daemon.servicers.kserve import KServeServicer
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(KServeServicer(engines, admission, bounds), server)


# gRPC service -> how to mount it over the engines that back it (ModelInfo.services).
SERVICES: dict[str, Callable] = {
    "galactic.v1.Generation": _add_generation,
    "galactic.v1.Inference": _add_inference,
    "galactic.v1.Coordination": _add_coordination,
    "inference.GRPCInferenceService": _add_kserve,
}
ADMIN = "galactic.v1.Admin"
# KServe v2 / Open Inference Protocol: a second front end over the engines of these services.
KSERVE, KSERVE_OVER = "inference.GRPCInferenceService", ("galactic.v1.Inference", "galactic.v1.Generation")


@dataclass
class Daemon:
    config: GalacticConfig
    env: Mapping[str, str] = field(default_factory=dict)
    port: int = 0
    openai_port: int = 0  # the OpenAI HTTP listener's bound port; 0 when [openai] is off
    engines: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.notifier = Notifier(self.env)
        self.admission = Admission(self.config.security.api_keys(), self.config.security.admin_keys(),
                                   self.config.security.tenants())
        self.health = HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._metrics: MetricsEndpoint | None = None
        self._openai = None  # daemon.openai.app.OpenAIServer, with [openai] enabled
        self._backing: dict[str, dict[str, object]] = {}
        self._stopped = asyncio.Event()
        self._draining = False
        self._cancel_load = False
        self._supervisors: list[asyncio.Task] = []
        self._faulted: set[str] = set()  # engines being restarted

    @property
    def metrics_port(self) -> int:
        return self._metrics.port if self._metrics else 0

    async def start(self) -> None:
        cfg = self.config
        for kind, engine_cfg in cfg.engines.items():
            engine = registry.KINDS[kind].engine_class()(shipped.resolve(kind, engine_cfg))
            self.engines[engine.name] = engine
        for engine in self.engines.values():
            for service in engine.info().services:
                self._backing.setdefault(service, {})[engine.name] = engine
            if set(KSERVE_OVER) & set(engine.info().services):
                self._backing.setdefault(KSERVE, {})[engine.name] = engine

        coordination = cfg.engines.get("coordination")
        bounds = Bounds(cfg.limits, {} if coordination is None else {
            "targets": coordination.max_targets, "observatories": coordination.max_observatories})
        server = grpc.aio.server(
            interceptors=chain(self.admission, bounds),
            options=self._channel_options(),
            maximum_concurrent_rpcs=cfg.server.max_concurrent_rpcs or None,
        )
        for service, engines in self._backing.items():
            SERVICES[service](server, engines, self.admission, bounds)
        from galactic.v1 import admin_pb2_grpc
        from daemon.servicers.admin import AdminServicer
        llms = self._backing.get("galactic.v1.Generation", {})
        admin_pb2_grpc.add_AdminServicer_to_server(
            AdminServicer(self.engines, llms, lambda: self.admission.in_flight), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = [*self._backing, ADMIN, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        if cfg.server.reflection:
            reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server)
        for name in ["", *names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port = self._bind(server)
        for listen in [cfg.server.listen, *([cfg.openai.listen] if cfg.openai.enabled else [])]:
            host = listen.rpartition(":")[0]
            if host not in ("127.0.0.1", "localhost", "::1", "[::1]") and not (cfg.security.tls_cert or self.admission.api_keys):
                log.warning("listening beyond loopback with neither TLS nor bearer tokens: any peer can load "
                            "adapters and cancel requests; set security.api_keys_file or tls_cert", listen=listen)
        self._server = server
        await server.start()
        if cfg.openai.enabled:
            from daemon.openai.app import OpenAIServer
            self._openai = OpenAIServer(cfg.openai, cfg.security, llms, self.admission, bounds)
            self.openai_port = await self._openai.start()
        self._metrics = MetricsEndpoint(cfg.telemetry.metrics_listen, lambda: list(self.engines.values()),
                                        asyncio.get_running_loop())
        self.notifier.start_watchdog()
        log.info("listening", port=self.port, services=names, metrics_port=self.metrics_port,
                 openai_port=self.openai_port)

        await self._load_engines()
        # What exists now (modules, the models' Python objects, tokenizers) lives as long as
        # the process: freeze it out of the collector's reach. Otherwise every full
        # collection walks ~400k objects, a 200-300 ms pause of every thread (measured with
        # the coordination model loaded), which becomes every request's p99.
        gc.collect()
        gc.freeze()
        self.admission.ready = True
        for name in ["", *names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        for engine in self.engines.values():
            self._supervisors.append(asyncio.create_task(self._supervise(engine)))
        self.notifier.ready(f"serving {len(self.engines)} model(s) on port {self.port}")
        log.info("ready", models=list(self.engines))

    async def _load_engines(self) -> None:
        loop = asyncio.get_running_loop()
        for name, engine in self.engines.items():
            started = time.monotonic()

            def progress(phrase: str, name: str = name) -> None:
                # Called from the loading thread: the socket write is thread-safe, and each
                # report buys the load another extension of systemd's start timeout. It is
                # also where a stop requested mid-load reaches the loader (LoadCancelled).
                if self._cancel_load:
                    raise LoadCancelled(f"stop requested while loading {name}")
                self.notifier.extend_timeout(_LOAD_EXTENSION_S, f"loading {name}: {phrase}")
                log.info("loading", model=name, step=phrase)

            progress("starting")
            await asyncio.to_thread(engine.load, progress)
            await engine.start(loop)
            log.info("model ready", model=name, seconds=round(time.monotonic() - started, 2))

    async def _supervise(self, engine) -> None:
        """Event-driven, per engine: when its worker dies or keeps failing steps, the
        services it backs say NOT_SERVING, the engine fails what it held (UNAVAILABLE) and
        restarts, and once a canary request passes they say SERVING again."""
        while True:
            reason = await engine.wait_faulted()
            log.error("engine worker failed; restarting it", model=engine.name, reason=reason[:500])
            self._faulted.add(engine.name)
            await self._update_health()
            delay = 0.1
            while True:
                try:
                    await engine.restart()
                    break
                except Exception as exc:  # noqa: BLE001 - the canary failed: back off, retry
                    log.warning("engine restart failed; retrying", model=engine.name, error=repr(exc)[:500],
                                retry_s=delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            self._faulted.discard(engine.name)
            log.info("engine restarted", model=engine.name)
            await self._update_health()

    async def _update_health(self) -> None:
        if self._draining:
            return  # drain owns health from here on
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        for service, engines in self._backing.items():
            await self.health.set(service, not_serving if self._faulted & set(engines) else serving)
        await self.health.set("", not_serving if self._faulted else serving)

    async def drain(self) -> None:
        """Graceful stop. A second call waits for the first. Returns when all has stopped."""
        if self._draining:
            await self._stopped.wait()
            return
        self._draining = True
        grace = self.config.server.grace_period_s
        deadline = time.monotonic() + grace
        self.notifier.stopping()
        self.admission.start_drain()
        await self.health.enter_graceful_shutdown()
        log.info("draining", in_flight=self.admission.in_flight, grace_s=grace)
        finished = await self.admission.wait_idle(grace)
        if not finished:
            log.warning("grace period over; cancelling in-flight calls", in_flight=self.admission.in_flight)
        for task in self._supervisors:
            task.cancel()
        for engine in self.engines.values():
            await engine.stop(max(0.0, deadline - time.monotonic()))
        if self._server is not None:
            await self._server.stop(0)
        if self._openai is not None:
            await self._openai.close()
        if self._metrics is not None:
            self._metrics.close()
        await self.notifier.stop_watchdog()
        log.info("stopped")
        self._stopped.set()

    async def serve_until_signal(self) -> None:
        """start(), serve until SIGTERM or SIGINT, then drain.

        A signal while models are still loading stops the start-up (systemd's stop timeout
        is shorter than a first-start training run); a failed start drains what it had
        opened (port, metrics endpoint, started engines) before the error propagates.
        """
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        starting = asyncio.create_task(self.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            # The loader runs on a thread that cannot be killed (torch inside must finish
            # cleanly); it stops at its next progress report, seconds away.
            log.info("stop requested while loading; stopping the load")
            self._cancel_load = True
        try:
            await starting
        except LoadCancelled:
            pass
        except BaseException:
            stopping.cancel()
            await self.drain()
            raise
        else:
            await stopping
        await self.drain()

    def _bind(self, server: grpc.aio.Server) -> int:
        sec, listen = self.config.security, self.config.server.listen
        if sec.tls_cert:
            creds = grpc.ssl_server_credentials(
                [(Path(sec.tls_key).read_bytes(), Path(sec.tls_cert).read_bytes())],
                root_certificates=Path(sec.tls_client_ca).read_bytes() if sec.tls_client_ca else None,
                require_client_auth=bool(sec.tls_client_ca))
            port = server.add_secure_port(listen, creds)
        else:
            port = server.add_insecure_port(listen)
        if not port:  # older grpc returns 0 instead of raising
            raise OSError(f"cannot listen on {listen}")
        return port

    def _channel_options(self) -> list[tuple[str, int]]:
        s = self.config.server
        return [
            ("grpc.max_receive_message_length", s.max_receive_message_bytes),
            ("grpc.max_send_message_length", s.max_send_message_bytes),
            ("grpc.keepalive_time_ms", int(s.keepalive_time_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            # gRPC sets SO_REUSEPORT by default on Linux: a second daemon would then share
            # the port silently. Fail loudly instead.
            ("grpc.so_reuseport", 0),
        ]
