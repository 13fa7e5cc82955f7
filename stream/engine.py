"""The streaming engine: a block step on explicit state, and a holder for the two.

``engine_step(plan, block, state) -> (out, state)`` takes any number of frames at the stream's rate
and returns exactly as many, delayed by ``plan.latency`` samples. Everything that changes while a
stream runs is in ``state`` (``EngineState``), in buffers the step updates in place, so a steady
stream allocates nothing; ``Dereverberator`` only holds a plan and a state.

Inside, audio may be resampled to the model's rate, loses its DC offset (``stream.dcblock``), is
gathered into whole hops, run through the ONNX step, resampled back and queued. Paths around the
model (``Bypass``) carry what the model does not see: with a model that reports its pass-through
share (``pass_share``), what the DC blocker removed is added back where the model passes its input
through, so passed-through music keeps everything (``ShareBypass``); at a stream rate above the
model's, the band above the model's (the exact complement of the resamplers' low-pass) is added
back with a gain taken from the model's own suppression in its top band (``HighBand``). The output
stage mixes in the dry input (``mix``) and limits the output to the input's peak.

Why the output is identical for every block size: every stage emits all the output its input so far
allows (the resampler's output count depends only on the total input count, the model runs on whole
hops), so the sequence of samples entering the output queue is a function of the input signal alone.
The queue starts with ``prefill`` zeros, the worst-case hold-back of that chain over every possible
input count, so a request for N frames can always be served. Total latency = chain delay + prefill,
exact and constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from stream import dcblock
from stream.buffers import Fifo, Scratch
from stream.model import BoundStep, SessionOptions, StepModel
from stream.resample import Resampler, ResamplerStream

# Input samples beyond +-INPUT_LIMIT (80 dB over full scale) are clipped before the model: finite but
# absurd values (a float file holding 1e30) would overflow the float32 power spectrum to inf.
INPUT_LIMIT = 1e4
# Output never exceeds the input's running peak by more than this (dB); see engine_step.
PEAK_MARGIN_DB = 1.0
# Crossfade from the dry input back into the model output after a state reset, in seconds.
RESET_RAMP_S = 0.02

# Where the model passes its input through (its ``pass_share`` output: music, for the shipped model's
# gate), the DC blocker's complement (what it removed: the input below ~2 Hz) is passed through too, with
# this smoothing time constant (s) on the share; see ShareBypass.
LOW_SMOOTH_S = 0.08

# The high band (above the model's band, at stream rates above the model's) follows the model's gain in
# its top band: from this fraction of the model's Nyquist frequency up (5 kHz for a 16 kHz model), with
# band powers smoothed over this time (s) before their ratio is taken; see HighBand.
TOP_BAND_FROM = 0.625
HIGH_SMOOTH_S = 0.016
# The high band's gain from that power ratio r: sqrt(r) (the top band's attenuation carried over as it
# is) while r >= HIGH_KNEE, and below the knee falling as r to the power HIGH_GAIN_EXP (3 times the dB
# of the top band's further attenuation). Why steeper below the knee: the model takes a tail down
# least in its top band, and above 8 kHz a real room's tail decays faster still (air absorption). On
# the 48 kHz test set (docs/research.md) sqrt(r) alone takes the tail after speech offsets down 5.7 dB
# above 8 kHz against 9.8 dB below; this knee, 10.0 dB, with the high band's SI-SDR gain against
# early-50 within 0.11 dB of the low band's and dry speech's high band at 38 dB SI-SDR.
HIGH_KNEE = 0.8
HIGH_GAIN_EXP = 1.5
# Taps of the top band's linear-phase high-pass (odd) and its Kaiser window's beta (~60 dB stop band).
TOP_BAND_TAPS = 31
TOP_BAND_BETA = 6.0

# Model calls are capped at this many hops, which bounds memory for huge blocks while keeping the
# per-call overhead negligible (measured: 64 hops per call runs ~4x faster per sample than 1 hop).
MAX_HOPS_PER_CALL = 64
# Frames per slice of one engine_step call: a larger block is processed slice by slice (the output is the
# same; only the limiter's running input peak is then taken per slice, as in any streamed use).
MAX_FRAMES_PER_STEP = 1 << 17


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
    def high_band(self) -> bool:
        """Whether the stream has a band above the model's (its rate is above the model's); see HighBand."""
        return self.sample_rate > self.model.sample_rate

    @property
    def resampler_latency(self) -> int:
        """The resamplers' share of ``latency`` in stream samples (0 at the model's rate)."""
        if self.rs_in is None:
            return 0
        model_only = self.model.step_latency + self.model.hop - 1
        return self.latency - round(model_only * self.sample_rate / self.model.sample_rate)


class Bypass:
    """A path around the model: the engine's one mechanism for the parts of the input the model does not see.

    A path sees each block at the stream's rate with the model path's input (``take``) and may take
    ``rows`` rows off it; they ride with the model's input through the input resampler and the hop
    buffer, so they reach the model's rate in step with it. There ``join`` sees them with the step's
    input and output, delays them by the step's latency, so they line up with the output, may change
    that output, and may emit ``out_rows`` rows of its own; those ride with the model's output through
    the output resampler and the output queue, so they come back to the stream's rate in step with it,
    where ``finish`` combines them with the output and the input delayed by ``plan.latency`` (the dry
    line, or what the path delays alike itself), before the wet/dry mix. Each stage is exact for any
    block split, so a path is too.

    Its state (delay lines, filter histories, gains) is its own, in place; ``copy`` gives an independent one.
    """

    rows: int = 0
    out_rows: int = 0

    def take(self, x: np.ndarray, main: np.ndarray, out: np.ndarray) -> None:
        """The path's rows ``out`` [rows, n] from the block ``x`` and the model path's input ``main`` (both
        [channels, n], the stream's rate)."""

    def join(self, signal: np.ndarray, model_in: np.ndarray, share: np.ndarray | None, y: np.ndarray,
             emit: np.ndarray, plan: Plan, scratch: Scratch) -> None:
        """At the model's rate: the path's rows ``signal`` [rows, k * hop], the model's input ``model_in`` and
        output ``y`` [channels, k * hop] (``y`` changed in place), its pass-through ``share`` [channels, k]
        (None: the model gave none); writes the path's ``emit`` [out_rows, k * hop]."""

    def finish(self, out: np.ndarray, dry: np.ndarray, back: np.ndarray, scratch: Scratch) -> None:
        """At the stream's rate: the output ``out`` [channels, n] (changed in place), the dry line ``dry``
        [channels, n] and the path's emitted rows, resampled and aligned with both, ``back`` [out_rows, n]."""

    def copy(self, plan: Plan) -> Bypass:
        raise NotImplementedError


def _valid_share(share: np.ndarray | None, plan: Plan, length: int, scratch: Scratch) -> np.ndarray:
    """The model's pass-through ``share`` [channels, length // hop], or zeros where it gave none or a
    non-finite one (a path then follows the model's processing)."""
    if share is None or not math.isfinite(float(np.sum(share, out=scratch("share_sum", ())))):
        share = scratch("share_zero", (plan.channels, length // plan.model.hop))
        share.fill(0.0)
    return share


class ShareBypass(Bypass):
    """The DC blocker's complement (what the blocker removed: the input below ~2 Hz), joined at the model's
    rate with a gain that follows the model's ``pass_share``: where the model passes its input through
    (share 1: its mask is exactly 1) the output is the blocked input, delayed, and adding the complement,
    delayed alike, makes it the input itself, below 2 Hz too (a DC-offset music render loses 8.6 dB
    SI-SDR to the blocker alone); where the model works (share 0: speech) the blocker stays in full.

    State, updated in place: the delay line [channels, step_latency] and the smoothed share at the end
    of the last hop, ``gain`` [channels, 1].
    """

    def __init__(self, plan: Plan) -> None:
        self.rows = plan.channels
        self.line = Fifo(self.rows, prefill=plan.model.step_latency)
        # Where silence leaves the gain: a model whose gate starts open passes silence through, and a live
        # stream, which idles in silence, must reach its first sound with the gain a file starts with.
        self.gain = np.full((self.rows, 1), plan.model.rest_share, np.float32)

    def take(self, x: np.ndarray, main: np.ndarray, out: np.ndarray) -> None:
        """What the DC blocker removed: ``x - main``."""
        np.subtract(x, main, out=out)

    def join(self, signal: np.ndarray, model_in: np.ndarray, share: np.ndarray | None, y: np.ndarray,
             emit: np.ndarray, plan: Plan, scratch: Scratch) -> None:
        """Delay ``signal`` by the step's latency and add it to ``y`` along the model's smoothed ``share``."""
        hop, length = plan.model.hop, signal.shape[1]
        self.line.append(signal)
        delayed = self.line.head(length)
        share = _valid_share(share, plan, length, scratch)
        active = scratch("bypass_active", (), np.bool_)
        if np.any(self.gain, out=active) or np.any(share, out=active):
            _join(y, delayed, share, self.gain, hop, plan.model.sample_rate, scratch)
        self.line.drop(length)

    def copy(self, plan: Plan) -> ShareBypass:
        new = ShareBypass(plan)
        new.line, new.gain = self.line.copy(), self.gain.copy()
        return new


class HighBand(Bypass):
    """The band above the model's, at a stream rate above the model's rate, dereverberated with a gain per hop.

    The band: the complement of what the model path carries, taken from the model path's own input (the
    DC-blocked input; the DC blocker's complement has its own path). At the model's rate, ``join``
    delays the model's input by the step's latency, as the model delays it, and subtracts it, times the
    gain, from the model's output; at the stream's rate, ``finish`` adds the blocked input delayed by
    ``plan.latency``, times the same gain resampled. With the gain at 1 the subtracted part is what the
    model path gives for a model at pass-through, ``up(delay(down(main)))``, so a model at pass-through
    gives back the blocked input itself, delayed: no notch or bump at the crossover, by construction,
    and no latency beyond the engine's. With a gain g that moves, the path adds g times the high band
    up to the commutator of g with the output resampler's low-pass, which the slow, ramped gain keeps
    to the resampler's transition band.

    The gain: the model's own suppression in its top band (TOP_BAND_FROM of its Nyquist frequency and
    up: 5 to 8 kHz for a 16 kHz model): the ratio of its output's band power to its delayed input's,
    each power measured per hop through a linear-phase high-pass and smoothed over HIGH_SMOOTH_S, its
    square root down to HIGH_KNEE and steeper below (HIGH_GAIN_EXP), clamped to 0..1. Why the top
    band's gain, made steeper: reverberation above 8 kHz decays faster (air absorption) than in the
    top band, so the top band's suppression of a tail is at most what the high band needs, and the
    model's suppression of a tail is weakest in its top band. Where the model passes its input through (``pass_share`` 1: music for the
    shipped model's gate) the gain is 1, so music keeps its cymbals. The gain is emitted as a signal
    at the model's rate, moving linearly between hop values, so it reaches the stream's rate through
    the output resampler in step with the band it scales, whatever the rates, and cannot click.

    State, updated in place: the blocked input at the stream's rate, delayed by ``plan.latency``
    (``dry``), the model's input delayed by the step's latency [channels, step_latency], the
    high-pass history of that and of the output [2 * channels, taps - 1], the smoothed band powers
    ``power`` [2, channels] (input, output; float64), the top band's gain ``level`` [channels]
    (float64) and the gain at the end of the last hop, with the share, ``gain`` [channels, 1].
    """

    def __init__(self, plan: Plan) -> None:
        c = plan.channels
        self.rows, self.out_rows = 0, c
        self.dry = Fifo(c, prefill=plan.latency)
        self.line = Fifo(c, prefill=plan.model.step_latency)
        # the delayed input's rows, then the output's
        self.hist = Fifo(2 * c, prefill=_top_band_filter(plan.model.sample_rate).size - 1)
        self.power = np.zeros((2, c), np.float64)
        self.level = np.ones(c, np.float64)  # the top band's gain, before the pass-through share
        self.gain = np.ones((c, 1), np.float32)

    def take(self, x: np.ndarray, main: np.ndarray, out: np.ndarray) -> None:
        """No rows: the model's input is the path's signal at the model's rate; ``main`` is kept at the stream's."""
        self.dry.append(main)

    def join(self, signal: np.ndarray, model_in: np.ndarray, share: np.ndarray | None, y: np.ndarray,
             emit: np.ndarray, plan: Plan, scratch: Scratch) -> None:
        """Emit the gain signal [channels, k * hop] and subtract the delayed ``model_in``, times it, from ``y``."""
        c, length = model_in.shape
        hop, rate = plan.model.hop, plan.model.sample_rate
        k = length // hop
        self.line.append(model_in)
        delayed = self.line.head(length)
        both = self.hist.tail(length)
        np.copyto(both[:c], delayed)
        np.copyto(both[c:], y)
        self.hist.commit(length)
        taps = _top_band_filter(rate)
        band = scratch("hb_band", (2 * c, k), np.float64)
        _band_power(self.hist.head(length + taps.size - 1), taps, hop, band, scratch)
        self.hist.drop(length)
        # The recursion over hops runs on Python floats (float64, as the arrays): for the one to a few hops of a
        # call, a dozen array operations per hop would cost more than the filtering above.
        energy, shares = band.tolist(), _valid_share(share, plan, length, scratch).tolist()
        power, level = self.power.tolist(), self.level.tolist()
        a = 1.0 - math.exp(-hop / (rate * HIGH_SMOOTH_S))
        knee_gain = math.sqrt(HIGH_KNEE)
        floor = 1e-10 * hop  # a band power (per hop) below -100 dB per sample says nothing about the gain
        gains = scratch("hb_gains", (c, k + 1))
        gains[:, 0] = self.gain[:, 0]
        for ch in range(c):
            p_in, p_out, g = power[0][ch], power[1][ch], level[ch]
            e_in, e_out, s_row = energy[ch], energy[c + ch], shares[ch]
            for j in range(k):
                p_in += a * (e_in[j] - p_in)
                p_out += a * (e_out[j] - p_out)
                if p_in >= floor:  # else keep the last gain
                    r = p_out / p_in
                    g = min(1.0, math.sqrt(r) if r >= HIGH_KNEE else knee_gain * (r / HIGH_KNEE) ** HIGH_GAIN_EXP)
                # 1 where the model passes its input through
                gains[ch, j + 1] = s_row[j] + (1.0 - s_row[j]) * g
            self.power[0, ch], self.power[1, ch], self.level[ch] = p_in, p_out, g
        prev, new = gains[:, :-1, None], gains[:, 1:, None]
        ramp = emit.reshape(c, k, hop)
        np.subtract(new, prev, out=ramp)
        np.multiply(ramp, _hop_line(hop), out=ramp)
        np.add(prev, ramp, out=ramp)
        self.gain[:, 0] = gains[:, -1]
        low = scratch("hb_low", (c, length))
        np.multiply(emit, delayed, out=low)
        np.subtract(y, low, out=y)
        self.line.drop(length)

    def finish(self, out: np.ndarray, dry: np.ndarray, back: np.ndarray, scratch: Scratch) -> None:
        """Add the blocked input, delayed, times the gain ``back`` [channels, n]."""
        c, n = out.shape
        high = scratch("hb_high", (c, n))
        np.multiply(self.dry.head(n), back, out=high)
        np.add(out, high, out=out)
        self.dry.drop(n)

    def copy(self, plan: Plan) -> HighBand:
        new = HighBand(plan)
        new.dry, new.line, new.hist = self.dry.copy(), self.line.copy(), self.hist.copy()
        new.power, new.level, new.gain = self.power.copy(), self.level.copy(), self.gain.copy()
        return new


@lru_cache(maxsize=8)
def _top_band_filter(rate: int) -> np.ndarray:
    """[TOP_BAND_TAPS] float32: a linear-phase high-pass at TOP_BAND_FROM of the Nyquist frequency of
    ``rate`` (a Kaiser-windowed sinc low-pass, normalised to unity at DC, subtracted from a unit
    impulse: an exact zero at DC), the taps in time order for a window ending at the newest sample."""
    half = TOP_BAND_TAPS // 2
    n = np.arange(-half, half + 1)
    low = TOP_BAND_FROM * np.sinc(TOP_BAND_FROM * n) * np.kaiser(TOP_BAND_TAPS, TOP_BAND_BETA)
    taps = -low / low.sum()
    taps[half] += 1.0
    taps = taps.astype(np.float32)
    taps.flags.writeable = False
    return taps


def _band_power(buf: np.ndarray, taps: np.ndarray, hop: int, power: np.ndarray, scratch: Scratch) -> None:
    """Per hop, the energy of ``buf`` [channels, taps - 1 + k * hop] (filter history first) through the
    FIR ``taps``: ``power`` [channels, k] (float64)."""
    c, total = buf.shape
    t = taps.size
    length = total - t + 1
    wide = scratch("hb_buf", (c, total))
    np.copyto(wide, buf)
    s_row, s_col = wide.strides
    # windows[c, s] = wide[c, s : s + taps], a strided view: one matrix-vector product for the whole call
    windows = np.ndarray((c, length, t), np.float32, buffer=wide, strides=(s_row, s_col, s_col))
    filtered = scratch("hb_filtered", (c, length))
    np.matmul(windows, taps, out=filtered)
    np.square(filtered, out=filtered)
    np.sum(filtered.reshape(c, length // hop, hop), axis=2, dtype=np.float64, out=power)


@dataclass
class EngineState:
    """Everything that changes while a stream runs, in preallocated buffers that ``engine_step`` updates
    in place (so that a steady-state block allocates nothing; ``copy_state`` gives an independent copy).

    Model: the bound step (its state and IO buffers). Signal path: the resampler streams, the partial hop
    at the model's rate (``pending``, [rows, < hop]: the input, then each path's rows), the model output
    waiting for the output resampler (``model_out``: the output, then each path's emitted rows), the
    output queue at the stream's rate (``queue``, the same rows, starting with ``plan.prefill`` zeros),
    the DC blocker's state [channels, 2] and the paths around the model (``bypasses``, see ``Bypass``).
    Output stage: the input delayed by the latency (``dry``), the wet/dry mix (``mix`` the target,
    ``mix_now`` where a crossfade is, ``ramp`` its samples left), the running input peak (the output limit).
    Counters since the stream began: non-finite input samples replaced, model state resets.
    """

    bound: BoundStep
    rs_in: ResamplerStream | None
    rs_out: ResamplerStream | None
    pending: Fifo
    model_out: Fifo
    queue: Fifo
    dc: np.ndarray
    bypasses: tuple[Bypass, ...]
    dry: Fifo
    mix: float
    mix_now: float
    ramp: int = 0
    input_peak: float = 0.0
    nonfinite_inputs: int = 0
    state_resets: int = 0
    scratch: Scratch = field(default_factory=Scratch, repr=False)


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


def initial_state(plan: Plan, mix: float = 1.0) -> EngineState:
    """A stream's start: the model's rest state, empty buffers, the output queue prefilled, ``mix`` (0..1)."""
    c = plan.channels
    bypasses: tuple[Bypass, ...] = ((ShareBypass(plan),) if plan.low_bypass else ()) + (
        (HighBand(plan),) if plan.high_band else ())
    rows = c + sum(b.rows for b in bypasses)  # the paths' rows travel with the input
    rows_out = c + sum(b.out_rows for b in bypasses)  # and with the output
    bound = plan.model.bind(c, MAX_HOPS_PER_CALL)
    bound.load(plan.model.initial_state(c))
    state = EngineState(
        bound=bound,
        rs_in=ResamplerStream(plan.rs_in, rows) if plan.rs_in else None,
        rs_out=ResamplerStream(plan.rs_out, rows_out) if plan.rs_out else None,
        pending=Fifo(rows),
        model_out=Fifo(rows_out),
        queue=Fifo(rows_out, prefill=plan.prefill),
        dc=dcblock.initial_state(c),
        bypasses=bypasses,
        dry=Fifo(c, prefill=plan.latency),
        mix=float(mix),
        mix_now=float(mix),
    )
    if state.rs_out is not None:
        # The output resampler's first outputs can precede its first input (its extra delay f puts output
        # 0 before the stream's start): emit them now, as the prefill (_max_holdback) counts on.
        state.rs_out.push(np.zeros((rows_out, 0), np.float32), state.queue)
    return state


def copy_state(plan: Plan, state: EngineState) -> EngineState:
    """An independent copy of ``state`` (``engine_step`` changes the state it is given)."""
    new = initial_state(plan, state.mix)
    new.bound.load(state.bound.state)
    for name in ("rs_in", "rs_out"):
        src, dst = getattr(state, name), getattr(new, name)
        if src is not None:
            dst.history, dst.n_in, dst.n_out = src.history.copy(), src.n_in, src.n_out
    new.pending, new.model_out, new.queue, new.dry = (state.pending.copy(), state.model_out.copy(),
                                                      state.queue.copy(), state.dry.copy())
    new.dc = state.dc.copy()
    new.bypasses = tuple(b.copy(plan) for b in state.bypasses)
    new.mix_now, new.ramp, new.input_peak = state.mix_now, state.ramp, state.input_peak
    new.nonfinite_inputs, new.state_resets = state.nonfinite_inputs, state.state_resets
    return new


@lru_cache(maxsize=8)
def _hop_line(hop: int) -> np.ndarray:
    """[hop] float32: (1..hop) / hop, a linear move over one hop that ends on the new value."""
    line = (np.arange(1, hop + 1) / hop).astype(np.float32)
    line.flags.writeable = False
    return line


@lru_cache(maxsize=8)
def _hop_fade(hop: int) -> np.ndarray:
    """[hop] float32: the periodic-Hann rise over one hop, the weight the overlap-add gives the newer of
    the two frames in each output sample (sqrt-Hann analysis x sqrt-Hann synthesis)."""
    fade = (0.5 - 0.5 * np.cos(np.pi * np.arange(hop) / hop)).astype(np.float32)
    fade.flags.writeable = False
    return fade


def _join(y: np.ndarray, low: np.ndarray, share: np.ndarray, gain: np.ndarray, hop: int, rate: int,
          scratch: Scratch) -> None:
    """Add the bypass signal ``low`` [channels, n * hop] (already delayed to line up with ``y``) to the model
    output ``y`` (same shape), weighted by the model's pass-through ``share`` [channels, n] smoothed from
    ``gain`` [channels, 1]; ``gain`` is updated in place.

    Why smoothed: the DC blocker's complement is the input below ~2 Hz, typically a DC offset. Switched
    on and off at the share's pace (a frame), an offset would become a step, an audible thump; faded
    with a time constant of LOW_SMOOTH_S it stays a sub-audible drift, as the blocker's own response is.
    The gain is smoothed per hop (n values) and, within a hop, faded between hops as the overlap-add
    fades frames, so it is the same whatever the blocks were.
    """
    c, n = share.shape
    a = scratch.scalar("join_a", 1.0 - math.exp(-hop / (rate * LOW_SMOOTH_S)))
    floor = scratch.scalar("join_floor", 1e-4)
    gains = scratch("join_gains", (c, n + 1))
    gains[:, 0] = gain[:, 0]
    step = scratch("join_step", (c,))
    low_gain = scratch("join_low", (c,), np.bool_)
    zero = scratch.scalar("zero", 0.0)
    for k in range(n):  # n is at most a few dozen hops per call; this runs per hop, not per sample
        g = gains[:, k + 1]
        np.subtract(share[:, k], gains[:, k], out=step)
        np.multiply(step, a, out=step)  # a * (share - gain), in float32 as with the Python float
        np.add(gains[:, k], step, out=g)
        # The fade never reaches 0 by itself; below 1e-4 (-80 dB) the gain is dropped, so a stream that is
        # back to speech stops paying for the bypass. Per hop, not per call, so blocks cannot change it.
        np.less(g, floor, out=low_gain)
        np.copyto(g, zero, where=low_gain)
    prev, new = gains[:, :-1, None], gains[:, 1:, None]
    ramp = scratch("join_ramp", (c, n, hop))
    np.subtract(new, prev, out=ramp)
    np.multiply(ramp, _hop_fade(hop), out=ramp)
    np.add(prev, ramp, out=ramp)
    flat = ramp.reshape(c, n * hop)
    np.multiply(flat, low, out=flat)
    np.add(y, flat, out=y)
    gain[:, 0] = gains[:, -1]


def engine_step(plan: Plan, block: np.ndarray, state: EngineState, out: np.ndarray | None = None
                ) -> tuple[np.ndarray, EngineState]:
    """Process one block; ``state`` is updated in place and returned.

    Args:
        block: float32 [channels, frames] at ``plan.sample_rate``; any frames >= 0.
        out: where to write the output, float32 [channels, frames] (any strides; may be ``block``
            itself); ``None`` = a new array.
    Returns:
        (float32 [channels, frames]: the input, dereverberated, mixed with the dry input as
        ``state.mix`` says and limited to the input's peak, delayed by ``plan.latency`` samples; state).
    """
    c, n = block.shape
    if out is None:
        out = np.empty((c, n), np.float32)
    if n > MAX_FRAMES_PER_STEP:
        # A huge block (a whole recording in one call) runs as consecutive slices, so the engine's
        # buffers, which keep the size of the largest block they have held, stay bounded.
        for start in range(0, n, MAX_FRAMES_PER_STEP):
            stop = min(n, start + MAX_FRAMES_PER_STEP)
            _step(plan, block[:, start:stop], state, out[:, start:stop])
        return out, state
    if n:
        _step(plan, block, state, out)
    return out, state


def _step(plan: Plan, block: np.ndarray, state: EngineState, out: np.ndarray) -> None:
    """:func:`engine_step` for one block of at most MAX_FRAMES_PER_STEP frames."""
    c, n = block.shape
    scratch = state.scratch
    x = scratch("x", (c, n))
    np.copyto(x, block, casting="unsafe")
    mag = scratch("mag", (c, n))
    peak_of = scratch("peak", ())
    np.abs(x, out=mag)
    peak = float(np.max(mag, out=peak_of))  # NaN if any sample is
    if not math.isfinite(peak):
        # A single NaN would otherwise spread through the LSTM state and silence the stream for good.
        bad = ~np.isfinite(x)
        x[bad] = 0.0
        state.nonfinite_inputs += int(bad.sum())
        np.abs(x, out=mag)
        peak = float(np.max(mag, out=peak_of))
    # The dry path is the input delayed by exactly the wet path's latency, so the two add coherently; it
    # is kept current even at mix 1 so a later mix change has the right audio to fade in.
    state.dry.append(x)
    if peak > INPUT_LIMIT:
        np.clip(x, -INPUT_LIMIT, INPUT_LIMIT, out=x)
    state.input_peak = max(state.input_peak, min(peak, INPUT_LIMIT))
    resets = state.state_resets
    _model_path(plan, x, state)
    queued = state.queue.head(n)
    np.copyto(out, queued[:c])
    dry = state.dry.head(n)
    row = c
    for path in state.bypasses:
        path.finish(out, dry, queued[row : row + path.out_rows], scratch)
        row += path.out_rows
    state.queue.drop(n)
    if state.state_resets != resets:
        # The model restarted from rest: fall back to the (aligned) input and fade back into the model
        # output over RESET_RAMP_S, so the event is a short wet/dry blend instead of a click.
        state.mix_now, state.ramp = 0.0, max(1, int(RESET_RAMP_S * plan.sample_rate))
    if state.ramp or state.mix_now < 1.0:
        _mix(out, dry, state)
    state.dry.drop(n)
    # Output level guard: a bounded mask cannot add energy to any STFT bin, but removing reverb changes
    # phases and can raise a waveform peak; this makes "never louder than the input" (by more than
    # PEAK_MARGIN_DB) a guarantee, not a tendency.
    limit = scratch.scalar("limit", state.input_peak * 10 ** (PEAK_MARGIN_DB / 20))
    np.abs(out, out=mag)
    if float(np.max(mag, out=peak_of)) > float(limit):
        np.minimum(out, limit, out=out)
        np.maximum(out, np.negative(limit, out=scratch("-limit", ())), out=out)


def _model_path(plan: Plan, x: np.ndarray, state: EngineState) -> None:
    """``x`` [channels, n] (finite, clipped) through DC blocker, resamplers and model into ``state.queue``."""
    c, n = x.shape
    scratch = state.scratch
    rows = state.pending.rows
    # DC goes before the resampler too: its filter history starts at zero, so an offset would enter it
    # as a step.
    split = state.pending.tail(n) if state.rs_in is None else scratch("split", (rows, n))
    dcblock.dc_block_into(x, state.dc, dcblock.pole(plan.sample_rate), split[:c], scratch)
    row = c
    for path in state.bypasses:
        path.take(x, split[:c], split[row : row + path.rows])
        row += path.rows
    if state.rs_in is None:
        state.pending.commit(n)
    else:
        state.rs_in.push(split, state.pending)
    hop = plan.model.hop
    whole = (len(state.pending) // hop) * hop
    if not whole:
        return
    sink = state.model_out if state.rs_out is not None else state.queue
    span = MAX_HOPS_PER_CALL * hop
    buf = state.pending.head(whole)
    # Model calls of at most MAX_HOPS_PER_CALL hops bound the buffers for huge blocks while keeping the
    # per-call overhead negligible (measured: 64 hops per call runs ~4x faster per sample than 1 hop).
    for start in range(0, whole, span):
        length = min(span, whole - start)
        rows_out = sink.tail(length)
        y = rows_out[:c]
        share = _run_model(plan, buf[:c, start : start + length], y, state)
        row, row_out = c, c
        for path in state.bypasses:
            path.join(buf[row : row + path.rows, start : start + length], buf[:c, start : start + length], share,
                      y, rows_out[row_out : row_out + path.out_rows], plan, scratch)
            row, row_out = row + path.rows, row_out + path.out_rows
        sink.commit(length)
    state.pending.drop(whole)
    if state.rs_out is not None:
        state.rs_out.push(state.model_out.head(whole), state.queue)
        state.model_out.drop(whole)


def _run_model(plan: Plan, hops_in: np.ndarray, y: np.ndarray, state: EngineState) -> np.ndarray | None:
    """Whole hops ``hops_in`` [channels, k * hop] through the model into ``y`` (same shape); returns the
    pass-through share [channels, k] (a view, valid until the next call) or None."""
    model, bound = plan.model, state.bound
    k = hops_in.shape[1] // model.hop
    np.copyto(bound.audio_in(k), hops_in)
    out, share = model.run_bound(bound, k)
    if not _finite(out, bound.state, state.scratch):
        # Never expected from a sound model on clipped, finite input, but a non-finite state would
        # silence the stream for good: redo these hops from the rest state, and if even that fails,
        # output silence for them. The output stage crossfades over the event (engine_step).
        state.state_resets += 1
        bound.load(model.initial_state(plan.channels))
        np.copyto(bound.audio_in(k), hops_in)
        out, share = model.run_bound(bound, k)
        if not _finite(out, bound.state, state.scratch):
            bound.load(model.initial_state(plan.channels))
            out.fill(0.0)
            share = None
    np.copyto(y, out)
    return share


def _mix(out: np.ndarray, dry: np.ndarray, state: EngineState) -> None:
    """Blend ``out`` (wet) with ``dry`` in place: gain ``mix_now`` on the wet, moving linearly to ``mix``
    over the ``ramp`` samples left."""
    c, n = out.shape
    scratch = state.scratch
    if state.ramp:
        k = min(state.ramp, n)
        step = (state.mix - state.mix_now) / state.ramp
        ramp = scratch("mix_ramp", (k,), np.float64)
        # mix_now + step * (1..k), in float64, then rounded to float32
        np.multiply(scratch.arange(k + 1, np.float64)[1:], scratch.scalar("mix_step", step, np.float64), out=ramp)
        ramp += scratch.scalar("mix_from", state.mix_now, np.float64)
        g = scratch("mix_gain", (n,))
        g[k:].fill(state.mix)
        np.copyto(g[:k], ramp, casting="same_kind")
        state.mix_now = float(g[k - 1]) if k < state.ramp else state.mix
        state.ramp -= k
        wet_gain, dry_gain = g, scratch("mix_dry_gain", (n,))
    else:
        wet_gain, dry_gain = scratch.scalar("mix_wet", state.mix_now), scratch("mix_dry_gain", ())
    np.subtract(scratch.scalar("one", 1.0), wet_gain, out=dry_gain)
    tmp = scratch("mix_tmp", (c, n))
    np.multiply(dry_gain, dry, out=tmp)
    np.multiply(wet_gain, out, out=out)
    np.add(out, tmp, out=out)


def _finite(y: np.ndarray, mstate: dict[str, np.ndarray], scratch: Scratch) -> bool:
    # A sum is NaN or Inf if any element is (and cannot overflow for the values a model holds), and
    # costs one reduction without a boolean temporary: this runs on every block.
    total = scratch("finite_sum", ())
    return math.isfinite(float(np.sum(y, out=total))) and all(
        math.isfinite(float(np.sum(v, out=total))) for v in mstate.values())


@dataclass
class Dereverberator:
    """Streaming dereverberation of any block size: a holder of a plan and its state (``engine_step``).

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
    reset) by more than ``PEAK_MARGIN_DB`` (see ``engine_step``).
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

    @property
    def state_resets(self) -> int:
        """How many times a non-finite model state was reset (see ``engine_step``)."""
        return self.state.state_resets

    def reset(self) -> None:
        old = getattr(self, "state", None)
        self.state = initial_state(self.plan, self.mix)
        if old is not None:
            self.state.nonfinite_inputs, self.state.state_resets = old.nonfinite_inputs, old.state_resets

    def set_mix(self, mix: float, ramp_seconds: float = 0.02) -> None:
        """Change wet/dry (0..1) with a linear crossfade of ``ramp_seconds`` so the change never clicks."""
        if not 0.0 <= mix <= 1.0:
            raise ValueError(f"mix must be within 0..1, got {mix}")
        self.mix = self.state.mix = float(mix)
        self.state.ramp = max(1, int(ramp_seconds * self.plan.sample_rate))

    def process(self, block: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """[frames, channels] (or [frames]) float32 -> same shape, delayed by ``latency_samples``.

        ``out``: an array of the block's shape to write the output into (then returned), so that a
        steady stream allocates nothing; ``None`` = a new array.
        """
        x = np.asarray(block, dtype=np.float32)
        mono = x.ndim == 1
        x2 = x[:, None] if mono else x
        if x2.shape[1] != self.channels:
            raise ValueError(f"block has {x2.shape[1]} channels, the stream has {self.channels}")
        if out is None:
            out = np.empty(x.shape, np.float32)
        elif out.shape != x.shape:
            raise ValueError(f"out has shape {out.shape}, the block {x.shape}")
        engine_step(self.plan, x2.T, self.state, out=(out[:, None] if mono else out).T)
        return out

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
