"""Typed exceptions for the gRPC status codes the daemon returns.

Every RPC failure, whether it ends a call (`grpc.RpcError`) or only one request inside a
stream (a `google.rpc.Status` in a Session Error frame or an InferStream error), becomes one
`GalacticError` subclass, so callers write `except ResourceExhausted:` rather than comparing
codes. The daemon puts the field at fault first in the message ("sampling.top_p: must be in
(0, 1]"); it is parsed into `.field`.
"""

from __future__ import annotations

import re

import grpc

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

# "sampling.top_p: reason" or "inputs[0].shape: reason": a dotted path, optionally
# indexed, then a colon. Anything else (a plain sentence) carries no field.
_FIELD_RE = re.compile(r"^\s*([A-Za-z_][\w]*(?:\[\d+\])?(?:\.[A-Za-z_][\w]*(?:\[\d+\])?)*)\s*:\s+")


class GalacticError(Exception):
    """An RPC (or one request inside a stream) failed with a gRPC status.

    `code` is the `grpc.StatusCode`, `details` the server's message, `field` the field at
    fault when the message starts with one (else None), `request_id` the session or stream
    request the error belongs to (else None).
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        details: str = "",
        *,
        code: grpc.StatusCode | None = None,
        request_id: str | None = None,
    ) -> None:
        if code is not None:
            self.code = code
        self.details = details
        self.request_id = request_id
        match = _FIELD_RE.match(details or "")
        self.field: str | None = match.group(1) if match else None
        super().__init__(f"{self.code.name}: {details}")

    @property
    def reason(self) -> str:
        """The message without its leading field."""
        match = _FIELD_RE.match(self.details or "")
        return self.details[match.end():] if match else self.details


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


def from_code(code: grpc.StatusCode, details: str = "", *, request_id: str | None = None) -> GalacticError:
    """The typed exception for `code` (UNKNOWN's class for a code without its own)."""
    cls = _BY_CODE.get(code, GalacticError)
    return cls(details, code=code, request_id=request_id)


def from_rpc_error(error: grpc.RpcError) -> GalacticError:
    """Convert a failed call (sync `grpc.RpcError` or `grpc.aio.AioRpcError`)."""
    code = error.code() if callable(getattr(error, "code", None)) else None
    details = error.details() if callable(getattr(error, "details", None)) else None
    exc = from_code(code or grpc.StatusCode.UNKNOWN, details or "")
    exc.__cause__ = error
    return exc


def from_status(status, *, request_id: str | None = None) -> GalacticError:
    """Convert a `google.rpc.status_pb2.Status` (Session Error frame, InferStream error)."""
    code = _BY_VALUE.get(status.code, grpc.StatusCode.UNKNOWN)
    return from_code(code, status.message, request_id=request_id)
