"""The streaming engine: a pure block step and a thin stateful wrapper.

``engine_step(plan, block, state) -> (out, state)`` takes any number of frames at the stream's rate
and returns exactly as many, delayed by ``plan.latency`` samples. Inside, audio may be resampled to
the model's rate, loses its DC offset (``stream.dcblock``), is gathered into whole hops, run through the ONNX step, resampled back and queued.
With a model that reports its pass-through share (``pass_share``), what the DC blocker removed is added
back where the model passes its input through, so passed-through music keeps everything (``_low_bypass``).

Why the output is identical for every block size: every stage emits all the output its input so far
allows (the resampler's output count depends only on the total input count, the model runs on whole
hops), so the sequence of samples entering the output queue is a function of the input signal alone.
The queue starts with ``prefill`` zeros, the worst-case hold-back of that chain over every possible
input count, so a request for N frames can always be served. Total latency = chain delay + prefill,
exact and constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from stream import dcblock
from stream.model import SessionOptions, StepModel
from stream.resample import Resampler

# Input samples beyond +-INPUT_LIMIT (80 dB over full scale) are clipped before the model: finite but
# absurd values (a float file holding 1e30) would overflow the float32 power spectrum to inf.
INPUT_LIMIT = 1e4
# Output never exceeds the input's running peak by more than this (dB); see Dereverberator.process.
PEAK_MARGIN_DB = 1.0
# Crossfade from the dry input back into the model output after a state reset, in seconds.
RESET_RAMP_S = 0.02

# Where the model passes its input through (its ``pass_share`` output: music, for the shipped model's
# gate), the DC blocker's complement (what it removed: the input below ~2 Hz) is passed through too, with
# this smoothing time constant (s) on the share; see engine_step.
LOW_SMOOTH_S = 0.08

# Model calls are capped at this many hops, which bounds memory for huge blocks while keeping the
# per-call overhead negligible (measured: 64 hops per call runs ~4x faster per sample than 1 hop).
MAX_HOPS_PER_CALL = 64


@dataclass(frozen=True)
class Plan:
    """Everything about a stream that does not change while it runs."""

    model: StepModel
    sample_rate: int
    channels: int
    rs_in: Resampler | None
    rs_out: Resampler | None
    prefill: int  # zeros queued at the output, in stream samples
    latency: int  # total delay, in stream samples

    @property
    def low_bypass(self) -> bool:
        """Whether the DC blocker's complement follows the model's pass-through share (see engine_step)."""
        return self.model.has_pass_share

    @property
    def resampler_latency(self) -> int:
        """The resamplers' share of ``latency`` in stream samples (0 at the model's rate)."""
        if self.rs_in is None:
            return 0
        model_only = self.model.step_latency + self.model.hop - 1
        return self.latency - round(model_only * self.sample_rate / self.model.sample_rate)


@dataclass(frozen=True)
class EngineState:
    """Everything that changes: model state, resampler states, partial hop, queued output."""

    model: dict[str, np.ndarray]
    rs_in: object | None
    rs_out: object | None
    pending: np.ndarray  # [channels, < hop] model-rate input waiting for a whole hop
    queue: np.ndarray  # [channels, k] stream-rate output not yet returned
    dc: np.ndarray | None = None  # [channels, 2] DC blocker state (stream.dcblock), at the stream's rate
    nonfinite_inputs: int = 0
    state_resets: int = 0  # model runs whose output or state was non-finite (state was reset)
    input_peak: float = 0.0  # largest |sample| seen so far (after NaN/Inf removal and clipping)
    # With plan.low_bypass: the DC blocker's complement at the model's rate, delayed by the step's latency
    # [channels, step_latency], and the smoothed pass-through share at the end of the last hop [channels, 1].
    low_line: np.ndarray | None = None
    low_gain: np.ndarray | None = None


def make_plan(model: StepModel, sample_rate: int, channels: int) -> Plan:
    """Build resamplers for ``sample_rate`` and compute the exact latency and output prefill."""
    if not 8000 <= sample_rate <= 384000:
        raise ValueError(f"sample rate {sample_rate} Hz is outside 8 kHz..384 kHz")
    if channels < 1:
        raise ValueError("channels must be >= 1")
    hop, fs_m = model.hop, model.sample_rate
    if sample_rate == fs_m:
        return Plan(model, sample_rate, channels, None, None, prefill=hop - 1, latency=model.step_latency + hop - 1)
    rs_in = Resampler(sample_rate, fs_m)
    # Delay so far, in stream samples, as a fraction a / q_out with the output resampler's q.
    probe = Resampler(fs_m, sample_rate)
    p, q = probe.p, probe.q  # stream = model * p / q
    # chain delay * q = (in-resampler delay in model samples + step latency + out half) * p
    # with in-resampler delay = half_in * p_in / q_in model samples = half_in * q / p stream... keep
    # it in stream samples: half_in (stream) + (step + half_out) * p / q + f / q.
    numer = rs_in.half * q + (model.step_latency + probe.half) * p
    f = (-numer) % q
    rs_out = Resampler(fs_m, sample_rate, extra_delay=f)
    chain_delay = (numer + f) // q
    prefill = _max_holdback(rs_in, hop, rs_out)
    return Plan(model, sample_rate, channels, rs_in, rs_out, prefill, chain_delay + prefill)


def _max_holdback(rs_in: Resampler, hop: int, rs_out: Resampler) -> int:
    """max over N of N - P(N), where P(N) is the chain's output count after N input samples.

    The pattern of counts repeats with a period of at most lcm of the stages' periods; scanning
    a few hundred thousand input counts covers it for every rate pair in 8..384 kHz.
    """
    period = rs_in.q * hop * rs_out.q
    n = np.arange(0, min(period * 2, 400_000) + 1, dtype=np.int64)
    model_in = (n * rs_in.p + rs_in.f + rs_in.q - 1) // rs_in.q
    model_out = (model_in // hop) * hop
    produced = (model_out * rs_out.p + rs_out.f + rs_out.q - 1) // rs_out.q
    return int(np.max(n - produced))


def initial_state(plan: Plan) -> EngineState:
    c = plan.channels
    rows = 2 * c if plan.low_bypass else c  # with the bypass, the complement travels with the input
    return EngineState(
        model=plan.model.initial_state(c),
        rs_in=plan.rs_in.initial_state(rows) if plan.rs_in else None,
        rs_out=plan.rs_out.initial_state(c) if plan.rs_out else None,
        pending=np.zeros((rows, 0), np.float32),
        queue=np.zeros((c, plan.prefill), np.float32),
        dc=dcblock.initial_state(c),
        low_line=np.zeros((c, plan.model.step_latency), np.float32) if plan.low_bypass else None,
        # Where silence leaves the gain: a model whose gate starts open passes silence through, and a live
        # stream, which idles in silence, must reach its first sound with the gain a file starts with.
        low_gain=np.full((c, 1), plan.model.rest_share, np.float32) if plan.low_bypass else None,
    )


def _run_model(model: StepModel, x: np.ndarray, mstate: dict) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Run whole hops ``x`` [channels, k * hop] through the model, at most MAX_HOPS_PER_CALL per call;
    returns (output [channels, k * hop], pass_share [channels, k] or None, new state)."""
    span = MAX_HOPS_PER_CALL * model.hop
    if x.shape[1] <= span:
        return model.run_with_share(x, mstate)
    outs, shares = [], []
    for start in range(0, x.shape[1], span):
        y, share, mstate = model.run_with_share(np.ascontiguousarray(x[:, start : start + span]), mstate)
        outs.append(y)
        shares.append(share)
    return np.concatenate(outs, axis=1), (None if shares[0] is None else np.concatenate(shares, axis=1)), mstate


