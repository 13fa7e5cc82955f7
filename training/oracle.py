"""Upper bounds of mask families, with the model's own STFT, on held-out examples.

    python -m training.oracle [--corpus DIR] [--rooms DIR] [--split val] [--count 96] [--seed 1]
    python -m training.oracle --eval-set --seed 0     # the evaluation's own reverberant test examples
    python -m training.oracle --eval-set --seed 0 --framings   # real-mask ceilings for other STFT framings
    python -m training.oracle --eval-set --seed 0 --early-weight 0   # masks ideal for the direct path

For each example the ideal mask of each family is computed from the target (early-50 ms, or with
``--early-weight`` a reference between it and the direct path) and applied to the mixture; the table gives mean SI-SDR against the early-50 target and the direct path
per RT60 bin. It tells what an architecture could reach at best, before any training.

Families: a real mask in [0, 1] (magnitude masking, mixture phase), as the ideal ratio |E| / |X| and
as the phase-sensitive Re(E / X) (the least-squares real mask, bin by bin), complex masks whose
magnitude is bounded by 1, 2 or 4 (phase corrected), and per-bin linear prediction from past frames
(``Y(t) = X(t) - sum_k g_k X(t - delay - k)``, the structure of WPE) with the least-squares filter of
each example: what a model that predicts the late reverberation from the complex past and subtracts
it could reach, with an ideal filter that stays fixed over the example; alone, and followed by the
ideal real mask.

Two adaptive forms of that prediction, which is what a run-time system would have to use:

* WPE with the *target's* power as its PSD (offline, one weighted least-squares filter per
  example): the best case of DNN-WPE, where a network supplies WPE's PSD estimate;
* online linear prediction by recursive least squares from a cold start, fitted to the *true*
  late part (mixture - target) frame by frame: the best case of an adaptive filter driven by a
  network's estimate of the late reverberation.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

from training.dataset import ReverbDataset
from training.metrics import si_sdr
from training.mixing import reference_between
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


def oracle_masks(mix: np.ndarray, early: np.ndarray, cfg: ModelConfig,
                 lp_taps: tuple[int, ...] | None = None) -> dict[str, np.ndarray]:
    """Outputs [n] of each ideal mask family for one example (16 kHz, float64); linear prediction with
    each of ``lp_taps`` filter lengths in hops (default ``LP_TAPS``)."""
    fwd, inv = (m.numpy().astype(np.float64) for m in dft_matrices(cfg.win))
    m_spec, e_spec = stft(mix, fwd, cfg.win, cfg.hop), stft(early, fwd, cfg.win, cfg.hop)
    g = e_spec / (m_spec + 1e-12)
    out = {"real [0,1]": np.clip(np.abs(g), 0, 1) * m_spec,
           # The real mask that minimises each bin's squared error (the phase-sensitive mask): the best
           # any magnitude mask on the mixture's phase can do, bin by bin.
           "real [0,1], phase-sensitive": np.clip(np.real(g), 0, 1) * m_spec}
    for bound in (1, 2, 4):
        out[f"complex |m|<={bound}"] = g / np.maximum(1.0, np.abs(g) / bound) * m_spec
    for taps in LP_TAPS if lp_taps is None else lp_taps:
        lp = m_spec - _lp_estimate(m_spec, e_spec, LP_DELAY, taps)
        out[f"LP {taps} taps"] = lp
        gl = e_spec / (lp + 1e-12)
        out[f"LP {taps} + real mask"] = np.clip(np.abs(gl), 0, 1) * lp
    out["WPE 10, target PSD"] = m_spec - _wpe_estimate(m_spec, np.abs(e_spec) ** 2, LP_DELAY, 10)
    out["RLS LP 10, true late part"] = m_spec - _rls_estimate(m_spec, m_spec - e_spec, LP_DELAY, 10)
    return {k: istft(v, inv, len(mix), cfg.win, cfg.hop) for k, v in out.items()}


# Linear prediction: the late part starts 50 ms after the direct sound, 3 hops of 16 ms; the filter
# spans taps hops before that.
LP_DELAY = 3
LP_TAPS = (10, 30)


def _lp_estimate(m_spec: np.ndarray, e_spec: np.ndarray, delay: int, taps: int) -> np.ndarray:
    """Least-squares per-bin prediction [frames, F] of the non-target part (mixture - target) of each
    frame from the mixture frames ``delay`` .. ``delay + taps - 1`` hops before it."""
    past = _past(m_spec, delay, taps)
    resid = m_spec - e_spec
    est = np.zeros_like(m_spec)
    for f in range(m_spec.shape[1]):
        a = past[:, :, f]
        g, *_ = np.linalg.lstsq(a, resid[:, f], rcond=None)
        est[:, f] = a @ g
    return est


def _past(m_spec: np.ndarray, delay: int, taps: int) -> np.ndarray:
    """Mixture frames t - delay - k for k < taps: [frames, taps, F] (zeros before the start)."""
    frames, bins = m_spec.shape
    past = np.zeros((frames, taps, bins), complex)
    for k in range(taps):
        lag = delay + k
        if lag < frames:
            past[lag:, k] = m_spec[: frames - lag]
    return past


def _wpe_estimate(m_spec: np.ndarray, psd: np.ndarray, delay: int, taps: int) -> np.ndarray:
    """WPE's prediction [frames, F] with a given PSD [frames, F]: per bin, the filter minimising
    sum_t |X(t) - g^H x_past(t)|^2 / psd(t) (one weighted least-squares solve per example)."""
    past = _past(m_spec, delay, taps)
    psd = np.maximum(psd, 1e-3 * psd.mean(axis=0, keepdims=True) + 1e-20)  # WPE's usual floor
    est = np.zeros_like(m_spec)
    for f in range(m_spec.shape[1]):
        a, w = past[:, :, f], 1.0 / psd[:, f]
        r = (a.conj().T * w) @ a
        r += 1e-9 * np.trace(r).real / taps * np.eye(taps)
        est[:, f] = a @ np.linalg.solve(r, (a.conj().T * w) @ m_spec[:, f])
    return est


def _rls_estimate(m_spec: np.ndarray, late: np.ndarray, delay: int, taps: int, alpha: float = 0.998,
                  reg: float = 1e-3) -> np.ndarray:
    """Online prediction [frames, F] of ``late`` [frames, F] from past mixture frames, by per-bin
    recursive least squares (forgetting factor ``alpha``) from a zero filter: each frame is predicted
    with the filter fitted to the frames before it, as a streaming system would."""
    frames, bins = m_spec.shape
    past = _past(m_spec, delay, taps)
    scale = np.mean(np.abs(m_spec) ** 2, axis=0) + 1e-20
    p = np.tile(np.eye(taps, dtype=complex), (bins, 1, 1)) / (reg * scale)[:, None, None]
    g = np.zeros((bins, taps), complex)
    est = np.zeros_like(m_spec)
    for t in range(frames):
        x = past[t].T  # [F, taps]
        est[t] = np.einsum("fk,fk->f", g.conj(), x)
        err = late[t] - est[t]
        px = np.einsum("fij,fj->fi", p, x)
        gain = px / (alpha + np.einsum("fi,fi->f", x.conj(), px).real)[:, None]
        p = (p - gain[:, :, None] * np.einsum("fj,fjm->fm", x.conj(), p)[:, None, :]) / alpha
        g = g + gain * err.conj()[:, None]
    return est


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.oracle", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="/work/data/corpus")
    ap.add_argument("--rooms", default="/work/data/rooms")
    ap.add_argument("--split", default="val")
    ap.add_argument("--count", type=int, default=96)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--framings", action="store_true",
                    help="instead: the two ideal real masks under other STFT framings (window/hop), to see "
                         "whether a finer hop or a longer window would raise the ceiling")
    ap.add_argument("--eval-set", action="store_true",
                    help="use the reverberant speech examples of `python -m training.evaluate` (test split, "
                         "its --count and --seed), where the targets are measured, instead of --split")
    ap.add_argument("--early-weight", type=float, default=1.0, metavar="W",
                    help="compute the ideal masks from direct + W * (early-50 - direct): 1 = the early-50 "
                         "target (default), 0 = the direct path (what a model trained with loss.target = "
                         "'direct' could reach at best); both scores are printed either way")
    ap.add_argument("--lp-taps", type=int, nargs="+", default=list(LP_TAPS), metavar="N",
                    help="linear-prediction filter lengths in hops (default: %(default)s); the model's "
                         "prediction head (ModelConfig.lp_taps) has 4")
    args = ap.parse_args(argv)
    cfg = ModelConfig()
    if args.framings:
        if args.early_weight != 1.0:
            ap.error("--framings computes the early-50 target's masks only; drop --early-weight")
        return _framings(args)
    rows: list[tuple[float, str, float, float]] = []
    edge = cfg.win  # skip the first and last window: the ideal masks need whole frames
    for rt60, mix, early, direct in _examples(args):
        sl = slice(edge, len(mix) - edge)
        rows.append((rt60, "input", si_sdr(mix[sl], early[sl]), si_sdr(mix[sl], direct[sl])))
        reference = reference_between(direct, early, args.early_weight)
        for name, y in oracle_masks(mix, reference, cfg, tuple(args.lp_taps)).items():
            rows.append((rt60, name, si_sdr(y[sl], early[sl]), si_sdr(y[sl], direct[sl])))
        # The target itself: its SI-SDR against the direct path is the most that any system that
        # delivers exactly the early-50 target can score there.
        # (Against early-50 it is the reference itself: no score, printed as "-".)
        rows.append((rt60, "early-50 target itself", np.nan, si_sdr(early[sl], direct[sl])))
    names = list(dict.fromkeys(r[1] for r in rows))
    where = "evaluation-set reverberant" if args.eval_set else args.split
    n_ex = sum(r[1] == "input" for r in rows)
    ideal = {1.0: "the early-50 target", 0.0: "the direct path"}.get(
        args.early_weight, f"direct + {args.early_weight:g} x (early-50 - direct)")
    print(f"ideal masks (from {ideal}) on {n_ex} {where} examples (seed {args.seed}); "
          "SI-SDR dB vs early-50 / vs direct")
    print("| RT60 bin | n | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for lo, hi in BINS:
        sel = [r for r in rows if lo <= r[0] < hi]
        n = sum(1 for r in sel if r[1] == "input")
        if n == 0:  # no example in this bin: nothing to average
            print(f"| {lo}-{hi if hi < 99 else ''} s | 0 | " + " | ".join("-" for _ in names) + " |")
            continue
        cells = []
        for name in names:
            e = np.mean([r[2] for r in sel if r[1] == name])
            d = np.mean([r[3] for r in sel if r[1] == name])
            cells.append(f"{e:.1f} / {d:.1f}" if np.isfinite(e) else f"- / {d:.1f}")
        print(f"| {lo}-{hi if hi < 99 else ''} s | {n} | " + " | ".join(cells) + " |")
    return 0


# (window, hop) in samples at 16 kHz: the model's, a finer hop, a shorter window, and a longer window
# (1024 = 64 ms, which the 32 ms latency budget does not allow; shown for scale).
FRAMINGS = ((512, 256), (512, 128), (256, 128), (1024, 256))


def _framings(args: argparse.Namespace) -> int:
    """Mean gain (dB, against early-50) of the ratio and phase-sensitive real masks per framing and
    RT60 bin >= 0.4 s, with scipy's STFT: sqrt-Hann at 50 % overlap, Hann at 75 % (both reconstruct)."""
    import scipy.signal as ss

    gains: dict[tuple[str, int, int, str], list[float]] = {}
    for rt60, mix, early, _ in _examples(args):
        if rt60 < 0.4:
            continue
        b = "0.4-0.8 s" if rt60 < 0.8 else "> 0.8 s"
        for win, hop in FRAMINGS:
            w = ss.get_window("hann", win)
            w = np.sqrt(w) if 2 * hop == win else w
            kw = dict(window=w, nperseg=win, noverlap=win - hop)
            _, _, x = ss.stft(mix, boundary=None, padded=True, **kw)
            _, _, e = ss.stft(early, boundary=None, padded=True, **kw)
            g = e / (x + 1e-12)
            for name, m in (("ratio", np.clip(np.abs(g), 0, 1)), ("phase-sensitive", np.clip(g.real, 0, 1))):
                with warnings.catch_warnings():
                    # istft's NOLA check counts the unpadded edges; the frames scored below are whole.
                    warnings.simplefilter("ignore", UserWarning)
                    _, y = ss.istft(m * x, boundary=False, **kw)
                n = min(len(y), len(early))
                sl = slice(win, n - win)  # whole frames only, as above
                gains.setdefault((b, win, hop, name), []).append(si_sdr(y[sl], early[sl]) - si_sdr(mix[sl], early[sl]))
    print("ideal real masks per framing: mean SI-SDR gain against early-50 (dB)")
    print("| RT60 bin | window / hop (ms) | ratio mask | phase-sensitive mask |")
    print("|---|---|---|---|")
    for b in ("0.4-0.8 s", "> 0.8 s"):
        for win, hop in FRAMINGS:
            r, p = (np.mean(gains.get((b, win, hop, k), [np.nan])) for k in ("ratio", "phase-sensitive"))
            print(f"| {b} | {win / 16:g} / {hop / 16:g} | {r:+.2f} | {p:+.2f} |")
    return 0


def _examples(args: argparse.Namespace):
    """(rt60, mixture, early, direct) float64 [n] per example, from --split or the evaluation's test set."""
    if not args.eval_set:
        ds = ReverbDataset(args.corpus, args.rooms, args.split, segment_seconds=4.0, length=args.count, seed=args.seed)
        for i in range(len(ds)):
            item = ds[i]
            yield (float(item["rt60"]), *(item[k].astype(np.float64) for k in ("mixture", "early", "direct")))
        return
    from training.evaluate import EvalConfig, build_example, plan_examples

    ecfg = EvalConfig(corpus=args.corpus, rooms=args.rooms, count=args.count, seed=args.seed)
    for spec in plan_examples(ecfg):
        if spec.kind == "reverb":
            ex = build_example(spec, ecfg.seconds)
            yield (float(spec.rt60), *(ex[k].astype(np.float64) for k in ("input", "early", "direct")))


if __name__ == "__main__":
    raise SystemExit(main())
