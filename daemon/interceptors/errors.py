"""Errors: the one place a domain error becomes a gRPC status (`daemon/errors.py` holds the
mapping and the rich details). An unexpected failure is INTERNAL, logged with its traceback."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import structlog

from daemon import errors
from daemon.interceptors.base import Around

log = structlog.get_logger("galacticd.rpc")


class ErrorInterceptor(Around):
    @contextlib.asynccontextmanager
    async def around(self, method: str, context: grpc.aio.ServicerContext):
        try:
            yield
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise  # already a status, or the client left
        except Exception as exc:
            code = errors.code_for(exc)
            if code is grpc.StatusCode.INTERNAL:
                log.exception("rpc failed")
            elif isinstance(exc, errors.MalformedMessage):
                log.warning("unparsable message", code=code.name, reason=errors.message_for(exc))
            else:
                log.info("rpc rejected", code=code.name, reason=errors.message_for(exc))
            await context.abort(code, errors.message_for(exc), errors.trailing_metadata(exc))
