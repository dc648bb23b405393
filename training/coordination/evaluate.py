"""Evaluation on windows of a scenario and seed not trained on.

Every method picks an assignment for the same windows; its value is judged with the true
success probabilities (`Simulator.exact_probability`: the simulator's weather model with
the hidden effects, integrated rather than sampled): value = sum over assigned pairs of
value x P_true, the expected realized value. The oracle decides with those same true
probabilities under the same decision rule as every solver-based method (`decide`: the
engine's urgent floor), so it faces the tiny P a calibrated model outputs.

The rule (engines/coordination/solver.py) keeps some urgent targets (`solver.kept`: those
its urgent solve places) and then solves exactly for the most value among the plans that
place every kept target at a pair whose P reaches the floor. Applied to the truth it is
therefore the best plan that keeps the urgent targets the truth says the rule must keep:
a plan that keeps them all, at a true P at the floor, has at most the oracle's value. A plan
can have more value only by leaving one of them out (or at a pair whose true P is below the
floor), that is by breaking the rule's promise, which a method does when its P for such a
pair is wrongly low. `share_of_oracle` counts a window's value at most at the oracle's
(`share()`): what a plan gained by dropping an urgent target the rule keeps is not credited,
so the share cannot exceed 1 and falls only for what a method gets wrong. Beside it,
`value_share` is the plain ratio of values (uncredited gains included) and
`urgent_fair_missed` the kept urgent targets per window that the method did not place at a
true P at the floor.

Per method, also: `critical_completed`, the expected fraction of time-critical targets
observed successfully; `critical_expected`, their expected completions per window; and
`urgent_waste_slots`, the capacity per window spent on time-critical placements whose true P
is below `WASTE_P` (and its share of all capacity). The model's calibration (log loss,
Brier, ECE) is measured against one realized weather draw per window.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from engines.coordination import features, solver
from engines.coordination.config import CoordinationConfig
from engines.coordination.model import CoordNet
from training.coordination.simulator import Simulator, Window

Scorer = Callable[[Window, np.random.Generator], np.ndarray]  # -> (N, S) P(success)
Chooser = Callable[[Window, np.random.Generator], np.ndarray]  # -> (N,) site or -1

URGENT_FLOOR = CoordinationConfig.urgent_min_p_success  # the engine's default decision rule
# A time-critical placement with true P below this is counted as wasted capacity. Fixed (the
# issue's definition of a hopeless placement), whatever floor the rule under test uses.
WASTE_P = 0.05


def model_scorer(model: CoordNet, sim: Simulator) -> Scorer:
    def score(w: Window, _rng) -> np.ndarray:
        ti, sj = np.nonzero(w.feasible)
        x = features.feature_matrix(w.geometry, w.targets, w.sites, sim.sc.scenario.snr_required)[ti, sj]
        p, _ = model.predict(torch.from_numpy(x), torch.from_numpy(w.sites.index[sj]))
        out = np.zeros(w.feasible.shape)
        out[ti, sj] = p.numpy()
        return out
    return score


def decide(w: Window, p: np.ndarray, urgent_floor: float = URGENT_FLOOR) -> np.ndarray:
    """(N,) site or -1: the engine's decision rule (solver.py) on (N, S) probabilities `p`."""
    first = solver.urgent_pairs(w.targets.critical, p, urgent_floor)
    return solver.assign(w.targets.value[:, None] * p, w.sites.capacity, first)[0]


def solve_with(score: Scorer, urgent_floor: float = URGENT_FLOOR) -> Chooser:
    def choose(w: Window, rng) -> np.ndarray:
        return decide(w, score(w, rng), urgent_floor)
    return choose


def greedy(key: Callable[[Window], np.ndarray]) -> Chooser:
    """Targets by priority (time-critical, then value); each to its best feasible site by `key`."""
    def choose(w: Window, _rng) -> np.ndarray:
        cap = w.sites.capacity.copy()
        out = np.full(w.feasible.shape[0], -1)
        score = key(w)  # (N, S)
        for i in np.lexsort((-w.targets.value, ~w.targets.critical)):
            ok = w.feasible[i] & (cap > 0)
            if ok.any():
                j = int(np.argmax(np.where(ok, score[i], -np.inf)))
                out[i] = j
                cap[j] -= 1
        return out
    return choose