@lru_cache(maxsize=8)
def _hop_fade(hop: int) -> np.ndarray:
    """[hop] float32: the periodic-Hann rise over one hop, the weight the overlap-add gives the newer of
    the two frames in each output sample (sqrt-Hann analysis x sqrt-Hann synthesis)."""
    fade = (0.5 - 0.5 * np.cos(np.pi * np.arange(hop) / hop)).astype(np.float32)
    fade.flags.writeable = False
    return fade


def _low_bypass(low: np.ndarray, share: np.ndarray, gain0: np.ndarray, hop: int, rate: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """The DC blocker's complement to add back to the output: ``low`` [channels, n * hop] (already
    delayed to line up with the output) weighted by the model's pass-through ``share`` [channels, n],
    smoothed from ``gain0`` [channels, 1]. Returns (addition [channels, n * hop], new gain0).

    Why smoothed: the complement is the input below ~2 Hz, typically a DC offset. Switched on and off at
    the share's pace (a frame), an offset would become a step, an audible thump; faded with a time
    constant of LOW_SMOOTH_S it stays a sub-audible drift, as the blocker's own response is. The gain
    is smoothed per hop (n values) and, within a hop, faded between hops as the overlap-add fades
    frames, so it is the same whatever the blocks were.
    """
    a = 1.0 - math.exp(-hop / (rate * LOW_SMOOTH_S))
    gains = np.empty((share.shape[0], share.shape[1] + 1), np.float32)
    gains[:, 0] = gain0[:, 0]
    for k in range(share.shape[1]):  # n is at most a few dozen hops per call; this runs per hop, not per sample
        g = gains[:, k] + a * (share[:, k] - gains[:, k])
        # The fade never reaches 0 by itself; below 1e-4 (-80 dB) the gain is dropped, so a stream that is
        # back to speech stops paying for the bypass. Per hop, not per call, so blocks cannot change it.
        gains[:, k + 1] = np.where(g < 1e-4, np.float32(0.0), g)
    prev, new = gains[:, :-1, None], gains[:, 1:, None]
    ramp = (prev + (new - prev) * _hop_fade(hop)).reshape(share.shape[0], -1)
    return ramp * low, gains[:, -1:].copy()


def engine_step(plan: Plan, block: np.ndarray, state: EngineState) -> tuple[np.ndarray, EngineState]:
    """Process one block.

    Args:
        block: float32 [channels, frames] at ``plan.sample_rate``; any frames >= 0.
    Returns:
        (float32 [channels, frames] output delayed by ``plan.latency`` samples, new state).
    """
    x = np.asarray(block, dtype=np.float32)
    nonfinite = state.nonfinite_inputs
    peak = float(np.abs(x).max()) if x.size else 0.0  # NaN or Inf if any sample is
    if not math.isfinite(peak):
        # A single NaN would otherwise spread through the LSTM state and silence the stream for good.
        bad = ~np.isfinite(x)
        x = np.where(bad, np.float32(0.0), x)
        nonfinite += int(bad.sum())
        peak = float(np.abs(x).max())
    if peak > INPUT_LIMIT:
        x = np.clip(x, -INPUT_LIMIT, INPUT_LIMIT)
    input_peak = max(state.input_peak, min(peak, INPUT_LIMIT))
    resets = state.state_resets
    rs_in, rs_out = state.rs_in, state.rs_out
    # DC goes before the resampler too: its filter history starts at zero, so an offset would enter it
    # as a step.
    blocked, dc = dcblock.dc_block(x, state.dc, dcblock.pole(plan.sample_rate))
    c = plan.channels
    # With the bypass, the complement (x - blocked) rides along as extra rows through the resampler and
    # the hop buffer, so it reaches the model's rate in step with the input.
    x = np.concatenate([blocked, x - blocked], axis=0) if plan.low_bypass else blocked
    if plan.rs_in is not None:
        x, rs_in = plan.rs_in.step(x, rs_in)
    buf = np.concatenate([state.pending, x], axis=1) if state.pending.shape[1] else x
    hop = plan.model.hop
    whole = (buf.shape[1] // hop) * hop
    mstate = state.model
    low_line, low_gain = state.low_line, state.low_gain
    if whole:
        hops = np.ascontiguousarray(buf[:c, :whole])
        y, share, mstate = _run_model(plan.model, hops, mstate)
        if not _finite(y, mstate):
            # Never expected from a sound model on clipped, finite input, but a non-finite state would
            # silence the stream for good: redo these hops from the rest state, and if even that fails,
            # output silence for them. The wrapper crossfades over the event (Dereverberator.process).
            resets += 1
            y, share, mstate = _run_model(plan.model, hops, plan.model.initial_state(plan.channels))
            if not _finite(y, mstate):
                y, share, mstate = np.zeros_like(hops), None, plan.model.initial_state(plan.channels)
        if plan.low_bypass:
            # Where the model passes its input through (share 1: its mask is exactly 1), the output is the
            # blocked input, delayed; adding the complement, delayed alike, makes it the input itself,
            # below 2 Hz too (a DC-offset music render lost 8.6 dB SI-SDR to the blocker alone). Where the
            # model works (share 0: speech), the blocker stays in full. Delayed by the step's latency,
            # the complement lines up with the step's output.
            line = np.concatenate([low_line, buf[c:, :whole]], axis=1)
            low, low_line = line[:, :whole], line[:, whole:]
            if share is None or not math.isfinite(float(share.sum())):
                share = np.zeros((c, whole // hop), np.float32)
            if low_gain.any() or share.any():
                add, low_gain = _low_bypass(low, share, low_gain, hop, plan.model.sample_rate)
                y = y + add
        if plan.rs_out is not None:
            y, rs_out = plan.rs_out.step(y, rs_out)
        queue = np.concatenate([state.queue, y], axis=1)
    else:
        queue = state.queue
    n = block.shape[-1]
    out, rest = queue[:, :n], queue[:, n:]
    new = EngineState(mstate, rs_in, rs_out, buf[:, whole:].copy(), rest, dc, nonfinite, resets, input_peak,
                      low_line, low_gain)
    return out, new


def _finite(y: np.ndarray, mstate: dict[str, np.ndarray]) -> bool:
    # A sum is NaN or Inf if any element is (and cannot overflow for the values a model holds), and
    # costs one reduction without a boolean temporary: this runs on every block.
    return math.isfinite(float(y.sum())) and all(math.isfinite(float(v.sum())) for v in mstate.values())


@dataclass
class Dereverberator:
    """Streaming dereverberation of any block size, with state carried between calls.

    Args:
        model: path to a contract-following .onnx, or a loaded ``StepModel``; ``None`` = shipped default.
        sample_rate: the stream's rate in Hz (default: the model's). Other rates are resampled inside.
        channels: independent channels; each carries its own state.
        mix: 1.0 = fully dereverberated, 0.0 = the input (delayed to match), in between = wet/dry.
        threads: ONNX Runtime intra-op threads.

    ``process(block)`` takes float32 [frames, channels] (or [frames] for mono) and returns the same
    shape, delayed by ``latency_samples``; ``flush()`` returns the last ``latency_samples`` frames
    and resets; ``reset()`` clears all state. The event counters ``nonfinite_inputs`` and
    ``state_resets`` count since the object was made (a flush or reset does not clear them).

    Output level guard: the output never exceeds the running peak of the input (since the last
    reset) by more than ``PEAK_MARGIN_DB``. A bounded mask cannot add energy to any STFT bin, but
    removing reverb changes phases and can raise a waveform peak; this guard makes "never louder
    than the input" a guarantee, not a tendency.
    """

    model: str | Path | StepModel | None = None
    sample_rate: int | None = None
    channels: int = 1
    mix: float = 1.0
    threads: int = 1
    plan: Plan = field(init=False, repr=False)
    state: EngineState = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.mix <= 1.0:
            raise ValueError(f"mix must be within 0..1, got {self.mix}")
        step_model = self.model if isinstance(self.model, StepModel) else StepModel.load(
            self.model, SessionOptions(threads=self.threads)
        )
        rate = self.sample_rate or step_model.sample_rate
        self.plan = make_plan(step_model, rate, self.channels)
        self.sample_rate = rate
        self.reset()

    @property
    def latency_samples(self) -> int:
        """Total delay from input to output, in samples at the stream's rate."""
        return self.plan.latency

    @property
    def latency_seconds(self) -> float:
        return self.plan.latency / self.plan.sample_rate

    @property
    def nonfinite_inputs(self) -> int:
        """How many NaN/Inf input samples were replaced by zero since this object was made."""
        return self.state.nonfinite_inputs

    def reset(self) -> None:
        old = getattr(self, "state", None)
        self.state = initial_state(self.plan)
        if old is not None:
            self.state = replace(self.state, nonfinite_inputs=old.nonfinite_inputs, state_resets=old.state_resets)
        self._dry = np.zeros((self.channels, self.plan.latency), np.float32)
        self._mix_now = float(self.mix)
        self._ramp = 0  # samples left in a mix crossfade

    @property
    def state_resets(self) -> int:
        """How many times a non-finite model state was reset (see ``engine_step``)."""
        return self.state.state_resets

    def set_mix(self, mix: float, ramp_seconds: float = 0.02) -> None:
        """Change wet/dry (0..1) with a linear crossfade of ``ramp_seconds`` so the change never clicks."""
        if not 0.0 <= mix <= 1.0:
            raise ValueError(f"mix must be within 0..1, got {mix}")
        self.mix = float(mix)
        self._ramp = max(1, int(ramp_seconds * self.plan.sample_rate))

    def process(self, block: np.ndarray) -> np.ndarray:
        """[frames, channels] (or [frames]) float32 -> same shape, delayed by ``latency_samples``."""
        x = np.asarray(block, dtype=np.float32)
        mono = x.ndim == 1
        x2 = x[:, None] if mono else x
        if x2.shape[1] != self.channels:
            raise ValueError(f"block has {x2.shape[1]} channels, the stream has {self.channels}")
        resets = self.state.state_resets
        wet, self.state = engine_step(self.plan, x2.T, self.state)
        dry = self._delay_dry(x2.T)
        if self.state.state_resets != resets:
            # The model restarted from rest: fall back to the (aligned) input and fade back into the model
            # output over RESET_RAMP_S, so the event is a short wet/dry blend instead of a click.
            self._mix_now, self._ramp = 0.0, max(1, int(RESET_RAMP_S * self.plan.sample_rate))
        if self._ramp or self._mix_now < 1.0:
            wet = self._apply_mix(wet, dry)
        limit = np.float32(self.state.input_peak * 10 ** (PEAK_MARGIN_DB / 20))
        if wet.size and np.abs(wet).max() > limit:
            wet = np.clip(wet, -limit, limit)
        out = wet.T
        return out[:, 0] if mono else out

    def _delay_dry(self, x: np.ndarray) -> np.ndarray:
        # The dry path is delayed by exactly the wet path's latency so the two add coherently; it is
        # kept current even at mix 1 so a later mix change has the right audio to fade in.
        x = np.where(np.isfinite(x), x, np.float32(0.0))
        line = np.concatenate([self._dry, x], axis=1)
        n = x.shape[1]
        dry, self._dry = line[:, :n], line[:, n:]
        return dry

    def _apply_mix(self, wet: np.ndarray, dry: np.ndarray) -> np.ndarray:
        n = wet.shape[1]
        if self._ramp:
            k = min(self._ramp, n)
            step = (self.mix - self._mix_now) / self._ramp
            g = np.full(n, self.mix, np.float32)
            g[:k] = self._mix_now + step * np.arange(1, k + 1)
            self._mix_now = float(g[k - 1]) if k < self._ramp else self.mix
            self._ramp -= k
        else:
            g = np.float32(self._mix_now)
        return (g * wet + (1.0 - g) * dry).astype(np.float32)

    def flush(self) -> np.ndarray:
        """Push zeros through to return the last ``latency_samples`` frames [latency, channels]; resets."""
        tail = self.process(np.zeros((self.plan.latency, self.channels), np.float32))
        self.reset()
        return tail


def dereverb_array(
    x: np.ndarray, sample_rate: int, model: str | Path | StepModel | None = None, mix: float = 1.0
) -> np.ndarray:
    """Dereverberate a whole signal, time-aligned: x [frames] or [frames, channels] -> same shape."""
    x = np.asarray(x, dtype=np.float32)
    x2 = x[:, None] if x.ndim == 1 else x
    d = Dereverberator(model=model, sample_rate=sample_rate, channels=x2.shape[1], mix=mix)
    lat = d.latency_samples
    y = np.concatenate([d.process(x2), d.flush()], axis=0)[lat : lat + x2.shape[0]]
    return y[:, 0] if x.ndim == 1 else y
