"""The observing simulator: forecasts, stochastic weather, hidden site effects, outcomes.

A decision window has a per-site forecast (seeing, cloud, humidity) drawn from the site's
climate. Realized weather scatters around it; hidden per-site effects shift it in ways the
forecast and the physics model do not know (a zero-point offset, a forecast that
under-reports cloud, seeing worse than forecast, a dome that closes at lower humidity, an
instrument that is down). An observation succeeds when the site is open and the realized
SNR (SMTN-002 depth, K&S Moon sky) reaches the scenario's threshold.

Two uses: per-site observation logs (features, outcome) for training, and evaluation
windows where the true P(success) of every pair is estimated by Monte Carlo over weather.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import ndtr, ndtri

from engines.coordination import features, physics
from engines.coordination.config import ConstraintsConfig
from engines.coordination.sites import SiteTable
from training.coordination.scenario import Hidden, Scenario
from training.coordination.sitelog import SCHEMA, Logs, SiteLog, to_logs

__all__ = ["Logs", "SiteLog", "Simulator", "Window"]

_MAX_FORECAST_CLOUD_MAG = next(c.hi for c in SCHEMA if c.name == "forecast_cloud_mag")  # the log's bound


@dataclass(frozen=True)
class Window:
    time_unix: float  # middle of the window
    targets: features.TargetArrays
    sites: features.SiteArrays  # forecast conditions inside
    geometry: features.Geometry
    feasible: np.ndarray  # (N, S) bool


class Simulator:
    def __init__(self, scenario: Scenario, table: SiteTable) -> None:
        self.sc = scenario
        self.table = table
        meta = scenario.scenario
        self.constraints = ConstraintsConfig(meta.min_altitude_deg, meta.max_sun_altitude_deg,
                                             meta.min_moon_separation_deg)
        self.band_index = np.array([physics.BANDS.index(b) for b in scenario.targets.bands])
        bw = np.asarray(scenario.targets.band_weights, dtype=np.float64)
        self.band_p = bw / bw.sum()
        ids = table.ids
        missing = [i for i in ids if i not in scenario.climate]
        if missing:
            raise ValueError(f"scenario has no climate for sites {missing}")
        self.hidden = [scenario.hidden.get(i, Hidden()) for i in ids]
        self.nominal = Hidden()

    # -- sampling --------------------------------------------------------------------------
    def sample_targets(self, rng: np.random.Generator, n: int | None = None) -> features.TargetArrays:
        td = self.sc.targets
        n = td.count if n is None else n
        s = np.sin(np.radians([td.dec_min_deg, td.dec_max_deg]))
        dec = np.degrees(np.arcsin(rng.uniform(s[0], s[1], n)))
        crit = rng.random(n) < td.critical_fraction
        value = rng.lognormal(0.0, td.value_sigma, n) * np.where(crit, td.critical_value_factor, 1.0)
        return features.TargetArrays(
            ra_deg=rng.uniform(0.0, 360.0, n), dec_deg=dec, magnitude=rng.uniform(td.mag_min, td.mag_max, n),
            band=rng.choice(self.band_index, n, p=self.band_p), exposure_s=rng.choice(np.asarray(td.exposures_s), n),
            value=value, critical=crit)

    def sample_sites(self, rng: np.random.Generator, which: np.ndarray) -> features.SiteArrays:
        """Forecast conditions for sites `which` (table indices) from their climates."""
        cl = [self.sc.climate[self.table.site[i].id] for i in which]
        k = len(which)
        clear = rng.random(k) < np.array([c.clear_fraction for c in cl])
        cloud = np.where(clear, 0.0, rng.exponential(1.0, k) * np.array([c.cloud_mean_mag for c in cl]))
        # Overcast is overcast: a forecast beyond the site-log schema's bound (10 mag) would make
        # the log unreadable; a cloudy climate's exponential tail reaches it in a few of 10^4
        # nights (the default scenarios never do, so their logs are unchanged).
        cloud = np.minimum(cloud, _MAX_FORECAST_CLOUD_MAG)
        seeing = np.array([c.seeing_median for c in cl]) * np.exp(rng.normal(0.0, 0.25, k))
        hum = np.clip(rng.normal(np.array([c.humidity_mean for c in cl]), np.array([c.humidity_sd for c in cl])), 2.0, 100.0)
        st = [self.table.site[i] for i in which]
        return features.SiteArrays(
            index=np.asarray(which, dtype=np.int64), latitude_deg=np.array([x.latitude_deg for x in st]),
            longitude_deg=np.array([x.longitude_deg for x in st]), aperture_m=np.array([x.aperture_m for x in st]),
            bands=np.array([[b in x.bands for b in physics.BANDS] for x in st], dtype=bool),
            capacity=np.array([x.capacity for x in st], dtype=np.int64), open=np.ones(k, dtype=bool),
            seeing=seeing, cloud=cloud, humidity=hum)

    def window(self, rng: np.random.Generator, time_unix: float, which: np.ndarray, n_targets: int | None = None) -> Window:
        t = self.sample_targets(rng, n_targets)
        s = self.sample_sites(rng, which)
        g = features.geometry(time_unix, t, s)
        return Window(time_unix, t, s, g, features.feasible(g, t, s, self.constraints))

    # -- outcomes --------------------------------------------------------------------------
    def _weather(self, rng, w: Window, k: int, hidden: list[Hidden]):
        """k realizations of site weather under `hidden` effects: arrays (k, S)."""
        s = w.sites
        wm = self.sc.weather
        m = s.index.shape[0]
        bias = np.array([h.cloud_bias_mag for h in hidden])
        factor = np.array([h.seeing_factor for h in hidden])
        closure = np.array([wm.nominal_closure_humidity if h.closure_humidity is None else h.closure_humidity
                            for h in hidden])
        down = np.array([h.downtime_prob for h in hidden])
        cloud = np.maximum(s.cloud + bias + rng.normal(0.0, wm.cloud_sd_mag, (k, m)), 0.0)
        seeing = s.seeing * factor * np.exp(rng.normal(0.0, wm.seeing_sd_log, (k, m)))
        hum = s.humidity + rng.normal(0.0, wm.humidity_sd, (k, m))
        open_ = (hum < closure) & (rng.random((k, m)) >= down)
        return cloud, seeing, open_

    def _hidden_for(self, w: Window, truth: bool) -> list[Hidden]:
        return [self.hidden[i] if truth else self.nominal for i in w.sites.index]

    def success_probability(self, rng, w: Window, k: int = 256, truth: bool = True) -> np.ndarray:
        """(N, S) P(success) by Monte Carlo over k weather draws; `truth=False` is physics at
        the forecast: the same noise model without the hidden effects."""
        hidden = self._hidden_for(w, truth)
        cloud, seeing, open_ = self._weather(rng, w, k, hidden)
        zp = np.array([h.zeropoint_offset_mag for h in hidden])
        margin = features.depth_margin(w.geometry, w.targets, w.sites, seeing, cloud,
                                       self.sc.scenario.snr_required, zp)  # (k, N, S)
        ok = (margin >= 0.0) & open_[:, None, :]
        return ok.mean(axis=0) * w.feasible

    def exact_probability(self, w: Window, truth: bool = True, nodes: int = 256) -> np.ndarray:
        """(N, S) P(success) integrated over the weather model instead of sampled: what
        `success_probability` estimates, without its sampling noise, and never rounded to 0
        where it is merely small (a sample of 512 draws calls P = 1e-5 zero). The oracle and
        the scoring in `evaluate` use it, so they face the same tiny P a calibrated model does.

        Success needs the site open (humidity below closure, instrument up) and a realized
        depth margin >= 0; the two are independent. Cloud lowers the margin one for one, so
        for a given seeing, P(max(cloud, 0) <= margin) is a normal CDF; seeing is integrated
        at `nodes` quantile midpoints of its lognormal scatter (error <= 1/nodes per pair).
        """
        hidden = self._hidden_for(w, truth)
        s, wm = w.sites, self.sc.weather
        closure = np.array([wm.nominal_closure_humidity if h.closure_humidity is None else h.closure_humidity
                            for h in hidden])
        down = np.array([h.downtime_prob for h in hidden])
        p_open = (1.0 - down) * _normal_cdf(closure - s.humidity, wm.humidity_sd)  # (S,)
        z = ndtri((np.arange(nodes) + 0.5) / nodes)  # (K,) standard-normal quantile midpoints
        seeing = s.seeing * np.array([h.seeing_factor for h in hidden]) * np.exp(wm.seeing_sd_log * z)[:, None]
        zp = np.array([h.zeropoint_offset_mag for h in hidden])
        margin = features.depth_margin(w.geometry, w.targets, s, seeing, np.zeros_like(seeing),
                                       self.sc.scenario.snr_required, zp)  # (K, N, S) with no cloud
        cloud_mean = s.cloud + np.array([h.cloud_bias_mag for h in hidden])  # (S,)
        # Realized cloud is max(cloud_mean + noise, 0): a negative margin fails even in clear sky.
        p_depth = np.where(margin >= 0.0, _normal_cdf(margin - cloud_mean, wm.cloud_sd_mag), 0.0).mean(axis=0)
        return p_open * p_depth * w.feasible

    def realize(self, rng, w: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One realized night: success (N, S) bool, log10 SNR (N, S), open (S,)."""
        hidden = self._hidden_for(w, True)
        cloud, seeing, open_ = self._weather(rng, w, 1, hidden)
        zp = np.array([h.zeropoint_offset_mag for h in hidden])
        req = self.sc.scenario.snr_required
        margin = features.depth_margin(w.geometry, w.targets, w.sites, seeing, cloud, req, zp)[0]
        log_snr = np.log10(5.0) + 0.4 * (margin + 2.5 * np.log10(req / 5.0))
        return (margin >= 0.0) & open_[0][None, :] & w.feasible, log_snr, open_[0]

    # -- logs ------------------------------------------------------------------------------
    def site_log(self, site: int, windows: int, seed: int, per_window: int = 40) -> SiteLog:
        """A site's own log in the site-log schema: `windows` of its nights, `per_window`
        feasible observations each, with the forecast the site had and what happened."""
        rng = np.random.default_rng([seed, site])
        meta = self.sc.scenario
        lon = self.table.site[site].longitude_deg
        midnight_utc_h = (-lon / 15.0) % 24.0
        parts: list[dict[str, np.ndarray]] = []
        which = np.array([site])
        tries = 0
        while len(parts) < windows and tries < windows * 4:
            tries += 1
            day = rng.integers(0, meta.days)
            t = meta.start_unix + day * 86400.0 + (midnight_utc_h + rng.uniform(-3.5, 3.5)) * 3600.0
            t = float(np.round(t, 3))  # what the log's time column keeps (milliseconds)
            w = self.window(rng, t, which, n_targets=max(per_window * 4, 60))
            idx = np.flatnonzero(w.feasible[:, 0])
            if idx.size == 0:
                continue
            idx = rng.permutation(idx)[:per_window]
            ok, log_snr, open_ = self.realize(rng, w)
            n = idx.size
            tg, st = w.targets, w.sites
            parts.append(dict(
                time_unix=np.full(n, t), ra_deg=tg.ra_deg[idx], dec_deg=tg.dec_deg[idx], band=tg.band[idx],
                magnitude=tg.magnitude[idx], exposure_s=tg.exposure_s[idx], seeing=np.full(n, st.seeing[0]),
                cloud=np.full(n, st.cloud[0]), humidity=np.full(n, st.humidity[0]), success=ok[idx, 0],
                # Nothing is measured when the dome is closed or the instrument is down.
                achieved_snr=np.power(10.0, log_snr[idx, 0]) if open_[0] else np.full(n, np.nan)))
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return SiteLog(site_id=self.table.site[site].id, **cols)

    def all_site_logs(self, windows: int, seed: int, per_window: int = 40) -> list[SiteLog]:
        return [self.site_log(i, windows, seed, per_window) for i in range(len(self.table.site))]

    def site_logs(self, site: int, windows: int, seed: int, per_window: int = 40) -> Logs:
        """Site `site`'s log as the model's training arrays (featurised like a log file)."""
        return to_logs(self.site_log(site, windows, seed, per_window), self.table, self.sc.scenario.snr_required)

    def all_logs(self, windows: int, seed: int, per_window: int = 40) -> list[Logs]:
        return [self.site_logs(i, windows, seed, per_window) for i in range(len(self.table.site))]

    def eval_time(self, rng: np.random.Generator) -> float:
        meta = self.sc.scenario
        day = rng.integers(0, meta.days)
        return meta.start_unix + day * 86400.0 + (meta.utc_hour + rng.uniform(-1, 1) * meta.utc_hour_jitter) * 3600.0


def _normal_cdf(x, sd: float):
    """P(noise <= x) for noise ~ N(0, sd); a step at 0 when sd is 0 (no scatter)."""
    x = np.asarray(x, dtype=np.float64)
    return ndtr(x / sd) if sd > 0 else (x >= 0.0).astype(np.float64)
