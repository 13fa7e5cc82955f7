"""How much a stream's history changes the shipped model's output (docs/model.md, "Start state").

    python -m benchmarks.start_state [MODEL.onnx]

On the probe clip at 48 kHz (benchmarks.live_measure): window errors (per 256-sample window, relative)
of the output after 10 s and 120 s more silence than the rest state, against the output right after
it (the live-vs-file test fails a window above 0.02); the effect of shifting the input by 1 sample and
by half a framing hop; and, at 16 kHz, the largest change after 3 s and 9 s more silence relative to
the output's peak.
"""

from __future__ import annotations

import sys

import numpy as np

from stream import dereverb_array
from benchmarks.live_measure import probe_signal, window_errors
from stream.model import StepModel


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    model = StepModel.load(argv[0] if argv else None)
    rate, period = 48000, 768
    x = probe_signal(rate, 5.0)

    def after(lead: int) -> np.ndarray:
        return dereverb_array(np.concatenate([np.zeros(lead, np.float32), x]), rate, model=model)[lead:]

    ref = after(period + 100)
    print(f"rest state: {model.rest_seconds:g} s of silence")
    for seconds in (10.0, 120.0):
        e = window_errors(after(int(seconds * rate) // period * period + 100), ref, 256)
        print(f"{seconds:5.0f} s more silence: median window error {np.nanmedian(e):.5f}, max {np.nanmax(e):.4f}, "
              f"{int((np.nan_to_num(e) > 0.02).sum())} of {e.size} windows above 0.02")
    for shift in (1, period // 2):
        e = window_errors(after(period + 100 + shift), ref, 256)
        print(f"input shifted by {shift} samples: median window error {np.nanmedian(e):.4f}")
    from tests.signals import speechlike

    s = speechlike(2.0, 16000, 1, seed=21)
    outs = {h: dereverb_array(np.concatenate([np.zeros((h * 256, 1), np.float32), s]), 16000, model=model)[h * 256:]
            for h in (32, 192, 576)}
    peak = float(np.abs(outs[32]).max())
    for h in (192, 576):
        print(f"{(h - 32) * 256 / 16000:.1f} s more silence (16 kHz): max change {100 * np.abs(outs[h] - outs[32]).max() / peak:.3f} % of peak")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
