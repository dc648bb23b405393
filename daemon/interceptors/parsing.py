"""Parsing: a message that does not parse ends the call (or the stream, at that frame) with
INVALID_ARGUMENT instead of gRPC's own UNKNOWN, or an INTERNAL from deep inside a stream
reader; a unary request past a `[limits]` bound is INVALID_ARGUMENT naming the field (a
streaming servicer bounds each request itself, to answer it with an error frame)."""

from __future__ import annotations

import contextlib
from typing import Any, AsyncIterator, Callable

import grpc

from daemon import errors
from daemon.interceptors.base import Around
from daemon.validation import Bounds


class _Unparsable:
    """What the tolerant deserializer hands on in place of a message that did not parse:
    the call (or the stream, at that frame) then ends with INVALID_ARGUMENT instead of
    gRPC's own UNKNOWN, or an INTERNAL from deep inside a stream reader."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:  # noqa: BLE001 - DecodeError, invalid UTF-8 in a string, ...
            return _Unparsable(exc)
    return parse


def _parsed(message: Any) -> Any:
    if isinstance(message, _Unparsable):
        raise errors.MalformedMessage(f"the request does not parse: {errors.shorten(str(message.error), 200)}")
    return message


async def _parsed_frames(frames: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A stream's frames; one that does not parse ends the reading with MalformedMessage.
    The servicer lets the requests it already holds finish, then the stream ends with it."""
    async for frame in frames:
        yield _parsed(frame)


class ParsingInterceptor(Around):
    def __init__(self, bounds: Bounds) -> None:
        super().__init__()
        self._bounds = bounds

    def deserializer(self, parse: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
        return _tolerant(parse)

    def incoming(self, request: Any, streaming: bool) -> Any:
        if streaming:
            return _parsed_frames(request)
        request = _parsed(request)
        self._bounds.check(request)
        return request

    @contextlib.asynccontextmanager
    async def around(self, method: str, context: grpc.aio.ServicerContext):
        yield
