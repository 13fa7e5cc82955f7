"""Upper bounds of mask families, with the model's own STFT, on held-out examples.

    python -m training.oracle [--corpus DIR] [--rooms DIR] [--split val] [--count 96] [--seed 1]
    python -m training.oracle --eval-set --seed 0     # the evaluation's own reverberant test examples
    python -m training.oracle --eval-set --seed 0 --framings   # real-mask ceilings for other STFT framings
    python -m training.oracle --eval-set --seed 0 --early-weight 0   # masks ideal for the direct path
    python -m training.oracle --predictor --seed 0 [--warmup 4 --seconds 8] [--delta 3 10] [--f-max 4000]
    python -m training.oracle --predictor --seed 0 --causal-start --single-pass-only --step M.onnx

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

``--predictor`` prints instead what that adaptive predictor (:mod:`training.predictor`) does with
the shipped network (an ONNX step model, run on STFT frames through its own graph): alone, before
the network, driven by the network's late estimate in a cascade of two network passes, and in a
single causal pass where the network's output of each frame is the predictor's next target (see
:func:`predictor_outputs`), on the evaluation's reverberant examples, cold or after a warm-up; with
``--step``, beside them, what step models (the predictor inside the exported step) give on the same
examples.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

from training.dataset import ReverbDataset
from training.metrics import si_sdr
from training.mixing import reference_between
from training.model import ModelConfig, dft_matrices
from training.predictor import PredictorConfig, init_state, predict, regressors, update
from training.predictor import run as run_predictor

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
                  delta: float = 10.0) -> np.ndarray:
    """Online prediction [frames, F] of ``late`` [frames, F] from past mixture frames, by per-bin
    recursive least squares (forgetting factor ``alpha``, :mod:`training.predictor`) from a zero
    filter: each frame is predicted with the filter fitted to the frames before it, as a streaming
    system would. The inverse correlation starts at ``I / (delta * sigma_f^2)``, sigma_f^2 the clip's
    mean power per bin: delta is the prior's weight in frames' worth of power, 1..30 (a start a
    thousand times larger, delta = 1e-3, overshoots and does not recover within a clip)."""
    cfg = PredictorConfig(taps=taps, delay=delay, lam=alpha, delta=delta)
    state = init_state(m_spec.shape[1], cfg, power=np.mean(np.abs(m_spec) ** 2, axis=0) + 1e-20)
    return run_predictor(m_spec, late, cfg, state)[0]


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
    pred = ap.add_argument_group("predictor rows (--predictor)")
    pred.add_argument("--predictor", action="store_true",
                      help="instead: the network and the per-bin RLS predictor combined with it (see "
                           "predictor_outputs), on the evaluation's reverberant examples (implies --eval-set)")
    pred.add_argument("--model", default="models/dereverb-lstm-16k.onnx", help="ONNX step model (%(default)s)")
    pred.add_argument("--seconds", type=float, default=6.0,
                      help="scored length per example, as training.evaluate's --seconds (%(default)s)")
    pred.add_argument("--warmup", type=float, default=0.0,
                      help="seconds of the same voice and room before the scored part, not scored (0 = cold)")
    pred.add_argument("--taps", type=int, nargs="+", default=[10], help="K, per-bin filter taps")
    pred.add_argument("--delay", type=int, nargs="+", default=[LP_DELAY], help="D, prediction delay in hops")
    pred.add_argument("--lam", type=float, nargs="+", default=[0.998], help="forgetting factor per hop")
    pred.add_argument("--delta", type=float, nargs="+", default=[10.0], help="P starts at I / (delta * sigma_f^2)")
    pred.add_argument("--f-max", type=float, nargs="+", default=[8000.0],
                      help="predict only bins up to this frequency in Hz (%(default)s = all)")
    pred.add_argument("--settle", type=int, default=PredictorConfig.settle,
                      help="with --causal-start: active hops a bin measures its level before it learns (%(default)s)")
    pred.add_argument("--causal-start", action="store_true",
                      help="start P from each bin's first active hop instead of the example's mean power")
    pred.add_argument("--single-pass-only", action="store_true", help="only the single-pass row (faster)")
    pred.add_argument("--step", nargs="+", default=[], metavar="ONNX",
                      help="step models (e.g. exported with the in-step predictor, ModelConfig.rls_taps) run "
                           "whole through the runtime on the same examples and scored the same way: a row each")
    pred.add_argument("--jobs", type=int, default=2, help="worker processes")
    args = ap.parse_args(argv)
    cfg = ModelConfig()
    if args.predictor:
        return _predictor_table(args)
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


class SpectralModel:
    """An ONNX step model of the project's format entered after its analysis: STFT frames in, its
    masked (early-speech estimate) frames out, the same graph and weights as the runtime runs.

    The subgraph between the analysis DFT and the synthesis DFT is cut out of the file (the two
    MatMuls with constant [win, 2F] and [2F, win] matrices), so a predictor's residual can be fed
    to the network frame by frame as a single-pass streaming step would. The music gate's silence
    test reads the time frame; it is given the windowed inverse DFT of the frame (zero exactly when
    the frame is), which differs from the raw frame only in how near -100 dBFS counts as silence.
    States start from the card's rest state, as every stream does.
    """

    def __init__(self, path: str) -> None:
        import onnx
        import onnx.utils
        import onnxruntime as ort

        from stream.model import StepModel, ort_session_options

        step = StepModel.load(path)
        self.cfg = ModelConfig(win=int(step.card["window"]), hop=step.hop)
        self.rest = {k: v for k, v in step.initial_state(1).items() if k not in ("analysis", "ola")}
        graph = onnx.shape_inference.infer_shapes(onnx.load(path))  # the extractor needs every tensor's type
        consts = {o: n for n in graph.graph.node if n.op_type == "Constant" for o in n.output}
        f2 = 2 * (self.cfg.win // 2 + 1)

        def matmul(shape: list[int]):
            for n in graph.graph.node:
                if n.op_type == "MatMul" and n.input[1] in consts:
                    t = onnx.numpy_helper.to_array(consts[n.input[1]].attribute[0].t)
                    if list(t.shape) == shape:
                        return n
            raise ValueError(f"{path}: no DFT MatMul with a constant {shape} matrix")

        analysis, synthesis = matmul([self.cfg.win, f2]), matmul([f2, self.cfg.win])
        self._frames, spec, masked = analysis.input[0], analysis.output[0], synthesis.input[0]
        self._states = list(self.rest)
        sub = onnx.utils.Extractor(graph).extract_model(
            [spec, self._frames, *self._states], [masked, *(f"{k}_out" for k in self._states)])
        self._inputs = [spec, self._frames, *self._states]
        self._session = ort.InferenceSession(sub.SerializeToString(), ort_session_options(1),
                                             providers=["CPUExecutionProvider"])
        self._inv = dft_matrices(self.cfg.win)[1].numpy()

    def start(self) -> dict[str, np.ndarray]:
        """The rest state (one channel)."""
        return {k: v.copy() for k, v in self.rest.items()}

    def run(self, spec: np.ndarray, state: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Frames spec [T, F] complex -> (the network's output frames [T, F] complex128, new state)."""
        flat = np.concatenate([spec.real, spec.imag], axis=1).astype(np.float32)[None]  # [1, T, 2F]
        frames = flat @ self._inv
        outs = self._session.run(None, dict(zip(self._inputs, [flat, frames, *(state[k] for k in self._states)])))
        f = spec.shape[1]
        out = outs[0][0].astype(np.float64)
        return out[:, :f] + 1j * out[:, f:], dict(zip(self._states, outs[1:]))


