"""The boundary every RPC crosses, one interceptor per job, in the order `chain()` states.

Outermost first:

    admission   drain, readiness, bearer token (no span, no in-flight count for a refusal)
    tracing     the server span (continuing the caller's W3C traceparent), log context
    counting    in flight, requests, latency, errors by status code
    errors      the one place a domain error (`engines.errors`) becomes a gRPC status
    tenancy     the caller's tenant limits, and the tenant the servicers' requests carry
    parsing     a message that does not parse, or is past `[limits]`, is INVALID_ARGUMENT

A servicer holds only translation code: it raises `engines.errors` exceptions and `errors`
turns them into a status; the interceptors outside it read the status the call ended with.
"""

from __future__ import annotations

import grpc

from daemon.config import LimitsConfig
from daemon.interceptors.admission import ADMIN_MUTATIONS, Admission, AdmissionInterceptor
from daemon.interceptors.counting import CountingInterceptor
from daemon.interceptors.errors import ErrorInterceptor
from daemon.interceptors.parsing import ParsingInterceptor
from daemon.interceptors.tenancy import TenancyInterceptor
from daemon.interceptors.tracing import TracingInterceptor
from daemon.validation import Bounds

__all__ = ["ADMIN_MUTATIONS", "Admission", "chain"]


def chain(admission: Admission, bounds: Bounds | None = None) -> list[grpc.aio.ServerInterceptor]:
    """The daemon's interceptors, outermost first (gRPC runs them in list order)."""
    return [
        AdmissionInterceptor(admission),
        TracingInterceptor(),
        CountingInterceptor(admission),
        ErrorInterceptor(),
        TenancyInterceptor(admission),
        ParsingInterceptor(bounds or Bounds(LimitsConfig())),
    ]
