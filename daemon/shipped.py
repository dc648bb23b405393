"""Data shipped with galactic that the daemon hands to engines.

Engines never reach into `training/` (imports point one way, STYLE 13): a config that says
`checkpoint = "embedded"` is resolved here, at the daemon's entry, to the checkpoint shipped
in training/data (written by `galactic-train federated`), and the engine is given that
path. A missing shipped file is the engine's clear load error, never a silent fallback.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

# The package data directory of `training` (pyproject: package-data training = data/*).
# Located by path, not by importing `training`, which would pull in Lightning.
DATA_DIR = Path(__file__).resolve().parents[1] / "training" / "data"
COORDINATION_CHECKPOINT = DATA_DIR / "coordination.safetensors"


def resolve(kind: str, config):
    """`config` with references to shipped data replaced by their paths."""
    if kind == "coordination" and config.checkpoint == "embedded":
        return dataclasses.replace(config, checkpoint=str(COORDINATION_CHECKPOINT))
    return config
