"""Exceptions -> OpenAI's error object and an HTTP status the `openai` SDK maps to its own
exception classes (400 BadRequestError, 401 AuthenticationError, 404 NotFoundError, 429
RateLimitError, 5xx InternalServerError, ...).

No second table of our exceptions: an exception gets its status code from the one table
of `daemon/errors.py` (the gRPC boundary's), and that code becomes an HTTP status here. So
an error means the same thing through every protocol, and `code` in the body is that
status's name in lower case ("invalid_argument", "resource_exhausted"), as gRPC names it.
"""

from __future__ import annotations

import json
import math
from typing import Any

import grpc
from aiohttp import web

from daemon import errors
from engines.errors import DeadlineExceeded, InvalidArgument

# gRPC status code -> (HTTP status, OpenAI error type).
HTTP: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "conflict_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout_error"),
    grpc.StatusCode.INTERNAL: (500, "server_error"),
}
# When to come back from a full queue (a tenant limit says when itself).
DEFAULT_RETRY_AFTER_S = 1.0


class BodyTooLarge(InvalidArgument):
    """The body is past `openai.max_body_bytes` (413)."""


class NotJSON(InvalidArgument):
    """The body is not sent as application/json (415)."""


class BodyTimeout(DeadlineExceeded):
    """The body did not arrive within `openai.body_timeout_s` (408)."""


# What HTTP has a status of its own for; the rest go by their gRPC code.
_HTTP_ONLY = {BodyTooLarge: 413, NotJSON: 415, BodyTimeout: 408}


def error_object(exc: BaseException, param: str | None) -> dict[str, Any]:
    """OpenAI's `{"error": {...}}` for `exc`; `param` is the parameter at fault, as the
    client spelled it."""
    code = errors.code_for(exc)
    _, kind = HTTP.get(code, HTTP[grpc.StatusCode.INTERNAL])
    message = errors.message_for(exc)
    return {"error": {"message": message, "type": kind, "param": param, "code": code.name.lower()}}


def status_of(exc: BaseException) -> int:
    for cls, status in _HTTP_ONLY.items():
        if isinstance(exc, cls):
            return status
    return HTTP.get(errors.code_for(exc), HTTP[grpc.StatusCode.INTERNAL])[0]


def response(exc: BaseException, param: str | None) -> web.Response:
    """The whole HTTP answer for `exc`: status, error object, and Retry-After for a 429
    (whole seconds, and the exact wait as retry-after-ms, which the SDK prefers)."""
    status = status_of(exc)
    headers = {}
    if status == 429:
        retry = getattr(exc, "retry_after_s", None) or DEFAULT_RETRY_AFTER_S
        headers = {"Retry-After": str(max(1, math.ceil(retry))), "retry-after-ms": str(max(1, round(retry * 1e3)))}
    return web.Response(status=status, headers=headers, content_type="application/json",
                        text=json.dumps(error_object(exc, param)))
