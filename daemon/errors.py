"""The one place where exceptions become gRPC status codes.

Engines and validation raise `engines.errors` classes; the interceptor in
`daemon/interceptors.py` turns them into a status for a whole call, and session-style
streams use `to_status()` to put the same code and message into a per-request error frame
(the stream lives on). Anything unexpected is INTERNAL, logged with its traceback, and
never leaks the exception text to the client.
"""

from __future__ import annotations

import grpc
from google.rpc import status_pb2

from engines import errors
from engines.config import ConfigError

CODES: dict[type[BaseException], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}


def code_for(exc: BaseException) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in CODES:
            return CODES[cls]
    return grpc.StatusCode.INTERNAL


def message_for(exc: BaseException) -> str:
    """Client-facing text: the domain message (field first); never an internal traceback."""
    if code_for(exc) is grpc.StatusCode.INTERNAL:
        return "internal error; see the daemon log"
    return str(exc)


def to_status(exc: BaseException) -> status_pb2.Status:
    """A google.rpc.Status for an error frame inside a stream."""
    return status_pb2.Status(code=code_for(exc).value[0], message=message_for(exc))
