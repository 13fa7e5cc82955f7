"""Training pieces: the thresholded SNR loss, the TOML config, the model's streaming step."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from training.config import load_config  # noqa: E402
from training.model import GATE_HEAD, MaskLSTM, ModelConfig, count_parameters, init_weights  # noqa: E402
from training.train import continued_weights, loss_ceiling_db, loss_reference, si_sdr_db, snr_db  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TRAIN, GATE = ROOT / "training/configs/train.toml", ROOT / "training/configs/gate.toml"


def test_thresholded_snr_caps_at_max_db():
    ref = torch.randn(2, 4000)
    assert torch.allclose(snr_db(ref, ref, max_db=30.0), torch.tensor([30.0, 30.0]), atol=1e-3)
    noisy = ref + 0.1 * torch.randn(2, 4000)
    plain, capped = snr_db(noisy, ref), snr_db(noisy, ref, max_db=30.0)
    assert (plain > capped).all() and (plain - capped < 0.5).all()  # far from the cap: nearly plain SNR


def test_thresholded_snr_keeps_gradients_balanced():
    # A nearly perfect example must not out-shout a bad one: that starved the reverberant examples.
    ref = torch.randn(2, 4000)
    est = torch.stack([ref[0] + 1e-4 * torch.randn(4000), ref[1] + 0.5 * torch.randn(4000)]).requires_grad_()
    for max_db, balanced in ((None, False), (30.0, True)):
        est.grad = None
        (-snr_db(est, ref, max_db=max_db).mean()).backward()
        g_good, g_bad = est.grad[0].norm(), est.grad[1].norm()
        assert (g_good < 10 * g_bad) == balanced


def test_input_relative_ceiling_follows_the_input():
    # Near-clean input gets a high ceiling (it must stay near clean), reverberant input keeps the fixed one.
    ref = torch.randn(3, 8000)
    mix = ref + torch.stack([1e-3 * torch.randn(8000), 0.03 * torch.randn(8000), torch.randn(8000)])  # 60, ~30, ~0 dB
    cfg = load_config(TRAIN)
    assert loss_ceiling_db(mix, ref, cfg) == cfg.loss.snr_max_db  # off: one number for all
    on = load_config(TRAIN, {"loss.snr_cap_margin_db": 10.0, "loss.snr_cap_max_db": 50.0})
    cap = loss_ceiling_db(mix, ref, on)
    assert cap[0] == pytest.approx(50.0)  # 60 + 10, clamped
    assert 38.0 < float(cap[1]) < 42.0  # ~30 + 10
    assert cap[2] == pytest.approx(30.0)  # ~0 + 10, raised to snr_max_db
    # The ceiling binds: an output at the input's own 30 dB error scores near its cap minus a few dB,
    # where a fixed 30 dB ceiling would have given it the same score as a perfect output minus 3 dB.
    est = mix[1:2]
    assert float(snr_db(est, ref[1:2], max_db=cap[1:2])) > float(snr_db(est, ref[1:2], max_db=30.0)) + 2.0


def test_si_sdr_scale_invariant():
    ref = torch.randn(1, 8000)
    est = ref + 0.1 * torch.randn(1, 8000)
    assert torch.allclose(si_sdr_db(est, ref), si_sdr_db(3 * est, ref), atol=1e-4)


def test_default_config_loads_and_rejects_unknown_keys(tmp_path):
    cfg = load_config(TRAIN)
    assert cfg.model.hidden == 320 and cfg.loss.target == "early"
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nlearning_rate = 1\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_config(bad)
    over = load_config(TRAIN, {"optim.epochs": 3, "optim.run_epochs": 0})
    assert over.optim.epochs == 3


def test_a_config_is_one_flat_file(tmp_path):
    # No inheritance: a recipe reads top to bottom, so a ``base`` key is refused like any unknown key.
    (tmp_path / "child.toml").write_text('base = "train.toml"\nout_dir = "runs/c"\n')
    with pytest.raises(ValueError, match="unknown keys"):
        load_config(tmp_path / "child.toml")


def test_the_shipped_recipes_are_the_runs_that_made_the_shipped_model():
    """train.toml and gate.toml hold every value the shipped checkpoint records for its two runs (the
    network's, then its gate head's), so running them rebuilds it. Left out: the network's wall-clock
    guard (its budget is run_epochs), the gate's base checkpoint and output directory (where the first
    run's best.pt lies), and what the gate's run never reads (the loss and state resets: it is a
    classifier started from the rest state)."""
    summary = torch.load(ROOT / "models/dereverb-lstm-16k.pt", weights_only=True)["summary"]

    def differences(recorded: dict, recipe: dict, skip: set[str]) -> list[str]:
        out = []
        for section, values in recorded.items():
            if not isinstance(values, dict):
                if section not in skip and recipe[section] != values:
                    out.append(section)
                continue
            for key, value in values.items():
                name = f"{section}.{key}"
                if name in skip or section in skip or (section == "model" and key not in recipe["model"]):
                    continue  # a retired variant's setting: ModelConfig.from_dict checks its value
                mine = recipe[section][key]
                if (list(mine) if isinstance(mine, tuple) else mine) != value:
                    out.append(f"{name}: recorded {value!r}, recipe {mine!r}")
        return out

    network = load_config(TRAIN)
    assert differences(summary["config"], network.to_dict(), {"optim.max_minutes"}) == []
    assert network.optim.stop_epoch == 33 and summary["epochs"] <= 33  # best.pt: epoch 31 of the 33
    gate = load_config(GATE)
    assert differences(summary["music_gate"]["config"], gate.to_dict(),
                       {"out_dir", "optim.init_from", "loss", "optim.state_reset_prob"}) == []
    assert gate.model == dataclasses.replace(network.model, music_gate=True, music_gate_hidden=32,
                                             music_clear_frames=3, music_start_open=True)


def test_a_checkpoint_config_with_a_retired_variant_switched_on_is_refused():
    recorded = {**ModelConfig().to_dict(), "mask": "complex", "mask_exponent": 1.0, "ema_seconds": [],
                "band_width": 0, "band_hidden": 64, "time_basis": 0, "time_hidden": 128}
    assert ModelConfig.from_dict(recorded) == ModelConfig()  # off: the model this file builds
    for key, on in (("band_width", 8), ("time_basis", 256), ("ema_seconds", [0.1]), ("mask", "magnitude"),
                    ("mask_exponent", 0.75)):
        with pytest.raises(ValueError, match=key):
            ModelConfig.from_dict({**recorded, key: on})


@pytest.mark.parametrize("extra", [{}, {"lp_taps": 3}, {"music_gate": True},
                                   {"music_gate": True, "music_gate_hidden": 8, "music_clear_frames": 3}])
def test_step_in_pieces_equals_whole(extra):
    torch.manual_seed(0)
    m = MaskLSTM(ModelConfig(hidden=32, **extra)).eval()
    x = torch.randn(2, 256 * 12) * 0.1
    with torch.no_grad():
        # The mask layer starts at zero (pass-through); randomise it so the output depends on every state.
        m.mask.weight.normal_(0, 0.5)
        if extra.get("lp_taps"):
            m.lp.weight.normal_(0, 0.1)
        if extra.get("music_gate"):  # half open on average, so frames fall on both sides of the clip points
            m.music_gate.weight.normal_(0, 2.0)
            m.music_gate.bias.zero_()
        whole = m.enhance(x)
        st = m.initial_state(2)
        parts = []
        for i in range(0, x.shape[1], 256 * 5):
            out = m.step(x[:, i : i + 256 * 5], st)
            st = out.state
            parts.append(out.audio)
    assert torch.allclose(torch.cat(parts, 1), whole, atol=1e-5)


@pytest.mark.parametrize("extra, head", [({"lp_taps": 3}, "lp")])
def test_zero_initialised_additions_change_nothing(extra, head):
    # A prediction head added to a trained mask model must start exactly where that model was, so a
    # fine-tune from its checkpoint (strict=False for the new layers) begins at its quality.
    torch.manual_seed(0)
    base = MaskLSTM(ModelConfig(hidden=32)).eval()
    with torch.no_grad():
        base.mask.weight.normal_(0, 0.5)
    grown = MaskLSTM(ModelConfig(hidden=32, **extra)).eval()
    init_weights(grown, base.state_dict())
    with pytest.raises(ValueError, match="does not fit"):  # only additions are allowed, not removals
        init_weights(MaskLSTM(ModelConfig(hidden=32)), grown.state_dict())
    x = torch.randn(1, 256 * 20) * 0.1
    with torch.no_grad():
        assert torch.allclose(grown.enhance(x), base.enhance(x), atol=1e-6)
        getattr(grown, head).weight.normal_(0, 0.1)
        assert not torch.allclose(grown.enhance(x), base.enhance(x), atol=1e-3)


def _far_from_pass_through() -> MaskLSTM:
    """A small model (seeded) whose mask is far from 1, in eval mode."""
    torch.manual_seed(0)
    model = MaskLSTM(ModelConfig(hidden=32)).eval()
    with torch.no_grad():
        model.mask.weight.normal_(0, 0.5)
        model.mask.bias.normal_(0, 1.0)
    return model


def _with_gate(model: MaskLSTM, hidden: int = 0) -> MaskLSTM:
    """``model`` grown by a music gate with ``hidden`` units in its head (as initialised: music probability
    ~0, so the same output), in eval mode."""
    gated = MaskLSTM(dataclasses.replace(model.cfg, music_gate=True, music_gate_hidden=hidden)).eval()
    init_weights(gated, model.state_dict())
    return gated


@pytest.mark.parametrize("hidden", [0, 8])
def test_music_gate_open_is_the_model_and_shut_is_pass_through(hidden):
    from training.model import GATE_OPEN, GATE_SHUT

    base = _far_from_pass_through()  # so pass-through differs from the model's own mask
    grown = _with_gate(base, hidden)
    x = torch.randn(1, 256 * 20) * 0.1
    lat = grown.cfg.step_latency
    with torch.no_grad():
        y_model = base.enhance(x)
        # As initialised (music probability ~0): exactly the model it was grown from.
        assert torch.equal(grown.enhance(x), y_model)
        assert float(((y_model[0, lat:] - x[0, :-lat]) ** 2).mean() / (x**2).mean()) > 0.01
        # Surely music: the input, delayed, as the STFT's perfect reconstruction gives it back.
        grown.music_gate.bias.fill_(20.0)
        y = grown.enhance(x)
        assert torch.allclose(y[0, 512:], x[0, 512 - lat : -lat], atol=1e-5)
        # In between: a blend of the two masks, so (the STFT being linear) of the two outputs.
        grown.music_gate.bias.zero_()  # probability 0.5
        keep = (GATE_SHUT - 0.5) / (GATE_SHUT - GATE_OPEN)
        passed = torch.cat([torch.zeros(1, lat), x[:, :-lat]], 1)
        assert torch.allclose(grown.enhance(x)[0, 512:], (keep * y_model + (1 - keep) * passed)[0, 512:], atol=1e-5)
        # forward returns the gate's share and logit after the states; nothing is kept on the module.
        out = grown.step(x, grown.initial_state(1))
    assert out.music_logit.shape == out.pass_share.shape == (1, 20)
    assert torch.allclose(out.pass_share, torch.full((1, 20), 1 - keep))
    assert not any(isinstance(v, torch.Tensor) for k, v in vars(grown).items() if not k.startswith("_"))


def test_the_gate_trains_every_layer_of_its_head_and_nothing_else():
    base = MaskLSTM(ModelConfig(hidden=16, input_proj=8, layers=1))
    for hidden in (0, 8):
        gated = _with_gate(base, hidden)
        added = set(dict(gated.named_parameters())) - set(dict(base.named_parameters()))
        assert {n for n, _ in gated.named_parameters() if n.startswith(GATE_HEAD)} == added
        assert len(added) == (4 if hidden else 2)
        # The output layer starts at zero, so only it has a gradient at first; once it moves, so does the
        # hidden layer's (a head whose hidden layer stayed at its random start would be a linear head).
        x = torch.randn(2, 256 * 12) * 0.1
        gated.train()
        gated.step(x, gated.initial_state(2)).music_logit.sum().backward()
        assert float(gated.music_gate.weight.grad.abs().sum()) > 0
        if hidden:
            assert float(gated.music_gate_in.weight.grad.abs().sum()) == 0
            with torch.no_grad():
                gated.music_gate.weight.normal_()
            gated.zero_grad()
            gated.step(x, gated.initial_state(2)).music_logit.sum().backward()
            assert float(gated.music_gate_in.weight.grad.abs().sum()) > 0


@pytest.mark.parametrize("k", [1, 3])
def test_music_hold_is_a_peak_hold_cleared_by_sure_speech(k):
    # The closed form (a masked max over a table, for the ONNX graph) against the recursion it stands
    # for, across block boundaries: out_t = out_{t-1} on a silent frame; else 0 where raw_t-k+1..raw_t
    # are all 0 (k sure-speech frames in a row, none silent), else max(raw_t, e^-rate out_{t-1}); the
    # state carries out and the last k - 1 raw shares (1 for a silent frame).
    from training.model import GATE_OPEN, GATE_SHUT, gate_shares

    torch.manual_seed(0)
    raw = torch.rand(3, 40)
    raw[raw < 0.45] = 0.0
    raw[0, :12] = torch.linspace(0.9, 0.1, 12)  # a long unsure stretch: only the hold decides
    raw[1, 20:24] = 0.0  # four sure frames in a row: clears for every k <= 4
    raw[2, 30:32] = torch.tensor([0.0, 0.0])
    raw[2, 32] = 0.5  # two sure frames, then unsure: clears only for k <= 2
    cfg = ModelConfig(music_gate=True, music_clear_frames=k)
    rate = cfg.hop / (cfg.sample_rate * cfg.music_hold_seconds)
    # Logits that give exactly these raw shares (p = GATE_OPEN + raw (GATE_SHUT - GATE_OPEN)).
    p = GATE_OPEN + raw * (GATE_SHUT - GATE_OPEN)
    logit = torch.log(p / (1 - p)) - (raw <= 0).float() * 5.0
    silent = torch.zeros(3, 40, dtype=torch.bool)
    silent[0, 5:8] = True  # silence inside the unsure stretch: the hold neither decays nor clears
    silent[1, 21] = True  # silence inside a run of sure frames: the run restarts after it
    silent[2, 14:19] = True  # silence across the block boundary below
    prev = torch.cat([torch.rand(3, 1), torch.ones(3, k - 1)], 1)  # held share, then unsure past frames
    expect, o, past = torch.zeros_like(raw), prev[:, 0], [prev[:, j] for j in range(1, k)]
    for t in range(raw.shape[1]):
        mark = torch.where(silent[:, t], torch.ones(3), raw[:, t])
        window = [*past, mark][-k:]
        clear = torch.stack([w <= 0 for w in window]).all(0)
        step = torch.where(clear, torch.zeros(3), torch.maximum(raw[:, t], o * math.exp(-rate)))
        o = torch.where(silent[:, t], o, step)
        expect[:, t] = o
        past = (past + [mark])[1:] if k > 1 else []
    share, hold = gate_shares(logit, prev, cfg, silent)
    assert torch.allclose(share, expect, atol=1e-5)
    first, mid = gate_shares(logit[:, :17], prev, cfg, silent[:, :17])
    second, _ = gate_shares(logit[:, 17:], mid, cfg, silent[:, 17:])
    assert torch.allclose(torch.cat([first, second], 1), expect, atol=1e-5)
    assert hold.shape == (3, k)
    assert torch.equal(share[0, 4:8], share[0, 4].expand(4))  # frozen through the silence
    # Silence leaves an open hold open and a closed one closed, for any length: the rest state's fixed point.
    for start in (0.0, 1.0):
        quiet, _ = gate_shares(torch.full((1, 50), -9.0), torch.full((1, k), start), cfg, torch.ones(1, 50, dtype=torch.bool))
        assert torch.equal(quiet, torch.full((1, 50), start))
    assert float(share[1, 23]) == 0.0  # the fourth sure frame in a row clears for every k <= 4
    # A lone sure frame inside a held stretch ends the hold only when one frame is enough.
    lone = ((raw[:, 1:-1] <= 0) & (raw[:, :-2] > 0) & (raw[:, 2:] > 0) & (expect[:, :-2] > 0.3)).nonzero()
    assert len(lone) and all((float(share[b, t + 1]) > 0) == (k > 1) for b, t in lone.tolist())


def test_complex_mask_never_amplifies_a_bin():
    torch.manual_seed(0)
    m = MaskLSTM(ModelConfig(hidden=16)).eval()
    with torch.no_grad():
        m.mask.weight.normal_(0, 5.0)  # drive the mask hard
        x = torch.randn(1, 256 * 40) * 0.1
        y = m.enhance(x)
    # Bin-wise |m| < 1 bounds the output energy by the input energy (Parseval over the frames).
    assert float((y**2).sum()) <= float((x**2).sum()) * 1.001


@pytest.mark.parametrize("path", sorted((ROOT / "training/configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_builds_its_model(path):
    cfg = load_config(path)
    model = MaskLSTM(cfg.model)
    # The project's budget: causal, at most 2 M parameters, at most 32 ms algorithmic latency at 16 kHz.
    assert count_parameters(model) <= 2_000_000
    assert cfg.model.step_latency + cfg.model.hop - 1 <= 0.032 * cfg.model.sample_rate


def test_bfloat16_runs_the_network_and_keeps_the_dsp_in_float32():
    """optim.precision = "bfloat16": under CPU autocast only the network runs in bf16. The DFTs, the
    mask's product and the overlap-add stay float32, so a shut gate (mask exactly 1) still gives the
    input back to float32 precision; in bf16 the analysis-synthesis alone would be off by ~1e-3."""
    torch.manual_seed(0)
    m = _far_from_pass_through()
    x = torch.randn(1, 256 * 20) * 0.1
    lat = m.cfg.step_latency
    with torch.no_grad():
        y32 = m.enhance(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            state = m.initial_state(1)
            out = m(x, *(state[k] for k in m.state_names))
        assert all(t.dtype == torch.float32 for t in out)
        y16 = out[0]
        # The network did run in bf16: close to the float32 output, not equal to it.
        assert not torch.equal(y16, y32)
        assert float(si_sdr_db(y16[:, lat:], y32[:, lat:])) > 25.0
        gated = _with_gate(m)
        gated.music_gate.bias.fill_(20.0)  # surely music: pass-through, whatever the bf16 mask says
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = gated.enhance(x)
    assert torch.allclose(y[0, 512:], x[0, 512 - lat : -lat], atol=1e-5)


def test_bfloat16_training_step_reaches_every_weight():
    from training.train import compute_loss

    cfg = load_config(TRAIN, {"model.hidden": 32})
    torch.manual_seed(0)
    model = MaskLSTM(cfg.model)
    with torch.no_grad():
        model.mask.weight.normal_(0, 0.5)  # the output layer starts at zero, which no gradient passes
    mix = torch.randn(2, 256 * 30) * 0.1
    batch = {"mixture": mix, "early": mix * 0.5, "direct": mix * 0.3}
    losses = {}
    for precision in ("float32", "bfloat16"):
        model.zero_grad()
        optim = dataclasses.replace(cfg.optim, precision=precision)
        assert optim.bf16 == (precision == "bfloat16")
        loss, _, carried = compute_loss(model, batch, cfg, bf16=optim.bf16)
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
                   for p in model.parameters())
        assert all(v.dtype == torch.float32 for v in carried.values())
        losses[precision] = float(loss.detach())
    assert losses["bfloat16"] != losses["float32"]
    assert abs(losses["bfloat16"] - losses["float32"]) < 0.05 * abs(losses["float32"])


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        load_config(TRAIN, {"optim.precision": "float16"})


def test_run_epochs_stops_inside_the_schedule_and_is_bounded_by_it():
    recipe = load_config(TRAIN)
    # The shipped recipe's budget is epochs (33 of a 36-epoch schedule), not minutes.
    assert (recipe.optim.epochs, recipe.optim.run_epochs, recipe.optim.stop_epoch) == (36, 33, 33)
    assert load_config(GATE).optim.stop_epoch == 3  # run_epochs 0: all of the schedule
    for bad in (-1, 37):
        with pytest.raises(ValueError, match="run_epochs"):
            load_config(TRAIN, {"optim.run_epochs": bad})


def test_loss_reference_blends_direct_and_early_and_refuses_what_it_cannot_mean():
    gen = torch.Generator().manual_seed(0)
    batch = {k: torch.randn(2, 800, generator=gen) for k in ("mixture", "early", "direct")}
    early = load_config(TRAIN)
    assert early.loss.early_weight == 1.0 and loss_reference(batch, early) is batch["early"]
    blend = load_config(TRAIN, {"loss.early_weight": 0.8})
    want = 0.2 * batch["direct"] + 0.8 * batch["early"]
    assert torch.allclose(loss_reference(batch, blend), want, atol=1e-6)
    direct = load_config(TRAIN, {"loss.target": "direct"})
    assert loss_reference(batch, direct) is batch["direct"]
    for bad, match in (({"loss.early_weight": 1.2}, "early_weight"), ({"loss.early_weight": -0.1}, "early_weight"),
                       ({"loss.target": "direct", "loss.early_weight": 0.5}, "target 'early' only"),
                       ({"loss.target": "late"}, "loss.target")):
        with pytest.raises(ValueError, match=match):
            load_config(TRAIN, bad)


def test_a_gated_checkpoint_continues_as_its_network_without_the_head():
    torch.manual_seed(0)
    small = dict(hidden=16, input_proj=8, layers=1)
    gated = MaskLSTM(ModelConfig(**small, music_gate=True, music_gate_hidden=4))
    sd = gated.state_dict()
    plain = MaskLSTM(ModelConfig(**small))
    with pytest.raises(ValueError, match="unexpected"):
        init_weights(plain, sd)  # why continued_weights exists
    weights = continued_weights(sd, plain.cfg)
    assert not any(k.startswith(GATE_HEAD) for k in weights) and any(k.startswith(GATE_HEAD) for k in sd)
    init_weights(plain, weights)
    assert all(torch.equal(v, sd[k]) for k, v in plain.state_dict().items())
    # A gated model keeps the head it is given (training.gate drops it itself, to train a new one).
    assert continued_weights(sd, gated.cfg) is sd


@pytest.mark.parametrize("gate", [False, True])
def test_training_with_given_predictions_is_the_streaming_step(gate):
    """The predictor-in-the-loop training path: the predictions streamed hop by hop, then the network
    over the whole segment with them, gives the streaming step's output and LSTM state (so what the
    loss scores is what the exported step plays), and gradients reach the network."""
    base = _far_from_pass_through()
    cfg = dataclasses.replace(base.cfg, rls_taps=4, rls_settle=4, rls_f_max=2000.0)
    model = MaskLSTM(cfg).eval()
    init_weights(model, base.state_dict())
    if gate:
        model = _with_gate(model)
        with torch.no_grad():  # a head that opens the gate on some frames, partly
            model.music_gate.weight.normal_(0, 2.0)
            model.music_gate.bias.zero_()
    torch.manual_seed(1)
    # Noise through a decaying comb: a late part the filter can predict, so the predictions move.
    x = torch.randn(2, 256 * 60) * 0.1
    for lag, g in ((700, 0.6), (1900, 0.4)):
        x[:, lag:] += g * x[:, :-lag].clone()
    start = model.initial_state(2)
    pred, final = model.predictions(x, start)
    assert pred.shape == (2, 60, 2, cfg.rls_bins) and float(pred.abs().max()) > 1e-3
    with torch.no_grad():  # the comparisons; the gradient is checked below
        streamed = model.step(x, start)
        if gate:
            share = streamed.pass_share
            assert float(share.max() - share.min()) > 0.1 and bool(((share > 0) & (share < 1)).all())  # the blend moves
        forced = model.with_predictions(x, start, pred)
        scale = float(streamed.audio.detach().abs().max())
        assert float((forced.audio - streamed.audio).detach().abs().max()) < 1e-5 * scale
        for k in ("lstm_h", "lstm_c"):
            assert torch.allclose(forced.state[k], streamed.state[k], atol=1e-5)
            assert torch.allclose(final[k], streamed.state[k], atol=1e-6)
        trained = model.train_step(x, start)  # what training and the gate's run use
        assert torch.equal(trained.audio, forced.audio)
        for k in ("pred_hist", "rls_g", "rls_p", "rls_level", "rls_weight"):  # the streamed pass's end state
            scale = float(streamed.state[k].abs().max()) + 1e-30
            assert float((final[k] - streamed.state[k]).abs().max()) <= 1e-4 * scale, k
            assert torch.equal(trained.state[k], final[k]), k
    model.train()
    model.with_predictions(x, start, pred).audio.square().mean().backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for n, p in model.named_parameters()
               if not n.startswith("music_gate"))
