"""Depth, seeing and sky brightness: LSST SMTN-002 and Krisciunas & Schaefer (1991).

Used twice: by the engine, to give the network a physics prior (the depth margin at the
forecast), and by the simulator, to turn realized weather into realized SNR. Everything is
numpy and broadcasts over (targets, sites).
"""

from __future__ import annotations

import numpy as np

from engines.coordination.sky import D2R

BANDS = ("u", "g", "r", "i", "z", "y")
# SMTN-002 (lsst-sims smtn-002), per band u..y.
CM = np.array([22.91, 24.45, 24.46, 24.33, 24.17, 23.71])
DCM_INF = np.array([0.57, 0.12, 0.06, 0.05, 0.03, 0.02])
K_ATM = np.array([0.50, 0.21, 0.13, 0.10, 0.07, 0.18])
DARK_SKY = np.array([22.95, 22.24, 21.20, 20.47, 19.60, 18.63])  # mag/arcsec^2 at zenith
LAMBDA_EFF_NM = np.array([367.0, 482.0, 622.0, 754.0, 869.0, 971.0])
# Scattered moonlight is blue: band colour of the Moon sky relative to V (mag). A simulator
# choice, not from SMTN-002; K&S model V only.
MOON_COLOUR = np.array([0.6, 0.2, -0.1, -0.2, -0.2, -0.2])
RUBIN_APERTURE_M = 6.423
K_V = 0.172


def ks_f_rho(rho_deg):
    """K&S scattering function: f(rho) = 10^5.36 (1.06 + cos^2 rho) + 10^(6.15 - rho/40).

    Note the sum `1.06 + cos^2`: some public code mistypes it as a product.
    """
    rho = np.asarray(rho_deg, dtype=np.float64)
    return 10.0**5.36 * (1.06 + np.cos(rho * D2R) ** 2) + 10.0 ** (6.15 - rho / 40.0)


def ks_x(zenith_deg):
    """K&S airmass for scattering: X(Z) = (1 - 0.96 sin^2 Z)^(-1/2)."""
    return (1.0 - 0.96 * np.sin(np.asarray(zenith_deg) * D2R) ** 2) ** -0.5


def ks_moon_brightness_nl(phase_angle_deg, rho_deg, moon_zenith_deg, target_zenith_deg, k=K_V):
    """Moon sky brightness in nanoLamberts (K&S eq. 15); zero with the Moon below the horizon."""
    alpha = np.abs(np.asarray(phase_angle_deg, dtype=np.float64))
    i_star = 10.0 ** (-0.4 * (3.84 + 0.026 * alpha + 4e-9 * alpha**4))
    zm = np.minimum(np.asarray(moon_zenith_deg, dtype=np.float64), 90.0)
    zt = np.minimum(np.asarray(target_zenith_deg, dtype=np.float64), 90.0)
    b = ks_f_rho(rho_deg) * i_star * 10.0 ** (-0.4 * k * ks_x(zm)) * (1.0 - 10.0 ** (-0.4 * k * ks_x(zt)))
    return np.where(np.asarray(moon_zenith_deg) < 90.0, b, 0.0)


def nl_to_mag(b_nl):
    """nanoLamberts -> V mag/arcsec^2 (K&S: B = 34.08 exp(20.7233 - 0.92104 V))."""
    return (20.7233 - np.log(np.maximum(b_nl, 1e-30) / 34.08)) / 0.92104


def mag_to_nl(mag):
    return 34.08 * np.exp(20.7233 - 0.92104 * np.asarray(mag))


def sky_mag(band, airmass_, moon_nl):
    """Sky brightness (mag/arcsec^2) in `band` (index), dark sky at airmass plus moonlight."""
    x = np.minimum(airmass_, 10.0)
    k = K_ATM[band]
    dark_nl = mag_to_nl(DARK_SKY[band]) * 10.0 ** (-0.4 * k * (x - 1.0)) * x
    moon_band_nl = moon_nl * 10.0 ** (-0.4 * MOON_COLOUR[band])
    return nl_to_mag(dark_nl + moon_band_nl)


def fwhm_eff(fwhm_500, band, airmass_):
    """SMTN-002 effective FWHM (arcsec) from the 500 nm zenith seeing."""
    x06 = np.minimum(airmass_, 10.0) ** 0.6
    atm = fwhm_500 * (500.0 / LAMBDA_EFF_NM[band]) ** 0.3 * x06
    sys = np.sqrt((0.25 * x06) ** 2 + 0.08**2 + 0.30**2)
    return 1.16 * np.sqrt(sys**2 + 1.04 * atm**2)


def m5_depth(band, sky, fwhm, exptime_s, airmass_, aperture_m, cloud_mag=0.0):
    """SMTN-002 five-sigma depth, shifted for aperture (sky-limited) and cloud extinction."""
    x = np.minimum(airmass_, 10.0)
    return (CM[band] + DCM_INF[band] + 0.50 * (sky - 21.0) + 2.5 * np.log10(0.7 / fwhm)
            + 1.25 * np.log10(exptime_s / 30.0) - K_ATM[band] * (x - 1.0)
            + 2.5 * np.log10(aperture_m / RUBIN_APERTURE_M) - cloud_mag)


def snr(m5, mag):
    """Sky-limited SNR of a source of magnitude `mag` at depth `m5`."""
    return 5.0 * 10.0 ** (0.4 * (m5 - mag))
