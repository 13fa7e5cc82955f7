"""The per-bin complex RLS predictor of :mod:`training.predictor` on real-valued torch tensors.

The same step (prediction ``g^H x``, then the RLS update towards a target with its safeguards: floor
freeze, burst clip, trace bound, re-start on a bad sign), with every complex quantity held as its real
and imaginary parts and every complex product written out as real elementwise products and sums, and
every safeguard a ``torch.where``: no data-dependent Python control flow, so the step traces into an
ONNX graph of elementwise ops and reductions (``export/``) and autograd runs through it.

Shapes (any leading batch axes ``...``, usually [channels]): ``F`` predicted bins, ``K`` taps.
    g   [..., 2, F, K]     filter, re then im on axis -3
    P   [..., 2, F, K, K]  inverse correlation, re (symmetric) then im (antisymmetric)
    level, weight [..., F] the regressor's running power per tap and the weight behind it
    x   [..., 2, F, K]     regressor (frame t - D - k at tap k), d [..., 2, F] target, pred [..., 2, F]
Units: |X|^2 of the model's STFT (``training.model.dft_matrices``), as ``PredictorConfig.floor`` states.
"""

from __future__ import annotations

import torch
from torch import Tensor

from training.predictor import PredictorConfig

# numpy.finfo(float32).tiny: the guard of the reference's divisions.
TINY = 1.1754944e-38


def init_state(batch: int, bins: int, taps: int) -> dict[str, Tensor]:
    """The start state: everything zero (weight 0: each bin starts at its first active hop, as
    :func:`training.predictor.init_state` without a known power)."""
    return {"g": torch.zeros(batch, 2, bins, taps), "P": torch.zeros(batch, 2, bins, taps, taps),
            "level": torch.zeros(batch, bins), "weight": torch.zeros(batch, bins)}


def predict(g: Tensor, x: Tensor) -> Tensor:
    """``g^H x`` per bin: g, x [..., 2, F, K] -> [..., 2, F]."""
    gr, gi = g.unbind(-3)
    xr, xi = x.unbind(-3)
    return torch.stack([(gr * xr + gi * xi).sum(-1), (gr * xi - gi * xr).sum(-1)], dim=-2)


def _nonfinite(v: Tensor, dims: int) -> Tensor:
    """True where any of the last ``dims`` axes of ``v`` holds a NaN or an infinity."""
    bad = ~torch.isfinite(v)
    for _ in range(dims):
        bad = bad.any(-1)
    return bad


def _level(energy: Tensor, level: Tensor, weight: Tensor, cfg: PredictorConfig
           ) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor, Tensor]:
    """The per-bin bookkeeping of an update from the regressor's power per tap ``energy`` [..., F]:
    (active, fresh, settling or None, the regressor's scale for the burst clip, the new level, the new
    weight). A bin only measures its level for its first ``settle`` active hops: the weight of n active
    hops from a fresh start is 1 - lam ** n (settle 0: never; a fresh bin's own hop still sets its
    level)."""
    lam = cfg.lam
    active = energy > cfg.floor
    fresh = active & (weight <= 0)
    settling = active & (weight < 1 - lam ** cfg.settle) if cfg.settle > 0 else None
    if cfg.clip > 0:
        unclipped = fresh if settling is None else fresh | settling
        capped = torch.where(unclipped, energy, torch.minimum(energy, cfg.clip * level))
    else:
        capped = energy
    scale = torch.sqrt(capped / torch.clamp(energy, min=TINY))
    w_new = lam * weight + (1 - lam)
    new_level = torch.where(fresh, energy, (lam * weight * level + (1 - lam) * capped) / torch.clamp(w_new, min=TINY))
    new_level = torch.where(active, new_level, level)
    new_weight = torch.where(active, w_new, weight)
    return active, fresh, settling, scale, new_level, new_weight


