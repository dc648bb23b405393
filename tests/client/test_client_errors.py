"""Status codes become typed exceptions, whether they end a call or one stream request."""

import grpc
import pytest
from google.rpc import status_pb2

import galactic_client as gc
from galactic_client.errors import from_status

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
# UNAVAILABLE is retried by the channel's service config, so it is checked in test_client_channel.
SERVER_CODES = [code for code in CODES if code is not grpc.StatusCode.UNAVAILABLE]


@pytest.mark.parametrize("code", SERVER_CODES, ids=lambda c: c.name)
async def test_server_status_becomes_typed_exception(client, code):
    with pytest.raises(CODES[code]) as info:
        async for _ in client.generate(f"abort:{code.name}:sampling.top_p: must be in (0, 1]"):
            pass
    error = info.value
    assert isinstance(error, gc.GalacticError)
    assert error.code is code
    assert error.details == "sampling.top_p: must be in (0, 1]"
    assert error.field == "sampling.top_p"
    assert error.reason == "must be in (0, 1]"


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
