from __future__ import annotations

import numpy as np
import pytest

from engines.coordination import physics


def test_ks_scattering_function_is_a_sum_not_a_product():
    # K&S 1991 eq. 21: f(rho) = 10^5.36 (1.06 + cos^2 rho) + 10^(6.15 - rho/40).
    for rho in (5.0, 30.0, 60.0, 90.0, 120.0):
        expected = 10**5.36 * (1.06 + np.cos(np.radians(rho)) ** 2) + 10 ** (6.15 - rho / 40.0)
        assert physics.ks_f_rho(rho) == pytest.approx(expected, rel=1e-12)
    # At 90 deg the mistyped product (1.06 * cos^2 = 0) would drop the Rayleigh term entirely.
    assert physics.ks_f_rho(90.0) == pytest.approx(10**5.36 * 1.06 + 10 ** (6.15 - 2.25))


def test_moon_sky_brightness():
    full = physics.ks_moon_brightness_nl(0.0, 60.0, 45.0, 30.0)
    quarter = physics.ks_moon_brightness_nl(90.0, 60.0, 45.0, 30.0)
    assert full > 5 * quarter > 0
    assert physics.ks_moon_brightness_nl(0.0, 60.0, 95.0, 30.0) == 0.0  # Moon set
    # A full Moon brightens a dark V sky (~21.7) by more than a magnitude nearby.
    dark = physics.nl_to_mag(physics.mag_to_nl(21.7))
    assert dark == pytest.approx(21.7)
    lit = physics.nl_to_mag(physics.mag_to_nl(21.7) + physics.ks_moon_brightness_nl(0.0, 30.0, 45.0, 30.0))
    assert lit < 20.7


def test_smtn002_depth():
    r = physics.BANDS.index("r")
    fwhm = physics.fwhm_eff(0.62, r, 1.0)
    m5 = physics.m5_depth(r, physics.DARK_SKY[r], fwhm, 30.0, 1.0, physics.RUBIN_APERTURE_M)
    assert 24.0 < m5 < 24.7  # the LSST r-band single-visit depth at zenith in good seeing
    assert physics.m5_depth(r, physics.DARK_SKY[r], fwhm, 30.0, 1.0, 2 * physics.RUBIN_APERTURE_M) == pytest.approx(
        m5 + 2.5 * np.log10(2))
    assert physics.m5_depth(r, physics.DARK_SKY[r], fwhm, 30.0, 1.0, physics.RUBIN_APERTURE_M, 0.5) == pytest.approx(m5 - 0.5)
    assert physics.snr(m5, m5) == pytest.approx(5.0)
    assert physics.fwhm_eff(0.7, r, 2.0) > physics.fwhm_eff(0.7, r, 1.0)
