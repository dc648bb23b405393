"""Candidate federated recipes against central on one generated network: how the recipe was chosen.

    python benchmarks/coordination_fed_recipes.py NETDIR --seed 201 --cands base pers3 rowlr3 ... --json OUT

NETDIR is one network of `galactic-train scenarios` (seeds 2027 and 2028 were used; never
2026, the evaluation's). Trains central and each candidate federated recipe on the same site
logs (training seed --seed, never evaluate's 101-105) and scores them on --windows windows
(seed + 1000). Candidates (`CANDS`) are changes to the recipe's `FitConfig` from the recipe
as it was before the choice ("base": no personalisation round, per-site rows at the shared
learning rate): "pers" = a personalisation round of N epochs (`personal_epochs`), "rowlr" =
the per-site rows at N x the learning rate in the sites' fits (`site_lr_scale`), "m" =
server momentum, "r60" = 60 rounds, "prox" = FedProx mu, "hb" = per-site biases on the
hidden layers (`site_hidden_bias`, a model change: those candidates are measured against a
central fit of the same model, "central+hb"). Each runs the in-process federated loop
(`train.train_federated`, the NVFLARE path's arithmetic). "gaps" in the JSON: federated
minus its central, points of the oracle. The first choice's results,
`benchmarks/results/coordination-fed-recipes-choice-seed201.json`, came from this script at
e3dc93e, when it still carried its own copy of that loop with the two knobs added (since
built into training/coordination/train.py); the second's (from the recipe "rowlr3+pers3"),
`benchmarks/results/coordination-fed-recipes-choice2-seed201.json`, from this script as it is.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from training.coordination import default, train  # noqa: E402
from training.coordination import evaluate as ev  # noqa: E402

BEFORE = {"site_lr_scale": 1.0, "personal_epochs": 0}  # the recipe before the choice
CANDS = {
    "base": {},
    "pers3": {"personal_epochs": 3},
    "pers5": {"personal_epochs": 5},
    "rowlr3": {"site_lr_scale": 3.0},
    "rowlr3+pers3": {"site_lr_scale": 3.0, "personal_epochs": 3},
    "rowlr5": {"site_lr_scale": 5.0},
    "rowlr3+pers5": {"site_lr_scale": 3.0, "personal_epochs": 5},
    "rowlr5+pers3": {"site_lr_scale": 5.0, "personal_epochs": 3},
    "rowlr5+pers5": {"site_lr_scale": 5.0, "personal_epochs": 5},
    "rowlr3+pers3+hb": {"site_lr_scale": 3.0, "personal_epochs": 3, "site_hidden_bias": True},
    "rowlr3+pers3+r60": {"site_lr_scale": 3.0, "personal_epochs": 3, "rounds": 60},
    "m0.5": {"server_momentum": 0.5},
    "m0.9": {"server_momentum": 0.9},
    "r60": {"rounds": 60},
    "prox0.01": {"prox_mu": 0.01},
}


def _central(cand: str) -> str:
    """The central model a candidate is measured against: the same network (the per-site
    hidden biases change the model, so central gets them too); the other knobs are
    federated-only and leave central as it is."""
    return "central+hb" if CANDS.get(cand, {}).get("site_hidden_bias") else "central"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("net", type=Path)
    p.add_argument("--seed", type=int, default=201)
    p.add_argument("--cands", nargs="+", default=["base"], choices=sorted(CANDS))
    p.add_argument("--windows", type=int, default=50)
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    train.quiet_lightning()
    rec = default.Recipe(scenario=args.net / "scenario.toml", sites=args.net / "sites.toml", seed=args.seed,
                         fit=replace(default.Recipe.fit, seed=args.seed, **BEFORE))
    t0 = time.perf_counter()
    sim, logs = default.site_logs(rec)
    models = {"central": train.train_central(logs, rec.fit)}
    seconds = {"central": round(time.perf_counter() - t0, 1)}
    for name in args.cands:
        t = time.perf_counter()
        ref = _central(name)
        if ref not in models:  # a candidate that changes the model: central with the same model
            models[ref] = train.train_central(logs, replace(rec.fit, site_hidden_bias=True))
            seconds[ref] = round(time.perf_counter() - t, 1)
            t = time.perf_counter()
        models[name] = train.train_federated(logs, replace(rec.fit, **CANDS[name]))
        seconds[name] = round(time.perf_counter() - t, 1)
        print(name, seconds[name], file=sys.stderr, flush=True)
    methods = {k: ev.solve_with(ev.model_scorer(m, sim)) for k, m in models.items()}
    methods["physics"] = ev.solve_with(lambda w, _r: sim.exact_probability(w, truth=False))
    res = ev.evaluate(sim, methods, models["central"], args.windows, args.seed + 1000)
    shares = {k: v["share_of_oracle"] for k, v in res["methods"].items()}
    # Federated minus central (points of the oracle), each against central with its own model.
    gaps = {k: round(100 * (shares[k] - shares[_central(k)]), 2) for k in args.cands}
    print(args.net.name, json.dumps(shares), json.dumps(gaps), seconds)
    args.json.write_text(json.dumps({"net": args.net.name, "seed": args.seed, "shares": shares, "gaps": gaps,
                                     "seconds": seconds}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
