"""Short side-by-side training runs for choosing between model/loss variants (docs/model.md).

    python -m training.quick_compare complex-snr --steps 400
    python -m training.quick_compare complex-spectral | magnitude-snr | complex-ema-snr

Each run: seed 0, batch 16 of fresh 4 s training examples (seed 7), Adam 1e-3, one thread; every 100
steps it prints the mean SI-SDR gain against the early-50 target on 64 validation examples with
RT60 >= 0.4 s (from the zero state). Weak evidence by design: a few minutes per variant.
"""

from __future__ import annotations

import argparse
import time

import torch

from training.dataset import ReverbDataset
from training.model import MaskLSTM, ModelConfig
from training.train import _collate, si_sdr_db, snr_db, spectral_db

VARIANTS = {
    "complex-snr": ({}, False),
    "complex-spectral": ({}, True),
    "magnitude-snr": ({"mask": "magnitude"}, False),
    "complex-ema-snr": ({"ema_seconds": (0.1, 0.4, 1.6)}, False),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.quick_compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--corpus", default="/work/data/corpus")
    parser.add_argument("--rooms", default="/work/data/rooms")
    args = parser.parse_args(argv)
    kw, spectral = VARIANTS[args.variant]
    torch.set_num_threads(1)
    train = ReverbDataset(args.corpus, args.rooms, "train", 4.0, length=args.steps * 16, seed=7)
    val = ReverbDataset(args.corpus, args.rooms, "val", 4.0, length=160, seed=8)
    items = [v for v in (val[i] for i in range(160)) if v["rt60"] >= 0.4][:64]
    vb = _collate(items)
    torch.manual_seed(0)
    model = MaskLSTM(ModelConfig(**kw))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    lat = model.cfg.step_latency
    t0 = time.time()
    for step in range(args.steps):
        b = _collate([train[step * 16 + j] for j in range(16)])
        out, ref = model.enhance(b["mixture"])[:, lat:], b["early"][:, :-lat]
        loss = -snr_db(out, ref, max_db=30.0)
        if spectral:
            loss = loss + spectral_db(out, ref)
        opt.zero_grad()
        loss.mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        if (step + 1) % 100 == 0:
            with torch.no_grad():
                o, r = model.enhance(vb["mixture"])[:, lat:], vb["early"][:, :-lat]
                gain = float((si_sdr_db(o, r) - si_sdr_db(vb["mixture"][:, :-lat], r)).mean())
            print(f"{args.variant} step {step + 1}: gain {gain:+.3f} dB ({time.time() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
