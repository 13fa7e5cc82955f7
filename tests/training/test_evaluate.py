"""training/evaluate.py on a tiny synthetic corpus and room bank (fast: no DNSMOS, 1 job)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training import evaluate as E

SR = 16000


def _write_corpus(root: Path) -> None:
    rng = np.random.default_rng(0)
    recs = []
    for i in range(6):
        kind = "music" if i >= 4 else "speech"
        split = "test" if i % 3 else "train"  # 0 and 3 are train clips and must never be used
        n = int(SR * (1.5 + 0.5 * i))
        t = np.arange(n) / SR
        # speech-like: low-passed noise bursts at a syllable rate, plus a faint floor
        burst = np.convolve(rng.standard_normal(n), np.ones(8) / 8, mode="same")
        x = 0.3 * burst * np.clip(np.sin(2 * np.pi * (2.5 + 0.3 * i) * t), 0.0, None)
        x += 0.002 * rng.standard_normal(n)
        rel = f"{split}/{kind}/c{i}.flac"
        (root / split / kind).mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, x.astype(np.float32), SR, subtype="PCM_16")
        recs.append({"id": f"c{i}", "path": rel, "split": split, "kind": kind, "source": "synthetic",
                     "voice": f"v{i % 2}", "seconds": n / SR})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def _write_rooms(root: Path) -> None:
    rng = np.random.default_rng(1)
    recs = []
    for i, rt60 in enumerate([0.3, 0.6, 1.0, 0.5]):
        n = int(SR * rt60)
        t = np.arange(n) / SR
        h = 0.1 * rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
        h[:40] = 0.0
        h[40] = 1.0
        split = "train" if i == 3 else "test"
        rel = f"{split}/r{i}.wav"
        (root / split).mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, h.astype(np.float32), SR, subtype="FLOAT")
        recs.append({"id": f"r{i}", "path": rel, "split": split, "rt60": rt60, "drr_db": 0.0, "direct_index": 40})
    (root / "rooms.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("evaldata")
    _write_corpus(root / "corpus")
    _write_rooms(root / "rooms")
    return root / "corpus", root / "rooms"


def test_rt60_bins() -> None:
    assert E.rt60_bin(0.2) == "rt60<0.4"
    assert E.rt60_bin(0.4) == "rt60 0.4-0.8"
    assert E.rt60_bin(0.79) == "rt60 0.4-0.8"
    assert E.rt60_bin(0.8) == "rt60>0.8"
    assert E.rt60_bin(3.0) == "rt60>0.8"


def test_plan_is_deterministic_split_clean_and_balanced(data: tuple[Path, Path]) -> None:
    corpus, rooms = data
    cfg = E.EvalConfig(corpus=str(corpus), rooms=str(rooms), count=16, seed=3)
    a, b = E.plan_examples(cfg), E.plan_examples(cfg)
    assert a == b
    assert E.plan_examples(E.EvalConfig(corpus=str(corpus), rooms=str(rooms), count=16, seed=4)) != a
    assert len(a) == 16
    assert {s.kind for s in a} == {"reverb", "dry", "music"}
    assert all(s.clip_id not in ("c0", "c3") for s in a)  # train clips excluded
    assert all(s.room_id != "r3" for s in a)  # train room excluded
    bins = [E.rt60_bin(s.rt60) for s in a if s.kind == "reverb"]
    counts = [bins.count(name) for name, _, _ in E.RT60_BINS]
    assert max(counts) - min(counts) <= 1


@pytest.mark.slow
def test_evaluate_end_to_end_passthrough(data: tuple[Path, Path], tmp_path: Path) -> None:
    corpus, rooms = data
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    rc = E.main(["--model", E.PASSTHROUGH, "--corpus", str(corpus), "--rooms", str(rooms), "--count", "6",
                 "--jobs", "1", "--no-dnsmos", "--seconds", "2", "--out", str(out), "--markdown", str(md)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res["summary"]["all_reverb"]) >= {"unprocessed", "ours", "wpe_online", "wpe_offline"}
    # the identity gains nothing over the input, exactly
    for rec in res["examples"]:
        ours = rec["systems"]["ours"]
        for key in ("d_si_sdr_direct", "d_si_sdr_early"):
            if key in ours:
                assert ours[key] == pytest.approx(0.0, abs=1e-9)
        if rec["kind"] == "dry":
            assert ours["si_sdr_input"] > 80.0
        if rec["kind"] == "reverb":
            assert -60.0 < ours["si_sdr_direct"] < 60.0
            assert 1.0 <= ours["pesq"] <= 4.7
    assert res["timing"]["examples"] == 6 and res["timing"]["wall_seconds"] > 0
    text = md.read_text()
    assert "| rt60<0.4" in text and "wpe_offline" in text and "Dry (anechoic)" in text


def test_markdown_table_layout() -> None:
    rec = {"kind": "reverb", "bin": "rt60>0.8", "rt60": 1.0, "room": "r", "seconds": 2.0,
           "systems": {"unprocessed": {"proc_seconds": 0.0, "si_sdr_direct": -5.0, "d_si_sdr_direct": 0.0},
                       "ours": {"proc_seconds": 0.1, "si_sdr_direct": -3.0, "d_si_sdr_direct": 2.0}}}
    summary = E.aggregate([rec])
    assert summary["rt60>0.8"]["ours"]["d_si_sdr_direct"] == pytest.approx(2.0)
    assert summary["rt60>0.8"]["ours"]["rtf"] == pytest.approx(0.05)
    text = E.markdown_table(summary)
    row = next(line for line in text.splitlines() if "| ours |" in line)
    assert "+2.00" in row and "-3.00" in row


def test_warmup_prepends_context_and_scores_the_same_segment(data: tuple[Path, Path]) -> None:
    corpus, rooms = data
    specs = E.plan_examples(E.EvalConfig(corpus=str(corpus), rooms=str(rooms), count=6, seed=1))
    for spec in specs:
        cold = E.build_example(spec, seconds=2.0)
        warm = E.build_example(spec, seconds=2.0, warmup=1.0)
        assert cold["score_from"] == 0 and warm["score_from"] == SR
        assert spec.warmup_path is not None and spec.warmup_path != spec.clip_path
        n = len(cold["input"])
        assert len(warm["input"]) == SR + n
        if spec.kind == "dry":
            np.testing.assert_array_equal(warm["input"][SR:], cold["input"])
        else:
            # same dry segment and augmentations: the early target after the warm-up matches
            # except for the reverberant spill-over of the warm-up audio into the scored part
            a, b = warm["early"][SR:], cold["early"]
            assert a.shape == b.shape
            tail = slice(int(0.1 * SR), None)  # the 50 ms early RIR has no influence beyond 0.1 s
            np.testing.assert_allclose(a[tail], b[tail] * (np.dot(a[tail], b[tail]) / np.dot(b[tail], b[tail])),
                                       atol=1e-4)


def _summary(ours_early: float, wpe_pesq: float) -> dict:
    row = {"d_si_sdr_direct": 2.5, "d_si_sdr_early": ours_early, "pesq": 2.0, "d_pesq": 0.4, "estoi": 0.8,
           "dnsmos_ovrl": 2.5, "d_dnsmos_ovrl": 0.5, "dnsmos_sig": 3.0, "dnsmos_bak": 3.5}
    wpe = {**row, "d_si_sdr_direct": 0.1, "d_si_sdr_early": 0.1, "pesq": wpe_pesq, "estoi": 0.7,
           "dnsmos_ovrl": 2.0, "dnsmos_sig": 2.5, "dnsmos_bak": 3.0}
    bins = {g: {"ours": dict(row), "wpe_online": dict(wpe), "wpe_offline": dict(wpe)}
            for g in ("rt60 0.4-0.8", "rt60>0.8")}
    short = {"ours": {"d_si_sdr_direct": 0.0, "d_si_sdr_early": -0.6, "d_pesq": 0.0, "d_dnsmos_ovrl": 0.0,
                      "dnsmos_sig": 3.0, "dnsmos_bak": 3.9},
             "unprocessed": {"dnsmos_sig": 3.0, "dnsmos_bak": 4.0}}
    return {**bins, "rt60<0.3": short, "dry": {"ours": {"si_sdr_input": 25.0}},
            "music": {"ours": {"d_si_sdr_early": 0.1}}}


def test_check_targets_known_cases() -> None:
    rows = {r["target"]: r for r in E.check_targets(_summary(ours_early=5.5, wpe_pesq=1.5))}
    assert rows["rt60 0.4-0.8: dSI-SDR vs early-50 (dB)"]["met"] is True
    assert rows["rt60>0.8: dSI-SDR vs early-50 (dB)"]["met"] is False  # 5.5 < 6
    assert rows["rt60 0.4-0.8: pesq minus the better WPE"]["value"] == pytest.approx(0.5)
    assert rows["rt60<0.3: change of si_sdr_early"]["met"] is False  # -0.6 < -0.5
    # Without a paired delta the change is the difference of the means: 3.9 - 4.0.
    assert rows["rt60<0.3: change of dnsmos_bak"]["value"] == pytest.approx(-0.1)
    assert rows["rt60<0.3: change of dnsmos_bak"]["met"] is False
    assert rows["rt60<0.3: change of dnsmos_sig"]["met"] is True
    assert rows["music: dSI-SDR vs early-50 (dB)"]["met"] is True
    # WPE better on one metric: that row, and only that row of the comparison, fails.
    worse = {r["target"]: r for r in E.check_targets(_summary(ours_early=5.5, wpe_pesq=2.1))}
    failed = [t for t, r in worse.items() if "WPE" in t and not r["met"]]
    assert failed == ["rt60 0.4-0.8: pesq minus the better WPE", "rt60>0.8: pesq minus the better WPE"]
    # A missing group is reported as unknown, not as met.
    assert all(r["met"] is None for r in E.check_targets({}))
    assert "**no**" in E.targets_table(_summary(ours_early=1.0, wpe_pesq=1.5))
