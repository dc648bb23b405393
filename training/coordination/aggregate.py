"""The server's side of a federated round: FedAvg, FedAvgM and the per-site rows.

Pure tensor arithmetic, shared by the NVFLARE server (`fl_server.py`) and the in-process
reference loop (`train.train_federated`), so the two cannot drift apart.

FedAvg (McMahan et al. 2017) is the sample-weighted mean of the sites' state dicts. The
rows of the per-site parameters (`SITE_ROWS`, one row per site in table order) are
averaged with the same rule restricted to the sites that hold data for the row, which is
site i alone for row i: a plain average would shrink a site's update by its sample share
(1/13 here) and stall the per-site effects. FedAvgM (Hsu et al. 2019) applies
(average - global) as a pseudo-gradient with server momentum. FedProx (Li et al. 2020)
changes the sites' objective only (`CoordNet.prox_mu`), not this step.

The personalisation round after the last one (`FitConfig.personal_epochs`) trains only the
per-site rows, each site its own: `own_rows` takes row i from site i's answer and keeps every
shared parameter as it was (no average, no momentum).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from engines.coordination.model import SITE_ROWS


def weighted_average(states: list[dict[str, torch.Tensor]], counts: list[float], sites: list[int] | None = None,
                     own_rows: bool = True) -> dict[str, torch.Tensor]:
    """The sample-weighted mean of `states`; with `own_rows`, row i of each per-site
    parameter is the mean over the states from site i (`sites[k]`: the site of state k)."""
    total = float(sum(counts))
    out = {k: sum(s[k].float() * (c / total) for s, c in zip(states, counts)) for k in states[0]}
    if own_rows and sites is not None:
        for name in SITE_ROWS:
            if name not in out:
                continue
            for i in set(sites):
                mine = [k for k, s in enumerate(sites) if s == i]
                n = float(sum(counts[k] for k in mine))
                out[name][i] = sum(states[k][name][i].float() * (counts[k] / n) for k in mine)
    return out


def keep_absent_rows(merged: dict[str, torch.Tensor], current: dict[str, torch.Tensor],
                     present: list[int]) -> dict[str, torch.Tensor]:
    """Rows of the per-site parameters of sites that sent nothing this round keep their
    global value: only site i trains row i, and the other sites' copies of it hold no news
    (AdamW's weight decay would only shrink it while the site is down)."""
    out = dict(merged)
    for name in SITE_ROWS:
        absent = [i for i in range(current[name].shape[0]) if i not in present] if name in out else []
        if absent:
            out[name] = out[name].clone()
            out[name][absent] = current[name][absent].to(out[name].dtype)
    return out


def personalised(current: dict[str, torch.Tensor], states: list[dict[str, torch.Tensor]],
                 sites: list[int]) -> dict[str, torch.Tensor]:
    """The personalisation round's step: `current` with row `sites[k]` of each per-site
    parameter taken from `states[k]`; shared parameters (which the sites did not train) and
    the rows of sites that sent nothing stay as they are."""
    out = {k: v.detach().clone() for k, v in current.items()}
    for state, i in zip(states, sites):
        for name in SITE_ROWS:
            if name in out:
                out[name][i] = state[name][i].to(out[name].dtype)
    return out


def round_lr(base_lr: float, r: int, rounds: int, cosine: bool) -> float:
    """Round r's learning rate: a cosine over rounds (a local fit is too short to anneal on
    its own, and restarting a schedule every round would undo it)."""
    return base_lr * (0.5 * (1.0 + math.cos(math.pi * r / rounds)) if cosine else 1.0)


@dataclass
class ServerOptimizer:
    """FedAvg (momentum 0) or FedAvgM: global <- global + v, v <- m v + (average - global)."""

    momentum: float = 0.0
    velocity: dict[str, torch.Tensor] = field(default_factory=dict)

    def step(self, current: dict[str, torch.Tensor], average: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.momentum <= 0:
            return average
        out = {}
        for k in average:
            delta = average[k] - current[k].float()
            self.velocity[k] = self.momentum * self.velocity.get(k, torch.zeros_like(delta)) + delta
            out[k] = current[k].float() + self.velocity[k]
        return out
