"""The NVFLARE federation for real: a server and three site processes on loopback.

One FLARE run (module fixture, about a minute on 2 cores) feeds every test: each round's
global model is the sample-weighted average of the updates the server received, the loss
falls, only tensors of the model's parameter shapes plus counts leave a site, and the
in-process loop gives the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file

from engines.coordination import checkpoint
from engines.coordination.model import SITE_ROWS, CoordNet, CoordNetConfig
from engines.coordination.sites import load_sites
from training.coordination import federated, fl_site, sitelog, train
from training.coordination.simulator import Simulator

pytestmark = pytest.mark.slow

SITES_TOML = """
[[site]]
id = "rubin"
name = "Rubin"
latitude_deg = -30.244628
longitude_deg = -70.74941
elevation_m = 2650
aperture_m = 6.423
bands = ["u", "g", "r", "i", "z", "y"]
capacity = 12

[[site]]
id = "keck"
name = "Keck"
latitude_deg = 19.82833
longitude_deg = -155.47833
elevation_m = 4160
aperture_m = 10.0
bands = ["g", "r", "i", "z"]
capacity = 6

[[site]]
id = "la_palma"
name = "La Palma"
latitude_deg = 28.75833
longitude_deg = -17.88
elevation_m = 2327
aperture_m = 10.4
bands = ["g", "r", "i", "z"]
capacity = 6
"""
ROUNDS = 3
# Plain FedAvg, so each round's global model is exactly the average (FedAvgM adds momentum);
# the per-site rows' learning-rate scale and then the personalisation round as the recipe
# has them (the latter recorded as round ROUNDS).
FIT = train.FitConfig(rounds=ROUNDS, local_epochs=2, batch_size=64, server_momentum=0.0, seed=5, personal_epochs=1,
                      site_lr_scale=3.0)
TOL = 1e-6  # float32 sums of three weighted states


@pytest.fixture(scope="module")
def flare_run(tmp_path_factory, scenario):
    d = tmp_path_factory.mktemp("flare")
    (d / "sites.toml").write_text(SITES_TOML)
    table = load_sites(d / "sites.toml")
    sim = Simulator(scenario, table)
    # Different sizes, so that a plain mean and the sample-weighted one differ.
    paths = {s: sitelog.write(d / "logs" / f"{s}.csv", sim.site_log(i, 6 + 4 * i, 7, 10))
             for i, s in enumerate(table.ids)}
    fed = federated.Federation(logs=paths, site_table=d / "sites.toml", snr_required=scenario.scenario.snr_required,
                               out=d / "fed.safetensors", record_dir=d / "rounds", timeout_s=600)
    federated.run(fed, table, FIT, {"recipe": "test"})
    logs = sitelog.read_logs(list(paths.values()), table, scenario.scenario.snr_required)
    return d, table, logs


def _state(path: Path) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in load_file(str(path)).items()}


def _rounds(d: Path) -> list[Path]:
    return sorted((d / "rounds").glob("round_*"))


def test_each_round_is_the_sample_weighted_average_of_what_the_sites_sent(flare_run):
    d, table, logs = flare_run
    rounds = _rounds(d)[:ROUNDS]
    assert len(_rounds(d)) == ROUNDS + 1
    counts = {s: float(len(x)) for s, x in zip(table.ids, logs)}
    assert len(set(counts.values())) == 3
    total = sum(counts.values())
    previous = None
    for rd in rounds:
        received = json.loads((rd / "received.json").read_text())
        assert sorted(r["site"] for r in received) == sorted(table.ids)
        updates = {s: _state(rd / f"update_{s}.safetensors") for s in table.ids}
        new, sent = _state(rd / "global_out.safetensors"), _state(rd / "global_in.safetensors")
        if previous is not None:
            assert all(torch.equal(sent[k], previous[k]) for k in sent)  # the next round starts from it
        for k in new:
            if k in SITE_ROWS:
                # Row i of a per-site parameter: the weighted average over the sites holding
                # data for it, which is site i alone.
                for i, s in enumerate(table.ids):
                    torch.testing.assert_close(new[k][i], updates[s][k][i], atol=TOL, rtol=0)
            else:
                expected = sum(updates[s][k] * (counts[s] / total) for s in table.ids)
                torch.testing.assert_close(new[k], expected, atol=TOL, rtol=0)
                assert not torch.allclose(new[k], sum(updates[s][k] for s in table.ids) / 3, atol=1e-7) \
                    or k.endswith("bias")  # not the unweighted mean
        previous = new


def test_the_personalisation_round_keeps_the_shared_weights_and_takes_each_sites_own_rows(flare_run):
    d, table, _ = flare_run
    rd = _rounds(d)[ROUNDS]
    sent, new = _state(rd / "global_in.safetensors"), _state(rd / "global_out.safetensors")
    assert all(torch.equal(sent[k], _state(_rounds(d)[ROUNDS - 1] / "global_out.safetensors")[k]) for k in sent)
    for k in new:
        if k in SITE_ROWS:
            for i, s in enumerate(table.ids):
                update = _state(rd / f"update_{s}.safetensors")
                assert torch.equal(new[k][i], update[k][i]) and not torch.equal(new[k][i], sent[k][i])
        else:
            assert torch.equal(new[k], sent[k]), k  # frozen at the sites, not averaged
    aggregated = json.loads(checkpoint.config_path(d / "fed.safetensors").read_text())["meta"]["aggregated"]
    assert [rd.get("personal", False) for rd in aggregated] == [False] * ROUNDS + [True]


def test_the_loss_falls(flare_run):
    d, table, logs = flare_run
    pooled = sitelog.Logs.concat(logs)
    x, s, y = (torch.from_numpy(a) for a in (pooled.features, pooled.site, pooled.success))
    cfg = CoordNetConfig(n_sites=len(table.ids))

    def bce(state):
        model = CoordNet(cfg)
        model.load_state_dict(state)
        with torch.no_grad():
            return float(F.binary_cross_entropy_with_logits(model(x, s)[0], y))

    losses = [bce(_state(rd / "global_in.safetensors")) for rd in _rounds(d)]
    losses.append(bce(_state(_rounds(d)[-1] / "global_out.safetensors")))
    assert losses[-1] < losses[0] - 0.05, losses
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_only_parameter_tensors_and_counts_leave_a_site(flare_run):
    d, table, logs = flare_run
    shapes = {k: list(v.shape) for k, v in CoordNet(CoordNetConfig(n_sites=3)).state_dict().items()}
    counts = {s: len(x) for s, x in zip(table.ids, logs)}
    for rd in _rounds(d):
        for r in json.loads((rd / "received.json").read_text()):
            assert r["params"] == {k: ["float32", shape] for k, shape in shapes.items()}
            assert r["params_type"] == "ParamsType.FULL"
            assert r["metrics"] is None and r["optimizer_params"] is False
            assert r["meta"] == {key: counts[r["site"]] for key in fl_site.COUNT_KEYS}
            update = load_file(str(rd / f"update_{r['site']}.safetensors"))
            assert {k: list(v.shape) for k, v in update.items()} == shapes


def test_the_checkpoint_loads_and_matches_the_in_process_rounds(flare_run):
    d, table, logs = flare_run
    model, site_ids, _ = checkpoint.load(d / "fed.safetensors")
    assert site_ids == table.ids
    torch.set_num_threads(1)  # as the site processes run
    reference = train.train_federated(logs, FIT)
    for k, v in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, atol=1e-5, rtol=0)
