"""ReverbDataset: determinism, shapes, split isolation, reverb tail from before the segment."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training.dataset import ReverbDataset
from training.mixing import MixConfig

FS = 16000


def write_jsonl(path: Path, recs: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


@pytest.fixture()
def data_dirs(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    corpus, rooms = tmp_path / "corpus", tmp_path / "rooms"
    clips = []
    for i, (split, kind, sec) in enumerate([("train", "speech", 5.0), ("train", "speech", 2.5),
                                            ("train", "music", 6.0), ("val", "speech", 5.0),
                                            ("test", "speech", 5.0)]):
        n = int(sec * FS)
        x = 0.1 * rng.standard_normal(n) * (np.sin(np.arange(n) / FS * 2 * np.pi * 3) > 0)
        rel = f"{split}/{kind}/c{i}.flac"
        (corpus / split / kind).mkdir(parents=True, exist_ok=True)
        sf.write(corpus / rel, x, FS, subtype="PCM_16")
        clips.append({"id": f"c{i}", "path": rel, "split": split, "kind": kind, "source": "x",
                      "voice": "x", "seconds": sec})
    write_jsonl(corpus / "manifest.jsonl", clips)
    rirs = []
    for i, split in enumerate(["train", "train", "val", "test"]):
        n = 8000
        h = np.zeros(n, np.float32)
        h[40] = 1.0
        h[80:] = (0.2 * rng.standard_normal(n - 80) * 10 ** (-3 * np.arange(n - 80) / FS / 0.4)).astype(np.float32)
        rel = f"{split}/r{i}.wav"
        (rooms / split).mkdir(parents=True, exist_ok=True)
        sf.write(rooms / rel, h, FS, subtype="FLOAT")
        rirs.append({"id": f"r{i}", "path": rel, "split": split, "rt60": 0.4 + 0.1 * i, "drr_db": 0.0,
                     "direct_index": 40, "source": "pra"})
    write_jsonl(rooms / "rooms.jsonl", rirs)
    return corpus, rooms


def test_items_are_deterministic(data_dirs: tuple[Path, Path]) -> None:
    corpus, rooms = data_dirs
    a = ReverbDataset(corpus, rooms, "train", segment_seconds=1.5, length=6, seed=3)
    b = ReverbDataset(corpus, rooms, "train", segment_seconds=1.5, length=6, seed=3)
    assert len(a) == 6
    for i in (5, 0, 3):  # any order
        x, y = a[i], b[i]
        for k in ("mixture", "early", "direct"):
            assert x[k].dtype == np.float32 and x[k].shape == (int(1.5 * FS),)
            np.testing.assert_array_equal(x[k], y[k])
        assert x["rt60"] == y["rt60"]
    a.set_epoch(1)
    assert not np.array_equal(a[0]["mixture"], b[0]["mixture"])
    b.set_epoch(1)
    np.testing.assert_array_equal(a[0]["mixture"], b[0]["mixture"])
    with pytest.raises(IndexError):
        a[6]


def test_split_isolation(data_dirs: tuple[Path, Path]) -> None:
    corpus, rooms = data_dirs
    ds = ReverbDataset(corpus, rooms, "test", segment_seconds=1.0, length=20, seed=0,
                       mix=MixConfig(anechoic_prob=0.0))
    assert {c["id"] for c in ds.clips} == {"c4"} and {r["id"] for r in ds.rooms} == {"r3"}
    assert all(float(ds[i]["rt60"]) == pytest.approx(0.7) for i in range(20))


def test_segment_contains_tail_of_earlier_signal(data_dirs: tuple[Path, Path]) -> None:
    corpus, rooms = data_dirs
    ds = ReverbDataset(corpus, rooms, "train", segment_seconds=1.0, length=1,
                       mix=MixConfig(eq_prob=0.0, noise_prob=0.0, anechoic_prob=0.0))
    rng = np.random.default_rng(0)
    dry = np.zeros(2 * FS, np.float32)
    dry[: FS - 50] = rng.standard_normal(FS - 50)  # signal stops 50 samples before the segment
    out = ds.render(dry, FS, ds.rir(0), np.random.default_rng(1))
    head = slice(0, 800)  # first 50 ms of the segment
    assert np.mean(out["mixture"][head] ** 2) > 1e3 * np.mean(out["direct"][head] ** 2) + 1e-12
    assert np.max(np.abs(out["direct"][100:])) < 1e-6 * np.max(np.abs(out["mixture"]))


def test_music_share_and_short_clips(data_dirs: tuple[Path, Path]) -> None:
    corpus, rooms = data_dirs
    ds = ReverbDataset(corpus, rooms, "train", segment_seconds=3.0, length=100, seed=1)
    share = np.mean([float(ds[i]["is_music"]) for i in range(100)])
    assert 0.25 < share < 0.55  # 6 s music out of 13.5 s of train audio
    # 2.5 s clip shorter than the 3 s segment gets a follow-up clip: no all-zero tail.
    for i in range(20):
        assert np.sqrt(np.mean(ds[i]["early"][-FS:] ** 2)) > 0


def test_music_share_overrides_the_duration_share(data_dirs: tuple[Path, Path]) -> None:
    corpus, rooms = data_dirs
    for want, lo, hi in ((0.9, 0.8, 0.98), (0.1, 0.02, 0.2)):  # natural share: 6 of 13.5 s (~0.44)
        ds = ReverbDataset(corpus, rooms, "train", segment_seconds=1.0, length=100, seed=1, music_share=want)
        share = np.mean([float(ds[i]["is_music"]) for i in range(100)])
        assert lo < share < hi, (want, share)
    with pytest.raises(ValueError, match="music_share"):
        ReverbDataset(corpus, rooms, "train", music_share=1.5)


def test_a_lead_is_the_noise_alone_and_leaves_other_examples_as_they_were(data_dirs: tuple[Path, Path]) -> None:
    corpus, rooms = data_dirs
    mix = MixConfig(noise_prob=1.0, anechoic_prob=0.0)
    plain = ReverbDataset(corpus, rooms, "train", segment_seconds=2.0, length=40, seed=2, mix=mix)
    some = ReverbDataset(corpus, rooms, "train", segment_seconds=2.0, length=40, seed=2, mix=mix,
                         lead_prob=0.5, lead_seconds=(0.2, 0.8))
    leads = [int(some[i]["lead"]) for i in range(40)]
    assert 8 < sum(n > 0 for n in leads) < 32 and all(n == 0 or 0.2 * FS <= n <= 0.8 * FS for n in leads)
    for i, n in enumerate(leads):
        a, b = plain[i], some[i]
        assert int(a["lead"]) == 0
        if n == 0:  # the lead's own generator: the rest of the draw is untouched
            for k in ("mixture", "early", "direct"):
                np.testing.assert_array_equal(a[k], b[k])
            continue
        # Nothing sounds in the lead, not even the tail of earlier sound: the targets are silent and the
        # mixture is its noise, far below the sound that follows (SNR >= 20 dB on the active part).
        for k in ("early", "direct"):  # zero up to the FFT convolution's round-off
            assert np.max(np.abs(b[k][:n])) < 1e-9 * np.max(np.abs(b[k]))
        assert 0 < np.mean(b["mixture"][:n] ** 2) < 0.05 * np.mean(b["mixture"][n:] ** 2)
    with pytest.raises(ValueError, match="lead_prob"):
        ReverbDataset(corpus, rooms, "train", lead_prob=2.0)
    with pytest.raises(ValueError, match="lead_seconds"):
        ReverbDataset(corpus, rooms, "train", segment_seconds=1.0, lead_prob=0.1, lead_seconds=(0.5, 1.0))


def test_no_torch_import() -> None:
    import subprocess

    code = "import sys, training.dataset, training.mixing; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
