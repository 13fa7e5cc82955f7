"""benchmarks.lstm_cost runs end to end, and its int8 finding holds: dynamic quantization makes the output
depend on how the audio is split into calls, where the float model does not."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime.quantization")


def test_lstm_cost_reports_the_int8_invariance_loss(capsys):
    from benchmarks.lstm_cost import WIDTHS, int8_study, main
    from stream.model import default_model_path

    assert main(["--rounds", "1", "--calls", "2"]) == 0
    table = capsys.readouterr().out
    assert all(f"| {h} |" in table for h in WIDTHS) and "| int8 |" in table
    study = int8_study(default_model_path(), rounds=1, calls=2)
    assert study["float"]["whole_vs_hop_by_hop_snr_db"] > 90.0  # float32 rounding only
    assert study["int8"]["whole_vs_hop_by_hop_snr_db"] < 60.0  # per-call activation scales
    assert study["int8"]["mb"] < 0.6 * study["float"]["mb"]
