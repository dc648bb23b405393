"""Federated training on NVIDIA FLARE: one aggregation server, one participant per site.

`run` builds a FLARE job (server: `fl_server.CoordFedAvg`; each site: `fl_site.py` through
FLARE's Client API, reading only that site's log) and runs it in FLARE's POC deployment:
FLARE provisions a project with one identity (certificate) per participant, starts the
server and every site as separate processes that connect out to the server over mutual
TLS on loopback, and the admin client submits the job. A real deployment is the same job
submitted to a provisioned project (README, "Federated training").
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from engines.coordination.model import CoordNetConfig
from engines.coordination.sites import SiteTable
from training.coordination import fl_site
from training.coordination.train import FitConfig

log = logging.getLogger("galactic.train.federated")
ADMIN = "admin@galactic.org"  # the POC project's administrator, who submits the job


@dataclass(frozen=True)
class Federation:
    """What the job needs besides the fit: where the logs and the table are, where to write."""

    logs: dict[str, Path]  # site id -> that site's log file (read by that site only)
    site_table: Path
    snr_required: float
    out: Path
    record_dir: Path | None = None  # per-round record of what the server sent and received
    skip_invalid: bool = False
    timeout_s: float = 1800.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def build_job(fed: Federation, table: SiteTable, cfg: FitConfig, meta: dict):
    from nvflare.client.config import ExchangeFormat
    from nvflare.job_config.api import FedJob
    from nvflare.job_config.script_runner import FrameworkType, ScriptRunner

    from training.coordination.fl_server import CoordFedAvg

    sites = [s for s in table.ids if s in fed.logs]
    model_config = asdict(CoordNetConfig(n_sites=len(table.ids), prox_mu=cfg.prox_mu))
    job = FedJob(name="galactic-coordination", min_clients=len(sites), mandatory_clients=sites)
    job.to_server(CoordFedAvg(
        site_ids=list(table.ids), model_config=model_config, rounds=cfg.rounds, seed=cfg.seed, out=str(fed.out.resolve()),
        server_momentum=cfg.server_momentum, own_rows=cfg.own_embedding_rows, round_cosine=cfg.round_cosine,
        local_lr=cfg.local_lr, meta=meta, record_dir=str(fed.record_dir.resolve()) if fed.record_dir else None))
    for site in sites:
        args = ["--log", str(Path(fed.logs[site]).resolve()), "--site-table", str(fed.site_table.resolve()),
                "--snr", repr(fed.snr_required), "--local-epochs", str(cfg.local_epochs),
                "--batch-size", str(cfg.batch_size), "--seed", str(cfg.seed)]
        if fed.skip_invalid:
            args.append("--skip-invalid")
        job.to(ScriptRunner(script=fl_site.__file__, script_args=" ".join(args), framework=FrameworkType.NUMPY,
                            server_expected_format=ExchangeFormat.NUMPY), site)
    return job


def run(fed: Federation, table: SiteTable, cfg: FitConfig, meta: dict,
        progress: Callable[[str], None] = lambda _m: None) -> Path:
    """Run the federation on loopback (FLARE POC): server + one process per site. Returns `fed.out`."""
    missing = [s for s in table.ids if s not in fed.logs]
    if missing:
        raise ValueError(f"no log for site(s) {', '.join(missing)}: every site of the table takes part")
    with tempfile.TemporaryDirectory(prefix="galactic-flare-") as ws:
        from nvflare.recipe import PocEnv

        # FLARE reads its POC workspace from the environment; a private one per run keeps
        # concurrent runs (and other users' POCs) apart.
        os.environ["NVFLARE_POC_WORKSPACE"] = ws
        project = _project_file(Path(ws), table.ids)
        env = PocEnv(num_clients=len(table.ids), clients=list(table.ids), username=ADMIN, project_conf_path=project)
        job = build_job(fed, table, cfg, meta)
        progress(f"starting FLARE: server + {len(table.ids)} site processes on loopback")
        try:
            job_id = env.deploy(job)
            progress(f"job {job_id} submitted; {cfg.rounds} rounds")
            result = env.get_job_result(job_id, timeout=fed.timeout_s)
            status = env.get_job_status(job_id)
            progress(f"job {job_id}: {status}")
        finally:
            env.stop(clean_up=True)
            Path(project).unlink(missing_ok=True)
        if not fed.out.exists():
            raise RuntimeError(f"the federation ended ({status}) without writing {fed.out}; result: {result}")
    return fed.out


def _project_file(ws: Path, sites: tuple[str, ...]) -> str:
    """A FLARE project: one server on localhost with free ports, one client per site."""
    lines = ["api_version: 3", "name: galactic", "description: galactic coordination federation",
             "participants:",
             "  - name: localhost", "    type: server", "    org: galactic", f"    fed_learn_port: {_free_port()}"]
    for s in sites:
        lines += [f"  - name: {s}", "    type: client", "    org: galactic"]
    lines += [f"  - name: {ADMIN}", "    type: admin", "    org: galactic", "    role: project_admin",
              "builders:",
              "  - path: nvflare.lighter.impl.workspace.WorkspaceBuilder",
              "    args:", "      template_file: [master_template.yml]",
              "  - path: nvflare.lighter.impl.static_file.StaticFileBuilder",
              "    args:", "      config_folder: config",
              "  - path: nvflare.lighter.impl.cert.CertBuilder",
              "  - path: nvflare.lighter.impl.signature.SignatureBuilder"]
    path = ws.parent / (ws.name + "-project.yml")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


if __name__ == "__main__":
    sys.exit("use `galactic-train federated`")
