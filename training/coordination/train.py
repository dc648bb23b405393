"""Central and federated training of CoordNet on per-site observation logs.

Central: pool every site's log, one Lightning fit. Federated (FedAvg, McMahan et al. 2017;
optionally FedProx, Li et al. 2020): each round, every site fits the current global model
on its own log only, and the server averages the returned state dicts weighted by sample
count (`aggregate.py`). Only weights cross site boundaries, never a log row. Both export a safetensors
checkpoint plus its JSON config, which the engine loads.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from engines.coordination import checkpoint
from engines.coordination.model import SITE_ROWS, CoordNet, CoordNetConfig
from training.coordination import aggregate
from training.coordination.sitelog import Logs


@dataclass(frozen=True)
class FitConfig:
    epochs: int = 12  # central epochs; local-only fits use the same
    rounds: int = 12  # federated rounds
    local_epochs: int = 1  # epochs per site per round
    batch_size: int = 256
    prox_mu: float = 0.0  # > 0: FedProx
    own_embedding_rows: bool = True  # federated: site i's embedding row comes from site i's fit
    round_cosine: bool = True  # federated: anneal the learning rate over rounds
    local_lr: float | None = None  # federated: the sites' learning rate (None: the model's)
    server_momentum: float = 0.0  # federated: FedAvgM (Hsu et al. 2019) server momentum; 0 is FedAvg
    site_lr_scale: float = 1.0  # federated: the per-site rows' learning rate over the shared weights
    # federated: after the rounds, a personalisation round: each site fits only its own rows of
    # the per-site parameters on its own log for this many epochs (the shared weights frozen);
    # the served model is still one model, row i trained by site i. 0: none.
    personal_epochs: int = 0
    # The model's per-site hidden biases (CoordNetConfig.site_hidden_bias), central and federated alike.
    site_hidden_bias: bool = False
    val_fraction: float = 0.1
    seed: int = 0


class LogsDataModule(L.LightningDataModule):
    """A site's (or the pooled) log as train/validation tensors, split deterministically."""

    def __init__(self, logs: Logs, batch_size: int, val_fraction: float, seed: int) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(logs))
        n_val = int(len(logs) * val_fraction)
        tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in
                   (logs.features, logs.site, logs.success, logs.log_snr, logs.snr_known)]
        self.val = TensorDataset(*(t[order[:n_val]] for t in tensors))
        self.train = TensorDataset(*(t[order[n_val:]] for t in tensors))
        self.batch_size = batch_size
        self.seed = seed

    def train_dataloader(self):
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True, generator=g)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=4096)


def _trainer(epochs: int) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     limit_val_batches=1.0, deterministic=True)


def quiet_lightning() -> None:
    """Lightning's per-fit banners and data-loader hints drown the progress lines."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*TensorBoard.*|.*LitLogger.*|.*_validation_step.*|.*LeafSpec.*")


def fit(model: CoordNet, logs: Logs, epochs: int, cfg: FitConfig) -> CoordNet:
    quiet_lightning()
    dm = LogsDataModule(logs, cfg.batch_size, cfg.val_fraction, cfg.seed)
    _trainer(epochs).fit(model, datamodule=dm)
    model.eval()
    return model


def new_model(n_sites: int, cfg: FitConfig, prox_mu: float = 0.0, **net) -> CoordNet:
    """A seeded CoordNet; `net` overrides CoordNetConfig fields (e.g. hidden, n_layers)."""
    L.seed_everything(cfg.seed, verbose=False)
    return CoordNet(CoordNetConfig(**{"n_sites": n_sites, "prox_mu": prox_mu, "site_hidden_bias": cfg.site_hidden_bias,
                                      **net}))


def federated_config(n_sites: int, cfg: FitConfig) -> CoordNetConfig:
    """The model config a federation sends its sites: FedProx's mu and the per-site rows'
    learning-rate scale and per-site hidden biases are the fit's; the rest the model's defaults."""
    return CoordNetConfig(n_sites=n_sites, prox_mu=cfg.prox_mu, site_lr_scale=cfg.site_lr_scale,
                          site_hidden_bias=cfg.site_hidden_bias)


def train_central(site_logs: list[Logs], cfg: FitConfig, **net) -> CoordNet:
    return fit(new_model(len(site_logs), cfg, **net), Logs.concat(site_logs), cfg.epochs, cfg)


def train_local(site_logs: list[Logs], site: int, cfg: FitConfig) -> CoordNet:
    """A model that only ever saw one site's log (the federated baseline to beat)."""
    return fit(new_model(len(site_logs), cfg), site_logs[site], cfg.epochs, cfg)


