"""Train the music gate of a trained model (``ModelConfig.music_gate``) as a classifier.

    python -m training.gate [--config training/configs/gate.toml] [--set 'optim.init_from="runs/X/best.pt"']

Everything but the gate's head (``music_gate.*``, ``music_gate_in.*``: one linear layer on the LSTM
output, or two with ``model.music_gate_hidden``) is frozen at the checkpoint ``optim.init_from``, and
the head learns, frame by frame, whether the input is music, by binary cross-entropy against the
example's kind (speech or music, ``data.music_share`` of each). So the model's mask is unchanged
wherever the head says speech, and the head cannot trade speech quality for anything: it only decides
where the mask is used (see ``MaskLSTM.forward``).

Why a classifier and not the dereverberation loss: on music, the early-50 target asks the model to
remove the room from a sustained note, which a mask learned on speech cannot tell from a reverberant
tail; a fine-tune with half the examples music moved the music result by only 0.4 dB (docs/model.md).
Passing music through untouched is what "music must not be mangled" asks for.

Each batch starts as ``training.train.batch_start`` says: from the rest state, or with
``optim.carry_state`` from the state the previous (unrelated) example left. The shipped recipe starts
every example from the rest state, so the head learns that a stream's first frames are uncertain
(docs/model.md, "Music"). Validation every epoch (frame accuracy on held-out
voices, music and rooms, from the rest state); ``best.pt`` (lowest validation cross-entropy) is written
atomically in the training checkpoint format, so ``python -m export`` takes it as it is. A run is a few
minutes, so it does not resume: re-running starts again.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.config import TrainConfig, config_from_cli
from training.model import GATE_HEAD, RECURRENT, MaskLSTM, count_parameters, init_weights, without_gate_head
from training.train import batch_start, optimise, save_atomic

# The shipped gate head's recipe.
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "gate.toml"


def lead_frames(batch: dict, frames: int, hop: int) -> torch.Tensor:
    """True for the frames whose whole analysis window lies in the example's lead (``batch["lead"]``,
    samples; no key: no lead): [B, frames] bool. Frame k reads input samples [(k-1) hop, (k+1) hop)."""
    lead = batch.get("lead")
    if lead is None:
        return torch.zeros(batch["is_music"].shape[0], frames, dtype=torch.bool)
    return torch.arange(frames)[None, :] < (lead // hop)[:, None]


def frame_labels(batch: dict, frames: int, hop: int, lead_label: float) -> torch.Tensor:
    """Target music probability per frame: 1 for music, 0 for speech, ``lead_label`` in a lead
    (nothing sounds yet: neither kind): [B] -> [B, frames]."""
    labels = batch["is_music"][:, None].expand(-1, frames)
    return torch.where(lead_frames(batch, frames, hop), torch.full_like(labels, lead_label), labels)


def gate_step(model: MaskLSTM, batch: dict, start: dict[str, torch.Tensor],
              lead_label: float) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Run ``batch`` from ``start``; returns (cross-entropy against ``frame_labels``, music logits [B, n],
    final recurrent states)."""
    res = model.train_step(batch["mixture"], start)
    logit = res.music_logit
    loss = F.binary_cross_entropy_with_logits(logit, frame_labels(batch, logit.shape[1], model.cfg.hop, lead_label))
    return loss, logit.detach(), {k: v.detach() for k, v in res.state.items() if k in RECURRENT}


@torch.no_grad()
def validate_gate(model: MaskLSTM, loader, rest_seconds: float, lead_label: float, settle_frames: int = 63) -> dict:
    """Cross-entropy and frame accuracy per kind; "settled" leaves out each example's first
    ``settle_frames`` (1 s at hop 16 ms), where the stream has only just started."""
    model.eval()
    losses, right, kinds = [], [], []
    for batch in loader:
        b = batch["mixture"].shape[0]
        loss, logit, _ = gate_step(model, batch, model.rest_state(b, rest_seconds), lead_label)
        losses.append(float(loss) * b)
        n = logit.shape[1]
        # A lead's frames have no right answer; they count as right (validation has no leads anyway).
        labels = frame_labels(batch, n, model.cfg.hop, lead_label)
        ok = ((logit > 0).float() == labels) | lead_frames(batch, n, model.cfg.hop)
        right.append(ok.numpy())
        kinds.append(batch["is_music"].numpy() > 0.5)
    model.train()
    ok, music = np.concatenate(right), np.concatenate(kinds)

    def acc(sel: np.ndarray, part: slice) -> float:
        return float(ok[sel][:, part].mean()) if sel.any() else float("nan")

    return {"loss": float(np.sum(losses) / len(ok)),
            "speech_frames_right": acc(~music, slice(None)), "music_frames_right": acc(music, slice(None)),
            "speech_frames_right_settled": acc(~music, slice(settle_frames, None)),
            "music_frames_right_settled": acc(music, slice(settle_frames, None)),
            "speech_examples": int((~music).sum()), "music_examples": int(music.sum())}


