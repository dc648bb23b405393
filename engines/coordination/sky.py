"""Vectorised sky geometry in numpy: sidereal time, altitude, airmass, Sun and Moon.

Low-precision formulas (IAU 1982 GMST, Meeus precession, the Astronomical Almanac's Sun
and Moon series) that agree with astropy to well under the masks' resolution (~0.01 deg
for targets and the Sun, ~0.3 deg for the Moon) while costing microseconds for thousands
of pairs; astropy stays the reference in tests. UT1 is taken as UTC (|DUT1| < 0.9 s, i.e.
< 0.004 deg of sidereal time). No refraction: altitudes are geometric.

Angles are degrees at the interface, radians inside. Arrays broadcast: pass targets as
shape (N, 1) and sites as (1, S) to get (N, S) pairs.
"""

from __future__ import annotations

import numpy as np

D2R = np.pi / 180.0
R2D = 180.0 / np.pi
J2000 = 2451545.0


def julian_date(unix_s):
    """Julian date (UTC) of a Unix timestamp."""
    return np.asarray(unix_s, dtype=np.float64) / 86400.0 + 2440587.5


def gmst_deg(jd):
    """Greenwich mean sidereal time (IAU 1982), degrees in [0, 360)."""
    d = jd - J2000
    t = d / 36525.0
    g = 280.46061837 + 360.98564736629 * d + 0.000387933 * t * t - t * t * t / 38710000.0
    return np.mod(g, 360.0)


def lst_deg(jd, longitude_deg):
    """Local mean sidereal time, degrees; longitude east-positive."""
    return np.mod(gmst_deg(jd) + longitude_deg, 360.0)


def precession_angles(jd):
    """(zeta, z, theta) radians of the precession from J2000 to `jd` (Meeus eq. 21.2)."""
    t = (jd - J2000) / 36525.0
    zeta = (2306.2181 * t + 0.30188 * t**2 + 0.017998 * t**3) / 3600.0 * D2R
    z = (2306.2181 * t + 1.09468 * t**2 + 0.018203 * t**3) / 3600.0 * D2R
    theta = (2004.3109 * t - 0.42665 * t**2 - 0.041833 * t**3) / 3600.0 * D2R
    return zeta, z, theta


def precess_from_j2000(ra_deg, dec_deg, jd, angles=None):
    """Mean J2000 (ICRS to ~20 mas) -> mean equator and equinox of date (Meeus eq. 21.2-21.4).

    `angles`: `precession_angles(jd)` already taken (once per request, then gathered per
    target, instead of the same polynomials once per target)."""
    zeta, z, theta = precession_angles(jd) if angles is None else angles
    ra = np.asarray(ra_deg) * D2R
    dec = np.asarray(dec_deg) * D2R
    a = np.cos(dec) * np.sin(ra + zeta)
    b = np.cos(theta) * np.cos(dec) * np.cos(ra + zeta) - np.sin(theta) * np.sin(dec)
    c = np.sin(theta) * np.cos(dec) * np.cos(ra + zeta) + np.cos(theta) * np.sin(dec)
    ra_d = np.mod(np.arctan2(a, b) + z, 2 * np.pi)
    return ra_d * R2D, np.arcsin(np.clip(c, -1.0, 1.0)) * R2D


def altaz_deg(ra_deg, dec_deg, lst, latitude_deg):
    """Altitude and azimuth (N through E), degrees, from equatorial coordinates of date."""
    ha = (np.asarray(lst) - ra_deg) * D2R
    dec = np.asarray(dec_deg) * D2R
    lat = np.asarray(latitude_deg) * D2R
    sin_alt = np.sin(dec) * np.sin(lat) + np.cos(dec) * np.cos(lat) * np.cos(ha)
    alt = np.arcsin(np.clip(sin_alt, -1.0, 1.0))
    az = np.arctan2(-np.cos(dec) * np.sin(ha), np.sin(dec) * np.cos(lat) - np.cos(dec) * np.sin(lat) * np.cos(ha))
    return alt * R2D, np.mod(az * R2D, 360.0)


def altitude_pairs_deg(ra_deg, dec_deg, lst, latitude_deg, pt, ps):
    """`altaz_deg(ra[pt], dec[pt], lst[ps], lat[ps])[0]`, bit for bit, for many pairs: the
    trigonometry of targets and sites is taken once each and gathered, only the hour angle
    is per pair, and no azimuth is computed."""
    dec = np.asarray(dec_deg) * D2R
    lat = np.asarray(latitude_deg) * D2R
    ha = (np.asarray(lst)[ps] - np.asarray(ra_deg)[pt]) * D2R
    sin_alt = np.sin(dec)[pt] * np.sin(lat)[ps] + np.cos(dec)[pt] * np.cos(lat)[ps] * np.cos(ha)
    return np.arcsin(np.clip(sin_alt, -1.0, 1.0)) * R2D


def airmass(alt_deg):
    """Kasten & Young (1989) airmass; inf below the horizon (so masks never see a small number)."""
    alt = np.asarray(alt_deg, dtype=np.float64)
    safe = np.maximum(alt, 0.0)
    x = 1.0 / (np.sin(safe * D2R) + 0.50572 * (safe + 6.07995) ** -1.6364)
    return np.where(alt > 0.0, x, np.inf)


