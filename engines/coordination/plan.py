"""One caller's standing plan: the state a PlanStream keeps between events, and the diff.

A `PlanState` holds what the caller has said so far (sites with their conditions, targets
by id, the window) and the last plan made from it. Each change is checked on its own
before it touches the state, so a bad event is refused alone and the state stays as it
was (otherwise one bad alert would poison every later plan). The targets are kept as
columns (`TargetColumns`), updated by each event, so a snapshot for the next plan costs no
object per target. `request()` snapshots the state as an ordinary CoordinateRequest for the
engine; `advance()` takes the engine's answer and says what changed against the previous
plan. Plain Python, no asyncio: the
daemon's servicer owns the stream, the coalescing timer and the frames.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from engines.coordination import problem
from engines.coordination.config import CoordinationConfig
from engines.coordination.sites import SiteTable
from engines.coordination.types import (
    Assignment, Conditions, CoordinateRequest, CoordinateResult, Observatory, Target, TargetColumns, UnassignedReason,
)
from engines.errors import GalacticError, InvalidArgument, NotFound, ResourceExhausted

PROTOCOL_VERSION = 1
_ARRAYS = tuple(f.name for f in dataclasses.fields(TargetColumns) if f.name != "id")


def _as_columns(targets: tuple[Target, ...] | TargetColumns) -> TargetColumns:
    return targets if isinstance(targets, TargetColumns) else problem.target_columns(targets)


@dataclass(frozen=True)
class SiteChange:
    """A SiteUpdate: None keeps the field's value."""

    site_id: str
    forecast: Conditions | None = None
    current: Conditions | None = None
    open: bool | None = None
    capacity: int | None = None


@dataclass(frozen=True)
class Move:
    target_id: str
    from_site_id: str
    assignment: Assignment


@dataclass(frozen=True)
class Drop:
    target_id: str
    from_site_id: str
    reason: UnassignedReason | None  # None: retracted by the caller
    retracted: bool


@dataclass(frozen=True)
class PlanDiff:
    """A new plan as its difference from the previous one (the first plan: all assigned)."""

    sequence: int
    assigned: tuple[Assignment, ...]
    moved: tuple[Move, ...]
    dropped: tuple[Drop, ...]
    result: CoordinateResult  # the full plan
    targets: int


def _reprefix(exc: GalacticError, prefix: str, rename: dict[str, str] | None = None) -> GalacticError:
    """The same error with its field seen from the event (`targets[2].ra_deg` ->
    `upsert.targets[2].ra_deg`), so the client learns which part of its event is at fault."""
    field = exc.field or ""
    for old, new in (rename or {}).items():
        if field.startswith(old):
            field = new + field[len(old):]
            break
    return type(exc)(exc.message, field=f"{prefix}.{field}" if field else prefix)