def train_gate(cfg: TrainConfig) -> Path:
    """Train the head; returns the path of ``best.pt``."""
    from tqdm import tqdm

    from training.train import make_loaders

    if not cfg.model.music_gate:
        raise ValueError("the config's model has no music gate (model.music_gate = true)")
    if not cfg.optim.init_from:
        raise ValueError("optim.init_from must name the trained checkpoint the gate is added to")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.optim.threads)
    torch.manual_seed(cfg.optim.seed)
    model = MaskLSTM(cfg.model)
    base = torch.load(cfg.optim.init_from, map_location="cpu", weights_only=True)
    # The head always starts from its own initialisation, so a gated checkpoint (the shipped .pt) can be
    # the base: its other weights are the same as the checkpoint it was trained on.
    init_weights(model, without_gate_head(base["model"]))
    head = []
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(GATE_HEAD))
        if p.requires_grad:
            head.append(p)
    opt = torch.optim.Adam(head, lr=cfg.optim.lr)
    train_ds, _, train_loader, val_loader = make_loaders(cfg)
    steps = math.ceil(len(train_ds) / cfg.optim.batch_size)
    sched = torch.optim.lr_scheduler.ExponentialLR(
        opt, (cfg.optim.lr_final / cfg.optim.lr) ** (1 / max(1, steps * cfg.optim.epochs)))
    print(f"model: {count_parameters(model):,} parameters, {sum(p.numel() for p in head)} trained (the gate's head); "
          f"{steps} steps/epoch", file=sys.stderr)
    best, history, t0 = math.inf, [], time.monotonic()
    for epoch in range(cfg.optim.stop_epoch):
        train_ds.set_epoch(epoch)
        carried, rest, running = None, None, []
        for step, batch in enumerate(tqdm(train_loader, desc=f"gate epoch {epoch}", total=steps, file=sys.stderr)):
            start, rest = batch_start(model, cfg, batch["mixture"].shape[0], step, carried, rest)
            loss, _, carried = gate_step(model, batch, start, cfg.data.lead_label)
            optimise(model, opt, loss, cfg.optim.grad_clip)  # the frozen weights have no gradients to clip
            sched.step()
            running.append(float(loss.detach()))
        val = validate_gate(model, val_loader, cfg.optim.rest_seconds, cfg.data.lead_label)
        record = {"epoch": epoch, "train_loss": float(np.mean(running)), **val,
                  "elapsed_s": round(time.monotonic() - t0, 1)}
        history.append(record)
        print(json.dumps(record), file=sys.stderr)
        if val["loss"] < best:
            best = val["loss"]
            # The card describes the whole model: the base checkpoint's training, then the gate's.
            summary = {**base.get("summary", {}),
                       "music_gate": {"config": cfg.to_dict(), "base_checkpoint": cfg.optim.init_from,
                                      "epochs": epoch + 1, "train_seconds": record["elapsed_s"], "val": val,
                                      "trained": "the gate's head only; every other weight is the base checkpoint's"}}
            save_atomic({"model_config": cfg.model.to_dict(), "model": model.state_dict(), "summary": summary,
                         "history": history}, out / "best.pt")
        if time.monotonic() - t0 > cfg.optim.max_minutes * 60:
            print(f"time budget of {cfg.optim.max_minutes} min reached after epoch {epoch}", file=sys.stderr)
            break
    return out / "best.pt"


def main(argv: list[str] | None = None) -> int:
    cfg = config_from_cli(argv, "python -m training.gate", __doc__, DEFAULT_CONFIG)
    print(train_gate(cfg))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
