"""astroplan's PriorityScheduler as a single-site baseline, run site by site.

astroplan schedules one site for one night; it is no network coordinator. Here each dark
site in turn schedules its decision window from the targets not yet taken by an earlier
site (largest aperture first), with the same hard constraints, priorities from value, and
at most `max_targets` candidates per site to keep it time-bounded (~1 s per site). The
resulting assignment is scored like every other method: value x true P(success).
"""

from __future__ import annotations

import warnings

import numpy as np

from training.coordination.simulator import Simulator


def _offline_astropy() -> None:
    # The bundled IERS table is stale and there is no network: never try to download.
    from astropy.utils import data, iers

    iers.conf.auto_download = False
    iers.conf.auto_max_age = None
    data.conf.allow_internet = False


def evaluate_astroplan(sim: Simulator, windows: int, seed: int, max_targets: int = 20) -> dict:
    _offline_astropy()
    with warnings.catch_warnings():
        # astroplan's Moon separations trip astropy's NonRotationTransformationWarning per call.
        warnings.simplefilter("ignore")
        return _evaluate(sim, windows, seed, max_targets)


def _evaluate(sim: Simulator, windows: int, seed: int, max_targets: int) -> dict:
    import astropy.units as u
    from astroplan import (AltitudeConstraint, AtNightConstraint, FixedTarget, MoonSeparationConstraint,
                           ObservingBlock, Observer, PriorityScheduler, Schedule, Transitioner)
    from astropy.coordinates import EarthLocation, SkyCoord
    from astropy.time import Time

    from training.coordination.evaluate import decide

    rng = np.random.default_rng([seed, 4242])
    c = sim.constraints
    constraints = [AltitudeConstraint(min=c.min_altitude_deg * u.deg),
                   AtNightConstraint(max_solar_altitude=c.max_sun_altitude_deg * u.deg),
                   MoonSeparationConstraint(min=c.min_moon_separation_deg * u.deg)]
    all_sites = np.arange(len(sim.table.site))
    value = oracle = critical = 0.0
    n_critical = 0
    failures = 0
    for _ in range(windows):
        w = sim.window(rng, sim.eval_time(rng), all_sites)
        p_true = sim.exact_probability(w)  # the oracle decides with it and everything is scored with it
        oracle_choice = decide(w, p_true)
        idx = np.flatnonzero(oracle_choice >= 0)
        oracle += float((w.targets.value[idx] * p_true[idx, oracle_choice[idx]]).sum())
        n_critical += int(w.targets.critical.sum())
        taken = np.zeros(w.feasible.shape[0], dtype=bool)
        start, end = Time(w.time_unix - 1800.0, format="unix"), Time(w.time_unix + 1800.0, format="unix")
        for j in np.argsort(-w.sites.aperture_m, kind="stable"):
            cand = np.flatnonzero(w.feasible[:, j] & ~taken)
            if cand.size == 0 or w.sites.capacity[j] == 0:
                continue
            cand = cand[np.argsort(-w.targets.value[cand], kind="stable")][:max_targets]
            site = sim.table.site[int(w.sites.index[j])]
            observer = Observer(location=EarthLocation.from_geodetic(site.longitude_deg * u.deg,
                                                                     site.latitude_deg * u.deg, site.elevation_m * u.m))
            blocks = [ObservingBlock(FixedTarget(SkyCoord(w.targets.ra_deg[i] * u.deg, w.targets.dec_deg[i] * u.deg),
                                                 name=str(i)),
                                     w.targets.exposure_s[i] * u.s, priority=rank + 1)
                      for rank, i in enumerate(cand)]
            sched = Schedule(start, end)
            try:
                PriorityScheduler(constraints=constraints, observer=observer,
                                  transitioner=Transitioner(slew_rate=0.8 * u.deg / u.s))(blocks, sched)
            except ValueError:
                # astroplan 0.10 can raise "block already occupied" while inserting a
                # transition; keep what it scheduled before that (counted below).
                failures += 1
            done = [int(b.target.name) for b in sched.observing_blocks]
            done = sorted(done, key=lambda i: -w.targets.value[i])[: int(w.sites.capacity[j])]
            for i in done:
                taken[i] = True
                value += float(w.targets.value[i] * p_true[i, j])
                critical += float(p_true[i, j]) if w.targets.critical[i] else 0.0
    return {"value": round(value / windows, 4), "share_of_oracle": round(value / oracle, 4) if oracle else 0.0,
            "critical_completed": round(critical / max(n_critical, 1), 4),
            "note": f"{windows} windows only (astroplan is slow); share is against the oracle on those windows; "
                    f"{failures} site schedules stopped early on astroplan's 'block already occupied'"}
