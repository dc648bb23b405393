"""The aggregation server of the NVFLARE federation: a FLARE `ModelController`.

Each round it sends the global weights (and the round's learning rate) to every site of
the job, waits for their answers and applies `aggregate.weighted_average` then the server
optimizer (FedAvg, or FedAvgM with `server_momentum` > 0; FedProx is the sites' `prox_mu`).
A site's row of the per-site parameters is keyed by its FLARE identity (the client name),
which must be a site id of the table.

Stragglers: a round waits for every site, at most `round_timeout_s`, and aggregates whoever
answered if that is at least `min_sites` (fewer fails the job: a model averaged from too few
sites is not the federation's). FLARE ends the wait early once every site still missing
is deemed dead (its job process gone, reported by its client, after FLARE's grace period).
A site that was down and answers a later round is aggregated again; an answer to a round
already closed is dropped by FLARE. Absent sites' rows of the per-site parameters keep
their global value. Which sites each round aggregated, with their sample counts, goes into
the checkpoint's metadata (`aggregated`) and the log.

With `personal_epochs` > 0 a personalisation round follows the last one: the same broadcast
and straggler rules, the sites fit only their own per-site rows, and the server takes row i
from site i's answer with no averaging or momentum (`aggregate.personalised`).

At the end it writes the checkpoint the engine loads. With `record_dir` it also writes,
per round, the global weights it sent, every update it received (as received: weights and
metadata) and the new global weights, so a test can check the arithmetic and what crossed
the wire.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.workflows.model_controller import ModelController
from safetensors.numpy import save_file

from engines.coordination import checkpoint
from engines.coordination.model import CoordNet, CoordNetConfig
from training.coordination import aggregate


class CoordFedAvg(ModelController):
    def __init__(self, site_ids: list[str], model_config: dict, rounds: int, seed: int, out: str,
                 server_momentum: float = 0.0, own_rows: bool = True, round_cosine: bool = True,
                 local_lr: float | None = None, meta: dict | None = None, record_dir: str | None = None,
                 min_sites: int = 0, round_timeout_s: int = 0, personal_epochs: int = 0) -> None:
        super().__init__()
        self.site_ids = list(site_ids)
        self.model_config = dict(model_config)
        self.rounds = rounds
        self.seed = seed
        self.out = out
        self.server_momentum = server_momentum
        self.own_rows = own_rows
        self.round_cosine = round_cosine
        self.local_lr = local_lr
        self.meta = dict(meta or {})
        self.record_dir = record_dir
        self.min_sites = min_sites  # 0: every site of the job
        self.round_timeout_s = round_timeout_s  # 0: wait for ever
        self.personal_epochs = personal_epochs  # > 0: a personalisation round after the last

    def run(self) -> None:
        import lightning as L

        L.seed_everything(self.seed, verbose=False)  # the same initial weights as the in-process path
        config = CoordNetConfig(**self.model_config)
        model = CoordNet(config)
        index = {s: i for i, s in enumerate(self.site_ids)}
        server = aggregate.ServerOptimizer(self.server_momentum)
        base_lr = self.local_lr if self.local_lr is not None else config.lr
        aggregated = []  # per round: which sites, how many samples
        for r in range(self.rounds):
            lr = aggregate.round_lr(base_lr, r, self.rounds, self.round_cosine)
            current = {k: v.detach().clone() for k, v in model.state_dict().items()}
            results, states, names, counts, present = self._round(r, current, {"lr": lr}, index)
            merged = aggregate.weighted_average(states, counts, present, self.own_rows)
            if self.own_rows:
                merged = aggregate.keep_absent_rows(merged, current, present)
            new = server.step(current, merged)
            model.load_state_dict(new)
            aggregated.append(self._aggregated(r, names, counts, results, current, new))
        if self.personal_epochs > 0:
            # The personalisation round (train.FitConfig.personal_epochs): every site fits its
            # own rows at the base learning rate; row i comes from site i, nothing is averaged.
            r = self.rounds
            current = {k: v.detach().clone() for k, v in model.state_dict().items()}
            results, states, names, counts, present = self._round(
                r, current, {"lr": base_lr, "personal_epochs": self.personal_epochs}, index)
            new = aggregate.personalised(current, states, present)
            model.load_state_dict(new)
            aggregated.append({**self._aggregated(r, names, counts, results, current, new), "personal": True})
        model.eval()
        checkpoint.save(model, tuple(self.site_ids), Path(self.out),
                        {**self.meta, "rounds": self.rounds, "personal_epochs": self.personal_epochs,
                         "aggregated": aggregated})
        self.info(f"wrote {self.out}")

    def _round(self, r: int, current: dict, meta: dict, index: dict[str, int]):
        """Send `current` with `meta` to every site, wait (stragglers: module docstring), and
        return the answers in table order with their weights, site names, sample counts and rows."""
        task = FLModel(params_type=ParamsType.FULL, params={k: v.numpy() for k, v in current.items()},
                       current_round=r, total_rounds=self.rounds + (self.personal_epochs > 0),
                       meta={**meta, "model_config": self.model_config})
        targets = [c.name for c in self.engine.get_clients()]
        needed = min(self.min_sites, len(targets)) if self.min_sites else len(targets)
        # min_responses=needed marks the round complete once `needed` answered, but only
        # after a further wait_time_after_min_received; waiting the whole round timeout
        # there lets every live site answer, so a healthy slow site is not dropped just
        # because the minimum was met first. Without a timeout a round waits for every
        # site (FLARE would otherwise close it the moment `needed` answered).
        quorum = needed if self.round_timeout_s else len(targets)
        results = self.broadcast_model(data=task, min_responses=quorum, timeout=self.round_timeout_s,
                                       wait_time_after_min_received=self.round_timeout_s)
        # Table order, not arrival order: the sum is then the in-process loop's, bit for bit.
        results = sorted((res for res in results if int(res.current_round or 0) == r),
                         key=lambda res: index.get(res.meta["client_name"], -1))
        names = [res.meta["client_name"] for res in results]
        unknown = sorted(set(names) - set(index))
        if unknown:
            raise RuntimeError(f"participants {unknown} are not sites of the table")
        if len(results) < needed:
            raise RuntimeError(f"round {r + 1}: {len(results)} of {len(targets)} sites answered ({names}) "
                               f"within {self.round_timeout_s} s; min_sites is {needed}")
        states = [{k: torch.as_tensor(np.asarray(v)) for k, v in res.params.items()} for res in results]
        counts = [float(res.meta["samples"]) for res in results]
        return results, states, names, counts, [index[n] for n in names]

    def _aggregated(self, r: int, names: list[str], counts: list[float], results, sent: dict, new: dict) -> dict:
        """Round r's entry of the checkpoint's `aggregated` record (and its log line and files)."""
        missing = [s for s in self.site_ids if s not in names]
        if self.record_dir:
            self._record(r, sent, results, new)
        self.info(f"round {r + 1}/{self.rounds + (self.personal_epochs > 0)}: {len(results)} sites, "
                  f"{int(sum(counts))} samples" + (f"; missing {', '.join(missing)}" if missing else ""))
        return {"round": r, "sites": names, "samples": {n: int(c) for n, c in zip(names, counts)},
                "missing": missing}

    def _record(self, r: int, sent: dict, results: list[FLModel], new: dict) -> None:
        d = Path(self.record_dir) / f"round_{r:03d}"
        d.mkdir(parents=True, exist_ok=True)
        save_file({k: v.numpy() for k, v in sent.items()}, str(d / "global_in.safetensors"))
        save_file({k: v.numpy() for k, v in new.items()}, str(d / "global_out.safetensors"))
        received = []
        for res in results:
            name = res.meta["client_name"]
            save_file({k: np.ascontiguousarray(v) for k, v in res.params.items()}, str(d / f"update_{name}.safetensors"))
            # Everything that came with the weights, minus what FLARE's server adds itself.
            meta = {k: v for k, v in res.meta.items() if k not in ("client_name", "props")}
            received.append({"site": name, "params_type": str(res.params_type), "meta": meta,
                             "params": {k: [str(np.asarray(v).dtype), list(np.asarray(v).shape)]
                                        for k, v in res.params.items()},
                             "metrics": res.metrics, "optimizer_params": res.optimizer_params is not None})
        (d / "received.json").write_text(json.dumps(received, indent=1, default=str) + "\n")