def local_fit(global_state: dict[str, torch.Tensor], config: CoordNetConfig, logs: Logs, lr: float,
              cfg: FitConfig, seed: int) -> dict[str, torch.Tensor]:
    """One site's part of a round: fit the global weights on its own log, return the weights."""
    local = CoordNet(dataclasses.replace(config, lr=lr, cosine=False))
    local.load_state_dict(global_state)
    local.set_prox_anchor()
    fit(local, logs, cfg.local_epochs, replace(cfg, seed=seed))
    return {k: v.detach().clone() for k, v in local.state_dict().items()}  # only weights leave the site


def personal_fit(global_state: dict[str, torch.Tensor], config: CoordNetConfig, logs: Logs, lr: float,
                 cfg: FitConfig, seed: int) -> dict[str, torch.Tensor]:
    """One site's part of the personalisation round: the global weights with only the per-site
    rows trainable (the shared trunk and head frozen), `cfg.personal_epochs` epochs on its own
    log, the learning rate annealed over them. The server keeps only this site's row."""
    # Only the rows train here, at `lr` itself: site_lr_scale weighs them against the shared
    # weights, and there are none to weigh against.
    local = CoordNet(dataclasses.replace(config, lr=lr, cosine=True, prox_mu=0.0, site_lr_scale=1.0))
    local.load_state_dict(global_state)
    for name, p in local.named_parameters():
        p.requires_grad_(name in SITE_ROWS)
    fit(local, logs, cfg.personal_epochs, replace(cfg, seed=seed))
    return {k: v.detach().clone() for k, v in local.state_dict().items()}


def local_seed(cfg: FitConfig, r: int, site: int) -> int:
    return cfg.seed * 1000 + r * 31 + site


def train_federated(site_logs: list[Logs], cfg: FitConfig, progress: Callable[[str], None] = lambda _m: None,
                    participation: Sequence[Sequence[int]] | None = None) -> CoordNet:
    """FedAvg(M) rounds in one process: the reference for the NVFLARE federation
    (`federated.py`), which runs the same `local_fit` in each site's process and the same
    `aggregate` step on its server.

    `site_logs[i]` must be site i's log (table order). `participation[r]`, when given, lists
    the sites whose updates round r aggregated (a federation with a site down replays its
    record), and `participation[cfg.rounds]` those of the personalisation round; by default
    every site takes part in every round.
    """
    fed = federated_config(len(site_logs), cfg)  # what the NVFLARE job sends its sites
    global_model = new_model(len(site_logs), cfg, fed.prox_mu, site_lr_scale=fed.site_lr_scale)
    server = aggregate.ServerOptimizer(cfg.server_momentum)
    base_lr = cfg.local_lr if cfg.local_lr is not None else global_model.config.lr
    everyone = list(range(len(site_logs)))
    for r in range(cfg.rounds):
        lr = aggregate.round_lr(base_lr, r, cfg.rounds, cfg.round_cosine)
        current = global_model.state_dict()
        present = sorted(participation[r]) if participation is not None else everyone
        states = [local_fit(current, global_model.config, site_logs[i], lr, cfg, local_seed(cfg, r, i))
                  for i in present]
        merged = aggregate.weighted_average(states, [float(len(site_logs[i])) for i in present], present,
                                            cfg.own_embedding_rows)
        if cfg.own_embedding_rows:
            merged = aggregate.keep_absent_rows(merged, current, present)
        global_model.load_state_dict(server.step(current, merged))
        progress(f"federated round {r + 1}/{cfg.rounds}")
    if cfg.personal_epochs > 0:
        # At the base learning rate, annealed within the fit: the rounds' cosine has reached 0.
        r = cfg.rounds
        present = sorted(participation[r]) if participation is not None and len(participation) > r else everyone
        current = global_model.state_dict()
        states = [personal_fit(current, global_model.config, site_logs[i], base_lr, cfg, local_seed(cfg, r, i))
                  for i in present]
        global_model.load_state_dict(aggregate.personalised(current, states, present))
        progress(f"personalisation round ({cfg.personal_epochs} epochs, per-site rows only)")
    global_model.eval()
    return global_model


def export(model: CoordNet, site_ids: tuple[str, ...], out: Path, meta: dict) -> Path:
    """Write `out` (.safetensors) and its .json config beside it."""
    return checkpoint.save(model, site_ids, out.with_suffix(".safetensors"), meta)
