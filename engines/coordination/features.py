"""(target, site) pair geometry, hard-constraint masks and the network's feature matrix.

Shared by the engine (requests) and the simulator (logs, evaluation) so that the model sees
exactly the features it was trained on. Everything is vectorised over N targets x S sites.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy.special import erf as _erf

from engines.coordination import physics, sky
from engines.coordination.config import ConstraintsConfig

FEATURE_NAMES = (
    "altitude", "airmass", "sun_altitude", "moon_altitude", "moon_illumination", "moon_separation",
    "seeing", "cloud", "humidity", "magnitude", "exposure", "aperture", "depth_margin", "sky", "physics_p",
    "band_u", "band_g", "band_r", "band_i", "band_z", "band_y",
)
N_FEATURES = len(FEATURE_NAMES)
# Bump when a feature's meaning or scaling changes: checkpoints record the version they
# were trained on and the engine refuses another (their weights would read wrong inputs).
FEATURE_VERSION = 1
PRIOR_DEPTH_SCATTER_MAG = 0.2


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
    return geometry_many([(time_unix, t, s)])[0]


def geometry_many(problems: list[tuple[float, TargetArrays, SiteArrays]]) -> list[Geometry]:
    """Geometry of several (time, targets, sites) problems in one pass of numpy calls."""
    f = _flat_geometry(problems)
    airmass_, sky_mag = f.sky()
    out = []
    p0 = 0
    for k, (n, m, so) in enumerate(zip(f.n_k, f.s_k, f.s_off)):
        sl = slice(p0, p0 + n * m)
        p0 += n * m
        out.append(Geometry(f.alt[sl].reshape(n, m), airmass_[sl].reshape(n, m), f.sun_alt[so:so + m],
                            f.moon_alt[so:so + m], f.sep[sl].reshape(n, m), float(f.illum[k]), float(f.phase[k]),
                            sky_mag[sl].reshape(n, m)))
    return out


@dataclass(frozen=True)
class _Flat:
    """Every pair of several problems as flat arrays; pt/ps/pk index targets, sites, problems."""

    n_k: np.ndarray
    s_k: np.ndarray
    t_off: np.ndarray
    s_off: np.ndarray
    pt: np.ndarray  # (P,) into the concatenated targets
    ps: np.ndarray  # (P,) into the concatenated sites
    pk: np.ndarray  # (P,) problem
    sun_alt: np.ndarray  # (sum S,)
    moon_alt: np.ndarray  # (sum S,)
    illum: np.ndarray  # (K,)
    phase: np.ndarray  # (K,)
    alt: np.ndarray  # (P,)
    sep: np.ndarray  # (P,)
    band: np.ndarray  # (sum N,) band index of each target

    def sky(self, sel: np.ndarray | slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Airmass and sky brightness of pairs `sel`. Apart from the masks, a served request
        needs them only for its feasible pairs: computed for those alone."""
        pt, ps, alt = self.pt[sel], self.ps[sel], self.alt[sel]
        x = sky.airmass(alt)
        moon_nl = physics.ks_moon_brightness_nl(self.phase[self.pk[sel]], self.sep[sel], 90.0 - self.moon_alt[ps],
                                                90.0 - np.maximum(alt, 0.0))
        return x, physics.sky_mag(self.band[pt], x, moon_nl)


