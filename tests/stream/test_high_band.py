"""The band above the model's at stream rates above the model's (stream.engine.HighBand): the crossover
sums back to the input, dry full-band speech keeps its high band, a reverberant tail loses it, and streams
at the model's rate or below have no such path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stream import Dereverberator, dcblock, dereverb_array
from stream.engine import HighBand, ShareBypass, initial_state, make_plan
from stream.model import StepModel
from stream.resample import Resampler

DATA = Path(__file__).resolve().parents[1] / "data"


def _passthrough_model(path: Path, share: bool, hop: int = 256) -> Path:
    """A contract-following 16 kHz model whose output is its input delayed by one hop (its step latency):
    a model at pass-through. With ``share``, it also reports a ``pass_share`` of 1 on every hop."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto
    from onnx import helper as h

    inputs = [h.make_tensor_value_info("audio", TensorProto.FLOAT, ["channels", "samples"]),
              h.make_tensor_value_info("prev", TensorProto.FLOAT, ["channels", hop])]
    outputs = [h.make_tensor_value_info("audio_out", TensorProto.FLOAT, ["channels", "samples"]),
               h.make_tensor_value_info("prev_out", TensorProto.FLOAT, ["channels", hop])]
    consts = [h.make_tensor(name, TensorProto.INT64, [len(v)], v) for name, v in
              (("zero", [0]), ("minus_hop", [-hop]), ("end", [2**62]), ("axis1", [1]), ("axis2", [2]),
               ("hops_shape", [0, -1, hop]))]
    nodes = [h.make_node("Concat", ["prev", "audio"], ["joined"], axis=1),
             h.make_node("Slice", ["joined", "zero", "minus_hop", "axis1"], ["audio_out"]),
             h.make_node("Slice", ["joined", "minus_hop", "end", "axis1"], ["prev_out"])]
    if share:
        consts += [h.make_tensor("f0", TensorProto.FLOAT, [], [0.0]), h.make_tensor("f1", TensorProto.FLOAT, [], [1.0])]
        nodes += [h.make_node("Reshape", ["audio", "hops_shape"], ["hops"]),
                  h.make_node("ReduceSum", ["hops", "axis2"], ["sums"], keepdims=0),
                  h.make_node("Mul", ["sums", "f0"], ["nothing"]),
                  h.make_node("Add", ["nothing", "f1"], ["pass_share"])]
        outputs.append(h.make_tensor_value_info("pass_share", TensorProto.FLOAT, ["channels", "hops"]))
    graph = h.make_graph(nodes, "passthrough", inputs, outputs, initializer=consts)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    entry = model.metadata_props.add()
    entry.key = "dereverb.card"
    entry.value = json.dumps({"sample_rate": 16000, "hop": hop, "latency_samples": hop,
                              "states": {"prev": {"shape": ["channels", hop]}}})
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module", params=[False, True], ids=["no-share", "share"])
def passthrough(request, tmp_path_factory) -> StepModel:
    path = _passthrough_model(tmp_path_factory.mktemp("passthrough") / "p.onnx", share=request.param)
    return StepModel.load(path)


def _band(x: np.ndarray, rate: int, lo: float, hi: float) -> np.ndarray:
    """``x`` [frames] with everything outside lo..hi Hz removed (an FFT brick wall), float64."""
    spectrum = np.fft.rfft(np.asarray(x, np.float64))
    f = np.fft.rfftfreq(x.shape[0], 1 / rate)
    spectrum[(f < lo) | (f >= hi)] = 0
    return np.fft.irfft(spectrum, n=x.shape[0])


def _energy_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(np.square(x, dtype=np.float64))))


def _si_sdr(est: np.ndarray, ref: np.ndarray) -> float:
    scale = np.dot(est, ref) / np.dot(ref, ref)
    return float(10 * np.log10(np.sum((scale * ref) ** 2) / np.sum((est - scale * ref) ** 2)))


def _fullband_speech(rate: int, seconds: float = 6.0) -> np.ndarray:
    """Speech with content up to 20 kHz, float32 [frames] at ``rate``: the demo clip's early-50 target
    (16 kHz, near dry) resampled, plus an 8-20 kHz noise that follows its 4-8 kHz band's envelope (5 ms),
    as fricatives and breath extend into the top octave; the high band sits ~29 dB below the rest."""
    import soundfile as sf

    x16, sr = sf.read(str(DATA / "demo_early50.flac"), dtype="float32")
    x16 = x16[: int(seconds * sr)]
    rs = Resampler(sr, rate)
    up = rs.step(x16[None, :], rs.initial_state(1))[0][0].astype(np.float64)
    frame = sr // 200
    env = np.sqrt(np.convolve(_band(x16, sr, 4000, 8000) ** 2, np.ones(frame) / frame, mode="same"))
    env = np.interp(np.arange(up.size) * sr / rate, np.arange(env.size), env)
    noise = _band(np.random.default_rng(0).standard_normal(up.size), rate, 8000, 20000)
    return (up + 0.7 * env * noise / noise.std()).astype(np.float32)


def _convolve(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    size = 1 << int(np.ceil(np.log2(x.size + rir.size)))
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(rir, size), size)[: x.size]


