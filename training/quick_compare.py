"""Short side-by-side training runs for choosing between model/loss variants (docs/model.md).

    python -m training.quick_compare complex-snr --steps 400
    python -m training.quick_compare complex-spectral | magnitude-snr | complex-ema-snr | subband-spectral | subband-snr
    python -m training.quick_compare subband-lp-spectral | complex-lp4-spectral
    python -m training.quick_compare complex-lp4-spectral --init runs/default/best.pt --lr 1e-4
    python -m training.quick_compare complex-two-stage-spectral --init runs/default/best.pt --lr 3e-4

``--init`` starts from a checkpoint's weights; layers the checkpoint lacks (a new prediction head or
second stage, whose output layer is zero at init) keep their initialisation, so the variant starts
exactly at the checkpoint's quality.

Each run: seed 0, batch 16 of fresh 4 s training examples (seed 7), Adam (lr 1e-3 unless --lr), one
thread, float32 (``--precision bfloat16``: the network in bf16, as ``optim.precision`` does); the loss
is ``training.train.compute_loss`` with a 30 dB ceiling (plus the compressed-spectrum terms for the
``-spectral`` variants), from the zero state; every 100 steps it prints the mean SI-SDR gain against
the early-50 target on 64 validation examples with RT60 >= 0.4 s (from the zero state). Weak evidence
by design: a few minutes per variant.

    python -m training.quick_compare --cost

prints, for every variant side by side in one run, its parameters, multiply-adds per second and the
median onnxruntime time of one 16 ms hop (one thread, one channel, random weights: the cost does not
depend on the weights), as a fraction of the hop (real-time factor).
"""

from __future__ import annotations

import argparse
import time

import torch

from training.config import LossConfig, OptimConfig, TrainConfig
from training.dataset import ReverbDataset
from training.model import MaskLSTM, ModelConfig, init_weights
from training.train import _collate, compute_loss, optimise, si_sdr_db

VARIANTS = {
    "complex-snr": ({}, False),
    "complex-spectral": ({}, True),
    "magnitude-snr": ({"mask": "magnitude"}, False),
    "complex-ema-snr": ({"ema_seconds": (0.1, 0.4, 1.6)}, False),
    "subband-spectral": ({"band_width": 8, "layers": 1}, True),
    "subband-snr": ({"band_width": 8, "layers": 1}, False),
    "subband-lp-spectral": ({"band_width": 8, "layers": 1, "lp_taps": 10}, True),
    "complex-lp4-spectral": ({"lp_taps": 4}, True),
    "complex-two-stage-spectral": ({"time_basis": 256}, True),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.quick_compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", nargs="?", choices=sorted(VARIANTS))
    parser.add_argument("--cost", action="store_true", help="print every variant's size and speed instead")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--init", default="", help="start from this checkpoint's weights (new layers stay as initialised)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                        help="the network's precision in training steps (optim.precision); validation stays float32")
    parser.add_argument("--corpus", default="/work/data/corpus")
    parser.add_argument("--rooms", default="/work/data/rooms")
    args = parser.parse_args(argv)
    if args.cost:
        return _costs()
    if args.variant is None:
        parser.error("give a variant, or --cost")
    kw, spectral = VARIANTS[args.variant]
    torch.set_num_threads(1)
    train = ReverbDataset(args.corpus, args.rooms, "train", 4.0, length=args.steps * 16, seed=7)
    val = ReverbDataset(args.corpus, args.rooms, "val", 4.0, length=160, seed=8)
    items = [v for v in (val[i] for i in range(160)) if v["rt60"] >= 0.4][:64]
    vb = _collate(items)
    torch.manual_seed(0)
    model = MaskLSTM(ModelConfig(**kw))
    if args.init:
        try:
            init_weights(model, torch.load(args.init, map_location="cpu", weights_only=True)["model"])
        except ValueError as e:
            parser.error(f"{args.init} and {args.variant}: {e}")
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    cfg = TrainConfig(model=model.cfg, loss=LossConfig(snr_max_db=30.0, spectral_db_weight=1.0 if spectral else 0.0),
                      optim=OptimConfig(precision=args.precision))
    lat = model.cfg.step_latency
    t0 = time.time()
    for step in range(args.steps):
        b = _collate([train[step * 16 + j] for j in range(16)])
        loss, _, _ = compute_loss(model, b, cfg, bf16=cfg.optim.bf16)
        optimise(model, opt, loss, cfg.optim.grad_clip)
        if (step + 1) % 100 == 0:
            with torch.no_grad():
                o, r = model.enhance(vb["mixture"])[:, lat:], vb["early"][:, :-lat]
                gain = float((si_sdr_db(o, r) - si_sdr_db(vb["mixture"][:, :-lat], r)).mean())
            print(f"{args.variant} step {step + 1}: gain {gain:+.3f} dB ({time.time() - t0:.0f} s)", flush=True)
    return 0


def _costs(rounds: int = 2000) -> int:
    """Size and onnxruntime speed of every architecture among the variants (see module docstring)."""
    import tempfile
    from pathlib import Path

    import numpy as np

    from export.onnx_export import export_checkpoint
    from stream.model import SessionOptions, StepModel
    from training.model import count_parameters, macs_per_hop

    models: dict[str, tuple[MaskLSTM, StepModel]] = {}
    seen: set[tuple] = set()
    with tempfile.TemporaryDirectory() as tmp:
        for name, (kw, _) in VARIANTS.items():
            arch = tuple(sorted(kw.items()))
            if arch in seen:
                continue  # the same architecture with another loss
            seen.add(arch)
            model = MaskLSTM(ModelConfig(**kw)).eval()
            ckpt, path = Path(tmp) / f"{name}.pt", Path(tmp) / f"{name}.onnx"
            torch.save({"model_config": model.cfg.to_dict(), "model": model.state_dict()}, ckpt)
            # The runtime's own loader and session settings, one thread; the start state does not
            # change the cost, so no rest state is computed.
            export_checkpoint(ckpt, path, rest_seconds=0.0)
            models[name] = (model, StepModel.load(path, SessionOptions(threads=1)))
        # Interleaved rounds, so a noisy neighbour hits every variant alike.
        times: dict[str, list[float]] = {k: [] for k in models}
        states = {k: step.zero_state(1) for k, (_, step) in models.items()}
        x = (np.random.default_rng(0).standard_normal((1, 256)) * 0.05).astype(np.float32)
        for _ in range(rounds):
            for k, (_, step) in models.items():
                t = time.perf_counter()
                _, states[k] = step.run(x, states[k])
                times[k].append(time.perf_counter() - t)
    print("| variant | params | M MAC/s | median ms per 16 ms hop | RTF |")
    print("|---|---|---|---|---|")
    for k, (model, _) in models.items():
        cfg = model.cfg
        med = float(np.median(times[k][rounds // 10 :]))
        print(f"| {k} | {count_parameters(model) / 1e6:.2f} M | {macs_per_hop(cfg) * cfg.sample_rate / cfg.hop / 1e6:.0f} "
              f"| {med * 1e3:.3f} | {med / (cfg.hop / cfg.sample_rate):.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
