"""The engine's batched pair features equal the simulator's grid features (one definition)."""

from __future__ import annotations

import dataclasses

import numpy as np

from engines.coordination import features
from engines.coordination.config import ConstraintsConfig


def test_batched_pairs_match_the_grid(simulator):
    rng = np.random.default_rng(2)
    c = ConstraintsConfig()
    windows = [simulator.window(rng, 1741584600.0 + 3600.0 * k, np.arange(13) if k != 1 else np.array([0, 5, 9]),
                                n_targets=50 + 10 * k) for k in range(3)]
    excluded = [np.zeros(w.targets.ra_deg.shape[0], dtype=bool) for w in windows]
    excluded[2][:5] = True
    batch = features.pair_batch([(w.time_unix, w.targets, w.sites, e, 10.0) for w, e in zip(windows, excluded)], c)
    start = 0
    for k, (w, e) in enumerate(zip(windows, excluded)):
        g = features.geometry(w.time_unix, w.targets, w.sites)
        ok = features.feasible(g, w.targets, w.sites, c) & ~e[:, None]
        assert np.array_equal(batch.feasible[k], ok)
        ti, sj = np.nonzero(ok)
        assert np.array_equal(batch.ti[k], ti) and np.array_equal(batch.sj[k], sj)
        grid = features.feature_matrix(g, w.targets, w.sites, 10.0)[ti, sj]
        n = int(batch.counts[k])
        np.testing.assert_allclose(batch.x[start:start + n], grid, rtol=1e-5, atol=1e-6)
        assert np.array_equal(batch.site[start:start + n], w.sites.index[sj])
        start += n
    assert start == batch.x.shape[0] > 0


def test_the_sky_cache_serves_what_a_fresh_computation_gives_and_follows_the_sites(simulator):
    """`_sky_at` caches the Sun, Moon and sidereal time per (time, sites): a cached answer is
    bit for bit a fresh one, a site that moved is computed anew, and the shared rows are
    read-only."""
    rng = np.random.default_rng(3)
    c = ConstraintsConfig()
    w = simulator.window(rng, 1741584600.0, np.arange(13), n_targets=80)
    spec = [(w.time_unix, w.targets, w.sites, np.zeros(80, dtype=bool), 10.0)]
    features._sky_at.cache_clear()
    fresh = features.pair_batch(spec, c)
    cached = features.pair_batch(spec, c)
    assert features._sky_at.cache_info().hits >= 1
    assert np.array_equal(fresh.x, cached.x) and np.array_equal(fresh.site, cached.site)
    assert all(np.array_equal(a, b) for a, b in zip(fresh.feasible, cached.feasible))
    lat = w.sites.latitude_deg.copy()
    lat[0] = -lat[0]  # the first site moves to the other hemisphere
    moved = dataclasses.replace(w.sites, latitude_deg=lat)
    served = features.pair_batch([(w.time_unix, w.targets, moved, spec[0][3], 10.0)], c)
    features._sky_at.cache_clear()
    expected = features.pair_batch([(w.time_unix, w.targets, moved, spec[0][3], 10.0)], c)
    assert np.array_equal(served.x, expected.x)
    assert not np.array_equal(served.feasible[0][:, 0], fresh.feasible[0][:, 0])
    at = features._sky_at(w.time_unix, features._key(w.sites.latitude_deg), features._key(w.sites.longitude_deg))
    assert not at.sun_alt.flags.writeable
