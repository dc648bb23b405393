"""The coordination model over random observatory networks it never saw.

    python benchmarks/coordination_networks.py --json OUT [--jobs 2] [--only I ...]

Writes networks 0..COUNT-1 of `galactic-train scenarios --seed SEED` (the defaults, 12
networks of seed 2026, were fixed before the first run and nothing was chosen on them), runs
`galactic-train evaluate` on each (the recipe as shipped, one training seed, unseen windows),
and checks issue 22's targets on the federated model's share of the oracle: mean >= 0.985,
worst >= 0.97, every network at least 3 points over physics, federated within 1 point of
central. Prints a table and writes OUT (JSON), with every network's own evaluation inside.

Beside each share: physics' headroom (1 - its share: what a learned model could add at
most) and the part of it the learned models close ((share - physics) / headroom). "3 points
over physics" cannot be met where physics is within 3 points of the oracle; the part of the
headroom closed says there whether the model still adds what there is to add. `--only`
evaluates some of the networks (a smoke run, or a rerun of a few): the targets are then
over those alone, and the JSON says so.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engines.coordination.sites import load_sites  # noqa: E402
from training.coordination import generator  # noqa: E402


def _evaluate(net: Path, args) -> dict:
    out = net / "evaluate.json"
    cmd = [sys.executable, "-m", "training.cli", "evaluate", "--scenario", str(net / "scenario.toml"),
           "--site-table", str(net / "sites.toml"), "--seeds", str(args.train_seed),
           "--eval-windows", str(args.eval_windows), "--json", str(out)]
    log = net / "evaluate.log"
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        return {"network": net.name, "error": f"exit {rc}; see {log}"}
    run = json.loads(out.read_text())["runs"][0]
    m = run["methods"]
    keep = ("oracle", "federated", "central", "physics", "greedy_altitude", "random")
    headroom = 1.0 - m["physics"]["share_of_oracle"]
    closed = {k: round((m[k]["share_of_oracle"] - m["physics"]["share_of_oracle"]) / headroom, 4)
              if headroom > 0 else None for k in ("federated", "central")}
    return {"network": net.name, "sites": len(load_sites(net / "sites.toml").site),
            "critical_targets": run["critical_targets"], "capacity_per_window": run["capacity_per_window"],
            "physics_headroom": round(headroom, 4), "headroom_closed": closed,
            "methods": {k: m[k] for k in keep}, "model": run["model"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=2026, help="the networks' seed (galactic-train scenarios --seed)")
    p.add_argument("--count", type=int, default=12)
    p.add_argument("--train-seed", type=int, default=101, help="evaluate's training seed (windows: seed + 1000)")
    p.add_argument("--eval-windows", type=int, default=50)
    p.add_argument("--jobs", type=int, default=2, help="networks evaluated at once (one core each)")
    p.add_argument("--only", type=int, nargs="+", default=None, metavar="I",
                   help="evaluate only these networks (indices into the list); targets then over them alone")
    p.add_argument("--work", type=Path, default=None, help="keep the networks and their logs here")
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args()
    t0 = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="galactic-networks-"))
    nets = generator.write(args.count, args.seed, work)
    if args.only is not None:
        nets = [nets[i] for i in args.only]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda n: _evaluate(n, args), nets))
    ok = [r for r in rows if "error" not in r]
    fed = [r["methods"]["federated"]["share_of_oracle"] for r in ok]
    over_physics = [r["methods"]["federated"]["share_of_oracle"] - r["methods"]["physics"]["share_of_oracle"]
                    for r in ok]
    vs_central = [r["methods"]["federated"]["share_of_oracle"] - r["methods"]["central"]["share_of_oracle"]
                  for r in ok]
    targets = {
        "mean >= 0.985": (round(sum(fed) / len(fed), 4), sum(fed) / len(fed) >= 0.985) if fed else None,
        "worst >= 0.97": (min(fed), min(fed) >= 0.97) if fed else None,
        "every network >= 3 points over physics": (round(min(over_physics), 4), min(over_physics) >= 0.03)
        if fed else None,
        "federated within 1 point of central": (round(min(vs_central), 4), min(vs_central) >= -0.01)
        if fed else None,
    }
    # Not a target of the issue: what the learned model adds where physics leaves little.
    small = [r for r in ok if r["physics_headroom"] < 0.03]
    headroom = {"networks where physics is within 3 points of the oracle": [r["network"] for r in small],
                "federated: least part of the headroom closed there":
                    min((r["headroom_closed"]["federated"] for r in small
                         if r["headroom_closed"]["federated"] is not None), default=None),
                "federated: least part of the headroom closed, all networks":
                    min((r["headroom_closed"]["federated"] for r in ok
                         if r["headroom_closed"]["federated"] is not None), default=None)}
    result = {"networks_seed": args.seed, "count": args.count, "only": args.only, "train_seed": args.train_seed,
              "eval_windows": args.eval_windows, "targets": targets, "headroom": headroom, "networks": rows,
              "failed": [r for r in rows if "error" in r], "seconds": round(time.perf_counter() - t0, 1)}
    print("| network | sites | federated | central | physics | physics headroom | closed fed / central "
          "| urgent waste fed/oracle (slots) | fair urgent missed fed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in ok:
        m, c = r["methods"], r["headroom_closed"]
        closed = " / ".join("-" if c[k] is None else f"{c[k]:.2f}" for k in ("federated", "central"))
        print(f"| {r['network']} | {r['sites']} | {m['federated']['share_of_oracle']:.4f} | "
              f"{m['central']['share_of_oracle']:.4f} | {m['physics']['share_of_oracle']:.4f} | "
              f"{r['physics_headroom']:.4f} | {closed} | "
              f"{m['federated']['urgent_waste_slots']:.2f} / {m['oracle']['urgent_waste_slots']:.2f} | "
              f"{m['federated']['urgent_fair_missed']:.2f} |")
    for name, v in [*targets.items(), *headroom.items()]:
        print(f"{name}: {v}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
