"""training.gate_report's measurements on a tiny gated model with known behaviour, and training.gate's
frame labels."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from training.config import parse_model_sets, parse_sets  # noqa: E402
from training.gate import frame_labels, lead_frames  # noqa: E402
from training.gate_report import blend, noise_floor, switching  # noqa: E402
from training.model import MaskLSTM, ModelConfig  # noqa: E402


def _batches(n: int = 2) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        x = torch.randn(4, 256 * 80, generator=g) * 0.1
        out.append({"mixture": x, "early": x, "is_music": torch.tensor([0.0, 1.0, 0.0, 1.0]),
                    "rt60": torch.tensor([0.5, 0.5, 0.2, 0.9])})
    return out


def test_a_shut_gate_passes_music_through_and_an_open_one_does_not():
    torch.manual_seed(0)
    model = MaskLSTM(ModelConfig(hidden=16, music_gate=True)).eval()
    with torch.no_grad():
        model.mask.weight.normal_(0, 0.5)
        model.mask.bias.normal_(0, 1.0)  # a mask far from pass-through
        model.music_gate.bias.fill_(20.0)  # every frame surely music
    shut = blend(model, _batches())
    # The target is the input itself, so pass-through gains exactly nothing, whatever the kind.
    assert abs(shut["music_mean_db"]) < 0.01 and abs(shut["speech_all_db"]) < 0.01
    assert switching(model, _batches()) == {"speech_frames_right_after_1s": 0.0, "music_frames_right_after_1s": 1.0}
    with torch.no_grad():
        model.music_gate.bias.fill_(-20.0)  # surely speech: the model's own (damaging) mask
    assert blend(model, _batches())["music_mean_db"] < -3.0


def test_music_after_a_lead_is_scored_from_the_leads_end():
    torch.manual_seed(0)
    model = MaskLSTM(ModelConfig(hidden=16, music_gate=True)).eval()
    with torch.no_grad():
        model.mask.weight.normal_(0, 0.5)
        model.mask.bias.normal_(0, 1.0)
    plain = blend(model, _batches())
    assert plain["music_from_lead_end_mean_db"] == pytest.approx(plain["music_mean_db"], abs=1e-4)  # no lead
    led = _batches()
    for b in led:  # 30 hops in which only noise sounds: the target is silent there
        b["lead"] = torch.tensor([256 * 30] * 4)
        b["early"] = b["early"].clone()
        b["early"][:, : 256 * 30] = 0.0
        b["mixture"] = b["mixture"].clone()
        b["mixture"][:, : 256 * 30] *= 0.3
    with torch.no_grad():
        model.music_gate.bias.fill_(20.0)  # pass-through: the music after the lead comes back unchanged
    shut = blend(model, led)
    # Counted from the lead's end, aligned by the step's latency, pass-through gains exactly nothing.
    assert abs(shut["music_from_lead_end_mean_db"]) < 0.01 and abs(shut["music_from_lead_end_worst_db"]) < 0.01
    with torch.no_grad():
        model.music_gate.bias.fill_(-20.0)  # the model's own damaging mask
    assert blend(model, led)["music_from_lead_end_mean_db"] < -3.0


def test_a_leads_frames_are_labelled_neither_speech_nor_music():
    batch = {"is_music": torch.tensor([0.0, 1.0, 1.0]), "lead": torch.tensor([0, 256 * 3 + 255, 256 * 2])}
    labels = frame_labels(batch, 6, 256, lead_label=0.5)
    # Frame k reads samples [(k-1) 256, (k+1) 256): a lead of 3 hops + 255 samples covers frames 0-2 whole.
    assert labels.tolist() == [[0.0] * 6, [0.5, 0.5, 0.5, 1.0, 1.0, 1.0], [0.5, 0.5, 1.0, 1.0, 1.0, 1.0]]
    assert lead_frames({"is_music": torch.zeros(2)}, 4, 256).sum() == 0  # no "lead" key: no lead
    assert frame_labels({"is_music": torch.tensor([1.0])}, 2, 256, lead_label=0.5).tolist() == [[1.0, 1.0]]


def test_the_noise_floor_report_sees_a_hold_that_noise_clears():
    torch.manual_seed(0)
    model = MaskLSTM(ModelConfig(hidden=16, music_gate=True, music_start_open=True, music_clear_frames=3)).eval()
    sure_speech = noise_floor(model, seconds=1.0)  # the untrained head: every frame surely speech
    assert all(r["end_share"] == 0.0 and 0 < r["mean_share"] < 0.1 for r in sure_speech.values())
    with torch.no_grad():
        model.music_gate.bias.fill_(3.0)  # p = 0.95 everywhere: the open hold stays open
    assert all(r == {"mean_share": 1.0, "end_share": 1.0} for r in noise_floor(model, seconds=1.0).values())


def test_set_takes_sections_and_top_level_keys():
    assert parse_sets(["optim.epochs=2", 'out_dir="runs/x"', "data.lead_seconds=[0.1, 1.0]"]) == {
        "optim.epochs": 2, "out_dir": "runs/x", "data.lead_seconds": [0.1, 1.0]}
    for bad in ("optim.epochs", "=2", "optim.=2", ".epochs=2"):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            parse_sets([bad])
    # Export and gate_report change model settings only.
    assert parse_model_sets(["model.music_clear_frames=3"]) == {"music_clear_frames": 3}
    with pytest.raises(ValueError, match="model.KEY=VALUE"):
        parse_model_sets(['out_dir="runs/x"'])
