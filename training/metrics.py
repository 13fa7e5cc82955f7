"""Objective metrics and classical baselines for dereverberation (pure numpy, no torch).

Conventions (as in docs/INTERFACES.md): signals are mono float arrays of shape ``[frames]``
at 16 kHz unless a ``sr`` argument says otherwise. References and estimates must be
time-aligned and of equal length; nothing here searches for a delay, because our mixing
code keeps the direct-path delay in every reference and the engine returns time-aligned
output.

Metrics
    * :func:`si_sdr`   scale-invariant SDR in dB (zero-mean, Le Roux et al. 2019).
    * :func:`pesq_wb`  ITU-T P.862.2 wide-band PESQ (MOS-LQO, about 1.0 .. 4.64), ``pesq`` package.
    * :func:`estoi`    extended STOI (Jensen & Taal 2016), about 0 .. 1, ``pystoi`` package.
    * :class:`DnsmosScorer` / :func:`dnsmos`  non-intrusive DNSMOS P.835 (SIG/BAK/OVRL, 1 .. 5),
      ONNX models shipped inside the ``speechmos`` wheel (no download at run time).

Baselines (nara-wpe, 512-point STFT, shift 128, Blackman window, as used for
/work/shared/anchors.md)
    * :func:`wpe_offline`  iterative batch WPE (whole signal, not causal).
    * :func:`wpe_online`   recursive (RLS) frame-online WPE, causal.
    * :func:`timed`        run a ``[frames] -> [frames]`` system and report its real-time factor.

SRMR is not provided: the only Python implementation (SRMRpy) is not on PyPI, and the
PyPI wrappers (pysepm, torchmetrics) depend on it or on other git-only packages.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "si_sdr",
    "pesq_wb",
    "estoi",
    "DnsmosScorer",
    "dnsmos",
    "wpe_offline",
    "wpe_online",
    "timed",
    "WPE_STFT_SIZE",
    "WPE_STFT_SHIFT",
]

# STFT used by both WPE baselines: 32 ms window / 8 ms shift at 16 kHz (anchors.md setting).
WPE_STFT_SIZE = 512
WPE_STFT_SHIFT = 128

_EPS = 1e-12


# --------------------------------------------------------------------------------------
# Intrusive metrics
# --------------------------------------------------------------------------------------
def _as_mono(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim != 1:
        raise ValueError(f"{name} must be mono [frames], got shape {np.shape(x)}")
    return a


def _check_pair(ref: np.ndarray, est: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r = _as_mono(ref, "ref")
    e = _as_mono(est, "est")
    if r.shape != e.shape:
        raise ValueError(f"ref and est must have the same length, got {r.shape} and {e.shape}")
    return r, e


def si_sdr(est: np.ndarray, ref: np.ndarray) -> float:
    """Scale-invariant signal-to-distortion ratio in dB.

    Args:
        est: estimate, float ``[frames]``.
        ref: reference, float ``[frames]``, time-aligned with ``est`` (same length).

    Both signals are made zero-mean, ``est`` is projected onto ``ref``
    (``target = <est, ref> / |ref|^2 * ref``) and the ratio ``|target|^2 / |est - target|^2``
    is returned in dB. Any non-zero gain applied to ``est`` leaves the value unchanged.
    Identical signals give a very large value (bounded only by float precision and the
    tiny regulariser); an all-zero input gives about -120 dB or lower rather than NaN.
    """
    r, e = _check_pair(ref, est)
    r = r - r.mean()
    e = e - e.mean()
    alpha = np.dot(e, r) / (np.dot(r, r) + _EPS)
    target = alpha * r
    noise = e - target
    return float(10.0 * np.log10((np.dot(target, target) + _EPS) / (np.dot(noise, noise) + _EPS)))


def _to_16k(x: np.ndarray, sr: int) -> np.ndarray:
    if sr == 16000:
        return x
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(int(sr), 16000)
    return resample_poly(x, 16000 // g, int(sr) // g)


def pesq_wb(ref: np.ndarray, est: np.ndarray, sr: int = 16000) -> float:
    """Wide-band PESQ (ITU-T P.862.2, MOS-LQO) of ``est`` against ``ref``.

    Args:
        ref: clean reference, float ``[frames]`` at ``sr`` Hz.
        est: degraded/processed signal, float ``[frames]``, same length and alignment.
        sr: sample rate in Hz; anything other than 16000 is resampled to 16 kHz first
            (wide-band PESQ is only defined at 16 kHz).

    Returns:
        MOS-LQO, about 1.04 (bad) .. 4.64 (identical). NaN if PESQ finds no utterance
        (e.g. silent reference) -- callers should use ``nanmean`` when averaging.

    PESQ aligns levels itself, so absolute gain does not matter.
    """
    from pesq import NoUtterancesError, pesq

    r, e = _check_pair(ref, est)
    r16 = _to_16k(r, sr).astype(np.float32)
    e16 = _to_16k(e, sr).astype(np.float32)
    try:
        return float(pesq(16000, r16, e16, "wb"))
    except NoUtterancesError:
        return float("nan")


def estoi(ref: np.ndarray, est: np.ndarray, sr: int = 16000) -> float:
    """Extended STOI of ``est`` against ``ref`` (pystoi, resamples to 10 kHz internally).

    Args:
        ref: clean reference, float ``[frames]`` at ``sr`` Hz.
        est: processed signal, float ``[frames]``, same length and alignment.
        sr: sample rate in Hz.

    Returns:
        ESTOI, roughly 0 .. 1 (1 = identical).
    """
    from pystoi import stoi

    r, e = _check_pair(ref, est)
    return float(stoi(r, e, int(sr), extended=True))


# --------------------------------------------------------------------------------------
# DNSMOS (non-intrusive)
# --------------------------------------------------------------------------------------
def _hz_to_mel_slaney(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, np.log(6.4) / 27.0
    mel = f / f_sp
    hi = f >= min_log_hz
    mel[hi] = min_log_mel + np.log(f[hi] / min_log_hz) / logstep
    return mel


def _mel_to_hz_slaney(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, np.log(6.4) / 27.0
    f = f_sp * m
    hi = m >= min_log_mel
    f[hi] = min_log_hz * np.exp(logstep * (m[hi] - min_log_mel))
    return f


class _MelFeatures:
    """Numpy re-implementation of DNSMOS' P.808 input features.

    speechmos computes ``librosa.feature.melspectrogram(n_fft=321, hop=160, n_mels=120,
    hann, centre/zero padding, power 2, Slaney mel)`` followed by
    ``(power_to_db(ref=max, top_db=80) + 40) / 40``. Importing ``librosa.core`` JIT-compiles
    numba kernels, which costs ~14 s the first time on a fresh machine (and ~0.3 s per
    process afterwards); this class gives the same features (max abs error ~1e-6, checked
    against librosa 0.11) without touching librosa at all.
    """

    def __init__(self, sr: int = 16000, n_fft: int = 321, hop: int = 160, n_mels: int = 120) -> None:
        self.n_fft, self.hop = n_fft, hop
        # periodic Hann, as scipy.signal.get_window("hann", n, fftbins=True) used by librosa
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
        fft_f = np.fft.rfftfreq(n_fft, 1.0 / sr)
        mel_f = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(np.array([0.0]))[0],
                                              _hz_to_mel_slaney(np.array([sr / 2.0]))[0], n_mels + 2))
        fdiff = np.diff(mel_f)
        ramps = np.subtract.outer(mel_f, fft_f)
        lower = -ramps[:-2] / fdiff[:-1, None]
        upper = ramps[2:] / fdiff[1:, None]
        weights = np.maximum(0.0, np.minimum(lower, upper))
        weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]  # Slaney area normalisation
        self.basis = weights.astype(np.float32)  # [n_mels, n_fft // 2 + 1]

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """``audio [samples]`` float -> features ``[frames, n_mels]`` float32."""
        pad = self.n_fft // 2
        a = np.pad(np.asarray(audio, dtype=np.float32), (pad, pad))
        frames = np.lib.stride_tricks.sliding_window_view(a, self.n_fft)[:: self.hop]
        spec = np.abs(np.fft.rfft(frames * self.window, axis=-1)) ** 2  # [frames, bins]
        mel = spec.astype(np.float32) @ self.basis.T  # [frames, n_mels]
        db = 10.0 * np.log10(np.maximum(mel, 1e-10))
        db -= 10.0 * np.log10(max(float(mel.max()), 1e-10))
        db = np.maximum(db, db.max() - 80.0)
        return ((db + 40.0) / 40.0).astype(np.float32)


def _make_speechmos_dnsmos(primary: str, p808: str, opts: Any) -> Any:
    """A ``speechmos.dnsmos.DNSMOS`` whose sessions use ``opts`` and whose features avoid librosa."""
    import onnxruntime as ort
    import speechmos.dnsmos as sd

    class _Dnsmos(sd.DNSMOS):  # type: ignore[misc]
        def __init__(self) -> None:  # replaces the parent's default-threaded sessions
            providers = ["CPUExecutionProvider"]
            self.primary_model_path = primary
            self.onnx_sess = ort.InferenceSession(primary, opts, providers=providers)
            self.p808_onnx_sess = ort.InferenceSession(p808, opts, providers=providers)
            self._mel = _MelFeatures()

        def audio_melspec(self, audio: np.ndarray, n_mels: int = 120, frame_size: int = 320,
                          hop_length: int = 160, sr: int = 16000, to_db: bool = True) -> np.ndarray:
            if (n_mels, frame_size, hop_length, sr, to_db) != (120, 320, 160, 16000, True):
                return super().audio_melspec(audio, n_mels, frame_size, hop_length, sr, to_db)
            return self._mel(audio)

    return _Dnsmos()


class DnsmosScorer:
    """DNSMOS P.835 scorer using the ONNX models bundled in the ``speechmos`` wheel.

    Loading the two ONNX sessions takes ~0.1-0.5 s, so create one scorer per process and
    reuse it (this object *is* the cache; there is no module-level singleton).

    Args:
        threads: onnxruntime intra-op threads. Default 1 so that several evaluation worker
            processes can run side by side on a small machine without oversubscription.
        personalized: use the personalised DNSMOS model (penalises interfering talkers).
    """

    SAMPLE_RATE = 16000

    def __init__(self, threads: int = 1, personalized: bool = False) -> None:
        import onnxruntime as ort
        import speechmos.dnsmos as sd

        pkg = os.path.dirname(os.path.abspath(sd.__file__))
        primary = os.path.join(pkg, "pdnsmos_models" if personalized else "dnsmos_models", "sig_bak_ovr.onnx")
        p808 = os.path.join(pkg, "dnsmos_models", "model_v8.onnx")
        for path in (primary, p808):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"DNSMOS model missing from the speechmos wheel: {path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        self._model = _make_speechmos_dnsmos(primary, p808, opts)
        self._personalized = personalized

    def __call__(self, x: np.ndarray, sr: int = 16000) -> dict[str, float]:
        """Score one clip.

        Args:
            x: mono float ``[frames]`` at ``sr`` Hz, nominally in [-1, 1]. Clips shorter than
               9.01 s are tiled by speechmos (as in Microsoft's reference script); longer
               clips are scored on 9.01 s windows hopped by 1 s and averaged.
            sr: sample rate in Hz; resampled to 16 kHz if different.

        Returns:
            ``{"OVRL": float, "SIG": float, "BAK": float, "P808": float}`` (MOS, ~1..5).
        """
        a = _to_16k(_as_mono(x, "x"), sr)
        peak = float(np.max(np.abs(a))) if a.size else 0.0
        # speechmos rejects samples outside [-1, 1]; scale down instead of clipping so an
        # over-range output is judged for its content, not for clipping we introduced.
        if peak > 1.0:
            a = a / peak
        if peak == 0.0:
            a = a + 1e-6  # all-zero input would make its dB mel features -inf
        out = self._model(a.astype(np.float32), self.SAMPLE_RATE, self._personalized)
        return {
            "OVRL": float(out["ovrl_mos"]),
            "SIG": float(out["sig_mos"]),
            "BAK": float(out["bak_mos"]),
            "P808": float(out["p808_mos"]),
        }


def dnsmos(x: np.ndarray, sr: int = 16000, scorer: DnsmosScorer | None = None) -> dict[str, float]:
    """DNSMOS OVRL/SIG/BAK (and P808) of a mono clip ``x [frames]`` at ``sr`` Hz.

    Pass a :class:`DnsmosScorer` to reuse loaded models; without one, a scorer is built for
    this call only (slow when called repeatedly).
    """
    return (scorer if scorer is not None else DnsmosScorer())(x, sr)


# --------------------------------------------------------------------------------------
# WPE baselines (nara-wpe)
# --------------------------------------------------------------------------------------
def _to_channels_first(x: np.ndarray) -> tuple[np.ndarray, bool]:
    """``[frames]`` or ``[frames, ch]`` -> float64 ``[ch, frames]`` and a was-mono flag."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        return a[None, :], True
    if a.ndim == 2:
        return a.T.copy(), False
    raise ValueError(f"x must be [frames] or [frames, ch], got shape {a.shape}")


def _stft(x_cf: np.ndarray) -> np.ndarray:
    """``[ch, frames]`` -> complex ``[ch, T, F]`` with nara-wpe's STFT (fading on)."""
    from nara_wpe.utils import stft

    return stft(x_cf, size=WPE_STFT_SIZE, shift=WPE_STFT_SHIFT)


def _istft(spec: np.ndarray, n: int, mono: bool, dtype: np.dtype) -> np.ndarray:
    """Inverse of :func:`_stft`, cropped to ``n`` samples and back to the input layout.

    nara-wpe's stft pads ``size - shift`` zeros at the start (fading) and istft removes
    them again, so the result is sample-aligned with the input; only the tail padding to
    a whole number of frames has to be cut.
    """
    from nara_wpe.utils import istft

    y = istft(spec, size=WPE_STFT_SIZE, shift=WPE_STFT_SHIFT)[..., :n]
    if y.shape[-1] < n:  # cannot happen with fading+pad, but keep the length contract
        y = np.pad(y, [(0, 0)] * (y.ndim - 1) + [(0, n - y.shape[-1])])
    y = y[0] if mono else y.T
    return np.ascontiguousarray(y, dtype=dtype)


def _single_thread_blas() -> contextlib.AbstractContextManager[Any]:
    """Limit BLAS to one thread while WPE runs.

    WPE solves hundreds of tiny (taps x taps) systems; a multi-threaded BLAS only adds
    synchronisation, and on a loaded 2-core machine its spinning threads made
    ``wpe_offline`` 10-40x slower (0.13 s -> 1-5 s for 5 s of audio). threadpoolctl comes
    with scikit-learn (a librosa dependency of speechmos); without it this is a no-op.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _out_dtype(x: np.ndarray) -> np.dtype:
    dt = np.asarray(x).dtype
    return dt if np.issubdtype(dt, np.floating) else np.dtype(np.float32)


def wpe_offline(x: np.ndarray, taps: int = 10, delay: int = 3, iterations: int = 3) -> np.ndarray:
    """Offline (batch, non-causal) iterative WPE with nara-wpe.

    Args:
        x: 16 kHz signal, ``[frames]`` or ``[frames, ch]`` (multi-channel WPE for ch > 1).
        taps: prediction filter length in STFT frames (8 ms each).
        delay: prediction delay in frames (protects the direct path and early reflections).
        iterations: alternations between PSD estimate and filter estimate.

    Returns:
        Dereverberated signal with the shape and (float) dtype of ``x``, time-aligned.
    """
    from nara_wpe.wpe import wpe_v8

    x_cf, mono = _to_channels_first(x)
    n = x_cf.shape[-1]
    if n == 0:
        return np.zeros(np.shape(x), dtype=_out_dtype(x))
    spec = _stft(x_cf)  # [D, T, F]
    # nara-wpe wants [F, D, T]; wpe_v8 loops over frequencies (its fastest numpy variant).
    with _single_thread_blas():
        out = wpe_v8(spec.transpose(2, 0, 1), taps=taps, delay=delay, iterations=iterations,
                     statistics_mode="full")
    return _istft(out.transpose(1, 2, 0), n, mono, _out_dtype(x))


def wpe_online(x: np.ndarray, taps: int = 10, delay: int = 3, alpha: float = 0.9999) -> np.ndarray:
    """Frame-online (causal, recursive least squares) WPE with nara-wpe's ``online_wpe_step``.

    Follows nara-wpe's online example (PSD of the current frame = mean power over the
    ``taps + delay + 1`` buffered frames; inverse covariance initialised to identity),
    but keeps every output frame aligned with its input frame: the first
    ``taps + delay`` frames, for which there is no full history, pass through unchanged
    (the upstream example drops them, which shifts the output in time).

    Args:
        x: 16 kHz signal, ``[frames]`` or ``[frames, ch]``.
        taps: prediction filter length in STFT frames.
        delay: prediction delay in frames.
        alpha: forgetting factor of the recursive statistics (0.9999 ~ 80 s memory).

    Returns:
        Dereverberated signal with the shape and (float) dtype of ``x``, time-aligned.
        Algorithmic latency of this baseline is one STFT window (512 samples, 32 ms).
    """
    from nara_wpe.wpe import get_power_online, online_wpe_step

    x_cf, mono = _to_channels_first(x)
    n = x_cf.shape[-1]
    if n == 0:
        return np.zeros(np.shape(x), dtype=_out_dtype(x))
    spec = _stft(x_cf).transpose(1, 2, 0)  # [T, F, D]
    n_frames, n_bins, n_ch = spec.shape
    inv_cov = np.tile(np.eye(n_ch * taps, dtype=np.complex128), (n_bins, 1, 1))
    filt = np.zeros((n_bins, n_ch * taps, n_ch), dtype=np.complex128)
    out = spec.copy()
    hist = taps + delay
    with _single_thread_blas():
        for t in range(hist, n_frames):
            buf = spec[t - hist : t + 1]  # [taps+delay+1, F, D], current frame last
            power = get_power_online(buf.transpose(1, 2, 0))
            out[t], inv_cov, filt = online_wpe_step(buf, power, inv_cov, filt, alpha, taps, delay)
    return _istft(out.transpose(2, 0, 1), n, mono, _out_dtype(x))


def timed(fn: Callable[..., np.ndarray], x: np.ndarray, sr: int = 16000, **kwargs: Any) -> tuple[np.ndarray, float, float]:
    """Run ``fn(x, **kwargs)`` and measure it.

    Args:
        fn: a system mapping ``x [frames]`` (at ``sr`` Hz) to a same-length signal.
        x: input signal.
        sr: sample rate of ``x`` in Hz (for the real-time factor).

    Returns:
        ``(y, seconds, rtf)`` where ``seconds`` is wall-clock processing time and
        ``rtf = seconds / (len(x) / sr)`` (below 1 = faster than real time).
    """
    t0 = time.perf_counter()
    y = fn(x, **kwargs)
    dt = time.perf_counter() - t0
    dur = np.shape(x)[0] / float(sr)
    return y, dt, (dt / dur if dur > 0 else float("nan"))
