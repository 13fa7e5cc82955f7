"""Numerics of the late-reverb predictor over hours: float32 RLS must stay finite and keep working.

``pytest -m soak`` streams 2 hours at 16 kHz through the model with the predictor; ``pytest -m slow``
streams 6 minutes with the same layout scaled down, and 5 minutes through the test suite's small
predictor model (the numerics only: its weights are random). The stream: speech, music and pauses at random
levels through room A for the first half and room B for the second (rooms drawn as the room bank
draws them, RT60 0.6 and 0.9 s), a long stretch of digital silence, and a burst of full-scale white noise. Asserted:
- the output is finite everywhere, and bounded by the input's peak + 1 dB;
- digital silence leaves the predictor's state where it was (the floor freezes it: P does not grow);
- every predictor state is finite at the end, and the engine never had to reset a state;
- it still gains at its end what it gains at its start in the same room: a reference passage played
  at the start of the stream (room A, cold) and again just before the room change scores within
  0.5 dB; the same passage at the end of the stream (room B, after an hour in it) within 0.5 dB of a
  fresh stream's on it in room B.

The figures are printed (``pytest -s`` shows them); :func:`predictor_soak` returns them.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stream import Dereverberator, StepModel

# The training tools' packages (scipy, pyroomacoustics) make the stream; the runtime-only install skips.
fftconvolve = pytest.importorskip("scipy.signal").fftconvolve
pytest.importorskip("pyroomacoustics")

RATE = 16000
DATA = Path(__file__).resolve().parents[1] / "data"
EARLY = int(0.05 * RATE)  # the early part: direct sound and the first 50 ms
SCORE_FROM = 14.0  # seconds into the reference passage where its score starts (the predictor is warm)


@lru_cache(maxsize=4)
def room(rt60: float, seed: int) -> np.ndarray:
    """An impulse response at 16 kHz of a room drawn and simulated as the project's room bank does
    (``training.rooms``: a shoebox of random size and wall materials, pyroomacoustics, re-simulated
    until the measured RT60 is within tolerance of ``rt60``), scaled to unit energy (the reverberant
    speech as loud as the dry)."""
    from training.rooms import RoomConfig, draw_room, simulate_to_target

    cfg = RoomConfig()
    rir, _, _, _ = simulate_to_target(draw_room(np.random.default_rng(seed), cfg, rt60=rt60), cfg)
    return (rir / np.sqrt(np.sum(rir**2))).astype(np.float32)


def _clips() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(speech, music, reference passage), dry float32 at 16 kHz. The speech is the demo clip's early
    part (its target, nearly dry); the passage is three takes of it at 0, -6 and -3 dB (40 s)."""
    speech, sr = sf.read(str(DATA / "demo_early50.flac"), dtype="float32")
    music, sr2 = sf.read(str(DATA / "music_brass.flac"), dtype="float32")
    assert sr == sr2 == RATE
    speech = speech / np.abs(speech).max() * 0.5
    music = (music if music.ndim == 1 else music.mean(axis=1)) / np.abs(music).max() * 0.5
    passage = np.concatenate([speech * g for g in (1.0, 0.5, 0.708)])
    return speech, music, passage


