"""The oracle: its adaptive linear-prediction families recover a known per-bin recursion, and its real-mask families are what they claim."""

from __future__ import annotations

import numpy as np
import pytest

from training.oracle import _rls_estimate, _wpe_estimate


def _recursive(frames: int = 400, bins: int = 5, delay: int = 3, g: complex = 0.5 - 0.3j, seed: int = 0):
    """X(t) = S(t) + g X(t - delay) per bin, S complex white with a varying level (speech-like)."""
    rng = np.random.default_rng(seed)
    level = np.exp(rng.normal(0.0, 1.0, (frames, 1)))
    s = (rng.standard_normal((frames, bins)) + 1j * rng.standard_normal((frames, bins))) * level
    x = s.copy()
    for t in range(delay, frames):
        x[t] += g * x[t - delay]
    return s, x


def test_wpe_with_the_target_psd_recovers_the_source():
    s, x = _recursive()
    d = x - _wpe_estimate(x, np.abs(s) ** 2, delay=3, taps=4)
    err = np.sum(np.abs(d - s) ** 2) / np.sum(np.abs(s) ** 2)
    before = np.sum(np.abs(x - s) ** 2) / np.sum(np.abs(s) ** 2)
    assert before > 0.2 and err < 1e-3


def test_rls_prediction_converges_from_a_cold_start():
    s, x = _recursive(frames=800)
    est = _rls_estimate(x, x - s, delay=3, taps=4)
    late = x - s
    tail = slice(400, None)  # after convergence; the first frames are predicted with a zero filter
    rel = np.sum(np.abs(est[tail] - late[tail]) ** 2) / np.sum(np.abs(late[tail]) ** 2)
    assert rel < 1e-3
    assert np.allclose(est[:3], 0)  # causal: nothing to predict from before the start


def test_phase_sensitive_mask_is_the_least_squares_real_mask():
    # Bin by bin, Re(E / X) clipped to [0, 1] is the real gain in [0, 1] closest to E; the ratio mask
    # |E| / |X| is not, whenever E and X differ in phase. So the phase-sensitive family must come out
    # at least as close to the target (in the STFT domain) as the ratio mask on a reverberant mixture.
    from training.model import ModelConfig, dft_matrices
    from training.oracle import oracle_masks, stft

    rng = np.random.default_rng(0)
    early = rng.standard_normal(16000)
    rir = np.exp(-np.arange(4000) / 800.0) * rng.standard_normal(4000)
    mix = early + np.convolve(early, rir)[: early.size] * 0.3
    cfg = ModelConfig()
    fwd = dft_matrices(cfg.win)[0].numpy().astype(np.float64)
    out = oracle_masks(mix, early, cfg)
    sl = slice(cfg.win, early.size - cfg.win)
    e = stft(early, fwd, cfg.win, cfg.hop)
    err = {k: np.sum(np.abs(stft(out[k], fwd, cfg.win, cfg.hop) - e)[2:-2] ** 2)
           for k in ("real [0,1]", "real [0,1], phase-sensitive")}
    assert err["real [0,1], phase-sensitive"] < 0.9 * err["real [0,1]"]
    assert np.sum((out["real [0,1], phase-sensitive"][sl] - early[sl]) ** 2) < np.sum((out["real [0,1]"][sl] - early[sl]) ** 2)


def test_longer_prediction_filters_fit_the_late_part_no_worse():
    # The least-squares filter over taps 0..k-1 is one candidate of the fit over 0..K-1 (K > k, the
    # extra taps zero), so per bin the longer filter's residual cannot be larger: what --lp-taps compares.
    from training.model import ModelConfig, dft_matrices
    from training.oracle import _lp_estimate, oracle_masks, stft

    rng = np.random.default_rng(1)
    early = rng.standard_normal(16000)
    rir = np.exp(-np.arange(8000) / 1600.0) * rng.standard_normal(8000)
    rir[:800] = 0  # late part only: starts 50 ms after the direct sound
    mix = early + np.convolve(early, rir)[: early.size] * 0.3
    cfg = ModelConfig()
    out = oracle_masks(mix, early, cfg, lp_taps=(2, 6))
    assert {"LP 2 taps", "LP 6 taps"} <= set(out) and "LP 10 taps" not in out
    fwd = dft_matrices(cfg.win)[0].numpy().astype(np.float64)
    x, e = stft(mix, fwd, cfg.win, cfg.hop), stft(early, fwd, cfg.win, cfg.hop)
    err = {k: np.sum(np.abs(x - _lp_estimate(x, e, 3, k) - e) ** 2) for k in (2, 6)}
    assert err[6] < err[2] < np.sum(np.abs(x - e) ** 2)


