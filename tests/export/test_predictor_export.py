"""Export of a model with the in-step late-reverb predictor: torch vs ONNX parity, its states in the graph
and the card, a rest state that silence leaves at the start, the predictor off by default, its settings
those of the numpy reference, and the exported step equal to the oracle's single pass."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export.onnx_export import parity  # noqa: E402
from training.model import RLS_STATES, MaskLSTM, ModelConfig, load_checkpoint  # noqa: E402
from tests.signals import speechlike  # noqa: E402


def test_torch_onnx_parity(predictor_onnx):
    model, path, card = predictor_onnx
    assert card["export_parity_max_abs"] <= 1e-4
    assert parity(model, path, seconds=1.0, channels=2, seed=4) <= 1e-4


def test_states_named_in_graph_and_card(predictor_onnx):
    import onnxruntime as ort

    model, path, card = predictor_onnx
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ins = {i.name: i.shape for i in s.get_inputs()}
    outs = {o.name for o in s.get_outputs()}
    fp = model.cfg.rls_bins
    assert fp == 65  # 0 .. 2 kHz at 31.25 Hz a bin
    want = {"pred_hist": ["channels", 6, 2 * fp], "rls_g": ["channels", 2, fp, 4],
            "rls_p": ["channels", 2, fp, 4, 4], "rls_level": ["channels", fp], "rls_weight": ["channels", fp]}
    for name, shape in want.items():
        assert ins[name] == shape and f"{name}_out" in outs
        assert card["states"][name]["shape"] == shape and card["states"][name]["holds"]
    assert "RLS" in card["architecture"]


def test_rest_state_leaves_the_predictor_at_its_start(predictor_onnx):
    # Digital silence updates nothing (the floor freeze): P cannot grow by 1 / lam per silent hop.
    _, _, card = predictor_onnx
    for name in RLS_STATES:
        value = np.asarray(card["rest_state"][name])
        assert np.isfinite(value).all() and not value.any(), name


def test_many_hops_per_call_equal_one_hop_per_call(predictor_onnx):
    # The graph loops over the hops of a call: the split of a stream into calls changes nothing.
    from stream.model import StepModel

    _, path, _ = predictor_onnx
    m = StepModel.load(path)
    x = speechlike(1.0, 16000, 2, seed=5).T.copy()  # [channels, samples]
    x = x[:, : (x.shape[1] // m.hop) * m.hop]
    whole, end = m.run(x, m.initial_state(2))
    st, parts = m.initial_state(2), []
    for i in range(0, x.shape[1], 3 * m.hop):
        y, st = m.run(x[:, i:i + 3 * m.hop], st)
        parts.append(y)
    assert np.abs(whole).max() > 1e-3
    assert np.abs(np.concatenate(parts, 1) - whole).max() <= 1e-6
    assert np.abs(end["rls_g"]).max() > 0  # the predictor has learned something on speech


def test_predictor_off_by_default_and_for_the_shipped_checkpoint():
    assert not set(RLS_STATES) & set(MaskLSTM(ModelConfig(hidden=16)).state_names)
    from models import default_model_path

    shipped, _ = load_checkpoint(default_model_path().with_suffix(".pt"))
    assert shipped.cfg.rls_taps == 0 and not set(RLS_STATES) & set(shipped.state_names)


def test_predictor_added_to_a_checkpoint_by_override():
    # The predictor has no weights: a checkpoint without it loads with it switched on.
    from models import default_model_path

    model, ckpt = load_checkpoint(default_model_path().with_suffix(".pt"), {"rls_taps": 10, "rls_f_max": 4000.0})
    assert model.cfg.rls_bins == 129 and ckpt["export_overrides"] == {"rls_taps": 10, "rls_f_max": 4000.0}
    assert set(RLS_STATES) <= set(model.state_names)


def test_both_inputs_start_as_the_checkpoints_network():
    # rls_features = "both": the residual's input layer is grown at zero, so the network computes the
    # checkpoint's mask from X; the output differs from the checkpoint's only by the mask's applying to R.
    torch.manual_seed(4)
    base = MaskLSTM(ModelConfig(hidden=16)).eval()
    with torch.no_grad():
        base.mask.weight.normal_(0, 0.5)
    # rls_settle 0: the filter learns from the first hops, within this short clip.
    grown = MaskLSTM(ModelConfig(hidden=16, rls_taps=3, rls_settle=0, rls_features="both")).eval()
    grown.load_state_dict({**base.state_dict(), **{f"proj_residual.{k}": v
                                                   for k, v in grown.proj_residual.state_dict().items()}})
    x = torch.from_numpy(speechlike(0.5, 16000, 1, seed=6).T.copy())[:, :31 * 256]
    with torch.no_grad():
        a, outs = base.step(x[:, :256], base.initial_state(1)), []
        for i in range(1, x.shape[1] // 256):  # hop by hop, as the grown model runs: the same LSTM shapes
            outs.append(a.audio)
            a = base.step(x[:, i * 256:(i + 1) * 256], a.state)
        b = grown.step(x, grown.initial_state(1))
    shipped = torch.cat(outs + [a.audio], 1)
    assert torch.equal(a.state["lstm_h"], b.state["lstm_h"]) and torch.equal(a.state["lstm_c"], b.state["lstm_c"])
    assert float((shipped - b.audio).abs().max()) > 1e-4 and b.state["rls_g"].abs().max() > 0


def test_the_step_settles_before_it_learns():
    # rls_settle hops: each bin measures its level before its filter moves; the filter stays zero
    # through a clip shorter than that and learns on the same clip without settling.
    x = torch.from_numpy(speechlike(0.5, 16000, 1, seed=7).T.copy())[:, :31 * 256]
    learned = {}
    for settle in (0, 32):
        torch.manual_seed(6)
        m = MaskLSTM(ModelConfig(hidden=16, rls_taps=3, rls_settle=settle)).eval()
        with torch.no_grad():
            learned[settle] = float(m.step(x, m.initial_state(1)).state["rls_g"].abs().max())
    assert learned[32] == 0.0 and learned[0] > 0


def test_the_step_and_the_reference_get_the_same_settings():
    # One conversion: every PredictorConfig field comes from its rls_* option, none from a default.
    from dataclasses import fields

    from training.predictor import PredictorConfig

    values = {"taps": 7, "delay": 2, "lam": 0.99, "delta": 4.5, "floor": 1e-9, "clip": 6.0, "settle": 5}
    assert set(values) == {f.name for f in fields(PredictorConfig)}
    pcfg = ModelConfig(**{f"rls_{k}": v for k, v in values.items()}).predictor_config()
    assert {k: getattr(pcfg, k) for k in values} == values
    default = ModelConfig(rls_taps=10).predictor_config()
    assert (default.delta, default.settle) == (30.0, 32)


def test_settings_are_checked():
    for bad in ({"rls_target": "late"}, {"rls_features": "x"}, {"rls_delay": 0}, {"rls_settle": -1}, {"lp_taps": 2}):
        with pytest.raises(ValueError):
            MaskLSTM(ModelConfig(hidden=16, rls_taps=3, **bad))


def test_the_input_target_changes_only_what_the_filter_learns():
    # rls_target = "input": the late target is (1 - mask) X, not X - mask R. The first hops (nothing to
    # predict from yet) are the same; after them the filters, and so the outputs, differ.
    torch.manual_seed(5)
    # rls_settle 0: the filter learns from the first hops, within this short clip.
    a = MaskLSTM(ModelConfig(hidden=16, rls_taps=3, rls_settle=0)).eval()
    with torch.no_grad():
        a.mask.weight.normal_(0, 0.5)
    b = MaskLSTM(ModelConfig(hidden=16, rls_taps=3, rls_settle=0, rls_target="input")).eval()
    b.load_state_dict(a.state_dict())
    x = torch.from_numpy(speechlike(0.5, 16000, 1, seed=8).T.copy())[:, :31 * 256]
    with torch.no_grad():
        ya, yb = a.step(x, a.initial_state(1)), b.step(x, b.initial_state(1))
    assert torch.equal(ya.audio[:, :4 * 256], yb.audio[:, :4 * 256])
    assert float((ya.state["rls_g"] - yb.state["rls_g"]).abs().max()) > 1e-3


def test_the_exported_step_is_the_oracles_single_pass(tmp_path):
    # The shipped checkpoint exported with the predictor computes what training.oracle's single pass
    # (the numpy reference beside the shipped graph's spectral subgraph) computes, from the same start
    # and on the stream's framing. Float32 against float64 and the music gate's pass-through (the step
    # passes X, the oracle R; equal while the predictor settles) are all that may differ.
    import soundfile as sf

    from export.onnx_export import export_checkpoint
    from models import default_model_path
    from stream.demo import DEMO_CLIP
    from stream.model import StepModel
    from training.oracle import SpectralModel, predictor_outputs

    shipped = default_model_path()
    card = export_checkpoint(shipped.with_suffix(".pt"), tmp_path / "p.onnx", rest_seconds=1.0,
                             overrides={"rls_taps": 10})
    spectral = SpectralModel(str(shipped))
    step = StepModel.load(tmp_path / "p.onnx")
    start = {**step.initial_state(1), **spectral.start()}  # the network's rest state as the oracle's
    # Reverberant speech: the gate passes only its first hops, while the predictor still settles.
    x, sr = sf.read(str(DEMO_CLIP), dtype="float32", always_2d=True)
    assert sr == 16000
    mix = x[: 4 * sr, 0].copy()
    got = step.run(mix[None], start)[0][0].astype(np.float64)
    cfg = ModelConfig(**card["model_config"]).predictor_config()
    padded = np.concatenate([np.zeros(256), mix.astype(np.float64)])  # the step's first frame: a zero hop first
    want = predictor_outputs(padded, padded, spectral, cfg, single_pass_only=True, causal_start=True)["single pass"]
    want = want[: mix.size]  # the step's output is one hop late, as the padded frames are
    sl = slice(512, mix.size - 512)
    err = float(np.sum((got[sl] - want[sl]) ** 2) / np.sum(want[sl] ** 2))
    without = float(np.sum((got[sl] - spectral_only(spectral, padded)[sl]) ** 2) / np.sum(want[sl] ** 2))
    assert err < 1e-5 and without > 1e-2, (err, without)  # agree to 50 dB; the predictor changed the output


def spectral_only(spectral, x: np.ndarray) -> np.ndarray:
    """The shipped network alone on ``x`` [n] (the oracle's "model" row)."""
    from training.model import dft_matrices
    from training.oracle import istft, stft

    fwd, inv = (m.numpy().astype(np.float64) for m in dft_matrices(512))
    return istft(spectral.run(stft(x, fwd, 512, 256), spectral.start())[0], inv, len(x), 512, 256)