def schedule(seconds: float, seed: int = 0) -> list[tuple[str, np.ndarray, int]]:
    """The stream's dry segments as (kind, dry audio, room index 0 or 1). It starts and ends with the
    reference passage; room A holds the first half and ends with the passage again; a digital
    silence of 1/24 of the run sits at a sixth, a 2 s full-scale noise burst ("burst", added after
    the room, as a glitch on the line) at a third."""
    speech, music, passage = _clips()
    rng = np.random.default_rng(seed)
    half = seconds / 2
    segs: list[tuple[str, np.ndarray, int]] = [("passage", passage, 0)]
    t = passage.size / RATE
    silence_at, burst_at = seconds / 6, seconds / 3
    placed_silence = placed_burst = False

    def filler(room_ix: int, until: float) -> None:
        nonlocal t, placed_silence, placed_burst
        while t < until:
            if not placed_silence and t >= silence_at:
                seg, kind = np.zeros(int(seconds / 24 * RATE), np.float32), "silence"
                placed_silence = True
            elif not placed_burst and t >= burst_at:
                seg, kind = rng.uniform(-1.0, 1.0, 2 * RATE).astype(np.float32), "burst"
                placed_burst = True
            else:
                r = rng.random()
                if r < 0.2:
                    seg, kind = np.zeros(int(rng.uniform(0.2, 8.0) * RATE), np.float32), "pause"
                elif r < 0.45:
                    seg, kind = music * np.float32(10 ** (rng.uniform(-25, 0) / 20)), "music"
                else:
                    seg, kind = speech * np.float32(10 ** (rng.uniform(-30, 0) / 20)), "speech"
            segs.append((kind, seg, room_ix))
            t += seg.size / RATE

    filler(0, half - passage.size / RATE)
    segs.append(("passage", passage, 0))
    t += passage.size / RATE
    filler(1, seconds - passage.size / RATE)
    segs.append(("passage", passage, 1))
    return segs