def update(g: Tensor, p: Tensor, level: Tensor, weight: Tensor, x: Tensor, d: Tensor,
           cfg: PredictorConfig) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One RLS update towards ``d`` from ``x``: returns the new (g, P, level, weight). The same
    arithmetic as :func:`training.predictor.update` (see its module docstring for the safeguards),
    written so that few ops touch the K x K matrices (the step's cost): P stays stacked (re, im), its
    products with x and the outer product are one broadcast product and one sum each.

    The outer product is formed as ``(P x)(P x)^H / (lam + q)`` rather than the reference's
    ``k (P x)^H``: the same value, but exactly Hermitian in floating point (element (j, i) is computed
    from the same two products as element (i, j)), so P stays Hermitian bit for bit without the
    reference's symmetrisation. A non-finite entry anywhere in P is caught by its sum per bin."""
    k = x.shape[-1]
    lam = cfg.lam
    xr, xi = x.unbind(-3)
    energy = (xr * xr + xi * xi).sum(-1) / k  # [..., F] power per tap
    active, fresh, settling, scale, new_level, new_weight = _level(energy, level, weight, cfg)
    x = x * scale[..., None, :, None]
    d = d * scale[..., None, :]
    xr, xi = x.unbind(-3)
    # I (re) and 0 (im), stacked like P: [2, 1, K, K].
    eye = torch.stack([torch.eye(k, dtype=x.dtype, device=x.device), torch.zeros(k, k, dtype=x.dtype, device=x.device)])[:, None]
    start = eye / (cfg.delta * torch.clamp(new_level, min=TINY))[..., None, :, None, None]  # [..., 2, F, K, K]
    p = torch.where(fresh[..., None, :, None, None], start, p)

    # P x: the four real products (Pr, Pi) x (xr, xi) in one broadcast product: [..., 2 (P), 2 (x), F, K].
    terms = (p.unsqueeze(-4) * x.unsqueeze(-2).unsqueeze(-5)).sum(-1)
    pxr = terms[..., 0, 0, :, :] - terms[..., 1, 1, :, :]
    pxi = terms[..., 0, 1, :, :] + terms[..., 1, 0, :, :]
    q = (xr * pxr + xi * pxi).sum(-1)  # Re(x^H P x)
    denom = lam + q
    kr, ki = pxr / denom[..., None], pxi / denom[..., None]
    gr, gi = g.unbind(-3)
    er = d[..., 0, :] - (gr * xr + gi * xi).sum(-1)
    ei = d[..., 1, :] - (gr * xi - gi * xr).sum(-1)
    # g + k conj(err)
    g_new = torch.stack([gr + kr * er[..., None] + ki * ei[..., None], gi + ki * er[..., None] - kr * ei[..., None]], dim=-3)
    # (P x)(P x)^H: re_ij = pxr_i pxr_j + pxi_i pxi_j, im_ij = pxi_i pxr_j - pxr_i pxi_j.
    left = torch.stack([torch.stack([pxr, pxi], -3), torch.stack([pxi, -pxr], -3)], -4)  # [..., 2 (re/im), 2, F, K]
    right = torch.stack([pxr, pxi], -3)  # [..., 2, F, K]
    outer = (left.unsqueeze(-1) * right.unsqueeze(-2).unsqueeze(-5)).sum(-4)  # [..., 2, F, K, K]
    p_new = (p - outer / denom[..., None, :, None, None]) / lam

    # Bound the trace by the start value at the current level.
    flat = p_new.flatten(-2)
    diag = flat[..., 0, :, :: k + 1]  # [..., F, K], the real diagonal
    tr = diag.sum(-1)
    t_max = k / (cfg.delta * torch.clamp(new_level, min=TINY))
    over = torch.isfinite(tr) & (tr > t_max)
    shrink = torch.where(over, t_max / torch.where(over, tr, torch.ones_like(tr)), torch.ones_like(tr))
    p_new = p_new * shrink[..., None, :, None, None]
    diag = diag * shrink[..., None]

    # A bad sign re-starts the bin.
    bad_p = (~torch.isfinite(tr) | (diag <= 0).any(-1) | ~(q >= 0) | ~torch.isfinite(flat.sum(-1).sum(-2)))
    bad_g = ~torch.isfinite(g_new.sum(-1).sum(-2))  # [..., F]

    # A bad bin re-starts; a settling one too, keeping its g; an inactive one keeps its state.
    g_new = torch.where(bad_g[..., None, :, None], torch.zeros_like(g_new), g_new)
    if settling is not None:
        bad_p = bad_p | settling
        g_new = torch.where(settling[..., None, :, None], g, g_new)
    keep = ~active
    p_out = torch.where(keep[..., None, :, None, None], p, torch.where(bad_p[..., None, :, None, None], start, p_new))
    g_out = torch.where(keep[..., None, :, None], g, g_new)
    return g_out, p_out, new_level, new_weight


def update_complex(g: Tensor, p: Tensor, level: Tensor, weight: Tensor, x: Tensor, d: Tensor,
                   cfg: PredictorConfig) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``update`` on the same real-valued states and arguments, computed in complex arithmetic: a
    handful of complex kernels (one batched matrix-vector product for P x) instead of dozens of real
    ones, for the training loop's gradient-free pass over every hop (``MaskLSTM.predictions``). Not
    traceable to ONNX (complex tensors); ``update`` is what the exported step runs, and the two agree
    to float32 rounding (tests/training/test_predictor_torch.py)."""
    k = x.shape[-1]
    lam = cfg.lam
    gc, xc = torch.complex(g[..., 0, :, :], g[..., 1, :, :]), torch.complex(x[..., 0, :, :], x[..., 1, :, :])
    pc = torch.complex(p[..., 0, :, :, :], p[..., 1, :, :, :])
    dc = torch.complex(d[..., 0, :], d[..., 1, :])
    active, fresh, settling, scale, new_level, new_weight = _level((x * x).sum((-3, -1)) / k, level, weight, cfg)
    xc, dc = xc * scale[..., None], dc * scale
    eye = torch.eye(k, dtype=pc.dtype, device=pc.device)
    start = eye / (cfg.delta * torch.clamp(new_level, min=TINY))[..., None, None]  # [..., F, K, K]
    pc = torch.where(fresh[..., None, None], start, pc)
    px = (pc @ xc[..., None])[..., 0]  # P x
    q = (xc.conj() * px).sum(-1).real
    denom = lam + q
    err = dc - (gc.conj() * xc).sum(-1)
    g_new = gc + px / denom[..., None] * err.conj()[..., None]
    # (P x)(P x)^H / (lam + q): exactly Hermitian in floating point, as in ``update``.
    p_new = (pc - px[..., :, None] * px.conj()[..., None, :] / denom[..., None, None]) * (1.0 / lam)
    diag = torch.diagonal(p_new, dim1=-2, dim2=-1).real
    tr = diag.sum(-1)
    t_max = k / (cfg.delta * torch.clamp(new_level, min=TINY))
    over = torch.isfinite(tr) & (tr > t_max)
    shrink = torch.where(over, t_max / torch.where(over, tr, torch.ones_like(tr)), torch.ones_like(tr))
    p_new = p_new * shrink[..., None, None]
    diag = diag * shrink[..., None]
    bad_p = (~torch.isfinite(tr) | (diag <= 0).any(-1) | ~(q >= 0) | ~torch.isfinite(torch.view_as_real(p_new).sum((-1, -2, -3))))
    bad_g = ~torch.isfinite(torch.view_as_real(g_new).sum((-1, -2)))
    g_new = torch.where(bad_g[..., None], torch.zeros_like(g_new), g_new)
    if settling is not None:
        bad_p = bad_p | settling
        g_new = torch.where(settling[..., None], gc, g_new)
    keep = ~active
    p_out = torch.where(keep[..., None, None], pc, torch.where(bad_p[..., None, None], start, p_new))
    g_out = torch.where(keep[..., None], gc, g_new)
    return (torch.stack([g_out.real, g_out.imag], dim=-3), torch.stack([p_out.real, p_out.imag], dim=-4),
            new_level, new_weight)
