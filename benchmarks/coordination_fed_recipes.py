"""Candidate federated recipes against central on one generated network: how the recipe was chosen.

    python benchmarks/coordination_fed_recipes.py NETDIR --seed 201 --cands base pers3 rowlr3 ... --json OUT

NETDIR is one network of `galactic-train scenarios` (seeds 2027 and 2028 were used; never
2026, the evaluation's). Trains central and each candidate federated recipe on the same site
logs (training seed --seed, never evaluate's 101-105) and scores them on --windows windows
(seed + 1000). Candidates (`CANDS`): "pers" = a personalisation round of N epochs, each site
its own per-site rows only; "rowlr" = the per-site rows at N x the learning rate in the
sites' local fits; "m" = server momentum; "r60" = 60 rounds; "prox" = FedProx mu. The
arithmetic is the pre-change in-process loop's plus those knobs (written before they were
built into training/coordination/train.py). Results of the choice:
benchmarks/results/coordination-fed-recipes-choice-seed201.json.
"""
import argparse, dataclasses, json, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dataclasses import replace
import numpy as np, torch
from training.coordination import default, train, aggregate, evaluate as ev
from engines.coordination.model import CoordNet

ROWS = aggregate.SITE_ROW_PARAMS

class GroupNet(CoordNet):
    row_mult = 1.0
    def configure_optimizers(self):
        rows = [p for n, p in self.named_parameters() if n in ROWS]
        rest = [p for n, p in self.named_parameters() if n not in ROWS]
        return torch.optim.AdamW([{"params": rest}, {"params": rows, "lr": self.config.lr * self.row_mult}],
                                 lr=self.config.lr, weight_decay=self.config.weight_decay)

def local_fit(state, config, logs, lr, cfg, seed, row_mult):
    local = GroupNet(dataclasses.replace(config, lr=lr, cosine=False)); local.row_mult = row_mult
    local.load_state_dict(state); local.set_prox_anchor()
    train.fit(local, logs, cfg.local_epochs, replace(cfg, seed=seed))
    return {k: v.detach().clone() for k, v in local.state_dict().items()}

def personalise(model, logs, cfg, epochs, lr):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for i, lg in enumerate(logs):
        local = CoordNet(dataclasses.replace(model.config, lr=lr, cosine=True))
        local.load_state_dict(model.state_dict())
        for n, p in local.named_parameters():
            p.requires_grad_(n in ROWS)
        train.fit(local, lg, epochs, replace(cfg, seed=train.local_seed(cfg, 9999, i)))
        sd = local.state_dict()
        for n in ROWS:
            state[n][i] = sd[n][i]
    model.load_state_dict(state); model.eval(); return model

def federated(logs, cfg, row_mult=1.0, pers_epochs=0, pers_lr=3e-3):
    g = train.new_model(len(logs), cfg, cfg.prox_mu)
    server = aggregate.ServerOptimizer(cfg.server_momentum)
    base = cfg.local_lr if cfg.local_lr is not None else g.config.lr
    ev_ = list(range(len(logs)))
    for r in range(cfg.rounds):
        lr = aggregate.round_lr(base, r, cfg.rounds, cfg.round_cosine)
        cur = g.state_dict()
        states = [local_fit(cur, g.config, logs[i], lr, cfg, train.local_seed(cfg, r, i), row_mult) for i in ev_]
        merged = aggregate.weighted_average(states, [float(len(x)) for x in logs], ev_, True)
        g.load_state_dict(server.step(cur, merged))
    g.eval()
    if pers_epochs:
        personalise(g, logs, cfg, pers_epochs, pers_lr)
    return g

CANDS = {
    "base": {},
    "pers3": {"pers_epochs": 3},
    "pers5": {"pers_epochs": 5},
    "rowlr3": {"row_mult": 3.0},
    "rowlr3+pers3": {"row_mult": 3.0, "pers_epochs": 3},
    "rowlr5": {"row_mult": 5.0},
    "m0.5": {"fit": {"server_momentum": 0.5}},
    "m0.9": {"fit": {"server_momentum": 0.9}},
    "r60": {"fit": {"rounds": 60}},
    "prox0.01": {"fit": {"prox_mu": 0.01}},
}

def main():
    p = argparse.ArgumentParser(); p.add_argument("net"); p.add_argument("--seed", type=int, default=201)
    p.add_argument("--cands", nargs="+", default=["base"]); p.add_argument("--windows", type=int, default=50)
    p.add_argument("--json", required=True); a = p.parse_args()
    torch.set_num_threads(1); train.quiet_lightning()
    net = Path(a.net)
    rec = default.Recipe(scenario=net / "scenario.toml", sites=net / "sites.toml", seed=a.seed,
                         fit=replace(default.Recipe.fit, seed=a.seed))
    t0 = time.perf_counter()
    sim, logs = default.site_logs(rec)
    models = {"central": train.train_central(logs, rec.fit)}
    secs = {"central": round(time.perf_counter() - t0, 1)}
    for c in a.cands:
        t = time.perf_counter(); spec = dict(CANDS[c]); fit = replace(rec.fit, **spec.pop("fit", {}))
        models[c] = federated(logs, fit, **spec); secs[c] = round(time.perf_counter() - t, 1)
        print(c, secs[c], file=sys.stderr, flush=True)
    methods = {k: ev.solve_with(ev.model_scorer(m, sim)) for k, m in models.items()}
    methods["physics"] = ev.solve_with(lambda w, _r: sim.exact_probability(w, truth=False))
    res = ev.evaluate(sim, methods, models["central"], a.windows, a.seed + 1000)
    out = {k: v["share_of_oracle"] for k, v in res["methods"].items()}
    print(net.name, json.dumps(out), secs)
    Path(a.json).write_text(json.dumps({"net": net.name, "seed": a.seed, "shares": out, "seconds": secs}, indent=1))

if __name__ == "__main__":
    main()
