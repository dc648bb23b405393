"""(target, site) pair geometry, hard-constraint masks and the network's feature matrix.

Shared by the engine (requests) and the simulator (logs, evaluation) so that the model sees
exactly the features it was trained on. Everything is vectorised over N targets x S sites.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engines.coordination import physics, sky
from engines.coordination.config import ConstraintsConfig

FEATURE_NAMES = (
    "altitude", "airmass", "sun_altitude", "moon_altitude", "moon_illumination", "moon_separation",
    "seeing", "cloud", "humidity", "magnitude", "exposure", "aperture", "depth_margin", "sky",
    "band_u", "band_g", "band_r", "band_i", "band_z", "band_y",
)
N_FEATURES = len(FEATURE_NAMES)


@dataclass(frozen=True)
class TargetArrays:
    ra_deg: np.ndarray  # (N,)
    dec_deg: np.ndarray  # (N,)
    magnitude: np.ndarray  # (N,)
    band: np.ndarray  # (N,) int index into physics.BANDS
    exposure_s: np.ndarray  # (N,)
    value: np.ndarray  # (N,)
    critical: np.ndarray  # (N,) bool: time-critical or due within the window


@dataclass(frozen=True)
class SiteArrays:
    index: np.ndarray  # (S,) int: position in the site table (the model's site identity)
    latitude_deg: np.ndarray  # (S,)
    longitude_deg: np.ndarray  # (S,)
    aperture_m: np.ndarray  # (S,)
    bands: np.ndarray  # (S, 6) bool
    capacity: np.ndarray  # (S,) int
    open: np.ndarray  # (S,) bool
    seeing: np.ndarray  # (S,) forecast FWHM at 500 nm, arcsec
    cloud: np.ndarray  # (S,) forecast cloud extinction, mag
    humidity: np.ndarray  # (S,) forecast relative humidity, percent


@dataclass(frozen=True)
class Geometry:
    altitude: np.ndarray  # (N, S) deg
    airmass: np.ndarray  # (N, S), inf below the horizon
    sun_altitude: np.ndarray  # (S,) deg
    moon_altitude: np.ndarray  # (S,) deg
    moon_separation: np.ndarray  # (N, S) deg, topocentric Moon
    moon_illumination: float
    moon_phase_deg: float
    sky_mag: np.ndarray  # (N, S) mag/arcsec^2 in each target's band


def geometry(time_unix: float, t: TargetArrays, s: SiteArrays) -> Geometry:
    jd = float(sky.julian_date(time_unix))
    lst = sky.lst_deg(jd, s.longitude_deg)  # (S,)
    ra, dec = sky.precess_from_j2000(t.ra_deg, t.dec_deg, jd)  # (N,)
    alt, _ = sky.altaz_deg(ra[:, None], dec[:, None], lst[None, :], s.latitude_deg[None, :])  # (N, S)
    sra, sdec = sky.sun_radec_deg(jd)
    sun_alt, _ = sky.altaz_deg(sra, sdec, lst, s.latitude_deg)  # (S,)
    mra, mdec = sky.moon_radec_deg(jd, lst, s.latitude_deg)  # (S,) topocentric
    moon_alt, _ = sky.altaz_deg(mra, mdec, lst, s.latitude_deg)
    sep = sky.separation_deg(ra[:, None], dec[:, None], mra[None, :], mdec[None, :])  # (N, S)
    illum, phase = sky.moon_illumination(jd)
    x = sky.airmass(alt)
    moon_nl = physics.ks_moon_brightness_nl(phase, sep, 90.0 - moon_alt[None, :], 90.0 - np.maximum(alt, 0.0))
    sky_mag = physics.sky_mag(t.band[:, None], x, moon_nl)
    return Geometry(alt, x, sun_alt, moon_alt, sep, float(illum), float(phase), sky_mag)


def depth_margin(g: Geometry, t: TargetArrays, s: SiteArrays, seeing, cloud, snr_required: float, zeropoint=0.0):
    """m5 - required magnitude, (N, S) (or (K, N, S) when seeing/cloud carry a leading K axis).

    Positive margin: the target reaches `snr_required`. `seeing`/`cloud` broadcast against
    (S,); the simulator passes realized weather here, the engine the forecast.
    """
    band = t.band[:, None]
    x = np.where(np.isfinite(g.airmass), g.airmass, 10.0)
    fwhm = physics.fwhm_eff(np.asarray(seeing)[..., None, :], band, x)
    m5 = physics.m5_depth(band, g.sky_mag, fwhm, t.exposure_s[:, None], x, s.aperture_m[None, :],
                          np.asarray(cloud)[..., None, :])
    need = t.magnitude[:, None] + 2.5 * np.log10(snr_required / 5.0)
    zp = np.asarray(zeropoint, dtype=np.float64)
    return m5 + (zp[..., None, :] if zp.ndim else zp) - need


def feasible(g: Geometry, t: TargetArrays, s: SiteArrays, c: ConstraintsConfig) -> np.ndarray:
    """(N, S) bool: the hard constraints (horizon, twilight, Moon distance, band, open site)."""
    ok = g.altitude >= c.min_altitude_deg
    ok &= (g.sun_altitude <= c.max_sun_altitude_deg)[None, :]
    moon_up = g.moon_altitude > 0.0
    ok &= (g.moon_separation >= c.min_moon_separation_deg) | ~moon_up[None, :]
    ok &= s.bands[:, t.band].T
    ok &= (s.open & (s.capacity > 0))[None, :]
    return ok


def feature_matrix(g: Geometry, t: TargetArrays, s: SiteArrays, snr_required: float) -> np.ndarray:
    """(N, S, F) float32 network inputs, each scaled to roughly unit range."""
    n, m = g.altitude.shape
    margin = depth_margin(g, t, s, s.seeing, s.cloud, snr_required)
    x = np.where(np.isfinite(g.airmass), g.airmass, 10.0)
    cols = [
        g.altitude / 90.0,
        np.clip(x - 1.0, 0.0, 3.0),
        np.broadcast_to(g.sun_altitude[None, :] / 90.0, (n, m)),
        np.broadcast_to(g.moon_altitude[None, :] / 90.0, (n, m)),
        np.full((n, m), g.moon_illumination),
        g.moon_separation / 180.0,
        np.broadcast_to(s.seeing[None, :], (n, m)),
        np.broadcast_to(s.cloud[None, :], (n, m)),
        np.broadcast_to(s.humidity[None, :] / 100.0, (n, m)),
        np.broadcast_to((t.magnitude[:, None] - 22.0) / 3.0, (n, m)),
        np.broadcast_to(np.log10(t.exposure_s[:, None] / 30.0), (n, m)),
        np.broadcast_to(np.log10(s.aperture_m[None, :] / physics.RUBIN_APERTURE_M), (n, m)),
        np.clip(margin, -5.0, 5.0) / 2.0,
        (g.sky_mag - 20.0) / 2.0,
    ]
    out = np.empty((n, m, N_FEATURES), dtype=np.float32)
    for i, col in enumerate(cols):
        out[:, :, i] = col
    out[:, :, len(cols):] = np.eye(6, dtype=np.float32)[t.band][:, None, :]
    return out
