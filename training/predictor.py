"""Per-bin complex recursive-least-squares (RLS) predictor of the late reverberation: a reference step.

Late reverberation is, per STFT bin, a linear function of past frames. For each bin f the predictor
holds a filter ``g[f]`` of K complex taps over the regressor ``x[f] = (X(t - D), ..., X(t - D - K + 1))``
(the past input frames, delay D hops so the early part is never predicted) and the inverse of its
exponentially weighted correlation matrix ``P[f]`` (K x K, Hermitian positive definite). One hop:

* :func:`predict`: ``pred[f] = g[f]^H x[f]``, the late part of frame t;
* :func:`update`: the RLS update of ``g`` and ``P`` towards a target ``d[f]`` (the late part as the
  caller knows it: the true late part in an oracle, the input minus a network's early estimate in a
  run-time system), with forgetting factor ``lam``.

Numerics for streams of hours (float32 included):

* the update of ``P`` is written in a Hermitian form (``P - k (P x)^H``) and symmetrised;
* a bin whose regressor energy ``x^H x / K`` is at or below ``floor`` (digital silence, a muted input)
  is not updated at all: no forgetting, so ``P`` cannot grow by ``1 / lam`` per hop with nothing to
  learn (0.998 ** -3750: 1800 times in a silent minute);
* ``level[f]`` is a bias-corrected running mean (forgetting ``lam``, active hops only) of the
  regressor's power per tap, the scale of ``P``'s start and bound; a bin that has never been active
  measures it over its first ``settle`` active hops before it learns;
* a hop louder than ``clip`` times the level (a burst) has its regressor and target scaled down to
  that, together (the relation between them is kept), so that it cannot fill the correlation for the
  minutes the forgetting factor takes to discard it;
* ``P``'s trace is bounded by its start value ``K / (delta * level)``: above it ``P`` is scaled back;
* a bad sign (a non-finite value, a diagonal entry or ``x^H P x`` below zero, which an indefinite
  ``P`` gives) re-starts that bin: ``P = I / (delta * level)``; a non-finite filter is zeroed too.

Everything is a pure function of explicit arrays (no hidden state), elementwise over bins with
small K x K products, so it maps onto real-valued torch / ONNX tensors (re and im parts) later.
Shapes: ``g`` [F, K] complex, ``P`` [F, K, K] complex, ``level`` and ``weight`` [F] real, ``x`` [F, K] complex,
``d`` and ``pred`` [F] complex. The dtype of the state (complex64 or complex128) sets the precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PredictorConfig:
    """Predictor settings. Times in hops of the STFT (16 ms at 256 / 16 kHz).

    taps: K, past frames per bin.
    delay: D, hops between the predicted frame and the newest frame it is predicted from (3 = 48 ms,
        so the first 50 ms after the direct sound, the early-50 target, is never predicted).
    lam: forgetting factor per hop (0.998: a memory of about 500 hops, 8 s).
    delta: start (and upper bound) of P is I / (delta * power): the weight of the prior "filter = 0"
        in units of the regressor's power.
    floor: regressor energy per tap (|X|^2, the model's STFT scale) below which a bin is not updated.
    clip: a hop's power is counted as at most this many times the running level (0 = no limit).
    settle: active hops a bin only measures its level before it starts learning (P follows the start
        value for that level, g stays zero): the first hops of a stream are often the quiet onset
        of a sound, and a start scaled to them is far too uncertain.
    """

    taps: int = 10
    delay: int = 3
    lam: float = 0.998
    delta: float = 10.0
    floor: float = 1e-10
    clip: float = 10.0
    settle: int = 32


def init_state(bins: int, cfg: PredictorConfig, power: np.ndarray | None = None,
               dtype: type = np.complex128) -> dict[str, np.ndarray]:
    """Start state: ``g`` zero; ``level`` [F] the regressor's power per tap the predictor is scaled to,
    with ``weight`` [F] the weight of the hops behind it (0 = no hop yet: the bin starts at its first
    active hop, the causal choice); ``P = I / (delta * level)``. A known per-bin ``power`` (e.g. an
    oracle's clip mean) starts ``level`` there with the weight of a full memory."""
    k = cfg.taps
    real = np.float32 if np.dtype(dtype) == np.complex64 else np.float64
    level = np.zeros(bins, real) if power is None else np.asarray(power, real).copy()
    weight = (level > 0).astype(real)
    p = np.zeros((bins, k, k), dtype)
    on = level > 0
    p[on] = np.eye(k, dtype=dtype)[None] / (cfg.delta * level[on])[:, None, None]
    return {"g": np.zeros((bins, k), dtype), "P": p, "level": level, "weight": weight}


def predict(g: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``g^H x`` per bin: g, x [F, K] -> [F]."""
    return np.einsum("fk,fk->f", g.conj(), x)


def update(state: dict[str, np.ndarray], x: np.ndarray, d: np.ndarray, cfg: PredictorConfig
           ) -> dict[str, np.ndarray]:
    """One RLS update towards target ``d`` [F] from regressor ``x`` [F, K]; returns the new state
    (the input state is not modified). See the module docstring for the safeguards."""
    # A bad state's NaN and inf are caught below (the bin re-starts), not reported as they arise.
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return _update(state, x, d, cfg)


def _update(state: dict[str, np.ndarray], x: np.ndarray, d: np.ndarray, cfg: PredictorConfig
            ) -> dict[str, np.ndarray]:
    g, p, level, weight = state["g"], state["P"], state["level"], state["weight"]
    k = cfg.taps
    lam = cfg.lam
    real = level.dtype
    tiny = np.finfo(real).tiny
    x = x.astype(g.dtype, copy=False)
    d = d.astype(g.dtype, copy=False)
    energy = (np.einsum("fk,fk->f", x.conj(), x).real / k).astype(real)  # [F] power per tap
    active = energy > cfg.floor
    fresh = active & (weight <= 0)
    # Settling: the weight of n active hops from a fresh start is 1 - lam ** n.
    settling = active & (weight < 1 - lam ** cfg.settle)
    # A hop far louder than the running level (a burst) is scaled down to ``clip`` x the level, so it
    # cannot dominate the correlation for the next minutes; while the level is still being measured
    # (a fresh bin's first hop included, also with settle 0), no hop is.
    capped = np.where(fresh | settling | (cfg.clip <= 0), energy, np.minimum(energy, cfg.clip * level))
    scale = np.sqrt(capped / np.maximum(energy, tiny)).astype(real)
    x, d = x * scale[:, None], d * scale
    # The level: a bias-corrected running mean (forgetting lam) of the capped power, over active hops.
    w_new = lam * weight + (1 - lam)
    new_level = np.where(fresh, energy, (lam * weight * level + (1 - lam) * capped) / np.maximum(w_new, tiny))
    new_level = np.where(active, new_level, level).astype(real)
    new_weight = np.where(active, w_new, weight).astype(real)
    eye = np.eye(k, dtype=g.dtype)[None]
    start = eye / (cfg.delta * np.maximum(new_level, tiny))[:, None, None]
    p = np.where(fresh[:, None, None], start, p)

    px = np.einsum("fij,fj->fi", p, x)  # [F, K]
    q = np.einsum("fi,fi->f", x.conj(), px).real  # x^H P x, >= 0 for a positive definite P
    denom = lam + q
    gain = px / denom[:, None]
    err = d - predict(g, x)
    g_new = g + gain * err.conj()[:, None]
    p_new = (p - gain[:, :, None] * px.conj()[:, None, :]) / lam
    p_new = 0.5 * (p_new + p_new.conj().transpose(0, 2, 1))

    # Bound the trace by the start value at the current level (never less certain than a start).
    tr = np.einsum("fii->f", p_new).real
    t_max = k / (cfg.delta * np.maximum(new_level, tiny))
    over = np.isfinite(tr) & (tr > t_max)
    p_new = np.where(over[:, None, None], p_new * (t_max / np.where(over, tr, 1.0))[:, None, None].astype(real), p_new)

    # A bad sign re-starts the bin.
    diag = np.einsum("fii->fi", p_new).real
    bad_p = ~np.isfinite(tr) | (diag <= 0).any(axis=1) | ~(q >= 0) | ~np.isfinite(p_new).all(axis=(1, 2))
    bad_g = ~np.isfinite(g_new).all(axis=1)
    p_new = np.where(bad_p[:, None, None], start, p_new)
    g_new = np.where(bad_g[:, None], 0, g_new)

    p_new = np.where(settling[:, None, None], start, p_new)
    g_new = np.where(settling[:, None], g, g_new)
    keep = ~active
    return {"g": np.where(keep[:, None], g, g_new).astype(g.dtype, copy=False),
            "P": np.where(keep[:, None, None], p, p_new).astype(g.dtype, copy=False),
            "level": new_level, "weight": new_weight}


def regressors(spec: np.ndarray, cfg: PredictorConfig) -> np.ndarray:
    """Regressor of every frame: spec [T, F] -> [T, F, K] with frame t - D - k at k (zero before the
    start)."""
    t_len, bins = spec.shape
    out = np.zeros((t_len, bins, cfg.taps), spec.dtype)
    for k in range(cfg.taps):
        lag = cfg.delay + k
        if lag < t_len:
            out[lag:, :, k] = spec[: t_len - lag]
    return out


def run(spec: np.ndarray, target: np.ndarray, cfg: PredictorConfig, state: dict[str, np.ndarray] | None = None,
        bins: slice | np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Online prediction of ``target`` [T, F] from the past of ``spec`` [T, F]: each frame is predicted
    with the filter fitted to the frames before it, then the filter is updated with that frame's
    target (a streaming system's order). ``bins`` limits prediction to those bins (the others get 0).
    Returns (prediction [T, F], final state)."""
    dtype = state["g"].dtype if state is not None else np.complex128
    sel = np.arange(spec.shape[1]) if bins is None else np.arange(spec.shape[1])[bins]
    x_all = regressors(spec[:, sel].astype(dtype), cfg)
    st = init_state(len(sel), cfg, dtype=dtype) if state is None else state
    pred = np.zeros(spec.shape, dtype)
    for t in range(spec.shape[0]):
        pred[t, sel] = predict(st["g"], x_all[t])
        st = update(st, x_all[t], target[t, sel], cfg)
    return pred, st


def macs_per_hop(bins: int, taps: int) -> dict[str, int]:
    """Real multiply-adds per hop of :func:`predict` plus :func:`update` for ``bins`` bins of ``taps``
    taps (a complex multiply-add = 4 real ones; the Hermitian update computes one triangle of the
    outer product). Per bin: prediction g^H x (K), P x (K^2), x^H P x (K, real part only: 2 per tap),
    gain (K complex / real: 2 per tap), filter update (K), outer product k (P x)^H (K (K + 1) / 2),
    scaling by 1 / lam (folded into the gain: 2 per tap), trace (K, real), the regressor's energy
    (2 per tap), the level, clip and bound (about 12 per bin, the square root and divisions counted
    as one each)."""
    k = taps
    per_bin = 4 * k + 4 * k * k + 2 * k + 2 * k + 4 * k + 4 * (k * (k + 1) // 2) + 2 * k + k + 2 * k + 12
    return {"per_bin": per_bin, "per_hop": per_bin * bins}
