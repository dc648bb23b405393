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

# Calls refused at admission while the tenant's token budget is spent: they only serve
# the LLM. KServe's inference calls serve the tensor models too, so theirs are refused
# per LLM request, where `tenants.bind` stamps it (as every front end's are).
TOKEN_METERED = ("/galactic.v1.Generation/",)


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
