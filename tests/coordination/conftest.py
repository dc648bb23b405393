"""Fixtures for the coordination tests: tiny scenarios, a loaded engine, offline astropy."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import numpy as np
import pytest

from daemon.shipped import COORDINATION_CHECKPOINT
from engines.coordination.config import BatchingConfig, CoordinationConfig
from engines.coordination.engine import CoordinationEngine
from engines.coordination.sites import load_sites
from engines.coordination.types import Conditions, CoordinateRequest, Observatory, Target
from training.coordination.scenario import load_scenario
from training.coordination.simulator import Simulator


# 2025-03-10 06:00 UTC: the Chilean, US and Hawaiian sites are dark.
WINDOW_START = dt.datetime(2025, 3, 10, 5, 30, tzinfo=dt.timezone.utc).timestamp()


@pytest.fixture(scope="session")
def offline_astropy():
    from astropy.utils import data, iers

    iers.conf.auto_download = False
    iers.conf.auto_max_age = None
    data.conf.allow_internet = False


@pytest.fixture(scope="session")
def sites():
    return load_sites()


@pytest.fixture(scope="session")
def scenario():
    return load_scenario()


@pytest.fixture(scope="session")
def simulator(scenario, sites):
    return Simulator(scenario, sites)


def make_request(n_targets: int = 40, seed: int = 0, site_ids=None, request_id: str = "r") -> CoordinateRequest:
    rng = np.random.default_rng(seed)
    site_ids = site_ids or ("rubin", "gemini_south", "ctio", "paranal", "keck", "kitt_peak", "mcdonald")
    obs = tuple(Observatory(s, Conditions(0.8, 0.0, 30.0)) for s in site_ids)
    targets = tuple(
        Target(id=f"t{i}", ra_deg=float(rng.uniform(60, 240)), dec_deg=float(rng.uniform(-60, 30)),
               magnitude=float(rng.uniform(19, 23)), band=str(rng.choice(["g", "r", "i"])), exposure_s=60.0,
               value=float(rng.uniform(0.5, 2.0)), time_critical=bool(i % 10 == 0))
        for i in range(n_targets))
    return CoordinateRequest(time_unix=WINDOW_START, observatories=obs, targets=targets, request_id=request_id)


@pytest.fixture
def request_factory():
    return make_request


def _engine_config(**batching) -> CoordinationConfig:
    # The daemon resolves "embedded" to the shipped file; an engine built directly gets the path.
    return CoordinationConfig(checkpoint=str(COORDINATION_CHECKPOINT), batching=BatchingConfig(**batching))


@pytest.fixture(scope="session")
def loaded_engine_factory():
    """Builds engines with the shipped embedded checkpoint; load() is cheap (25 kB).
    `config` overrides top-level CoordinationConfig fields, the keywords batching ones."""
    def build(config: dict | None = None, **batching) -> CoordinationEngine:
        engine = CoordinationEngine(dataclasses.replace(_engine_config(**batching), **(config or {})))
        engine.load(lambda _msg: None)
        return engine
    return build


@pytest.fixture
async def engine(loaded_engine_factory):
    eng = loaded_engine_factory(max_queue_delay_ms=5.0)
    await eng.start(asyncio.get_running_loop())
    yield eng
    await eng.stop(1.0)
