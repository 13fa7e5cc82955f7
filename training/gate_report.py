"""What a music-gated checkpoint does, on validation data (docs/model.md, "Music").

    python -m training.gate_report CKPT [--set model.music_hold_seconds=0 ...] [--corpus DIR] [--rooms DIR]

Measurements, each through the torch model (the exported graph is the same step, parity-tested):

* blend: 192 validation examples (half music, seed 21), each from the rest state; mean SI-SDR gain
  against the early-50 target for music (and its worst example) and for speech (RT60 >= 0.4 s, all),
  and the mean pass-through share of reverberant speech (RT60 >= 0.4 s; what passes there is mostly
  the tails in pauses, which DNSMOS hears: docs/research.md, "A linear gate head that knows a noise floor");
  ``blend_after_a_lead``: the same, each example starting with 0.05 to 1.5 s of its noise alone (a
  recording or a stream that starts before the first sound), and music scored from the lead's end;
* noise floor: 20 s of white, pink and brown noise at -80 and -60 dBFS from the rest state (a live
  microphone idling): the mean pass-through share, and the held share at the end (1: the hold is still
  open when the first sound comes);
* switching: the same examples back to back as 16 streams (the content changes every 4 s, state
  carried), the share of frames the head gets right after each change's first second;
* speech over music: 16 validation speech examples with a validation music clip mixed in before the
  room (rooms of RT60 >= 0.4 s) at 20 / 10 / 5 / 0 dB below the speech, and none: the mean share of
  frames passed through.

``--set`` changes the checkpoint's model config (e.g. the hold) before loading the weights. Needs the
generated corpus and rooms, and torch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from training.config import parse_model_sets
from training.model import MaskLSTM, load_checkpoint
from training.train import _collate, si_sdr_db


@torch.no_grad()
def blend(model: MaskLSTM, batches: list[dict]) -> dict:
    lat = model.cfg.step_latency
    gain, after, music, rt60, share = [], [], [], [], []
    for b in batches:
        start = model.rest_state(b["mixture"].shape[0], 4.0)
        res = model.step(b["mixture"], start)
        y = res.audio
        share.append(res.pass_share.mean(-1).numpy())
        ref = b["early"][:, : b["early"].shape[1] - lat]
        x = b["mixture"][:, : ref.shape[1]]
        gain.append((si_sdr_db(y[:, lat:], ref) - si_sdr_db(x, ref)).numpy())
        # From the lead's end: in the lead the target is silence and the mixture noise, so the gain over
        # the whole example also scores how much of that noise the model removed, not what it did to the
        # music (a head that passed the lead's noise through made near-clean music "gain" that way).
        lead = b["lead"].tolist() if "lead" in b else [0] * len(x)
        after.append(np.array([float(si_sdr_db(y[j:j + 1, lat + n:], ref[j:j + 1, n:])
                                     - si_sdr_db(x[j:j + 1, n:], ref[j:j + 1, n:])) for j, n in enumerate(lead)]))
        music.append(b["is_music"].numpy() > 0.5)
        rt60.append(b["rt60"].numpy())
    g, a, m, rt, s = (np.concatenate(v) for v in (gain, after, music, rt60, share))
    return {"music_mean_db": float(g[m].mean()), "music_worst_db": float(g[m].min()),
            "music_from_lead_end_mean_db": float(a[m].mean()), "music_from_lead_end_worst_db": float(a[m].min()),
            "speech_rt60_ge_0.4_db": float(g[~m & (rt >= 0.4)].mean()), "speech_all_db": float(g[~m].mean()),
            "speech_rt60_ge_0.4_pass_share": float(s[~m & (rt >= 0.4)].mean())}


@torch.no_grad()
def switching(model: MaskLSTM, batches: list[dict], settle: int = 63) -> dict:
    state = model.rest_state(batches[0]["mixture"].shape[0], 4.0)
    right: dict[bool, list[float]] = {False: [], True: []}
    for b in batches:
        res = model.step(b["mixture"], state)
        state = res.state
        p = torch.sigmoid(res.music_logit)
        for j, is_music in enumerate((b["is_music"] > 0.5).tolist()):
            ok = (p[j] > 0.5) if is_music else (p[j] < 0.5)
            right[is_music].append(float(ok[settle:].float().mean()))
    return {"speech_frames_right_after_1s": float(np.mean(right[False])),
            "music_frames_right_after_1s": float(np.mean(right[True]))}


@torch.no_grad()
def speech_over_music(model: MaskLSTM, corpus: Path, rooms: Path, n: int = 16) -> dict:
    import soundfile as sf

    from training.mixing import MixConfig, make_example

    clips = [json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines() if line.strip()]
    speech = [c for c in clips if c["split"] == "val" and c["kind"] == "speech"][:n]
    music = [c for c in clips if c["split"] == "val" and c["kind"] == "music"][:n]
    bank = [json.loads(line) for line in (rooms / "rooms.jsonl").read_text().splitlines() if line.strip()]
    room = [r for r in bank if r["split"] == "val" and r["rt60"] >= 0.4][:n]
    out = {}
    for rel_db in (None, -20, -10, -5, 0):
        shares = []
        for i in range(n):
            s = sf.read(str(corpus / speech[i]["path"]), dtype="float32")[0][: 4 * 16000]
            x = s
            if rel_db is not None:
                mu = np.resize(sf.read(str(corpus / music[i]["path"]), dtype="float32")[0], len(s))
                x = s + mu * np.sqrt(np.mean(s**2) / np.mean(mu**2)) * 10 ** (rel_db / 20)
            rir = sf.read(str(rooms / room[i]["path"]), dtype="float32", always_2d=True)[0][:, 0]
            ex = make_example(x.astype(np.float32), rir, np.random.default_rng(i), MixConfig())
            audio = torch.from_numpy(ex.mixture[: (len(s) // 256) * 256])[None]
            start = model.rest_state(1, 4.0)
            shares.append(float(model.step(audio, start).pass_share.mean()))
        out["none" if rel_db is None else f"{rel_db} dB"] = float(np.mean(shares))
    return out


@torch.no_grad()
def noise_floor(model: MaskLSTM, seconds: float = 20.0, start: dict[str, torch.Tensor] | None = None) -> dict:
    """``seconds`` of white, pink and brown noise at -80 and -60 dBFS (RMS, 16 kHz), each from ``start``
    (one channel; default: the rest state after 4 s of silence): {"KIND LEVEL dBFS": {"mean_share",
    "end_share"}}, the pass-through share over all hops and at the last one."""
    from training.mixing import colored_noise

    n = int(seconds * model.cfg.sample_rate) // model.cfg.hop * model.cfg.hop
    start = start if start is not None else model.rest_state(1, 4.0)
    out = {}
    for level in (-80, -60):
        for kind in ("white", "pink", "brown"):
            x = colored_noise(np.random.default_rng(level + 100), n, kind) * 10 ** (level / 20)
            share = model.step(torch.from_numpy(x.astype(np.float32))[None], start).pass_share[0]
            out[f"{kind} {level} dBFS"] = {"mean_share": float(share.mean()), "end_share": float(share[-1])}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.gate_report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--set", action="append", default=[], metavar="model.KEY=VALUE")
    ap.add_argument("--corpus", type=Path, default=Path("/work/data/corpus"))
    ap.add_argument("--rooms", type=Path, default=Path("/work/data/rooms"))
    args = ap.parse_args(argv)
    from training.dataset import ReverbDataset

    try:
        overrides = parse_model_sets(args.set)
    except ValueError as exc:
        ap.error(str(exc))
    torch.set_num_threads(2)
    model, _ = load_checkpoint(args.checkpoint, overrides)
    if not model.cfg.music_gate:
        ap.error("the checkpoint has no music gate")
    ds = ReverbDataset(args.corpus, args.rooms, "val", segment_seconds=4.0, length=192, seed=21, music_share=0.5)
    batches = [_collate([ds[j] for j in range(i, i + 16)]) for i in range(0, 192, 16)]
    led = ReverbDataset(args.corpus, args.rooms, "val", segment_seconds=4.0, length=192, seed=21, music_share=0.5,
                        lead_prob=1.0, lead_seconds=(0.05, 1.5))
    led_batches = [_collate([led[j] for j in range(i, i + 16)]) for i in range(0, 192, 16)]
    report = {"blend": blend(model, batches), "blend_after_a_lead": blend(model, led_batches),
              "noise_floor": noise_floor(model), "switching": switching(model, batches),
              "speech_over_music_pass_share": speech_over_music(model, args.corpus, args.rooms)}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
