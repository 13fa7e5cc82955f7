"""Does the runtime lose quality the model has? SI-SDR gain of the same weights in torch and through the runtime.

    python -m benchmarks.runtime_vs_torch [--count 24] [--model models/dereverb-lstm-16k.onnx]
        [--corpus /work/data/corpus] [--rooms /work/data/rooms]

On the first ``count`` reverberant test examples at RT60 >= 0.4 s of ``training.evaluate``'s test set
(cold start, 6 s), the mean change of SI-SDR against the early-50 target:

* torch: the checkpoint beside the model (``<name>.pt``, weights only) run as one step from the
  runtime's start state (the card's rest state), output shifted by the step latency, nothing before or after the model;
* runtime: ``stream.dereverb_array`` (DC blocker, block buffering, ONNX step, latency alignment).

The two differ only by what the runtime adds around the model; docs/research.md ("Transparency: the runtime's DC blocker") used
this to find the DC blocker's cost. Needs torch and the generated test data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from training.evaluate import EvalConfig, build_example, plan_examples
from training.metrics import si_sdr


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.runtime_vs_torch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/dereverb-lstm-16k.onnx")
    ap.add_argument("--count", type=int, default=24)
    ap.add_argument("--corpus", default="/work/data/corpus")
    ap.add_argument("--rooms", default="/work/data/rooms")
    args = ap.parse_args(argv)
    import torch

    import stream
    from training.model import load_checkpoint

    torch.set_num_threads(1)
    onnx_path = Path(args.model)
    net, _ = load_checkpoint(onnx_path.with_suffix(".pt"))
    cfg = net.cfg
    runtime = stream.StepModel.load(str(onnx_path))
    rest = {k: torch.from_numpy(v) for k, v in runtime.initial_state(1).items()}  # the stream's start state
    specs = [s for s in plan_examples(EvalConfig(corpus=args.corpus, rooms=args.rooms))
             if s.kind == "reverb" and s.rt60 >= 0.4][: args.count]
    lat, hop = cfg.step_latency, cfg.hop
    gains: dict[str, list[float]] = {"torch": [], "runtime": []}
    for spec in specs:
        ex = build_example(spec, 6.0)
        x, early = ex["input"], ex["early"].astype(np.float64)
        base = si_sdr(x.astype(np.float64), early)
        padded = np.concatenate([x, np.zeros(lat + (-len(x)) % hop, np.float32)])
        with torch.no_grad():
            y = net(torch.from_numpy(padded[None]), *(rest[k] for k in cfg.state_names))[0][0].numpy()
        gains["torch"].append(si_sdr(y[lat : lat + len(x)].astype(np.float64), early) - base)
        y = np.asarray(stream.dereverb_array(x, 16000, model=runtime), np.float64)
        gains["runtime"].append(si_sdr(y, early) - base)
    print(f"{len(specs)} reverberant test examples (RT60 >= 0.4 s), mean change of SI-SDR vs early-50:")
    for name, g in gains.items():
        print(f"  {name:8s} {np.mean(g):+.3f} dB")
    print(f"  runtime - torch: {np.mean(gains['runtime']) - np.mean(gains['torch']):+.3f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
