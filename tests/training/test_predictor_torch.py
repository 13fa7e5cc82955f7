"""The torch predictor step (real re/im tensors) follows the numpy reference's float32 step, hop for hop,
through silence, a burst and a bad sign; and it traces to ONNX."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training import predictor as ref  # noqa: E402
from training import predictor_torch as tp  # noqa: E402


def _stream(frames: int, bins: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(X, late) complex64 [frames, bins]: a late-reverb recursion on speech-like noise, with a stretch
    of digital silence (frames 120-200) and a full-scale burst 1000 times louder (frames 260-270)."""
    rng = np.random.default_rng(seed)
    env = np.exp(rng.normal(0.0, 1.0, frames)) * (rng.random(frames) > 0.2) * 1e-2
    env[120:200] = 0.0
    env[260:270] = 10.0
    s = (rng.standard_normal((frames, bins)) + 1j * rng.standard_normal((frames, bins))) * env[:, None]
    x = s.copy()
    for t in range(frames):
        for k, c in enumerate((0.5 - 0.3j, 0.2 + 0.1j)):
            if t - 3 - k >= 0 and env[t] > 0:
                x[t] += c * x[t - 3 - k]
    return x.astype(np.complex64), (x - s).astype(np.complex64)


def _split(z: np.ndarray, axis: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([z.real, z.imag], axis=axis).astype(np.float32))


def _join(t: torch.Tensor, axis: int) -> np.ndarray:
    a = t.numpy()
    return np.take(a, 0, axis=axis) + 1j * np.take(a, 1, axis=axis)


@pytest.mark.parametrize("clip,settle", [(10.0, 32), (0.0, 32), (10.0, 0)])
def test_follows_the_float32_reference_hop_for_hop(clip, settle):
    cfg = ref.PredictorConfig(taps=6, clip=clip, settle=settle)
    frames, bins = 400, 12
    x, late = _stream(frames, bins)
    regs = ref.regressors(x, cfg)  # [T, F, K]
    st = ref.init_state(bins, cfg, dtype=np.complex64)
    g, p, level, weight = (v[0] for v in tp.init_state(1, bins, cfg.taps).values())
    worst_pred, worst_p = 0.0, 0.0
    for t in range(frames):
        want = ref.predict(st["g"], regs[t])
        got = _join(tp.predict(g, _split(regs[t], 0)), 0)
        scale = max(float(np.abs(want).max()), 1e-30)
        worst_pred = max(worst_pred, float(np.abs(got - want).max()) / scale)
        st = ref.update(st, regs[t], late[t], cfg)
        g, p, level, weight = tp.update(g, p, level, weight, _split(regs[t], 0), _split(late[t], 0), cfg)
        p_ref = st["P"]
        worst_p = max(worst_p, float(np.abs(_join(p, 0) - p_ref).max() / max(np.abs(p_ref).max(), 1e-30)))
        np.testing.assert_allclose(level.numpy(), st["level"], rtol=1e-5, atol=0)
        np.testing.assert_allclose(weight.numpy(), st["weight"], rtol=1e-6, atol=0)
    assert worst_pred < 1e-3 and worst_p < 1e-3
    np.testing.assert_allclose(_join(g, 0), st["g"], rtol=0, atol=1e-3 * np.abs(st["g"]).max())
    assert (st["level"] > 0).all()  # every bin active at some point: the comparison covers the updates
    # Hermitian bit for bit, without a symmetrisation.
    assert torch.equal(p[0], p[0].transpose(-1, -2)) and torch.equal(p[1], -p[1].transpose(-1, -2))


def test_bad_sign_restarts_the_bin_like_the_reference():
    cfg = ref.PredictorConfig(taps=4)
    x, late = _stream(20, 3, seed=2)
    regs = ref.regressors(x, cfg)
    st = ref.init_state(3, cfg, power=np.full(3, 1e-4, np.float32), dtype=np.complex64)
    st["P"][1] = -st["P"][1]  # indefinite: x^H P x < 0
    st["P"][2, 0, 0] = np.nan
    g, p = _split(st["g"], 0), _split(st["P"], 0)
    level, weight = torch.from_numpy(st["level"]), torch.from_numpy(st["weight"])
    for t in range(8, 12):
        st = ref.update(st, regs[t], late[t], cfg)
        g, p, level, weight = tp.update(g, p, level, weight, _split(regs[t], 0), _split(late[t], 0), cfg)
        assert np.isfinite(p.numpy()).all()
        np.testing.assert_allclose(_join(p, 0), st["P"], rtol=1e-4, atol=1e-6 * np.abs(st["P"]).max())


def test_batch_axes_are_independent():
    cfg = ref.PredictorConfig(taps=3)
    x, late = _stream(40, 5, seed=3)
    regs = ref.regressors(x, cfg)
    one = tp.init_state(1, 5, 3)
    two = tp.init_state(2, 5, 3)
    for t in range(40):
        xs, ds = _split(regs[t], 0)[None], _split(late[t], 0)[None]
        one = dict(zip(one, tp.update(*one.values(), xs, ds, cfg)))
        two = dict(zip(two, tp.update(*two.values(), torch.cat([xs, 0 * xs]), torch.cat([ds, 0 * ds]), cfg)))
    for k in one:
        assert torch.equal(one[k][0], two[k][0])
        assert not two[k][1].any()  # a silent channel stays at the start


@pytest.mark.parametrize("clip,settle", [(10.0, 32), (10.0, 0)])
def test_complex_update_is_the_real_one(clip, settle):
    """update_complex (the training loop's fast pass) follows update (the exported step) hop for hop
    through silence, a burst and a bad sign, with two batch channels."""
    cfg = ref.PredictorConfig(taps=4, clip=clip, settle=settle)
    x, late = _stream(300, 6, seed=4)
    regs = ref.regressors(x, cfg)
    a = tp.init_state(2, 6, 4)
    a["P"][1, :, 2] = torch.eye(4) * -1.0  # a bad sign in one bin of one channel
    a["weight"][1, 2], a["level"][1, 2] = 0.5, 1e-4
    b = {k: v.clone() for k, v in a.items()}
    for t in range(300):
        xs, ds = _split(regs[t], 0)[None], _split(late[t], 0)[None]
        xs, ds = torch.cat([xs, 0.5 * xs]), torch.cat([ds, 0.5 * ds])
        a = dict(zip(a, tp.update(*a.values(), xs, ds, cfg)))
        b = dict(zip(b, tp.update_complex(*b.values(), xs, ds, cfg)))
        for k in a:
            scale = float(a[k].abs().max()) + 1e-30
            assert float((a[k] - b[k]).abs().max()) <= 1e-4 * scale, (t, k)
    assert float(a["g"].abs().max()) > 0.1  # the filter learned something: the comparison covers updates
