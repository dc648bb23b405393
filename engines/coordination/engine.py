"""CoordinationEngine: scores (target, site) pairs with CoordNet and assigns them exactly.

Requests from many clients share model steps through the dynamic batcher: each step
builds every queued request's features (numpy), runs one forward pass over all their rows,
then solves each request's assignment. Raw `infer()` calls (the generic Inference RPC) join
the same batches. Validation happens before queuing so a bad request fails alone.

Weights can be replaced while serving (`reload()`): the new checkpoint is read and
validated off the event loop, then swapped in by one reference assignment. A step reads
the reference once when it starts, so a batch in flight finishes on the weights it started
with and the next batch uses the new ones; results carry the version that scored them.

Supervision: batches failing `MAX_FAILED_BATCHES` times in a row, or a step that kills the
worker thread, are a fault; the daemon then restarts the engine (`restart()`: fail what it
held with Unavailable, fresh thread, a canary through a real step) with health NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from engines.base import ModelInfo
from engines.batching import BatchLimits, DynamicBatcher
from engines.config import to_mapping
from engines.coordination import checkpoint, features, problem, solver
from engines.coordination.config import CoordinationConfig
from engines.coordination.model import CoordNet
from engines.coordination.plan import PlanState
from engines.coordination.sites import SiteTable, load_sites
from engines.coordination.types import (
    CoordinateRequest, CoordinateResult, Observatory, Target, TargetColumns, TensorSpec,
)
from engines.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from engines.paths import confine

SERVICES = ("galactic.v1.Coordination", "galactic.v1.Inference")

# Failing batches in a row after which the engine is broken, not unlucky (validation runs
# before queuing, so a failing batch is never a client's fault).
MAX_FAILED_BATCHES = 3
_CANARY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class _InferItem:
    features: torch.Tensor  # (B, F) float32
    site: torch.Tensor  # (B,) int64


@dataclass(frozen=True)
class _PlanItem:
    """A standing plan's snapshot: rows `missing` are scored now, the others come from the
    previous plan's scores (`cached_*`, scored by weights `version`)."""

    problem: problem.Problem
    missing: np.ndarray  # (M,) int64 rows of problem.targets to score
    cached_ok: np.ndarray  # (N, S) bool
    cached_p: np.ndarray  # (N, S)
    cached_snr: np.ndarray  # (N, S)
    version: str
    # The previous plan's decision on these rows (`PlanState.cached_scores`), or None.
    previous: tuple | None = None

    @property
    def pairs(self) -> int:
        # The whole grid, not just the rows scored now: the step copies, solves and reports
        # all N x S pairs, so a standing plan is as much work as a fresh request of its size
        # (and an alert into a big plan starts a step at once, as that request would).
        return max(1, self.problem.pairs)


@dataclass(frozen=True)
class _Weights:
    """What a step scores with; replaced as a whole, never mutated."""

    model: CoordNet
    version: str  # checkpoint content hash
    path: Path


