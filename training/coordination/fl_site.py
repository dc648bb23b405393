"""One site's participant in the NVFLARE federation (the FLARE Client API script).

FLARE runs this script inside the site's own job process (`ScriptRunner`). It reads only
this site's log file, and for every task the server sends it fits the global weights on
that log and sends back the weights and its sample count: nothing else leaves the site.
A task whose metadata carries `personal_epochs` is the personalisation round: the site fits
only its own rows of the per-site parameters (`train.personal_fit`).
The site's FLARE identity (its provisioned certificate's name) must be its site id; the
server maps identities, not anything a site says about itself, to rows of the site table.

    python -m training.coordination.fl_site --log rubin.csv --site-table sites.toml --snr 10
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

from engines.coordination.model import CoordNetConfig
from engines.coordination.sites import load_sites
from training.coordination import sitelog, train

# The only metadata a site sends besides the weights (FLARE weights aggregation by the
# first key; the server reads the second).
COUNT_KEYS = ("NUM_STEPS_CURRENT_ROUND", "samples")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="galactic-fl-site")
    p.add_argument("--log", type=Path, required=True, help="this site's log (site-log schema)")
    p.add_argument("--site-table", type=Path, required=True)
    p.add_argument("--snr", type=float, required=True, help="the SNR an observation must reach")
    p.add_argument("--skip-invalid", action="store_true")
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--leave-after-rounds", type=int, default=None, metavar="N",
                   help="drill: after N rounds this site's job process exits when the next task arrives, "
                        "as a site taken down mid-training does (the federation goes on without it)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import nvflare.client as flare
    from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

    args = parse(argv)
    torch.set_num_threads(1)  # a 2k-parameter MLP: threads cost more than they give
    train.quiet_lightning()
    flare.init()
    site_id = flare.get_site_name()
    table = load_sites(args.site_table)
    log = sitelog.read(args.log, table, args.skip_invalid)
    if log.site_id != site_id:
        raise SystemExit(f"{args.log} is the log of {log.site_id!r}, but this participant is {site_id!r}")
    logs = sitelog.to_logs(log, table, args.snr, args.skip_invalid, args.log)
    site = table.index()[site_id]
    cfg = train.FitConfig(local_epochs=args.local_epochs, batch_size=args.batch_size, seed=args.seed)
    while flare.is_running():
        task = flare.receive()
        if task is None:
            break
        meta = task.meta or {}
        r = int(task.current_round or 0)
        if args.leave_after_rounds is not None and r >= args.leave_after_rounds:
            # The process ends here, task in hand: no result, no goodbye. A clean exit
            # status, because FLARE 2.9 fails the whole job when a site's job process
            # reports a crash; a site that just goes away is what a federation must survive.
            print(f"{site_id}: leaving the federation at round {r + 1} (--leave-after-rounds)", flush=True)
            os._exit(0)
        config = CoordNetConfig(**meta["model_config"])
        state = {k: torch.as_tensor(v) for k, v in task.params.items()}
        if meta.get("personal_epochs"):  # the personalisation round: this site's rows only
            out = train.personal_fit(state, config, logs, float(meta["lr"]),
                                     replace(cfg, personal_epochs=int(meta["personal_epochs"])),
                                     train.local_seed(cfg, r, site))
        else:
            out = train.local_fit(state, config, logs, float(meta["lr"]), cfg, train.local_seed(cfg, r, site))
        flare.send(FLModel(params_type=ParamsType.FULL, params={k: v.numpy() for k, v in out.items()},
                           current_round=r, meta={key: len(logs) for key in COUNT_KEYS}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
