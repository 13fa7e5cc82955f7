"""Numerical safety of the engine: non-finite input and state, absurd levels, the output peak guard."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from stream import Dereverberator, dereverb_array
from stream.engine import PEAK_MARGIN_DB
from tests.signals import speechlike


class PoisonedModel:
    """Wraps a StepModel; its ``run_bound`` (which the engine calls) leaves a NaN state, output and
    pass-through share on the calls listed in ``poison``."""

    def __init__(self, model, poison: set[int]) -> None:
        self._model, self._poison, self.calls = model, poison, 0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def run_bound(self, bound, hops):
        y, share = self._model.run_bound(bound, hops)
        self.calls += 1
        if self.calls in self._poison:
            for v in bound.state.values():
                v.fill(np.nan)
            y.fill(np.nan)
            if share is not None:
                share.fill(np.nan)
        return y, share


def _with_model(model) -> Dereverberator:
    d = Dereverberator(model._model)
    d.plan = dataclasses.replace(d.plan, model=model)
    d.reset()
    return d


def test_nonfinite_state_is_reset_with_a_crossfade_and_reported(default_model):
    x = speechlike(3.0, 16000, 1, seed=11)
    hop = default_model.hop
    clean = Dereverberator(default_model)
    ref = np.concatenate([clean.process(x[i : i + hop]) for i in range(0, len(x), hop)])
    d = _with_model(PoisonedModel(default_model, poison={40}))  # the 40th hop (0.64 s in)
    y = np.concatenate([d.process(x[i : i + hop]) for i in range(0, len(x), hop)])
    assert d.state_resets == 1
    assert np.isfinite(y).all()
    # Before the event the output is untouched; long after it the stream is dereverberated again.
    event = 39 * hop + d.latency_samples
    assert np.array_equal(y[: 39 * hop], ref[: 39 * hop])
    assert np.abs(y[-4000:]).max() > 1e-3
    # No click: the largest sample-to-sample step around the event is no larger than the signal's own.
    around = y[event - 2 * hop : event + 4 * hop, 0]
    assert np.abs(np.diff(around)).max() <= 1.5 * np.abs(np.diff(ref[:, 0])).max()
    # The counter survives flush/reset (file mode reads it after the flush).
    d.flush()
    assert d.state_resets == 1


def test_state_reset_every_call_still_gives_finite_audio(default_model):
    # Even a model that always fails must not produce NaN: it degrades to silence/dry, never to garbage.
    d = _with_model(PoisonedModel(default_model, poison=set(range(1, 10_000))))
    x = speechlike(1.0, 16000, 1, seed=12)
    y = np.concatenate([d.process(x[i : i + 256]) for i in range(0, len(x), 256)])
    assert np.isfinite(y).all() and d.state_resets > 10


def test_absurd_finite_levels_stay_finite(default_model):
    x = speechlike(1.0, 16000, 1, seed=13) * np.float32(1e30)
    d = Dereverberator(default_model)
    y = np.concatenate([d.process(x), d.flush()])
    assert np.isfinite(y).all() and d.state_resets == 0


def _square(freq: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.sign(np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("name", ["square-100", "square-3k", "speech", "clicks", "step"])
def test_output_peak_never_exceeds_input_peak_plus_margin(default_model, name):
    rate = 16000
    if name.startswith("square"):
        x = _square(float(name.split("-")[1].replace("k", "000")), 2.0, rate)
    elif name == "speech":
        x = speechlike(2.0, rate, 1, seed=14)[:, 0] * 0.9 / np.abs(speechlike(2.0, rate, 1, seed=14)).max()
    elif name == "clicks":
        x = np.zeros(2 * rate, np.float32)
        x[::4001] = 1.0
    else:
        x = np.concatenate([np.zeros(rate, np.float32), np.full(rate, 0.5, np.float32)])
    y = dereverb_array(x, rate, model=default_model)
    limit = np.abs(x).max() * 10 ** (PEAK_MARGIN_DB / 20)
    assert np.abs(y).max() <= limit * (1 + 1e-6)


@pytest.mark.parametrize("rate", [16000, 48000])
def test_dc_offset_is_removed_before_the_model(default_model, rate):
    import soundfile as sf

    from stream.demo import DEMO_CLIP

    x, sr = sf.read(str(DEMO_CLIP), dtype="float32")
    x = x[: 4 * sr] * np.float32(0.5)
    if rate != sr:
        from stream.resample import Resampler

        rs = Resampler(sr, rate)
        x = rs.step(x[None, :], rs.initial_state(1))[0][0]
    clean = dereverb_array(x, rate, model=default_model)
    y = dereverb_array(x + np.float32(0.4), rate, model=default_model)
    # An offset present from the start decays in ~0.4 s (2 Hz high-pass). The clip opens on 0.24 s of
    # noise floor, which the shipped gate passes through until speech clears the hold (0.3 s), and where
    # it passes, the engine adds the blocker's complement (the offset) back, faded over 80 ms: so the
    # comparison starts at 0.75 s. Measured at 16 kHz: 0.24 from 0.5 s, 0.04 from 0.75 s (a gate head that
    # shuts on the floor: 0.16 and 0.11).
    settled = slice(3 * rate // 4, None)
    assert abs(float(y[settled].mean())) < 1e-3
    err = np.sqrt(np.mean((y[settled] - clean[settled]) ** 2) / np.mean(clean[settled] ** 2))
    # Without the DC blocker this error is 1.2 (offset 0.1) to 3.1 (offset 0.4). It is not ~0 because a
    # recurrent model amplifies float rounding (the offset changes the input's rounding) over seconds.
    assert err < 0.2, err


@pytest.mark.parametrize("rate", [16000, 48000])
def test_music_the_gate_passes_keeps_its_dc(default_model, rate):
    """Where the model passes its input through (near-clean music: its gate), the engine adds back what
    the DC blocker removed, so the input comes out whole, offset included; on speech (the test above)
    the blocker stays. Without the bypass this clip's offset is gone (mean ~0) and the clip comes out
    37.0 dB from its input; a DC-offset music render loses 8.6 dB SI-SDR to the blocker alone."""
    import soundfile as sf

    from pathlib import Path

    x, sr = sf.read(str(Path(__file__).resolve().parents[1] / "data" / "music_brass.flac"), dtype="float32")
    if rate != sr:
        from stream.resample import Resampler

        rs = Resampler(sr, rate)
        x = rs.step(x[None, :], rs.initial_state(1))[0][0]
    y = dereverb_array(x + np.float32(0.2), rate, model=default_model)
    # The gate is sure within ~0.2 s and the bypass fades in over ~0.2 s (LOW_SMOOTH_S).
    assert abs(float(y[rate:].mean()) - 0.2) < 0.01, float(y[rate:].mean())
    # No thump: the offset fades in, it never steps (largest change of 10 ms means, in units of the offset).
    means = y[: len(y) // (rate // 100) * (rate // 100)].reshape(-1, rate // 100).mean(axis=1)
    assert float(np.abs(np.diff(means)).max()) < 0.2 * 0.25


def test_a_pause_before_music_with_an_offset_changes_nothing(default_model):
    """A live stream idles in silence before its first sound; a file does not. Both must reach that sound
    in the same state, the music hold and the DC bypass's gain included: the shipped gate starts open and
    silence leaves it open, so the bypass's gain starts where silence leaves it (StepModel.rest_share).
    With the gain started at 0 instead, the two outputs differed by up to 0.042 (the offset is 0.2)."""
    import soundfile as sf

    from pathlib import Path

    x, rate = sf.read(str(Path(__file__).resolve().parents[1] / "data" / "music_brass.flac"), dtype="float32")
    x = x[rate // 4 :] + np.float32(0.2)  # the clip's own lead is silent: start with the music and its offset
    assert default_model.rest_share == 1.0  # the shipped gate passes silence through: the case that matters
    alone = dereverb_array(x, rate, model=default_model)
    lead = 40 * default_model.hop  # whole hops (a fractional-hop shift changes the STFT framing)
    after = dereverb_array(np.concatenate([np.zeros(lead, np.float32), x]), rate, model=default_model)[lead:]
    assert float(np.abs(after - alone).max()) < 1e-3


@pytest.mark.parametrize("rate", [16000, 48000])
def test_dc_blocker_leaves_the_voice_band_alone(rate):
    # The high-pass's phase shift is inaudible but counts in SI-SDR: with a 20 Hz cutoff a 100 Hz tone
    # comes out 14 dB from itself, which holds dry speech to ~25 dB through the runtime (stream/dcblock.py).
    from stream import dcblock

    # Cosines start at their peak, like a stream or file that begins mid-sound: measured from the first
    # sample, so a blocker that takes that sample for an offset fails here.
    t = np.arange(2 * rate) / rate
    for f, floor_db in ((100.0, -30.0), (300.0, -40.0)):
        x = np.cos(2 * np.pi * f * t).astype(np.float32)[None, :]
        y, _ = dcblock.dc_block(x, dcblock.initial_state(1), dcblock.pole(rate))
        for part in (slice(0, rate // 10), slice(None)):
            err = 10 * np.log10(np.sum((y[0, part] - x[0, part]) ** 2) / np.sum(x[0, part] ** 2))
            assert err < floor_db, (f, part, err)
    # ... and still removes an offset that appears mid-stream, within half a second.
    x = np.concatenate([np.zeros(rate), np.full(rate, 0.3)]).astype(np.float32)[None, :]
    y, _ = dcblock.dc_block(x, dcblock.initial_state(1), dcblock.pole(rate))
    assert abs(float(y[0, rate + rate // 2 :].mean())) < 0.3 * 0.01
