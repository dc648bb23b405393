from __future__ import annotations

import asyncio
import collections
import dataclasses

import pytest
import torch

from engines.base import Engine
from engines.config import ConfigError, from_mapping
from engines.coordination.config import DEFAULT_TOML, CoordinationConfig
from engines.coordination.features import N_FEATURES
from engines.coordination.types import Conditions, CoordinateRequest, Observatory, Target, UnassignedReason
from engines.errors import InvalidArgument, NotFound

from .conftest import WINDOW_START, make_request


def test_default_toml_parses():
    import tomllib

    table = tomllib.loads(DEFAULT_TOML)["coordination"]
    assert table.pop("enabled") is True  # the daemon's switch, taken out before the engine's config
    cfg = from_mapping(CoordinationConfig, table)
    assert cfg == CoordinationConfig()
    with pytest.raises(ConfigError, match="batching.max_batch_size"):
        from_mapping(CoordinationConfig, {"batching": {"max_batch_size": 0}})
    assert from_mapping(CoordinationConfig, {"urgent_min_p_success": 0.2}).urgent_min_p_success == 0.2
    with pytest.raises(ConfigError, match="urgent_min_p_success"):  # a probability
        from_mapping(CoordinationConfig, {"urgent_min_p_success": 1.5})


# RA/Dec near the zenith of Cerro Pachon in the conftest window (local sidereal time 187.4 deg
# at its middle, by astropy), 80 deg from the Moon: every constraint passes at rubin and ctio.
_ZENITH = (187.4, -30.0)


def _zenith_target(tid: str, magnitude: float, value: float, **kw) -> Target:
    return Target(tid, _ZENITH[0], _ZENITH[1], magnitude, "r", 60.0, value, **kw)


def _two_sites(rubin: int, ctio: int) -> tuple[Observatory, ...]:
    return (Observatory("rubin", Conditions(0.8, 0.0, 30.0), capacity=rubin),
            Observatory("ctio", Conditions(0.8, 0.0, 30.0), capacity=ctio))


async def test_coordinate_respects_capacity_and_explains_the_rest(engine):
    assert isinstance(engine, Engine)
    # Three slots; five bright targets (P ~ 1 at both sites) ranked by value, and one target
    # for each other reason: below the horizon everywhere, past its deadline, hopelessly faint.
    bright = tuple(_zenith_target(f"v{v}", 19.0, float(v)) for v in (5, 4, 3, 2, 1))
    others = (Target("north", _ZENITH[0], 85.0, 19.0, "r", 60.0, 9.0),  # never rises above 25 deg in Chile
              _zenith_target("late", 19.0, 9.0, deadline_unix=WINDOW_START - 1.0),
              _zenith_target("faint", 35.0, 9.0))  # feasible, but a 35th-magnitude target is never detected
    req = CoordinateRequest(WINDOW_START, _two_sites(2, 1), bright + others, request_id="r")
    res = await engine.coordinate(req)
    assert res.request_id == "r"
    # The three most valuable bright targets fill the three slots, two at rubin, one at ctio.
    assert sorted(a.target_id for a in res.assignments) == ["v3", "v4", "v5"]
    assert collections.Counter(a.site_id for a in res.assignments) == {"rubin": 2, "ctio": 1}
    assert {u.target_id: u.reason for u in res.unassigned} == {
        "v2": UnassignedReason.CAPACITY, "v1": UnassignedReason.CAPACITY,
        "north": UnassignedReason.NO_FEASIBLE_SITE, "late": UnassignedReason.EXPIRED,
        "faint": UnassignedReason.ZERO_PROBABILITY}
    values = {t.id: t.value for t in req.targets}
    for a in res.assignments:
        assert 0.9 <= a.p_success <= 1.0 and a.expected_value == pytest.approx(a.p_success * values[a.target_id])
    assert res.total_expected_value == pytest.approx(sum(a.expected_value for a in res.assignments))
    again = await engine.coordinate(req)
    assert again == res  # deterministic for a given input


