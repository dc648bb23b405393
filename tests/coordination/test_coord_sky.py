"""Vectorised sky geometry against astropy (offline) as the reference.

Tolerances: LST 0.01 deg (GMST vs apparent sidereal time: equation of the equinoxes
<= 1.2 s, plus UT1-UTC < 0.9 s); target altitude 0.05 deg (we skip nutation and aberration,
~40" together; no refraction on either side); Sun 0.05 deg; Moon altitude 0.5 deg and
separation 0.5 deg (low-precision series, ~0.3 deg); Moon illumination 0.02.
"""

from __future__ import annotations

import numpy as np
import pytest

from engines.coordination import sky

TIMES = [1741584600.0, 1757000000.0, 1767225600.0]  # 2025-03-10, 2025-09-04, 2026-01-01
SITES = [(-30.244628, -70.74941, 2650.0), (19.82833, -155.47833, 4160.0), (28.75833, -17.88, 2327.0)]


@pytest.fixture(scope="module")
def astropy_frames(offline_astropy):
    import astropy.units as u
    from astropy.coordinates import AltAz, EarthLocation
    from astropy.time import Time

    def frame(t, site):
        lat, lon, h = site
        loc = EarthLocation.from_geodetic(lon * u.deg, lat * u.deg, h * u.m)
        return AltAz(obstime=Time(t, format="unix"), location=loc, pressure=0 * u.hPa), loc
    return frame


@pytest.mark.parametrize("t", TIMES)
@pytest.mark.parametrize("site", SITES)
def test_lst_and_target_altitude(astropy_frames, t, site):
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy.time import Time

    frame, loc = astropy_frames(t, site)
    rng = np.random.default_rng(0)
    ra, dec = rng.uniform(0, 360, 200), np.degrees(np.arcsin(rng.uniform(-1, 1, 200)))
    ref = SkyCoord(ra * u.deg, dec * u.deg, frame="icrs").transform_to(frame)
    jd = sky.julian_date(t)
    lst = sky.lst_deg(jd, site[1])
    ref_lst = Time(t, format="unix").sidereal_time("apparent", longitude=site[1] * u.deg).deg
    assert abs((lst - ref_lst + 180) % 360 - 180) < 0.01
    pra, pdec = sky.precess_from_j2000(ra, dec, jd)
    alt, az = sky.altaz_deg(pra, pdec, lst, site[0])
    assert np.max(np.abs(alt - ref.alt.deg)) < 0.05
    up = ref.alt.deg > 5  # azimuth is ill-conditioned near the zenith only
    assert np.max(np.abs((az - ref.az.deg + 180)[up] % 360 - 180) * np.cos(np.radians(alt[up]))) < 0.05


@pytest.mark.parametrize("t", TIMES)
@pytest.mark.parametrize("site", SITES)
def test_sun_and_moon(astropy_frames, t, site):
    from astroplan import moon_illumination
    from astropy.coordinates import get_body, get_sun
    from astropy.time import Time

    frame, loc = astropy_frames(t, site)
    time = Time(t, format="unix")
    jd = sky.julian_date(t)
    lst = sky.lst_deg(jd, site[1])
    sun_ref = get_sun(time).transform_to(frame)
    sra, sdec = sky.sun_radec_deg(jd)
    sun_alt, _ = sky.altaz_deg(sra, sdec, lst, site[0])
    assert abs(sun_alt - sun_ref.alt.deg) < 0.05
    moon_ref = get_body("moon", time, location=loc).transform_to(frame)
    mra, mdec = sky.moon_radec_deg(jd, lst, site[0])
    moon_alt, _ = sky.altaz_deg(mra, mdec, lst, site[0])
    assert abs(moon_alt - moon_ref.alt.deg) < 0.5
    illum, _ = sky.moon_illumination(jd)
    assert abs(illum - moon_illumination(time)) < 0.02


def test_separation_and_airmass():
    assert sky.separation_deg(10.0, 20.0, 10.0, 20.0) == pytest.approx(0.0, abs=1e-9)
    assert sky.separation_deg(0.0, 0.0, 180.0, 0.0) == pytest.approx(180.0)
    assert sky.separation_deg(0.0, 89.0, 180.0, 89.0) == pytest.approx(2.0)
    x = sky.airmass(np.array([90.0, 30.0, -1.0]))
    assert x[0] == pytest.approx(1.0, abs=1e-3) and x[1] == pytest.approx(1.995, abs=0.01) and np.isinf(x[2])


def test_pair_forms_equal_the_elementwise_forms_bit_for_bit():
    # The engine computes pair altitude and Moon separation from per-target and per-site
    # trigonometry; training features and served features must stay identical to the bit.
    rng = np.random.default_rng(11)
    ra, dec = rng.uniform(0, 360, 300), rng.uniform(-90, 90, 300)
    lst, lat = rng.uniform(0, 360, 9), rng.uniform(-70, 70, 9)
    pt, ps = np.repeat(np.arange(300), 9), np.tile(np.arange(9), 300)
    assert np.array_equal(sky.altitude_pairs_deg(ra, dec, lst, lat, pt, ps),
                          sky.altaz_deg(ra[pt], dec[pt], lst[ps], lat[ps])[0])
    assert np.array_equal(sky.separation_pairs_deg(ra, dec, lst, lat, pt, ps),
                          sky.separation_deg(ra[pt], dec[pt], lst[ps], lat[ps]))
