"""`galactic-train coordination | federated | evaluate`: registered on the trainer's CLI."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from training.coordination import default, evaluate as ev, train
from training.coordination.scenario import DEFAULT_SCENARIO, DEFAULT_SITES

log = logging.getLogger("galactic.train.coordination")


def register(subparsers: argparse._SubParsersAction) -> None:
    for name, helptext in (("coordination", "train the coordination model centrally on pooled site logs"),
                           ("federated", "train the coordination model with FedAvg over per-site logs")):
        p = subparsers.add_parser(name, help=helptext)
        _common(p)
        # Required: a default would overwrite the shipped embedded checkpoint (which
        # `federated` with its defaults reproduces: pass --out training/data/coordination.safetensors).
        p.add_argument("--out", type=Path, required=True,
                       help="checkpoint path (.safetensors; its .json config is written beside it)")
        if name == "federated":
            p.add_argument("--rounds", type=int, default=default.Recipe.fit.rounds)
            p.add_argument("--local-epochs", type=int, default=default.Recipe.fit.local_epochs)
            p.add_argument("--prox-mu", type=float, default=0.0, help="> 0 turns FedAvg into FedProx")
            p.add_argument("--server-momentum", type=float, default=default.Recipe.fit.server_momentum,
                           help="FedAvgM server momentum (0: plain FedAvg)")
        p.set_defaults(func=_train_cmd, federated=name == "federated")
    p = subparsers.add_parser("evaluate", help="compare coordination methods on unseen windows")
    _common(p)
    p.add_argument("--eval-seed", "--seed-eval", dest="eval_seed", type=int, default=None,
                   help="seed of the evaluation windows (default: --seed + 1000, never a training seed)")
    p.add_argument("--eval-windows", type=int, default=100)
    p.add_argument("--rounds", type=int, default=default.Recipe.fit.rounds)
    p.add_argument("--local-epochs", type=int, default=default.Recipe.fit.local_epochs)
    p.add_argument("--prox-mu", type=float, default=0.0)
    p.add_argument("--server-momentum", type=float, default=default.Recipe.fit.server_momentum)
    p.add_argument("--astroplan-windows", type=int, default=2,
                   help="windows scored with astroplan's PriorityScheduler (slow: ~1 s per site)")
    p.add_argument("--json", type=Path, required=True, help="write the results here")
    p.set_defaults(func=_evaluate_cmd)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO)
    p.add_argument("--sites", type=Path, default=DEFAULT_SITES)
    p.add_argument("--seed", type=int, default=default.Recipe.seed, help="training seed")
    p.add_argument("--windows", type=int, default=default.Recipe.windows_per_site, help="logged windows per site")
    p.add_argument("--per-window", type=int, default=default.Recipe.per_window, help="observations per logged window")
    p.add_argument("--epochs", type=int, default=default.Recipe.fit.epochs)


def _recipe(args) -> default.Recipe:
    fit = replace(default.Recipe.fit, epochs=args.epochs, seed=args.seed,
                  rounds=getattr(args, "rounds", default.Recipe.fit.rounds),
                  local_epochs=getattr(args, "local_epochs", default.Recipe.fit.local_epochs),
                  prox_mu=getattr(args, "prox_mu", 0.0),
                  server_momentum=getattr(args, "server_momentum", default.Recipe.fit.server_momentum))
    return default.Recipe(scenario=args.scenario, sites=args.sites, seed=args.seed,
                          windows_per_site=args.windows, per_window=args.per_window, fit=fit)


def _progress(msg: str) -> None:
    print(f"[coordination] {msg}", file=sys.stderr, flush=True)


def _train_cmd(args) -> int:
    torch.set_num_threads(1)  # a 2k-parameter MLP: threads cost more than they give
    out = default.build(_recipe(args), args.out, federated=args.federated, progress=_progress)
    _progress(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


def _evaluate_cmd(args) -> int:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    recipe = _recipe(args)
    sim, logs = default.site_logs(recipe, _progress)
    _progress("central fit")
    central = train.train_central(logs, recipe.fit)
    _progress("federated fit")
    federated = train.train_federated(logs, recipe.fit, _progress)
    methods: dict[str, ev.Chooser] = {
        "federated": ev.solve_with(ev.model_scorer(federated, sim)),
        "central": ev.solve_with(ev.model_scorer(central, sim)),
        # Physics at the forecast: the simulator's own noise model without the hidden effects,
        # with enough draws that its sampling noise does not handicap it.
        "physics": ev.solve_with(lambda w, rng: sim.success_probability(rng, w, k=1024, truth=False)),
        "greedy_altitude": ev.greedy(lambda w: w.geometry.altitude),
        "greedy_aperture": ev.greedy(lambda w: np.broadcast_to(w.sites.aperture_m, w.feasible.shape)),
        "random": ev.random_feasible,
    }
    for i, site in enumerate(sim.table.site):
        _progress(f"local-only fit {site.id}")
        local = train.train_local(logs, i, recipe.fit)
        methods[f"local_only:{site.id}"] = ev.solve_with(ev.model_scorer(local, sim))
    eval_seed = args.seed + 1000 if args.eval_seed is None else args.eval_seed
    _progress(f"evaluating {args.eval_windows} windows (seed {eval_seed})")
    result = ev.evaluate(sim, methods, federated, args.eval_windows, eval_seed)
    if args.astroplan_windows > 0:
        _progress(f"astroplan PriorityScheduler on {args.astroplan_windows} windows")
        from training.coordination.astroplan_baseline import evaluate_astroplan

        result["methods"]["astroplan"] = evaluate_astroplan(sim, args.astroplan_windows, eval_seed)
    result["scenario"] = sim.sc.scenario.name
    result["train_seed"], result["eval_seed"] = args.seed, eval_seed
    result["seconds"] = round(time.perf_counter() - t0, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    _progress(f"wrote {args.json} in {result['seconds']} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m training.coordination.cli ...`) until training/cli.py wires it."""
    parser = argparse.ArgumentParser(prog="galactic-train")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
