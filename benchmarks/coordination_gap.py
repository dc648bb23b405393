"""Where the coordination model's last points to the oracle go: capacity, or data?

    python benchmarks/coordination_gap.py --scenario training/data/scenarios/holdout.toml \
        --seed 7 --eval-windows 30 --json OUT

Trains the central model (pooled logs; `evaluate` shows federated within a point of it, so
what holds for central holds for federated) in four variants on one training seed that
`galactic-train evaluate` never uses (its seeds are 101-105), and scores each on the same
unseen windows against the oracle, in one pass of the evaluation's own code:

- `base`: the recipe (hidden 64, 2 layers, 600 logged windows per site);
- `capacity`: 4x the width and one more layer, same logs;
- `data`: the recipe's network, 4x the logged windows per site;
- `capacity+data`: both.

If `capacity` closes the gap, the network is too small; if `data` does, the sites' logs do
not hold enough nights to pin down their hidden effects; if neither, the features lack
what the oracle knows. Prints a table and writes OUT (JSON).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.coordination import default, evaluate as ev, train  # noqa: E402
from training.coordination.scenario import DEFAULT_SCENARIO  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO)
    p.add_argument("--seed", type=int, default=7, help="training seed (not one of evaluate's 101-105)")
    p.add_argument("--eval-windows", type=int, default=30)
    p.add_argument("--data-factor", type=int, default=4)
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    base = dataclasses.replace(default.Recipe(), scenario=args.scenario, seed=args.seed)
    more = dataclasses.replace(base, windows_per_site=base.windows_per_site * args.data_factor)
    sim, logs = default.site_logs(base)
    _, logs_more = default.site_logs(more)
    big = {"hidden": 256, "n_layers": 3}
    models = {
        "base": train.train_central(logs, base.fit),
        "capacity": train.train_central(logs, base.fit, **big),
        "data": train.train_central(logs_more, base.fit),
        "capacity+data": train.train_central(logs_more, base.fit, **big),
    }
    methods = {name: ev.solve_with(ev.model_scorer(m, sim)) for name, m in models.items()}
    eval_seed = args.seed + 1000
    r = ev.evaluate(sim, methods, models["base"], args.eval_windows, eval_seed)  # one pass: same windows for all
    out = {name: {**r["methods"][name], "rows": sum(len(x) for x in (logs_more if "data" in name else logs)),
                  "parameters": m.n_parameters()} for name, m in models.items()}
    result = {"scenario": sim.sc.scenario.name, "train_seed": args.seed, "eval_seed": eval_seed,
              "eval_windows": args.eval_windows, "variants": out, "base_calibration": r["model"],
              "seconds": round(time.perf_counter() - t0, 1)}
    print(f"scenario {result['scenario']}, training seed {args.seed}, {args.eval_windows} unseen windows")
    print("| variant | parameters | log rows | share of oracle |")
    print("|---|---|---|---|")
    for name, v in out.items():
        print(f"| {name} | {v['parameters']} | {v['rows']} | {v['share_of_oracle']:.4f} |")
    print(f"base calibration: {r['model']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
