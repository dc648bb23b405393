"""Status codes become typed exceptions, whether they end a call or one stream request."""

import grpc
import numpy as np
import pytest
from google.rpc import status_pb2

import galactic_client as gc
from engines.coordination.features import N_FEATURES
from galactic_client.errors import from_status

from .conftest import LONG

CODES = {
    grpc.StatusCode.CANCELLED: gc.Cancelled,
    grpc.StatusCode.UNKNOWN: gc.Unknown,
    grpc.StatusCode.INVALID_ARGUMENT: gc.InvalidArgument,
    grpc.StatusCode.DEADLINE_EXCEEDED: gc.DeadlineExceeded,
    grpc.StatusCode.NOT_FOUND: gc.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: gc.AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: gc.PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: gc.ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: gc.FailedPrecondition,
    grpc.StatusCode.ABORTED: gc.Aborted,
    grpc.StatusCode.OUT_OF_RANGE: gc.OutOfRange,
    grpc.StatusCode.UNIMPLEMENTED: gc.Unimplemented,
    grpc.StatusCode.INTERNAL: gc.Internal,
    grpc.StatusCode.UNAVAILABLE: gc.Unavailable,
    grpc.StatusCode.DATA_LOSS: gc.DataLoss,
    grpc.StatusCode.UNAUTHENTICATED: gc.Unauthenticated,
}
# Errors the real daemon gives, each raised by the client as its typed exception with the
# field read from the google.rpc.BadRequest details. Every other code is mapped the same way
# (test_status_message_becomes_typed_exception); UNAVAILABLE is retried by the channel's
# service config, so it is checked in test_client_channel.
DAEMON_ERRORS = {
    "invalid-top-p": (lambda c: c.generate_text("x", top_p=1.5), gc.InvalidArgument, "sampling.top_p"),
    "too-many-tokens": (lambda c: c.generate_text("x", max_new_tokens=10**6), gc.InvalidArgument,
                        "stopping.max_new_tokens"),
    "unknown-model": (lambda c: c.generate_text("x", model="nope"), gc.NotFound, "model"),
    "unknown-adapter": (lambda c: c.generate_text("x", adapter="nope"), gc.NotFound, "adapter"),
    "adapter-outside-root": (lambda c: c.load_adapter("evil", "../../etc"), gc.PermissionDenied, "path"),
    "missing-tensor": (lambda c: c.infer("coordination", {"features": np.zeros((2, N_FEATURES), np.float32)}),
                       gc.InvalidArgument, "inputs.site"),
    # A LONG request is held after its first token until cancelled (conftest.long_is_held):
    # the deadline passes first on any machine.
    "deadline": (lambda c: c.generate_text("x", max_new_tokens=LONG, ignore_eos=True, timeout=0.2),
                 gc.DeadlineExceeded, None),
}


@pytest.mark.parametrize("call, error, field", DAEMON_ERRORS.values(), ids=DAEMON_ERRORS.keys())
async def test_daemon_status_becomes_typed_exception(client, call, error, field):
    with pytest.raises(error) as info:
        await call(client)
    assert isinstance(info.value, gc.GalacticError) and info.value.code is next(
        code for code, cls in CODES.items() if cls is error)
    assert info.value.field == field and info.value.details


@pytest.mark.parametrize("code", list(CODES), ids=lambda c: c.name)
def test_status_message_becomes_typed_exception(code):
    error = from_status(status_pb2.Status(code=code.value[0], message="inputs[0].shape: negative"), request_id="r7")
    assert type(error) is CODES[code]
    assert (error.field, error.request_id) == ("inputs[0].shape", "r7")


@pytest.mark.parametrize(
    "message, field",
    [
        ("stopping.max_new_tokens: exceeds 4096", "stopping.max_new_tokens"),
        ("adapter: no adapter 'x'", "adapter"),
        ("the queue is full", None),
        ("", None),
        ("see http://example.com: nothing", None),
    ],
)
def test_field_parsed_only_when_message_starts_with_one(message, field):
    assert gc.InvalidArgument(message).field == field


def test_familiar_base_classes():
    assert issubclass(gc.InvalidArgument, ValueError)
    assert issubclass(gc.DeadlineExceeded, TimeoutError)
    assert issubclass(gc.NotFound, LookupError)
