"""Train the dereverberation model.

    python -m training.train [--config training/configs/train.toml] [--set optim.epochs=3 ...]

The default config is the shipped network's recipe; its music gate's head is trained afterwards by
``python -m training.gate``. ``--set 'optim.init_from="models/dereverb-lstm-16k.pt"'`` fine-tunes the
shipped network instead of starting from random weights (training/configs/train.toml).

Seeded; a progress bar per epoch; validation (SI-SDR improvement against the target) after every
epoch; checkpoints written atomically to ``<out_dir>/last.pt`` (resume point) and ``best.pt``
(best validation), both loadable with ``torch.load(weights_only=True)``. Re-running the same command
resumes from ``last.pt``.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from training.config import TrainConfig, config_from_cli
from training.mixing import reference_between
from training.model import RECURRENT, MaskLSTM, ModelConfig, count_parameters, init_weights, without_gate_head

# The shipped network's recipe: every tool that trains or scores the network defaults to it.
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "train.toml"


def snr_db(est: torch.Tensor, ref: torch.Tensor, eps: float = 1e-8,
           max_db: float | torch.Tensor | None = None) -> torch.Tensor:
    """Per-example SNR in dB of ``est`` against ``ref`` ([B, T] each).

    With ``max_db`` (a number, or one per example [B]) the SNR is soft-thresholded:
    10 log10(|ref|^2 / (|err|^2 + tau |ref|^2)),
    tau = 10^(-max_db / 10). Why: the gradient of a plain dB loss grows as 1 / |err|^2, so examples
    that are already nearly right (dry input, short rooms) dominate every batch and the reverberant
    ones, the point of the model, get almost no signal. Measured on one batch: plain -SNR did not
    improve SI-SDR in 60 steps; the thresholded loss gave +4 to +6.5 dB on the reverberant examples.
    """
    ref_energy = (ref**2).sum(-1)
    noise = ((est - ref) ** 2).sum(-1)
    if max_db is not None:
        noise = noise + 10 ** (-max_db / 10) * ref_energy
    return 10 * torch.log10(ref_energy + eps) - 10 * torch.log10(noise + eps)


def si_sdr_db(est: torch.Tensor, ref: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-example scale-invariant SDR in dB ([B, T] each)."""
    est = est - est.mean(-1, keepdim=True)
    ref = ref - ref.mean(-1, keepdim=True)
    scale = (est * ref).sum(-1, keepdim=True) / ((ref**2).sum(-1, keepdim=True) + eps)
    return snr_db(est, scale * ref, eps)


def compressed_spectrum(x: torch.Tensor, power: float = 0.3) -> torch.Tensor:
    """|X|^power with X's phase, X the 512/256 Hann STFT of ``x`` [B, T] -> complex [B, F, frames]."""
    s = torch.stft(x, 512, 256, window=torch.hann_window(512, device=x.device), return_complex=True)
    return s * s.abs().clamp_min(1e-8) ** (power - 1)


def spectral_db(est: torch.Tensor, ref: torch.Tensor, floor_db: float | torch.Tensor = -30.0) -> torch.Tensor:
    """Per-example error of compressed spectra, complex and magnitude, each in dB relative to the
    target's compressed energy ([B, T] each -> [B]). Why: the time-domain SNR weighs bins by energy,
    so quiet reverb tails (what a listener hears as the room) barely count; power-law compression
    (as in DeepFilterNet's and GTCRN's losses) gives them weight. ``floor_db`` (a number, or one per
    example [B]) caps it like the SNR."""
    so, sr = compressed_spectrum(est), compressed_spectrum(ref)
    energy = (sr.abs() ** 2).sum((-1, -2)) + 1e-8
    tau = 10 ** (floor_db / 10)
    rel_c = ((so - sr).abs() ** 2).sum((-1, -2)) / energy
    rel_m = ((so.abs() - sr.abs()) ** 2).sum((-1, -2)) / energy
    return 10 * torch.log10(rel_c + tau) + 10 * torch.log10(rel_m + tau)


def loss_ceiling_db(mix: torch.Tensor, ref: torch.Tensor, cfg: TrainConfig) -> torch.Tensor | float:
    """Per-example SNR ceiling of the loss (dB): ``loss.snr_max_db``, or with ``loss.snr_cap_margin_db``
    > 0 the input's own SNR against the target plus the margin, clamped to [snr_max_db, snr_cap_max_db]
    (mix and ref [B, T], time-aligned; returns [B]). An example whose input is already close to the
    target is then asked to stay that close (see LossConfig)."""
    lc = cfg.loss
    if lc.snr_cap_margin_db <= 0:
        return lc.snr_max_db
    return (snr_db(mix, ref).detach() + lc.snr_cap_margin_db).clamp(lc.snr_max_db, lc.snr_cap_max_db)


