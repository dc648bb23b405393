"""CoordinationEngine: scores (target, site) pairs with CoordNet and assigns them exactly.

Requests from many clients share model steps through the dynamic batcher: each step
builds every queued request's features (numpy), runs one forward pass over all their rows,
then solves each request's assignment. Raw `infer()` calls (the generic Inference RPC) join
the same batches. Validation happens before queuing so a bad request fails alone.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
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
from engines.coordination.sites import SiteTable, load_sites
from engines.coordination.types import CoordinateRequest, CoordinateResult, TensorSpec
from engines.errors import FailedPrecondition, InvalidArgument, Unavailable

SERVICES = ("galactic.v1.Coordination", "galactic.v1.Inference")


@dataclass(frozen=True)
class _InferItem:
    features: torch.Tensor  # (B, F) float32
    site: torch.Tensor  # (B,) int64


class CoordinationEngine:
    def __init__(self, config: CoordinationConfig) -> None:
        self.config = config
        self.name = config.name
        self._state = "loading"
        self._model: CoordNet | None = None
        self._sites: SiteTable | None = None
        self._version = ""
        b = config.batching
        limits = BatchLimits(
            max_batch_size=b.max_batch_size if b.enabled else 1,
            max_queue_delay_s=b.max_queue_delay_ms / 1000.0 if b.enabled else 0.0,
            max_queue=b.max_queue,
            max_batch_cost=b.max_batch_pairs,
        )
        self._batcher: DynamicBatcher = DynamicBatcher(config.name, self._step, limits, cost=self._cost)

    # -- Engine protocol -------------------------------------------------------------------
    def load(self, progress: Callable[[str], None]) -> None:
        progress("reading the site table")
        self._sites = load_sites(self.config.sites_file)
        weights = self._resolve_checkpoint(progress)
        progress(f"loading {weights.name}")
        model, site_ids, digest = checkpoint.load(weights)
        if site_ids != self._sites.ids:
            raise FailedPrecondition(
                f"checkpoint was trained on sites {list(site_ids)}, the site table has {list(self._sites.ids)}",
                field="checkpoint")
        self._model, self._version = model, digest
        progress("warming up")
        with torch.no_grad():
            model.predict(torch.zeros(8, features.N_FEATURES), torch.zeros(8, dtype=torch.long))

    def _resolve_checkpoint(self, progress: Callable[[str], None]) -> Path:
        if self.config.checkpoint != "embedded":
            return Path(self.config.checkpoint)
        if checkpoint.EMBEDDED.exists() and checkpoint.config_path(checkpoint.EMBEDDED).exists():
            return checkpoint.EMBEDDED
        # Not shipped (e.g. a trimmed install): train the small default once and cache it.
        from training.coordination.default import ensure_default_checkpoint

        return ensure_default_checkpoint(self.config.cache_dir, progress)

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._model is None:
            raise FailedPrecondition("load() must succeed before start()")
        await self._batcher.start()
        self._state = "ready"

    async def stop(self, grace_s: float) -> None:
        self._state = "draining"
        await self._batcher.stop(grace_s)
        self._state = "stopped"

    @property
    def version(self) -> str:
        """The checkpoint's hash; cheap, for every response (info() counts parameters)."""
        return self._version

    def info(self) -> ModelInfo:
        params = self._model.n_parameters() if self._model is not None else 0
        return ModelInfo(name=self.name, kind="coordination", version=self._version, state=self._state,
                         device="cpu", parameters=params, memory_bytes=params * 4,
                         config=to_mapping(self.config), services=SERVICES)

    def stats(self) -> dict[str, float]:
        return self._batcher.stats()

    # -- requests --------------------------------------------------------------------------
    async def coordinate(self, request: CoordinateRequest, deadline: float | None = None) -> CoordinateResult:
        """Assign the request's targets to its observatories for one window.

        `deadline` is an absolute time.monotonic(). Raises InvalidArgument (naming the field),
        ResourceExhausted, DeadlineExceeded or Unavailable.
        """
        self._require_ready()
        prob = problem.validate(request, self._sites, self.config)
        return await self._batcher.submit(prob, deadline)

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
        return item.pairs if isinstance(item, problem.Problem) else int(item.site.shape[0])

    def _step(self, items: list) -> list:
        """One model step for a batch of Problems and raw infer items: exactly one result each."""
        problems = [i for i in items if isinstance(i, problem.Problem)]
        raw = [i for i in items if isinstance(i, _InferItem)]
        pairs = features.pair_batch([(p.time_unix, p.targets, p.sites, p.expired, p.snr_required) for p in problems],
                                    self.config.constraints) if problems else None
        xs = ([torch.from_numpy(pairs.x)] if pairs else []) + [r.features for r in raw]
        ss = ([torch.from_numpy(pairs.site)] if pairs else []) + [r.site for r in raw]
        p_all, snr_all = self._model.predict(torch.cat(xs), torch.cat(ss))  # one forward: (sum P,), (sum P,)
        p_np, snr_np = p_all.numpy(), snr_all.numpy()
        results: dict[int, object] = {}
        start = 0
        for k, item in enumerate(problems):
            n = int(pairs.counts[k])
            try:
                results[id(item)] = self._solve(item, pairs.feasible[k], pairs.ti[k], pairs.sj[k],
                                                p_np[start:start + n], snr_np[start:start + n])
            except Exception as exc:  # one request's failure stays with that request
                results[id(item)] = exc
            start += n
        for item in raw:
            n = int(item.site.shape[0])
            results[id(item)] = (p_all[start:start + n].clone(), snr_all[start:start + n].clone())
            start += n
        return [results[id(item)] for item in items]

    def _solve(self, item: problem.Problem, ok, ti, sj, p, snr) -> CoordinateResult:
        n, s = ok.shape
        prob = np.zeros((n, s))
        esnr = np.zeros((n, s))
        prob[ti, sj] = p
        esnr[ti, sj] = snr
        weights = item.targets.value[:, None] * prob  # (N, S) expected value, 0 where infeasible
        choice, used = solver.assign(weights, item.sites.capacity, item.targets.critical, self.config.lsa_max_cells)
        return problem.result(item, ok, prob, esnr, choice, used)
