"""What the prototype's per-sample time-domain LSTM (3 layers x 256) costs on this CPU, beside the shipped model.

    python -m benchmarks.prototype_lstm [--seconds 1.0] [--model models/dereverb-lstm-16k.onnx]

The prototype ran an LSTM over the raw 16 kHz waveform, one sample per step. Its size is fixed by
the recurrence: 4 x 256 x (1 + 256) + 2 x 4 x 256 x 512 = 1.31 M multiply-adds per *sample*, 21 G
MAC/s. This times it with random weights (the cost does not depend on them), one thread, in torch:

* whole: ``--seconds`` of audio in one call (the most favourable case: torch runs the 16000-step
  recurrence in C++ and no stream could do better);
* streaming: one sample per call with the state carried, as a live stream at any block size must
  run a per-sample recurrence (timed on a tenth of ``--seconds``);

and the shipped model in the same run, as ``dereverb bench`` times it (``stream.bench.time_stream``:
the engine in 16 ms blocks on 10 s of the bundled speech clip, one thread). Prints real-time factors (processing time / audio time): above 1 cannot keep up. Needs torch.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.prototype_lstm", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--model", type=Path, default=Path("models/dereverb-lstm-16k.onnx"))
    args = ap.parse_args(argv)
    import torch

    from stream.bench import bench_audio, time_stream
    from stream.model import SessionOptions, StepModel

    torch.set_num_threads(1)
    torch.manual_seed(0)
    sr = 16000
    n = int(args.seconds * sr)
    lstm, head = torch.nn.LSTM(1, 256, 3, batch_first=True), torch.nn.Linear(256, 1)
    x = torch.randn(1, n, 1) * 0.1
    with torch.no_grad():
        head(lstm(x[:, :sr // 10])[0])  # warm-up
        t = time.perf_counter()
        head(lstm(x)[0])
        whole = time.perf_counter() - t
        m, h = max(1, n // 10), None
        t = time.perf_counter()
        for i in range(m):
            y, h = lstm(x[:, i : i + 1], h)
            head(y)
        streaming = (time.perf_counter() - t) / m * n
    step = StepModel.load(args.model, SessionOptions(threads=1))
    ours = time_stream(step, sr, 1, bench_audio(sr, 1, 10.0), step.hop)
    params = sum(p.numel() for p in lstm.parameters()) + sum(p.numel() for p in head.parameters())
    print(f"prototype LSTM 3 x 256, per sample ({params / 1e6:.2f} M parameters, 1.31 M MAC per sample):")
    print(f"  whole {args.seconds:g} s in one call: RTF {whole / args.seconds:.2f}")
    print(f"  streaming, one sample per call:     RTF {streaming / args.seconds:.1f}")
    print(f"shipped model, one {step.hop}-sample block per call (engine + onnxruntime): RTF {ours.rtf:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
