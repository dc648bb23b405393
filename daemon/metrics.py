"""Prometheus metrics for the RPC layer, and the /metrics HTTP endpoint.

Metric objects are created once at import (prometheus_client's default registry is process
wide); engines define their own (e.g. `engines/llm/metrics.py`). Engine gauges that only the
engine knows (queue depth, running requests, memory) are read at scrape time from each
engine's `stats()` by `EngineStatsCollector`, so they are never stale.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Callable, Iterable

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

RPC_REQUESTS = Counter("galactic_rpc_requests", "RPCs started", ["method"])
RPC_ERRORS = Counter("galactic_rpc_errors", "RPCs that ended with a non-OK status", ["method", "code"])
RPC_IN_FLIGHT = Gauge("galactic_rpc_in_flight", "RPCs being handled now")
RPC_LATENCY = Histogram(
    "galactic_rpc_latency_seconds", "Wall time of an RPC, start to last message", ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)


class EngineStatsCollector(Collector):
    """Exposes every engine's `stats()` as `galactic_engine_<name>{model=...}` gauges,
    plus CUDA memory when torch has already been imported with CUDA available."""

    def __init__(self, engines: Callable[[], Iterable], loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._engines = engines
        self._loop = loop

    def collect(self):
        if self._loop is not None:  # leaks show here first (the soak reads it after its run)
            tasks = GaugeMetricFamily("galactic_asyncio_tasks", "asyncio tasks alive on the daemon's loop")
            tasks.add_metric([], float(len(asyncio.all_tasks(self._loop))))
            yield tasks
        families: dict[str, GaugeMetricFamily] = {}
        for engine in self._engines():
            for key, value in engine.stats().items():
                name = "galactic_engine_" + "".join(c if c.isalnum() else "_" for c in key)
                fam = families.setdefault(name, GaugeMetricFamily(name, f"engine stat {key}", labels=["model"]))
                fam.add_metric([engine.name], float(value))
        yield from families.values()
        torch = sys.modules.get("torch")  # never import torch just to report on it
        if torch is not None and torch.cuda.is_available():
            gpu = GaugeMetricFamily("galactic_gpu_memory_bytes", "CUDA memory allocated by this process", labels=["device"])
            peak = GaugeMetricFamily("galactic_gpu_memory_peak_bytes", "Peak CUDA memory allocated", labels=["device"])
            for i in range(torch.cuda.device_count()):
                gpu.add_metric([f"cuda:{i}"], float(torch.cuda.memory_allocated(i)))
                peak.add_metric([f"cuda:{i}"], float(torch.cuda.max_memory_allocated(i)))
            yield gpu
            yield peak


class MetricsEndpoint:
    """The /metrics HTTP server on its own thread, registered with one engine collector."""

    def __init__(self, listen: str, engines: Callable[[], Iterable],
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._collector = EngineStatsCollector(engines, loop)
        self._server = self._thread = None
        self.port = 0
        if listen:
            # Registered only when served: the registry is process-wide, and a second daemon
            # in one process (tests, embedding) without an endpoint must not collide with it.
            host, _, port = listen.rpartition(":")
            self._server, self._thread = start_http_server(int(port), addr=host)
            self.port = self._server.server_port
            REGISTRY.register(self._collector)

    def close(self) -> None:
        if self._server is not None:
            REGISTRY.unregister(self._collector)
            self._server.shutdown()
            self._server.server_close()
