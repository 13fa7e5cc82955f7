"""Room bank: determinism, measured RT60 vs target, DRR and truncation."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training import rooms as R
from training.mixing import find_direct_index

FS = 16000


def decaying_noise_rir(rt60: float, seed: int = 0, n: int = 32000, d0: int = 40, fs: int = FS) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h = np.zeros(n)
    t = np.arange(n - d0) / fs
    h[d0:] = rng.standard_normal(n - d0) * 10 ** (-3 * t / rt60)
    h[d0] = 5.0
    return h


@pytest.mark.parametrize("rt60", [0.2, 0.6, 1.2])
def test_measure_rt60_on_exponential_decay(rt60: float) -> None:
    assert R.measure_rt60(decaying_noise_rir(rt60), FS) == pytest.approx(rt60, rel=0.05)


def test_drr_and_truncation() -> None:
    h = np.zeros(8000)
    h[100] = 1.0
    h[500:] = 0.01 * np.random.default_rng(1).standard_normal(7500)
    expected = 10 * np.log10(1.0 / np.sum(h[141:] ** 2))
    assert R.measure_drr(h, FS) == pytest.approx(expected, abs=0.01)
    long = decaying_noise_rir(0.4, n=48000)
    cut = R.truncate_rir(long, FS, 0.4)
    assert len(cut) < len(long)
    assert 0.3 * FS < len(cut) <= 40 + 1.6 * 0.4 * FS + 1


@pytest.mark.slow
def test_bank_deterministic_and_rt60_on_target(tmp_path: Path) -> None:
    # Small, not too live rooms keep this fast (pure ISM up to 0.6 s, hybrid above).
    cfg = R.RoomConfig(rt60_range=(0.3, 0.9), size_class_probs=(0.6, 0.4, 0.0))
    a = R.build_bank(str(tmp_path / "a"), count=3, seed=3, jobs=2, cfg=cfg, progress=False)
    b = R.build_bank(str(tmp_path / "b"), count=3, seed=3, jobs=1, cfg=cfg, progress=False)
    for name in ("rooms.jsonl", "config.json"):
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False)
    import pyroomacoustics as pra

    methods = set()
    for ra, rb in zip(a, b):
        assert filecmp.cmp(tmp_path / "a" / ra["path"], tmp_path / "b" / rb["path"], shallow=False)
        h, sr = sf.read(tmp_path / "a" / ra["path"], dtype="float32")
        assert sr == FS and h.dtype == np.float32 and np.max(np.abs(h)) == pytest.approx(1.0)
        assert ra["direct_index"] == find_direct_index(h, FS)
        # Independent estimate (pyroomacoustics' own Schroeder T20) of the stored RIR.
        rt_pra = pra.experimental.measure_rt60(h[ra["direct_index"] + 41 :], fs=FS, decay_db=20)
        assert rt_pra == pytest.approx(ra["rt60_target"], rel=0.25), ra
        assert ra["rt60"] == pytest.approx(ra["rt60_target"], rel=0.2), ra
        assert 0.5 - 1e-3 <= ra["distance"] <= 4.0 + 1e-3
        methods.add(ra["method"])
    recs = [json.loads(x) for x in (tmp_path / "a" / "rooms.jsonl").read_text().splitlines()]
    assert [r["split"] for r in recs] == ["train", "train", "train"]
    assert {"id", "path", "split", "rt60", "drr_db", "direct_index", "source", "room_dims", "distance"} <= set(recs[0])


def test_split_by_index_and_measured(tmp_path: Path) -> None:
    cfg = R.RoomConfig()
    assert [cfg.split_by_index[i % 10] for i in range(10)].count("train") == 8
    # A "measured" RIR at 48 kHz, stereo, with a long pre-delay.
    h48 = np.zeros((48000, 2))
    h48[4800:, 0] = decaying_noise_rir(0.5, n=43200, d0=0, fs=48000)
    (tmp_path / "m").mkdir()
    sf.write(tmp_path / "m" / "hall.wav", h48, 48000, subtype="FLOAT")
    recs = R.build_measured([tmp_path / "m" / "hall.wav"], cfg, str(tmp_path / "out"))
    assert recs[0]["split"] == "train" and recs[0]["source"] == "measured"
    assert recs[0]["direct_index"] <= 41  # pre-delay cut to 2.5 ms
    assert recs[0]["rt60"] == pytest.approx(0.5, rel=0.1)
    h, sr = sf.read(tmp_path / "out" / recs[0]["path"])
    assert sr == FS
