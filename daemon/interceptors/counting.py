"""Counting: calls in flight (what the drain waits for), calls started, their latency, and
the ones that ended with a non-OK status, by code."""

from __future__ import annotations

import contextlib
import time

import grpc
import structlog

from daemon import metrics
from daemon.interceptors.admission import Admission
from daemon.interceptors.base import Around, on_end

log = structlog.get_logger("galacticd.rpc")


class CountingInterceptor(Around):
    def __init__(self, admission: Admission) -> None:
        super().__init__()
        self._admission = admission

    @contextlib.asynccontextmanager
    async def around(self, method: str, context: grpc.aio.ServicerContext):
        start = time.perf_counter()
        self._admission.enter()
        metrics.RPC_REQUESTS.labels(method).inc()

        def ended(code: grpc.StatusCode) -> None:
            elapsed = time.perf_counter() - start
            self._admission.leave()
            metrics.RPC_LATENCY.labels(method).observe(elapsed)
            if code is not grpc.StatusCode.OK:
                metrics.RPC_ERRORS.labels(method, code.name).inc()
            log.debug("rpc done", code=code.name, ms=round(elapsed * 1e3, 2))
        with on_end(context, ended):
            yield
