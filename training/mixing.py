"""Reverberant mixtures and their training targets (pure numpy/scipy, no torch).

All signals are 1-D float at ``MixConfig.sample_rate`` (16 kHz). Given a dry signal
``dry`` [n] and a room impulse response ``rir`` [m]:

* ``mixture`` = dry * rir (full reverb) + noise,
* ``early``   = dry * rir[:d0 + early_ms] (direct path + early reflections), the default
  training target,
* ``direct``  = dry * rir[d0 - w : d0 + w] (direct path only),

all three truncated to ``n`` samples with the same alignment: the RIR pieces are kept at
their original position, so every output contains the same direct-path delay ``d0``.
The model is causal, so it cannot be asked to undo that delay.

``d0`` (see :func:`find_direct_index`) is the *first* sample within ``-6 dB`` of the RIR's
maximum, refined to the local maximum in the following 0.5 ms. Taking the first
strong peak rather than the global maximum matters for distant sources, where a
floor/table reflection can arrive coherently with, and be stronger than, the direct
sound; the -6 dB margin still skips the low-level pre-ringing of the fractional-delay
filters used by room simulators and the noise before the onset of measured RIRs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.fft as sfft
from scipy.signal import sosfilt

__all__ = ["MixConfig", "RirParts", "Example", "find_direct_index", "split_rir", "make_example",
           "convolve", "convolve_many", "random_eq", "colored_noise", "rms_db"]


@dataclass(frozen=True)
class MixConfig:
    """How examples are made. Times in ms, levels in dBFS, probabilities in [0, 1]."""

    sample_rate: int = 16000
    early_ms: float = 50.0  # end of the "early" target after the direct path
    direct_half_ms: float = 1.0  # half-width w of the direct-path window
    early_fade_ms: float = 5.0  # half-Hann fade at the end of the early part
    anechoic_prob: float = 0.05  # replace the RIR by a delayed impulse (dry in -> dry out)
    anechoic_delay_ms: tuple[float, float] = (0.0, 10.0)
    level_dbfs: tuple[float, float] = (-45.0, -15.0)  # active level of the reverberant speech
    eq_prob: float = 0.8  # microphone colouration
    eq_bands: tuple[int, int] = (1, 4)  # number of biquads
    eq_gain_db: float = 6.0  # +- range per biquad
    noise_prob: float = 0.9
    snr_db: tuple[float, float] = (20.0, 50.0)  # vs the reverberant signal
    noise_kinds: tuple[str, ...] = ("white", "pink", "brown")
    peak_limit: float = 0.99  # never clip: the whole example is scaled down if needed


@dataclass
class RirParts:
    """Pieces of a RIR, each the same length as the RIR and at its original delay."""

    direct_index: int
    direct: np.ndarray
    early: np.ndarray


@dataclass
class Example:
    """One training example; arrays are float32 [n], aligned, at the config's rate."""

    mixture: np.ndarray
    early: np.ndarray
    direct: np.ndarray
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- RIR analysis


def find_direct_index(rir: np.ndarray, sample_rate: int = 16000, rel_db: float = -6.0,
                      refine_ms: float = 0.5) -> int:
    """Index of the direct-path peak of ``rir`` [m] (see module docstring)."""
    a = np.abs(np.asarray(rir, np.float64))
    peak = a.max()
    if peak <= 0:
        return 0
    i0 = int(np.flatnonzero(a >= peak * 10.0 ** (rel_db / 20.0))[0])
    span = max(1, int(round(refine_ms * 1e-3 * sample_rate)))
    return i0 + int(np.argmax(a[i0 : i0 + span + 1]))


def split_rir(rir: np.ndarray, sample_rate: int = 16000, early_ms: float = 50.0,
              direct_half_ms: float = 1.0, fade_ms: float = 5.0) -> RirParts:
    """Split ``rir`` [m] into direct-path and early parts, both [m] at the original delay.

    ``direct`` = rir[d0-w : d0+w] under a Hann window (w = ``direct_half_ms``), which keeps
    the sinc main lobe of a fractional-delay direct path but no reflection (the earliest
    floor reflection arrives > 1 ms after the direct sound unless source or mic sit on
    the floor). ``early`` = rir[:d0 + early_ms] with a half-Hann fade over its last
    ``fade_ms`` so that truncating the reflections does not add a spectral ripple."""
    h = np.asarray(rir, np.float64)
    m = len(h)
    d0 = find_direct_index(h, sample_rate)
    w = max(1, int(round(direct_half_ms * 1e-3 * sample_rate)))
    direct = np.zeros(m)
    lo, hi = max(0, d0 - w), min(m, d0 + w + 1)
    win = np.hanning(2 * w + 3)[1:-1]  # 2w+1 points, non-zero at the ends
    direct[lo:hi] = h[lo:hi] * win[lo - (d0 - w) : hi - (d0 - w)]
    end = min(m, d0 + int(round(early_ms * 1e-3 * sample_rate)))
    early = np.zeros(m)
    early[:end] = h[:end]
    nf = min(end - d0 - 1, int(round(fade_ms * 1e-3 * sample_rate)))
    if nf > 0:
        early[end - nf : end] *= np.cos(np.linspace(0.0, np.pi / 2, nf)) ** 2
    return RirParts(d0, direct, early)