@pytest.mark.parametrize("floor", [0.05, 0.0])
async def test_a_hopeless_urgent_target_does_not_take_an_ordinary_targets_slot(loaded_engine_factory, floor):
    # One slot per site. "fair" is urgent with a real chance (P ~ 0.9 at rubin) but worth
    # little; "hopeless" is urgent and worth much, but at 24.5 mag in 60 s the model gives it
    # P ~ 1e-6: feasible, out of reach. "a" and "b" are ordinary, bright, P ~ 1.
    engine = loaded_engine_factory({"urgent_min_p_success": floor})
    await engine.start(asyncio.get_running_loop())
    try:
        targets = (_zenith_target("fair", 23.0, 0.1, time_critical=True),
                   _zenith_target("hopeless", 24.5, 10.0, time_critical=True),
                   _zenith_target("a", 20.0, 1.0), _zenith_target("b", 20.5, 0.9))
        res = await engine.coordinate(CoordinateRequest(WINDOW_START, _two_sites(1, 1), targets))
    finally:
        await engine.stop(1.0)
    placed = {a.target_id: a.site_id for a in res.assignments}
    p = {a.target_id: a.p_success for a in res.assignments}
    reasons = {u.target_id: u.reason for u in res.unassigned}
    if floor > 0:
        # The fair urgent target still goes first, to its best site; the other slot goes to
        # the better ordinary target, not to the hopeless one.
        assert placed == {"fair": "rubin", "a": "ctio"} and p["fair"] > 0.5
        assert reasons == {"b": UnassignedReason.CAPACITY, "hopeless": UnassignedReason.CAPACITY}
    else:
        # The rule without a floor (any positive P goes first): the hopeless target takes a
        # slot and both ordinary targets lose theirs. This is what the floor prevents.
        assert set(placed) == {"fair", "hopeless"} and p["hopeless"] < 1e-3
        assert reasons == {"a": UnassignedReason.CAPACITY, "b": UnassignedReason.CAPACITY}


async def test_closed_site_and_expired_target(engine, request_factory):
    req = request_factory(20)
    obs = tuple(dataclasses.replace(o, open=False) for o in req.observatories)
    targets = (dataclasses.replace(req.targets[0], deadline_unix=req.time_unix - 1),) + req.targets[1:]
    res = await engine.coordinate(dataclasses.replace(req, observatories=obs, targets=targets))
    assert not res.assignments
    reasons = {u.target_id: u.reason for u in res.unassigned}
    assert reasons["t0"] == UnassignedReason.EXPIRED
    assert set(list(reasons.values())[1:]) == {UnassignedReason.NO_FEASIBLE_SITE}


@pytest.mark.parametrize("mutate,field", [
    (lambda r: dataclasses.replace(r, targets=r.targets[:3] + (dataclasses.replace(r.targets[3], ra_deg=400.0),)),
     "targets[3].ra_deg"),
    (lambda r: dataclasses.replace(r, targets=(dataclasses.replace(r.targets[0], band="q"),)), "targets[0].band"),
    (lambda r: dataclasses.replace(r, targets=(r.targets[0], r.targets[0])), "targets[1].id"),
    (lambda r: dataclasses.replace(r, observatories=(Observatory("atlantis", Conditions(1, 0, 10)),)),
     "observatories[0].site_id"),
    (lambda r: dataclasses.replace(r, observatories=(Observatory("rubin", Conditions(-1, 0, 10)),)),
     "observatories[0].forecast.seeing_arcsec"),
    (lambda r: dataclasses.replace(r, observatories=()), "observatories"),
    (lambda r: dataclasses.replace(r, window_s=0.0), "window_s"),
])
async def test_invalid_requests_name_the_field(engine, request_factory, mutate, field):
    with pytest.raises(InvalidArgument) as err:
        await engine.coordinate(mutate(request_factory(5)))
    assert err.value.field == field


async def test_raw_infer_and_specs(engine):
    specs = {s.name: s for s in engine.input_spec()}
    assert specs["features"].shape[1] == N_FEATURES and specs["site"].dtype == "int64"
    out = await engine.infer({"features": torch.zeros(5, N_FEATURES), "site": torch.arange(5)})
    assert set(out) == {s.name for s in engine.output_spec()}
    assert out["p_success"].shape == (5,) and ((out["p_success"] >= 0) & (out["p_success"] <= 1)).all()
    with pytest.raises(InvalidArgument) as err:
        await engine.infer({"features": torch.zeros(5, N_FEATURES - 1), "site": torch.arange(5)})
    assert err.value.field == "inputs.features"
    with pytest.raises(InvalidArgument) as err:
        await engine.infer({"features": torch.zeros(2, N_FEATURES), "site": torch.tensor([0, 99])})
    assert err.value.field == "inputs.site"


async def test_many_clients_share_model_steps(engine, request_factory):
    reqs = [request_factory(10, seed=i, request_id=f"c{i}") for i in range(12)]
    results = await asyncio.gather(*(engine.coordinate(r) for r in reqs),
                                   engine.infer({"features": torch.zeros(3, N_FEATURES), "site": torch.zeros(3, dtype=torch.long)}))
    assert [r.request_id for r in results[:-1]] == [f"c{i}" for i in range(12)]
    stats = engine.stats()
    assert stats["batch_size_mean"] > 1.0
    info = engine.info()
    assert info.kind == "coordination" and info.state == "ready" and info.parameters > 0
    assert info.services == ("galactic.v1.Coordination", "galactic.v1.Inference")


