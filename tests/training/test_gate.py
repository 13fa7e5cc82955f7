"""training.gate_report's measurements on a tiny gated model with known behaviour."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from training.gate_report import blend, switching  # noqa: E402
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