def reference_between(direct, early, early_weight: float):
    """The reference direct + ``early_weight`` x (early - direct): 1 is the early-50 ms target, 0 the
    direct path. Same shape and type as its inputs (numpy arrays or torch tensors, any shape, 16 kHz),
    which ``split_rir`` aligns to the same direct-path delay, so the blend is sample-exact. Shared by
    the loss (``loss.early_weight``) and ``training.oracle --early-weight``, so that both mean one W."""
    if early_weight == 1.0:
        return early
    return direct + early_weight * (early - direct)


# --------------------------------------------------------------------------- signal helpers


def convolve(x: np.ndarray, h: np.ndarray, n: int | None = None) -> np.ndarray:
    """Causal convolution ``x * h`` truncated to ``n`` (default len(x)) samples."""
    return convolve_many(x, [h], n)[0]


def convolve_many(x: np.ndarray, hs: list[np.ndarray], n: int | None = None) -> list[np.ndarray]:
    """``[x * h for h in hs]``, each truncated to ``n`` (default len(x)) samples.

    One FFT of ``x`` is shared by all filters (the mixture, early and direct outputs use
    the same dry signal), at a fast FFT size >= len(x) + len(h) - 1 so nothing wraps."""
    n = len(x) if n is None else n
    m = max(len(h) for h in hs)
    nfft = sfft.next_fast_len(len(x) + m - 1, real=True)
    xf = sfft.rfft(np.asarray(x, np.float64), nfft)
    out = []
    for h in hs:
        y = sfft.irfft(xf * sfft.rfft(np.asarray(h, np.float64), nfft), nfft)[:n]
        out.append(np.pad(y, (0, n - len(y))) if len(y) < n else y)
    return out


