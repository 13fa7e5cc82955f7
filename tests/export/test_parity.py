"""Export: torch vs ONNX parity and the contract's names."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export.onnx_export import export_checkpoint, parity  # noqa: E402
from training.model import MaskLSTM, ModelConfig  # noqa: E402


@pytest.fixture(scope="module", params=[{}, {"lp_taps": 3}, {"music_gate": True},
                        {"music_gate": True, "music_clear_frames": 3, "music_start_open": True},
                        {"music_gate": True, "music_gate_hidden": 8}],
                ids=["plain", "fullband-lp", "music-gate", "music-gate-open", "music-gate-hidden"])
def exported(tmp_path_factory, request):
    torch.manual_seed(1)
    model = MaskLSTM(ModelConfig(hidden=48, **request.param)).eval()
    with torch.no_grad():
        model.mask.weight.normal_(0, 0.5)  # zero at init (pass-through): make the output depend on the LSTMs
        if model.cfg.lp_taps:
            model.lp.weight.normal_(0, 0.1)
        if model.cfg.music_gate:  # frames on both sides of the gate's clip points
            model.music_gate.weight.normal_(0, 2.0)
            model.music_gate.bias.zero_()
            if model.cfg.music_gate_hidden:
                model.music_gate_in.weight.normal_(0, 0.5)
    d = tmp_path_factory.mktemp("exp")
    torch.save({"model_config": model.cfg.to_dict(), "model": model.state_dict()}, d / "m.pt")
    card = export_checkpoint(d / "m.pt", d / "m.onnx")
    return model, d / "m.onnx", card


def test_torch_onnx_parity_random_input(exported):
    model, path, card = exported
    err = parity(model, path, seconds=3.0, channels=3, seed=5)
    assert err <= 1e-4
    assert card["export_parity_max_abs"] <= 1e-4


def test_graph_names_follow_contract(exported):
    import onnxruntime as ort

    model, path, _ = exported
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ins = [i.name for i in s.get_inputs()]
    outs = [o.name for o in s.get_outputs()]
    assert ins[0] == "audio" and set(ins[1:]) == set(model.state_names)
    # The music gate adds one output that is not a state: its per-hop pass-through share.
    extra = {"pass_share"} if model.cfg.music_gate else set()
    assert set(outs) == {"audio_out", *(f"{k}_out" for k in model.state_names)} | extra
    meta = s.get_modelmeta().custom_metadata_map
    assert meta["dereverb.sample_rate"] == "16000" and "dereverb.card" in meta


def test_shipped_model_parity_against_its_checkpoint_free_reexport(default_model):
    # The shipped graph must run the step exactly like the training code: rebuild the torch model
    # from the ONNX initializers is not possible in general, so check the streamed-vs-whole identity.
    x = np.random.default_rng(0).standard_normal((1, 256 * 40)).astype(np.float32) * 0.05
    whole, _ = default_model.run(x, default_model.initial_state(1))
    st = default_model.initial_state(1)
    parts = []
    for i in range(0, x.shape[1], 256 * 3):
        y, st = default_model.run(np.ascontiguousarray(x[:, i : i + 256 * 3]), st)
        parts.append(y)
    assert np.abs(np.concatenate(parts, axis=1) - whole).max() <= 1e-5


def test_shipped_checkpoint_matches_shipped_onnx(default_model):
    # The shipped .pt (weights only) and .onnx are one model: torch and onnxruntime agree on random input.
    from training.model import load_checkpoint

    ckpt = default_model.path.with_suffix(".pt")
    assert ckpt.is_file(), "the shipped checkpoint must sit beside the shipped ONNX model"
    model, _ = load_checkpoint(ckpt)
    assert parity(model, default_model.path, seconds=3.0, channels=2, seed=11) <= 1e-4


def test_pass_share_output_is_the_gates_share(exported):
    """The graph's ``pass_share`` is what the torch step computed, per hop and channel, and the runtime
    finds it by name."""
    from stream.model import StepModel

    model, path, card = exported
    step = StepModel.load(path)
    assert step.has_pass_share == model.cfg.music_gate == ("outputs" in card)
    if not model.cfg.music_gate:
        return
    x = (np.random.default_rng(3).standard_normal((2, 256 * 12)) * 0.1).astype(np.float32)
    state = model.initial_state(2)
    with torch.no_grad():
        want = model.step(torch.from_numpy(x), state).pass_share.numpy()
    _, share, _ = step.run_with_share(x, {k: v.numpy() for k, v in state.items()})
    assert share.shape == (2, 12) and np.abs(share - want).max() < 1e-5
    assert 0.0 < want.mean() < 1.0  # both sides of the gate occur, so the comparison means something


def test_streams_start_from_the_rest_state_torch_starts_from(exported):
    """The card's rest state is where every stream starts; from it, torch and the graph agree (for a
    gate that starts open, its hold is 1 there and k wide)."""
    from stream.model import StepModel

    model, path, card = exported
    step = StepModel.load(path)
    rest = step.initial_state(2)
    if model.cfg.music_start_open:
        assert rest["music_hold"].shape == (2, model.cfg.music_clear_frames)
        assert (rest["music_hold"] == 1.0).all()
    x = (np.random.default_rng(4).standard_normal((2, 256 * 30)) * 0.1).astype(np.float32)
    y, _ = step.run(x, rest)
    with torch.no_grad():
        want = model(torch.from_numpy(x), *(torch.from_numpy(rest[k]) for k in model.state_names))[0].numpy()
    assert np.abs(y - want).max() < 1e-4
    if "music_hold" in rest:  # silence leaves the hold where the rest state has it (open or shut)
        _, after = step.run(np.zeros((2, 256 * 40), np.float32), rest)
        assert np.array_equal(after["music_hold"], rest["music_hold"])
    if model.cfg.music_start_open:  # open at the start: the first hops pass through more than from zero
        _, share_open, _ = step.run_with_share(x, rest)
        shut = {**rest, "music_hold": np.zeros_like(rest["music_hold"])}
        _, share_shut, _ = step.run_with_share(x, shut)
        assert (share_open >= share_shut - 1e-6).all() and share_open[:, 0].min() > 0.9


def test_export_overrides_change_settings_not_weights(tmp_path):
    """``python -m export --set model.KEY=VALUE``: a setting without weights (the hold's) is changed and
    recorded in the card and the .pt beside it; one that changes a weight's shape fails the load."""
    from export.onnx_export import main
    from training.model import load_checkpoint

    torch.manual_seed(2)
    model = MaskLSTM(ModelConfig(hidden=16, music_gate=True)).eval()
    torch.save({"model_config": model.cfg.to_dict(), "model": model.state_dict()}, tmp_path / "m.pt")
    out = tmp_path / "out" / "m.onnx"
    assert main([str(tmp_path / "m.pt"), "--out", str(out), "--set", "model.music_clear_frames=3",
                 "--set", "model.music_start_open=true"]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["export_overrides"] == {"music_clear_frames": 3, "music_start_open": True}
    assert card["model_config"]["music_clear_frames"] == 3 and card["states"]["music_hold"]["shape"] == ["channels", 3]
    assert card["rest_state"]["music_hold"] == [[1.0, 1.0, 1.0]]
    again, ckpt = load_checkpoint(out.with_suffix(".pt"))
    assert again.cfg.music_start_open and ckpt["export_overrides"] == card["export_overrides"]
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_checkpoint(tmp_path / "m.pt", {"hidden": 32})
    with pytest.raises(ValueError, match="not ModelConfig fields"):
        load_checkpoint(tmp_path / "m.pt", {"music_hold_sec": 2.0})


def test_shipped_card_lists_every_unmet_target_as_a_known_limit(default_model):
    """The card's ``known_limits`` name every quality target its own embedded evaluation missed, with
    the measured number, and the limits its configuration implies."""
    from training.evaluate import check_targets, check_warm_targets

    card = default_model.card
    warm = card["metrics"].get("warm")
    rows = check_targets(card["metrics"]["summary"]) + (check_warm_targets(warm) if warm else [])
    missed = [r for r in rows if r["met"] is False]
    listed = [s for s in card["known_limits"] if s.startswith("Target not met")]
    assert len(listed) == len(missed) and all(f"{r['value']:+.3f}" in s for r, s in zip(missed, listed))
    assert any("passed through" in s for s in card["known_limits"])  # the shipped model has a music gate


def test_a_noise_floor_passed_through_is_a_known_limit_with_its_measured_share():
    from export.onnx_export import known_limits

    cfg = ModelConfig()
    assert not any("noise floor" in s for s in known_limits(cfg, None, None))
    suppressed = {"white -60 dBFS": {"mean_share": 0.01, "end_share": 0.0}}
    assert not any("noise floor" in s for s in known_limits(cfg, suppressed))
    passed = {"white -80 dBFS": {"mean_share": 0.5, "end_share": 0.49}, "brown -60 dBFS": {"mean_share": 0.3,
                                                                                        "end_share": 0.31}}
    assert any("noise floor" in s and "31% to 49%" in s for s in known_limits(cfg, passed))


def test_export_writes_the_contract_and_the_release_step_joins_the_measurements(exported, tmp_path):
    """``python -m export`` measures nothing: its card has no metrics and no noise-floor share. The
    release step (``python -m export.card``) joins an evaluation's results file into the card, beside
    the graph and inside it, and lists what they imply among the known limits; the graph is unchanged."""
    import shutil

    from export.card import main as release_main
    from stream.model import StepModel
    from training.evaluate import noise_floor_shares

    model, path, card = exported
    assert card["metrics"] == {} and "noise_floor_pass_share" not in card
    assert not any(s.startswith("Target not met") for s in card["known_limits"])
    onnx_path = shutil.copy(path, tmp_path / "m.onnx")
    shutil.copy(path.with_suffix(".json"), tmp_path / "m.json")
    step = StepModel.load(onnx_path)
    evaluation = {"config": {"count": 3}, "test_set": {"counts": {"reverb": 3}}, "summary": {"reverb": {}},
                  "targets": [{"target": "a bar", "value": -0.5, "bar": 1.0, "met": False},
                              {"target": "another", "value": 2.0, "bar": 1.0, "met": True}],
                  "examples": [{"index": 0}]}
    if model.cfg.music_gate:
        evaluation["noise_floor_pass_share"] = noise_floor_shares(step, seconds=2.0)
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    assert release_main([str(onnx_path), "--metrics", str(tmp_path / "eval.json")]) == 0
    released = StepModel.load(onnx_path)
    beside = json.loads((tmp_path / "m.json").read_text())
    assert released.card == beside
    assert beside["metrics"]["summary"] == {"reverb": {}} and "examples" not in beside["metrics"]
    assert beside["metrics"]["source"] == str(tmp_path / "eval.json")
    assert [s for s in beside["known_limits"] if s.startswith("Target not met")] == [
        "Target not met on the held-out test set: a bar = -0.500 (bar 1.0)."]
    if model.cfg.music_gate:
        shares = beside["noise_floor_pass_share"]
        assert len(shares) == 6 and all(0.0 <= r["end_share"] <= 1.0 for r in shares.values())
        assert any("noise floor" in s for s in beside["known_limits"]) == (max(r["end_share"] for r in shares.values()) > 0.05)
    else:
        assert "noise_floor_pass_share" not in beside
    x = (np.random.default_rng(6).standard_normal((1, 256 * 10)) * 0.1).astype(np.float32)
    assert np.array_equal(released.run(x, released.initial_state(1))[0], step.run(x, step.initial_state(1))[0])
