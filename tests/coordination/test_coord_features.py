"""The engine's batched pair features equal the simulator's grid features (one definition)."""

from __future__ import annotations

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