@pytest.mark.parametrize("rate", [44100, 48000])
def test_a_model_at_pass_through_gives_back_the_input(passthrough, rate):
    # The high band is the exact complement of the model path's band: with a model at pass-through the
    # bands sum back to the input (delayed), with no notch or bump at the crossover; without a
    # pass_share output, only the DC blocker's 2 Hz high-pass remains.
    impulse = np.zeros((rate, 1), np.float32)
    impulse[1000] = 1.0
    response = dereverb_array(impulse, rate, model=passthrough)[:, 0]
    f = np.fft.rfftfreq(16384, 1 / rate)
    gain_db = 20 * np.log10(np.abs(np.fft.rfft(response[:16384]) / np.fft.rfft(impulse[:16384, 0])))
    audible = gain_db[(f >= 50) & (f <= 20000)]
    assert np.abs(audible).max() <= 0.5  # measured: 0.005 dB without pass_share, 1e-6 dB with it
    x = (np.random.default_rng(rate).standard_normal((rate, 2)) * 0.1).astype(np.float32)
    y = dereverb_array(x, rate, model=passthrough)
    if passthrough.has_pass_share:
        assert np.abs(y - x).max() <= 1e-6  # measured: 6e-8
    else:
        # What the DC blocker removed is all that is missing, but for its part above the model's band (the
        # removed part is a one-pole low-pass's output, fc / f of the input there: 2.5e-4 at 8 kHz), which
        # the high band, taken from the unblocked input, carries: measured 7e-5 on this noise of RMS 0.1.
        blocked, _ = dcblock.dc_block(x.T, dcblock.initial_state(2), dcblock.pole(rate))
        assert np.abs(y - blocked.T).max() <= 3e-4


def test_dry_fullband_speech_keeps_its_high_band(default_model):
    rate = 48000
    x = _fullband_speech(rate)
    y = dereverb_array(x, rate, model=default_model)
    x_high, y_high = _band(x, rate, 8000, 20000), _band(y, rate, 8000, 20000)
    assert _energy_db(x_high) - _energy_db(_band(x, rate, 0, 8000)) < -20  # the high band is there, 29 dB down
    assert abs(_energy_db(y_high) - _energy_db(x_high)) <= 1.0  # measured: -0.20 dB
    assert _si_sdr(y_high, x_high) >= 20.0  # measured: 29.3 dB


def test_a_reverberant_tail_falls_in_the_high_band(default_model):
    rate = 48000
    dry = _fullband_speech(rate)
    rt60 = 0.6
    t = np.arange(int(1.2 * rt60 * rate)) / rate
    rir = np.random.default_rng(1).standard_normal(t.size) * np.exp(-6.9 * t / rt60) * 0.1
    rir[0] = 1.0
    wet = _convolve(dry.astype(np.float64), rir)
    scale = 0.5 / np.abs(wet).max()
    x = (wet * scale).astype(np.float32)
    early = _convolve(dry.astype(np.float64), rir[: int(0.05 * rate)]) * scale
    y = dereverb_array(x, rate, model=default_model)

    def frames(z: np.ndarray, lo: float, hi: float) -> np.ndarray:  # energy per 20 ms frame in lo..hi Hz
        b = _band(z, rate, lo, hi)
        n = rate // 50
        return np.sum(b[: b.size // n * n].reshape(-1, n) ** 2, axis=1)

    # Frames after speech offsets: the dry high band is 30 dB below its loud frames, the reverberant one not.
    e_dry, e_in, e_out = frames(dry, 8000, 20000), frames(x, 8000, 20000), frames(y, 8000, 20000)
    loud = np.percentile(e_dry, 95)
    tail = (e_dry < loud * 1e-3) & (e_in > loud * 1e-5)
    assert tail.sum() >= 40
    assert 10 * np.log10(e_in[tail].sum() / e_out[tail].sum()) >= 6.0  # measured: 9.7 dB (500-7000 Hz: 19.6)
    # Against the early-50 target, the high band improves about as much as the low band (target: at least
    # the low band's improvement minus 1 dB).
    gains = {}
    for lo, hi in ((8000, 20000), (50, 7000)):
        ref = _band(early, rate, lo, hi)
        gains[lo] = _si_sdr(_band(y, rate, lo, hi), ref) - _si_sdr(_band(x, rate, lo, hi), ref)
    assert gains[8000] >= gains[50] - 1.0, gains  # measured: +1.57 and +1.46 dB


def test_music_through_the_gate_keeps_its_high_band(default_model):
    # Where the model's gate passes the input through, the high band's gain is 1: music keeps its cymbals.
    import soundfile as sf

    rate = 48000
    brass, sr = sf.read(str(DATA / "music_brass.flac"), dtype="float32")
    rs = Resampler(sr, rate)
    up = rs.step(brass[None, :], rs.initial_state(1))[0][0].astype(np.float64)
    hiss = _band(np.random.default_rng(2).standard_normal(up.size), rate, 8000, 20000)
    x = (up + 0.02 * hiss / hiss.std()).astype(np.float32)
    d = Dereverberator(default_model, sample_rate=rate)
    y = d.process(x)[d.latency_samples :]
    x = x[: y.size]
    late = slice(rate, None)  # once the gate has opened
    assert abs(_energy_db(_band(y[late], rate, 8000, 20000)) - _energy_db(_band(x[late], rate, 8000, 20000))) <= 0.2
    assert float(d.state.bypasses[1].gain.min()) == 1.0


@pytest.mark.parametrize("rate,expect", [(8000, False), (16000, False), (22050, True), (44100, True), (48000, True)])
def test_only_streams_above_the_model_rate_have_a_high_band(default_model, rate, expect):
    plan = make_plan(default_model, rate, 2)
    kinds = [type(p) for p in initial_state(plan).bypasses]
    assert plan.high_band is expect and (HighBand in kinds) is expect
    assert kinds[0] is ShareBypass  # the DC blocker's complement, for the shipped model's pass_share
