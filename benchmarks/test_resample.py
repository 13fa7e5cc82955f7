"""The streaming resampler at a hop-sized block (strided per-phase path or gather) and a file-mode block."""

from __future__ import annotations

import numpy as np
import pytest

from stream.resample import Resampler


@pytest.mark.parametrize("fs_in,fs_out", [(48000, 16000), (16000, 48000), (44100, 16000), (16000, 44100)])
@pytest.mark.parametrize("frames", [768, 65536])
def test_resample(benchmark, fs_in, fs_out, frames):
    r = Resampler(fs_in, fs_out)
    x = (0.1 * np.random.default_rng(0).standard_normal((2, frames))).astype(np.float32)
    state = r.initial_state(2)
    _, state = r.step(x, state)  # steady state: history full, counters past the start
    benchmark(r.step, x, state)
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["x_realtime_p50"] = frames / fs_in / benchmark.stats.stats.median
