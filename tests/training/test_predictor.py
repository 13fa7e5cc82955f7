"""The per-bin RLS predictor: it learns a late-reverb recursion, float32 follows float64, and its state
stays finite and bounded over long streams with silence and bursts."""

from __future__ import annotations

import numpy as np

from training.predictor import PredictorConfig, init_state, predict, regressors, run, update

HOPS_PER_SECOND = 16000 / 256


def _reverberant(frames: int, bins: int, seed: int = 0, level: float = 1.0,
                 coef: tuple[complex, ...] = (0.5 - 0.3j, 0.2 + 0.1j), env: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(X, late) [frames, bins]: X(t) = S(t) + sum_k c_k X(t - 3 - k), S complex noise with a speech-like
    varying level (log-normal per frame, pauses) or the envelope ``env`` [frames], late = X - S."""
    rng = np.random.default_rng(seed)
    if env is None:
        env = np.exp(rng.normal(0.0, 1.0, frames)) * (rng.random(frames) > 0.2)
    s = (rng.standard_normal((frames, bins)) + 1j * rng.standard_normal((frames, bins))) * env[:, None] * level
    x = s.copy()
    for t in range(frames):
        for k, c in enumerate(coef):
            if t - 3 - k >= 0:
                x[t] += c * x[t - 3 - k]
    return x, x - s


def _check_state(st: dict, cfg: PredictorConfig) -> None:
    p = st["P"]
    assert np.isfinite(p).all() and np.isfinite(st["g"]).all()
    assert np.allclose(p, p.conj().transpose(0, 2, 1), rtol=1e-4, atol=0)  # Hermitian
    on = st["level"] > 0
    diag = np.einsum("fii->fi", p).real
    assert (diag[on] > 0).all()
    trace = diag.sum(axis=1)
    bound = cfg.taps / (cfg.delta * st["level"][on])
    assert (trace[on] <= bound * (1 + 1e-4)).all()


def test_learns_a_late_recursion_from_a_causal_start():
    cfg = PredictorConfig(taps=4)
    x, late = _reverberant(600, 6)
    pred, st = run(x, late, cfg, init_state(6, cfg))  # power 0: each bin starts at its first active hop
    tail = slice(300, None)
    rel = np.sum(np.abs(pred[tail] - late[tail]) ** 2) / np.sum(np.abs(late[tail]) ** 2)
    assert rel < 1e-3
    assert np.allclose(pred[:3], 0)  # nothing to predict from before the start
    _check_state(st, cfg)


def test_a_fresh_bin_measures_its_level_before_it_learns():
    # A stream's first hops are often a quiet onset: a start scaled to them alone is far too uncertain.
    # A fresh bin only measures its level for ``settle`` active hops (P at the start value for the mean
    # so far, g zero), then learns.
    cfg = PredictorConfig(taps=2, settle=8)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((12, 1, 2)) + 1j * rng.standard_normal((12, 1, 2))
    x[0] *= 1e-3  # a quiet first hop
    st = init_state(1, cfg)
    powers = []
    for t in range(12):
        st = update(st, x[t], np.ones(1, complex), cfg)
        powers.append(np.mean(np.abs(x[t]) ** 2))
        if t < cfg.settle - 1:
            assert np.array_equal(st["g"], np.zeros((1, 2)))
            assert np.allclose(st["P"][0], np.eye(2) / (cfg.delta * st["level"][0]))
    assert st["level"][0] > 0.1 * np.mean(powers)  # not the quiet hop's level
    assert np.abs(st["g"]).sum() > 0  # learning after the settling hops


def test_float32_follows_float64_over_12_seconds():
    cfg = PredictorConfig()
    frames = int(12 * HOPS_PER_SECOND)
    x, late = _reverberant(frames, 16, seed=1, level=1e-2)
    p64, _ = run(x, late, cfg, init_state(16, cfg, dtype=np.complex128))
    p32, st32 = run(x.astype(np.complex64), late.astype(np.complex64), cfg, init_state(16, cfg, dtype=np.complex64))
    assert p32.dtype == np.complex64 and st32["P"].dtype == np.complex64
    rel = np.sum(np.abs(p32 - p64) ** 2) / np.sum(np.abs(p64) ** 2)
    assert rel < 1e-6  # -60 dB
    _check_state(st32, cfg)


def test_digital_silence_freezes_the_state():
    cfg = PredictorConfig()
    x, late = _reverberant(300, 4, seed=2)
    _, st = run(x, late, cfg, init_state(4, cfg, dtype=np.complex64))
    zeros = np.zeros((int(60 * HOPS_PER_SECOND), 4), np.complex64)
    pred, after = run(zeros, zeros, cfg, {k: v.copy() for k, v in st.items()})
    # A minute of zeros: no forgetting, so P does not grow by 1 / lam per hop (0.998 ** -3750 = 1800x).
    assert np.array_equal(after["P"], st["P"]) and np.array_equal(after["g"], st["g"])
    assert np.array_equal(pred, zeros)


def test_a_quiet_floor_does_not_inflate_p_past_its_start():
    cfg = PredictorConfig()
    x, late = _reverberant(300, 4, seed=3)
    _, st = run(x, late, cfg, init_state(4, cfg, dtype=np.complex64))
    rng = np.random.default_rng(3)
    quiet = ((rng.standard_normal((3000, 4)) + 1j * rng.standard_normal((3000, 4))) * 1e-4).astype(np.complex64)
    _, after = run(quiet, np.zeros_like(quiet), cfg, st)
    _check_state(after, cfg)


def test_a_bad_state_restarts_the_bin():
    cfg = PredictorConfig(taps=3)
    x, late = _reverberant(200, 3, seed=4)
    _, st = run(x, late, cfg, init_state(3, cfg))
    st["P"][0, 1, 1] = np.nan
    st["P"][1] = -st["P"][1]  # indefinite: negative diagonal
    st["g"][2, 0] = np.inf
    regress = regressors(x, cfg)
    new = update(st, regress[-1], late[-1], cfg)
    _check_state(new, cfg)
    assert np.allclose(new["P"][0], np.eye(3) / (cfg.delta * new["level"][0]))
    assert np.allclose(new["P"][1], np.eye(3) / (cfg.delta * new["level"][1]))
    assert np.array_equal(new["g"][2], np.zeros(3))


def test_minutes_of_speech_silence_and_bursts_stay_finite_and_bounded():
    # Five minutes of a small stream in float32, each 26 s of it speech-like input at a level drawn
    # over 20 dB, its reverberation dying into digital silence, and a noise burst 40 to 60 dB louder
    # (reverberating in the same room); the room changes halfway. The state stays finite, Hermitian
    # and bounded, the prediction stays within the input's scale, and at its end the predictor
    # predicts the late part as well as it did in its first minute.
    cfg = PredictorConfig(taps=6)
    bins = 3
    rng = np.random.default_rng(5)
    sec = int(HOPS_PER_SECOND)
    parts = []
    for i in range(12):
        coef = (0.5 - 0.3j, 0.2 + 0.1j) if i < 6 else (0.3 + 0.4j, -0.2j)  # room change halfway
        env = np.concatenate([np.exp(rng.normal(0.0, 1.0, 20 * sec)) * (rng.random(20 * sec) > 0.2),
                              np.zeros(5 * sec), np.full(sec // 2, 10 ** rng.uniform(2, 3)), np.zeros(sec // 2)])
        parts.append(_reverberant(len(env), bins, seed=10 + i, level=10 ** rng.uniform(-2, -1), coef=coef, env=env))
    x = np.concatenate([p[0] for p in parts]).astype(np.complex64)
    late = np.concatenate([p[1] for p in parts]).astype(np.complex64)
    assert np.any(x == 0)  # the silences are digital: the reverberation decays below float32's range
    pred, st = run(x, late, cfg, init_state(bins, cfg, dtype=np.complex64))
    _check_state(st, cfg)
    assert np.isfinite(pred).all()
    assert np.max(np.abs(pred)) < 10 * np.max(np.abs(x))

    def rel_err(seg: int) -> float:
        start = sum(len(p[0]) for p in parts[:seg])
        sl = slice(start + 10 * sec, start + 20 * sec)  # the second half of a speech part
        return float(np.sum(np.abs(pred[sl] - late[sl]) ** 2) / np.sum(np.abs(late[sl]) ** 2))

    start_err = max(rel_err(0), rel_err(1))
    assert start_err < 1e-3
    assert rel_err(10) < 10 * start_err + 1e-4 and rel_err(11) < 10 * start_err + 1e-4


def test_prediction_uses_only_the_past():
    cfg = PredictorConfig(taps=4)
    x, late = _reverberant(200, 3, seed=6)
    pred, _ = run(x, late, cfg)
    y = x.copy()
    y[150:] *= -3.0
    pred2, _ = run(y, late, cfg)
    # Frame t is predicted from frames up to t - D with a filter fitted to targets before t.
    assert np.array_equal(pred[: 150 + cfg.delay], pred2[: 150 + cfg.delay])


def test_predict_is_g_hermitian_times_x():
    g = np.array([[1 + 1j, 2.0]])
    x = np.array([[1j, 1 - 1j]])
    assert np.allclose(predict(g, x), (1 - 1j) * 1j + 2 * (1 - 1j))
