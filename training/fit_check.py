"""Fitting versus generalisation: SI-SDR gain of checkpoints on held-out and on training examples.

    python -m training.fit_check runs/default/best.pt runs/subband/best.pt [--config C] [--count 256]

Scores each checkpoint (torch, from the rest state, as ``training.train.validate`` does) on the
config's validation set and on ``--count`` fresh training-split examples (seed 99). If the training
figure is far above the validation one, the model overfits; if they are close, it underfits and a
bigger or different model, not more data, is what helps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from export.onnx_export import load_checkpoint
from training.config import load_config
from training.dataset import ReverbDataset
from training.train import _collate, make_loaders, validate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.fit_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--config", type=Path, default=Path("training/configs/subband.toml"),
                    help="supplies the data paths, the validation set (its seed) and rest_seconds")
    ap.add_argument("--count", type=int, default=256, help="training-split examples to score")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    torch.set_num_threads(cfg.optim.threads)
    _, _, _, val = make_loaders(cfg)
    train = ReverbDataset(cfg.data.corpus, cfg.data.rooms, "train", segment_seconds=cfg.data.segment_seconds,
                          length=args.count, seed=99)
    train.preload()
    train_loader = DataLoader(train, batch_size=cfg.optim.batch_size, collate_fn=_collate)
    for path in args.checkpoints:
        model, _ = load_checkpoint(path)
        row = {"checkpoint": str(path), "validation": validate(model, val, cfg), "training": validate(model, train_loader, cfg)}
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
