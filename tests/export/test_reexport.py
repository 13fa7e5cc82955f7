"""The shipped checkpoint, exported again by today's code, gives the shipped graph's outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")


def _run_graph(path, audio: np.ndarray, start: dict[str, np.ndarray], hops: int = 4) -> dict[str, np.ndarray]:
    """Every output of the graph at ``path`` on ``audio`` [1, n * hop], ``hops`` hops per call from
    ``start``, concatenated along time (states: their last value)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    state, chunks = dict(start), []
    for i in range(0, audio.shape[1], 256 * hops):
        out = dict(zip(names, session.run(None, {"audio": np.ascontiguousarray(audio[:, i:i + 256 * hops]), **state})))
        state = {k: out[f"{k}_out"] for k in start}
        chunks.append(out)
    return {k: (np.concatenate([c[k] for c in chunks], axis=1) if k in ("audio_out", "pass_share") else chunks[-1][k])
            for k in names}


def test_reexporting_the_shipped_checkpoint_gives_the_shipped_graphs_outputs(tmp_path, default_model):
    """``python -m export models/dereverb-lstm-16k.pt`` (strict load of the shipped weights, the model
    code as it is now) must give a graph whose every output (audio, states, pass share) equals the
    shipped .onnx's on the demo clip, from the shipped rest state, to 1e-6."""
    import soundfile as sf

    from export.onnx_export import main
    from stream.demo import DEMO_CLIP

    shipped = default_model.path
    out = tmp_path / "again.onnx"
    assert main([str(shipped.with_suffix(".pt")), "--out", str(out)]) == 0
    x, sr = sf.read(str(DEMO_CLIP), dtype="float32", always_2d=True)
    assert sr == default_model.sample_rate
    audio = x[: len(x) // 256 * 256, :1].T.copy()
    card = json.loads(shipped.with_suffix(".json").read_text())
    start = {k: np.asarray(v, np.float32) for k, v in card["rest_state"].items()}
    want, got = _run_graph(shipped, audio, start), _run_graph(out, audio, start)
    assert list(got) == list(want)  # the same outputs, in the same order
    worst = {k: float(np.abs(got[k] - want[k]).max()) for k in want}
    assert max(worst.values()) <= 1e-6, worst
    assert np.abs(want["audio_out"]).max() > 0.01 and 0.0 <= want["pass_share"].min()  # a real signal went through
    again = json.loads(out.with_suffix(".json").read_text())
    assert again["rest_state"] == card["rest_state"]  # the start state every stream uses, too
