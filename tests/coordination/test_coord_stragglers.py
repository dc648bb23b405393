"""Federation with stragglers, without FLARE: the settings, their refusals, and the round
arithmetic when a site is absent (the FLARE run itself: test_coord_federated_site_down.py)."""

from __future__ import annotations

import argparse
from dataclasses import replace

import pytest
import torch

from engines.config import ConfigError
from engines.coordination.model import SITE_ROWS
from training import config as training_config
from training.config import FederationSettings
from training.coordination import aggregate, cli, federated, train


def test_federation_settings_from_file_env_and_flags(tmp_path):
    cfg = training_config.load(None, env={})
    assert cfg.federation == FederationSettings(min_sites=0, round_timeout_s=600.0, dead_site_grace_s=60.0)
    path = tmp_path / "galactic.toml"
    path.write_text("[training.federation]\nmin_sites = 9\nround_timeout_s = 120\n")
    cfg = training_config.load(path, env={"GALACTIC_TRAINING__FEDERATION__ROUND_TIMEOUT_S": "90"},
                               overrides={"federation.min_sites": 10, "federation.round_timeout_s": None})
    assert (cfg.federation.min_sites, cfg.federation.round_timeout_s) == (10, 90.0)


@pytest.mark.parametrize("overrides, key", [
    ({"federation.min_sites": -1}, "training.federation.min_sites"),
    ({"federation.round_timeout_s": 0.5}, "training.federation.round_timeout_s"),
    ({"federation.dead_site_grace_s": 0}, "training.federation.dead_site_grace_s"),
    ({"federation.min_site": 2}, "training.federation.min_site"),
])
def test_federation_settings_refusals_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as exc:
        training_config.load(None, env={}, overrides=overrides)
    assert exc.value.key == key


def test_min_sites_above_the_site_count_is_refused_before_flare_starts(tmp_path, capsys):
    logs = {"a": tmp_path / "a.csv", "b": tmp_path / "b.csv"}
    fed = federated.Federation(logs=logs, site_table=tmp_path / "sites.toml", snr_required=10, out=tmp_path / "x")
    assert fed.min_sites() == 2  # 0: every site
    assert federated.Federation(**{**fed.__dict__, "settings": FederationSettings(min_sites=1)}).min_sites() == 1
    too_many = federated.Federation(**{**fed.__dict__, "settings": FederationSettings(min_sites=3)})
    with pytest.raises(ConfigError) as exc:
        too_many.min_sites()
    assert exc.value.key == "training.federation.min_sites"

    parser = argparse.ArgumentParser(prog="galactic-train")
    cli.register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "fed.safetensors"
    args = parser.parse_args(["simulate-logs", "--windows", "2", "--per-window", "4", "--out", str(tmp_path / "logs")])
    assert args.func(args) == 0
    args = parser.parse_args(["federated", "--sites", str(tmp_path / "logs"), "--min-sites", "14", "--out", str(out)])
    assert args.func(args) == 2  # 13 sites in the table: refused, nothing started, nothing written
    assert "training.federation.min_sites" in capsys.readouterr().err and not out.exists()


def test_an_absent_sites_rows_keep_their_global_value():
    current = {name: torch.zeros(3, 2) for name in SITE_ROWS} | {"w": torch.zeros(2)}
    # Sites 0 and 2 answered; both hold (stale, decayed) copies of site 1's row.
    states = [{k: torch.full_like(v, float(i + 1)) for k, v in current.items()} for i in (0, 2)]
    merged = aggregate.weighted_average(states, [1.0, 3.0], [0, 2])
    kept = aggregate.keep_absent_rows(merged, current, [0, 2])
    for name in SITE_ROWS:
        assert kept[name][0].tolist() == [1.0, 1.0] and kept[name][2].tolist() == [3.0, 3.0]
        assert kept[name][1].tolist() == [0.0, 0.0]  # not the others' copies (2.5)
        assert merged[name][1].tolist() == [2.5, 2.5]  # merged itself is untouched
    assert torch.equal(kept["w"], merged["w"])
    assert aggregate.keep_absent_rows(merged, current, [0, 1, 2])["w"] is merged["w"]


