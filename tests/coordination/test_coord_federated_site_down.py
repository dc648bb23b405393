"""The NVFLARE federation finishes with a site down: one site's job process exits when its
second round's task arrives, and the job still completes on the other two; another
site's job process is frozen for a round and rejoins the next.

What is real: the FLARE server and three site processes on loopback (POC), and the exit of
the site's FLARE job process (the one running `fl_site.py`, `--leave-after-rounds 1`),
seen in the process table. FLARE learns from that site's client that its job is gone,
writes the site off after `dead_site_grace_s`, and each later round aggregates the two
live sites. Nothing is timed: the tests wait for records and for the job's end (the
frozen round closes at its timeout, set far above a healthy round).
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engines.coordination import checkpoint
from engines.coordination.sites import load_sites
from coordination.test_coord_federated import FIT, ROUNDS, SITES_TOML
from training.config import FederationSettings
from training.coordination import federated, sitelog, train
from training.coordination.simulator import Simulator

pytestmark = pytest.mark.slow

DOWN = "keck"  # the site whose job process exits at round 2
# FLARE hears from the site's client that its job is gone (a client heartbeat, every few
# seconds) and writes the site off after dead_site_grace_s: later rounds then close as soon
# as the live sites answer (seconds here). The round timeout is only the backstop, for a
# site FLARE never saw run its job; it is far above a healthy round (2-20 s on 2 busy cores),
# so no live site misses a round on a slow machine.
SETTINGS = FederationSettings(min_sites=2, round_timeout_s=120, dead_site_grace_s=2)
# The model trained without the site's last two rounds against the one with every site's
# three, on held-out nights of all three sites (binary cross-entropy, nats): measured 0.6389
# vs 0.6429. A site's absence may cost a little accuracy, never a broken model.
QUALITY_TOL = 0.02


def _site_job_process(workspace: Path, site: str) -> int | None:
    """The pid of `site`'s FLARE job process under `workspace` (FLARE starts it as
    `python -m nvflare.private.fed.app.client.worker_process ... -c SITE ... -m WORKSPACE/...`)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # it exited while we looked
            continue
        args = [a.decode(errors="replace") for a in argv]
        if ("nvflare.private.fed.app.client.worker_process" in args and site in args
                and any(a.startswith(str(workspace)) for a in args)):
            return int(entry.name)
    return None


def _wait_for(condition, done: threading.Event, what: str):
    """Wait until `condition()` is truthy; fail if the federation ended first."""
    while not done.is_set():
        value = condition()
        if value:
            return value
        done.wait(0.1)  # re-check on a short tick; returns at once when the run ends
    value = condition()
    assert value, f"the federation ended before {what}"
    return value


class _Job:
    """A FLARE job over three simulated site logs, run on a thread of its own so that the
    test can act on its processes meanwhile; `join()` re-raises what the job raised."""

    def __init__(self, tmp_path: Path, scenario, settings: FederationSettings, **federation) -> None:
        (tmp_path / "sites.toml").write_text(SITES_TOML)
        self.table = load_sites(tmp_path / "sites.toml")
        self.sim = Simulator(scenario, self.table)
        self.paths = {s: sitelog.write(tmp_path / "logs" / f"{s}.csv", self.sim.site_log(i, 6 + 4 * i, 7, 10))
                      for i, s in enumerate(self.table.ids)}
        self.workspace = tmp_path / "flare"
        self.fed = federated.Federation(logs=self.paths, site_table=tmp_path / "sites.toml",
                                        snr_required=scenario.scenario.snr_required, out=tmp_path / "fed.safetensors",
                                        record_dir=tmp_path / "rounds", timeout_s=900, settings=settings,
                                        workspace=self.workspace, **federation)
        self.done, self._failure = threading.Event(), []
        self._runner = threading.Thread(target=self._run, daemon=True)
        self._runner.start()

    def _run(self) -> None:
        try:
            federated.run(self.fed, self.table, FIT, {"recipe": "test"})
        except BaseException as exc:  # handed to the test thread
            self._failure.append(exc)
        finally:
            self.done.set()

    def join(self) -> None:
        self._runner.join()
        assert not self._failure, self._failure


