"""Test signals (numpy only)."""

from __future__ import annotations

import numpy as np


def speechlike(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Noise bursts with a decaying tail: broadband, non-stationary, float32 [frames, channels]."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    env = np.repeat(rng.random(n // (sr // 8) + 1) > 0.4, sr // 8)[:n].astype(np.float32)
    x = rng.standard_normal((n, channels)).astype(np.float32) * env[:, None] * 0.05
    return x
