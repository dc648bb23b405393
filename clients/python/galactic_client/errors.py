"""Typed exceptions for the gRPC status codes the daemon returns.

Every RPC failure, whether it ends a call (`grpc.RpcError`) or only one request inside a
stream (a `google.rpc.Status` in a Session Error frame or an InferStream error), becomes one
`GalacticError` subclass, so callers write `except ResourceExhausted:` rather than comparing
codes. The field at fault comes from the status details (a `google.rpc.BadRequest` field
violation, gRPC's rich error model: the `grpc-status-details-bin` trailer of a failed call,
or the `details` of a stream's error frame) into `.field`; the message text, which starts
with the same field for people ("sampling.top_p: must be in (0, 1]"), is only a fallback
for daemons that send no details.
"""

from __future__ import annotations

import re

import grpc
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "GalacticError",
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
    "from_rpc_error",
    "from_status",
    "from_code",
]

# Fallback without details: "sampling.top_p: reason" or "inputs[x].shape: reason": a dotted
# path, optionally indexed or keyed, then a colon. A plain sentence carries no field.
_FIELD_RE = re.compile(r"^\s*([A-Za-z_]\w*(?:\[[^\]\s]*\])?(?:\.[A-Za-z_]\w*(?:\[[^\]\s]*\])?)*)\s*:\s+")
_DETAILS_KEY = "grpc-status-details-bin"


class GalacticError(Exception):
    """An RPC (or one request inside a stream) failed with a gRPC status.

    `code` is the `grpc.StatusCode`, `details` the server's message, `field` the field at
    fault (from the BadRequest detail; else from the message's start; else None),
    `request_id` the session or stream request the error belongs to (else None),
    `retry_after` the seconds a rate-limited caller should wait (from a RetryInfo detail).
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        details: str = "",
        *,
        code: grpc.StatusCode | None = None,
        request_id: str | None = None,
        field: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.retry_after = retry_after
        if code is not None:
            self.code = code
        self.details = details
        self.request_id = request_id
        if field is None:
            match = _FIELD_RE.match(details or "")
            field = match.group(1) if match else None
        self.field: str | None = field
        super().__init__(f"{self.code.name}: {details}")

    @property
    def reason(self) -> str:
        """The message without its leading field."""
        text = self.details or ""
        if self.field and text.startswith(f"{self.field}: "):
            return text[len(self.field) + 2:]
        match = _FIELD_RE.match(text)
        return text[match.end():] if match else text


class Cancelled(GalacticError):
    code = grpc.StatusCode.CANCELLED


class Unknown(GalacticError):
    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(GalacticError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(GalacticError, TimeoutError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(GalacticError, LookupError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(GalacticError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(GalacticError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(GalacticError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(GalacticError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(GalacticError):
    code = grpc.StatusCode.ABORTED


class OutOfRange(GalacticError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(GalacticError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(GalacticError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(GalacticError):
    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(GalacticError):
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(GalacticError):
    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: dict[grpc.StatusCode, type[GalacticError]] = {
    cls.code: cls
    for cls in (
        Cancelled, Unknown, InvalidArgument, DeadlineExceeded, NotFound, AlreadyExists,
        PermissionDenied, ResourceExhausted, FailedPrecondition, Aborted, OutOfRange,
        Unimplemented, Internal, Unavailable, DataLoss, Unauthenticated,
    )
}
_BY_VALUE: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def from_code(code: grpc.StatusCode, details: str = "", *, request_id: str | None = None,
              field: str | None = None, retry_after: float | None = None) -> GalacticError:
    """The typed exception for `code` (UNKNOWN's class for a code without its own)."""
    cls = _BY_CODE.get(code, GalacticError)
    return cls(details, code=code, request_id=request_id, field=field, retry_after=retry_after)


def _retry_of(status: status_pb2.Status | None) -> float | None:
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToNanoseconds() / 1e9
    return None


def _field_of(status: status_pb2.Status) -> str | None:
    """The first BadRequest field violation in a status' details, if any."""
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            if bad.field_violations:
                return bad.field_violations[0].field
    return None


def _status_of(error: grpc.RpcError) -> status_pb2.Status | None:
    trailers = error.trailing_metadata() if callable(getattr(error, "trailing_metadata", None)) else None
    for key, value in trailers or ():
        if key == _DETAILS_KEY:
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # noqa: BLE001 - a garbled trailer: fall back to the text
                return None
    return None


def from_rpc_error(error: grpc.RpcError) -> GalacticError:
    """Convert a failed call (sync `grpc.RpcError` or `grpc.aio.AioRpcError`)."""
    code = error.code() if callable(getattr(error, "code", None)) else None
    details = error.details() if callable(getattr(error, "details", None)) else None
    status = _status_of(error)
    exc = from_code(code or grpc.StatusCode.UNKNOWN, details or "",
                    field=_field_of(status) if status is not None else None, retry_after=_retry_of(status))
    exc.__cause__ = error
    return exc


def from_status(status, *, request_id: str | None = None) -> GalacticError:
    """Convert a `google.rpc.status_pb2.Status` (Session Error frame, InferStream error)."""
    code = _BY_VALUE.get(status.code, grpc.StatusCode.UNKNOWN)
    return from_code(code, status.message, request_id=request_id, field=_field_of(status),
                     retry_after=_retry_of(status))
