"""The embedded default model: the federated recipe on the default scenario.

`galactic-train federated` with its defaults simulates every site's log file from the
default scenario (`galactic-train simulate-logs`), runs the NVFLARE federation on them and
writes training/data/coordination.safetensors (+ .json), the file the daemon's default
`[coordination]` serves. The in-process loop (`train.train_federated`) runs the same
local fits and server step in one process and reproduces those weights (a test checks it).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engines.coordination.sites import load_sites
from training.coordination import sitelog, train
from training.coordination.scenario import DEFAULT_SCENARIO, DEFAULT_SITES, load_scenario
from training.coordination.simulator import Simulator

ENGINES = ("flare", "inprocess")  # how `federated` runs: NVFLARE processes, or one process


@dataclass(frozen=True)
class Recipe:
    scenario: Path = DEFAULT_SCENARIO
    sites: Path = DEFAULT_SITES
    seed: int = 0
    # Many windows with few observations each: weather is shared within a window, so the
    # number of independent nights, not of rows, is what teaches the per-site effects.
    windows_per_site: int = 600
    per_window: int = 12
    # The per-site rows at 3x the shared weights' learning rate in the sites' fits, 60 rounds
    # (30 before the second choice), and a personalisation round of 3 epochs (each site its own
    # rows) after the last: chosen on generated networks of seeds 2027-2028 with training seed
    # 201 (engines/coordination/README, "Federated against central"), never on the
    # evaluation's networks or seeds.
    fit: train.FitConfig = train.FitConfig(epochs=10, rounds=60, local_epochs=1, batch_size=256, server_momentum=0.8,
                                           site_lr_scale=3.0, personal_epochs=3)


def simulator(recipe: Recipe) -> Simulator:
    return Simulator(load_scenario(recipe.scenario), load_sites(recipe.sites))


def write_site_logs(recipe: Recipe, out_dir: Path, progress: Callable[[str], None] = lambda _m: None) -> dict[str, Path]:
    """Simulate every site's log file (site-log schema) into `out_dir`: site id -> path."""
    sim = simulator(recipe)
    progress(f"simulating {len(sim.table.site)} site logs into {out_dir}")
    return {log.site_id: sitelog.write(Path(out_dir) / f"{log.site_id}.csv", log)
            for log in sim.all_site_logs(recipe.windows_per_site, recipe.seed, recipe.per_window)}


def site_logs(recipe: Recipe, progress: Callable[[str], None] = lambda _m: None):
    """The simulator and every site's training arrays, read back from written log files."""
    sim = simulator(recipe)
    with tempfile.TemporaryDirectory(prefix="galactic-logs-") as d:
        paths = write_site_logs(recipe, Path(d), progress)
        logs = sitelog.read_logs(list(paths.values()), sim.table, sim.sc.scenario.snr_required, report=progress)
    return sim, logs


def meta(recipe: Recipe, kind: str, rows: int, scenario_name: str) -> dict:
    return {"recipe": kind, "scenario": scenario_name, "seed": recipe.seed,
            "windows_per_site": recipe.windows_per_site, "per_window": recipe.per_window, "rows": rows}


def build(recipe: Recipe, out: Path, federated: bool = True, progress: Callable[[str], None] = lambda _m: None,
          engine: str = "inprocess", settings=None) -> Path:
    """Simulate the recipe's site logs, train on the files, export `out`."""
    sim = simulator(recipe)
    snr = sim.sc.scenario.snr_required
    with tempfile.TemporaryDirectory(prefix="galactic-logs-") as d:
        paths = write_site_logs(recipe, Path(d), progress)
        logs = sitelog.read_logs(list(paths.values()), sim.table, snr, report=progress)
        info = meta(recipe, "federated" if federated else "central", sum(len(x) for x in logs), sim.sc.scenario.name)
        if federated and engine == "flare":
            from training.coordination import federated as fl

            fed = fl.Federation(logs=paths, site_table=Path(recipe.sites), snr_required=snr, out=Path(out),
                                **({"settings": settings} if settings is not None else {}))
            return fl.run(fed, sim.table, recipe.fit, {**info, "engine": "nvflare"}, progress)
    if federated:
        model = train.train_federated(logs, recipe.fit, progress)
        info["engine"] = "inprocess"
    else:
        progress("central fit")
        model = train.train_central(logs, recipe.fit)
    return train.export(model, sim.table.ids, out, info)

