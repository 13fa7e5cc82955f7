"""Per-block engine time of two models side by side: which costs more through the whole runtime?

    python -m benchmarks.engine_ab A.onnx B.onnx [--rates 16000 48000] [--block-ms 16] [--repeats 5]

Each model streams the demo clip (speech) and the dry brass clip of the quality tests (music) through a
fresh ``stream.Dereverberator`` in blocks of ``--block-ms``, at each rate; the runs alternate A, B, A, B
(``--repeats`` each), so load drifts hit both alike. Printed: the median over runs of each run's median
per-block time, and B / A. docs/research.md ("The DC blocker's share follows the gate") prices with it the DC blocker's share following the
music gate: A = an export without ``pass_share`` (``git show f9f21d9:models/dereverb-lstm-16k.onnx``,
card likewise), B = the shipped model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

CLIPS = {"speech": None, "music": Path(__file__).resolve().parents[1] / "tests" / "data" / "music_brass.flac"}


def block_times(model, x: np.ndarray, rate: int, block: int) -> float:
    """Median seconds per ``process`` call of ``block`` frames over ``x`` [frames] at ``rate``."""
    from stream import Dereverberator

    d = Dereverberator(model, sample_rate=rate)
    times = []
    for i in range(0, (len(x) // block) * block, block):
        t0 = time.perf_counter()
        d.process(x[i : i + block])
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.engine_ab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="model A (.onnx)")
    ap.add_argument("b", help="model B (.onnx)")
    ap.add_argument("--rates", type=int, nargs="+", default=[16000, 48000])
    ap.add_argument("--block-ms", type=float, default=16.0)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    import soundfile as sf

    from stream import StepModel
    from stream.demo import DEMO_CLIP
    from stream.resample import Resampler

    models = {"A": StepModel.load(args.a), "B": StepModel.load(args.b)}
    for content, path in CLIPS.items():
        sig, sr = sf.read(str(path or DEMO_CLIP), dtype="float32")
        for rate in args.rates:
            x = sig
            if rate != sr:
                rs = Resampler(sr, rate)
                x = rs.step(sig[None, :], rs.initial_state(1))[0][0]
            block = max(1, int(round(rate * args.block_ms / 1000)))
            runs: dict[str, list[float]] = {k: [] for k in models}
            for _ in range(args.repeats):
                for k, m in models.items():
                    runs[k].append(block_times(m, x, rate, block))
            a, b = (1e3 * float(np.median(runs[k])) for k in ("A", "B"))
            print(f"{content:6s} {rate:6d} Hz, {args.block_ms:g} ms blocks: median ms per block "
                  f"A {a:.3f}  B {b:.3f}  B / A {b / a:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
