"""Checkpoint files: weights in safetensors, the model config and site ids in JSON beside it.

Only safetensors are ever read (never torch.load or pickle): a checkpoint is data, not code.
`load()` validates before it returns a model, so a bad file is a clear error naming what is
wrong (missing file, unreadable JSON, another feature version, tensor shapes, site table)
rather than a model that scores garbage: the daemon refuses it at start, and a reload
refuses it while the old weights keep serving.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from engines.coordination.features import FEATURE_NAMES, FEATURE_VERSION, N_FEATURES
from engines.coordination.model import CoordNet, CoordNetConfig
from engines.errors import FailedPrecondition, InvalidArgument, NotFound


def config_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


def save(model: CoordNet, site_ids: tuple[str, ...], weights: Path, meta: dict | None = None) -> Path:
    weights.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(weights))
    doc = {"model": model.config.to_dict(), "site_ids": list(site_ids), "meta": meta or {},
           "features": {"version": FEATURE_VERSION, "names": list(FEATURE_NAMES)}}
    config_path(weights).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return weights


def load(weights: Path, site_ids: tuple[str, ...] | None = None,
         field: str = "checkpoint") -> tuple[CoordNet, tuple[str, ...], str]:
    """The model (eval mode), the site ids it was trained on, and a short content hash.

    With `site_ids`, the checkpoint must have been trained on exactly that site table.
    Raises NotFound, InvalidArgument or FailedPrecondition naming `field`.
    """
    weights = Path(weights)
    if weights.suffix != ".safetensors":
        raise InvalidArgument(f"{weights}: expected a .safetensors file (only safetensors are loaded)", field=field)
    for path in (weights, config_path(weights)):
        if not path.is_file():
            raise NotFound(f"{path} does not exist (a checkpoint is a .safetensors file with its .json beside it)",
                           field=field)
    try:
        doc = json.loads(config_path(weights).read_text())
        cfg = CoordNetConfig(**doc["model"])
        trained_sites = tuple(doc["site_ids"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"{config_path(weights)} is not a coordination checkpoint config: {exc}",
                              field=field) from None
    # Checkpoints written before the version was recorded used version 1's features.
    version = doc.get("features", {}).get("version", 1)
    if version != FEATURE_VERSION or cfg.n_features != N_FEATURES:
        raise FailedPrecondition(f"checkpoint expects feature version {version} ({cfg.n_features} features); "
                                 f"this engine computes version {FEATURE_VERSION} ({N_FEATURES} features)", field=field)
    if cfg.n_sites != len(trained_sites):
        raise InvalidArgument(f"model has {cfg.n_sites} site embeddings for {len(trained_sites)} site ids", field=field)
    if site_ids is not None and trained_sites != tuple(site_ids):
        raise FailedPrecondition(f"checkpoint was trained on sites {list(trained_sites)}, the site table has "
                                 f"{list(site_ids)}", field=field)
    model = CoordNet(cfg)
    try:
        model.load_state_dict(load_file(str(weights)))
    except (SafetensorError, RuntimeError, OSError) as exc:  # shapes or names differ, or a truncated file
        raise InvalidArgument(f"{weights}: weights do not fit the model config: {exc}", field=field) from None
    model.eval()
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    return model, trained_sites, digest


def average(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """FedAvg: the sample-weighted mean of state dicts (only weights cross site boundaries)."""
    total = float(sum(weights))
    return {k: sum(s[k].float() * (w / total) for s, w in zip(states, weights)) for k in states[0]}
