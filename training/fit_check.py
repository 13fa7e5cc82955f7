"""Fitting versus generalisation: SI-SDR gain of checkpoints on held-out and on training examples.

    python -m training.fit_check runs/a/best.pt runs/b/best.pt [--config C] [--count 256]

Scores each checkpoint (torch, from the rest state, as ``training.train.validate`` does) on the
config's validation set and on ``--count`` fresh training-split examples (seed 99). If the training
figure is far above the validation one, the model overfits; if they are close, it underfits and a
bigger or different model, not more data, is what helps.

    python -m training.fit_check models/dereverb-lstm-16k.pt --as-run

With ``--as-run`` each checkpoint is scored as the config's own model started from it, the way
``optim.init_from`` starts a run (``training.train.init_from_checkpoint``: a gated checkpoint continues
without its gate's head), against the config's loss reference: the figure a run's epochs are compared with.

    python -m training.fit_check models/dereverb-lstm-16k.pt --overfit 32 --steps 400 [--scratch]

Can the architecture represent a large gain at all? Trains the checkpoint (or, with ``--scratch``, the
same architecture from random weights, seed 0) on ``--overfit`` fixed reverberant (RT60 >= 0.4 s)
training-split speech examples for ``--steps`` steps (batches of 16 cycling through them, the config's
loss and precision, Adam at ``--lr``, from the rest state), and prints every ``--every`` steps the SI-SDR
gain on those same examples and on the config's held-out validation examples with RT60 >= 0.4 s. A gain far
above the full-data figure on the memorised examples, with none on held-out ones, means the limit is
learning the whole distribution (capacity, training length), not what the mask can express.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from training.config import TrainConfig, load_config
from training.dataset import ReverbDataset
from training.model import MaskLSTM, load_checkpoint
from training.train import DEFAULT_CONFIG, _collate, batch_start, compute_loss, init_from_checkpoint, make_loaders, optimise, validate


def overfit(model: MaskLSTM, cfg: TrainConfig, val, count: int, steps: int, lr: float, every: int,
            seed: int = 99) -> list[dict]:
    """Train ``model`` in place on ``count`` fixed reverberant speech examples (see module docstring).

    Args:
        val: the validation loader (batches as ``training.train._collate`` makes them).
    Returns one row per ``every`` steps (step 0 included): the mean SI-SDR gain (dB, against the
    config's target) on the memorised examples and on held-out examples with RT60 >= 0.4 s, and the
    seconds spent training so far.
    """
    pool = ReverbDataset(cfg.data.corpus, cfg.data.rooms, "train", segment_seconds=cfg.data.segment_seconds,
                         length=count * 20, seed=seed, kinds=("speech",))
    # Rendered lazily: stop at the count-th reverberant example instead of rendering the whole pool.
    items = list(itertools.islice((x for x in (pool[i] for i in range(len(pool))) if x["rt60"] >= 0.4), count))
    if len(items) < count:
        raise ValueError(f"found only {len(items)} training examples with RT60 >= 0.4 s")
    bs = cfg.optim.batch_size
    batches = [_collate(items[i:i + bs]) for i in range(0, count, bs)]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rows, rest, spent = [], None, 0.0
    for step in range(steps + 1):
        if step % every == 0:
            rows.append({"step": step, "seconds": round(spent, 1),
                         "memorised": validate(model, batches, cfg)["si_sdr_gain_reverb_db"],
                         "held_out": validate(model, val, cfg)["si_sdr_gain_reverb_db"]})
            print(json.dumps(rows[-1]), flush=True)
        if step == steps:
            break
        t0 = time.perf_counter()
        model.train()
        b = batches[step % len(batches)]
        start, rest = batch_start(model, cfg, b["mixture"].shape[0], step, None, rest)
        loss, _, _ = compute_loss(model, b, cfg, start=start, bf16=cfg.optim.bf16)
        optimise(model, opt, loss, cfg.optim.grad_clip)
        spent += time.perf_counter() - t0
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.fit_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                    help="supplies the data paths, the validation set (its seed) and rest_seconds")
    ap.add_argument("--count", type=int, default=256, help="training-split examples to score")
    ap.add_argument("--overfit", type=int, default=0, metavar="N",
                    help="instead: train on N fixed reverberant examples and report memorised vs held-out gain")
    ap.add_argument("--steps", type=int, default=400, help="with --overfit: training steps")
    ap.add_argument("--every", type=int, default=50, help="with --overfit: steps between reports")
    ap.add_argument("--lr", type=float, default=1e-3, help="with --overfit: Adam learning rate")
    ap.add_argument("--scratch", action="store_true",
                    help="with --overfit: the checkpoint's architecture from random weights (seed 0)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: the config's)")
    ap.add_argument("--as-run", action="store_true",
                    help="score each checkpoint as the config's model started from it (optim.init_from)")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    torch.set_num_threads(args.threads or cfg.optim.threads)
    _, _, _, val = make_loaders(cfg)
    if args.overfit:
        for path in args.checkpoints:
            model, _ = load_checkpoint(path)
            if args.scratch:
                torch.manual_seed(0)
                model = MaskLSTM(model.cfg)
            print(json.dumps({"checkpoint": str(path), "scratch": args.scratch}), flush=True)
            overfit(model, cfg, val, args.overfit, args.steps, args.lr, args.every)
        return 0
    train = ReverbDataset(cfg.data.corpus, cfg.data.rooms, "train", segment_seconds=cfg.data.segment_seconds,
                          length=args.count, seed=99)
    train.preload()
    train_loader = DataLoader(train, batch_size=cfg.optim.batch_size, collate_fn=_collate)
    for path in args.checkpoints:
        if args.as_run:
            model = MaskLSTM(cfg.model)
            init_from_checkpoint(model, path)
            model.eval()
        else:
            model, _ = load_checkpoint(path)
        row = {"checkpoint": str(path), "validation": validate(model, val, cfg), "training": validate(model, train_loader, cfg)}
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