def test_early_weight_chooses_the_reference_the_ideal_masks_are_computed_from(monkeypatch, capsys):
    # --early-weight 1 computes the ideal masks from the early-50 target, 0 from the direct path: the
    # unbounded-enough complex mask then reproduces that reference almost exactly, and not the other.
    import training.oracle as oracle

    rng = np.random.default_rng(2)
    direct = rng.standard_normal(24000)
    early = direct + 0.8 * np.convolve(direct, np.r_[np.zeros(300), 0.9, np.zeros(200), -0.7])[: direct.size]
    mix = early + 0.5 * np.convolve(early, np.exp(-np.arange(6000) / 1500.0) * rng.standard_normal(6000))[: direct.size]
    monkeypatch.setattr(oracle, "_examples", lambda args: iter([(0.6, mix, early, direct)]))

    def complex4(weight: str) -> tuple[float, float]:
        assert oracle.main(["--early-weight", weight, "--lp-taps", "1"]) == 0
        out = capsys.readouterr().out
        header = next(line for line in out.splitlines() if line.startswith("| RT60 bin"))
        row = next(line for line in out.splitlines() if line.startswith("| 0.4-0.8 s"))
        # Cells are split on " | ": the family's own name holds bars ("complex |m|<=4").
        col = header.split(" | ").index("complex |m|<=4")
        vs_early, vs_direct = row.split(" | ")[col].split(" / ")
        return float(vs_early), float(vs_direct)

    early_ideal, direct_ideal = complex4("1"), complex4("0")
    assert early_ideal[0] > 25 and early_ideal[1] < 15  # exact early-50, which is not the direct path
    assert direct_ideal[1] > 25 and direct_ideal[0] < 15


def test_framings_refuse_an_early_weight_they_would_ignore(capsys):
    import training.oracle as oracle

    with pytest.raises(SystemExit):
        oracle.main(["--framings", "--early-weight", "0"])
    assert "--framings computes the early-50 target's masks only" in capsys.readouterr().err


def _shipped() -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parents[2] / "models" / "dereverb-lstm-16k.onnx")


def test_spectral_model_is_the_runtime_step_entered_after_its_analysis():
    # The predictor rows feed STFT frames to the shipped graph's own subgraph; on the frames of an
    # input it must give what the whole step gives on that input (one hop later: the step's latency).
    from stream.model import StepModel
    from training.model import dft_matrices
    from training.oracle import SpectralModel, istft, stft

    step, spectral = StepModel.load(_shipped()), SpectralModel(_shipped())
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(256 * 120) * 0.05).astype(np.float32)
    x[: 256 * 10] = 0  # a leading silence: the music gate's silence test is in the subgraph too
    full, _ = step.run(x[None], step.initial_state(1))
    fwd, inv = (m.numpy().astype(np.float64) for m in dft_matrices(512))
    padded = np.concatenate([np.zeros(256), x])  # the step's first frame holds a zero hop first
    y = istft(spectral.run(stft(padded, fwd, 512, 256), spectral.start())[0], inv, len(padded), 512, 256)
    sl = slice(256, len(x) - 512)
    assert np.max(np.abs(full[0][sl] - y[sl])) < 1e-4 * np.max(np.abs(x))


def test_the_single_pass_is_causal_and_the_cascade_rows_are_all_there():
    from training.oracle import SpectralModel, predictor_outputs
    from training.predictor import PredictorConfig

    spectral = SpectralModel(_shipped())
    rng = np.random.default_rng(4)
    early = rng.standard_normal(16000) * 0.05
    rir = np.exp(-np.arange(6000) / 1200.0) * rng.standard_normal(6000)
    rir[:800] = 0
    mix = early + 0.3 * np.convolve(early, rir)[: early.size]
    cfg = PredictorConfig(taps=4)
    out = predictor_outputs(mix, early, spectral, cfg, causal_start=True)
    assert set(out) == {"model", "RLS (true late)", "RLS (true late) -> model", "model -> RLS -> model", "single pass"}
    changed = mix.copy()
    changed[12000:] *= -2.0
    again = predictor_outputs(changed, early, spectral, cfg, single_pass_only=True, causal_start=True)
    # Output sample n needs the frames up to the one that starts at or before n: nothing after it
    # (with P started from the first active hop; the example's mean power is an oracle's knowledge).
    assert np.array_equal(out["single pass"][: 12000 - 512], again["single pass"][: 12000 - 512])
    assert not np.allclose(out["single pass"][12000:], again["single pass"][12000:])


def test_a_step_models_row_is_the_runtime_scored_like_the_oracles_rows(monkeypatch):
    # --step runs a whole step model through the runtime, time-aligned, on the oracle's example: the
    # shipped graph's row is then the oracle's network row, up to the runtime's extra leading frame.
    import types

    import training.evaluate as evaluate
    from training import oracle
    from training.predictor import PredictorConfig

    rng = np.random.default_rng(5)
    early = rng.standard_normal(3 * 16000) * 0.05
    rir = np.exp(-np.arange(8000) / 1600.0) * rng.standard_normal(8000)
    rir[:800] = 0
    mix = early + 0.3 * np.convolve(early, rir)[: early.size]
    ex = {"input": mix.astype(np.float32), "early": early.astype(np.float32), "direct": early.astype(np.float32),
          "score_from": 0}
    monkeypatch.setattr(evaluate, "build_example", lambda spec, seconds, warmup=0.0: ex)
    job = (types.SimpleNamespace(rt60=0.6), 3.0, 0.0, _shipped(), [(PredictorConfig(taps=4), 8000.0)], False, True,
           [_shipped()])
    rows = {name: (e, d) for _, name, e, d in oracle._predictor_worker(job)}
    step = rows[f"step {_shipped()}"]
    assert abs(step[0] - rows["model"][0]) < 0.1 and abs(step[1] - rows["model"][1]) < 0.1, (step, rows["model"])
    assert abs(rows["model"][0]) > 0.2  # the network changed the signal: the comparison means something
