"""The training CLI end to end on a tiny budget (the real run is minutes; see the report)."""

from __future__ import annotations

import argparse
import json

from engines.coordination import checkpoint
from training.coordination import cli


def _parser():
    parser = argparse.ArgumentParser(prog="galactic-train")
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_register_adds_the_subcommands():
    parser = _parser()
    for cmd in ("simulate-logs", "coordination", "federated", "evaluate"):
        args = parser.parse_args([cmd, "--json", "x.json"] if cmd == "evaluate" else [cmd, "--out", "x.safetensors"])
        assert callable(args.func)


def test_training_requires_out_so_the_shipped_checkpoint_is_never_overwritten(capsys):
    import pytest

    with pytest.raises(SystemExit):
        _parser().parse_args(["federated"])
    assert "--out" in capsys.readouterr().err


def test_simulate_logs_then_train_on_the_files(tmp_path):
    tiny = ["--windows", "4", "--per-window", "6"]
    logs = tmp_path / "logs"
    args = _parser().parse_args(["simulate-logs", *tiny, "--out", str(logs)])
    assert args.func(args) == 0
    assert sorted(p.stem for p in logs.glob("*.csv"))[:2] == ["ctio", "gemini_south"]
    out = tmp_path / "fed.safetensors"
    args = _parser().parse_args(["federated", "--engine", "inprocess", "--sites", str(logs), "--epochs", "1",
                                 "--rounds", "1", "--out", str(out)])
    assert args.func(args) == 0
    meta = json.loads(checkpoint.config_path(out).read_text())["meta"]
    assert meta["recipe"] == "federated" and len(meta["logs"]) == 13


def test_federated_then_evaluate(tmp_path):
    tiny = ["--windows", "4", "--epochs", "1"]
    out = tmp_path / "fed.safetensors"
    args = _parser().parse_args(["federated", "--engine", "inprocess", *tiny, "--rounds", "1", "--out", str(out)])
    assert args.func(args) == 0
    assert out.exists() and json.loads(checkpoint.config_path(out).read_text())["meta"]["recipe"] == "federated"
    report = tmp_path / "eval.json"
    args = _parser().parse_args(["evaluate", *tiny, "--seeds", "5", "6", "--rounds", "1", "--eval-windows", "2",
                                 "--compare-floor", "0", "--json", str(report)])
    assert args.func(args) == 0
    result = json.loads(report.read_text())
    assert result["seeds"] == [5, 6] and len(result["runs"]) == 2
    summary = result["summary"]
    assert set(summary["share_of_oracle"]["federated"]) == {"mean", "sd", "min", "max"}
    assert "federated_minus_physics" in summary["gaps"]
    assert set(summary["urgent_waste_slots"]["federated@0"]) == {"mean", "sd", "min", "max"}
    result = result["runs"][0]
    methods = result["methods"]
    for name in ("oracle", "federated", "central", "physics", "greedy_altitude", "greedy_aperture", "random",
                 "local_only:rubin", "local_only:mcdonald", "federated@0", "central@0", "physics@0"):
        assert set(methods[name]) == {"value", "share_of_oracle", "value_share", "urgent_fair_missed",
                                      "critical_completed", "critical_expected", "urgent_waste_slots",
                                      "urgent_waste_share"}
        assert methods[name]["share_of_oracle"] <= 1.0
    assert result["urgent_floor"] == 0.05 and result["waste_p"] == 0.05
    assert methods["oracle"]["share_of_oracle"] == 1.0
    assert methods["oracle"]["urgent_fair_missed"] == 0.0
    assert set(result["model"]) == {"log_loss", "brier", "ece"}
    assert result["eval_seed"] != result["train_seed"]
