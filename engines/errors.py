"""Domain errors raised by engines and validation code.

The daemon maps each class to one gRPC status code at a single boundary
(`daemon/errors.py`); engines and training never see gRPC. Each error carries the
offending field where there is one, so a client learns *what* to fix.
"""

from __future__ import annotations


class GalacticError(Exception):
    """Base class. `field` names the request or config field at fault, if any."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class InvalidArgument(GalacticError):
    """The request is malformed (maps to INVALID_ARGUMENT)."""


class NotFound(GalacticError):
    """A named model, adapter or request does not exist (NOT_FOUND)."""


class AlreadyExists(GalacticError):
    """A name is taken (ALREADY_EXISTS)."""


class ResourceExhausted(GalacticError):
    """A bounded queue or limit is full (RESOURCE_EXHAUSTED); the caller may retry later."""


class FailedPrecondition(GalacticError):
    """The system is not in a state that allows this (FAILED_PRECONDITION)."""


class DeadlineExceeded(GalacticError):
    """The request's deadline passed before it could finish (DEADLINE_EXCEEDED)."""


class Unavailable(GalacticError):
    """The engine is not ready or is draining (UNAVAILABLE); retry elsewhere."""


class PermissionDenied(GalacticError):
    """A path or operation outside what the config allows (PERMISSION_DENIED)."""
