"""Upper bounds of mask families, with the model's own STFT, on held-out examples.

    python -m training.oracle [--corpus DIR] [--rooms DIR] [--split val] [--count 96] [--seed 1]

For each example the ideal mask of each family is computed from the target (early-50 ms) and
applied to the mixture; the table gives mean SI-SDR against the early-50 target and the direct path
per RT60 bin. It tells what an architecture could reach at best, before any training.

Families: a real mask in [0, 1] (magnitude masking, mixture phase), complex masks whose
magnitude is bounded by 1, 2 or 4 (phase corrected), and per-bin linear prediction from past frames
(``Y(t) = X(t) - sum_k g_k X(t - delay - k)``, the structure of WPE) with the least-squares filter of
each example: what a model that predicts the late reverberation from the complex past and subtracts
it could reach, with an ideal filter that stays fixed over the example; alone, and followed by the
ideal real mask.
"""

from __future__ import annotations

import argparse

import numpy as np

from training.dataset import ReverbDataset
from training.metrics import si_sdr
from training.model import ModelConfig, dft_matrices

BINS = ((0.0, 0.4), (0.4, 0.8), (0.8, 99.0))


def stft(x: np.ndarray, fwd: np.ndarray, win: int, hop: int) -> np.ndarray:
    """Complex STFT [frames, F] of x [n] (float64), windowed as the model does."""
    f = win // 2 + 1
    frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop]
    spec = frames @ fwd
    return spec[:, :f] + 1j * spec[:, f:]


def istft(spec: np.ndarray, inv: np.ndarray, n: int, win: int, hop: int) -> np.ndarray:
    frames = np.concatenate([spec.real, spec.imag], axis=1) @ inv
    y = np.zeros(n)
    for k, fr in enumerate(frames):
        y[k * hop : k * hop + win] += fr
    return y


def oracle_masks(mix: np.ndarray, early: np.ndarray, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Outputs [n] of each ideal mask family for one example (16 kHz, float64)."""
    fwd, inv = (m.numpy().astype(np.float64) for m in dft_matrices(cfg.win))
    m_spec, e_spec = stft(mix, fwd, cfg.win, cfg.hop), stft(early, fwd, cfg.win, cfg.hop)
    g = e_spec / (m_spec + 1e-12)
    out = {"real [0,1]": np.clip(np.abs(g), 0, 1) * m_spec}
    for bound in (1, 2, 4):
        out[f"complex |m|<={bound}"] = g / np.maximum(1.0, np.abs(g) / bound) * m_spec
    for taps in LP_TAPS:
        lp = m_spec - _lp_estimate(m_spec, e_spec, LP_DELAY, taps)
        out[f"LP {taps} taps"] = lp
        gl = e_spec / (lp + 1e-12)
        out[f"LP {taps} + real mask"] = np.clip(np.abs(gl), 0, 1) * lp
    return {k: istft(v, inv, len(mix), cfg.win, cfg.hop) for k, v in out.items()}


# Linear prediction: the late part starts 50 ms after the direct sound, 3 hops of 16 ms; the filter
# spans taps hops before that.
LP_DELAY = 3
LP_TAPS = (10, 30)


def _lp_estimate(m_spec: np.ndarray, e_spec: np.ndarray, delay: int, taps: int) -> np.ndarray:
    """Least-squares per-bin prediction [frames, F] of the non-target part (mixture - target) of each
    frame from the mixture frames ``delay`` .. ``delay + taps - 1`` hops before it."""
    frames, bins = m_spec.shape
    past = np.zeros((frames, taps, bins), complex)
    for k in range(taps):
        lag = delay + k
        if lag < frames:
            past[lag:, k] = m_spec[: frames - lag]
    resid = m_spec - e_spec
    est = np.zeros_like(m_spec)
    for f in range(bins):
        a = past[:, :, f]
        g, *_ = np.linalg.lstsq(a, resid[:, f], rcond=None)
        est[:, f] = a @ g
    return est


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.oracle", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="/work/data/corpus")
    ap.add_argument("--rooms", default="/work/data/rooms")
    ap.add_argument("--split", default="val")
    ap.add_argument("--count", type=int, default=96)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    cfg = ModelConfig()
    ds = ReverbDataset(args.corpus, args.rooms, args.split, segment_seconds=4.0, length=args.count, seed=args.seed)
    rows: list[tuple[float, str, float, float]] = []
    edge = cfg.win  # skip the first and last window: the ideal masks need whole frames
    for i in range(len(ds)):
        item = ds[i]
        mix, early, direct = (item[k].astype(np.float64) for k in ("mixture", "early", "direct"))
        sl = slice(edge, len(mix) - edge)
        rt60 = float(item["rt60"])
        rows.append((rt60, "input", si_sdr(mix[sl], early[sl]), si_sdr(mix[sl], direct[sl])))
        for name, y in oracle_masks(mix, early, cfg).items():
            rows.append((rt60, name, si_sdr(y[sl], early[sl]), si_sdr(y[sl], direct[sl])))
    names = list(dict.fromkeys(r[1] for r in rows))
    print(f"ideal masks on {len(ds)} {args.split} examples (seed {args.seed}); SI-SDR dB vs early-50 / vs direct")
    print("| RT60 bin | n | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for lo, hi in BINS:
        sel = [r for r in rows if lo <= r[0] < hi]
        n = sum(1 for r in sel if r[1] == "input")
        cells = []
        for name in names:
            e = np.mean([r[2] for r in sel if r[1] == name])
            d = np.mean([r[3] for r in sel if r[1] == name])
            cells.append(f"{e:.1f} / {d:.1f}")
        print(f"| {lo}-{hi if hi < 99 else ''} s | {n} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
