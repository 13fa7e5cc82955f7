"""Alignment and augmentation properties of training.mixing."""

from __future__ import annotations

import numpy as np
import pytest

from training.mixing import MixConfig, colored_noise, find_direct_index, make_example, split_rir

FS = 16000
CLEAN = MixConfig(eq_prob=0.0, noise_prob=0.0, anechoic_prob=0.0)


def synthetic_rir(rng: np.random.Generator, d0: int = 120, rt60: float = 0.5, n: int = 8000) -> np.ndarray:
    """Delay + unit direct path + exponentially decaying noise tail starting 2 ms later."""
    h = np.zeros(n)
    h[d0] = 1.0
    t = np.arange(n - d0 - 32) / FS
    h[d0 + 32 :] = 0.3 * rng.standard_normal(len(t)) * 10 ** (-3 * t / rt60)
    return h


def lag_of_peak(a: np.ndarray, b: np.ndarray) -> int:
    """Lag (samples) at which b best matches a (positive: a is delayed w.r.t. b)."""
    n = len(a) + len(b)
    c = np.fft.irfft(np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n)), n)
    k = int(np.argmax(np.abs(c)))
    return k if k < n // 2 else k - n


def test_find_direct_index_prefers_first_strong_peak() -> None:
    h = np.zeros(1000)
    h[100] = 0.8  # direct path
    h[130] = 1.0  # coherent reflection, stronger than the direct sound
    h[50] = 0.1  # pre-ringing far under the peak
    assert find_direct_index(h, FS) == 100


def test_split_rir_parts() -> None:
    rng = np.random.default_rng(0)
    h = synthetic_rir(rng)
    p = split_rir(h, FS, early_ms=50.0)
    assert p.direct_index == 120
    assert len(p.direct) == len(p.early) == len(h)
    nz = np.flatnonzero(p.direct)
    assert nz.min() >= 120 - 16 and nz.max() <= 120 + 16  # +-1 ms
    assert p.direct[120] == pytest.approx(1.0)
    end = 120 + 800
    assert np.all(p.early[end:] == 0)
    assert np.allclose(p.early[: end - 80], h[: end - 80])  # untouched before the 5 ms fade
    assert np.all(np.abs(p.early[end - 80 : end]) <= np.abs(h[end - 80 : end]) + 1e-12)


def test_outputs_aligned_at_lag_zero() -> None:
    rng = np.random.default_rng(1)
    dry = rng.standard_normal(FS) * np.hanning(FS)
    h = synthetic_rir(rng, d0=200)
    ex = make_example(dry, h, np.random.default_rng(2), CLEAN)
    assert len(ex.mixture) == len(ex.early) == len(ex.direct) == len(dry)
    assert ex.mixture.dtype == ex.early.dtype == ex.direct.dtype == np.float32
    assert lag_of_peak(ex.mixture, ex.direct) == 0
    assert lag_of_peak(ex.early, ex.direct) == 0
    # All keep the direct-path delay of the RIR (the model is causal).
    assert lag_of_peak(ex.direct, dry) == 200


@pytest.mark.parametrize("eq_prob", [0.0, 1.0])
def test_impulse_rir_gives_identical_outputs(eq_prob: float) -> None:
    rng = np.random.default_rng(3)
    dry = rng.standard_normal(8000)
    h = np.zeros(300)
    h[37] = 0.5
    ex = make_example(dry, h, np.random.default_rng(4), MixConfig(eq_prob=eq_prob, noise_prob=0.0, anechoic_prob=0.0))
    np.testing.assert_allclose(ex.mixture, ex.early, atol=1e-6)
    np.testing.assert_allclose(ex.mixture, ex.direct, atol=1e-6)
    assert np.max(np.abs(ex.mixture)) > 0.001


def test_anechoic_replacement() -> None:
    rng = np.random.default_rng(5)
    dry = rng.standard_normal(8000)
    h = synthetic_rir(rng)
    ex = make_example(dry, h, np.random.default_rng(6), MixConfig(anechoic_prob=1.0, noise_prob=0.0))
    assert ex.info["anechoic"] and ex.info["rt60"] == 0.0
    np.testing.assert_allclose(ex.mixture, ex.early, atol=1e-6)
    # The pure delay keeps the waveform: mixture is the (possibly EQ'd) dry signal shifted.
    assert 0 <= lag_of_peak(ex.mixture, dry) <= 160


def test_noise_snr_and_level() -> None:
    rng = np.random.default_rng(7)
    dry = rng.standard_normal(32000)
    h = np.zeros(100)
    h[10] = 1.0
    cfg = MixConfig(eq_prob=0.0, noise_prob=1.0, anechoic_prob=0.0, snr_db=(25.0, 25.0), level_dbfs=(-30.0, -30.0))
    ex = make_example(dry, h, np.random.default_rng(8), cfg)
    noise = ex.mixture.astype(np.float64) - ex.early
    snr = 10 * np.log10(np.mean(ex.early.astype(np.float64) ** 2) / np.mean(noise**2))
    assert snr == pytest.approx(25.0, abs=0.5)
    assert 10 * np.log10(np.mean(ex.early.astype(np.float64) ** 2)) == pytest.approx(-30.0, abs=0.5)
    assert ex.info["snr"] == 25.0 and ex.info["noise"] in ("white", "pink", "brown")


def test_make_example_deterministic() -> None:
    rng = np.random.default_rng(9)
    dry, h = rng.standard_normal(8000), synthetic_rir(rng)
    a = make_example(dry, h, np.random.default_rng(10))
    b = make_example(dry, h, np.random.default_rng(10))
    np.testing.assert_array_equal(a.mixture, b.mixture)
    np.testing.assert_array_equal(a.early, b.early)


def test_colored_noise_slopes() -> None:
    rng = np.random.default_rng(11)
    for kind, slope in (("white", 0.0), ("pink", -3.0), ("brown", -6.0)):
        x = colored_noise(rng, 1 << 16, kind)
        p = np.abs(np.fft.rfft(x)) ** 2
        f = np.fft.rfftfreq(len(x), 1 / FS)
        lo = p[(f > 200) & (f < 400)].mean()
        hi = p[(f > 3200) & (f < 6400)].mean()
        octaves = np.log2(4800 / 300)
        assert 10 * np.log10(hi / lo) / octaves == pytest.approx(slope, abs=1.0)