def random_feasible(w: Window, rng: np.random.Generator) -> np.ndarray:
    cap = w.sites.capacity.copy()
    out = np.full(w.feasible.shape[0], -1)
    for i in rng.permutation(w.feasible.shape[0]):
        ok = np.flatnonzero(w.feasible[i] & (cap > 0))
        if ok.size:
            j = int(rng.choice(ok))
            out[i] = j
            cap[j] -= 1
    return out


@dataclass
class _Tally:
    values: list[float] = field(default_factory=list)  # expected value per window
    missed: list[int] = field(default_factory=list)  # kept urgent targets not placed at a true P >= the floor
    critical: float = 0.0  # expected completions of time-critical targets
    waste: int = 0  # slots given to time-critical placements with true P < WASTE_P


@dataclass(frozen=True)
class PlanScore:
    """One plan judged with the true probabilities."""

    value: float  # sum of value x P_true over its placements
    urgent_missed: int  # of the `kept` urgent targets, those not placed where P_true >= the floor
    critical_expected: float  # sum of P_true over its time-critical placements
    waste: int  # time-critical placements with P_true < WASTE_P


def truly_kept(value: np.ndarray, critical: np.ndarray, capacity: np.ndarray, p_true: np.ndarray,
               urgent_floor: float = URGENT_FLOOR) -> np.ndarray:
    """(N,) bool: the urgent targets the rule keeps when it knows the truth."""
    return solver.kept(value[:, None] * p_true, capacity, solver.urgent_pairs(critical, p_true, urgent_floor))


def score_plan(value: np.ndarray, critical: np.ndarray, p_true: np.ndarray, choice: np.ndarray,
               kept: np.ndarray, urgent_floor: float = URGENT_FLOOR) -> PlanScore:
    """`choice` (N,) site or -1, judged with `p_true` (N, S); `value`, `critical`, `kept` (N,)
    (`kept` from `truly_kept`)."""
    idx = np.flatnonzero(choice >= 0)
    gain = p_true[idx, choice[idx]]
    crit = np.asarray(critical, dtype=bool)[idx]
    fair = solver.urgent_pairs(critical, p_true, urgent_floor)[idx, choice[idx]]
    return PlanScore(float((value[idx] * gain).sum()), int(kept.sum() - (kept[idx] & fair).sum()),
                     float(gain[crit].sum()), int((crit & (gain < WASTE_P)).sum()))


def share(values: list[float] | np.ndarray, oracle: list[float] | np.ndarray) -> float:
    """Share of the oracle over windows, each window's value credited at most at the oracle's
    (module docstring: only a plan that broke the rule can have more). At most 1."""
    o = np.asarray(oracle, dtype=np.float64)
    total = float(o.sum())
    return float(np.minimum(np.asarray(values, dtype=np.float64), o).sum() / total) if total > 0 else 0.0


def calibration(p: np.ndarray, y: np.ndarray, bins: int = 10) -> dict[str, float]:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    ll = float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
    brier = float(((p - y) ** 2).mean())
    edges = np.minimum((p * bins).astype(int), bins - 1)
    ece = sum(abs(p[edges == b].mean() - y[edges == b].mean()) * (edges == b).mean()
              for b in range(bins) if (edges == b).any())
    return {"log_loss": ll, "brier": brier, "ece": float(ece)}