def rms_db(x: np.ndarray) -> float:
    """RMS level in dBFS."""
    return float(10.0 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def active_rms_db(x: np.ndarray, sample_rate: int = 16000, frame_ms: float = 20.0) -> float:
    """Level over frames within 30 dB of the loudest ones (ignores pauses), dBFS."""
    n = max(1, int(sample_rate * frame_ms / 1000))
    m = len(x) // n
    if m < 2:
        return rms_db(x)
    e = 10 * np.log10(np.mean(np.square(x[: m * n].reshape(m, n), dtype=np.float64), axis=1) + 1e-20)
    act = e[e > np.percentile(e, 95) - 30.0]
    return float(10 * np.log10(np.mean(10 ** (act / 10)) + 1e-20))


def _biquad(kind: str, f0: float, gain_db: float, q: float, fs: int) -> np.ndarray:
    """RBJ-cookbook biquad as one SOS row [b0 b1 b2 1 a1 a2]."""
    a = 10 ** (gain_db / 40)
    w0 = 2 * np.pi * f0 / fs
    alpha = np.sin(w0) / (2 * q)
    c = np.cos(w0)
    if kind == "peak":
        b = [1 + alpha * a, -2 * c, 1 - alpha * a]
        den = [1 + alpha / a, -2 * c, 1 - alpha / a]
    else:
        sa = 2 * np.sqrt(a) * alpha
        if kind == "lowshelf":
            b = [a * ((a + 1) - (a - 1) * c + sa), 2 * a * ((a - 1) - (a + 1) * c), a * ((a + 1) - (a - 1) * c - sa)]
            den = [(a + 1) + (a - 1) * c + sa, -2 * ((a - 1) + (a + 1) * c), (a + 1) + (a - 1) * c - sa]
        else:  # highshelf
            b = [a * ((a + 1) + (a - 1) * c + sa), -2 * a * ((a - 1) + (a + 1) * c), a * ((a + 1) + (a - 1) * c - sa)]
            den = [(a + 1) - (a - 1) * c + sa, 2 * ((a - 1) - (a + 1) * c), (a + 1) - (a - 1) * c - sa]
    return np.array(b + den) / den[0]


def random_eq(rng: np.random.Generator, cfg: MixConfig) -> np.ndarray:
    """Random gentle microphone colouration: SOS [k, 6] of 1..4 peaks/shelves, +-6 dB.

    Real microphones and preamps are not flat; the model must not treat their tilt as
    something to undo, so the same EQ is applied to the mixture and the targets."""
    fs = cfg.sample_rate
    k = int(rng.integers(cfg.eq_bands[0], cfg.eq_bands[1] + 1))
    rows = []
    for _ in range(k):
        kind = str(rng.choice(["peak", "peak", "lowshelf", "highshelf"]))
        g = float(rng.uniform(-cfg.eq_gain_db, cfg.eq_gain_db))
        if kind == "peak":
            f0, q = float(np.exp(rng.uniform(np.log(150), np.log(6000)))), float(rng.uniform(0.5, 2.0))
        elif kind == "lowshelf":
            f0, q = float(rng.uniform(80, 400)), 0.707
        else:
            f0, q = float(rng.uniform(2000, 6500)), 0.707
        rows.append(_biquad(kind, f0, g, q, fs))
    return np.stack(rows)


def colored_noise(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    """Unit-RMS noise [n]: white, pink (1/f power) or brown (1/f^2 power), shaped in the
    frequency domain so the slope holds over the whole band. Generated at a fast FFT
    length and cropped (an arbitrary n can be a slow, near-prime FFT size)."""
    m = sfft.next_fast_len(n, real=True)
    spec = rng.standard_normal(m // 2 + 1) + 1j * rng.standard_normal(m // 2 + 1)
    f = np.arange(m // 2 + 1, dtype=np.float64)
    f[0] = 1.0
    exponent = {"white": 0.0, "pink": 0.5, "brown": 1.0}[kind]
    x = sfft.irfft(spec / f**exponent, m)[:n]
    return x / (np.sqrt(np.mean(x**2)) + 1e-20)


def delayed_impulse(rng: np.random.Generator, cfg: MixConfig, length: int = 256) -> np.ndarray:
    """A pure delay (0..10 ms), used as the "anechoic" RIR."""
    lo, hi = (int(round(t * 1e-3 * cfg.sample_rate)) for t in cfg.anechoic_delay_ms)
    d = int(rng.integers(lo, hi + 1))
    h = np.zeros(max(length, d + 1))
    h[d] = 1.0
    return h


# --------------------------------------------------------------------------- examples


def make_example(dry: np.ndarray, rir: np.ndarray, rng: np.random.Generator,
                 cfg: MixConfig = MixConfig(), info: dict | None = None,
                 valid_from: int = 0) -> Example:
    """Reverberate ``dry`` [n] with ``rir`` [m] and draw the augmentations from ``rng``.

    Returns an :class:`Example` with mixture/early/direct float32 [n], aligned (all keep
    the direct-path delay). ``valid_from`` is the first sample that will be kept by a
    caller that crops a segment; levels/SNR are measured from there so that a long
    lead-in used only to build up the reverb tail does not bias them. ``info`` (merged into
    the returned info) can carry e.g. rt60/drr of the RIR; the dict also records snr,
    level, eq and whether the anechoic replacement was used."""
    n = len(dry)
    out_info: dict = dict(info or {})
    anechoic = rng.random() < cfg.anechoic_prob
    if anechoic:
        rir = delayed_impulse(rng, cfg)
        out_info.update(rt60=0.0, drr=float("inf"), anechoic=True)
    else:
        out_info["anechoic"] = False
    parts = split_rir(rir, cfg.sample_rate, cfg.early_ms, cfg.direct_half_ms, cfg.early_fade_ms)
    mixture, early, direct = convolve_many(dry, [rir, parts.early, parts.direct], n)
    out_info["direct_index"] = parts.direct_index

    if rng.random() < cfg.eq_prob:
        sos = random_eq(rng, cfg)
        # Same filter on all three: the colouration belongs to the microphone, not the room.
        mixture, early, direct = (sosfilt(sos, s) for s in (mixture, early, direct))
        out_info["eq_bands"] = int(len(sos))
    else:
        out_info["eq_bands"] = 0

    ref = mixture[valid_from:] if valid_from < n else mixture
    level = float(rng.uniform(*cfg.level_dbfs))
    gain = 10 ** ((level - active_rms_db(ref, cfg.sample_rate)) / 20)
    mixture, early, direct = mixture * gain, early * gain, direct * gain

    snr = float("inf")
    if rng.random() < cfg.noise_prob:
        kind = str(rng.choice(list(cfg.noise_kinds)))
        snr = float(rng.uniform(*cfg.snr_db))
        noise = colored_noise(rng, n, kind)
        mixture = mixture + noise * 10 ** ((rms_db(mixture[valid_from:] if valid_from < n else mixture) - snr) / 20)
        out_info["noise"] = kind
    else:
        out_info["noise"] = "none"

    pk = max(np.max(np.abs(mixture)), np.max(np.abs(early)), np.max(np.abs(direct)), 1e-20)
    if pk > cfg.peak_limit:
        scale = cfg.peak_limit / pk
        mixture, early, direct = mixture * scale, early * scale, direct * scale
        level += 20 * np.log10(scale)
    out_info.update(snr=snr, level=level)
    return Example(mixture.astype(np.float32), early.astype(np.float32), direct.astype(np.float32), out_info)
