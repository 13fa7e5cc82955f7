"""training.band_error: the per-octave table on known cases."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("scipy")

from training.band_error import band_table  # noqa: E402


def _parts(seconds: float = 2.0, sr: int = 16000) -> tuple[np.ndarray, np.ndarray]:
    """A 40 Hz bass tone with a quarter of the energy, and white noise with the rest."""
    t = np.arange(int(seconds * sr)) / sr
    bass = np.sin(2 * np.pi * 40.0 * t) * np.sqrt(2 * 0.25)
    rest = np.random.default_rng(0).standard_normal(t.size) * np.sqrt(0.75)
    return bass, rest


def test_identical_output_has_no_error_and_no_gain():
    bass, rest = _parts()
    e = bass + rest
    for lo, hi, share, gain, err in band_table(e, e.copy(), e):
        assert abs(gain) < 1e-6 and err < -100, (lo, hi)


def test_a_cut_bass_shows_in_the_lowest_band():
    # The near-clean music case: the output keeps everything but cuts the bass line by 3.6 dB.
    bass, rest = _parts()
    e = bass + rest
    y = 10 ** (-3.6 / 20) * bass + rest
    rows = {lo: (share, gain, err) for lo, _, share, gain, err in band_table(e, y, e)}
    share, gain, err = rows[0]
    assert -7 < share < -5 and -4.5 < gain < -3  # a quarter of the energy, cut by about 3.6 dB
    assert err == max(r[2] for r in rows.values())  # and that band's error is the largest
    assert all(abs(r[1]) < 0.2 for lo, r in rows.items() if lo >= 250)  # the rest passes
