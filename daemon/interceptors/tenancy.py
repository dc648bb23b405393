"""Tenancy: the caller's tenant (its bearer token's line in the keys file) is admitted
against its limits (concurrency, calls per second, LLM tokens per minute) and becomes
`tenants.CURRENT` for the call, which the servicers stamp on the engine requests they make."""

from __future__ import annotations

import contextlib

import grpc
import structlog

from daemon import tenants
from daemon.interceptors.admission import TOKEN, Admission
from daemon.interceptors.base import Around

# Calls whose LLM tokens count against a tenant's tokens_per_min. KServe's inference calls
# serve the LLM and the tensor models alike and are admitted before their model is known:
# a tenant past its token budget waits for it on either.
TOKEN_METERED = ("/galactic.v1.Generation/", "/inference.GRPCInferenceService/ModelInfer",
                 "/inference.GRPCInferenceService/ModelStreamInfer")


class TenancyInterceptor(Around):
    def __init__(self, admission: Admission) -> None:
        super().__init__()
        self._admission = admission

    @contextlib.asynccontextmanager
    async def around(self, method: str, context: grpc.aio.ServicerContext):
        token = TOKEN.get()
        tenant = self._admission.tenants.get(token) if token else None
        if tenant is None:
            yield
            return
        tenant.admit(uses_tokens=method.startswith(TOKEN_METERED))  # RateLimited: RESOURCE_EXHAUSTED
        reset = tenants.CURRENT.set(tenant)
        try:
            with structlog.contextvars.bound_contextvars(tenant=tenant.name):
                yield
        finally:
            tenants.CURRENT.reset(reset)
            tenant.release()
