"""Where in frequency the runtime's output departs from the target: per-octave error on test examples.

    python -m training.band_error --model models/dereverb-lstm-16k.onnx [--kind music] [--min-input-db 10]
        [--count 96] [--seed 0] [--corpus DIR] [--rooms DIR] [--dc-blocker-only]

For each example of ``python -m training.evaluate``'s test set (same --count and --seed) of the
given kind whose input is at least ``--min-input-db`` SI-SDR from the early-50 target (the
near-clean ones, where any damage shows), it runs the runtime (``stream.dereverb_array``, 16 kHz)
and prints, per octave band (1024-point STFT):

* E: the band's share of the target's energy (dB);
* out/in: the output's power over the input's in that band (dB; a mask that cuts shows here);
* err: the band's error energy (output minus the target scaled as SI-SDR scales it) relative to the
  whole scaled target (dB). The bands with the highest err set the example's SI-SDR.

``--dc-blocker-only`` runs only what the runtime does to the audio besides the model (its DC
blocker, ``stream.dcblock``), to tell the runtime's share of the damage from the model's.

Needs the generated corpus and rooms (not torch). docs/research.md ("Transparency: the runtime's DC blocker") quotes it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

EDGES_HZ = (0, 62, 125, 250, 500, 1000, 2000, 4000, 8000)


def band_table(x: np.ndarray, y: np.ndarray, e: np.ndarray, sample_rate: int = 16000) -> list[tuple[int, int, float, float, float]]:
    """Per octave band (lo Hz, hi Hz, E dB, out/in dB, err dB) for input ``x``, output ``y`` and target
    ``e`` (float64 [n] each, time-aligned, at ``sample_rate``); see the module docstring."""
    import scipy.signal as ss

    a = float(np.dot(y, e) / np.dot(e, e))
    f, _, xs = ss.stft(x, sample_rate, nperseg=1024)
    _, _, es = ss.stft(e, sample_rate, nperseg=1024)
    _, _, ys = ss.stft(y, sample_rate, nperseg=1024)
    total = np.sum(np.abs(es) ** 2)
    rows = []
    for lo, hi in zip(EDGES_HZ[:-1], EDGES_HZ[1:]):
        s = (f >= lo) & (f < hi)
        pe, px, py = (float(np.sum(np.abs(v[s]) ** 2)) + 1e-30 for v in (es, xs, ys))
        err = float(np.sum(np.abs(ys[s] - a * es[s]) ** 2)) + 1e-30
        rows.append((lo, hi, 10 * np.log10(pe / total), 10 * np.log10(py / px), 10 * np.log10(err / (a * a * total))))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.band_error", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/dereverb-lstm-16k.onnx"))
    ap.add_argument("--kind", choices=("music", "reverb", "dry"), default="music")
    ap.add_argument("--min-input-db", type=float, default=10.0)
    ap.add_argument("--count", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corpus", default="/work/data/corpus")
    ap.add_argument("--rooms", default="/work/data/rooms")
    ap.add_argument("--dc-blocker-only", action="store_true", help="the runtime's DC blocker alone, no model")
    args = ap.parse_args(argv)
    import stream
    from training.evaluate import EvalConfig, build_example, plan_examples
    from training.metrics import si_sdr

    cfg = EvalConfig(corpus=args.corpus, rooms=args.rooms, count=args.count, seed=args.seed)
    model = stream.StepModel.load(args.model)
    for spec in plan_examples(cfg):
        if spec.kind != args.kind:
            continue
        ex = build_example(spec, cfg.seconds)
        x, e = ex["input"].astype(np.float64), ex["early"].astype(np.float64)
        if si_sdr(x, e) < args.min_input_db:
            continue
        if args.dc_blocker_only:
            from stream import dcblock

            y = dcblock.dc_block(ex["input"][None], dcblock.initial_state(1), dcblock.pole(16000))[0][0].astype(np.float64)
        else:
            y = np.asarray(stream.dereverb_array(ex["input"], 16000, model=model), np.float64)
        print(f"{spec.clip_id} in room {spec.room_id}: SI-SDR vs early-50 {si_sdr(x, e):.1f} -> {si_sdr(y, e):.1f} dB")
        for lo, hi, share, gain, err in band_table(x, y, e):
            print(f"  {lo:>5}-{hi:<5} Hz  E {share:6.1f}  out/in {gain:+5.1f}  err {err:6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