def _flat_geometry(problems, candidates=None, min_altitude_deg: float = 0.0) -> _Flat:
    """Every pair's geometry. `candidates(pt, ps, sun_alt)`, if given, says (P,) which pairs
    can be feasible at all from what is known per site and per target (daylight, a closed
    site, a band the site lacks, an expired target): the altitude is computed for those
    alone (-90 elsewhere), and the Moon separation only for those at least
    `min_altitude_deg` high (NaN elsewhere). A masked pair is then infeasible by altitude."""
    # The Sun, the Moon and sidereal time depend only on (time, sites): taken from
    # `_sky_at`'s cache, computed once per distinct (time, sites) of the batch, and the
    # pair quantities for every pair at once.
    n_k = np.array([p[1].ra_deg.shape[0] for p in problems], dtype=np.int64)
    s_k = np.array([p[2].latitude_deg.shape[0] for p in problems], dtype=np.int64)
    at = [_sky_at(float(p[0]), _key(p[2].latitude_deg), _key(p[2].longitude_deg)) for p in problems]
    lat = np.concatenate([p[2].latitude_deg for p in problems])  # (sum S,)
    if len(problems) == 1:
        lst, sun_alt, mra, mdec, moon_alt = at[0].lst, at[0].sun_alt, at[0].mra, at[0].mdec, at[0].moon_alt
    else:
        lst, sun_alt, mra, mdec, moon_alt = (np.concatenate([getattr(a, name) for a in at])
                                             for name in ("lst", "sun_alt", "mra", "mdec", "moon_alt"))
    illum = np.concatenate([a.illum for a in at])  # (K,)
    phase = np.concatenate([a.phase for a in at])
    target_k = np.repeat(np.arange(len(problems)), n_k)
    jd = np.concatenate([a.jd for a in at])
    angles = tuple(np.concatenate([a.angles[i] for a in at]) for i in range(3))
    ra, dec = sky.precess_from_j2000(np.concatenate([p[1].ra_deg for p in problems]),
                                     np.concatenate([p[1].dec_deg for p in problems]), jd[target_k],
                                     angles=tuple(a[target_k] for a in angles))
    band = np.concatenate([p[1].band for p in problems])
    # Pair index arrays: request k's (N_k, S_k) grid, row-major, offset into the flat arrays.
    t_off = np.concatenate([[0], np.cumsum(n_k)[:-1]]).astype(np.int64)
    s_off = np.concatenate([[0], np.cumsum(s_k)[:-1]]).astype(np.int64)
    pk = np.repeat(np.arange(len(problems)), n_k * s_k)
    local = np.arange(pk.shape[0]) - np.repeat(np.concatenate([[0], np.cumsum(n_k * s_k)[:-1]]), n_k * s_k)
    pt = t_off[pk] + local // s_k[pk]
    ps = s_off[pk] + local % s_k[pk]
    if candidates is None:
        alt = sky.altitude_pairs_deg(ra, dec, lst, lat, pt, ps)  # (P,)
        sep = sky.separation_pairs_deg(ra, dec, mra, mdec, pt, ps)
    else:
        # The pair trigonometry is most of a big request's features: spent only where the
        # answer can matter (a night-side site's pairs above the horizon, typically a third).
        c = np.flatnonzero(candidates(pt, ps, sun_alt))
        alt = np.full(pt.shape[0], -90.0)
        alt[c] = sky.altitude_pairs_deg(ra, dec, lst, lat, pt[c], ps[c])
        c = c[alt[c] >= min_altitude_deg]
        sep = np.full(pt.shape[0], np.nan)
        sep[c] = sky.separation_pairs_deg(ra, dec, mra, mdec, pt[c], ps[c])
    return _Flat(n_k, s_k, t_off, s_off, pt, ps, pk, sun_alt, moon_alt, illum, phase, alt, sep, band)


@dataclass(frozen=True)
class _SkyAt:
    """The sky at one time over one list of sites: per-site (S,) rows and per-time (1,) values."""

    jd: np.ndarray  # (1,)
    lst: np.ndarray  # (S,) local sidereal time, deg
    sun_alt: np.ndarray  # (S,)
    mra: np.ndarray  # (S,) topocentric Moon
    mdec: np.ndarray  # (S,)
    moon_alt: np.ndarray  # (S,)
    illum: np.ndarray  # (1,)
    phase: np.ndarray  # (1,)
    angles: tuple[np.ndarray, np.ndarray, np.ndarray]  # precession angles, (1,) each


def _key(a: np.ndarray) -> bytes:
    return np.asarray(a, dtype=np.float64).tobytes()


