"""Admission: drain, readiness and the bearer token, for calls of every protocol.

`Admission` is the daemon's shared state at the boundary (in flight, draining, tenants);
the OpenAI front end calls `check` too. `AdmissionInterceptor` refuses a gRPC call before
anything else runs; the token it admitted travels to the tenancy interceptor in `TOKEN`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hmac
from typing import Mapping

import grpc

from daemon import errors, metrics
from daemon.interceptors.base import Around
from daemon.tenants import Tenant, TenantLimits
from engines.errors import PermissionDenied, Unavailable

# The bearer token of the call being handled ("" without one): each call runs in its own
# task, so this never leaks between calls.
TOKEN: contextvars.ContextVar[str] = contextvars.ContextVar("galactic_token", default="")

# KServe v2's liveness and readiness probes answer while loading and draining too (ServerReady
# says false meanwhile) and need no token, like health; unlike health they still cross the
# boundary (a message that does not parse is INVALID_ARGUMENT, the call is traced and counted).
PROBES = frozenset({"/inference.GRPCInferenceService/ServerLive", "/inference.GRPCInferenceService/ServerReady"})
# Calls that change what the daemon serves; with security.admin_keys_file set, only an
# admin token may make them.
ADMIN_MUTATIONS = frozenset({"/galactic.v1.Admin/LoadAdapter", "/galactic.v1.Admin/UnloadAdapter",
                             "/galactic.v1.Admin/ReloadModel"})


class Admission:
    """Shared state of the boundary: in-flight count and the draining flag."""

    def __init__(self, api_keys: frozenset[str] = frozenset(), admin_keys: frozenset[str] = frozenset(),
                 tenants: Mapping[str, tuple[str, TenantLimits]] | None = None) -> None:
        self.admin_keys = admin_keys
        # token -> its Tenant (limits, and the key of fair admission in the LLM scheduler).
        self.tenants = {token: Tenant(name, limits) for token, (name, limits) in (tenants or {}).items()}
        self.draining = False
        # The same fact as an event, for long-lived streams that must notice it (sessions).
        self.drain_started = asyncio.Event()
        # False until every engine has loaded: calls before then get UNAVAILABLE (health
        # says NOT_SERVING meanwhile), never a half-initialised engine.
        self.ready = False
        self.in_flight = 0
        self.api_keys = api_keys
        self._idle = asyncio.Event()
        self._idle.set()

    def start_drain(self) -> None:
        self.draining = True
        self.drain_started.set()

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()
        metrics.RPC_IN_FLIGHT.inc()

    def leave(self) -> None:
        self.in_flight -= 1
        metrics.RPC_IN_FLIGHT.dec()
        if self.in_flight == 0:
            self._idle.set()

    def check(self, method: str, authorization: str) -> str:
        """Drain, readiness and authentication of a call of any protocol (gRPC metadata or
        an HTTP header: `authorization` is the header's value). Returns the caller's bearer
        token ("" if none); raises Unavailable, Unauthenticated or PermissionDenied."""
        if self.draining:
            raise Unavailable("server is draining; retry on another host")
        if not self.ready:
            raise Unavailable("models are still loading; retry shortly")
        if not (self.api_keys or self.admin_keys):
            return ""
        scheme, _, token = authorization.partition(" ")
        token = token if scheme.lower() == "bearer" else ""
        is_admin = bool(token) and _matches(token, self.admin_keys)
        if method in ADMIN_MUTATIONS and self.admin_keys:
            if not is_admin:  # a data-plane token must not load adapters or cancel others' work
                raise PermissionDenied(f"{method} needs an admin token")
            return token
        if self.api_keys and not (is_admin or (token and _matches(token, self.api_keys))):
            raise errors.Unauthenticated("missing or unknown bearer token")
        return token

    async def wait_idle(self, timeout: float) -> bool:
        """True if every admitted call finished within `timeout` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False


class AdmissionInterceptor(Around):
    def __init__(self, admission: Admission) -> None:
        super().__init__()
        self._admission = admission

    @contextlib.asynccontextmanager
    async def around(self, method: str, context: grpc.aio.ServicerContext):
        token = ""
        if method not in PROBES:
            metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
            authorization = metadata.get("authorization", "")
            try:
                token = self._admission.check(method, authorization)
            except (errors.Unauthenticated, PermissionDenied, Unavailable) as exc:
                code = errors.code_for(exc)
                metrics.RPC_ERRORS.labels(method, code.name).inc()
                await context.abort(code, errors.message_for(exc))
        reset = TOKEN.set(token)
        try:
            yield
        finally:
            TOKEN.reset(reset)


def _matches(token: str, keys: frozenset[str]) -> bool:
    # compare_digest against every key: the time taken does not reveal which one was close.
    return any([hmac.compare_digest(token, key) for key in keys])