@pytest.mark.timeout(900)
def test_a_site_whose_process_exits_mid_training_is_left_out_and_the_job_finishes(tmp_path, scenario):
    job = _Job(tmp_path, scenario, SETTINGS, leave_after={DOWN: 1})
    table, sim, paths, workspace, fed, done = job.table, job.sim, job.paths, job.workspace, job.fed, job.done
    pid = _wait_for(lambda: _site_job_process(workspace, DOWN), done, f"{DOWN}'s job process started")
    job.join()
    # The site's job process really ended (FLARE's client reaped it) and nothing restarted it.
    assert not Path(f"/proc/{pid}").exists() and _site_job_process(workspace, DOWN) is None
    job_logs = list((workspace / "galactic" / "prod_00" / DOWN).glob("*/log.txt"))
    assert any(f"{DOWN}: leaving the federation at round 2" in p.read_text() for p in job_logs)

    # The job finished: every round ran, the checkpoint is written, and its record says
    # which sites each round aggregated, with their sample counts.
    model, site_ids, _ = checkpoint.load(fed.out)
    assert site_ids == table.ids
    logs = sitelog.read_logs(list(paths.values()), table, scenario.scenario.snr_required)
    counts = {s: len(x) for s, x in zip(table.ids, logs)}
    aggregated = json.loads(fed.out.with_suffix(".json").read_text())["meta"]["aggregated"]
    # FIT has a personalisation round after the last one (round ROUNDS), also without DOWN.
    assert [rd["round"] for rd in aggregated] == list(range(ROUNDS + (FIT.personal_epochs > 0)))
    assert [bool(rd.get("personal")) for rd in aggregated][-1] == (FIT.personal_epochs > 0)
    assert aggregated[0]["sites"] == list(table.ids) and aggregated[0]["missing"] == []
    live = [s for s in table.ids if s != DOWN]
    for rd in aggregated[1:]:
        assert rd["sites"] == live and rd["missing"] == [DOWN]
    for rd in aggregated:
        assert rd["samples"] == {s: counts[s] for s in rd["sites"]}

    # The same rounds in one process, with the same participation, give the same weights.
    torch.set_num_threads(1)  # as the site processes run
    index = {s: i for i, s in enumerate(table.ids)}
    participation = [[index[s] for s in rd["sites"]] for rd in aggregated]
    replay = train.train_federated(logs, FIT, participation=participation)
    for k, v in replay.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, atol=1e-5, rtol=0)

    # Quality: on held-out nights of every site (another seed), within QUALITY_TOL of the
    # federation in which no site went down.
    everyone = train.train_federated(logs, FIT)
    held_out = sitelog.Logs.concat([sim.site_logs(i, 6, 1234, 10) for i in range(len(table.ids))])
    x, s, y = (torch.from_numpy(a) for a in (held_out.features, held_out.site, held_out.success))

    def bce(m):
        with torch.no_grad():
            return float(F.binary_cross_entropy_with_logits(m(x, s)[0], y))

    down, full = bce(model), bce(everyone)
    print(f"held-out BCE: {DOWN} down after round 1 {down:.4f}, every site {full:.4f}")
    assert down <= full + QUALITY_TOL, (down, full)


STALLED = "la_palma"  # the site whose job process is frozen for a round, then resumed
# The frozen round closes at the timeout; a healthy round 1 (site start-up included) took
# 17 s on 2 busy cores, later rounds 1-3 s.
STALL_SETTINGS = FederationSettings(min_sites=2, round_timeout_s=60, dead_site_grace_s=2)


# Outside `make test` (`make test-slow` runs it): it waits out a round's 60 s timeout by
# design (125 s in all), and whether a healthy round beats that timeout depends, however
# remotely, on how loaded the machine is.
@pytest.mark.timeout(900)
@pytest.mark.skipif(not os.environ.get("GALACTIC_SLOW_TESTS"),
                    reason="waits out a 60 s round timeout by design; set GALACTIC_SLOW_TESTS=1 (make test-slow)")
def test_a_frozen_site_misses_a_round_and_rejoins(tmp_path, scenario):
    job = _Job(tmp_path, scenario, STALL_SETTINGS)
    table, sim, paths, workspace, fed, done = job.table, job.sim, job.paths, job.workspace, job.fed, job.done
    pid = _wait_for(lambda: _site_job_process(workspace, STALLED), done, f"{STALLED}'s job process started")
    # Frozen as round 1 closes (the record is written before round 2's task exists), thawed
    # once round 2 has closed without it: a site that drops off the network and comes back.
    # Should it have fetched round 2's task first, it is frozen mid-fit and its answer, late,
    # is dropped: either way round 2 goes without it (answering would take it a whole fit).
    _wait_for(lambda: (tmp_path / "rounds" / "round_000" / "received.json").exists(), done, "round 1 closed")
    os.kill(pid, signal.SIGSTOP)
    try:
        _wait_for(lambda: (tmp_path / "rounds" / "round_001" / "received.json").exists(), done, "round 2 closed")
    finally:
        os.kill(pid, signal.SIGCONT)
    job.join()

    aggregated = json.loads(fed.out.with_suffix(".json").read_text())["meta"]["aggregated"]
    personal = [list(table.ids)] if FIT.personal_epochs > 0 else []  # the personalisation round, everyone back
    assert [rd["sites"] for rd in aggregated] == [list(table.ids), [s for s in table.ids if s != STALLED],
                                                  list(table.ids), *personal]
    assert aggregated[1]["missing"] == [STALLED] and aggregated[2]["missing"] == []
    # The round it missed is not averaged in late: the weights are the in-process rounds
    # with that participation.
    torch.set_num_threads(1)
    logs = sitelog.read_logs(list(paths.values()), table, scenario.scenario.snr_required)
    index = {s: i for i, s in enumerate(table.ids)}
    replay = train.train_federated(logs, FIT, participation=[[index[s] for s in rd["sites"]] for rd in aggregated])
    model, _, _ = checkpoint.load(fed.out)
    for k, v in replay.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, atol=1e-5, rtol=0)