def sun_radec_deg(jd):
    """Apparent Sun (Astronomical Almanac low precision, ~0.01 deg), equator of date."""
    n = jd - J2000
    L = 280.460 + 0.9856474 * n
    g = (357.528 + 0.9856003 * n) * D2R
    lam = (L + 1.915 * np.sin(g) + 0.020 * np.sin(2 * g)) * D2R
    eps = (23.439 - 0.0000004 * n) * D2R
    ra = np.arctan2(np.cos(eps) * np.sin(lam), np.cos(lam))
    dec = np.arcsin(np.sin(eps) * np.sin(lam))
    return np.mod(ra * R2D, 360.0), dec * R2D


def moon_geocentric(jd):
    """Geocentric Moon, equator of date: unit-free cartesian in Earth radii, shape (..., 3)
    (what `moon_radec_deg` and `moon_illumination` take as `xyz`)."""
    t = (jd - J2000) / 36525.0
    s = lambda a, b: np.sin((a + b * t) * D2R)  # noqa: E731
    c = lambda a, b: np.cos((a + b * t) * D2R)  # noqa: E731
    lam = (218.32 + 481267.881 * t + 6.29 * s(135.0, 477198.87) - 1.27 * s(259.3, -413335.36)
           + 0.66 * s(235.7, 890534.22) + 0.21 * s(269.9, 954397.74) - 0.19 * s(357.5, 35999.05)
           - 0.11 * s(186.5, 966404.03)) * D2R
    beta = (5.13 * s(93.3, 483202.02) + 0.28 * s(228.2, 960400.89) - 0.28 * s(318.3, 6003.15)
            - 0.17 * s(217.6, -407332.21)) * D2R
    par = (0.9508 + 0.0518 * c(135.0, 477198.87) + 0.0095 * c(259.3, -413335.36)
           + 0.0078 * c(235.7, 890534.22) + 0.0028 * c(269.9, 954397.74)) * D2R
    r = 1.0 / np.sin(par)
    l_ = np.cos(beta) * np.cos(lam)
    m_ = 0.9175 * np.cos(beta) * np.sin(lam) - 0.3978 * np.sin(beta)
    n_ = 0.3978 * np.cos(beta) * np.sin(lam) + 0.9175 * np.sin(beta)
    return np.stack([r * l_, r * m_, r * n_], axis=-1)


def moon_radec_deg(jd, lst=None, latitude_deg=None, xyz=None):
    """Moon RA/Dec of date; topocentric (parallax up to ~1 deg) when lst and latitude are given.
    `xyz`: `moon_geocentric(jd)` already taken (one series per request, not one per site)."""
    xyz = moon_geocentric(jd) if xyz is None else xyz
    if lst is not None:
        lat = np.asarray(latitude_deg) * D2R
        ls = np.asarray(lst) * D2R
        obs = np.stack(np.broadcast_arrays(np.cos(lat) * np.cos(ls), np.cos(lat) * np.sin(ls), np.sin(lat)), -1)
        xyz = xyz - obs
    r = np.linalg.norm(xyz, axis=-1)
    ra = np.mod(np.arctan2(xyz[..., 1], xyz[..., 0]) * R2D, 360.0)
    dec = np.arcsin(xyz[..., 2] / r) * R2D
    return ra, dec


def separation_deg(ra1, dec1, ra2, dec2):
    """Great-circle separation (Vincenty form, stable at 0 and 180 deg)."""
    ra1, dec1, ra2, dec2 = (np.asarray(v) * D2R for v in (ra1, dec1, ra2, dec2))
    dra = ra2 - ra1
    num = np.hypot(np.cos(dec2) * np.sin(dra), np.cos(dec1) * np.sin(dec2) - np.sin(dec1) * np.cos(dec2) * np.cos(dra))
    den = np.sin(dec1) * np.sin(dec2) + np.cos(dec1) * np.cos(dec2) * np.cos(dra)
    return np.arctan2(num, den) * R2D


def separation_pairs_deg(ra1, dec1, ra2, dec2, p1, p2):
    """`separation_deg(ra1[p1], dec1[p1], ra2[p2], dec2[p2])`, bit for bit, with the
    declinations' sines and cosines taken once per point and gathered per pair."""
    ra1, dec1, ra2, dec2 = (np.asarray(v) * D2R for v in (ra1, dec1, ra2, dec2))
    dra = ra2[p2] - ra1[p1]
    s1, c1, s2, c2 = np.sin(dec1)[p1], np.cos(dec1)[p1], np.sin(dec2)[p2], np.cos(dec2)[p2]
    cos_dra = np.cos(dra)
    num = np.hypot(c2 * np.sin(dra), c1 * s2 - s1 * c2 * cos_dra)
    den = s1 * s2 + c1 * c2 * cos_dra
    return np.arctan2(num, den) * R2D


def moon_illumination(jd, xyz=None):
    """Illuminated fraction of the Moon's disc, from the geocentric Sun-Moon elongation."""
    sra, sdec = sun_radec_deg(jd)
    xyz = moon_geocentric(jd) if xyz is None else xyz
    mra = np.arctan2(xyz[..., 1], xyz[..., 0]) * R2D
    mdec = np.arcsin(xyz[..., 2] / np.linalg.norm(xyz, axis=-1)) * R2D
    elong = separation_deg(sra, sdec, mra, mdec) * D2R
    r_moon = np.linalg.norm(xyz, axis=-1)
    r_sun = 23455.0  # 1 AU in Earth radii; the phase angle is barely sensitive to it
    phase = np.arctan2(r_sun * np.sin(elong), r_moon - r_sun * np.cos(elong))
    return (1.0 + np.cos(phase)) / 2.0, phase * R2D
