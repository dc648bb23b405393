"""The one place where exceptions become gRPC status codes.

Engines and validation raise `engines.errors` classes; the interceptor in
`daemon/interceptors/errors.py` turns them into a status for a whole call, and session-style
streams use `to_status()` to put the same code and message into a per-request error frame
(the stream lives on). Anything unexpected is INTERNAL, logged with its traceback, and
never leaks the exception text to the client.

An error that names a field carries it twice: first in the text ("sampling.top_p: must be
in (0, 1]") for people, and as a `google.rpc.BadRequest` field violation in the status
details (gRPC's rich error model) for programs; clients read the details, never the text.
What a message quotes from a request is bounded: `shorten()` where it is built, and the
whole message is cut at `MAX_MESSAGE_CHARS` here, so a 100 kB name cannot come back whole.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from engines import errors
from engines.config import ConfigError

# Longest status message the daemon sends (and logs as a reason).
MAX_MESSAGE_CHARS = 1024
# The trailing-metadata key of the serialized google.rpc.Status (the rich error model).
DETAILS_KEY = "grpc-status-details-bin"


class MalformedMessage(errors.InvalidArgument):
    """The bytes of a request did not parse as its protobuf message (INVALID_ARGUMENT)."""


class Unauthenticated(errors.GalacticError):
    """A call without a known bearer token (UNAUTHENTICATED); raised by the daemon's own
    admission, never by an engine."""


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
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
}


def shorten(text: str, limit: int = 64) -> str:
    """`text` cut to `limit` characters, saying how long it was: safe to echo."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def code_for(exc: BaseException) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in CODES:
            return CODES[cls]
    return grpc.StatusCode.INTERNAL


def message_for(exc: BaseException) -> str:
    """Client-facing text: the domain message (field first); never an internal traceback."""
    if code_for(exc) is grpc.StatusCode.INTERNAL:
        return "internal error; see the daemon log"
    return shorten(str(exc), MAX_MESSAGE_CHARS)


def to_status(exc: BaseException) -> status_pb2.Status:
    """A google.rpc.Status: for an error frame inside a stream, and (serialized) in the
    trailing metadata of a failed call. A field error carries a BadRequest detail."""
    status = status_pb2.Status(code=code_for(exc).value[0], message=message_for(exc))
    if status.code == grpc.StatusCode.INTERNAL.value[0]:
        return status
    field = getattr(exc, "field", None)
    if field:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[error_details_pb2.BadRequest.FieldViolation(
            field=shorten(field, 256), description=shorten(getattr(exc, "message", str(exc)), MAX_MESSAGE_CHARS))]))
        status.details.append(detail)
    retry = getattr(exc, "retry_after_s", None)
    if retry is not None:  # a rate limit: when to come back (google.rpc.RetryInfo)
        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromNanoseconds(int(retry * 1e9))
        detail = any_pb2.Any()
        detail.Pack(info)
        status.details.append(detail)
    return status


def trailing_metadata(exc: BaseException) -> tuple[tuple[str, bytes], ...]:
    """The rich error model's trailer for a call that fails with `exc` (empty if no details)."""
    status = to_status(exc)
    return ((DETAILS_KEY, status.SerializeToString()),) if status.details else ()
