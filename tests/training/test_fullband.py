"""Full-band evaluation at 48 kHz: the band split, the per-band scores, the tail frames, the test material."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import CORPUS_PACKAGES
from training import fullband as F
from training import rooms as R

RATE = 48000


def _bursts(rate: int = RATE, seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """White-noise bursts (0.4 s on, 0.5 s off) with content up to the Nyquist frequency, float64 [n]."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    return rng.standard_normal(n) * ((t % 0.9) < 0.4) * 0.1


def _below(x: np.ndarray, hz: float, rate: int = RATE) -> np.ndarray:
    """``x`` with everything from ``hz`` up removed (an FFT brick wall, clear of the crossover's transition)."""
    spec = np.fft.rfft(x)
    spec[np.fft.rfftfreq(x.size, 1 / rate) >= hz] = 0
    return np.fft.irfft(spec, x.size)


def _room(x: np.ndarray, rate: int = RATE, rt60: float = 0.5, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(``x`` through a direct path and an exponential noise tail, ``x`` through its first 50 ms), float64 [n]."""
    t = np.arange(int(rt60 * rate)) / rate
    h = np.random.default_rng(seed).standard_normal(t.size) * np.exp(-6.9 * t / rt60) * 0.1
    h[0] = 1.0
    conv = lambda g: np.convolve(x, g)[: x.size]  # noqa: E731
    return conv(h), conv(h[: int(0.05 * rate)])


def test_crossover_is_linear_phase_and_complementary() -> None:
    h = F.lowpass_taps(RATE)
    assert h.size % 2 == 1 and np.array_equal(h, h[::-1])  # symmetric: linear phase
    f = np.fft.rfftfreq(1 << 16, 1 / RATE)
    resp = np.abs(np.fft.rfft(h, 1 << 16))
    db = 20 * np.log10(resp + 1e-12)
    assert np.max(np.abs(db[f < 7500])) < 0.01  # flat below the transition
    assert np.max(db[f > 8500]) < -70  # stopped above it
    assert db[np.argmin(np.abs(f - F.CROSSOVER_HZ))] == pytest.approx(-6.02, abs=0.1)
    # the bands sum back to the signal exactly when the high band reaches the Nyquist frequency
    x = _bursts()
    low, high = F.split_bands(x, RATE, top=RATE / 2)
    assert np.max(np.abs(low + high - x)) < 1e-12
    # zero phase: a tone in either band comes out in place, at its level
    t = np.arange(RATE) / RATE
    for freq, band in ((2000.0, 0), (12000.0, 1)):
        tone = np.sin(2 * np.pi * freq * t)
        out = F.split_bands(tone, RATE)[band]
        mid = slice(2000, -2000)
        assert np.max(np.abs(out[mid] - tone[mid])) < 1e-3
        assert np.max(np.abs(F.split_bands(tone, RATE)[1 - band][mid])) < 1e-3
    # the scored high band stops at 20 kHz
    tone = np.sin(2 * np.pi * 22000.0 * t)
    assert np.max(np.abs(F.split_bands(tone, RATE)[1][2000:-2000])) < 1e-3


def test_tail_frames_follow_the_offsets_of_the_dry_signal() -> None:
    x = _bursts()
    frames = F.tail_frames(x, RATE)
    start = np.arange(frames.size) * F.TAIL_FRAME_S
    phase = start % 0.9
    assert frames.any()
    assert not frames[phase < 0.4].any()  # never in a burst
    assert frames[(phase >= 0.4) & (phase < 0.85) & (start < 2.6)].all()  # every pause after a burst
    silent_after = np.zeros(2 * RATE)
    x2 = np.concatenate([x[: int(0.4 * RATE)], silent_after])
    f2 = F.tail_frames(x2, RATE)
    assert f2[20:45].all() and not f2[46:].any()  # only within 0.5 s of the offset


def test_a_quiet_fricative_is_no_tail_of_its_band() -> None:
    rng = np.random.default_rng(2)
    n = 3 * RATE
    t = np.arange(n) / RATE
    w = rng.standard_normal(n)
    high = w - _below(w, 9000.0)
    # voiced bursts below 7.5 kHz with a faint top octave, then a fricative 32 dB below them, all above 9 kHz
    phase = t % 0.9
    direct = _below(_bursts(), 7500.0) + 0.001 * high * (phase < 0.4) + 0.0018 * high * (phase >= 0.45) * (phase < 0.55)
    _, d_hi = F.split_bands(direct, RATE)
    common, in_high = F.tail_frames(direct, RATE), F.tail_frames(direct, RATE, d_hi)
    frame_t = np.arange(common.size) * F.TAIL_FRAME_S
    fricative = ((frame_t % 0.9) >= 0.46) & ((frame_t % 0.9) < 0.53)
    assert common[fricative].all()  # quiet in the whole band: after an offset
    assert not in_high[fricative].any()  # but loud in its own band
    assert in_high[((frame_t % 0.9) >= 0.58) & ((frame_t % 0.9) < 0.85) & (frame_t < 2.6)].all()


def test_identity_scores_zero_gain_in_every_band() -> None:
    dry = _bursts()
    wet, early = _room(dry)
    systems = {"unprocessed": lambda s: s, "ours": lambda s: s.copy()}
    rev = F.score_signals(systems, "reverb", wet.astype(np.float32), early, dry, RATE, speech_metrics=False)
    assert rev["with_high"] and min(rev["tail_frames"]) > 0
    ours = rev["systems"]["ours"]
    for key in ("d_si_sdr_early", "d_si_sdr_direct", "d_si_sdr_early_low", "d_si_sdr_early_high"):
        assert ours[key] == pytest.approx(0.0, abs=1e-6)
    assert ours["tail_drop_low"] == pytest.approx(0.0, abs=1e-6)
    assert ours["tail_drop_high"] == pytest.approx(0.0, abs=1e-6)
    dry_x = dry.astype(np.float32)
    d = F.score_signals(systems, "dry", dry_x, dry_x, dry_x, RATE, speech_metrics=False)["systems"]["ours"]
    assert d["high_energy_db"] == pytest.approx(0.0, abs=1e-6) and d["si_sdr_input_high"] > 100


def test_scores_see_a_missing_high_band_and_a_shorter_tail() -> None:
    dry = _bursts()
    wet, early = _room(dry)

    def no_high(s: np.ndarray) -> np.ndarray:
        return _below(s, 7500.0).astype(np.float32)

    def gate_tail(s: np.ndarray) -> np.ndarray:  # an oracle that silences the tail frames
        y = s.copy()
        n = int(F.TAIL_FRAME_S * RATE)
        for k in np.flatnonzero(F.tail_frames(dry, RATE)):
            y[k * n:(k + 1) * n] *= 0.1
        return y

    x = wet.astype(np.float32)
    out = F.score_signals({"unprocessed": lambda s: s, "ours": no_high}, "dry", x, x, x, RATE,
                          speech_metrics=False)["systems"]["ours"]
    assert out["high_energy_db"] < -40 and out["si_sdr_input_high"] < 1
    rev = F.score_signals({"unprocessed": lambda s: s, "ours": gate_tail}, "reverb", x, early, dry, RATE,
                          speech_metrics=False)["systems"]["ours"]
    assert rev["tail_drop_low"] == pytest.approx(20.0, abs=0.5)
    assert rev["tail_drop_high"] == pytest.approx(20.0, abs=0.5)


def test_a_band_limited_reference_has_no_high_band() -> None:
    dry = _below(_bursts(), 7500.0)
    wet, early = _room(dry)
    res = F.score_signals({"unprocessed": lambda s: s}, "reverb", wet.astype(np.float32), early, dry, RATE,
                          speech_metrics=False)
    assert not res["with_high"] and "si_sdr_early_high" not in res["systems"]["unprocessed"]
    # the dry clip's own share, when given, decides
    forced = F.score_signals({"unprocessed": lambda s: s}, "reverb", wet.astype(np.float32), early, dry, RATE,
                             speech_metrics=False, high_share_db=-20.0)
    assert forced["with_high"] and "si_sdr_early_high" in forced["systems"]["unprocessed"]


def _small_bank(tmp: Path, rate: int) -> tuple[R.RoomConfig, dict]:
    """A one-room bank (test split, a short RT60 so the image method alone simulates it) at ``rate``."""
    cfg = dataclasses.replace(R.RoomConfig(), rt60_range=(0.3, 0.4), sample_rate=rate)
    rec = R.build_room(9, 3, cfg, str(tmp))
    (tmp / "config.json").write_text(json.dumps({"config": dataclasses.asdict(cfg), "count": 10, "seed": 3}))
    (tmp / "rooms.jsonl").write_text(json.dumps(rec) + "\n")
    return cfg, rec


def test_room_resimulated_at_48k_from_its_spec(tmp_path: Path) -> None:
    cfg16, rec = _small_bank(tmp_path / "bank", 16000)
    out = F.resimulate_rooms(str(tmp_path / "bank"), str(tmp_path / "out"), RATE, per_bin=4, log=lambda s: None)
    assert [r["id"] for r in out] == [rec["id"]]
    rir, sr = sf.read(tmp_path / "out" / rec["path"])
    assert sr == RATE and rir.ndim == 1
    assert abs(R.measure_rt60(rir, RATE) / rec["rt60_target"] - 1) <= cfg16.rt60_tolerance
    assert out[0]["rt60"] == pytest.approx(R.measure_rt60(rir, RATE), abs=1e-3)
    assert out[0]["room_dims"] == rec["room_dims"] and out[0]["rt60_16k"] == rec["rt60"]
    # the redraw is checked against the recorded geometry
    wrong = {**rec, "mic": [m + 0.1 for m in rec["mic"]]}
    with pytest.raises(ValueError):
        F.spec_of(wrong, 3, cfg16)


@pytest.mark.debian(*CORPUS_PACKAGES)
def test_speech_at_48k_keeps_its_voice_band(tmp_path: Path) -> None:
    from training import data

    cfg = dataclasses.replace(data.CorpusConfig(), sample_rate=RATE)
    shares = {}
    for voice in (data.VoiceSpec("espeak", "en-us-nyc+m3", "test"), data.VoiceSpec("festival", "ked_diphone", "test")):
        plan = data.ClipPlan(7, 1, "test", "speech", voice, 3.5, str(tmp_path))
        rec = data.build_clip(plan, cfg)
        x, sr = sf.read(tmp_path / rec["path"])
        assert sr == RATE
        shares[voice.source] = F.high_band_share_db(x, RATE)
    assert shares["espeak"] > F.HB_CONTENT_DB + 10  # 22.05 kHz voice: content up to about 11 kHz
    assert shares["festival"] < F.HB_CONTENT_DB  # 16 kHz voice: nothing above 9 kHz to score
