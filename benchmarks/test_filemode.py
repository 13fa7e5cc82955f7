"""File-mode throughput: the real ``process_file`` path (decode, engine with 64 hops per call, encode)."""

from __future__ import annotations

import pytest
import soundfile as sf

SECONDS = 10.0


@pytest.mark.parametrize("rate,channels", [(16000, 1), (44100, 2)])
def test_file_mode(benchmark, model, speech, tmp_path, rate, channels):
    from stream.filemode import DEFAULT_BLOCK, Job, process_file

    src = tmp_path / "in.wav"
    sf.write(str(src), speech(rate, channels, SECONDS), rate, subtype="PCM_16")
    job = Job(src, tmp_path / "out.wav")
    benchmark.pedantic(lambda: process_file(job, model, block=DEFAULT_BLOCK, force=True), rounds=3, iterations=1,
                       warmup_rounds=1)
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["x_realtime_p50"] = SECONDS / benchmark.stats.stats.median
