"""Federated against central, site by site, on one generated network: where the gap comes from.

    python benchmarks/coordination_site_errors.py --network 3 [--seed 101] [--fit-seed S]
        [--windows 30] --json OUT

Trains central and federated with the shipped recipe on network I of `galactic-train
scenarios --seed 2026` (logs of training seed `--seed`; the fits' seed `--fit-seed`, by
default the same), then scores windows drawn from the *training* seed (`[seed, 555]`; the
benchmark and `evaluate` use `[seed + 1000, 7919]`): nothing here looks at the evaluation
windows. Per site: log rows and success rate, mean |P - P_true| and mean P - P_true over the
feasible pairs for federated, central and physics, slots placed per window, and the value
per window the oracle earns at the site minus what the method earns there (truth-judged).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.coordination import default, evaluate as ev, generator, train  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--network", type=int, required=True)
    p.add_argument("--networks-seed", type=int, default=2026)
    p.add_argument("--seed", type=int, default=101, help="training seed: logs, and the windows scored here")
    p.add_argument("--fit-seed", type=int, default=None, help="the fits' seed (default: --seed)")
    p.add_argument("--windows", type=int, default=30)
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    net = generator.write(args.network + 1, args.networks_seed, Path(tempfile.mkdtemp(prefix="galactic-net-")))[-1]
    fit = replace(default.Recipe.fit, seed=args.seed if args.fit_seed is None else args.fit_seed)
    rec = default.Recipe(scenario=net / "scenario.toml", sites=net / "sites.toml", seed=args.seed, fit=fit)
    sim, logs = default.site_logs(rec)
    models = {"federated": train.train_federated(logs, rec.fit), "central": train.train_central(logs, rec.fit)}
    scorers = {**{k: ev.model_scorer(m, sim) for k, m in models.items()},
               "physics": lambda w, _r: sim.exact_probability(w, truth=False)}
    s = len(sim.table.site)
    err = {k: np.zeros(s) for k in scorers}
    bias = {k: np.zeros(s) for k in scorers}
    pairs = np.zeros(s)
    values = {k: [] for k in ("oracle", *scorers)}
    placed = {k: np.zeros(s) for k in ("oracle", *models)}
    lost = {k: np.zeros(s) for k in models}
    rng = np.random.default_rng([args.seed, 555])
    for _ in range(args.windows):
        w = sim.window(rng, sim.eval_time(rng), np.arange(s))
        pt = sim.exact_probability(w, truth=True)
        ti, sj = np.nonzero(w.feasible)
        np.add.at(pairs, sj, 1)
        co = ev.decide(w, pt)
        kept = ev.truly_kept(w.targets.value, w.targets.critical, w.sites.capacity, pt)
        values["oracle"].append(ev.score_plan(w.targets.value, w.targets.critical, pt, co, kept).value)
        placed["oracle"] += np.bincount(co[co >= 0], minlength=s)
        at_site = lambda c, j: float((w.targets.value[c == j] * pt[c == j, j]).sum())  # noqa: E731
        for k, score in scorers.items():
            pk = score(w, None)
            d = pk[ti, sj] - pt[ti, sj]
            np.add.at(err[k], sj, np.abs(d))
            np.add.at(bias[k], sj, d)
            c = ev.decide(w, pk)
            values[k].append(ev.score_plan(w.targets.value, w.targets.critical, pt, c, kept).value)
            if k in models:
                placed[k] += np.bincount(c[c >= 0], minlength=s)
                lost[k] += [at_site(co, j) - at_site(c, j) for j in range(s)]
    rows = []
    for j, site in enumerate(sim.table.site):
        n = max(pairs[j], 1)
        rows.append({"site": site.id, "log_rows": len(logs[j]), "log_success_rate": round(float(logs[j].success.mean()), 4),
                     "feasible_pairs": int(pairs[j]),
                     "mean_abs_error": {k: round(float(err[k][j] / n), 4) for k in scorers},
                     "mean_error": {k: round(float(bias[k][j] / n), 4) for k in scorers},
                     "placed_per_window": {k: round(float(placed[k][j] / args.windows), 2) for k in placed},
                     "oracle_minus_method_value_per_window": {k: round(float(lost[k][j] / args.windows), 3)
                                                              for k in lost}})
    out = {"network": net.name, "seed": args.seed, "fit_seed": rec.fit.seed, "windows": args.windows,
           "share_of_oracle": {k: round(ev.share(v, values["oracle"]), 4) for k, v in values.items()}, "sites": rows}
    print("| site | log rows | success | abs error fed / central / physics | value lost fed / central |")
    print("|---|---|---|---|---|")
    for r in rows:
        e, lo = r["mean_abs_error"], r["oracle_minus_method_value_per_window"]
        print(f"| {r['site']} | {r['log_rows']} | {r['log_success_rate']:.3f} | {e['federated']:.4f} / "
              f"{e['central']:.4f} / {e['physics']:.4f} | {lo['federated']:.3f} / {lo['central']:.3f} |")
    print(out["share_of_oracle"])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
