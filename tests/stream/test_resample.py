"""The low-delay resampler: exact delay, chunk invariance, unity DC gain, alias rejection."""

from __future__ import annotations

import numpy as np
import pytest

from stream.resample import Resampler

PAIRS = [(48000, 16000), (16000, 48000), (44100, 16000), (16000, 44100), (8000, 16000), (192000, 16000)]


def _run(r: Resampler, x: np.ndarray, sizes) -> np.ndarray:
    st, outs, i, k = r.initial_state(x.shape[0]), [], 0, 0
    while i < x.shape[1]:
        n = sizes[k % len(sizes)]
        y, st = r.step(x[:, i : i + n], st)
        outs.append(y)
        i, k = i + n, k + 1
    return np.concatenate(outs, axis=1)


@pytest.mark.parametrize("fs_in,fs_out", PAIRS)
def test_chunk_invariance_and_count(fs_in, fs_out):
    r = Resampler(fs_in, fs_out)
    x = np.random.default_rng(0).standard_normal((2, fs_in // 2)).astype(np.float32)
    whole = _run(r, x, [x.shape[1]])
    assert whole.shape[1] == r.available(x.shape[1])
    for sizes in ([1], [3, 250, 17], [4096]):
        y = _run(r, x, sizes)
        assert y.shape == whole.shape
        assert np.abs(y - whole).max() < 1e-6


@pytest.mark.parametrize("fs_in,fs_out", PAIRS)
def test_sine_comes_out_with_the_stated_delay(fs_in, fs_out):
    f0 = 440.0
    r = Resampler(fs_in, fs_out)
    t_in = np.arange(fs_in) / fs_in
    x = np.sin(2 * np.pi * f0 * t_in).astype(np.float32)[None]
    y = _run(r, x, [777])[0]
    t_out = np.arange(y.size) / fs_out - r.delay_out_samples / fs_out
    expect = np.sin(2 * np.pi * f0 * t_out)
    sl = slice(y.size // 4, 3 * y.size // 4)
    assert np.abs(y[sl] - expect[sl]).max() < 2e-3


@pytest.mark.parametrize("fs_in,fs_out", PAIRS)
def test_dc_gain_is_exactly_one(fs_in, fs_out):
    r = Resampler(fs_in, fs_out)
    y = _run(r, np.full((1, fs_in // 4), 0.25, np.float32), [1000])[0]
    steady = y[r.available(2 * r.taps) :]  # past the start-up transient
    assert np.abs(steady - 0.25).max() < 1e-6


def test_downsampling_rejects_aliases():
    # A 12 kHz tone at 48 kHz has no place at 16 kHz (Nyquist 8 kHz): it must be attenuated, not folded to 4 kHz.
    r = Resampler(48000, 16000)
    t = np.arange(48000) / 48000
    y = _run(r, np.sin(2 * np.pi * 12000 * t).astype(np.float32)[None], [4096])[0][1000:]
    assert 20 * np.log10(np.sqrt(np.mean(y**2)) / np.sqrt(0.5)) < -60


@pytest.mark.parametrize("fs_in,fs_out", [(48000, 16000), (16000, 48000), (44100, 16000), (16000, 44100)])
def test_resampler_delay_is_about_a_millisecond(fs_in, fs_out):
    # 12 zero crossings at 16 kHz with a 0.9 roll-off: 12 / (0.9 * 16000) s = 0.83 ms, plus rounding.
    r = Resampler(fs_in, fs_out)
    assert r.delay_out_samples / fs_out < 1.0e-3


@pytest.mark.parametrize("fs_in,fs_out", PAIRS)
def test_gather_and_per_phase_paths_give_identical_samples(fs_in, fs_out):
    # Small blocks take the per-output gather, large ones one strided product per phase; both sum in
    # float64 and round once, so the samples are identical, not merely close, for any block split.
    r = Resampler(fs_in, fs_out)
    x = np.random.default_rng(5).uniform(-1, 1, (2, fs_in // 3)).astype(np.float32)
    assert np.array_equal(_run(r, x, [x.shape[1]]), _run(r, x, [1, 2, 5]))


def test_first_output_never_reads_past_the_input():
    # With an extra delay the first output's window starts before the stream: those taps see silence,
    # never (through a wrapped index) the newest input sample.
    r = Resampler(16000, 8000, extra_delay=1)
    x = np.zeros((1, 1000), np.float32)
    x[0, -1] = 1.0
    y, _ = r.step(x, r.initial_state(1))
    assert np.all(y[0, : r.available(1000 - r.half - 2)] == 0.0)
