"""Coordination.PlanStream: one standing plan per stream, protocol version 1.

Events are read as they come and applied to the stream's `PlanState` at once (each checked
on its own: a bad event gets its error frame and changes nothing). A planner task waits
for the first pending change, lets the burst gather for the stream's coalescing window
(one `asyncio.sleep`, started by an event, never a polling loop), snapshots the state and
asks the engine for a plan through its batcher (so streams share model steps with every
other caller), then sends the diff against the previous plan. Changes that arrive while a
plan is being made wait for the next one. When the client half-closes, pending changes are
planned and the stream ends; when it goes away, the planner is cancelled with it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator, Mapping

from galactic.v1 import coordination_pb2 as pb

from engines.coordination.engine import CoordinationEngine
from engines.coordination.plan import PROTOCOL_VERSION, PlanDiff, PlanState, SiteChange
from engines.errors import FailedPrecondition, GalacticError, InvalidArgument

from daemon.errors import shorten, to_status
from daemon.servicers import deadline_of, pick
from daemon.servicers.coordination import REASONS, assignment_pb, conditions, observatories, target_columns, to_pb
from daemon.validation import Bounds

_END = object()


def _diff_pb(diff: PlanDiff, engine: CoordinationEngine, full: bool) -> pb.PlanUpdate:
    r = diff.result
    version = r.version or engine.version
    return pb.PlanUpdate(
        sequence=diff.sequence, model=engine.name, version=version,
        assigned=[assignment_pb(a) for a in diff.assigned],
        moved=[pb.PlanMove(target_id=m.target_id, from_site_id=m.from_site_id, assignment=assignment_pb(m.assignment))
               for m in diff.moved],
        dropped=[pb.PlanDrop(target_id=d.target_id, from_site_id=d.from_site_id, retracted=d.retracted,
                             reason=REASONS[d.reason] if d.reason is not None else pb.Unassigned.REASON_UNSPECIFIED)
                 for d in diff.dropped],
        total_expected_value=r.total_expected_value, targets=diff.targets, assigned_count=len(r.columns.assigned),
        full=to_pb(r, engine.name, version) if full else None)


class _Stream:
    """The state of one PlanStream call."""

    def __init__(self, engines: Mapping[str, CoordinationEngine], deadline: float | None, bounds: Bounds) -> None:
        self._engines = engines
        self._bounds = bounds
        self._deadline = deadline
        self.engine: CoordinationEngine | None = None
        self.state: PlanState | None = None
        self.coalesce_s = 0.0
        self.full_every_frame = False
        self.full_next = False
        self.pending: list[str] = []  # event ids applied since the last plan was snapshotted
        self.changed = asyncio.Event()
        self.closed = False
        self.out: asyncio.Queue = asyncio.Queue()

    # -- events (on the reader task) ----------------------------------------------------
    def apply(self, ev: pb.PlanEvent) -> None:
        self._bounds.check(ev)  # sizes and names first (daemon/validation.py), before any work
        kind = ev.WhichOneof("event")
        if kind is None:
            raise InvalidArgument("the event sets none of open, upsert, retract, site, window, plan", field="event")
        if kind == "open":
            self._open(ev.open)
            return
        if self.state is None:
            raise FailedPrecondition("the stream's first event must be `open`", field=kind)
        if kind == "upsert":
            self.state.upsert(target_columns(ev.upsert.targets, ev.upsert))
        elif kind == "retract":
            self.state.retract(tuple(ev.retract.target_ids))
        elif kind == "site":
            s = ev.site
            self.state.update_site(SiteChange(
                site_id=s.site_id, forecast=conditions(s.forecast) if s.HasField("forecast") else None,
                current=conditions(s.current) if s.HasField("current") else None,
                open=s.open if s.HasField("open") else None,
                capacity=s.capacity if s.HasField("capacity") else None))
        elif kind == "window":
            self.state.set_window(ev.window.time_unix, ev.window.window_s if ev.window.HasField("window_s") else None)
        elif kind == "plan":
            self.full_next = True

    def _open(self, m: pb.PlanOpen) -> None:
        if self.state is not None:
            raise FailedPrecondition("the stream is already open", field="open")
        if m.protocol_version != PROTOCOL_VERSION:
            raise InvalidArgument(f"this daemon speaks PlanStream protocol {PROTOCOL_VERSION}, "
                                  f"got {m.protocol_version}", field="open.protocol_version")
        engine = pick(self._engines, m.model, field="open.model")
        streams = engine.config.streams
        coalesce_ms = m.coalesce_ms if m.HasField("coalesce_ms") else streams.coalesce_ms
        if not 0.0 <= coalesce_ms <= streams.max_coalesce_ms:
            raise InvalidArgument(f"must be within [0, {streams.max_coalesce_ms}] ms, got {coalesce_ms}",
                                  field="open.coalesce_ms")
        state = engine.open_plan(
            time_unix=m.time_unix, observatories=observatories(m.observatories),
            targets=target_columns(m.targets, m), window_s=m.window_s if m.HasField("window_s") else 3600.0,
            snr_required=m.snr_required if m.HasField("snr_required") else None)
        self.engine, self.state = engine, state
        self.coalesce_s = coalesce_ms / 1000.0
        self.full_every_frame = m.full_plan_every_frame

    async def read(self, events: AsyncIterator[pb.PlanEvent]) -> None:
        try:
            async for ev in events:
                try:
                    self.apply(ev)
                except GalacticError as exc:
                    eid = shorten(ev.event_id, self._bounds.limits.max_id_chars)  # never echo 1 MB back
                    self.out.put_nowait(pb.PlanFrame(error=to_status(exc), event_ids=[eid]))
                    continue
                self.pending.append(ev.event_id)
                self.changed.set()
        finally:
            self.closed = True
            self.changed.set()

    # -- plans (on the planner task) ----------------------------------------------------
    async def plan(self) -> None:
        while True:
            if not self.pending and not self.closed:
                self.changed.clear()  # safe: the reader appends and sets on this same loop
                await self.changed.wait()
            if self.pending and self.coalesce_s > 0 and not self.closed:
                await asyncio.sleep(self.coalesce_s)  # let the burst arrive: one plan for all of it
            if not self.pending:
                if self.closed:
                    self.out.put_nowait(_END)
                    return
                continue
            ids, self.pending = self.pending, []
            full = self.full_every_frame or self.full_next
            self.full_next = False
            try:
                result = await self.engine.plan(self.state, deadline=self._deadline)
            except GalacticError as exc:  # e.g. the engine's queue is full: say so, keep the stream
                self.out.put_nowait(pb.PlanFrame(error=to_status(exc), event_ids=ids))
                continue
            diff = self.state.advance(result)
            self.out.put_nowait(pb.PlanFrame(update=_diff_pb(diff, self.engine, full), event_ids=ids))


async def plan_stream(engines: Mapping[str, CoordinationEngine], request_iterator, context,
                      bounds: Bounds) -> AsyncIterator[pb.PlanFrame]:
    stream = _Stream(engines, deadline_of(context), bounds)
    reader = asyncio.create_task(stream.read(request_iterator))
    planner = asyncio.create_task(stream.plan())
    waiters = {reader, planner}
    try:
        while True:
            got = asyncio.ensure_future(stream.out.get())
            done, _ = await asyncio.wait({got, *waiters}, return_when=asyncio.FIRST_COMPLETED)
            for task in done - {got}:
                waiters.discard(task)
                task.result()  # a failed read (the client broke the stream) ends the call with it
            if got not in done:
                got.cancel()
                continue
            frame = got.result()
            if frame is _END:
                return
            yield frame
    finally:
        for task in (reader, planner):
            task.cancel()
        for task in (reader, planner):
            with contextlib.suppress(BaseException):
                await task
        if stream.engine is not None:
            stream.engine.close_plan()

