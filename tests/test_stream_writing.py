"""write_concurrently: how a bidirectional servicer starts its requests and writes their frames."""

from __future__ import annotations

from daemon.servicers import write_concurrently
from daemon.servicers.kserve import _Queued


async def _requests(*items):
    for item in items:  # no await between them: they arrive in one turn of the loop
        yield item


async def test_each_request_is_started_as_it_arrives_before_any_request_runs():
    # A handler that starts work when called (KServe queues an LLM request then) must be
    # called as its request is read, so a burst is queued together, not one loop turn apart.
    events: list[str] = []
    written: list[str] = []

    def handle(req):
        events.append(f"start {req}")

        async def frames():
            events.append(f"run {req}")
            yield f"{req}.0"

        return frames()

    async def write(frame):
        written.append(frame)

    await write_concurrently(_requests("a", "b", "c"), handle, lambda r, e: f"{r}: {e}", write)
    assert events[:3] == ["start a", "start b", "start c"]
    assert sorted(events[3:]) == ["run a", "run b", "run c"]
    assert sorted(written) == ["a.0", "b.0", "c.0"]


async def test_a_handler_that_fails_when_called_answers_with_its_error_frame_and_the_stream_goes_on():
    written: list[str] = []

    def handle(req):
        if req == "bad":
            raise ValueError("refused at once")

        async def frames():
            yield f"{req}.0"

        return frames()

    async def write(frame):
        written.append(frame)

    await write_concurrently(_requests("a", "bad", "c"), handle, lambda r, e: f"{r}: {e}", write)
    assert sorted(written) == ["a.0", "bad: refused at once", "c.0"]


class _Stream:
    closed = False

    def close(self):
        self.closed = True


async def test_a_queued_request_closed_before_its_first_frame_is_cancelled():
    # An async generator closed before it started never runs its finally: _Queued closes
    # the engine's stream itself, so the request does not keep its slot.
    stream = _Stream()

    async def frames():
        try:
            yield "never asked for"
        finally:
            stream.close()

    queued = _Queued(frames(), stream)
    await queued.aclose()
    assert stream.closed