@functools.lru_cache(maxsize=512)
def _sky_at(time_unix: float, latitude: bytes, longitude: bytes) -> _SkyAt:
    """Cached: every request of one decision window, and every event of a plan stream, asks
    for the same time and sites, and the Sun's and Moon's series were most of a small
    request's features (0.6-0.8 ms of a one-target alert). Keyed on the sites' coordinates
    (float64 bytes), not their ids, so a changed site table cannot be served stale rows.
    The arrays are read-only: every caller shares them."""
    lat, lon = np.frombuffer(latitude), np.frombuffer(longitude)
    jd = sky.julian_date(np.array([time_unix], dtype=np.float64))  # (1,)
    site_jd = np.repeat(jd, lat.shape[0])
    lst = sky.lst_deg(site_jd, lon)
    sra, sdec = sky.sun_radec_deg(site_jd)
    sun_alt, _ = sky.altaz_deg(sra, sdec, lst, lat)
    moon = sky.moon_geocentric(jd)  # (1, 3): the Moon's series once, not once per site
    mra, mdec = sky.moon_radec_deg(site_jd, lst, lat, xyz=moon[np.zeros(lat.shape[0], dtype=np.int64)])
    moon_alt, _ = sky.altaz_deg(mra, mdec, lst, lat)
    illum, phase = sky.moon_illumination(jd, xyz=moon)
    out = _SkyAt(jd, lst, sun_alt, mra, mdec, moon_alt, np.atleast_1d(illum), np.atleast_1d(np.asarray(phase)),
                 tuple(sky.precession_angles(jd)))
    for a in (out.jd, out.lst, out.sun_alt, out.mra, out.mdec, out.moon_alt, out.illum, out.phase, *out.angles):
        a.flags.writeable = False
    return out


def _margin(band, sky_mag, airmass_, seeing, cloud, exposure, aperture, mag, snr_required, zeropoint=0.0):
    """m5 - the magnitude that reaches `snr_required`; any broadcastable shapes."""
    x = np.where(np.isfinite(airmass_), airmass_, 10.0)
    fwhm = physics.fwhm_eff(seeing, band, x)
    m5 = physics.m5_depth(band, sky_mag, fwhm, exposure, x, aperture, cloud)
    return m5 + zeropoint - (mag + 2.5 * np.log10(np.asarray(snr_required) / 5.0))


def depth_margin(g: Geometry, t: TargetArrays, s: SiteArrays, seeing, cloud, snr_required: float, zeropoint=0.0):
    """m5 - required magnitude, (N, S) (or (K, N, S) when seeing/cloud carry a leading K axis).

    Positive margin: the target reaches `snr_required`. `seeing`/`cloud` broadcast against
    (S,); the simulator passes realized weather here, the engine the forecast.
    """
    zp = np.asarray(zeropoint, dtype=np.float64)
    return _margin(t.band[:, None], g.sky_mag, g.airmass, np.asarray(seeing)[..., None, :],
                   np.asarray(cloud)[..., None, :], t.exposure_s[:, None], s.aperture_m[None, :],
                   t.magnitude[:, None], snr_required, zp[..., None, :] if zp.ndim else zp)


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
    """(N, S, F) float32 network inputs for every pair of one problem (the simulator's path)."""
    n, m = g.altitude.shape
    margin = depth_margin(g, t, s, s.seeing, s.cloud, snr_required)
    grid = lambda a: np.broadcast_to(a, (n, m)).ravel()  # noqa: E731
    x = _columns(grid(g.altitude), grid(g.airmass), grid(g.sun_altitude[None, :]), grid(g.moon_altitude[None, :]),
                 grid(g.moon_illumination), grid(g.moon_separation), grid(s.seeing[None, :]), grid(s.cloud[None, :]),
                 grid(s.humidity[None, :]), grid(t.magnitude[:, None]), grid(t.exposure_s[:, None]),
                 grid(s.aperture_m[None, :]), grid(margin), grid(g.sky_mag), grid(t.band[:, None]))
    return x.reshape(n, m, N_FEATURES)