def predictor_outputs(mix: np.ndarray, early: np.ndarray, model: SpectralModel, pcfg: PredictorConfig,
                      f_max: float = 8000.0, single_pass_only: bool = False, causal_start: bool = False
                      ) -> dict[str, np.ndarray]:
    """Outputs [n] (16 kHz) of the network and of the per-bin RLS predictor's combinations with it,
    for one example (mixture and early-50 target [n], float64); prediction only in bins up to
    ``f_max`` Hz. The predictor's P starts at I / (delta * sigma_f^2), sigma_f^2 the example's mean
    power per bin, or with ``causal_start`` the power of the bin's first active hop (what a stream
    knows). It always predicts from the mixture's past STFT frames:

    * ``model``: the network alone;
    * ``RLS (true late)``: the mixture minus the prediction of its true late part (mixture - target);
    * ``RLS (true late) -> model``: the network on that residual;
    * ``model -> RLS -> model``: the network's late estimate (mixture - its output) drives the
      predictor; the network runs again, from its start state, on the mixture minus the prediction;
    * ``single pass``: per frame, predict with the current filter, the network on the residual gives
      the early estimate E(t), the predictor is updated with the late target X(t) - E(t): one
      network pass, causal, a streaming step's order.
    """
    cfg = model.cfg
    fwd, inv = (m.numpy().astype(np.float64) for m in dft_matrices(cfg.win))
    x, e = stft(mix, fwd, cfg.win, cfg.hop), stft(early, fwd, cfg.win, cfg.hop)
    n_bins = x.shape[1]
    sel = np.arange(n_bins)[np.arange(n_bins) * cfg.sample_rate / cfg.win <= f_max]
    power = None if causal_start else np.mean(np.abs(x[:, sel]) ** 2, axis=0) + 1e-20

    def rls(target: np.ndarray) -> np.ndarray:
        return run_predictor(x, target, pcfg, init_state(len(sel), pcfg, power=power), bins=sel)[0]

    out: dict[str, np.ndarray] = {}
    if not single_pass_only:
        out["model"] = model.run(x, model.start())[0]
        pred = rls(x - e)
        out["RLS (true late)"] = x - pred
        out["RLS (true late) -> model"] = model.run(x - pred, model.start())[0]
        pred = rls(x - out["model"])
        out["model -> RLS -> model"] = model.run(x - pred, model.start())[0]
    past = regressors(x[:, sel], pcfg)
    st, ms = init_state(len(sel), pcfg, power=power), model.start()
    single = np.zeros_like(x)
    for t in range(x.shape[0]):
        r = x[t].copy()
        r[sel] -= predict(st["g"], past[t])
        est, ms = model.run(r[None], ms)
        single[t] = est[0]
        st = update(st, past[t], (x[t] - est[0])[sel], pcfg)
    out["single pass"] = single
    return {k: istft(v, inv, len(mix), cfg.win, cfg.hop) for k, v in out.items()}


