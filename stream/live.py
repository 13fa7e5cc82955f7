"""Live mode: a duplex audio stream (microphone -> dereverb -> speakers) with real-time discipline.

This module drives the engine from the audio callback: the buffers between the callback and the worker,
the two processors, and the run itself. Device and rate choice live in ``stream.devices``, the timings,
counters and summary in ``stream.live_report``, the keys and status line in ``stream.live_ui``.

Two ways to run the model step, chosen by ``LiveConfig.buffer_ms``. Both are measured through JACK,
and the worker has fewer xruns under CPU load; the numbers are in docs/live.md.

* worker (``buffer_ms > 0``, default 20 ms): the callback only copies into and out of two preallocated,
  bounded FIFOs (``ThreadRing``); a worker thread runs the engine. The output FIFO is primed with
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

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

import numpy as np

from stream.devices import AudioDeviceError, Layout, StreamSetup, choose_stream
from stream.engine import Dereverberator
from stream.live_report import Counters, TimingRing, cpu_steal_seconds, make_summary, steal_share
from stream.live_ui import Controls, StatusLine, isatty, raw_keys
from stream.model import StepModel

MIX_RAMP_S = 0.02  # crossfade for every mix/bypass change: long enough to be click-free, short to feel instant
MAX_BLOCK = 8192  # preallocated frames per callback; larger host blocks are processed in pieces
# Worker mode: how long the worker may hold the GIL before the audio callback gets it. CPython's 5 ms
# default is longer than a 128- or 256-frame period, so a callback arriving while the worker runs Python
# code would miss its deadline (measured in docs/live.md).
WORKER_SWITCH_INTERVAL_S = 0.0005
FIFO_SECONDS = 1.0  # worker FIFO capacity: the most a stalled worker can fall behind before input is dropped
STALL_SECONDS = 2.0  # no callback for this long while the stream claims to run = the device is gone
STATUS_PERIOD_S = 0.25  # status line refresh


# ------------------------------------------------------------------------------------------- buffers
class ThreadRing:
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


# ---------------------------------------------------------------------------------------- processors
class Processor:
    """What every callback shares: channel routing, meters, counters, timings, the mix mailbox."""

    def __init__(self, layout: Layout, sample_rate: int, engine: Dereverberator | None):
        self.layout = layout
        self.sample_rate = sample_rate
        self.engine = engine
        self.counters = Counters()
        self.timings = TimingRing()
        # Peaks since the main thread last looked: [input, output] linear, reset by the reader.
        self.peaks = np.zeros(2, np.float64)
        self._reduced = tuple(np.zeros((), np.float32) for _ in range(4))  # max/min of input and output
        self.requested_mix = engine.mix if engine is not None else 1.0  # written by the main thread
        self._applied_mix = self.requested_mix
        self.last_callback = 0.0  # perf_counter of the latest callback (watchdog)
        # The longest callback, in seconds; kept by the worker path, where it is not the block time.
        self.callback_max_s = 0.0

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
        p, r = self.peaks, self._reduced
        # Reductions into preallocated 0-d arrays: ``indata.max()`` would allocate one per call.
        np.max(indata, out=r[0])
        np.min(indata, out=r[1])
        np.max(outdata, out=r[2])
        np.min(outdata, out=r[3])
        a = max(float(r[0]), -float(r[1]))
        b = max(float(r[2]), -float(r[3]))
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

    @property
    def mode(self) -> str:
        """How the engine runs, as the summary names it: "passthrough", "inline" or "worker"."""
        raise NotImplementedError


class InlineProcessor(Processor):
    """The engine runs inside the audio callback (or, with ``engine=None``, a plain pass-through)."""

    def __init__(self, layout: Layout, sample_rate: int, engine: Dereverberator | None):
        super().__init__(layout, sample_rate, engine)
        self._x = np.zeros((MAX_BLOCK, layout.channels), np.float32)
        self._y = np.zeros((MAX_BLOCK, layout.channels), np.float32)  # the engine writes here: no array per callback

    @property
    def mode(self) -> str:
        return "inline" if self.engine is not None else "passthrough"

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
                outdata[done : done + n] = self.engine.process(x, out=self._y[:n])
                done += n
        self._meter(indata, outdata)
        self.counters.callbacks += 1
        self.counters.frames += frames
        self.counters.block_frames = frames
        t1 = time.perf_counter()
        self.last_callback = t1
        self.timings.record(t1 - t0, frames)


class WorkerProcessor(Processor):
    """The engine runs on a worker thread; the callback only moves frames through bounded FIFOs.

    ``timings`` records the worker's processing time per chunk (the load); ``callback_max_s`` keeps the
    longest callback, which is what the host's deadline sees.
    """

    @property
    def mode(self) -> str:
        return "worker"

    def __init__(self, layout: Layout, sample_rate: int, engine: Dereverberator, buffer_frames: int):
        super().__init__(layout, sample_rate, engine)
        c = layout.channels
        cap = max(int(FIFO_SECONDS * sample_rate), 4 * buffer_frames, 4 * MAX_BLOCK)
        self.in_fifo = ThreadRing(cap, c)
        self.out_fifo = ThreadRing(cap, c)
        self.out_fifo.write(np.zeros((buffer_frames, c), np.float32))  # the target latency, primed as silence
        self.resync = ResyncCounter(buffer_frames, primed=buffer_frames)
        self._initial_prime = buffer_frames
        self._grow_requested = 0  # callback -> worker: total extra priming asked for (frames)
        self._zeros = np.zeros((MAX_BLOCK, c), np.float32)
        self._y = np.zeros((MAX_BLOCK, c), np.float32)
        self._work_in = np.zeros((MAX_BLOCK, c), np.float32)
        self._work_out = np.zeros((MAX_BLOCK, c), np.float32)
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
        y = self.engine.process(x, out=self._work_out[:n])
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


def prepare(sd: ModuleType, config: LiveConfig) -> StreamSetup:
    """Resolve devices, channels and rate, and check the devices accept them (before loading the model).

    Raises:
        AudioDeviceError: with one line saying what is wrong.
    """
    return choose_stream(sd, config.input_device, config.output_device, config.channels, config.samplerate)


# ------------------------------------------------------------------------------------------------ run
def run_live(sd: ModuleType, config: LiveConfig, model: StepModel | None, setup: StreamSetup | None = None,
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
        proc: Processor = WorkerProcessor(layout, rate, engine, round(config.buffer_ms * rate / 1000))
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
    status = StatusLine(ui, rate) if isatty(ui) else None
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
                           setup, steal)
    return LiveResult(summary, device_lost)


def _latency_or_zero(stream: Any) -> tuple[float, float]:
    try:
        return tuple(stream.latency)  # a plain attribute read, safe even after the device is gone
    except Exception:
        return 0.0, 0.0


def _loop(stream: Any, proc: Processor, controls: Controls, config: LiveConfig, status: StatusLine | None,
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
