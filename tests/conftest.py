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