_WORKER_MODEL: SpectralModel | None = None
_WORKER_STEPS: dict[str, object] = {}  # step models by path, loaded once per worker


def _predictor_worker(job: tuple) -> list[tuple]:
    """Score one example (runs in a worker process): rows of (rt60, system, gain vs early, vs direct)."""
    global _WORKER_MODEL
    from training.evaluate import SAMPLE_RATE, build_example

    spec, seconds, warmup, model_path, variants, single_pass_only, causal_start, steps = job
    if _WORKER_MODEL is None:
        _WORKER_MODEL = SpectralModel(model_path)
    ex = build_example(spec, seconds, warmup)
    mix, early, direct = (ex[k].astype(np.float64) for k in ("input", "early", "direct"))
    edge = _WORKER_MODEL.cfg.win
    sl = slice(max(edge, int(ex["score_from"])), len(mix) - edge)
    base = si_sdr(mix[sl], early[sl]), si_sdr(mix[sl], direct[sl])
    rows = []
    for i, (pcfg, f_max) in enumerate(variants):
        tag = f"K {pcfg.taps}, D {pcfg.delay}, lam {pcfg.lam:g}, delta {pcfg.delta:g}, <= {f_max / 1000:g} kHz"
        for name, y in predictor_outputs(mix, early, _WORKER_MODEL, pcfg, f_max, single_pass_only, causal_start).items():
            if name == "model" and i > 0:
                continue  # the same network output for every predictor setting
            label = name if name == "model" else f"{name} [{tag}]"
            rows.append((float(spec.rt60), label, si_sdr(y[sl], early[sl]) - base[0], si_sdr(y[sl], direct[sl]) - base[1]))
    for path in steps:
        import stream
        from stream.model import StepModel

        if path not in _WORKER_STEPS:
            _WORKER_STEPS[path] = StepModel.load(path)
        # The runtime's time-aligned output: its frames start one hop earlier (a zero hop first) than
        # the oracle's, which moves where each bin's first active hop falls.
        y = stream.dereverb_array(mix.astype(np.float32), SAMPLE_RATE, model=_WORKER_STEPS[path]).astype(np.float64)
        rows.append((float(spec.rt60), f"step {path}", si_sdr(y[sl], early[sl]) - base[0], si_sdr(y[sl], direct[sl]) - base[1]))
    return rows


def _predictor_table(args: argparse.Namespace) -> int:
    """The predictor rows on the evaluation's reverberant examples: mean dSI-SDR (dB, over the input)
    against early-50 and the direct path per RT60 bin."""
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor

    from training.evaluate import EvalConfig, plan_examples

    ecfg = EvalConfig(corpus=args.corpus, rooms=args.rooms, count=args.count, seed=args.seed)
    specs = [s for s in plan_examples(ecfg) if s.kind == "reverb"]
    variants = [(PredictorConfig(taps=k, delay=d, lam=lam, delta=delta, settle=args.settle), f_max)
                for k in args.taps for d in args.delay for lam in args.lam for delta in args.delta
                for f_max in args.f_max]
    jobs = [(s, args.seconds, args.warmup, args.model, variants, args.single_pass_only, args.causal_start, args.step)
            for s in specs]
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"  # one thread per worker, inherited by the spawned processes
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            rows = [r for res in pool.map(_predictor_worker, jobs) for r in res]
    else:
        rows = [r for job in jobs for r in _predictor_worker(job)]
    names = list(dict.fromkeys(r[1] for r in rows))
    warm = f"{args.warmup:g} s warm-up (not scored) + " if args.warmup > 0 else "cold, "
    warm = ("P from each bin's first active hop; " if args.causal_start else "P from the example's mean power; ") + warm
    print(f"{len(specs)} evaluation-set reverberant examples (seed {args.seed}), {warm}up to {args.seconds:g} s "
          f"scored; {args.model}; dSI-SDR dB over the input, vs early-50 / vs direct")
    print("| system | " + " | ".join(f"RT60 {lo:g}-{hi:g} s" if hi < 99 else f"RT60 > {lo:g} s" for lo, hi in BINS) + " |")
    print("|---|" + "---|" * len(BINS))
    counts = [sum(1 for r in rows if r[1] == names[0] and lo <= r[0] < hi) for lo, hi in BINS]
    print("| n | " + " | ".join(str(c) for c in counts) + " |")
    for name in names:
        cells = []
        for lo, hi in BINS:
            sel = [r for r in rows if r[1] == name and lo <= r[0] < hi]
            cells.append(f"{np.mean([r[2] for r in sel]):+.2f} / {np.mean([r[3] for r in sel]):+.2f}" if sel else "-")
        print(f"| {name} | " + " | ".join(cells) + " |")
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
