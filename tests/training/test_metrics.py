"""Fast checks of training/metrics.py (numpy only; all signals are synthetic, 16 kHz).

Every assertion has a threshold that a broken implementation would miss (e.g. a
non-scale-invariant SI-SDR, a PESQ call with swapped arguments, a DNSMOS that never ran,
or a WPE whose output is shifted in time).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import fftconvolve, lfilter

from training import metrics as M

SR = 16000


def _speech_like(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Bursts of coloured noise with Hann envelopes and pauses, ``[frames]`` float64.

    A faint noise floor keeps the pauses from being exactly zero, as in real recordings.
    """
    n = int(seconds * SR)
    env = np.zeros(n)
    t = int(0.05 * SR)
    while t < n:
        length = int(rng.uniform(0.08, 0.25) * SR)
        seg = np.hanning(length)[: max(0, min(length, n - t))]
        env[t : t + seg.size] = seg
        t += length + int(rng.uniform(0.03, 0.15) * SR)
    x = lfilter([1.0], [1.0, -0.9], rng.standard_normal(n)) * env
    x += 1e-3 * rng.standard_normal(n)
    return 0.3 * x / np.max(np.abs(x))


def _reverberant(seed: int, rt60: float = 0.8, seconds: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """(reverberant, direct-path reference), both ``[frames]``, same alignment (2 ms delay).

    The RIR is a unit direct path followed after 5 ms by exponentially decaying noise
    (60 dB decay over ``rt60`` seconds) at -26 dB relative to the direct path.
    """
    rng = np.random.default_rng(seed)
    dry = _speech_like(rng, seconds)
    length = int(rt60 * SR)
    t = np.arange(length) / SR
    rir = 0.05 * rng.standard_normal(length) * np.exp(-6.9 * t / rt60) * (t > 0.005)
    d = 32
    rir[:d] = 0.0
    rir[d] = 1.0
    rev = fftconvolve(dry, rir)[: dry.size]  # FFT: a direct 12800-tap FIR costs seconds
    direct = np.concatenate([np.zeros(d), dry[:-d]])
    return rev, direct


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return _speech_like(np.random.default_rng(0), 3.0)


# ---------------------------------------------------------------- SI-SDR
def test_si_sdr_identical_is_very_high(clip: np.ndarray) -> None:
    assert M.si_sdr(clip, clip) > 80.0


def test_si_sdr_is_scale_invariant(clip: np.ndarray) -> None:
    noisy = clip + 0.01 * np.random.default_rng(1).standard_normal(clip.size)
    base = M.si_sdr(noisy, clip)
    assert 0.0 < base < 40.0  # a real, finite distortion level
    for gain in (0.01, 3.7, -2.0):
        assert M.si_sdr(gain * noisy, clip) == pytest.approx(base, abs=1e-6)
    # a plain SDR would change here: scaling the reference must not matter either
    assert M.si_sdr(noisy, 5.0 * clip) == pytest.approx(base, abs=1e-6)


def test_si_sdr_independent_noise_is_very_low(clip: np.ndarray) -> None:
    noise = np.random.default_rng(2).standard_normal(clip.size)
    assert M.si_sdr(noise, clip) < -20.0


def test_si_sdr_known_value() -> None:
    rng = np.random.default_rng(3)
    ref = rng.standard_normal(SR)
    noise = rng.standard_normal(SR)
    noise -= noise.mean()
    noise -= ref @ noise / (ref @ ref) * ref  # orthogonal to ref -> SI-SDR is exactly 10 log10(|ref|^2/|n|^2)
    ref -= ref.mean()
    noise *= np.sqrt(ref @ ref / (noise @ noise)) / np.sqrt(10.0)  # 10 dB
    assert M.si_sdr(ref + noise, ref) == pytest.approx(10.0, abs=0.05)


def test_si_sdr_rejects_length_mismatch(clip: np.ndarray) -> None:
    with pytest.raises(ValueError):
        M.si_sdr(clip[:-1], clip)


# ---------------------------------------------------------------- PESQ / ESTOI
def test_pesq_identical_high_noisy_lower(clip: np.ndarray) -> None:
    same = M.pesq_wb(clip, clip, SR)
    noisy = clip + 0.03 * np.random.default_rng(4).standard_normal(clip.size)
    worse = M.pesq_wb(clip, noisy, SR)
    assert same > 4.4
    assert worse < same - 1.0


def test_estoi_identical_is_one_noisy_lower(clip: np.ndarray) -> None:
    assert M.estoi(clip, clip, SR) == pytest.approx(1.0, abs=1e-3)
    noisy = clip + 0.1 * np.random.default_rng(5).standard_normal(clip.size)
    value = M.estoi(clip, noisy, SR)
    assert value < 0.8
    # it is the *extended* STOI (classic STOI scores this modulated-noise case differently)
    from pystoi import stoi

    assert value == pytest.approx(stoi(clip, noisy, SR, extended=True), abs=1e-9)
    assert abs(value - stoi(clip, noisy, SR, extended=False)) > 0.01


# ---------------------------------------------------------------- DNSMOS
@pytest.mark.slow
def test_dnsmos_runs_offline_and_ranks(clip: np.ndarray) -> None:
    scorer = M.DnsmosScorer()  # models come from the speechmos wheel, nothing is fetched
    clean = scorer(clip, SR)
    assert set(clean) >= {"OVRL", "SIG", "BAK"}
    for value in clean.values():
        assert 1.0 <= value <= 5.0
    noisy = scorer(clip + 0.05 * np.random.default_rng(6).standard_normal(clip.size), SR)
    assert noisy["BAK"] < clean["BAK"] - 0.5  # loud white noise must hurt the background score
    # the wrapper function gives the same numbers through a shared scorer
    assert M.dnsmos(clip, SR, scorer=scorer) == clean


def test_mel_features_match_explicit_computation() -> None:
    """Our numpy P.808 features (framing, Hann, power, mel, dB floor) vs a float64 re-derivation."""
    x = np.random.default_rng(7).standard_normal(4000).astype(np.float32) * 0.1
    mf = M._MelFeatures()
    feats = mf(x)
    assert feats.shape == (1 + (4000 + 2 * 160 - 321) // 160, 120)  # librosa centre framing
    basis = mf.basis.astype(np.float64)
    assert basis.shape == (120, 161) and np.all(basis >= 0)
    # Slaney triangles: filter i peaks at centre i+1 with height 2 / (f[i+2] - f[i])
    centres = M._mel_to_hz_slaney(np.linspace(0.0, M._hz_to_mel_slaney(np.array([8000.0]))[0], 122))
    assert basis.max(axis=1)[40] <= 2.0 / (centres[42] - centres[40]) + 1e-9
    pad = np.pad(x.astype(np.float64), (160, 160))
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(321) / 321)
    frames = np.lib.stride_tricks.sliding_window_view(pad, 321)[::160] * win
    mel = (np.abs(np.fft.rfft(frames, axis=-1)) ** 2) @ basis.T
    db = 10 * np.log10(np.maximum(mel, 1e-10))
    db -= db.max()
    ref = (np.maximum(db, -80.0) + 40.0) / 40.0
    assert np.allclose(feats, ref, atol=1e-4)


@pytest.mark.slow  # importing librosa.core JIT-compiles numba kernels (~14 s on a fresh machine)
def test_mel_features_match_librosa() -> None:
    import speechmos.dnsmos as sd

    x = np.random.default_rng(8).standard_normal(16000 * 2).astype(np.float32) * 0.1
    ref = sd.DNSMOS.audio_melspec(None, x)  # speechmos' own librosa path
    assert np.allclose(M._MelFeatures()(x), ref, atol=1e-5)


# ---------------------------------------------------------------- WPE baselines
def test_wpe_offline_improves_si_sdr_vs_direct() -> None:
    rev, direct = _reverberant(seed=0)
    out, seconds, rtf = M.timed(M.wpe_offline, rev, SR)
    assert out.shape == rev.shape and out.dtype == rev.dtype
    gain = M.si_sdr(out, direct) - M.si_sdr(rev, direct)
    assert gain > 0.3, gain
    assert seconds > 0 and np.isfinite(rtf) and rtf > 0  # no speed bound: CI machines may be loaded


def test_wpe_keeps_time_alignment() -> None:
    """A non-reverberant input must come back essentially unchanged and unshifted."""
    x = _speech_like(np.random.default_rng(8), 2.0).astype(np.float32)
    y = M.wpe_offline(x)
    assert y.shape == x.shape and y.dtype == np.float32
    assert M.si_sdr(y, x) > 30.0
    # a one-sample shift would already drop SI-SDR far below that
    assert M.si_sdr(np.roll(y, 1), x) < 20.0


def test_wpe_online_runs_causal_and_aligned() -> None:
    rev, direct = _reverberant(seed=1, seconds=3.0)
    out = M.wpe_online(rev)
    assert out.shape == rev.shape
    # the first taps+delay frames pass through untouched (no history yet): bit-for-bit up to STFT round-off
    head = 5 * M.WPE_STFT_SHIFT
    assert np.max(np.abs(out[:head] - rev[:head])) < 1e-6
    # causality: changing the future must not change the past output
    later = rev.copy()
    later[SR:] = 0.0
    out2 = M.wpe_online(later)
    past = SR - M.WPE_STFT_SIZE
    assert np.max(np.abs(out2[:past] - out[:past])) < 1e-9
    # after convergence (last second) the direct-path SI-SDR is not worse than the input's
    tail = slice(2 * SR, None)
    assert M.si_sdr(out[tail], direct[tail]) > M.si_sdr(rev[tail], direct[tail])


def test_wpe_multichannel_shape() -> None:
    rev, _ = _reverberant(seed=2, seconds=1.0)
    x = np.stack([rev, np.roll(rev, 3)], axis=1).astype(np.float32)  # [frames, 2]
    assert M.wpe_offline(x).shape == x.shape
