"""Checkpoint files: weights in safetensors, the model config and site ids in JSON beside it.

Only safetensors are ever read (never torch.load or pickle): a checkpoint is data, not code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from engines.coordination.model import CoordNet, CoordNetConfig

# The embedded default, shipped with the package and reproduced by `galactic-train coordination`.
EMBEDDED = Path(__file__).resolve().parents[2] / "training" / "data" / "coordination.safetensors"


def config_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


def save(model: CoordNet, site_ids: tuple[str, ...], weights: Path, meta: dict | None = None) -> Path:
    weights.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(weights))
    doc = {"model": model.config.to_dict(), "site_ids": list(site_ids), "meta": meta or {}}
    config_path(weights).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return weights


def load(weights: Path) -> tuple[CoordNet, tuple[str, ...], str]:
    """The model (eval mode), the site ids it was trained on, and a short content hash."""
    doc = json.loads(config_path(weights).read_text())
    model = CoordNet(CoordNetConfig(**doc["model"]))
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    return model, tuple(doc["site_ids"]), digest


def average(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """FedAvg: the sample-weighted mean of state dicts (only weights cross site boundaries)."""
    total = float(sum(weights))
    return {k: sum(s[k].float() * (w / total) for s, w in zip(states, weights)) for k in states[0]}