def _columns(alt, airmass_, sun_alt, moon_alt, illum, sep, seeing, cloud, humidity, mag, exposure, aperture,
             margin, sky_mag, band) -> np.ndarray:
    """(P, F) float32 network inputs from flat (P,) pair quantities, each scaled to ~unit range.

    The one definition of the features: the simulator (grid) and the engine (batched pairs)
    both come here, so the model is served exactly the features it was trained on.
    """
    x = np.where(np.isfinite(airmass_), airmass_, 10.0)
    cols = [
        alt / 90.0,
        np.clip(x - 1.0, 0.0, 3.0),
        sun_alt / 90.0,
        moon_alt / 90.0,
        illum,
        sep / 180.0,
        seeing,
        cloud,
        humidity / 100.0,
        (mag - 22.0) / 3.0,
        np.log10(exposure / 30.0),
        np.log10(aperture / physics.RUBIN_APERTURE_M),
        np.clip(margin, -5.0, 5.0) / 2.0,
        (sky_mag - 20.0) / 2.0,
        # The physics prior: P(margin >= 0) if the realized depth scatters by ~0.2 mag around
        # the forecast. The network learns corrections (hidden site effects) on top of it.
        0.5 * (1.0 + _erf(margin / (PRIOR_DEPTH_SCATTER_MAG * np.sqrt(2.0)))),
    ]
    out = np.empty((alt.shape[0], N_FEATURES), dtype=np.float32)
    for i, col in enumerate(cols):
        out[:, i] = col
    out[:, len(cols):] = np.eye(6, dtype=np.float32)[band]
    return out


@dataclass(frozen=True)
class PairBatch:
    """The feasible pairs of several problems, ready for one forward pass."""

    feasible: list[np.ndarray]  # per problem (N_k, S_k) bool
    ti: list[np.ndarray]  # per problem, target index of each feasible pair (row-major order)
    sj: list[np.ndarray]  # per problem, site index (into the problem's sites)
    x: np.ndarray  # (P, F) float32, every problem's feasible pairs in order
    site: np.ndarray  # (P,) int64 site-table index (the model's site identity)
    counts: np.ndarray  # (K,) feasible pairs per problem


def pair_batch(problems: list[tuple[float, TargetArrays, SiteArrays, np.ndarray, float]],
               c: ConstraintsConfig) -> PairBatch:
    """Masks and features for (time, targets, sites, excluded (N,) bool, snr) problems at once."""
    cat_t = lambda name: np.concatenate([getattr(p[1], name) for p in problems])  # noqa: E731
    cat_s = lambda name: np.concatenate([getattr(p[2], name) for p in problems])  # noqa: E731
    band = cat_t("band")
    excluded = np.concatenate([p[3] for p in problems])
    site_open, bands = cat_s("open") & (cat_s("capacity") > 0), cat_s("bands")

    def candidates(pt, ps, sun_alt):  # the constraints that need no pair geometry
        ok = (site_open & (sun_alt <= c.max_sun_altitude_deg))[ps] & ~excluded[pt]
        ok[ok] = bands[ps[ok], band[pt[ok]]]
        return ok

    f = _flat_geometry([p[:3] for p in problems], candidates, c.min_altitude_deg)
    pt, ps, pk = f.pt, f.ps, f.pk
    ok = f.alt >= c.min_altitude_deg  # -90 outside the candidates (min_altitude_deg >= 0)
    ok &= (f.sep >= c.min_moon_separation_deg) | (f.moon_alt[ps] <= 0.0)
    sel = np.flatnonzero(ok)  # only feasible pairs are featurised and scored
    t, s, k = pt[sel], ps[sel], pk[sel]
    seeing, cloud, aperture = cat_s("seeing")[s], cat_s("cloud")[s], cat_s("aperture_m")[s]
    mag, exposure = cat_t("magnitude")[t], cat_t("exposure_s")[t]
    snr = np.array([p[4] for p in problems], dtype=np.float64)[k]
    airmass_, sky_mag = f.sky(sel)
    margin = _margin(band[t], sky_mag, airmass_, seeing, cloud, exposure, aperture, mag, snr)
    x = _columns(f.alt[sel], airmass_, f.sun_alt[s], f.moon_alt[s], f.illum[k], f.sep[sel], seeing, cloud,
                 cat_s("humidity")[s], mag, exposure, aperture, margin, sky_mag, band[t])
    counts = np.bincount(k, minlength=len(problems))
    bounds = np.concatenate([[0], np.cumsum(counts)])
    masks, tis, sjs = [], [], []
    p0 = 0
    for i, (n, m) in enumerate(zip(f.n_k, f.s_k)):
        masks.append(ok[p0:p0 + n * m].reshape(n, m))
        p0 += n * m
        tis.append(t[bounds[i]:bounds[i + 1]] - f.t_off[i])
        sjs.append(s[bounds[i]:bounds[i + 1]] - f.s_off[i])
    return PairBatch(masks, tis, sjs, x, cat_s("index")[s].astype(np.int64), counts)
