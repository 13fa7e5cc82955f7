"""Corpus builder: determinism with the real TTS programs, splits, gate, music."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import CORPUS_PACKAGES
from training import data as D

needs_tools = pytest.mark.debian(*CORPUS_PACKAGES)


def _tree(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


@needs_tools
def test_build_is_deterministic(tmp_path: Path) -> None:
    # ~3 short clips; one run with a pool, one without: same bytes either way.
    cfg = D.CorpusConfig(min_seconds=3.0, max_seconds=4.0, music_fraction=0.3)
    a, b = tmp_path / "a", tmp_path / "b"
    ra = D.build_corpus(str(a), hours=10 / 3600, seed=7, jobs=2, cfg=cfg, progress=False)
    rb = D.build_corpus(str(b), hours=10 / 3600, seed=7, jobs=1, cfg=cfg, progress=False)
    assert ra == rb and len(ra) >= 2
    assert _tree(a) == _tree(b)
    for f in _tree(a):  # FLACs, manifest.jsonl and versions.json
        assert filecmp.cmp(a / f, b / f, shallow=False), f
    for r in (json.loads(x) for x in (a / "manifest.jsonl").read_text().splitlines()):
        x, sr = sf.read(a / r["path"], dtype="float32")
        assert sr == 16000 and x.ndim == 1
        assert abs(len(x) / sr - r["seconds"]) < 1e-3
        assert 2.5 <= r["seconds"] <= 4.0 + 1e-6
        assert D.active_level_db(x, sr) == pytest.approx(-26.0, abs=1.5)
        assert np.max(np.abs(x[:1600])) < 0.05  # >= 0.1 s of silence at the start
    versions = json.loads((a / "versions.json").read_text())
    assert versions["debian"]["espeak-ng"]


@needs_tools
@pytest.mark.parametrize("voice", [D.VoiceSpec("festival", "kal_diphone", "train"),
                                   D.VoiceSpec("flite", "slt", "train", gate=True),
                                   D.VoiceSpec("espeak", "en-gb-scotland+f3", "train")])
def test_each_engine_speaks(tmp_path: Path, voice: D.VoiceSpec) -> None:
    rng = np.random.default_rng(0)
    x, sr, _ = D.synthesize(voice, "Hello there; it's a \"quoted\" test & nothing $(breaks).", rng, str(tmp_path))
    assert sr in (8000, 16000, 22050, 32000, 44100, 48000)
    assert 1.0 < len(x) / sr < 8.0
    assert np.sqrt(np.mean(x**2)) > 1e-3


def test_hiss_gate_synthetic() -> None:
    fs = 16000
    rng = np.random.default_rng(1)
    t = np.arange(fs * 3) / fs
    env = ((t > 0.5) & (t < 1.2)) | ((t > 1.8) & (t < 2.5))
    speech = env * (0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 1250 * t))
    hiss = 0.003 * rng.standard_normal(len(t))  # ~ -50 dBFS, ~35 dB under the tones
    y = D.hiss_gate((speech + hiss).astype(np.float32), fs)
    pause = (t > 0.05) & (t < 0.4)
    before = 10 * np.log10(np.mean(hiss[pause] ** 2))
    after = 10 * np.log10(np.mean(y[pause] ** 2) + 1e-20)
    assert after < before - 20.0
    loud = (t > 0.7) & (t < 1.0)
    ratio = np.mean(y[loud] ** 2) / np.mean((speech + hiss)[loud] ** 2)
    assert abs(10 * np.log10(ratio)) < 0.5


@needs_tools
def test_hiss_gate_on_flite_awb(tmp_path: Path) -> None:
    x, sr, _ = D.synthesize(D.VoiceSpec("flite", "awb", "train"), "One small test. And another one.",
                            np.random.default_rng(0), str(tmp_path))
    y = D.hiss_gate(x, sr)
    e, ey = D.frame_energy_db(x, sr), D.frame_energy_db(y, sr)
    onset = int(np.flatnonzero(e > e.max() - 30)[0])
    lead = slice(1, onset - 5)  # flite's leading pause (10 ms frames), away from the onset
    assert onset > 10
    assert np.mean(e[lead]) > -90  # the hiss is really there ...
    assert np.mean(ey[lead]) < np.mean(e[lead]) - 25  # ... and gone after the gate
    loud = e > e.max() - 20
    assert abs(10 * np.log10(np.mean(10 ** (ey[loud] / 10)) / np.mean(10 ** (e[loud] / 10)))) < 0.5


def test_test_voices_never_in_train() -> None:
    voices = D.voice_bank()
    by_split = {s: {(v.source, v.name) for v in voices if v.split == s} for s in D.SPLITS}
    assert all(by_split[s] for s in D.SPLITS)
    assert not by_split["test"] & by_split["train"]
    assert not by_split["val"] & by_split["train"]
    plans = D.plan_corpus(2.0, 3, "/nonexistent", D.CorpusConfig(), voices)
    for p in plans:
        if p.voice is not None:
            assert p.voice.split == p.split
    kinds = {(p.split, p.kind) for p in plans}
    assert ("test", "music") in kinds and ("train", "speech") in kinds
    total = sum(p.target_seconds for p in plans)
    music = sum(p.target_seconds for p in plans if p.kind == "music")
    assert 0.08 < music / total < 0.22


def test_midi_is_valid() -> None:
    midi, desc = D.compose_midi(np.random.default_rng(3), 5.0)
    assert midi[:4] == b"MThd" and midi[14:18] == b"MTrk"
    assert int.from_bytes(midi[18:22], "big") == len(midi) - 22
    assert midi.endswith(b"\xff\x2f\x00")
    assert D.compose_midi(np.random.default_rng(3), 5.0)[0] == midi


def test_trim_and_level() -> None:
    fs = 16000
    rng = np.random.default_rng(4)
    x = np.concatenate([np.zeros(fs), 0.5 * rng.standard_normal(fs), np.zeros(2 * fs)]).astype(np.float32)
    y = D.trim_and_pad(x, fs, rng, (0.1, 0.3))
    assert 1.2 * fs <= len(y) <= 1.62 * fs
    z = D.normalize_level(y, fs, -26.0)
    assert D.active_level_db(z, fs) == pytest.approx(-26.0, abs=0.3)


@needs_tools
def test_test_music_comes_from_a_soundfont_training_never_uses(tmp_path: Path) -> None:
    """The same composition rendered for train and for test: the test clip's instruments are the
    held-out soundfont's (other samples, so other audio) and its manifest record names that font."""
    cfg = D.CorpusConfig()
    assert cfg.soundfont_for("train") == cfg.soundfont_for("val") != cfg.soundfont_for("test")
    recs, audio = {}, {}
    for split in ("train", "test"):
        plan = D.ClipPlan(5, 3, split, "music", None, 4.0, str(tmp_path / split))
        recs[split] = D.build_clip(plan, cfg)
        audio[split], _ = sf.read(tmp_path / split / recs[split]["path"], dtype="float32")
    assert recs["train"]["voice"] == "FluidR3_GM" and recs["test"]["voice"] == "TimGM6mb"
    assert recs["train"]["midi"] == recs["test"]["midi"]  # one composition, two renderings
    n = min(audio["train"].size, audio["test"].size)
    a, b = audio["train"][:n], audio["test"][:n]
    assert np.sqrt(np.mean(b**2)) > 1e-3
    assert abs(float(np.corrcoef(a, b)[0, 1])) < 0.9