class PlanState:
    """The standing plan of one stream. Every mutator validates first, then applies, and
    raises (InvalidArgument / NotFound / ResourceExhausted, the field named from the
    event's point of view) without changing anything.

    Targets live in columns, in the order they were first upserted (a replaced target keeps
    its row, a retracted one closes its gap), each row stamped with the upsert that wrote
    it. Columns are replaced, never written in place: a snapshot being planned on the
    worker thread keeps the arrays it was given."""

    def __init__(self, *, time_unix: float, observatories: tuple[Observatory, ...],
                 targets: tuple[Target, ...] | TargetColumns, window_s: float, snr_required: float | None,
                 table: SiteTable, config: CoordinationConfig) -> None:
        self._table = table
        self._config = config
        self._max_targets = config.streams.max_targets
        if len(targets) > self._max_targets:
            raise ResourceExhausted(f"{len(targets)} targets exceed the stream bound "
                                    f"streams.max_targets={self._max_targets}", field="open.targets")
        try:
            cols = _as_columns(targets)
            opened = problem.validate(CoordinateRequest(time_unix=time_unix, observatories=observatories,
                                                        targets=cols, window_s=window_s, snr_required=snr_required),
                                      table, config)
        except GalacticError as exc:
            raise _reprefix(exc, "open") from None
        self.time_unix = time_unix
        self.window_s = window_s
        self.snr_required = snr_required
        self._sites: dict[str, Observatory] = {o.site_id: o for o in observatories}
        # The sites as checked arrays (`problem.check_sites`), kept until a site changes:
        # each plan's snapshot would otherwise check the same observatories again.
        self._site_arrays = opened.sites
        self._ids: list[str] = list(cols.id)
        self._row: dict[str, int] = {tid: i for i, tid in enumerate(self._ids)}
        self._cols: dict[str, np.ndarray] = {name: np.asarray(getattr(cols, name)).copy() for name in _ARRAYS}
        self._stamp = np.arange(len(self._ids), dtype=np.int64)  # (N,) the upsert that wrote each row
        self._next_stamp = len(self._ids)
        self._previous: dict[str, str] = {}  # the last plan: target id -> site id
        self.sequence = 0
        # Per-target scores (feasible, P(success), SNR rows over the sites) of the last plan,
        # valid for one (epoch, weights version) and keyed by row stamp: a new alert then
        # costs the model its own 12 rows, not the whole state's. Site and window changes
        # bump the epoch.
        self._epoch = 0
        self._score_stamps: np.ndarray | None = None  # (N,) stamps of the rows in _score_grids
        self._score_grids: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # (N, S) each
        self._scores_key: tuple[int, str] | None = None
        # The last plan's decision on those rows: site per row (N,) and the urgent targets
        # kept (N,); the next plan builds on it (`solver.assign_more`).
        self._decision: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def n_targets(self) -> int:
        return len(self._ids)

    def upsert(self, targets: tuple[Target, ...] | TargetColumns) -> None:
        """Add targets, or replace those whose id is known."""
        if not len(targets):
            raise InvalidArgument("at least one target is required", field="upsert.targets")
        try:
            cols = _as_columns(targets)
            problem.check_targets(cols, len(self._sites), self._config)  # sites, time, window: checked when set
        except GalacticError as exc:
            raise _reprefix(exc, "upsert") from None
        rows = [self._row.get(tid, -1) for tid in cols.id]
        new = rows.count(-1)
        if len(self._ids) + new > self._max_targets:
            raise ResourceExhausted(f"the stream would hold {len(self._ids) + new} targets; "
                                    f"streams.max_targets={self._max_targets}", field="upsert.targets")
        for k, tid in enumerate(cols.id):
            if rows[k] < 0:
                rows[k] = self._row[tid] = len(self._ids)
                self._ids.append(tid)
        idx = np.asarray(rows, dtype=np.int64)
        stamps = np.arange(self._next_stamp, self._next_stamp + len(rows), dtype=np.int64)
        self._next_stamp += len(rows)
        for name, old in (*self._cols.items(), ("stamp", self._stamp)):
            col = np.concatenate([old, np.zeros(new, dtype=old.dtype)]) if new else old.copy()
            col[idx] = stamps if name == "stamp" else getattr(cols, name)
            if name == "stamp":
                self._stamp = col
            else:
                self._cols[name] = col

    def retract(self, target_ids: tuple[str, ...]) -> None:
        """Remove targets by id; an unknown id is NotFound and nothing is removed."""
        if not target_ids:
            raise InvalidArgument("at least one target id is required", field="retract.target_ids")
        for i, tid in enumerate(target_ids):
            if tid not in self._row:
                raise NotFound(f"no target {tid!r} in this plan", field=f"retract.target_ids[{i}]")
        gone = set(target_ids)
        rows = [self._row.pop(tid) for tid in gone]
        keep = np.ones(len(self._ids), dtype=bool)
        keep[rows] = False
        self._ids = [tid for tid, k in zip(self._ids, keep.tolist()) if k]
        # Only the rows after the first removed one moved (an alert retracted is usually
        # the last row: nothing to renumber).
        ids, row = self._ids, self._row
        for i in range(min(rows), len(ids)):
            row[ids[i]] = i
        self._cols = {name: col[keep] for name, col in self._cols.items()}
        self._stamp = self._stamp[keep]

    def update_site(self, change: SiteChange) -> None:
        """Change a site's forecast, current conditions, open state or capacity."""
        old = self._sites.get(change.site_id)
        if old is None:
            raise NotFound(f"site {change.site_id!r} is not in this plan (open it with PlanOpen.observatories)",
                           field="site.site_id")
        new = dataclasses.replace(
            old, forecast=change.forecast if change.forecast is not None else old.forecast,
            current=change.current if change.current is not None else old.current,
            open=change.open if change.open is not None else old.open,
            capacity=change.capacity if change.capacity is not None else old.capacity)
        sites = tuple(new if s.site_id == change.site_id else s for s in self._sites.values())
        j = list(self._sites).index(change.site_id)
        try:
            arrays = problem.check_sites(sites, self._table)  # time, window and targets are unchanged
        except GalacticError as exc:
            raise _reprefix(exc, "site", {f"observatories[{j}].": ""}) from None
        self._sites[change.site_id] = new
        self._site_arrays = arrays
        self._epoch += 1

    def set_window(self, time_unix: float, window_s: float | None) -> None:
        window = self.window_s if window_s is None else window_s
        try:  # the time and window; the sites as they were checked
            problem.validate(CoordinateRequest(time_unix=time_unix, observatories=tuple(self._sites.values()),
                                               targets=(), window_s=window, snr_required=self.snr_required),
                             self._table, self._config, sites=self._site_arrays)
        except GalacticError as exc:
            raise _reprefix(exc, "window") from None
        self.time_unix, self.window_s = time_unix, window
        self._epoch += 1

    def request(self, request_id: str = "") -> CoordinateRequest:
        """The state as one snapshot request (valid by construction: every change was checked).
        Its columns are the state's own arrays, which events replace rather than write."""
        cols = TargetColumns(id=tuple(self._ids), **self._cols)
        return CoordinateRequest(time_unix=self.time_unix, observatories=tuple(self._sites.values()),
                                 targets=cols, window_s=self.window_s, snr_required=self.snr_required,
                                 request_id=request_id)

    def site_arrays(self, table: SiteTable):
        """The sites as `problem.check_sites` made them when they last changed, for
        `problem.validate(sites=...)`; None if `table` is not the one they were checked on."""
        return self._site_arrays if table is self._table else None

    def snapshot(self) -> tuple[CoordinateRequest, int, np.ndarray]:
        """The state as a request, the epoch its site conditions and window belong to, and
        the stamps (N,) of its rows (for `cached_scores` and `store_scores`)."""
        return self.request(), self._epoch, self._stamp

    def cached_scores(self, stamps: np.ndarray, epoch: int, version: str, n_sites: int):
        """(feasible, P(success), SNR) grids (N, S) for the rows stamped `stamps` from the
        previous plan, the rows (M,) that have no valid score (new or replaced targets; all
        of them when the epoch or the weights `version` differ), and the previous plan's
        decision on these rows for `solver.assign_more` (site per row, urgent kept, the rows
        that are new, the placed targets gone since), or None when there is none to build on."""
        n = len(stamps)
        if self._scores_key != (epoch, version) or self._score_grids is None:
            empty = np.zeros((n, n_sites), dtype=bool), np.zeros((n, n_sites)), np.zeros((n, n_sites))
            return empty, np.arange(n, dtype=np.int64), None
        old = self._score_stamps
        m = len(old)
        if m <= n and np.array_equal(stamps[:m], old):
            # Only rows added since the last plan (an alert, the usual event): the scored
            # rows are a prefix, copied as blocks instead of gathered row by row.
            grids = []
            for grid in self._score_grids:
                dst = np.empty((n, n_sites), dtype=grid.dtype)
                dst[:m], dst[m:] = grid, 0
                grids.append(dst)
            previous = None if self._decision is None else (*self._decision, None, 0)
            return tuple(grids), np.arange(m, n, dtype=np.int64), previous
        ok, p, snr = np.zeros((n, n_sites), dtype=bool), np.zeros((n, n_sites)), np.zeros((n, n_sites))
        order = np.argsort(old, kind="stable")
        at = np.minimum(np.searchsorted(old[order], stamps), max(len(old) - 1, 0))
        hit = (old[order][at] == stamps) if len(old) else np.zeros(n, dtype=bool)
        src = order[at[hit]]
        for dst, grid in zip((ok, p, snr), self._score_grids):  # three gathers, not 3 x N row copies
            dst[hit] = grid[src]
        previous = None
        if self._decision is not None:  # rows retracted or replaced: the kept rows' decision
            choice, kept = self._decision
            prev_choice, prev_kept = np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=bool)
            prev_choice[hit], prev_kept[hit] = choice[src], kept[src]
            stays = np.zeros(m, dtype=bool)
            stays[src] = True
            previous = (prev_choice, prev_kept, ~hit, int(((choice >= 0) & ~stays).sum()))
        return (ok, p, snr), np.flatnonzero(~hit), previous

    def store_scores(self, epoch: int, version: str, stamps: np.ndarray,
                     grids: tuple[np.ndarray, np.ndarray, np.ndarray],
                     decision: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Keep the rows a plan scored, and its decision; a row's stamp says whether its
        target is unchanged."""
        if epoch != self._epoch:
            return  # conditions changed while it was planned: these rows are stale
        self._scores_key, self._score_grids, self._score_stamps = (epoch, version), grids, stamps
        self._decision = decision

    def advance(self, result: CoordinateResult) -> PlanDiff:
        """Make `result` the current plan and return what changed against the previous one.

        A target the result does not mention (retracted while it was being planned) is
        left out of the new plan rather than resurrected.
        """
        # From the result's columns: an Assignment is built only for a target that is new
        # or moved (an alert's plan changes a few of ~100 placements), not for every one.
        c = result.columns
        ids, sites, held = c.target_id, c.site_id, self._row
        rows, cols = c.assigned.tolist(), c.site.tolist()
        now = {ids[i]: sites[j] for i, j in zip(rows, cols) if ids[i] in held}  # target -> site
        at = {ids[i]: k for k, i in enumerate(rows)}

        def assignment(tid: str) -> Assignment:
            k = at[tid]
            return Assignment(tid, now[tid], float(c.expected_value[k]), float(c.p_success[k]),
                              float(c.expected_snr[k]))

        assigned, moved, dropped = [], [], []
        for tid, site in now.items():
            before = self._previous.get(tid)
            if before is None:
                assigned.append(assignment(tid))
            elif before != site:
                moved.append(Move(tid, before, assignment(tid)))
        for tid, before in self._previous.items():
            if tid in now:
                continue
            gone = tid not in held
            reason = None if gone else UnassignedReason(_reason(c, tid))
            dropped.append(Drop(tid, before, reason, gone))
        self._previous = now
        self.sequence += 1
        return PlanDiff(self.sequence, tuple(assigned), tuple(moved), tuple(dropped), result, len(self._ids))


def _reason(c, tid: str) -> int:
    """Why the result left target `tid` (held, unassigned) out: its row's reason, found by
    one search rather than a map of every unassigned target."""
    try:
        row = c.target_id.index(tid)
    except ValueError:  # retracted and upserted again while the plan was made: not in it
        return UnassignedReason.CAPACITY
    k = int(np.searchsorted(c.unassigned, row))  # `unassigned` is in request order
    if k < len(c.unassigned) and c.unassigned[k] == row:
        return int(c.reason[k])
    return UnassignedReason.CAPACITY
