"""Live mode's accounting: per-block timings, event counters, CPU steal, and the summary built from them.

The audio threads write ``TimingRing`` and ``Counters`` (preallocated, no locks: one writer, plain ints
and numpy slots, atomic under the GIL); the main thread reads them for the status line and, when the run
ends, for the summary: ``make_summary`` builds the ``--stats`` JSON, ``format_summary`` the text printed
on exit. Times in the summary are in ms, rates in Hz.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # type hints only: stream.live imports this module
    from stream.devices import StreamSetup
    from stream.live import Processor

TIMING_SLOTS = 1 << 17  # per-block timings kept for percentiles: ~12 min of 256-frame blocks at 48 kHz
# The summary names CPU steal from this share up: runs in quiet stretches of a shared VM measured
# 0.0-1.6 % (most under 0.3 %), busy stretches of its host 7-36 % (docs/live.md, "On a shared VM host").
STEAL_NOTE = 0.02


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


@dataclass
class Counters:
    """Event counts written by the audio threads (plain ints: atomic under the GIL)."""

    callbacks: int = 0
    frames: int = 0
    block_frames: int = 0  # frames in the latest callback (the host's block size when it is left to the host)
    host_xruns: int = 0  # callbacks the host flagged, once each (JACK sets both flags below for every xrun)
    input_overflows: int = 0  # callbacks flagged: input data was lost before the callback got it
    output_underflows: int = 0  # callbacks flagged: the callback was late, the device played a gap
    fifo_underruns: int = 0  # worker mode: the worker was late, a block was partly silence
    input_drops: int = 0  # worker mode: input FIFO full, a block was not processed
    resync_frames: int = 0  # worker mode: late frames dropped to restore the target latency


def xrun_count(c: Counters) -> int:
    """Every glitch a listener could hear: callbacks the host flagged plus worker FIFO underruns and drops."""
    return c.host_xruns + c.fifo_underruns + c.input_drops


# ------------------------------------------------------------------------------------------ CPU steal
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


# -------------------------------------------------------------------------------------------- summary
def make_summary(proc: Processor, elapsed: float, rate: int, blocksize: int, device_s: float, algorithmic: int,
                 setup: StreamSetup, steal_fraction: float = 0.0) -> dict[str, Any]:
    """The ``--stats`` JSON: required keys first, then details (all times in ms, rates in Hz).

    Args:
        proc: the run's processor (its counters, timings, buffering, mode and engine).
        elapsed: the run's length in seconds.
        rate: the stream's rate in Hz; blocksize: the requested frames per callback (0 = the host's).
        device_s: the device latency PortAudio reports (input + output), in seconds.
        algorithmic: the engine's latency in samples at ``rate`` (0 without an engine).
        setup: the devices and channel layout the stream opened.
        steal_fraction: the share of the machine's CPU time the hypervisor withheld during the run
            (``steal_share``; 0 on bare metal).
    """
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
        "host_xruns": c.host_xruns,
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
        "mode": proc.mode,
        "cpu_steal": round(steal_fraction, 4),
    }
    engine = proc.engine
    if engine is not None:
        # Numerical events (see stream.engine): NaN/Inf input samples replaced, model state resets.
        summary.update(nonfinite_inputs=getattr(engine, "nonfinite_inputs", 0),
                       state_resets=getattr(engine, "state_resets", 0))
    if proc.mode == "worker":
        summary.update(fifo_underruns=c.fifo_underruns, input_drops=c.input_drops, resync_frames=c.resync_frames,
                       callback_max_ms=round(1000 * proc.callback_max_s, 4))
    return summary


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}" if n == 1 else f"{n} {thing}s"


def xruns_line(s: dict[str, Any]) -> str:
    """The summary's xruns line: the total, and what it adds up.

    A callback the host flagged counts once, whichever of its two flags (input overflow, output
    underflow) it carries; JACK sets both for every xrun, so the flag counts say which kinds occurred and
    do not add up to the total. In worker mode late and dropped blocks add to it."""
    text = (f"xruns        {s['xruns']} = {_count(s['host_xruns'], 'callback')} the host flagged "
            f"(input overflows in {s['input_overflows']}, output underflows in {s['output_underflows']}; "
            f"a callback with both flags counts once)")
    if "fifo_underruns" in s:
        text += f" + {_count(s['fifo_underruns'], 'late block')} + {_count(s['input_drops'], 'dropped block')}"
    return text


def format_summary(s: dict[str, Any]) -> str:
    """The summary printed on exit (from the ``make_summary`` dict)."""
    b, lat = s["block_ms"], s["latency_ms"]
    block = s["blocksize"]
    per = f" (block {block} frames = {1000 * block / s['samplerate']:.2f} ms)" if block else ""
    lines = [
        f"duration     {s['duration_s']:.1f} s at {s['samplerate']} Hz, {s['mode']}",
        xruns_line(s),
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
