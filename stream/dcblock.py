"""DC blocker in front of the model: a one-pole high-pass, vectorised, exact for any block split.

Why: the model never saw a DC offset in training (real microphones and cheap ADCs have one), and a
large offset fills the lowest STFT bins and the log-power features with energy that is not sound:
measured on the demo clip at half scale, an offset of 0.4 turned the dereverberated speech into a
signal with 3x its own energy in error.

y[n] = x[n] - x[n-1] + r y[n-1], r = exp(-2 pi fc / fs): a zero at DC, a pole just inside the unit
circle. fc = 2 Hz: -3 dB at 2 Hz, a time constant of 80 ms (an offset is gone to 1 % in 0.37 s;
the history starts at zero, see ``initial_state`` for why).

Why so low: the high-pass's phase shift is inaudible but not free. Its deviation from a pure pass,
|1 - H(f)| = fc / |f + j fc|, is fc / f above the cutoff: with a 20 Hz cutoff, 0.2 (-14 dB) at
100 Hz and -20 dB at 200 Hz, where voiced speech has much of its energy. That alone holds the
output of dry speech to ~25 dB SI-SDR against the input (the model itself: 40-50 dB), and costs
2.8 dB SI-SDR against the early-50 target in test rooms below RT60 0.3 s, where the input is
already 20-40 dB from the target. Measured with the shipped model on the test set's dry and
RT60 < 0.3 s examples (cutoff 20 / 5 / 2 Hz, history primed with the first sample): dry
25.1 / 32.1 / 34.5 dB, short rooms -2.82 / -0.24 / +0.16 dB; at 2 Hz with zero history (this
blocker): 36.7 dB and +0.36 dB (``python -m training.evaluate``, docs/model.md "The runtime's DC blocker").

What the blocker removes is not always unwanted: music passed through by the model's gate should come
out whole. With a model that reports where it passes its input through (``pass_share``), the engine
adds the blocker's complement back there (``stream.engine.ShareBypass``).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from stream.buffers import Scratch

CUTOFF_HZ = 2.0
# Chunk length for the closed-form recursion: r^-CHUNK must stay far from float64 overflow and keep
# rounding tiny (at 16 kHz, r^-1024 ~ 3e3).
CHUNK = 1024


def pole(sample_rate: int, cutoff_hz: float = CUTOFF_HZ) -> float:
    return math.exp(-2.0 * math.pi * cutoff_hz / sample_rate)


@lru_cache(maxsize=16)
def _powers(r: float) -> np.ndarray:
    """r^-k for k = 0..CHUNK-1 (read-only; computed once per pole)."""
    up = r ** -np.arange(CHUNK, dtype=np.float64)
    up.flags.writeable = False
    return up


def initial_state(channels: int) -> np.ndarray:
    """[channels, 2] float64: the previous input and output sample.

    The history starts at zero, as if the stream had been silent before its first sample. Why not
    prime the previous input with the first sample (so that an offset present from the start would
    not enter as a step): a stream or file that starts mid-sound has a first sample as large as the
    sound, and taking it for an offset injects a step of that size, decaying with the filter's time
    constant, into the model's input. On 24 reverberant test examples that costs 0.35 dB SI-SDR
    against early-50 compared with the same model without the blocker; with zero history the gap is
    0.04 dB (``python -m benchmarks.runtime_vs_torch``). A priming value estimated from the first
    block (its mean) fixes that too, but makes the output depend on how the input was cut into
    blocks. The price: an offset present from the start enters as a step and decays over ~0.4 s (a
    sub-audible 2 Hz transient; through the model on the demo clip, an offset of 0.4 full scale left
    the output 12 % RMS from the offset-free output after 0.5 s; tests/stream/test_numerics.py holds
    it under 20 %).
    """
    return np.zeros((channels, 2), np.float64)


def dc_block(x: np.ndarray, state: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray]:
    """High-pass ``x`` float32 [channels, n] with pole ``r``; returns (float32 [channels, n], new state).

    Pure: ``state`` is not modified (``dc_block_into`` is the in-place form the engine uses).
    """
    c, n = x.shape
    out, new_state = np.empty((c, n), np.float32), state.copy()
    dc_block_into(x, new_state, r, out, Scratch())
    return out, new_state


def dc_block_into(x: np.ndarray, state: np.ndarray, r: float, out: np.ndarray, scratch: Scratch) -> None:
    """High-pass ``x`` float32 [channels, n] into ``out`` (same shape), updating ``state`` [channels, 2] in
    place; temporaries come from ``scratch``, so a call allocates nothing once the scratch is grown.

    The recursion is evaluated in closed form per chunk, y[k] = r^k (y[-1] r + sum_{j<=k} r^-j d[j])
    with d the first difference, so there is no Python loop over samples.
    """
    c, n = x.shape
    if n == 0:
        return
    xd = scratch("dc_x", (c, n), np.float64)
    np.copyto(xd, x)
    d = scratch("dc_d", (c, n), np.float64)  # first difference, then the running sum in place
    np.subtract(xd[:, 0], state[:, 0], out=d[:, 0])
    np.subtract(xd[:, 1:], xd[:, :-1], out=d[:, 1:])
    y_prev = state[:, 1]  # a view: updated in place once each chunk has used it
    carry = scratch("dc_carry", (c,), np.float64)
    pole_ = scratch.scalar("dc_pole", r, np.float64)
    powers = _powers(r)
    for start in range(0, n, CHUNK):
        seg = d[:, start : start + CHUNK]
        up = powers[: seg.shape[1]]
        seg *= up
        np.cumsum(seg, axis=1, out=seg)
        np.multiply(y_prev, pole_, out=carry)
        seg += carry[:, None]
        seg /= up
        y_prev[:] = seg[:, -1]
    state[:, 0] = xd[:, -1]
    np.copyto(out, d, casting="same_kind")
