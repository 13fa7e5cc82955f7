"""benchmarks.lstm_cost runs end to end, and its int8 finding holds: dynamic quantization makes the output
depend on how the audio is split into calls, where the float model does not."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime.quantization")


@pytest.mark.slow
def test_lstm_cost_reports_the_int8_invariance_loss(capsys):
    from benchmarks.lstm_cost import WIDTHS, main

    assert main(["--rounds", "1", "--calls", "2"]) == 0
    table = capsys.readouterr().out
    assert all(f"| {h} |" in table for h in WIDTHS)
    # | weights | file MB | us per 1-hop call | SNR vs float | whole vs hop-by-hop SNR |
    rows = {cells[0]: cells[1:] for line in table.splitlines()
            if (cells := [c.strip() for c in line.strip("|").split("|")])[0] in ("float", "int8")}
    whole_vs_hops = {k: float(v[3].split()[0]) for k, v in rows.items()}
    assert whole_vs_hops["float"] > 90.0  # float32 rounding only
    assert whole_vs_hops["int8"] < 60.0  # per-call activation scales
    assert float(rows["int8"][0]) < 0.6 * float(rows["float"][0])  # file size
