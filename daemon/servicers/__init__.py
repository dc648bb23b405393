"""Servicers: protobuf <-> plain dataclasses, nothing else.

Each servicer looks up the engine a request names, translates the message into the engine's
dataclasses, and translates results back. Validation that needs the model (token limits,
adapters) is the engine's; errors are raised as `engines.errors` and mapped to status codes
by the interceptor (`daemon/interceptors.py`).
"""

from __future__ import annotations

import time
from typing import Mapping, TypeVar

import grpc

from engines.errors import NotFound

E = TypeVar("E")


def pick(engines: Mapping[str, E], name: str, field: str = "model") -> E:
    """The engine called `name`; an empty name means the only or first one."""
    if not name:
        if not engines:
            raise NotFound("no model of this kind is loaded", field=field)
        return next(iter(engines.values()))
    try:
        return engines[name]
    except KeyError:
        raise NotFound(f"unknown model {name!r} (loaded: {', '.join(engines) or 'none'})", field=field) from None


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's gRPC deadline as an absolute time.monotonic() value, or None."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining
