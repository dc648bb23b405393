"""benchmarks/frontends.py's summary: the tokens/s target compares front ends within a round.

Bursts of one run move by a quarter between rounds on a 2-core host, so a ratio of medians
taken from different rounds can miss (or meet) the target on drift alone."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import frontends  # noqa: E402


def _row(system: str, rnd: int, tok_s: float, disturbed: bool = False) -> dict:
    return {"system": system, "concurrency": 32, "round": rnd, "tokens_per_s": tok_s, "ttft_p50_ms": 300.0,
            "ttft_p99_ms": 310.0, "itl_p50_ms": 50.0, "itl_p99_ms": 60.0, "disturbed": disturbed,
            "loadavg": "1.0 1.0 1.0", "other_cores": 0.0, "front_cpu_ms_per_token": 0.15}


def test_the_tokens_per_s_target_pairs_each_front_end_with_native_in_its_own_round():
    # A fast round and a slow one: each front end is at 0.96 of native within its round,
    # but the median bursts (over both rounds) would pair a slow kserve with a fast native.
    rows = [_row("native", 0, 600.0), _row("kserve", 0, 576.0),
            _row("native", 1, 400.0), _row("kserve", 1, 384.0),
            _row("native", 2, 500.0), _row("kserve", 2, 480.0)]
    ratios = frontends._round_ratios(rows, 32, ["kserve"])
    assert ratios == {"kserve": [0.96, 0.96, 0.96]}
    _, summary = frontends.summarize(rows)
    assert summary["kserve"]["tokens_per_s_ratio"] == 0.96
    assert summary["kserve"]["tokens_per_s_met"] is True


def test_a_disturbed_round_is_left_out_of_the_ratio_unless_every_round_is():
    rows = [_row("native", 0, 500.0), _row("openai", 0, 250.0, disturbed=True),
            _row("native", 1, 500.0), _row("openai", 1, 490.0)]
    assert frontends._round_ratios(rows, 32, ["openai"]) == {"openai": [0.98]}
    everywhere = [{**r, "disturbed": True} for r in rows]
    assert frontends._round_ratios(everywhere, 32, ["openai"]) == {"openai": [0.5, 0.98]}
    _, summary = frontends.summarize(everywhere)
    assert summary["openai"]["tokens_per_s_met"] is False  # median of 0.5 and 0.98: 0.74


def test_the_summary_gives_each_front_ends_cpu_per_token_beside_native():
    rows = [{**_row(system, rnd, 500.0), "front_cpu_ms_per_token": cpu}
            for rnd in range(3) for system, cpu in (("native", 0.15), ("kserve", 0.17 + 0.01 * rnd))]
    table, summary = frontends.summarize(rows)
    assert summary["front_cpu_ms_per_token"] == {"native": 0.15, "kserve": 0.18}
    assert "kserve +1.5 % of a core over native at native's 500 tok/s" in table  # 0.03 ms x 500 /s
