"""Shared fixtures: a small random-weight model exported under the contract, and test signals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    """A small MaskLSTM (hidden 32) exported by export/ — exercises the real contract, fast to run."""
    torch = pytest.importorskip("torch")
    from export.onnx_export import export_checkpoint
    from training.model import MaskLSTM, ModelConfig

    torch.manual_seed(0)
    model = MaskLSTM(ModelConfig(hidden=32, layers=2))
    d = tmp_path_factory.mktemp("tiny")
    ckpt = d / "tiny.pt"
    torch.save({"model_config": model.cfg.to_dict(), "model": model.state_dict(), "summary": {"note": "test"}}, ckpt)
    out = d / "tiny.onnx"
    export_checkpoint(ckpt, out)
    return out


@pytest.fixture(scope="session")
def default_model():
    from stream.model import StepModel

    return StepModel.load(None)


@pytest.fixture(scope="session")
def predictor_onnx(tmp_path_factory):
    """A small gated MaskLSTM with the in-step late-reverb predictor (4 taps, bins up to 2 kHz), random
    mask and gate weights (so the output depends on the network and the gate opens on some frames),
    exported by export/ with a 20 s rest state. Returns (torch model, .onnx path, card)."""
    torch = pytest.importorskip("torch")
    from export.onnx_export import export_checkpoint
    from training.model import MaskLSTM, ModelConfig

    torch.manual_seed(3)
    model = MaskLSTM(ModelConfig(hidden=32, music_gate=True, music_clear_frames=3, music_start_open=True,
                                 rls_taps=4, rls_f_max=2000.0)).eval()
    with torch.no_grad():
        model.mask.weight.normal_(0, 0.5)
        model.music_gate.weight.normal_(0, 2.0)
        model.music_gate.bias.zero_()
    d = tmp_path_factory.mktemp("predictor")
    torch.save({"model_config": model.cfg.to_dict(), "model": model.state_dict()}, d / "p.pt")
    card = export_checkpoint(d / "p.pt", d / "p.onnx", rest_seconds=20.0)
    return model, d / "p.onnx", card
