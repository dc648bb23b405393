"""The embedded default model: the federated recipe on the default scenario.

`galactic-train federated` with its defaults writes training/data/coordination.safetensors
(+ .json), the file the daemon's default `[coordination]` serves. When that file is absent,
`ensure_default_checkpoint` trains the same recipe once (about 2 minutes on 2 cores) and
caches it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engines.coordination.sites import load_sites
from training.coordination import train
from training.coordination.scenario import DEFAULT_SCENARIO, DEFAULT_SITES, load_scenario
from training.coordination.simulator import Simulator


@dataclass(frozen=True)
class Recipe:
    scenario: Path = DEFAULT_SCENARIO
    sites: Path = DEFAULT_SITES
    seed: int = 0
    # Many windows with few observations each: weather is shared within a window, so the
    # number of independent nights, not of rows, is what teaches the per-site effects.
    windows_per_site: int = 600
    per_window: int = 12
    fit: train.FitConfig = train.FitConfig(epochs=10, rounds=30, local_epochs=1, batch_size=256, server_momentum=0.8)


def site_logs(recipe: Recipe, progress: Callable[[str], None] = lambda _m: None):
    sim = Simulator(load_scenario(recipe.scenario), load_sites(recipe.sites))
    progress(f"simulating {len(sim.table.site)} site logs")
    return sim, sim.all_logs(recipe.windows_per_site, recipe.seed, recipe.per_window)


def build(recipe: Recipe, out: Path, federated: bool = True, progress: Callable[[str], None] = lambda _m: None) -> Path:
    sim, logs = site_logs(recipe, progress)
    if federated:
        model = train.train_federated(logs, recipe.fit, progress)
    else:
        progress("central fit")
        model = train.train_central(logs, recipe.fit)
    meta = {"recipe": "federated" if federated else "central", "scenario": sim.sc.scenario.name,
            "seed": recipe.seed, "windows_per_site": recipe.windows_per_site, "rows": sum(len(x) for x in logs)}
    return train.export(model, sim.table.ids, out, meta)


def ensure_default_checkpoint(cache_dir: Path | None, progress: Callable[[str], None]) -> Path:
    """The cached default checkpoint, trained now if missing."""
    cache = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "galactic"
    out = cache / "coordination.safetensors"
    if out.exists() and out.with_suffix(".json").exists():
        return out
    progress("training the default coordination model (first start only)")
    return build(Recipe(), out, federated=True, progress=progress)