async def test_large_request_is_pruned_then_solved_within_capacity(engine, request_factory):
    req = request_factory(3000, seed=5)
    # Not time-critical: what is checked here is pruning and capacity under value alone.
    req = dataclasses.replace(req, targets=tuple(dataclasses.replace(t, time_critical=False) for t in req.targets))
    res = await engine.coordinate(req)
    # 3,000 x 13 pairs prune to each site's best candidates (solver.py), small enough for
    # the Hungarian solver; the LP path is checked against it in test_coord_solver.py.
    assert res.solver == "linear_sum_assignment"
    assert len(res.assignments) + len(res.unassigned) == 3000
    per_site = collections.Counter(a.site_id for a in res.assignments)
    caps = {o.site_id: engine._sites.site[engine._sites.ids.index(o.site_id)].capacity for o in req.observatories}
    assert per_site and all(n <= caps[s] for s, n in per_site.items())


@pytest.mark.parametrize("where,field", [
    ("current", "observatories[2].current.humidity_pct"),
    ("deadline", "targets[4].deadline_unix"),
    ("value", "targets[7].value"),
])
async def test_vectorised_validation_still_names_the_offender(engine, request_factory, where, field):
    req = request_factory(10)
    if where == "current":
        obs = list(req.observatories)
        obs[2] = dataclasses.replace(obs[2], current=Conditions(0.8, 0.0, 120.0))
        req = dataclasses.replace(req, observatories=tuple(obs))
    else:
        ts = list(req.targets)
        i = 4 if where == "deadline" else 7
        ts[3] = dataclasses.replace(ts[3], deadline_unix=req.time_unix + 10)
        ts[i] = dataclasses.replace(ts[i], **({"deadline_unix": float("nan")} if where == "deadline" else {"value": -1.0}))
        req = dataclasses.replace(req, targets=tuple(ts))
    with pytest.raises(InvalidArgument) as err:
        await engine.coordinate(req)
    assert err.value.field == field


@pytest.mark.parametrize("checkpoint, error", [("embedded", "FailedPrecondition"), ("/nonexistent/x.safetensors",
                                                                                    "NotFound")])
def test_engine_loads_a_path_only_and_says_what_is_wrong(checkpoint, error):
    from engines.coordination.engine import CoordinationEngine
    from engines import errors

    engine = CoordinationEngine(CoordinationConfig(checkpoint=checkpoint))
    with pytest.raises(getattr(errors, error)) as err:
        engine.load(lambda _msg: None)
    assert err.value.field == "checkpoint"


def test_the_coordination_engine_never_imports_training_or_the_daemon():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "engines" / "coordination"
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in ("training", "daemon") for n in names), f"{path}: {names}"


async def test_a_target_retracted_and_upserted_again_during_a_plan_is_reported_dropped_by_capacity(engine):
    """Events apply to the state while a plan is being made: a placed target retracted, then
    upserted again before the plan (made without it) returns, is held but absent from that
    plan. The diff reports it dropped (not retracted: it is held) rather than failing, and the
    next plan places it again."""
    req = make_request(20)
    state = engine.open_plan(time_unix=req.time_unix, observatories=req.observatories, targets=req.targets,
                             window_s=req.window_s, snr_required=None)
    try:
        first = state.advance(await engine.plan(state))
        placed = first.assigned[0].target_id
        target = next(t for t in req.targets if t.id == placed)
        state.retract((placed,))
        without = await engine.plan(state)  # snapshotted without it
        state.upsert((target,))  # back before that plan is applied
        diff = state.advance(without)
        assert [(d.target_id, d.retracted, d.reason) for d in diff.dropped] == [
            (placed, False, UnassignedReason.CAPACITY)]
        again = state.advance(await engine.plan(state))
        assert placed in {a.target_id for a in again.assigned}
    finally:
        engine.close_plan()


def test_retractions_anywhere_keep_every_later_event_on_the_right_row(engine):
    """Retracting renumbers only the rows after the first one removed: ids retracted from the
    front, the middle (twice in one event) and the end leave a state whose later replace and
    retract events still find their targets, in first-upsert order."""
    req = make_request(12)
    state = engine.open_plan(time_unix=req.time_unix, observatories=req.observatories, targets=req.targets,
                             window_s=req.window_s, snr_required=None)
    try:
        state.retract(("t5", "t0", "t5"))
        state.retract(("t11",))
        left = [t.id for t in req.targets if t.id not in ("t0", "t5", "t11")]
        assert list(state.request().targets.id) == left
        moved = dataclasses.replace(next(t for t in req.targets if t.id == "t7"), magnitude=17.5)
        state.upsert((moved,))  # a replacement keeps its row
        cols = state.request().targets
        assert list(cols.id) == left and cols.magnitude[left.index("t7")] == 17.5
        state.retract(("t6", "t10"))
        assert list(state.request().targets.id) == [t for t in left if t not in ("t6", "t10")]
        with pytest.raises(NotFound):
            state.retract(("t5",))
    finally:
        engine.close_plan()
