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
                 "--jobs", "1", "--no-dnsmos", "--seconds", "2", "--warm-seconds", "3", "--warm-score-from", "1",
                 "--out", str(out), "--markdown", str(md)])
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
    # warm streams: one per reverberant example, scored after the requested second; the identity
    # gains nothing there either, in any window
    warm = res["warm"]
    assert warm["config"]["seconds"] == 3.0 and warm["config"]["score_from"] == 1.0
    assert warm["summary"]["all_reverb"]["ours"]["n"] == res["test_set"]["counts"]["reverb"]
    for rec in res["examples"]:
        assert ("warm" in rec) == (rec["kind"] == "reverb")
        if "warm" in rec:
            ours = rec["warm"]["systems"]["ours"]
            assert rec["warm"]["seconds"] == 3.0 and ours["d_si_sdr_early"] == pytest.approx(0.0, abs=1e-9)
            assert all(g is None or abs(g) < 1e-6 for g in ours["window_gain_early"])
    assert "Warm streams" in text and any(r["target"].startswith("warm ") for r in res["targets"])


def test_no_warm_leaves_the_section_out(data: tuple[Path, Path], tmp_path: Path) -> None:
    corpus, rooms = data
    out = tmp_path / "r.json"
    assert E.main(["--model", E.PASSTHROUGH, "--corpus", str(corpus), "--rooms", str(rooms), "--count", "3",
                   "--jobs", "1", "--no-dnsmos", "--no-baselines", "--seconds", "1", "--no-warm",
                   "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert "warm" not in res and all("warm" not in rec for rec in res["examples"])


def test_warm_stream_same_talker_and_room_scored_after_its_start(data: tuple[Path, Path]) -> None:
    corpus, rooms = data
    specs = E.plan_examples(E.EvalConfig(corpus=str(corpus), rooms=str(rooms), count=6, seed=1))
    lines = (corpus / "manifest.jsonl").read_text().splitlines()
    manifest = {str(corpus / r["path"]): r for r in map(json.loads, lines)}
    reverb = [s for s in specs if s.kind == "reverb"]
    assert reverb and all(not s.stream_paths for s in specs if s.kind != "reverb")
    for spec in reverb:
        # the talker: this example's clip first, then only clips of its speaker group, all held out
        assert spec.stream_paths[0] == spec.clip_path
        clip = manifest[spec.clip_path]
        for path in spec.stream_paths:
            assert E.speaker_key(manifest[path]) == E.speaker_key(clip) and manifest[path]["split"] == "test"
        cold = E.build_example(spec, seconds=2.0)
        warm = E.build_warm_stream(spec, seconds=6.0, score_from=2.5)
        n = 6 * SR
        assert all(len(warm[k]) == n for k in ("input", "early", "direct", "dry"))
        assert warm["score_from"] == int(2.5 * SR)
        # the room: the one of the cold example (same RIR, so the same direct-path delay)
        assert warm["info"]["room"] == spec.room_id and warm["info"]["rt60"] == spec.rt60
        assert warm["info"]["direct_index"] == cold["info"]["direct_index"]
        # the stream opens with the example's utterance, whole, then a pause of digital silence
        x, _ = sf.read(spec.clip_path, dtype="float32")
        m = min(len(x), n)
        np.testing.assert_array_equal(warm["dry"][:m], x[:m])
        if len(x) < n:
            assert warm["dry"][len(x)] == 0.0 and len(warm["info"]["clips"]) >= 2
        # the speech in it is reverberated: the input is not its early part
        assert np.sum((warm["input"] - warm["early"]) ** 2) > 1e-3 * np.sum(warm["early"] ** 2)
        np.testing.assert_array_equal(E.build_warm_stream(spec, 6.0, 2.5)["input"], warm["input"])


def test_scored_part_of_warm_stream_excludes_its_start(data: tuple[Path, Path]) -> None:
    corpus, rooms = data
    cfg = E.EvalConfig(corpus=str(corpus), rooms=str(rooms), model=E.PASSTHROUGH, count=6, seed=1, baselines=False,
                       dnsmos=False, warm_seconds=4.0, warm_score_from=2.0)
    spec = next(s for s in E.plan_examples(cfg) if s.kind == "reverb")
    ev = E.Evaluator(cfg)
    ev.systems["ours"] = lambda x: np.where(np.arange(len(x)) < 2 * SR, 0.5 * x[::-1], x)  # garbage before 2 s
    rec = ev.score_warm(spec)
    assert rec["score_from"] == 2.0
    ours = rec["systems"]["ours"]
    assert ours["d_si_sdr_early"] == pytest.approx(0.0, abs=1e-9)  # scored part untouched
    assert ours["pesq"] == pytest.approx(rec["systems"]["unprocessed"]["pesq"])
    gains = np.array([np.nan if g is None else g for g in ours["window_gain_early"]])
    starts = np.array(rec["window_starts"])
    assert np.nanmax(np.abs(gains[starts >= 2.0])) < 1e-6  # windows after 2 s: no change
    assert np.nanmin(gains[starts + 1.0 <= 2.0]) < -3.0  # windows before it see the garbage


def test_windowed_gain_marks_pauses_and_measures_each_window() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(4 * SR)
    ref[SR:2 * SR] = 0.0  # a pause: the window [1, 2) s has no reference
    noise = rng.standard_normal(4 * SR)
    x = ref + noise  # 0 dB
    y = ref + 0.1 * noise  # 20 dB
    starts, gains = E.windowed_gain(y, x, ref, window=1.0, hop=1.0)
    np.testing.assert_allclose(starts, [0.0, 1.0, 2.0, 3.0])
    assert np.isnan(gains[1])
    np.testing.assert_allclose(gains[[0, 2, 3]], 20.0, atol=0.3)


def test_time_to_gain_on_known_curves() -> None:
    t = np.arange(23) * 0.5  # 1 s windows every 0.5 s over a 12 s stream
    # exponential approach to 4 dB with a 2 s time constant: the plateau is the median over
    # t >= 6 s (the value at 8.5 s); 90 % of it is reached at t = -2 ln(1 - 0.9 (1 - e^-4.25)) = 4.36 s,
    # the first window start on the grid after it is 4.5 s
    t90, plateau = E.time_to_gain(t, 4.0 * (1 - np.exp(-t / 2.0)), plateau_from=6.0, fraction=0.9)
    assert plateau == pytest.approx(4.0 * (1 - np.exp(-4.25)))
    assert t90 == 4.5
    # a flat gain is there from the first window (a system that does not adapt)
    assert E.time_to_gain(t, np.full(23, 2.0), 6.0) == (0.0, 2.0)
    # one lucky early window and a pause do not move the answer: a step at 3 s
    step = np.where(t >= 3.0, 3.0, 0.5)
    step[1], step[8] = 3.0, np.nan
    assert E.time_to_gain(t, step, 6.0)[0] == 3.0
    # no gain, nothing to reach; no valid late window, no plateau
    assert E.time_to_gain(t, np.zeros(23), 6.0) == (None, 0.0)
    assert E.time_to_gain(t, np.where(t < 6.0, 1.0, np.nan), 6.0) == (None, None)


def test_aggregate_warm_medians_per_bin() -> None:
    cfg = E.EvalConfig(warm_seconds=3.0, warm_score_from=1.0)
    starts = [0.0, 0.5, 1.0, 1.5, 2.0]

    def rec(t_reach: float | None, curve: list[float]) -> dict:
        ours = {"proc_seconds": 0.3, "si_sdr_early": 5.0, "d_si_sdr_early": 2.0, "window_gain_early": curve,
                "plateau_early": 2.0, "t_reach_early": t_reach}
        return {"kind": "reverb", "bin": "rt60>0.8", "warm": {
            "seconds": 3.0, "window_starts": starts, "systems": {
                "unprocessed": {"proc_seconds": 0.0, "si_sdr_early": 3.0, "d_si_sdr_early": 0.0}, "ours": ours}}}

    recs = [rec(0.0, [2, 2, 2, 2, 2]), rec(1.0, [0, 1, 2, 2, 2]), rec(2.0, [0, 0, 1, 2, 2]), rec(None, [0] * 5)]
    warm = E.aggregate_warm(recs, cfg)
    row = warm["summary"]["rt60>0.8"]["ours"]
    assert warm["window_starts"] == starts and set(warm["summary"]) == {"rt60>0.8", "all_reverb"}
    assert row["n"] == 4 and row["t_reach_early"] == 1.0 and row["t_reach_early_n"] == 3
    assert row["window_gain_early"] == [0.0, 0.5, 1.5, 2.0, 2.0]
    # the median curve's plateau (windows from 1.5 s) is 2 dB; smoothed, it passes 1.8 dB at 1.5 s
    assert row["t_reach_early_of_median"] == 1.5
    assert row["rtf"] == pytest.approx(0.1)
    table = E.warm_markdown_table(warm)
    assert "| rt60>0.8 | ours | 4 |" in table and "+2.00" in table


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
    rows = {r["target"]: r for r in E.check_targets(_summary(ours_early=3.5, wpe_pesq=1.5))}
    assert rows["rt60 0.4-0.8: dSI-SDR vs early-50 (dB)"]["met"] is True
    assert rows["rt60>0.8: dSI-SDR vs early-50 (dB)"]["met"] is False  # 3.5 < 4
    assert rows["rt60 0.4-0.8: dSI-SDR vs direct path (dB)"]["met"] is True  # 2.5 >= 1.5
    assert rows["rt60 0.4-0.8: dDNSMOS OVRL"]["met"] is False  # 0.5 < 0.8
    assert rows["dry: SI-SDR of output vs input (dB)"]["met"] is False  # 25 < 30
    assert rows["rt60 0.4-0.8: pesq minus the better WPE"]["value"] == pytest.approx(0.5)
    assert rows["rt60<0.3: change of si_sdr_early"]["met"] is False  # -0.6 < -0.5
    # Without a paired delta the change is the difference of the means: 3.9 - 4.0.
    assert rows["rt60<0.3: change of dnsmos_bak"]["value"] == pytest.approx(-0.1)
    assert rows["rt60<0.3: change of dnsmos_bak"]["met"] is False
    assert rows["rt60<0.3: change of dnsmos_sig"]["met"] is True
    assert rows["music: dSI-SDR vs early-50 (dB)"]["met"] is True
    # WPE better on one metric: that row, and only that row of the comparison, fails.
    worse = {r["target"]: r for r in E.check_targets(_summary(ours_early=3.5, wpe_pesq=2.1))}
    failed = [t for t, r in worse.items() if "WPE" in t and not r["met"]]
    assert failed == ["rt60 0.4-0.8: pesq minus the better WPE", "rt60>0.8: pesq minus the better WPE"]
    # A missing group is reported as unknown, not as met.
    assert all(r["met"] is None for r in E.check_targets({}))
    assert "**no**" in E.targets_table(_summary(ours_early=1.0, wpe_pesq=1.5))


def test_release_card_carries_the_warm_section() -> None:
    """The release step puts an evaluation's warm streams on the card beside its cold tables, and an
    unmet warm target among the known limits; an evaluation without warm streams adds no section."""
    from export.card import release_card
    from training.model import ModelConfig

    card = {"name": "m", "model_config": ModelConfig().to_dict(), "metrics": {}, "known_limits": []}
    warm = {"config": {"seconds": 12.0, "score_from": 4.0}, "window_starts": [0.0, 0.5],
            "summary": {"rt60>0.8": {"ours": {"n": 2, "d_si_sdr_early": 3.1, "t_reach_early": 0.5}}}}
    evaluation = {"config": {"count": 2}, "summary": {"rt60>0.8": {}}, "warm": warm,
                  "targets": E.check_warm_targets(warm), "examples": [{"index": 0, "warm": {}}]}
    out = release_card(card, evaluation, "eval.json")
    assert out["metrics"]["warm"] == warm and "examples" not in out["metrics"]
    assert "Target not met on the held-out test set: warm rt60>0.8: dSI-SDR vs early-50 (dB) = +3.100 " \
           "(bar >= +5.00)." in out["known_limits"]
    cold = release_card(card, {k: v for k, v in evaluation.items() if k != "warm"}, "eval.json")
    assert "warm" not in cold["metrics"]
