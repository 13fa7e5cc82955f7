"""Live mode: a duplex audio stream (microphone -> dereverb -> speakers) with real-time discipline.

Two ways to run the model step, chosen by ``LiveConfig.buffer_ms``. Both were measured through JACK,
and the worker won on xruns under CPU load; the numbers are in docs/live.md.

* worker (``buffer_ms > 0``, default 20 ms): the callback only copies into and out of two preallocated,
  bounded FIFOs (``Fifo``); a worker thread runs the engine. The output FIFO is primed with
  ``buffer_ms`` of silence, which absorbs late model steps at the price of that much latency. After an
  underrun the extra data that arrives late is dropped (``ResyncCounter``), so the latency returns to
  its target instead of growing with every overload.
* inline (``buffer_ms == 0``): the audio callback copies the input into a preallocated block and calls
  ``Dereverberator.process``. No buffering beyond the engine's own latency, but a callback that runs a
  model step is 0.5 to 1 ms long and misses its deadline more often on a busy machine.

Either way the callback never blocks on a lock held for long, never logs, and allocates nothing of its
own per block (the engine's ``process`` makes small numpy temporaries; their cost is in the timings).
Timings go into a preallocated ring (``TimingRing``); the main thread reads it for the status line and
the summary. Every change of mix or bypass is sent to the thread that owns the engine through a
one-slot mailbox and applied there with a ``set_mix`` crossfade, so the engine is touched by one thread.

Arrays are float32 [frames, channels] at the stream's rate unless stated otherwise.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

import numpy as np

from stream.devices import AudioDeviceError, DeviceInfo, Layout, choose_layout, query_devices, resolve_device
from stream.engine import Dereverberator
from stream.model import StepModel

MIX_RAMP_S = 0.02  # crossfade for every mix/bypass change: long enough to be click-free, short to feel instant
TIMING_SLOTS = 1 << 17  # per-block timings kept for percentiles: ~12 min of 256-frame blocks at 48 kHz
MAX_BLOCK = 8192  # preallocated frames per callback; larger host blocks are processed in pieces
# Worker mode: how long the worker may hold the GIL before the audio callback gets it. CPython's 5 ms
# default is longer than a 128- or 256-frame period, so a callback arriving while the worker runs Python
# code would miss its deadline (measured in docs/live.md).
WORKER_SWITCH_INTERVAL_S = 0.0005
FIFO_SECONDS = 1.0  # worker FIFO capacity: the most a stalled worker can fall behind before input is dropped
STALL_SECONDS = 2.0  # no callback for this long while the stream claims to run = the device is gone
STATUS_PERIOD_S = 0.25  # status line refresh
# The summary names CPU steal from this share up: runs in quiet stretches of a shared VM measured
# 0.0-1.6 % (most under 0.3 %), busy stretches of its host 7-36 % (docs/live.md, "On a shared VM host").
STEAL_NOTE = 0.02


# ------------------------------------------------------------------------------------------- buffers
class TimingRing:
    """Preallocated per-block timings, written by the audio thread, read by the main thread.

    Attributes:
        seconds: float64 [slots] processing time of each block, in seconds.
        frames: int32 [slots] frames in each block (at the stream's rate).
        count: blocks recorded so far (slot = count % slots).
        max_s: the longest block over the whole run (the ring only keeps the latest ``slots``).
    """

    def __init__(self, slots: int = TIMING_SLOTS):
        self.seconds = np.zeros(slots, np.float64)
        self.frames = np.zeros(slots, np.int32)
        self.count = 0
        self.max_s = 0.0

    def record(self, seconds: float, frames: int) -> None:
        """Audio thread: store one block's timing (no allocation beyond Python floats)."""
        i = self.count % self.seconds.shape[0]
        self.seconds[i] = seconds
        self.frames[i] = frames
        if seconds > self.max_s:
            self.max_s = seconds
        self.count += 1  # last, so a reader never sees a slot counted before it is written

    def window(self, since: int) -> tuple[np.ndarray, np.ndarray]:
        """Main thread: (seconds, frames) of the blocks recorded since count ``since`` (at most ``slots``)."""
        end = self.count
        slots = self.seconds.shape[0]
        start = max(since, end - slots)
        idx = np.arange(start, end) % slots
        return self.seconds[idx], self.frames[idx]

    def percentiles_ms(self) -> dict[str, float]:
        """p50 and p99 over the kept blocks and max over the whole run, in milliseconds."""
        s, _ = self.window(0)
        if s.size == 0:
            return {"p50": 0.0, "p99": 0.0, "max": 0.0}
        p50, p99 = np.percentile(s, [50, 99])
        return {"p50": round(1000 * float(p50), 4), "p99": round(1000 * float(p99), 4),
                "max": round(1000 * self.max_s, 4)}


class Fifo:
    """A bounded single-producer single-consumer ring of float32 [capacity, channels] frames.

    One thread writes, one thread reads; both only copy into or out of the preallocated ring, and the
    counters are Python ints updated after the copy (atomic under the GIL), so neither side locks.
    ``write`` is all-or-nothing: a block that does not fit is refused, never partly stored.
    """

    def __init__(self, capacity: int, channels: int):
        self.buf = np.zeros((capacity, channels), np.float32)
        self.capacity = capacity
        self.written = 0  # total frames ever written (producer's counter)
        self.read = 0  # total frames ever read or dropped (consumer's counter)

    @property
    def level(self) -> int:
        """Frames stored now."""
        return self.written - self.read

    def write(self, x: np.ndarray) -> bool:
        """Producer: append x [frames, channels]; False (nothing stored) if it does not fit."""
        n = x.shape[0]
        if n > self.capacity - self.level:
            return False
        i = self.written % self.capacity
        first = min(n, self.capacity - i)
        np.copyto(self.buf[i : i + first], x[:first])
        if first < n:
            np.copyto(self.buf[: n - first], x[first:])
        self.written += n
        return True

    def read_into(self, out: np.ndarray) -> int:
        """Consumer: fill out [frames, channels] from the head; returns frames copied (<= level)."""
        n = min(out.shape[0], self.level)
        i = self.read % self.capacity
        first = min(n, self.capacity - i)
        np.copyto(out[:first], self.buf[i : i + first])
        if first < n:
            np.copyto(out[first:n], self.buf[: n - first])
        self.read += n
        return n

    def drop(self, n: int) -> int:
        """Consumer: discard up to n frames from the head; returns frames dropped."""
        n = max(0, min(n, self.level))
        self.read += n
        return n


@dataclass
class ResyncCounter:
    """Keeps the worker path's buffering at its target after underruns.

    Frames in flight (input FIFO + worker + output FIFO) start at ``target``, primed as silence. Each
    callback adds the frames it pushes and removes the frames it takes from the output FIFO. An underrun
    plays silence instead of taking frames, so in-flight grows by the shortfall: that is latency the
    listener would keep forever. ``excess`` is that growth; the callback drops it from the output FIFO as
    soon as the late frames arrive, so the latency shrinks back to ``target`` right after the overload.

    Attributes (frames, all counters only grow):
        target: the buffering wanted (raised by the callback if a host block is longer).
        primed: silence written into the output FIFO so far (by the FIFO's producer).
        pushed: frames the callback put into the input FIFO.
        taken: frames the callback took (read or dropped) from the output FIFO.
    """

    target: int
    primed: int = 0
    pushed: int = 0
    taken: int = 0

    @property
    def excess(self) -> int:
        """Frames in flight beyond the target (negative while requested priming has not arrived)."""
        return self.primed + self.pushed - self.taken - self.target


@dataclass
class Counters:
    """Event counts written by the audio threads (plain ints: atomic under the GIL)."""

    callbacks: int = 0
    frames: int = 0
    block_frames: int = 0  # frames in the latest callback (the host's block size when it is left to the host)
    host_xruns: int = 0  # callbacks the host flagged (JACK sets both flags below for every xrun)
    input_overflows: int = 0  # host: input data was lost before we got it
    output_underflows: int = 0  # host: the callback was late, the device played a gap
    fifo_underruns: int = 0  # worker mode: the worker was late, a block was partly silence
    input_drops: int = 0  # worker mode: input FIFO full, a block was not processed
    resync_frames: int = 0  # worker mode: late frames dropped to restore the target latency


# ---------------------------------------------------------------------------------------- processors
class _Processor:
    """What every callback shares: channel routing, meters, counters, timings, the mix mailbox."""

    def __init__(self, layout: Layout, sample_rate: int, engine: Dereverberator | None):
        self.layout = layout
        self.sample_rate = sample_rate
        self.engine = engine
        self.counters = Counters()
        self.timings = TimingRing()
        # Peaks since the main thread last looked: [input, output] linear, reset by the reader.
        self.peaks = np.zeros(2, np.float64)
        self.requested_mix = engine.mix if engine is not None else 1.0  # written by the main thread
        self._applied_mix = self.requested_mix
        self.last_callback = 0.0  # perf_counter of the latest callback (watchdog)

    def _apply_mix_request(self) -> None:
        # Runs on the thread that owns the engine, so the crossfade state is never touched by two threads.
        m = self.requested_mix
        if m != self._applied_mix and self.engine is not None:
            self.engine.set_mix(m, MIX_RAMP_S)
            self._applied_mix = m

    def _flags(self, status: Any) -> None:
        if status:
            if status.input_overflow or status.output_underflow:
                self.counters.host_xruns += 1
            if status.input_overflow:
                self.counters.input_overflows += 1
            if status.output_underflow:
                self.counters.output_underflows += 1

    def _meter(self, indata: np.ndarray, outdata: np.ndarray) -> None:
        p = self.peaks
        a = max(float(indata.max()), -float(indata.min()))
        b = max(float(outdata.max()), -float(outdata.min()))
        if a > p[0]:
            p[0] = a
        if b > p[1]:
            p[1] = b

    def start(self) -> None:
        """Start helper threads (none by default)."""

    def stop(self) -> None:
        """Stop helper threads (none by default)."""

    @property
    def buffering_frames(self) -> int:
        """Latency added on top of the device and the engine, in frames."""
        return 0


class InlineProcessor(_Processor):
    """The engine runs inside the audio callback (or, with ``engine=None``, a plain pass-through)."""

    def __init__(self, layout: Layout, sample_rate: int, engine: Dereverberator | None):
        super().__init__(layout, sample_rate, engine)
        self._x = np.zeros((MAX_BLOCK, layout.channels), np.float32)

    def __call__(self, indata: np.ndarray, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        t0 = time.perf_counter()
        self._flags(status)
        c = self.layout.channels
        if self.engine is None:
            outdata[:] = indata[:, :c]  # broadcasts a mono input to every output channel
        else:
            self._apply_mix_request()
            done = 0
            while done < frames:  # hosts with variable blocks may exceed the preallocated size
                n = min(frames - done, MAX_BLOCK)
                x = self._x[:n]
                np.copyto(x, indata[done : done + n, :c])
                outdata[done : done + n] = self.engine.process(x)
                done += n
        self._meter(indata, outdata)
        self.counters.callbacks += 1
        self.counters.frames += frames
        self.counters.block_frames = frames
        t1 = time.perf_counter()
        self.last_callback = t1
        self.timings.record(t1 - t0, frames)


class WorkerProcessor(_Processor):
    """The engine runs on a worker thread; the callback only moves frames through bounded FIFOs.

    ``timings`` records the worker's processing time per chunk (the load); ``callback_max_s`` keeps the
    longest callback, which is what the host's deadline sees.
    """

    def __init__(self, layout: Layout, sample_rate: int, engine: Dereverberator, buffer_frames: int):
        super().__init__(layout, sample_rate, engine)
        c = layout.channels
        cap = max(int(FIFO_SECONDS * sample_rate), 4 * buffer_frames, 4 * MAX_BLOCK)
        self.in_fifo = Fifo(cap, c)
        self.out_fifo = Fifo(cap, c)
        self.out_fifo.write(np.zeros((buffer_frames, c), np.float32))  # the target latency, primed as silence
        self.resync = ResyncCounter(buffer_frames, primed=buffer_frames)
        self._initial_prime = buffer_frames
        self.callback_max_s = 0.0
        self._grow_requested = 0  # callback -> worker: total extra priming asked for (frames)
        self._zeros = np.zeros((MAX_BLOCK, c), np.float32)
        self._y = np.zeros((MAX_BLOCK, c), np.float32)
        self._work_in = np.zeros((MAX_BLOCK, c), np.float32)
        self._wake = threading.Event()
        self._running = False
        self._thread: threading.Thread | None = None
        self._saved_switch = sys.getswitchinterval()

    @property
    def buffering_frames(self) -> int:
        return self.resync.target

    def __call__(self, indata: np.ndarray, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        t0 = time.perf_counter()
        self._flags(status)
        c, cnt, rs = self.layout.channels, self.counters, self.resync
        longest = min(frames, MAX_BLOCK)
        if longest > rs.target:
            # A host block longer than the buffer could never be served from it: raise the target to the
            # block once (the worker, the output FIFO's only producer, writes the extra silence).
            self._grow_requested += longest - rs.target
            rs.target = longest
        done = 0
        while done < frames:
            n = min(frames - done, MAX_BLOCK)
            # Late frames from an earlier underrun: drop them now that they are here, keeping enough for
            # this block. Checked before this block is pushed, while pushed and taken balance at target.
            extra = min(rs.excess, self.out_fifo.level - n)
            if extra > 0:
                dropped = self.out_fifo.drop(extra)
                rs.taken += dropped
                cnt.resync_frames += dropped
            if self.in_fifo.write(indata[done : done + n, :c]):
                rs.pushed += n
            else:
                # Only frames that really entered count, so ``excess`` stays exact; the underruns that
                # follow a stall this long bring it back to the target like any other underrun.
                cnt.input_drops += 1
            y = self._y[:n]
            got = self.out_fifo.read_into(y)
            rs.taken += got
            if got < n:
                y[got:] = 0.0
                cnt.fifo_underruns += 1
            outdata[done : done + n] = y
            done += n
        self._wake.set()
        self._meter(indata, outdata)
        cnt.callbacks += 1
        cnt.frames += frames
        cnt.block_frames = frames
        t1 = time.perf_counter()
        self.last_callback = t1
        if t1 - t0 > self.callback_max_s:
            self.callback_max_s = t1 - t0

    def start(self) -> None:
        self._saved_switch = sys.getswitchinterval()
        sys.setswitchinterval(min(self._saved_switch, WORKER_SWITCH_INTERVAL_S))
        self._running = True
        self._thread = threading.Thread(target=self._work, name="dereverb-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._running = False
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        sys.setswitchinterval(self._saved_switch)

    def _work(self) -> None:
        while self._running:
            if not self.work_once():
                self._wake.wait(0.05)
                self._wake.clear()  # cleared before the level is read again, so no wake-up is lost

    def work_once(self) -> bool:
        """Worker thread: process what the input FIFO holds (up to MAX_BLOCK frames); False if it was empty."""
        rs = self.resync
        grow = self._grow_requested - (rs.primed - self._initial_prime)
        while grow > 0:  # priming the callback asked for (see __call__)
            k = min(grow, MAX_BLOCK)
            self.out_fifo.write(self._zeros[:k])
            rs.primed += k
            grow -= k
        n = min(self.in_fifo.level, MAX_BLOCK)
        if n == 0:
            return False
        t0 = time.perf_counter()
        self._apply_mix_request()
        x = self._work_in[:n]
        self.in_fifo.read_into(x)
        y = self.engine.process(x)
        # Cannot fail: frames in flight stay within target + the input FIFO, below the output capacity.
        self.out_fifo.write(y)
        self.timings.record(time.perf_counter() - t0, n)
        return True


# ---------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class LiveConfig:
    """What ``dereverb live`` was asked for.

    Attributes:
        input_device / output_device: index, name substring, or None for the default device.
        samplerate: stream rate in Hz, or None for the devices' own rate.
        blocksize: frames per callback, 0 = the host's choice (JACK: its period).
        channels: channels to process, or None for min(2, input channels, output channels).
        latency: PortAudio suggested latency: 'low', 'high' or seconds.
        mix: wet/dry 0..1; bypass starts with the effect bypassed (mix 0, same latency).
        duration: seconds to run, or None until Ctrl-C / 'q'.
        stats: write the summary as JSON here.
        passthrough: copy input to output without the engine (baseline for latency and xruns).
        buffer_ms: > 0 (default 20) = model step on a worker thread behind this much FIFO buffering (at
            least one host block); 0 = model step inside the callback (lowest latency).
    """

    input_device: int | str | None = None
    output_device: int | str | None = None
    samplerate: int | None = None
    blocksize: int = 0
    channels: int | None = None
    latency: str | float = "low"
    mix: float = 1.0
    bypass: bool = False
    duration: float | None = None
    stats: Path | None = None
    passthrough: bool = False
    buffer_ms: float = 20.0


@dataclass
class LiveResult:
    """Outcome of a live run; ``summary`` follows the ``--stats`` JSON schema."""

    summary: dict[str, Any]
    device_lost: bool = False


@dataclass
class _Setup:
    in_dev: DeviceInfo
    out_dev: DeviceInfo
    layout: Layout
    samplerate: int


def prepare(sd: ModuleType, config: LiveConfig) -> _Setup:
    """Resolve devices, channels and rate, and check the devices accept them (before loading the model).

    Raises:
        AudioDeviceError: with one line saying what is wrong.
    """
    devices, default_in, default_out = query_devices(sd)
    in_dev = resolve_device(config.input_device, "input", devices, default_in)
    out_dev = resolve_device(config.output_device, "output", devices, default_out)
    layout = choose_layout(in_dev, out_dev, config.channels)
    rate = choose_samplerate(sd, in_dev, out_dev, layout, config.samplerate)
    return _Setup(in_dev, out_dev, layout, rate)


def choose_samplerate(sd: ModuleType, in_dev: DeviceInfo, out_dev: DeviceInfo, layout: Layout,
                      requested: int | None) -> int:
    """The requested rate; else the input device's own rate, the output's, then 48000 and 44100 Hz,
    whichever both devices accept first (the engine resamples any of them to the model's rate).

    Raises:
        AudioDeviceError: the requested rate is refused, or no candidate suits both devices.
    """
    if requested:
        if not 8000 <= requested <= 384000:
            raise AudioDeviceError(f"--samplerate {requested} Hz is outside 8 kHz..384 kHz")
        problem = _check(sd, in_dev, out_dev, layout, requested)
        if problem is not None:
            raise AudioDeviceError(problem)
        return requested
    candidates = list(dict.fromkeys([int(in_dev.default_samplerate), int(out_dev.default_samplerate), 48000, 44100]))
    problems = []
    for rate in candidates:
        problem = _check(sd, in_dev, out_dev, layout, rate) if 8000 <= rate <= 384000 else "out of range"
        if problem is None:
            return rate
        problems.append(problem)
    if in_dev.index == out_dev.index:
        raise AudioDeviceError(problems[0])  # one device refusing its own rate: its specific reason is clearest
    tried = ", ".join(str(r) for r in candidates)
    raise AudioDeviceError(f"input {in_dev.label()} and output {out_dev.label()} share no sample rate "
                           f"(tried {tried} Hz); choose one with --samplerate")


def _check(sd: ModuleType, in_dev: DeviceInfo, out_dev: DeviceInfo, layout: Layout, rate: int) -> str | None:
    for kind, dev, ch, check in (("input", in_dev, layout.input_channels, sd.check_input_settings),
                                 ("output", out_dev, layout.output_channels, sd.check_output_settings)):
        try:
            check(device=dev.index, channels=ch, samplerate=rate, dtype="float32")
        except Exception as exc:  # sd.PortAudioError or ValueError, both carry PortAudio's reason
            reason = str(exc).split(" [PaErrorCode")[0]
            if "sample rate" in reason.lower():
                return f"{kind} device {dev.label()} does not support {rate} Hz (try --samplerate)"
            if "channels" in reason.lower():
                return f"{kind} device {dev.label()} does not support {ch} channel(s) (try --channels)"
            return f"{kind} device {dev.label()} refuses {ch} channel(s) at {rate} Hz: {reason}"
    return None


# ------------------------------------------------------------------------------------------------ run
def run_live(sd: ModuleType, config: LiveConfig, model: StepModel | None, setup: _Setup | None = None,
             ui: TextIO | None = None, keys_from: TextIO | None = None) -> LiveResult:
    """Run the stream until ``config.duration``, 'q' or Ctrl-C; return the summary.

    Args:
        sd: the sounddevice module (``devices.import_sounddevice()``).
        model: the step model (unused with ``config.passthrough``).
        setup: from ``prepare`` (done here if None).
        ui: where the status line goes (default stderr); shown only on a terminal.
        keys_from: where keys are read (default stdin); only if it is a terminal.
    Raises:
        AudioDeviceError: the stream cannot be opened.
    """
    setup = setup or prepare(sd, config)
    layout, rate = setup.layout, setup.samplerate
    engine = None
    if not config.passthrough:
        engine = Dereverberator(model=model, sample_rate=rate, channels=layout.channels,
                                mix=0.0 if config.bypass else config.mix)
    if config.buffer_ms > 0 and engine is not None:
        proc: _Processor = WorkerProcessor(layout, rate, engine, round(config.buffer_ms * rate / 1000))
    else:
        proc = InlineProcessor(layout, rate, engine)
    try:
        stream = sd.Stream(device=(setup.in_dev.index, setup.out_dev.index),
                           channels=(layout.input_channels, layout.output_channels), samplerate=rate,
                           blocksize=config.blocksize, latency=config.latency, dtype="float32", callback=proc)
    except Exception as exc:  # sd.PortAudioError / ValueError
        raise AudioDeviceError(f"cannot open the audio stream: {str(exc).split(' [PaErrorCode')[0]}") from None
    ui = ui if ui is not None else sys.stderr
    keys_from = keys_from if keys_from is not None else sys.stdin
    controls = Controls(config.mix, config.bypass)
    algorithmic = engine.latency_samples if engine is not None else 0
    status = StatusLine(ui, rate) if _isatty(ui) else None
    device_lost = False
    proc.start()
    try:
        stream.start()
    except Exception as exc:  # sd.PortAudioError: the device refused to start (busy, gone)
        proc.stop()
        stream.close(ignore_errors=True)
        raise AudioDeviceError(f"cannot start the audio stream: {str(exc).split(' [PaErrorCode')[0]}") from None
    t_start = time.perf_counter()
    steal_start = cpu_steal_seconds()
    proc.last_callback = t_start
    try:
        with raw_keys(keys_from) as read_key:
            device_lost = _loop(stream, proc, controls, config, status, read_key, t_start, rate, algorithmic)
    except KeyboardInterrupt:
        pass  # Ctrl-C is the normal way to stop: fall through to the summary
    elapsed = time.perf_counter() - t_start
    steal = steal_share(steal_start, elapsed)
    if not device_lost:
        # After the device vanished PortAudio's stop/close can block forever (seen with JACK): skip them.
        stream.stop()
        stream.close()
    proc.stop()
    if status is not None:
        status.clear()
    device_in, device_out = stream.latency if not device_lost else _latency_or_zero(stream)
    summary = make_summary(proc, elapsed, rate, config.blocksize, device_in + device_out, algorithmic,
                           setup, config, steal)
    return LiveResult(summary, device_lost)


def _latency_or_zero(stream: Any) -> tuple[float, float]:
    try:
        return tuple(stream.latency)  # a plain attribute read, safe even after the device is gone
    except Exception:
        return 0.0, 0.0


def _loop(stream: Any, proc: _Processor, controls: Controls, config: LiveConfig, status: StatusLine | None,
          read_key: Callable[[float], str], t_start: float, rate: int, algorithmic: int) -> bool:
    """Main-thread loop: keys, status line, end conditions. Returns True if the device was lost."""
    next_status = t_start
    seen = 0
    while True:
        now = time.perf_counter()
        if config.duration is not None and now - t_start >= config.duration:
            return False
        if not stream.active or now - proc.last_callback > STALL_SECONDS:
            return True
        for key in read_key(0.05 if status is not None else 0.1):
            if key == "q":
                return False
            if controls.key(key):
                proc.requested_mix = controls.effective_mix
        if status is not None and now >= next_status:
            next_status = now + STATUS_PERIOD_S
            seen = status.update(proc, controls, stream, algorithmic, seen)


def _isatty(f: Any) -> bool:
    try:
        return bool(f.isatty())
    except (AttributeError, ValueError):
        return False


# ------------------------------------------------------------------------------------------- controls
@dataclass
class Controls:
    """Keys while running: b = bypass on/off, + / - = mix up/down by 0.1 (leaves bypass), q = quit."""

    mix: float
    bypass: bool = False

    @property
    def effective_mix(self) -> float:
        return 0.0 if self.bypass else self.mix

    def key(self, k: str) -> bool:
        """Apply one key; True if the effective mix may have changed."""
        if k == "b":
            self.bypass = not self.bypass
        elif k in "+=":
            self.mix, self.bypass = min(1.0, round(self.mix + 0.1, 2)), False
        elif k in "-_":
            self.mix, self.bypass = max(0.0, round(self.mix - 0.1, 2)), False
        else:
            return False
        return True


@contextmanager
def raw_keys(f: TextIO) -> Iterator[Callable[[float], str]]:
    """Yield ``read(timeout_s) -> keys typed`` with the terminal in cbreak mode, restored on exit.

    Not a terminal (CI, pipes, Windows): the reader just sleeps and returns "". cbreak (not raw) keeps
    ISIG, so Ctrl-C still raises KeyboardInterrupt.
    """
    try:
        import select
        import termios
        import tty

        fd = f.fileno()
        if not os.isatty(fd):
            raise OSError
        saved = termios.tcgetattr(fd)
    except (ImportError, OSError, ValueError, AttributeError):
        def sleep(timeout: float) -> str:
            time.sleep(timeout)
            return ""

        yield sleep
        return

    def read(timeout: float) -> str:
        ready, _, _ = select.select([fd], [], [], timeout)
        return os.read(fd, 64).decode(errors="ignore") if ready else ""

    tty.setcbreak(fd)
    try:
        yield read
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class StatusLine:
    """One self-overwriting terminal line: levels, load, latency, xruns, mix (kept within the width)."""

    KEYS_HELP = "keys: b = bypass on/off, + / - = mix up/down, q = quit"

    def __init__(self, out: TextIO, rate: int):
        self.out = out
        self.rate = rate
        self.out.write(self.KEYS_HELP + "\n")

    def update(self, proc: _Processor, controls: Controls, stream: Any, algorithmic: int, seen: int) -> int:
        """Write the line from what the audio thread recorded since ``seen``; returns the new ``seen``."""
        secs, frames = proc.timings.window(seen)
        loads = secs * self.rate / np.maximum(frames, 1)  # processing time / block duration
        mean, peak = (float(loads.mean()), float(loads.max())) if loads.size else (0.0, 0.0)
        peaks = proc.peaks.copy()
        proc.peaks[:] = 0.0  # racy by design: at worst one block's peak is lost from the display
        lat_ms = 1000 * (sum(stream.latency) + (algorithmic + proc.buffering_frames) / self.rate)
        mode = "bypass" if controls.bypass else f"mix {controls.effective_mix:.1f}"
        line = (f"in {_db(peaks[0]):>5} dB  out {_db(peaks[1]):>5} dB  "
                f"load {100 * mean:2.0f}%/{100 * peak:3.0f}%  "  # mean / peak since the last update
                f"latency {lat_ms:.1f} ms  xruns {xrun_count(proc.counters)}  {mode}")
        width = shutil.get_terminal_size().columns - 1  # a wrapped line could no longer be overwritten
        self.out.write("\r" + line[:width] + "\x1b[K")
        self.out.flush()
        return proc.timings.count

    def clear(self) -> None:
        self.out.write("\r\x1b[K")
        self.out.flush()


def _db(peak: float) -> str:
    return f"{20 * math.log10(peak):.1f}" if peak > 1e-5 else "-inf"


# -------------------------------------------------------------------------------------------- summary
def xrun_count(c: Counters) -> int:
    """Every glitch a listener could hear: callbacks the host flagged plus worker FIFO underruns and drops."""
    return c.host_xruns + c.fifo_underruns + c.input_drops


def cpu_steal_seconds(stat: str | None = None) -> float:
    """CPU time the hypervisor gave to other guests while this VM wanted to run, summed over all CPUs,
    in seconds since boot (Linux /proc/stat "steal"; 0.0 where there is none, e.g. bare metal).

    On a shared VM host, steal comes in bursts: while it lasts every thread here, JACK's included, runs
    late, so a run's xruns then say nothing about its client. ``stat``: that file's text (for tests)."""
    try:
        text = Path("/proc/stat").read_text() if stat is None else stat
    except OSError:
        return 0.0
    fields = text.split("\n", 1)[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if fields[0] == "cpu" and len(fields) > 8 else 0.0


def steal_share(steal_start_s: float, elapsed_s: float) -> float:
    """Share of the machine's CPU time (all CPUs) the hypervisor withheld since ``cpu_steal_seconds()``
    read ``steal_start_s``, ``elapsed_s`` seconds ago: 0 = none, 1 = the VM got no CPU at all."""
    return (cpu_steal_seconds() - steal_start_s) / (max(elapsed_s, 1e-9) * (os.cpu_count() or 1))


def make_summary(proc: _Processor, elapsed: float, rate: int, blocksize: int, device_s: float, algorithmic: int,
                 setup: _Setup, config: LiveConfig, steal_fraction: float = 0.0) -> dict[str, Any]:
    """The ``--stats`` JSON: required keys first, then details (all times in ms, rates in Hz).

    ``steal_fraction``: the share of the machine's CPU time the hypervisor withheld during the run
    (``cpu_steal_seconds``; 0 on bare metal)."""
    c = proc.counters
    device_ms = 1000 * device_s
    algo_ms = 1000 * algorithmic / rate
    buf_ms = 1000 * proc.buffering_frames / rate
    secs, frames = proc.timings.window(0)
    load = secs * rate / np.maximum(frames, 1)
    summary: dict[str, Any] = {
        "duration_s": round(elapsed, 3),
        "xruns": xrun_count(c),
        "input_overflows": c.input_overflows,
        "output_underflows": c.output_underflows,
        "block_ms": proc.timings.percentiles_ms(),
        "latency_ms": {"total": round(device_ms + algo_ms + buf_ms, 3), "device": round(device_ms, 3),
                       "algorithmic": round(algo_ms, 3), "buffering": round(buf_ms, 3)},
        "samplerate": rate,
        "blocksize": blocksize or c.block_frames,
        "latency_samples": {"algorithmic": algorithmic, "buffering": proc.buffering_frames},
        "load": {"mean": round(float(load.mean()), 4) if load.size else 0.0,
                 "p99": round(float(np.percentile(load, 99)), 4) if load.size else 0.0,
                 "max": round(float(load.max()), 4) if load.size else 0.0},
        "callbacks": c.callbacks,
        "frames": c.frames,
        "channels": {"processed": setup.layout.channels, "input": setup.layout.input_channels,
                     "output": setup.layout.output_channels},
        "input_device": setup.in_dev.label(),
        "output_device": setup.out_dev.label(),
        "mode": "passthrough" if config.passthrough else ("worker" if isinstance(proc, WorkerProcessor) else "inline"),
        "cpu_steal": round(steal_fraction, 4),
    }
    engine = getattr(proc, "engine", None)
    if engine is not None:
        # Numerical events (see stream.engine): NaN/Inf input samples replaced, model state resets.
        summary.update(nonfinite_inputs=getattr(engine, "nonfinite_inputs", 0),
                       state_resets=getattr(engine, "state_resets", 0))
    if isinstance(proc, WorkerProcessor):
        summary.update(fifo_underruns=c.fifo_underruns, input_drops=c.input_drops, resync_frames=c.resync_frames,
                       callback_max_ms=round(1000 * proc.callback_max_s, 4))
    return summary


def format_summary(s: dict[str, Any]) -> str:
    """The summary printed on exit (from the ``make_summary`` dict)."""
    b, lat = s["block_ms"], s["latency_ms"]
    block = s["blocksize"]
    per = f" (block {block} frames = {1000 * block / s['samplerate']:.2f} ms)" if block else ""
    lines = [
        f"duration     {s['duration_s']:.1f} s at {s['samplerate']} Hz, {s['mode']}",
        f"xruns        {s['xruns']} (input overflows {s['input_overflows']}, "
        f"output underflows {s['output_underflows']}"
        + (f", late blocks {s['fifo_underruns']}, dropped blocks {s['input_drops']}" if "fifo_underruns" in s else "")
        + ")",
        f"block time   p50 {b['p50']:.3f} ms, p99 {b['p99']:.3f} ms, max {b['max']:.3f} ms{per}",
        f"load         mean {100 * s['load']['mean']:.1f}%, p99 {100 * s['load']['p99']:.1f}%, "
        f"max {100 * s['load']['max']:.1f}% of the block duration",
        f"latency      {lat['total']:.1f} ms = device {lat['device']:.1f} + algorithmic {lat['algorithmic']:.1f} "
        f"+ buffering {lat['buffering']:.1f} ms",
    ]
    if s.get("nonfinite_inputs") or s.get("state_resets"):
        lines.append(f"numerics     {s['nonfinite_inputs']} NaN/Inf input samples replaced, "
                     f"{s['state_resets']} model state resets")
    if s.get("cpu_steal", 0.0) >= STEAL_NOTE:
        lines.append(f"host         the VM's host withheld {100 * s['cpu_steal']:.1f}% of the CPU time (steal): "
                     f"xruns may be the host's; compare with a --passthrough run")
    hint = inline_overrun_hint(s)
    if hint:
        lines.append(hint)
    return "\n".join(lines)


def inline_overrun_hint(s: dict[str, Any]) -> str:
    """Advice when an inline run (``--buffer-ms 0``) had xruns and its p99 callback ran past the block's
    duration, else "". Inline mode runs the model step inside the callback, so a machine whose step time
    (with its scheduling noise) exceeds the host's period cannot keep the deadline; the worker's FIFO
    absorbs exactly that (docs/live.md). Measured on a shared nested-virtualisation VM while its host
    stole CPU time: p99 6-14 ms against a 5.33 ms period (256 frames at 48 kHz); quiet, 2.2-2.8 ms."""
    if s.get("mode") != "inline" or not s.get("xruns") or s["load"]["p99"] <= 1.0:
        return ""
    return (f"hint         inline mode: the p99 callback took {100 * s['load']['p99']:.0f}% of the block, so "
            f"blocks missed their deadline; the default worker mode (--buffer-ms 20) absorbs that "
            f"for 20 ms more latency; so does a longer block (--blocksize, or the audio server's period)")


def write_stats(path: Path, summary: dict[str, Any]) -> None:
    """Write the summary JSON atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, path)