def evaluate(sim: Simulator, methods: dict[str, Chooser], calib_model: CoordNet, windows: int, seed: int,
             urgent_floor: float = URGENT_FLOOR) -> dict:
    """Per-method value, share of oracle, critical completion and urgent waste over `windows`
    windows; the oracle decides with the true probabilities under floor `urgent_floor`."""
    rng = np.random.default_rng([seed, 7919])
    all_sites = np.arange(len(sim.table.site))
    tallies = {name: _Tally() for name in ["oracle", *methods]}
    n_critical = 0
    capacity = 0
    ps, ys = [], []
    timings: dict[str, float] = {}
    calib_score = model_scorer(calib_model, sim)
    for _ in range(windows):
        w = sim.window(rng, sim.eval_time(rng), all_sites)
        p_true = sim.exact_probability(w, truth=True)
        ok, _, _ = sim.realize(rng, w)
        n_critical += int(w.targets.critical.sum())
        capacity += int(w.sites.capacity.sum())
        choices = {"oracle": decide(w, p_true, urgent_floor)}
        for name, choose in methods.items():
            t0 = time.perf_counter()
            choices[name] = choose(w, np.random.default_rng([seed, 31, len(ps)]))
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
        kept = truly_kept(w.targets.value, w.targets.critical, w.sites.capacity, p_true, urgent_floor)
        for name, c in choices.items():
            sc = score_plan(w.targets.value, w.targets.critical, p_true, c, kept, urgent_floor)
            t = tallies[name]
            t.values.append(sc.value)
            t.missed.append(sc.urgent_missed)
            t.critical += sc.critical_expected
            t.waste += sc.waste
        fi, fj = np.nonzero(w.feasible)
        ps.append(calib_score(w, rng)[fi, fj])
        ys.append(ok[fi, fj].astype(np.float64))
    oracle = tallies["oracle"]
    oracle_value = sum(oracle.values)
    out = {name: {"value": round(sum(t.values) / windows, 4),
                  "share_of_oracle": round(share(t.values, oracle.values), 4),
                  "value_share": round(sum(t.values) / oracle_value, 4) if oracle_value > 0 else 0.0,
                  "urgent_fair_missed": round(sum(t.missed) / windows, 3),
                  "critical_completed": round(t.critical / max(n_critical, 1), 4),
                  "critical_expected": round(t.critical / windows, 4),
                  "urgent_waste_slots": round(t.waste / windows, 3),
                  "urgent_waste_share": round(t.waste / max(capacity, 1), 4)}
           for name, t in tallies.items()}
    return {"methods": out, "model": calibration(np.concatenate(ps), np.concatenate(ys)),
            "windows": windows, "critical_targets": n_critical, "capacity_per_window": capacity / windows,
            "urgent_floor": urgent_floor, "waste_p": WASTE_P,
            "solve_seconds": {k: round(v, 3) for k, v in timings.items()}}


def summarise(runs: list[dict[str, dict]]) -> dict:
    """Share of oracle, urgent waste and critical completions per method over runs (training
    seeds): mean, sample sd, min, max; and the issue's comparisons per run (federated minus best greedy, physics, central, best local-only)."""
    def stats(xs: list[float]) -> dict:
        a = np.asarray(xs, dtype=np.float64)
        return {"mean": round(float(a.mean()), 4), "sd": round(float(a.std(ddof=1)) if a.size > 1 else 0.0, 4),
                "min": round(float(a.min()), 4), "max": round(float(a.max()), 4)}
    names = [n for n in runs[0] if all(n in r for r in runs)]
    share = {n: stats([r[n]["share_of_oracle"] for r in runs]) for n in names}
    scored = [n for n in names if all("urgent_waste_slots" in r[n] for r in runs)]  # astroplan: share only
    waste = {n: stats([r[n]["urgent_waste_slots"] for r in runs]) for n in scored}
    critical = {n: stats([r[n]["critical_expected"] for r in runs]) for n in scored}
    fed = [r["federated"]["share_of_oracle"] for r in runs]
    best_local = [max(v["share_of_oracle"] for k, v in r.items() if k.startswith("local_only:")) for r in runs]
    best_greedy = [max(r["greedy_altitude"]["share_of_oracle"], r["greedy_aperture"]["share_of_oracle"]) for r in runs]
    gaps = {
        "federated_minus_best_greedy": stats([f - g for f, g in zip(fed, best_greedy)]),
        "federated_minus_physics": stats([f - r["physics"]["share_of_oracle"] for f, r in zip(fed, runs)]),
        "federated_minus_central": stats([f - r["central"]["share_of_oracle"] for f, r in zip(fed, runs)]),
        "federated_minus_best_local_only": stats([f - b for f, b in zip(fed, best_local)]),
    }
    return {"share_of_oracle": share, "urgent_waste_slots": waste, "critical_expected": critical, "gaps": gaps}