@pytest.mark.parametrize("hidden_bias", [False, True])
def test_in_process_rounds_replay_a_participation_record(simulator, hidden_bias):
    logs = simulator.all_logs(windows=2, seed=3, per_window=10)[:3]
    cfg = train.FitConfig(rounds=2, local_epochs=1, batch_size=128, seed=2, site_hidden_bias=hidden_bias)
    everyone = train.train_federated(logs, cfg)
    same = train.train_federated(logs, cfg, participation=[[0, 1, 2], [2, 1, 0]])
    for k, v in everyone.state_dict().items():
        assert torch.equal(same.state_dict()[k], v)  # every site every round is the default
    initial = train.new_model(3, cfg).state_dict()
    without_1 = train.train_federated(logs, cfg, participation=[[0, 2], [0, 2]]).state_dict()
    assert ("site_hidden_b.weight" in without_1) == hidden_bias
    for name in (n for n in SITE_ROWS if n in without_1):
        assert torch.equal(without_1[name][1], initial[name][1])  # site 1 never trained its row
        assert not torch.equal(without_1[name][0], initial[name][0])


def test_the_personalisation_round_takes_each_sites_own_rows_and_nothing_else():
    current = {name: torch.zeros(3, 2) for name in SITE_ROWS} | {"w": torch.zeros(2)}
    # What sites 0 and 2 sent back: their own rows trained, and (were it to happen) shared
    # weights and others' rows moved; only their own rows may be kept.
    states = [{k: torch.full_like(v, float(i + 1)) for k, v in current.items()} for i in (0, 2)]
    out = aggregate.personalised(current, states, [0, 2])
    for name in SITE_ROWS:
        assert out[name][0].tolist() == [1.0, 1.0] and out[name][2].tolist() == [3.0, 3.0]
        assert out[name][1].tolist() == [0.0, 0.0]  # site 1 sent nothing
    assert out["w"].tolist() == [0.0, 0.0] and current["w"] is not out["w"]


@pytest.mark.parametrize("hidden_bias", [False, True])
def test_in_process_personalisation_round_trains_only_the_per_site_rows(simulator, hidden_bias):
    logs = simulator.all_logs(windows=2, seed=3, per_window=10)[:3]
    cfg = train.FitConfig(rounds=2, local_epochs=1, batch_size=128, seed=2, site_hidden_bias=hidden_bias)
    plain = train.train_federated(logs, cfg).state_dict()
    personal = train.train_federated(logs, replace(cfg, personal_epochs=2)).state_dict()
    for k, v in plain.items():
        if k in SITE_ROWS:
            assert not torch.equal(personal[k], v), k  # every site moved its rows
        else:
            assert torch.equal(personal[k], v), k  # the shared weights are the rounds' own
    # Row i is site i's personal fit of the rounds' result, and a site absent from the
    # personalisation round (participation[rounds]) keeps its row.
    expected = train.personal_fit(plain, train.new_model(3, cfg).config, logs[1], train.CoordNetConfig().lr,
                                  replace(cfg, personal_epochs=2), train.local_seed(cfg, cfg.rounds, 1))
    without_2 = train.train_federated(logs, replace(cfg, personal_epochs=2),
                                      participation=[[0, 1, 2], [0, 1, 2], [0, 1]]).state_dict()
    assert ("site_hidden_b.weight" in personal) == hidden_bias
    for name in (n for n in SITE_ROWS if n in personal):
        assert torch.equal(personal[name][1], expected[name][1])
        assert torch.equal(without_2[name][2], plain[name][2])
        assert torch.equal(without_2[name][0], personal[name][0])