def wet_segments(segs, rirs) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Each segment through its room: (kind, reverberant input, early target), the reverberation tail
    of one segment carried into the next (the room keeps ringing across a boundary, and across the
    room change). A burst goes straight to the input (target: silence)."""
    tail = np.zeros(0, np.float32)
    for kind, dry, r in segs:
        n = dry.size
        if kind == "burst":
            wet, early = dry.copy(), np.zeros(n, np.float32)
        else:
            wet = fftconvolve(dry, rirs[r])[: n + rirs[r].size - 1].astype(np.float32)
            early = fftconvolve(dry, rirs[r][:EARLY])[:n].astype(np.float32)
        spill = wet[n:] if kind != "burst" else np.zeros(0, np.float32)
        wet = wet[:n]
        k = min(tail.size, n)
        wet[:k] += tail[:k]
        rest = tail[k:]
        tail = np.zeros(max(rest.size, spill.size), np.float32)
        tail[: rest.size] += rest
        tail[: spill.size] += spill
        yield kind, wet, early


def si_sdr_db(est: np.ndarray, ref: np.ndarray) -> float:
    est, ref = est.astype(np.float64), ref.astype(np.float64)
    scale = np.dot(est, ref) / np.dot(ref, ref)
    err = est - scale * ref
    return float(10 * np.log10(np.dot(scale * ref, scale * ref) / np.dot(err, err)))


def _score(x: np.ndarray, y: np.ndarray, target: np.ndarray) -> float:
    """dSI-SDR (dB) of output ``y`` over input ``x`` against ``target``, from SCORE_FROM s on."""
    a = int(SCORE_FROM * RATE)
    return si_sdr_db(y[a:], target[a:]) - si_sdr_db(x[a:], target[a:])


def _run(d: Dereverberator, x: np.ndarray, block: int = 4096) -> np.ndarray:
    """Stream ``x`` in blocks: the output, ``latency_samples`` behind ``x``."""
    out = np.empty_like(x)
    for i in range(0, x.size, block):
        out[i : i + block] = d.process(x[i : i + block])
    return out


def predictor_soak(model: StepModel | str | Path, seconds: float, seed: int = 0) -> dict:
    """Stream the layout of ``schedule(seconds)``; returns the figures the tests assert on."""
    rirs = (room(0.6, 3), room(0.9, 2))  # DRR -3.5 and -14.6 dB
    segs = schedule(seconds, seed)
    d = Dereverberator(model, sample_rate=RATE)
    lat = d.latency_samples
    peak_in, peak_out, frames = 0.0, 0.0, 0
    passage_gains: list[float] = []
    p_before_silence = p_after_silence = None
    prev: tuple[str, np.ndarray, np.ndarray] | None = None
    for kind, wet, early in wet_segments(segs, rirs):
        if kind == "silence":
            # The room's tail rings into the silence's first second: the state is read after it.
            head = _run(d, wet[: 2 * RATE])
            # The bound step swaps two state sets at each call: read the current one, at each use.
            p_before_silence = float(np.abs(d.state.bound.state["rls_p"]).max())
            y = np.concatenate([head, _run(d, wet[2 * RATE :])])
            p_after_silence = float(np.abs(d.state.bound.state["rls_p"]).max())
        else:
            y = _run(d, wet)
        if not np.isfinite(y).all():
            raise AssertionError(f"non-finite output {frames / RATE:.1f} s into the stream")
        peak_in, peak_out = max(peak_in, float(np.abs(wet).max())), max(peak_out, float(np.abs(y).max()))
        # The output lags the input by ``lat``: the previous segment's output ends with this one's start.
        if prev is not None and prev[0] == "passage":
            passage_gains.append(_score(prev[1], np.concatenate([prev_out[lat:], y[:lat]]), prev[2]))
        prev, prev_out = (kind, wet, early), y
        frames += wet.size
    # The last passage: its output's end comes with the flush.
    tail = d.process(np.zeros(lat, np.float32))
    last_y = np.concatenate([prev_out[lat:], tail])
    passage_gains.append(_score(prev[1], last_y, prev[2]))
    finite_state = all(np.isfinite(v).all() for v in d.state.bound.state.values())

    # A fresh stream on the passage in room B: what the stream gains at its start in that room.
    _, wet_b, early_b = next(wet_segments([("passage", _clips()[2], 1)], rirs))
    fresh = Dereverberator(model, sample_rate=RATE)
    fy = np.concatenate([fresh.process(wet_b), fresh.process(np.zeros(lat, np.float32))])[lat:]
    return {
        "seconds": round(frames / RATE, 1), "segments": len(segs),
        "gain_room_a_start": round(passage_gains[0], 3), "gain_room_a_end": round(passage_gains[1], 3),
        "gain_room_b_fresh": round(_score(wet_b, fy, early_b), 3), "gain_room_b_end": round(passage_gains[2], 3),
        "peak_in": round(peak_in, 4), "peak_out": round(peak_out, 4),
        "rls_p_max_before_silence": p_before_silence, "rls_p_max_after_silence": p_after_silence,
        "finite_state": finite_state, "state_resets": d.state_resets, "nonfinite_inputs": d.nonfinite_inputs,
    }


def _check_numerics(r: dict) -> None:
    print(r)
    assert r["finite_state"] and r["state_resets"] == 0 and r["nonfinite_inputs"] == 0, r
    assert r["peak_out"] <= r["peak_in"] * 10 ** (1.0 / 20), r  # the engine's output limit holds too
    assert r["rls_p_max_after_silence"] == r["rls_p_max_before_silence"], r  # frozen, not growing


def _check(r: dict) -> None:
    _check_numerics(r)
    print(f"{r['seconds']} s streamed")
    assert r["gain_room_a_end"] >= r["gain_room_a_start"] - 0.5, r
    assert r["gain_room_b_end"] >= r["gain_room_b_fresh"] - 0.5, r


@pytest.fixture(scope="module")
def production_predictor() -> StepModel:
    """The shipped model, when it carries the predictor. A candidate is soaked before it ships with
    ``predictor_soak(StepModel.load(path), seconds)`` (docs/research.md has the runs)."""
    shipped = StepModel.load(None)
    if not any(s.name == "rls_p" for s in shipped.states):
        pytest.skip("the shipped model carries no late-reverb predictor")
    return shipped


@pytest.mark.slow
def test_the_soak_runs_on_a_small_predictor_model(predictor_onnx):
    """The soak's stream and bookkeeping on the test suite's small predictor model (random weights, so
    its gains mean nothing): five minutes with the silence and the burst stay finite, the silence
    leaves P where it was, no reset."""
    _, path, _ = predictor_onnx
    r = predictor_soak(StepModel.load(path), 300.0)
    _check_numerics(r)
    assert r["seconds"] >= 120.0 and r["rls_p_max_before_silence"] > 0  # the predictor had learned by then


@pytest.mark.slow
def test_predictor_soak_six_minutes(production_predictor):
    _check(predictor_soak(production_predictor, 360.0))


@pytest.mark.soak
def test_predictor_soak_two_hours(production_predictor):
    _check(predictor_soak(production_predictor, 7200.0))
