"""The runtime streams a model with the in-step late-reverb predictor through its named states alone:
block-size invariance at 16 and 48 kHz, and the file command."""

from __future__ import annotations

import numpy as np
import pytest

from stream import Dereverberator, StepModel
from tests.signals import speechlike


def _stream(d: Dereverberator, x: np.ndarray, sizes) -> np.ndarray:
    outs, i, k = [], 0, 0
    while i < x.shape[0]:
        n = sizes[k % len(sizes)]
        outs.append(d.process(x[i : i + n]))
        i, k = i + n, k + 1
    return np.concatenate(outs)


@pytest.mark.parametrize("rate", [16000, 48000])
def test_block_size_invariance(predictor_onnx, rate):
    _, path, _ = predictor_onnx
    model = StepModel.load(path)
    x = speechlike(0.75, rate, 2, seed=rate)
    d = Dereverberator(model, sample_rate=rate, channels=2)
    whole = d.process(x)
    assert np.abs(whole).max() > 1e-4
    rng = np.random.default_rng(7)
    for sizes in ([7], [441], [4096], list(rng.integers(1, 3000, size=16))):
        d.reset()
        y = _stream(d, x, sizes)
        err = float(np.abs(y - whole[: y.shape[0]]).max())
        assert err <= 1e-5, f"block sizes {sizes[:3]}...: max diff {err:.2e}"


def test_file_command_runs_it(predictor_onnx, tmp_path):
    import soundfile as sf

    from stream.cli import main

    _, path, _ = predictor_onnx
    x = speechlike(0.5, 16000, 1, seed=9)
    sf.write(tmp_path / "in.wav", x, 16000, subtype="FLOAT")
    assert main(["file", str(tmp_path / "in.wav"), "-o", str(tmp_path / "out.wav"), "--model", str(path)]) == 0
    y, sr = sf.read(tmp_path / "out.wav", dtype="float32")
    assert sr == 16000 and y.shape[0] == x.shape[0] and np.isfinite(y).all() and np.abs(y).max() > 1e-4
