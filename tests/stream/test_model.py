"""Model loading: states discovered and bound by name; every contract breach gives a clear error."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from stream.model import ModelError, StepModel


def test_states_discovered_from_graph(tiny_onnx):
    m = StepModel.load(tiny_onnx)
    assert {s.name for s in m.states} == {"analysis", "ola", "lstm_h", "lstm_c"}
    assert m.sample_rate == 16000 and m.hop == 256 and m.step_latency == 256
    st = m.initial_state(3)
    assert st["lstm_h"].shape == (2, 3, 32) and st["analysis"].shape == (3, 256)


def test_state_bound_by_name_not_position(tiny_onnx):
    m = StepModel.load(tiny_onnx)
    x = np.random.default_rng(0).standard_normal((1, 512)).astype(np.float32) * 0.1
    state = m.initial_state(1)
    y1, s1 = m.run(x, state)
    y2, s2 = m.run(x, dict(reversed(list(state.items()))))  # same tensors, other order
    assert np.array_equal(y1, y2)
    _, s_next = m.run(x, s1)
    assert set(s_next) == set(state)


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        StepModel.load(tmp_path / "nope.onnx")


def test_not_onnx(tmp_path):
    p = tmp_path / "bad.onnx"
    p.write_text("this is not a model")
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        StepModel.load(p)


def _identity_model(path, with_card=True):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["channels", "samples"])
    out = helper.make_tensor_value_info("audio_out", TensorProto.FLOAT, ["channels", "samples"])
    graph = helper.make_graph([helper.make_node("Identity", ["audio"], ["audio_out"])], "g", [inp], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if with_card:
        entry = model.metadata_props.add()
        entry.key = "dereverb.card"
        entry.value = json.dumps({"sample_rate": 16000, "hop": 256, "latency_samples": 0, "states": {}})
    onnx.save(model, str(path))


def test_model_without_state_inputs(tmp_path):
    p = tmp_path / "stateless.onnx"
    _identity_model(p)
    with pytest.raises(ModelError, match="no state inputs"):
        StepModel.load(p)


def test_model_without_card(tmp_path, tiny_onnx):
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(tiny_onnx))
    del proto.metadata_props[:]
    p = tmp_path / "nocard.onnx"
    onnx.save(proto, str(p))
    with pytest.raises(ModelError, match="no model card"):
        StepModel.load(p)


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.pop("sample_rate"), "does not state 'sample_rate'"),
    (lambda c: c.update(hop=128), "hop"),
    (lambda c: c["states"].pop("ola"), "disagree"),
    (lambda c: c["states"]["lstm_h"].update(shape=[3, "channels", 32]), "disagrees with the ONNX metadata"),
    (lambda c: c.update(sample_rate="16k"), "sample_rate"),
    (lambda c: c.update(rest_state_seconds=-1), "invalid rest_state_seconds"),
    (lambda c: c["rest_state"].update(ola=[[0.0]]), "rest_state 'ola' must be finite with shape"),
    (lambda c: c["rest_state"].update(ola=[[float("nan")] * 256]), "rest_state 'ola' must be finite"),
    (lambda c: c["rest_state"].pop("lstm_c"), "rest_state must give every state"),
])
def test_card_disagreeing_with_graph(tmp_path, tiny_onnx, edit, message):
    p = tmp_path / "m.onnx"
    shutil.copy(tiny_onnx, p)
    card = json.loads(tiny_onnx.with_suffix(".json").read_text())
    edit(card)
    p.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match=message):
        StepModel.load(p)


def test_shipped_card_matches_graph(default_model):
    card = default_model.card
    for key in ("sample_rate", "hop", "latency_samples", "states", "parameters", "training", "software"):
        assert key in card
    assert card["parameters"] <= 2_000_000
    assert card["rest_state_seconds"] == default_model.rest_seconds > 0
    rest = default_model.initial_state(2)
    for spec in default_model.states:  # every channel starts from the card's rest state
        want = np.asarray(card["rest_state"][spec.name], np.float32)
        assert np.array_equal(np.take(rest[spec.name], [1], axis=spec.batch_axis), want)
    assert 1000 * (card["latency_samples"] + card["hop"] - 1) / card["sample_rate"] <= 32.0


def test_pass_share_is_optional_and_checked(tmp_path, tiny_onnx, default_model):
    import onnx
    from onnx import TensorProto, helper

    from stream.model import ModelError, StepModel

    assert default_model.has_pass_share  # the shipped model has a music gate
    tiny = StepModel.load(tiny_onnx)
    assert not tiny.has_pass_share
    x = np.zeros((1, tiny.hop), np.float32)
    y, share, _ = tiny.run_with_share(x, tiny.initial_state(1))
    assert share is None and y.shape == x.shape
    # A pass_share output of the wrong shape is refused, naming it.
    proto = onnx.load(str(tiny_onnx))
    g = proto.graph
    g.node.append(helper.make_node("ReduceMean", ["audio"], ["pass_share"], keepdims=0, axes=[1]))
    g.output.append(helper.make_tensor_value_info("pass_share", TensorProto.FLOAT, ["channels"]))
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))
    (tmp_path / "bad.json").write_text(tiny_onnx.with_suffix(".json").read_text())
    with pytest.raises(ModelError, match="pass_share"):
        StepModel.load(bad)


@pytest.mark.parametrize("which", ["default", "tiny"])
def test_bound_step_gives_what_run_gives(request, which):
    """The engine's in-place step (IO binding to preallocated buffers, two state sets that swap) returns
    the same numbers as the plain ``run_with_share``, call after call, with and without ``pass_share``."""
    m = request.getfixturevalue("default_model") if which == "default" else StepModel.load(
        request.getfixturevalue("tiny_onnx"))
    x = (0.1 * np.random.default_rng(5).standard_normal((2, 6 * m.hop))).astype(np.float32)
    bound = m.bind(2, max_hops=4)
    bound.load(m.initial_state(2))
    state = m.initial_state(2)
    for start, hops in ((0, 1), (m.hop, 3), (4 * m.hop, 2)):
        audio = np.ascontiguousarray(x[:, start : start + hops * m.hop])
        y, share, state = m.run_with_share(audio, state)
        bound.audio_in(hops)[...] = audio
        by, bshare = m.run_bound(bound, hops)
        assert np.array_equal(by, y)
        assert (bshare is None) == (share is None) and (share is None or np.array_equal(bshare, share))
        assert all(np.array_equal(bound.state[k], v) for k, v in state.items())
    with pytest.raises(ValueError):
        m.run_bound(bound, 5)  # more hops than the buffers hold
