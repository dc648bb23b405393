"""Central and federated fits on tiny logs, export, and the engine loading the export."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace

import lightning as L
import pytest
import torch

from daemon.shipped import COORDINATION_CHECKPOINT
from engines.coordination import checkpoint
from engines.coordination.config import CoordinationConfig
from engines.coordination.engine import CoordinationEngine
from engines.coordination.features import N_FEATURES
from engines.coordination.model import SITE_ROWS, CoordNet, CoordNetConfig
from training.coordination import train


@pytest.fixture(scope="module")
def tiny_logs(simulator):
    return simulator.all_logs(windows=4, seed=11, per_window=20)


def test_fedavg_is_sample_weighted():
    a = {"w": torch.tensor([0.0, 0.0])}
    b = {"w": torch.tensor([4.0, 8.0])}
    assert torch.equal(checkpoint.average([a, b], [3.0, 1.0])["w"], torch.tensor([1.0, 2.0]))


def test_model_is_a_lightning_module():
    assert issubclass(CoordNet, L.LightningModule)
    for name in ("training_step", "validation_step", "configure_optimizers"):
        assert name in CoordNet.__dict__


@pytest.mark.parametrize("hidden_bias", [False, True])
async def test_federated_export_loads_in_the_engine(tiny_logs, sites, tmp_path, request_factory, hidden_bias):
    cfg = train.FitConfig(rounds=2, local_epochs=1, epochs=1, batch_size=128, prox_mu=0.01,
                          site_hidden_bias=hidden_bias)
    fed = train.train_federated(tiny_logs, cfg)
    assert ("site_hidden_b.weight" in fed.state_dict()) == hidden_bias
    out = train.export(fed, sites.ids, tmp_path / "fed.safetensors", {"recipe": "test"})
    assert out.exists() and checkpoint.config_path(out).exists()
    loaded, site_ids, _ = checkpoint.load(out)
    x, s = torch.randn(4, N_FEATURES), torch.arange(4)
    assert torch.allclose(loaded.predict(x, s)[0], fed.predict(x, s)[0])
    assert site_ids == sites.ids
    engine = CoordinationEngine(CoordinationConfig(checkpoint=str(out)))
    engine.load(lambda _m: None)
    await engine.start(asyncio.get_running_loop())
    try:
        res = await engine.coordinate(request_factory(10))
        assert len(res.assignments) + len(res.unassigned) == 10
    finally:
        await engine.stop(1.0)


def test_per_site_rows_take_the_fits_learning_rate_scale_in_federated_fits_only(tiny_logs):
    cfg = train.FitConfig(rounds=1, local_epochs=1, batch_size=128, site_lr_scale=3.0)
    fed = train.train_federated(tiny_logs[:3], cfg)
    assert fed.config.site_lr_scale == 3.0  # what the sites' local fits (and FLARE's) are sent
    local = CoordNet(replace(fed.config, cosine=False))
    groups = local.configure_optimizers().param_groups
    rows = {id(p) for n, p in local.named_parameters() if n in SITE_ROWS}
    assert [g["lr"] for g in groups] == [local.config.lr, 3.0 * local.config.lr]
    assert {id(p) for p in groups[1]["params"]} == rows and not rows & {id(p) for p in groups[0]["params"]}
    assert train.train_central(tiny_logs[:3], replace(cfg, epochs=1)).config.site_lr_scale == 1.0


def test_per_site_hidden_biases_start_as_the_model_without_them_and_central_gets_them_too(tiny_logs):
    plain = CoordNet(CoordNetConfig(n_sites=4))
    biased = CoordNet(CoordNetConfig(n_sites=4, site_hidden_bias=True))
    extra = set(biased.state_dict()) - set(plain.state_dict())
    assert extra == {"site_hidden_b.weight"} and extra <= set(SITE_ROWS)
    biased.load_state_dict(plain.state_dict() | {"site_hidden_b.weight": biased.site_hidden_b.weight.detach()})
    x, s = torch.randn(6, N_FEATURES), torch.tensor([0, 1, 2, 3, 1, 0])
    assert torch.equal(biased(x, s)[0], plain(x, s)[0])  # zero-initialised: the same function
    with torch.no_grad():
        biased.site_hidden_b.weight[2] += 1.0
    moved = biased(x, s)[0] != plain(x, s)[0]
    assert moved[2] and not moved[[0, 1, 3, 4, 5]].any()  # site 2's row moves site 2's pairs only
    cfg = train.FitConfig(epochs=1, batch_size=128, site_hidden_bias=True)
    assert train.train_central(tiny_logs[:3], cfg).config.site_hidden_bias
    assert train.federated_config(3, cfg).site_hidden_bias


@pytest.mark.parametrize("hidden_bias", [False, True])
def test_predict_is_forward_with_every_sites_head_in_one_product(hidden_bias):
    # Random per-site rows (they start at zero, which would hide a wrong site's column) and
    # every site in the batch, in no order.
    torch.manual_seed(3)
    model = CoordNet(CoordNetConfig(n_sites=5, site_hidden_bias=hidden_bias)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in SITE_ROWS:
                p.normal_(0.0, 0.5)
    x, s = torch.randn(257, N_FEATURES), torch.randint(0, 5, (257,))
    with torch.no_grad():
        logit, log_snr = model(x, s)
    p, snr = model.predict(x, s)
    torch.testing.assert_close(p, torch.sigmoid(logit), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(snr, torch.pow(10.0, log_snr.clamp(-3.0, 6.0)), rtol=1e-5, atol=1e-6)
    # Each pair reads its own site's correction: another site's row moves no other pair.
    with torch.no_grad():
        model.site_head_w.weight[s[0]] += 1.0
    moved = (model.predict(x, s)[0] - p).abs() > 1e-6
    assert moved[s == s[0]].any() and not moved[s != s[0]].any()


def test_central_fit_learns(tiny_logs):
    model = train.train_central(tiny_logs, train.FitConfig(epochs=3, batch_size=128))
    pooled = train.Logs.concat(tiny_logs)
    p, _ = model.predict(torch.from_numpy(pooled.features), torch.from_numpy(pooled.site))
    y = torch.from_numpy(pooled.success)
    # Better than a constant at the base rate on its own data (a weak but honest smoke check).
    base = y.mean()
    assert ((p - y) ** 2).mean() < ((base - y) ** 2).mean()


def test_shipped_checkpoint_is_the_default_recipe(sites):
    import json

    from training.coordination.default import Recipe

    doc = json.loads(checkpoint.config_path(COORDINATION_CHECKPOINT).read_text())
    meta = doc["meta"]
    assert meta["recipe"] == "federated" and meta["engine"] == "nvflare" and meta["seed"] == Recipe.seed
    assert meta["windows_per_site"] == Recipe.windows_per_site and meta["per_window"] == Recipe.per_window
    assert meta["rounds"] == Recipe.fit.rounds
    assert meta["personal_epochs"] == Recipe.fit.personal_epochs
    assert doc["model"]["site_lr_scale"] == Recipe.fit.site_lr_scale
    assert doc["model"].get("site_hidden_bias", False) == Recipe.fit.site_hidden_bias
    assert [rd.get("personal", False) for rd in meta["aggregated"]] == \
        [False] * Recipe.fit.rounds + [True] * (Recipe.fit.personal_epochs > 0)
    assert tuple(doc["site_ids"]) == sites.ids
    assert doc["model"]["n_features"] == N_FEATURES


# The full recipe in one process: 244 s (60 rounds) on this 2-core machine and over 20 min under
# load 10; `make test-reproduce` (run by .ci/run after `make test`) sets GALACTIC_REPRODUCE_RECIPE=1.
@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(not os.environ.get("GALACTIC_REPRODUCE_RECIPE"),
                    reason="reproduces the whole recipe; set GALACTIC_REPRODUCE_RECIPE=1")
def test_the_recipe_reproduces_the_shipped_weights():
    """The shipped file came out of the NVFLARE federation (`galactic-train federated --out
    training/data/coordination.safetensors`); the same recipe's rounds in one process give
    the same weights (same site-log files, local fits, table-order server sums)."""
    from training.coordination import default

    torch.set_num_threads(1)  # as the site processes run
    _, logs = default.site_logs(default.Recipe())
    model = train.train_federated(logs, default.Recipe.fit)
    shipped, _, _ = checkpoint.load(COORDINATION_CHECKPOINT)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(shipped.state_dict()[k], v, atol=1e-4, rtol=0)
