"""A tiny run of the whole pipeline: corpus -> rooms -> train a tiny model -> export -> stream."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("pyroomacoustics")

from tests.conftest import CORPUS_PACKAGES  # noqa: E402  (after the importorskips)

ROOT = Path(__file__).resolve().parents[2]


def _py(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{args}: {r.stderr[-2000:]}"
    return r


@pytest.mark.train
@pytest.mark.debian(*CORPUS_PACKAGES)
def test_pipeline_end_to_end(tmp_path):
    corpus, rooms, run = tmp_path / "corpus", tmp_path / "rooms", tmp_path / "run"
    _py("-m", "training.data", "build", "--hours", "0.03", "--seed", "3", "--out", str(corpus), "--jobs", "2",
        cwd=ROOT)
    _py("-m", "training.rooms", "build", "--count", "10", "--seed", "3", "--out", str(rooms), "--jobs", "2",
        cwd=ROOT)
    splits = {json.loads(line)["split"] for line in (corpus / "manifest.jsonl").read_text().splitlines()}
    assert {"train", "val"} <= splits
    config = tmp_path / "tiny.toml"
    config.write_text(f"""
out_dir = "{run}"
[model]
hidden = 16
layers = 1
[data]
corpus = "{corpus}"
rooms = "{rooms}"
segment_seconds = 1.024
train_examples_per_epoch = 24
val_examples = 8
workers = 0
[optim]
batch_size = 4
epochs = 2
threads = 2
""")
    _py("-m", "training.train", "--config", str(config), cwd=ROOT)
    ckpt = run / "best.pt"
    assert ckpt.exists() and (run / "last.pt").exists()
    # Resuming a finished run is a no-op that still succeeds.
    _py("-m", "training.train", "--config", str(config), cwd=ROOT)
    # A budget in epochs: stopped after one epoch of the two-epoch schedule, then continued to the
    # second, the run ends with exactly the weights of the straight run (same schedule, same data).
    import torch

    split = tmp_path / "split"
    for stop in (1, 2):
        _py("-m", "training.train", "--config", str(config), "--set", f'out_dir="{split}"',
            "--set", f"optim.run_epochs={stop}", cwd=ROOT)
        last_split = torch.load(split / "last.pt", weights_only=True)
        assert last_split["epoch"] == stop - 1
    last_whole = torch.load(run / "last.pt", weights_only=True)
    assert last_split["model"].keys() == last_whole["model"].keys()
    assert all(torch.equal(last_split["model"][k], v) for k, v in last_whole["model"].items())
    assert last_split["scheduler"]["_last_lr"] == last_whole["scheduler"]["_last_lr"]
    # The overfit diagnostic: a few steps on 4 fixed examples must raise the gain on those examples.
    out = _py("-m", "training.fit_check", str(ckpt), "--config", str(config), "--overfit", "4", "--steps", "20",
              "--every", "10", "--lr", "1e-2", "--threads", "1", cwd=ROOT)
    rows = [json.loads(line) for line in out.stdout.splitlines() if '"memorised"' in line]
    assert [r["step"] for r in rows] == [0, 10, 20]
    assert rows[-1]["memorised"] > rows[0]["memorised"] + 0.1, rows
    # Scored as its own run's start (--as-run), the kept checkpoint gives back the validation figures
    # its run recorded for it: the same validation set, reference and start state as training.train.
    out = _py("-m", "training.fit_check", str(ckpt), "--config", str(config), "--as-run", "--count", "4",
              "--threads", "1", cwd=ROOT)
    scored = json.loads(out.stdout.splitlines()[-1])["validation"]
    recorded = torch.load(ckpt, weights_only=True)["summary"]["val"]
    assert scored["loss"] == pytest.approx(recorded["loss"], abs=1e-4), (scored, recorded)
    assert scored["si_sdr_gain_db"] == pytest.approx(recorded["si_sdr_gain_db"], abs=1e-4), (scored, recorded)
    onnx_path = tmp_path / "tiny.onnx"
    out = _py("-m", "export", str(ckpt), "--out", str(onnx_path), cwd=ROOT)
    assert "parity" in out.stdout

    from stream import Dereverberator, StepModel

    model = StepModel.load(onnx_path)
    assert model.card["training"]["epochs"] in (1, 2)  # best.pt: the epoch with the best validation
    d = Dereverberator(model, sample_rate=48000, channels=2)
    x = (np.random.default_rng(0).standard_normal((48000, 2)) * 0.05).astype(np.float32)
    y = np.concatenate([d.process(x[:1000]), d.process(x[1000:])])
    assert y.shape == x.shape and np.isfinite(y).all() and np.abs(y).max() > 0

    # A second stage continues the first (one epoch at a lower rate); the gate then goes on the second.
    _py("-m", "training.train", "--config", str(config), "--set", f'out_dir="{tmp_path / "stage2"}"',
        "--set", "optim.epochs=1", "--set", "optim.lr=1e-4", "--set", f'optim.init_from="{ckpt}"', cwd=ROOT)
    ckpt = tmp_path / "stage2" / "best.pt"

    # The music gate on the trained model, its head with a hidden layer as shipped: only the head
    # trains, the rest stays the checkpoint's.
    _py("-m", "training.gate", "--config", str(config), "--set", f'out_dir="{tmp_path / "gate"}"',
        "--set", "model.music_gate=true", "--set", "model.music_gate_hidden=4", "--set", "data.music_share=0.5",
        "--set", "optim.epochs=1", "--set", "optim.lr=1e-2", "--set", f'optim.init_from="{ckpt}"', cwd=ROOT)

    gated = torch.load(tmp_path / "gate" / "best.pt", weights_only=True)
    base = torch.load(ckpt, weights_only=True)["model"]
    assert all(torch.equal(gated["model"][k], v) for k, v in base.items())
    assert not torch.equal(gated["model"]["music_gate.weight"], torch.zeros_like(gated["model"]["music_gate.weight"]))
    assert gated["model"]["music_gate_in.weight"].shape[0] == 4
    gate_onnx = tmp_path / "gate.onnx"
    _py("-m", "export", str(tmp_path / "gate" / "best.pt"), "--out", str(gate_onnx), cwd=ROOT)
    gm = StepModel.load(gate_onnx)
    assert "music_hold" in {s.name for s in gm.states}
    # The card names every run that made the model, first to last, and their total time.
    stages = gm.card["training"]["stages"]
    assert [st["out_dir"] for st in stages] == [str(run), str(tmp_path / "stage2"), str(tmp_path / "gate")]
    assert [st["init_from"] for st in stages] == [None, str(run / "best.pt"), str(ckpt)]
    assert gm.card["training"]["train_seconds_total"] == pytest.approx(sum(st["train_seconds"] for st in stages),
                                                                       abs=0.2)
    y = Dereverberator(gm, sample_rate=16000).process(x[:16000, 0])
    assert y.shape == (16000,) and np.isfinite(y).all()
