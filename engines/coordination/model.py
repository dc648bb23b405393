"""CoordNet: P(success) and expected SNR for one (target, site) pair, from its features.

One file in the nanoGPT manner: a config dataclass, the network, its training and
validation steps and its optimiser. The engine runs this same class under torch.no_grad
with no Trainer. Hard constraints are masks outside the network; the network only scores
feasible pairs. A site embedding lets it learn per-site effects that physics cannot see
(zero-point offsets, forecast bias, humidity closures, downtime).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from engines.coordination.features import N_FEATURES


@dataclass(frozen=True)
class CoordNetConfig:
    n_features: int = N_FEATURES
    n_sites: int = 13
    site_dim: int = 8
    hidden: int = 64
    n_layers: int = 2
    lr: float = 3e-3
    weight_decay: float = 1e-4
    snr_weight: float = 0.1  # weight of the log10-SNR regression next to the BCE
    prox_mu: float = 0.0  # FedProx proximal term; 0 is plain FedAvg
    cosine: bool = True  # anneal the learning rate to 0 over the fit (federated rounds anneal outside)
    # Learning-rate multiplier of the per-site rows (SITE_ROWS). Federated fits set it > 1: a
    # site's rows see only that site's data, one short local fit a round, while the shared
    # weights pool every site's; central leaves it at 1.
    site_lr_scale: float = 1.0
    # A per-site bias on every hidden layer's pre-activation (`site_hidden_b`, one row of
    # hidden * n_layers per site, zero-initialised): per-site parameters inside the trunk, not
    # only at its input (the embedding) and its output (the head's correction). Off: the
    # checkpoint has no such tensor (checkpoints written before it load as they were).
    site_hidden_bias: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


# Parameters with one row per site (table order), trained only by that site's data. A model
# has `site_hidden_b` only with CoordNetConfig.site_hidden_bias; users skip names it lacks.
SITE_ROWS = ("site_emb.weight", "site_head_w.weight", "site_head_b.weight", "site_hidden_b.weight")


class CoordNet(L.LightningModule):
    def __init__(self, config: CoordNetConfig) -> None:
        super().__init__()
        self.config = config
        self.site_emb = nn.Embedding(config.n_sites, config.site_dim)
        layers: list[nn.Module] = []
        width = config.n_features + config.site_dim
        for _ in range(config.n_layers):
            layers += [nn.Linear(width, config.hidden), nn.GELU()]
            width = config.hidden
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(width, 2)  # logit of P(success), log10 SNR
        # A per-site linear correction of the head (FedPer-style personal layer): each site's
        # hidden effects get parameters only that site's data trains, so federated averaging
        # of the shared trunk does not wash them out. Zero-initialised: starts as the shared head.
        self.site_head_w = nn.Embedding(config.n_sites, width * 2)
        self.site_head_b = nn.Embedding(config.n_sites, 2)
        nn.init.zeros_(self.site_head_w.weight)
        nn.init.zeros_(self.site_head_b.weight)
        self.site_hidden_b = None
        if config.site_hidden_bias:
            self.site_hidden_b = nn.Embedding(config.n_sites, config.hidden * config.n_layers)
            nn.init.zeros_(self.site_hidden_b.weight)
        self._global: list[torch.Tensor] | None = None  # FedProx anchor

    def _hidden(self, features: torch.Tensor, site: torch.Tensor) -> torch.Tensor:
        """The trunk's output (B, H) for features (B, F) float32 and site (B,) int64."""
        h = torch.cat([features, self.site_emb(site)], dim=-1)  # (B, F + E)
        if self.site_hidden_b is None:
            return self.trunk(h)
        biases = self.site_hidden_b(site).split(self.config.hidden, dim=-1)  # n_layers x (B, H)
        z = h
        for k, bias in enumerate(biases):  # trunk = [Linear, GELU] * n_layers
            z = self.trunk[2 * k + 1](self.trunk[2 * k](z) + bias)
        return z

    def forward(self, features: torch.Tensor, site: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # features (B, F) float32, site (B,) int64 -> logit (B,), log10 SNR (B,)
        z = self._hidden(features, site)
        w = self.site_head_w(site).view(-1, z.shape[-1], 2)  # (B, H, 2)
        out = self.head(z) + torch.bmm(z.unsqueeze(1), w).squeeze(1) + self.site_head_b(site)  # (B, 2)
        return out[:, 0], out[:, 1]

    @torch.no_grad()
    def predict(self, features: torch.Tensor, site: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference: P(success) (B,) and expected SNR (B,).

        `forward`'s function, with its head computed for every site at once: one (B, H) x
        (H, 2 + 2 x sites) product, then each pair's own site's two columns picked out,
        instead of gathering a (H, 2) matrix per pair and a batch of 1 x H x 2 products (with
        the embeddings, 7 of the forward's 20 ms at 10,000 x 12; the step is 2 ms faster
        there). Equal to `forward` up to float summation order (a test compares them)."""
        z = self._hidden(features, site)
        n_sites, width = self.config.n_sites, z.shape[-1]
        # (H, 2 + 2 S): the shared head's two columns, then site s's correction in 2 + 2s, 3 + 2s.
        per_site = self.site_head_w.weight.view(n_sites, width, 2).permute(1, 0, 2).reshape(width, 2 * n_sites)
        heads = z @ torch.cat([self.head.weight.t(), per_site], dim=1)  # (B, 2 + 2 S)
        own = heads[:, 2:].view(-1, n_sites, 2).gather(1, site.view(-1, 1, 1).expand(-1, 1, 2)).squeeze(1)
        out = heads[:, :2] + self.head.bias + own + self.site_head_b(site)  # (B, 2)
        logit, log_snr = out[:, 0], out[:, 1]
        return torch.sigmoid(logit), torch.pow(10.0, log_snr.clamp(-3.0, 6.0))

    def _loss(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        features, site, success, log_snr, snr_known = batch  # (B, F), (B,), (B,), (B,), (B,)
        logit, pred_snr = self(features, site)
        bce = F.binary_cross_entropy_with_logits(logit, success)
        mse = ((pred_snr - log_snr) ** 2 * snr_known).sum() / snr_known.sum().clamp(min=1.0)
        return bce + self.config.snr_weight * mse, bce

    def training_step(self, batch, batch_idx):
        loss, bce = self._loss(batch)
        if self.config.prox_mu > 0 and self._global is not None:
            # FedProx: keep a site's local fit near the round's global weights.
            prox = sum(((p - g) ** 2).sum() for p, g in zip(self.parameters(), self._global))
            loss = loss + 0.5 * self.config.prox_mu * prox
        self.log("train_bce", bce, prog_bar=False)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, bce = self._loss(batch)
        self.log("val_bce", bce, prog_bar=False)
        return loss

    def configure_optimizers(self):
        params = self.parameters()
        if self.config.site_lr_scale != 1.0:
            named = list(self.named_parameters())
            rows_lr = self.config.lr * self.config.site_lr_scale
            params = [{"params": [p for n, p in named if n not in SITE_ROWS]},
                      {"params": [p for n, p in named if n in SITE_ROWS], "lr": rows_lr}]
        opt = torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay)
        if not self.config.cosine:
            return opt
        steps = max(int(self.trainer.estimated_stepping_batches), 1)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def set_prox_anchor(self) -> None:
        """Snapshot the current (global) weights as the FedProx anchor of this local fit."""
        self._global = [p.detach().clone() for p in self.parameters()]

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