class CoordinationEngine:
    def __init__(self, config: CoordinationConfig) -> None:
        self.config = config
        self.name = config.name
        self._state = "loading"
        self._weights: _Weights | None = None
        self._sites: SiteTable | None = None
        self._reload_lock = asyncio.Lock()
        self._plans_open = 0
        b = config.batching
        limits = BatchLimits(
            max_batch_size=b.max_batch_size if b.enabled else 1,
            max_queue_delay_s=b.max_queue_delay_ms / 1000.0 if b.enabled else 0.0,
            max_queue=b.max_queue,
            max_batch_cost=b.max_batch_pairs,
            preferred_batch_cost=b.preferred_batch_pairs,
            max_failed_batches=MAX_FAILED_BATCHES,
        )
        self._batcher: DynamicBatcher = DynamicBatcher(config.name, self._step, limits, cost=self._cost)

    # -- Engine protocol -------------------------------------------------------------------
    def load(self, progress: Callable[[str], None]) -> None:
        """Read the site table and the checkpoint `config.checkpoint` names (a path: the
        daemon resolves "embedded" to the shipped file). A missing or invalid checkpoint
        raises NotFound / InvalidArgument / FailedPrecondition naming `checkpoint`."""
        progress("reading the site table")
        self._sites = load_sites(self.config.sites_file)
        if self.config.checkpoint == "embedded":
            raise FailedPrecondition("'embedded' must be resolved to the shipped checkpoint's path by the daemon "
                                     "(daemon/shipped.py); the engine loads paths only", field="checkpoint")
        path = Path(self.config.checkpoint).expanduser()
        progress(f"loading {path.name}")
        self._weights = self._read(path, field="checkpoint")

    def _read(self, path: Path, field: str) -> _Weights:
        """Load, validate and warm up a checkpoint (blocking; the site table must be read)."""
        model, _site_ids, digest = checkpoint.load(path, self._sites.ids, field=field)
        with torch.no_grad():  # warm-up, and a last check that it scores at all
            p, _ = model.predict(torch.zeros(8, features.N_FEATURES), torch.zeros(8, dtype=torch.long))
        if not torch.isfinite(p).all():
            raise InvalidArgument(f"{path}: the model scores NaN on a zero input", field=field)
        return _Weights(model, digest, path)

    async def reload(self, path: str | Path) -> ModelInfo:
        """Swap in the checkpoint at `path` without stopping; see the module docstring.

        `path` must lie inside `config.reload_root` (PermissionDenied otherwise). Validation
        failures raise (NotFound, InvalidArgument, FailedPrecondition naming `path`) and
        leave the served weights as they were. Reloads are serialised.
        """
        self._require_ready()
        if not str(path):
            raise InvalidArgument("a checkpoint path is required", field="path")
        full = confine(str(path), self.config.reload_root, "reload")
        async with self._reload_lock:
            new = await asyncio.to_thread(self._read, full, "path")
            self._weights = new  # the next step picks it up; a running step keeps its own
        return self.info()

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._weights is None:
            raise FailedPrecondition("load() must succeed before start()")
        await self._batcher.start()
        self._state = "ready"

    async def stop(self, grace_s: float) -> None:
        self._state = "draining"
        await self._batcher.stop(grace_s)
        self._state = "stopped"

    # -- supervision: the daemon restarts a worker that died or kept failing ---------------
    async def wait_faulted(self) -> str:
        """Return (why) once the batcher's worker died or gave up after failing batches."""
        return await self._batcher.wait_faulted()

    async def restart(self) -> None:
        """Fail what the dead worker held with Unavailable, start a fresh one, and prove
        the engine with a canary; raises if the canary fails (the caller retries). New
        requests get Unavailable until the canary has passed."""
        self._state = "restarting"
        await self._batcher.restart()
        await self.canary()
        self._state = "ready"

    async def canary(self) -> None:
        """One row through the batcher's worker and the model's forward: checks the
        engine, not just that its thread is alive. Raises what the step raised."""
        item = _InferItem(torch.zeros(1, features.N_FEATURES), torch.zeros(1, dtype=torch.long))
        p, _ = await self._batcher.submit(item, time.monotonic() + _CANARY_TIMEOUT_S)
        if not torch.isfinite(p).all():
            raise RuntimeError(f"{self.name}: the canary scored {p.tolist()}")

    @property
    def version(self) -> str:
        """The served checkpoint's hash; cheap, for every response (info() counts parameters)."""
        return self._weights.version if self._weights is not None else ""

    def info(self) -> ModelInfo:
        w = self._weights
        params = w.model.n_parameters() if w is not None else 0
        config = replace(self.config, checkpoint=str(w.path)) if w is not None else self.config
        return ModelInfo(name=self.name, kind="coordination", version=self.version, state=self._state,
                         device="cpu", parameters=params, memory_bytes=params * 4,
                         config=to_mapping(config), services=SERVICES)

    def stats(self) -> dict[str, float]:
        return {**self._batcher.stats(), "plan_streams_open": float(self._plans_open)}

    # -- requests --------------------------------------------------------------------------
    async def coordinate(self, request: CoordinateRequest, deadline: float | None = None) -> CoordinateResult:
        """Assign the request's targets to its observatories for one window.

        `deadline` is an absolute time.monotonic(). Raises InvalidArgument (naming the field),
        ResourceExhausted, DeadlineExceeded or Unavailable.
        """
        self._require_ready()
        prob = problem.validate(request, self._sites, self.config)
        return await self._batcher.submit(prob, deadline)

    def open_plan(self, *, time_unix: float, observatories: tuple[Observatory, ...],
                  targets: tuple[Target, ...] | TargetColumns, window_s: float,
                  snr_required: float | None) -> PlanState:
        """A standing plan for one stream (Coordination.PlanStream); pair with close_plan().

        ResourceExhausted past `streams.max_streams` open plans or `streams.max_targets`
        targets; InvalidArgument naming the `open.` field of a bad initial state.
        """
        self._require_ready()
        if self._plans_open >= self.config.streams.max_streams:
            raise ResourceExhausted(f"{self._plans_open} plan streams are open; streams.max_streams="
                                    f"{self.config.streams.max_streams}", field="open")
        state = PlanState(time_unix=time_unix, observatories=observatories, targets=targets, window_s=window_s,
                          snr_required=snr_required, table=self._sites, config=self.config)
        self._plans_open += 1
        return state

    def close_plan(self) -> None:
        self._plans_open -= 1

    async def plan(self, state: PlanState, deadline: float | None = None) -> CoordinateResult:
        """The plan for a PlanState's current contents: like coordinate() on its snapshot,
        but only targets without scores from the previous plan are run through the model."""
        self._require_ready()
        req, epoch, stamps = state.snapshot()
        # Each upsert's targets were checked as it came, and the sites when they last changed.
        prob = problem.validate(req, self._sites, self.config, targets_checked=True,
                                sites=state.site_arrays(self._sites))
        s = len(req.observatories)
        version = self.version
        (ok, p, snr), missing, previous = state.cached_scores(stamps, epoch, version, s)
        item = _PlanItem(prob, missing, ok, p, snr, version, previous)
        result, grids, decision = await self._batcher.submit(item, deadline)
        state.store_scores(epoch, result.version, stamps, grids, decision)
        return result

    async def infer(self, inputs: dict[str, torch.Tensor], deadline: float | None = None) -> dict[str, torch.Tensor]:
        """Raw scoring: {"features": (B, F) float32, "site": (B,) int64} -> {"p_success", "expected_snr"} (B,)."""
        self._require_ready()
        item = self._check_inputs(inputs)
        p, snr = await self._batcher.submit(item, deadline)
        return {"p_success": p, "expected_snr": snr}

    def input_spec(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec("features", "float32", (-1, features.N_FEATURES)), TensorSpec("site", "int64", (-1,)))

    def output_spec(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec("p_success", "float32", (-1,)), TensorSpec("expected_snr", "float32", (-1,)))

    def site_ids(self) -> tuple[str, ...]:
        return self._sites.ids if self._sites is not None else ()

    def _require_ready(self) -> None:
        if self._state != "ready":
            raise Unavailable(f"{self.name} is {self._state}")

    def _check_inputs(self, inputs: dict[str, torch.Tensor]) -> _InferItem:
        names = {s.name for s in self.input_spec()}
        extra = sorted(set(inputs) - names)
        if extra:
            raise InvalidArgument(f"unknown input (expected {sorted(names)})", field=f"inputs.{extra[0]}")
        for spec in self.input_spec():
            if spec.name not in inputs:
                raise InvalidArgument("missing input", field=f"inputs.{spec.name}")
            x = inputs[spec.name]
            if not isinstance(x, torch.Tensor) or str(x.dtype).removeprefix("torch.") != spec.dtype:
                raise InvalidArgument(f"expected a {spec.dtype} tensor", field=f"inputs.{spec.name}")
            if x.dim() != len(spec.shape) or any(d != -1 and d != n for d, n in zip(spec.shape, x.shape)):
                raise InvalidArgument(f"expected shape {spec.shape}, got {tuple(x.shape)}", field=f"inputs.{spec.name}")
        feats, site = inputs["features"], inputs["site"]
        if feats.shape[0] != site.shape[0]:
            raise InvalidArgument("features and site differ in batch size", field="inputs.site")
        if site.numel() and (int(site.min()) < 0 or int(site.max()) >= len(self._sites.site)):
            raise InvalidArgument(f"site index outside [0, {len(self._sites.site)})", field="inputs.site")
        if not torch.isfinite(feats).all():
            raise InvalidArgument("must be finite", field="inputs.features")
        return _InferItem(feats.contiguous(), site.contiguous())

    # -- the batched step (worker thread) --------------------------------------------------
    @staticmethod
    def _cost(item) -> int:
        return item.pairs if isinstance(item, (problem.Problem, _PlanItem)) else int(item.site.shape[0])

    def _step(self, items: list) -> list:
        """One model step for a batch of Problems and raw infer items: exactly one result each."""
        weights = self._weights  # read once: a reload during this step takes effect at the next
        problems = [i for i in items if isinstance(i, problem.Problem)]
        plans = [i for i in items if isinstance(i, _PlanItem)]
        raw = [i for i in items if isinstance(i, _InferItem)]
        # A plan's cached rows are only good for the weights that scored them.
        rescore = [i.missing if i.version == weights.version else np.arange(i.problem.n_targets)
                   for i in plans]
        specs = [(p.time_unix, p.targets, p.sites, p.expired, p.snr_required) for p in problems]
        specs += [(i.problem.time_unix, _rows(i.problem.targets, idx), i.problem.sites, i.problem.expired[idx],
                   i.problem.snr_required) for i, idx in zip(plans, rescore)]
        pairs = features.pair_batch(specs, self.config.constraints) if specs else None
        xs = ([torch.from_numpy(pairs.x)] if pairs else []) + [r.features for r in raw]
        ss = ([torch.from_numpy(pairs.site)] if pairs else []) + [r.site for r in raw]
        p_all, snr_all = weights.model.predict(torch.cat(xs), torch.cat(ss))  # one forward: (sum P,), (sum P,)
        p_np, snr_np = p_all.numpy(), snr_all.numpy()
        results: dict[int, object] = {}
        # Each problem, then each plan, has its rows in `pairs` in that order.
        solves = [(item, partial(self._solve, item, version=weights.version)) for item in problems]
        solves += [(item, partial(self._solve_plan, item, idx, version=weights.version))
                   for item, idx in zip(plans, rescore)]
        start = 0
        for k, (item, solve) in enumerate(solves):
            n = int(pairs.counts[k])
            try:
                results[id(item)] = solve(pairs.feasible[k], pairs.ti[k], pairs.sj[k], p_np[start:start + n],
                                          snr_np[start:start + n])
            except Exception as exc:  # noqa: BLE001 - one request's failure stays with that request
                results[id(item)] = exc
            start += n
        for item in raw:
            n = int(item.site.shape[0])
            results[id(item)] = (p_all[start:start + n].clone(), snr_all[start:start + n].clone())
            start += n
        return [results[id(item)] for item in items]

    def _solve_plan(self, item: _PlanItem, idx, ok_sub, ti, sj, p, snr, version: str):
        """A plan's grids (cached rows + rows `idx` scored now), solved: (result, grids, decision).
        It builds on the previous plan's decision (`solver.assign_more`)."""
        # The item's grids are its own (`PlanState.cached_scores` makes them per plan) and
        # rows `idx` are rewritten whole, so a rerun of this step writes the same: no copies.
        ok, prob, esnr = item.cached_ok, item.cached_p, item.cached_snr
        ok[idx], prob[idx], esnr[idx] = ok_sub, 0.0, 0.0
        prob[idx[ti], sj] = p
        esnr[idx[ti], sj] = snr
        pr = item.problem
        # The previous decision holds only for rows scored by these weights (not after a reload).
        choice, kept, used = self._assign(pr, prob, item.previous if item.version == version else None)
        return problem.result(pr, ok, prob, esnr, choice, used, version), (ok, prob, esnr), (choice, kept)

    def _solve(self, item: problem.Problem, ok, ti, sj, p, snr, version: str) -> CoordinateResult:
        prob, esnr = np.zeros(ok.shape), np.zeros(ok.shape)  # (N, S); 0 where infeasible
        prob[ti, sj] = p
        esnr[ti, sj] = snr
        return self._decide(item, ok, prob, esnr, version)

    def _decide(self, pr: problem.Problem, ok, prob, esnr, version: str) -> CoordinateResult:
        choice, _, used = self._assign(pr, prob)
        return problem.result(pr, ok, prob, esnr, choice, used, version)

    def _assign(self, pr: problem.Problem, prob: np.ndarray,
                previous: tuple | None = None) -> tuple[np.ndarray, np.ndarray, str]:
        """The decision for one problem's (N, S) P(success) grid (0 where infeasible): site per
        target, the urgent targets kept, the solver. `previous`: a plan's previous decision
        on these rows (`PlanState.cached_scores`), to repair instead of solving afresh."""
        weights = pr.targets.value[:, None] * prob  # (N, S) expected value
        first = solver.urgent_pairs(pr.targets.critical, prob, self.config.urgent_min_p_success)
        return solver.assign_more(weights, pr.sites.capacity, first, *(previous or (None, None, None, 0)),
                                  lsa_max_cells=self.config.lsa_max_cells)


def _rows(t: features.TargetArrays, idx: np.ndarray) -> features.TargetArrays:
    """The targets at rows `idx`."""
    return features.TargetArrays(*(getattr(t, f.name)[idx] for f in fields(features.TargetArrays)))
