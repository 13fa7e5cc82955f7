"""Live mode's terminal: the keys (bypass, mix, quit), cbreak mode, and the self-overwriting status line.

All of it runs on the main thread. Key presses change ``Controls``; the run loop posts the resulting mix
to the thread that owns the engine. The status line reads what the audio thread recorded (timings,
peaks, counters) without locks.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from stream.live_report import xrun_count

if TYPE_CHECKING:  # type hints only: stream.live imports this module
    from stream.live import Processor


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


def isatty(f: Any) -> bool:
    """True if ``f`` is a terminal (False for objects without a usable ``isatty``)."""
    try:
        return bool(f.isatty())
    except (AttributeError, ValueError):
        return False


class StatusLine:
    """One self-overwriting terminal line: levels, load, latency, xruns, mix (kept within the width)."""

    KEYS_HELP = "keys: b = bypass on/off, + / - = mix up/down, q = quit"

    def __init__(self, out: TextIO, rate: int):
        self.out = out
        self.rate = rate
        self.out.write(self.KEYS_HELP + "\n")

    def update(self, proc: Processor, controls: Controls, stream: Any, algorithmic: int, seen: int) -> int:
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
