"""Federated training on NVIDIA FLARE: one aggregation server, one participant per site.

`run` builds a FLARE job (server: `fl_server.CoordFedAvg`; each site: `fl_site.py` through
FLARE's Client API, reading only that site's log) and runs it in FLARE's POC deployment:
FLARE provisions a project with one identity (certificate) per participant, starts the
server and every site as separate processes that connect out to the server over mutual
TLS on loopback, and the admin client submits the job. A real deployment is the same job
submitted to a provisioned project (README, "Federated training").

No site is mandatory: the job runs while `settings.min_sites` sites are up, and each round
aggregates the sites that answered in time (`fl_server.CoordFedAvg`, "Stragglers").
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from engines.config import ConfigError
from engines.coordination.sites import SiteTable
from training.coordination import fl_site
from training.coordination.train import FitConfig, federated_config
from training.config import FederationSettings

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
    timeout_s: float = 1800.0  # the whole job
    settings: FederationSettings = FederationSettings()  # stragglers: min_sites, round timeout
    # FLARE's POC workspace (provisioned kits, every participant's logs and job workspace);
    # None: a temporary directory, removed afterwards. A given one is kept for inspection.
    workspace: Path | None = None
    # Drill: site id -> rounds after which that site's job process exits (fl_site.py
    # --leave-after-rounds), to see the federation finish with a site down.
    leave_after: dict[str, int] = field(default_factory=dict)

    def min_sites(self) -> int:
        """The sites a round needs: `settings.min_sites`, 0 meaning every site."""
        n = len(self.logs)
        if self.settings.min_sites > n:
            raise ConfigError("training.federation.min_sites",
                              f"is {self.settings.min_sites}, but the federation has {n} sites")
        return self.settings.min_sites or n


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
    model_config = asdict(federated_config(len(table.ids), cfg))
    # No mandatory site: FLARE would abort the job the moment any one of them is deemed dead.
    job = FedJob(name="galactic-coordination", min_clients=fed.min_sites())
    job.to_server(CoordFedAvg(
        site_ids=list(table.ids), model_config=model_config, rounds=cfg.rounds, seed=cfg.seed, out=str(fed.out.resolve()),
        server_momentum=cfg.server_momentum, own_rows=cfg.own_embedding_rows, round_cosine=cfg.round_cosine,
        local_lr=cfg.local_lr, personal_epochs=cfg.personal_epochs, meta=meta, record_dir=str(fed.record_dir.resolve()) if fed.record_dir else None,
        min_sites=fed.min_sites(), round_timeout_s=math.ceil(fed.settings.round_timeout_s)))
    for site in sites:
        args = ["--log", str(Path(fed.logs[site]).resolve()), "--site-table", str(fed.site_table.resolve()),
                "--snr", repr(fed.snr_required), "--local-epochs", str(cfg.local_epochs),
                "--batch-size", str(cfg.batch_size), "--seed", str(cfg.seed)]
        if fed.skip_invalid:
            args.append("--skip-invalid")
        if site in fed.leave_after:
            args += ["--leave-after-rounds", str(fed.leave_after[site])]
        job.to(ScriptRunner(script=fl_site.__file__, script_args=" ".join(args), framework=FrameworkType.NUMPY,
                            server_expected_format=ExchangeFormat.NUMPY), site)
    return job


def run(fed: Federation, table: SiteTable, cfg: FitConfig, meta: dict,
        progress: Callable[[str], None] = lambda _m: None) -> Path:
    """Run the federation on loopback (FLARE POC): server + one process per site. Returns `fed.out`."""
    missing = [s for s in table.ids if s not in fed.logs]
    if missing:
        raise ValueError(f"no log for site(s) {', '.join(missing)}: every site of the table takes part")
    fed.min_sites()  # refuse a minimum above the site count before starting anything
    with tempfile.TemporaryDirectory(prefix="galactic-flare-") as tmp:
        from nvflare.recipe import PocEnv

        ws = str(fed.workspace.resolve()) if fed.workspace else tmp
        Path(ws).mkdir(parents=True, exist_ok=True)
        # FLARE reads its POC workspace from the environment; a private one per run keeps
        # concurrent runs (and other users' POCs) apart. Its server and job processes
        # inherit the environment, which is also where FLARE's config service finds its
        # dead-client timings (the application config of a POC kit is FLARE's own).
        grace = fed.settings.dead_site_grace_s
        os.environ.update({"NVFLARE_POC_WORKSPACE": ws, "NVFLARE_DEAD_CLIENT_GRACE_PERIOD": repr(float(grace)),
                           # FLARE looks for dead sites only this long after a round starts
                           # (default 30 s); never longer than the grace itself.
                           "NVFLARE_DEAD_CLIENT_CHECK_LEAD_TIME": repr(float(min(grace, 30.0)))})
        project = _project_file(Path(ws), table.ids)
        env = PocEnv(num_clients=len(table.ids), clients=list(table.ids), username=ADMIN, project_conf_path=project)
        job = build_job(fed, table, cfg, meta)
        progress(f"starting FLARE: server + {len(table.ids)} site processes on loopback; a round needs "
                 f"{fed.min_sites()} of {len(table.ids)} sites, waits at most {fed.settings.round_timeout_s:g} s")
        try:
            job_id = _deploy_when_every_site_is_up(env, job, table.ids, fed.timeout_s)
            progress(f"job {job_id} submitted; {cfg.rounds} rounds")
            result = env.get_job_result(job_id, timeout=fed.timeout_s)
            status = env.get_job_status(job_id)
            progress(f"job {job_id}: {status}")
        finally:
            env.stop(clean_up=fed.workspace is None)
            Path(project).unlink(missing_ok=True)
        if not fed.out.exists():
            raise RuntimeError(f"the federation ended ({status}) without writing {fed.out}; result: {result}")
    return fed.out


def _deploy_when_every_site_is_up(env, job, sites: tuple[str, ...], timeout_s: float) -> str:
    """`PocEnv.deploy`, but the job is submitted once every site's client has connected.

    PocEnv starts the POC and submits after a fixed 3 s. With no mandatory site, FLARE's
    scheduler starts the job as soon as `min_sites` clients are connected, and a site whose
    client connects a second later would sit out the whole job, not just a round.
    """
    from nvflare.tool.poc.poc_commands import _start_poc, prepare_poc_provision

    if env._check_poc_running():
        env.stop(clean_up=True)
    prepare_poc_provision(clients=list(sites), number_of_clients=len(sites), workspace=env.poc_workspace,
                          docker_image=env.docker_image, use_he=env.use_he, project_conf_path=env.project_conf_path,
                          examples_dir=None)
    _start_poc(poc_workspace=env.poc_workspace, gpu_ids=env.gpu_ids, excluded=[ADMIN], services_list=[])
    manager = env._get_session_manager()
    deadline = time.monotonic() + timeout_s
    session = None
    try:
        while True:
            try:
                session = session or manager._get_session()  # fails until the server listens
                up = {c.name for c in session.get_connected_client_list()}
            except Exception as exc:  # noqa: BLE001 - FLARE raises a zoo of connection errors
                up, why = set(), exc
            else:
                why = None
            if up >= set(sites):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"sites {sorted(set(sites) - up)} did not connect within {timeout_s:g} s"
                                   + (f" ({why})" if why else ""))
            time.sleep(0.5)  # FLARE offers no event for a client's registration
    finally:
        if session is not None:
            session.close()
    return manager.submit_job(job)


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
