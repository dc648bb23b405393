"""`galactic-train simulate-logs | coordination | federated | scenarios | evaluate`: registered on the trainer's CLI.

Training reads site log files (`sitelog.py`'s schema): `--sites LOG...` names them (files,
or directories of *.csv); without it, the recipe's logs are simulated into files first.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from training.coordination import default, evaluate as ev, sitelog, train
from training.coordination.scenario import DEFAULT_SCENARIO, DEFAULT_SITES, load_scenario


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("simulate-logs", help="write one site-log file per site from a scenario")
    _scenario_args(p)
    p.add_argument("--out", type=Path, required=True, help="directory for <site_id>.csv")
    p.set_defaults(func=_simulate_cmd)
    for name, helptext in (("coordination", "train the coordination model centrally on pooled site logs"),
                           ("federated", "train the coordination model by federation (NVFLARE: server + one "
                                         "process per site on loopback)")):
        p = subparsers.add_parser(name, help=helptext)
        _scenario_args(p)
        _train_args(p)
        # Required: a default would overwrite the shipped embedded checkpoint (which
        # `federated` with its defaults reproduces: pass --out training/data/coordination.safetensors).
        p.add_argument("--out", type=Path, required=True,
                       help="checkpoint path (.safetensors; its .json config is written beside it)")
        if name == "federated":
            _fed_args(p)
            p.add_argument("--engine", choices=default.ENGINES, default="flare",
                           help="flare: NVFLARE server and site processes; inprocess: the same rounds in one process")
            p.add_argument("--record-dir", type=Path, default=None,
                           help="flare: write each round's sent, received and aggregated weights here")
            p.add_argument("--config", type=Path, default=None,
                           help="TOML file; its [training.federation] section (flags override it)")
            p.add_argument("--min-sites", type=int, default=None,
                           help="flare: sites a round needs (training.federation.min_sites; 0 = every site)")
            p.add_argument("--round-timeout-s", type=float, default=None,
                           help="flare: longest a round waits for sites beyond the minimum "
                                "(training.federation.round_timeout_s)")
        p.set_defaults(func=_train_cmd, federated=name == "federated")
    p = subparsers.add_parser("scenarios", help="write random observatory networks (site table + scenario) for "
                                                "evaluation, drawn from the documented ranges of generator.py")
    p.add_argument("--count", type=int, required=True, help="networks to write")
    p.add_argument("--seed", type=int, required=True, help="network i is drawn from seed [S, i]")
    p.add_argument("--out", type=Path, required=True, help="a directory net-S-ii/{sites,scenario}.toml per network")
    p.add_argument("--site-table", type=Path, default=DEFAULT_SITES, help="the table the sites are drawn from")
    p.set_defaults(func=_scenarios_cmd)
    p = subparsers.add_parser("evaluate", help="compare coordination methods on unseen windows, over training seeds")
    _scenario_args(p)
    p.set_defaults(seed=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[101, 102, 103, 104, 105],
                   help="training seeds (none of them used to choose hyperparameters); evaluation windows use seed+1000")
    p.add_argument("--epochs", type=int, default=default.Recipe.fit.epochs)
    p.add_argument("--eval-windows", type=int, default=100)
    _fed_args(p)
    p.add_argument("--urgent-floor", type=float, default=ev.URGENT_FLOOR,
                   help="the decision rule's urgent floor (coordination.urgent_min_p_success) for the oracle "
                        "and every solver-based method")
    p.add_argument("--compare-floor", type=float, nargs="*", default=[], metavar="F",
                   help="also score federated, central and physics under floor F, on the same windows and "
                        "models (as federated@F, ...); 0 is the rule before the floor existed")
    p.add_argument("--astroplan-windows", type=int, default=0,
                   help="windows scored with astroplan's PriorityScheduler (slow: ~1 s per site)")
    p.add_argument("--json", type=Path, required=True, help="write the results here")
    p.set_defaults(func=_evaluate_cmd)


def _scenario_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO)
    p.add_argument("--site-table", type=Path, default=DEFAULT_SITES, help="the site table (sites.toml)")
    p.add_argument("--seed", type=int, default=default.Recipe.seed, help="training seed (logs and fit)")
    p.add_argument("--windows", type=int, default=default.Recipe.windows_per_site, help="logged windows per site")
    p.add_argument("--per-window", type=int, default=default.Recipe.per_window, help="observations per logged window")


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sites", type=Path, nargs="+", default=None, metavar="LOG",
                   help="site log files or directories of them, one file per site of the table "
                        "(default: simulate the recipe's logs from --scenario)")
    p.add_argument("--snr-required", type=float, default=None,
                   help="the SNR that counts as a success (default: the scenario's)")
    p.add_argument("--skip-invalid", action="store_true", help="drop invalid log rows (and report how many)")
    p.add_argument("--epochs", type=int, default=default.Recipe.fit.epochs)


def _fed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rounds", type=int, default=default.Recipe.fit.rounds)
    p.add_argument("--local-epochs", type=int, default=default.Recipe.fit.local_epochs)
    p.add_argument("--prox-mu", type=float, default=0.0, help="> 0 turns FedAvg into FedProx")
    p.add_argument("--server-momentum", type=float, default=default.Recipe.fit.server_momentum,
                   help="FedAvgM server momentum (0: plain FedAvg)")
    p.add_argument("--site-lr-scale", type=float, default=default.Recipe.fit.site_lr_scale,
                   help="the per-site rows' learning rate over the shared weights' in the sites' fits")
    p.add_argument("--personal-epochs", type=int, default=default.Recipe.fit.personal_epochs,
                   help="epochs of the personalisation round after the last (each site fits only its own "
                        "per-site rows); 0: none")


def _recipe(args, seed: int | None = None) -> default.Recipe:
    seed = args.seed if seed is None else seed
    fit = replace(default.Recipe.fit, epochs=getattr(args, "epochs", default.Recipe.fit.epochs), seed=seed,
                  rounds=getattr(args, "rounds", default.Recipe.fit.rounds),
                  local_epochs=getattr(args, "local_epochs", default.Recipe.fit.local_epochs),
                  prox_mu=getattr(args, "prox_mu", 0.0),
                  server_momentum=getattr(args, "server_momentum", default.Recipe.fit.server_momentum),
                  personal_epochs=getattr(args, "personal_epochs", default.Recipe.fit.personal_epochs),
                  site_lr_scale=getattr(args, "site_lr_scale", default.Recipe.fit.site_lr_scale))
    return default.Recipe(scenario=args.scenario, sites=args.site_table, seed=seed,
                          windows_per_site=args.windows, per_window=args.per_window, fit=fit)


def _progress(msg: str) -> None:
    print(f"[coordination] {msg}", file=sys.stderr, flush=True)


def _log_files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        out += sorted(p.glob("*.csv")) if p.is_dir() else [p]
    return out


def _simulate_cmd(args) -> int:
    paths = default.write_site_logs(_recipe(args), args.out, _progress)
    _progress(f"wrote {len(paths)} site logs to {args.out}")
    return 0


def _federation_settings(args):
    """`[training.federation]` of --config (and GALACTIC_TRAINING__FEDERATION__*), flags on top."""
    from training import config as training_config

    if not args.federated:
        return None
    overrides = {"federation.min_sites": args.min_sites, "federation.round_timeout_s": args.round_timeout_s}
    return training_config.load(args.config, overrides=overrides).federation


def _train_cmd(args) -> int:
    from engines.config import ConfigError

    torch.set_num_threads(1)  # a 2k-parameter MLP: threads cost more than they give
    recipe = _recipe(args)
    engine = getattr(args, "engine", "inprocess")
    try:
        settings = _federation_settings(args)
        if args.sites is None:
            out = default.build(recipe, args.out, federated=args.federated, progress=_progress, engine=engine,
                                settings=settings)
        else:
            out = _train_on_files(args, recipe, engine, settings)
    except ConfigError as exc:
        print(f"galactic-train {'federated' if args.federated else 'coordination'}: {exc}", file=sys.stderr)
        return 2
    _report_rounds(out)
    _progress(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


def _report_rounds(out: Path) -> None:
    """One line per round of an NVFLARE federation: which sites it aggregated (and missed)."""
    meta = json.loads(out.with_suffix(".json").read_text()).get("meta", {})
    for rd in meta.get("aggregated", []):
        missing = f"; missing {', '.join(rd['missing'])}" if rd["missing"] else ""
        _progress(f"round {rd['round'] + 1}: aggregated {len(rd['sites'])} sites "
                  f"({', '.join(f'{s} {n}' for s, n in rd['samples'].items())} samples){missing}")


def _train_on_files(args, recipe: default.Recipe, engine: str, settings=None) -> Path:
    from engines.coordination.sites import load_sites

    table = load_sites(args.site_table)
    snr = args.snr_required if args.snr_required is not None else load_scenario(args.scenario).scenario.snr_required
    files = _log_files(args.sites)
    info = {"recipe": "federated" if args.federated else "central", "logs": [f.name for f in files],
            "seed": recipe.seed}
    if args.federated and engine == "flare":
        from training.coordination import federated as fl

        ids = {sitelog.read(f, table, args.skip_invalid).site_id: f for f in files}  # validate before starting
        fed = fl.Federation(logs=ids, site_table=args.site_table, snr_required=snr, out=args.out,
                            record_dir=args.record_dir, skip_invalid=args.skip_invalid,
                            **({"settings": settings} if settings is not None else {}))
        return fl.run(fed, table, recipe.fit, {**info, "engine": "nvflare"}, _progress)
    logs = sitelog.read_logs(files, table, snr, args.skip_invalid, _progress)
    model = (train.train_federated(logs, recipe.fit, _progress) if args.federated
             else train.train_central(logs, recipe.fit))
    return train.export(model, table.ids, args.out, {**info, "rows": sum(len(x) for x in logs)})


def _scenarios_cmd(args) -> int:
    from training.coordination import generator

    for d in generator.write(args.count, args.seed, args.out, args.site_table):
        print(d)
    return 0


def _evaluate_cmd(args) -> int:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    runs = []
    args.json.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        _progress(f"training seed {seed}")
        runs.append(_evaluate_seed(args, _recipe(args, seed)))
        # Rewritten after every seed: a long evaluation cut short still leaves its seeds.
        result = {"scenario": runs[0]["scenario"], "seeds": [r["train_seed"] for r in runs],
                  "eval_windows": args.eval_windows, "summary": ev.summarise([r["methods"] for r in runs]),
                  "runs": runs, "seconds": round(time.perf_counter() - t0, 1)}
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        _progress(f"wrote {args.json} ({len(runs)}/{len(args.seeds)} seeds) in {result['seconds']} s")
    return 0


def _evaluate_seed(args, recipe: default.Recipe) -> dict:
    sim, logs = default.site_logs(recipe, _progress)
    _progress("central fit")
    central = train.train_central(logs, recipe.fit)
    _progress("federated fit (in-process rounds: the NVFLARE path's arithmetic, without its processes)")
    federated = train.train_federated(logs, recipe.fit, _progress)
    floor = args.urgent_floor
    scorers: dict[str, ev.Scorer] = {
        "federated": ev.model_scorer(federated, sim),
        "central": ev.model_scorer(central, sim),
        # Physics at the forecast: the simulator's own weather model without the hidden
        # effects, integrated like the truth (no sampling noise to handicap it).
        "physics": lambda w, _rng: sim.exact_probability(w, truth=False),
    }
    methods: dict[str, ev.Chooser] = {
        **{name: ev.solve_with(score, floor) for name, score in scorers.items()},
        **{f"{name}@{f:g}": ev.solve_with(score, f) for f in args.compare_floor for name, score in scorers.items()},
        "greedy_altitude": ev.greedy(lambda w: w.geometry.altitude),
        "greedy_aperture": ev.greedy(lambda w: np.broadcast_to(w.sites.aperture_m, w.feasible.shape)),
        "random": ev.random_feasible,
    }
    for i, site in enumerate(sim.table.site):
        _progress(f"local-only fit {site.id}")
        local = train.train_local(logs, i, recipe.fit)
        methods[f"local_only:{site.id}"] = ev.solve_with(ev.model_scorer(local, sim), floor)
    eval_seed = recipe.seed + 1000
    _progress(f"evaluating {args.eval_windows} windows (seed {eval_seed})")
    result = ev.evaluate(sim, methods, federated, args.eval_windows, eval_seed, floor)
    if args.astroplan_windows > 0:
        _progress(f"astroplan PriorityScheduler on {args.astroplan_windows} windows")
        from training.coordination.astroplan_baseline import evaluate_astroplan

        result["methods"]["astroplan"] = evaluate_astroplan(sim, args.astroplan_windows, eval_seed)
    result["scenario"] = sim.sc.scenario.name
    result["train_seed"], result["eval_seed"] = recipe.seed, eval_seed
    return result


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m training.coordination.cli ...`)."""
    parser = argparse.ArgumentParser(prog="galactic-train")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
