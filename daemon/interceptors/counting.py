"""Counting: calls in flight (what the drain waits for), calls started, their latency, and
the ones that ended with a non-OK status, by code."""

from __future__ import annotations

import contextlib
import time

import grpc
import structlog

from daemon import metrics
from daemon.interceptors.admission import Admission
from daemon.interceptors.base import Around, ended_with

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
        failure: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            failure = exc
            raise
        finally:
            elapsed = time.perf_counter() - start
            self._admission.leave()
            metrics.RPC_LATENCY.labels(method).observe(elapsed)
            code = ended_with(failure, context)
            if code is not grpc.StatusCode.OK:
                metrics.RPC_ERRORS.labels(method, code.name).inc()
            log.debug("rpc done", code=code.name, ms=round(elapsed * 1e3, 2))