def continued_weights(weights: dict[str, torch.Tensor], model_cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """A checkpoint's weights for a run that continues it (``optim.init_from``). A gated checkpoint
    (the shipped .pt) continues as the ungated network it was trained as: its gate's head reads the
    LSTM output, which the run moves, so the head is dropped and ``training.gate`` trains a new one
    afterwards. A model that has a gate keeps the head it is given."""
    if model_cfg.music_gate:
        return weights
    return without_gate_head(weights)


def init_from_checkpoint(model: MaskLSTM, path: str | Path) -> dict | None:
    """Start ``model`` from the checkpoint at ``path`` as ``optim.init_from`` does: its weights through
    ``continued_weights`` into ``init_weights`` (a grown layer starts at zero, so the grown model starts
    at the checkpoint's quality). Returns the checkpoint's training summary, if it has one."""
    init = torch.load(path, map_location="cpu", weights_only=True)
    init_weights(model, continued_weights(init["model"], model.cfg))
    return init.get("summary")


def loss_reference(batch: dict, cfg: TrainConfig) -> torch.Tensor:
    """The reference the loss compares the output with, [B, T] at 16 kHz: the batch's ``loss.target``
    signal, or with target "early" and ``loss.early_weight`` W < 1, direct + W (early - direct)."""
    if cfg.loss.target == "early":
        return reference_between(batch["direct"], batch["early"], cfg.loss.early_weight)
    return batch[cfg.loss.target]


def compute_loss(model: MaskLSTM, batch: dict, cfg: TrainConfig, start: dict[str, torch.Tensor] | None = None,
                 bf16: bool = False):
    """Negative thresholded SNR of the output against the target, plus the compressed-spectrum terms
    when ``loss.spectral_db_weight`` > 0.

    The step function delays audio by ``step_latency`` samples, so the output is compared with the
    target shifted by the same amount; the first samples (filter warm-up) are excluded. ``start``
    (state name -> tensor, batch on the channel axis) is the state the step starts from (default:
    zeros); carried-state training passes the rest state with the previous example's LSTM state.
    ``bf16`` runs the network under CPU bfloat16 autocast (training steps with ``optim.precision =
    "bfloat16"``); validation keeps float32, as the exported model runs.
    Returns (loss, per-example SI-SDR of output vs target, final recurrent states by name).
    """
    mix = batch["mixture"]
    target = loss_reference(batch, cfg)
    lat = model.cfg.step_latency
    st = start if start is not None else model.initial_state(mix.shape[0])
    # With the predictor in the loop: its predictions streamed hop by hop with the current weights (no
    # gradient: its update is not trained through), then the network over the whole segment on them,
    # which is the streaming step's output computed as one sequence.
    res = model.train_step(mix, st, bf16=bf16)
    out = res.audio[:, lat:]
    ref = target[:, : target.shape[1] - lat]
    cap = loss_ceiling_db(mix[:, : target.shape[1] - lat], ref, cfg)
    loss = -snr_db(out, ref, max_db=cap).mean()
    if cfg.loss.spectral_db_weight > 0:
        loss = loss + cfg.loss.spectral_db_weight * spectral_db(out, ref, floor_db=-cap).mean()
    carried = {k: v.detach() for k, v in res.state.items() if k in RECURRENT}
    return loss, si_sdr_db(out.detach(), ref), carried


def optimise(model: MaskLSTM, opt: torch.optim.Optimizer, loss: torch.Tensor, grad_clip: float) -> None:
    """One optimiser step on ``loss``: gradients, clipped to a global norm of ``grad_clip``, applied."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()


def batch_start(model: MaskLSTM, cfg: TrainConfig, batch: int, step: int, carried: dict[str, torch.Tensor] | None,
                rest: dict[str, torch.Tensor] | None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The state a training batch of ``batch`` slots starts from, and the rest state (recomputed every
    10 steps, as the weights move). Returns (start, rest).

    Carried-state training (``optim.carry_state``): each batch slot starts from the recurrent state the
    previous (unrelated) example left behind (``carried``), so the model must cope with any history, as
    it does when streaming for hours, instead of relying on counters that start at zero with every 4 s
    segment; with probability ``optim.state_reset_prob`` a slot starts from the rest state instead, as
    every stream does at run time. Without it, every slot starts from the rest state."""
    if step % 10 == 0 or rest is None or rest["lstm_h"].shape[1] != batch:
        model.eval()
        rest = model.rest_state(batch, cfg.optim.rest_seconds)
        model.train()
    start = carried if cfg.optim.carry_state and carried is not None and carried["lstm_h"].shape[1] == batch else None
    if start is not None and cfg.optim.state_reset_prob > 0:
        fresh = torch.rand(batch) < cfg.optim.state_reset_prob
        start = {k: torch.where(fresh.reshape(1, batch, *([1] * (v.dim() - 2))), rest[k], v) for k, v in start.items()}
    return {**rest, **(start or {})}, rest


def _score(val: dict, select: str) -> float:
    """The figure that selects best.pt (``optim.select``; higher is better): a key of ``validate``'s
    result, "loss" being negated. A gain that is undefined (a tiny validation set without such
    examples) falls back to the all-example gain."""
    if select == "loss":
        return -val["loss"]
    return val[select] if math.isfinite(val[select]) else val["si_sdr_gain_db"]


def save_atomic(obj: dict, path: Path) -> None:
    """Write to a temporary file then rename, so a crash never leaves a half-written checkpoint."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def make_loaders(cfg: TrainConfig):
    from training.dataset import ReverbDataset
    from training.mixing import MixConfig

    d = cfg.data
    mix = MixConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.mix.items()})
    train = ReverbDataset(d.corpus, d.rooms, "train", segment_seconds=d.segment_seconds,
                          length=d.train_examples_per_epoch, seed=cfg.optim.seed, mix=mix,
                          music_share=d.music_share, lead_prob=d.lead_prob, lead_seconds=tuple(d.lead_seconds))
    val = ReverbDataset(d.corpus, d.rooms, "val", segment_seconds=d.segment_seconds,
                        length=d.val_examples, seed=cfg.optim.seed + 1, mix=mix)
    # Load clips and RIRs once, before the DataLoader forks: workers share the pages copy-on-write.
    # Workers are not persistent, so the epoch set on the dataset here reaches them each epoch.
    train.preload()
    val.preload()
    kw = dict(batch_size=cfg.optim.batch_size, num_workers=d.workers, collate_fn=_collate)
    return train, val, DataLoader(train, shuffle=False, **kw), DataLoader(val, shuffle=False, **kw)


def _collate(items: list[dict]) -> dict:
    keys = ("mixture", "early", "direct")
    batch = {k: torch.from_numpy(np.stack([it[k] for it in items])) for k in keys}
    batch["rt60"] = torch.tensor([float(it.get("rt60", 0.0)) for it in items])
    batch["is_music"] = torch.tensor([float(it.get("is_music", 0.0)) for it in items])
    batch["lead"] = torch.tensor([int(it.get("lead", 0)) for it in items], dtype=torch.int64)
    return batch


@torch.no_grad()
def validate(model: MaskLSTM, loader, cfg: TrainConfig) -> dict:
    model.eval()
    gains, losses, rt60, inputs, music = [], [], [], [], []
    lat = model.cfg.step_latency
    for batch in loader:
        start = model.rest_state(batch["mixture"].shape[0], cfg.optim.rest_seconds)
        loss, sdr_out, _ = compute_loss(model, batch, cfg, start=start)
        target = loss_reference(batch, cfg)
        sdr_in = si_sdr_db(batch["mixture"][:, : target.shape[1] - lat], target[:, : target.shape[1] - lat])
        gains.append((sdr_out - sdr_in).numpy())
        inputs.append(sdr_in.numpy())
        music.append(batch["is_music"].numpy() > 0.5)
        rt60.append(batch["rt60"].numpy())
        losses.append(float(loss))
    model.train()
    gain, rt, s_in, is_music = (np.concatenate(v) for v in (gains, rt60, inputs, music))
    def mean(v: np.ndarray) -> float:
        return float(np.mean(v)) if v.size else float("nan")

    # The mean over all examples is dominated by dry and short rooms, where the input is already
    # 20-40 dB from the target and any change costs many dB; the reverberant mean (RT60 >= 0.4 s) is
    # what the model is for. The near-clean mean (input already >= 25 dB from the target: dry speech,
    # close talkers in small rooms) and the music mean tell whether it leaves alone what it should.
    return {"loss": float(np.mean(losses)), "si_sdr_gain_db": float(np.mean(gain)),
            "si_sdr_gain_reverb_db": mean(gain[rt >= 0.4]), "si_sdr_gain_clean_db": mean(gain[s_in >= 25.0]),
            "si_sdr_gain_music_db": mean(gain[is_music])}


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) training; returns the path of the best checkpoint."""
    from tqdm import tqdm

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.optim.threads)
    torch.manual_seed(cfg.optim.seed)
    random.seed(cfg.optim.seed)
    np.random.seed(cfg.optim.seed)
    model = MaskLSTM(cfg.model)
    base_summary: dict | None = None
    if cfg.optim.init_from:
        base_summary = init_from_checkpoint(model, cfg.optim.init_from)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    train_ds, _, train_loader, val_loader = make_loaders(cfg)
    steps_per_epoch = math.ceil(len(train_ds) / cfg.optim.batch_size)
    total_steps = steps_per_epoch * cfg.optim.epochs
    gamma = (cfg.optim.lr_final / cfg.optim.lr) ** (1 / max(1, total_steps))
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma)
    start_epoch, best, history, elapsed = 0, -math.inf, [], 0.0
    last = out / "last.pt"
    if last.exists():
        ck = torch.load(last, map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start_epoch, best, history = ck["epoch"] + 1, ck["best"], ck["history"]
        elapsed = ck["elapsed_s"]
        torch.set_rng_state(ck["torch_rng"])
        print(f"resumed from {last} at epoch {start_epoch}", file=sys.stderr)
    print(f"model: {count_parameters(model):,} parameters; {steps_per_epoch} steps/epoch", file=sys.stderr)
    t_start = time.monotonic() - elapsed
    if start_epoch == 0 and cfg.optim.init_from and not history:
        # A fine-tuning run's curve starts where its checkpoint stands on this run's validation set
        # (for a grown model, the checkpoint's weights in it): epoch -1.
        record = {"epoch": -1, **validate(model, val_loader, cfg), "elapsed_s": 0.0}
        history.append(record)
        print(json.dumps(record), file=sys.stderr)
        t_start = time.monotonic()
    for epoch in range(start_epoch, cfg.optim.stop_epoch):
        train_ds.set_epoch(epoch)
        model.train()
        bar = tqdm(train_loader, desc=f"epoch {epoch}", total=steps_per_epoch, file=sys.stderr,
                   disable=not sys.stderr.isatty() and os.environ.get("CI") is not None)
        running = []
        carried, rest, step = None, None, 0
        for batch in bar:
            start, rest = batch_start(model, cfg, batch["mixture"].shape[0], step, carried, rest)
            loss, sdr, carried = compute_loss(model, batch, cfg, start, bf16=cfg.optim.bf16)
            step += 1
            optimise(model, opt, loss, cfg.optim.grad_clip)
            sched.step()
            running.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(running[-50:]):.2f}", lr=f"{sched.get_last_lr()[0]:.1e}")
        val = validate(model, val_loader, cfg)
        elapsed = time.monotonic() - t_start
        record = {"epoch": epoch, "train_loss": float(np.mean(running)), **val, "elapsed_s": round(elapsed, 1)}
        history.append(record)
        print(json.dumps(record), file=sys.stderr)
        summary = {
            "config": cfg.to_dict(),
            "epochs": epoch + 1,
            "train_seconds": round(elapsed, 1),
            "audio_hours_seen": round((epoch + 1) * len(train_ds) * cfg.data.segment_seconds / 3600, 2),
            "val": val,
            # The run this one continued, and so on back to the first: the card states the whole recipe.
            **({"base": base_summary} if base_summary else {}),
        }
        score = _score(val, cfg.optim.select)
        ckpt = {
            "model_config": cfg.model.to_dict(),
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "epoch": epoch,
            "best": max(best, score),
            "history": history,
            "elapsed_s": elapsed,
            "torch_rng": torch.get_rng_state(),
            "summary": summary,
        }
        if score > best:
            best = score
            save_atomic({k: ckpt[k] for k in ("model_config", "model", "summary", "history")}, out / "best.pt")
        save_atomic(ckpt, last)
        if elapsed > cfg.optim.max_minutes * 60:
            print(f"time budget of {cfg.optim.max_minutes} min reached after epoch {epoch}", file=sys.stderr)
            break
    return out / "best.pt"


def main(argv: list[str] | None = None) -> int:
    cfg = config_from_cli(argv, "python -m training.train", __doc__, DEFAULT_CONFIG)
    print(train(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
