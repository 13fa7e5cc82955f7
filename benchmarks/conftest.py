"""Fixtures for the pytest-benchmark suite (run: ``python -m pytest benchmarks``; not part of ``pytest -q``)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def model():
    """The shipped model with the runtime's default session options (one intra-op thread)."""
    from stream.model import SessionOptions, StepModel

    return StepModel.load(None, SessionOptions(threads=1))


@pytest.fixture(scope="session")
def speech():
    """``speech(sample_rate, channels, seconds)`` -> the bundled reverberant clip, float32 [frames, channels]."""
    from stream.bench import bench_audio

    cache: dict[tuple, np.ndarray] = {}

    def get(sample_rate: int = 16000, channels: int = 1, seconds: float = 10.0) -> np.ndarray:
        key = (sample_rate, channels, seconds)
        if key not in cache:
            cache[key] = bench_audio(sample_rate, channels, seconds)
        return cache[key]

    return get
