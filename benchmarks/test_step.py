"""The ONNX step at the model's hop (pure ``StepModel.run``) and the full streaming path around it."""

from __future__ import annotations

import numpy as np
import pytest

from stream import Dereverberator


def test_step_one_hop(benchmark, model, speech):
    """One hop per call, state carried: the cost the streaming engine pays per hop."""
    x = np.ascontiguousarray(speech(model.sample_rate, 1, 2.0)[: model.hop].T)
    state = {"s": model.initial_state(1)}

    def step() -> None:
        _, state["s"] = model.run(x, state["s"])

    benchmark(step)
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["rtf_p50"] = benchmark.stats.stats.median * model.sample_rate / model.hop


@pytest.mark.parametrize("into", [False, True], ids=["new-array", "out"])
@pytest.mark.parametrize("rate", [16000, 48000])
def test_stream_one_hop(benchmark, model, speech, rate, into):
    """``Dereverberator.process`` with hop-sized blocks at ``rate`` (resampling both ways at 48 kHz), returning
    a new array or writing into ``out`` (then a block allocates nothing)."""
    block = model.hop * rate // model.sample_rate
    audio = speech(rate, 1, 4.0)
    d = Dereverberator(model, sample_rate=rate, channels=1)
    blocks = [audio[i : i + block] for i in range(0, audio.shape[0] - block + 1, block)]
    out = np.empty_like(blocks[0]) if into else None
    pos = {"k": 0}

    def process() -> None:
        d.process(blocks[pos["k"] % len(blocks)], out=out)
        pos["k"] += 1

    benchmark(process)
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["rtf_p50"] = benchmark.stats.stats.median * rate / block
