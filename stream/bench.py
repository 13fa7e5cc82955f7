"""``dereverb bench``: how late the stream is and what it costs, measured through the real paths.

Every figure comes from the code a user runs:

- latency: ``Dereverberator.latency_samples`` (exact, block-size independent) and the resamplers'
  share of it (``plan.resampler_latency``) when the stream's rate differs from the model's;
- per-block processing time: wall time of each ``Dereverberator.process`` call on the bundled
  reverberant speech clip (looped, resampled to the stream's rate outside the timed region);
- file-mode throughput: ``stream.filemode.process_file`` on a temporary 16-bit WAV (decode, engine
  with up to ``MAX_HOPS_PER_CALL`` hops per ONNX call, encode, atomic rename);
- import + model load time and peak resident memory: a fresh Python interpreter that imports the
  runtime, loads the model, then streams at the hop and processes one file-mode block.

Units: times in milliseconds (``*_ms``) or seconds (``*_s``), memory in MiB, rates in Hz, sizes in
frames at the stream's rate. A real-time factor (RTF) is processing time / audio duration.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from stream.engine import MAX_HOPS_PER_CALL, Dereverberator
from stream.model import StepModel
from stream.resample import Resampler

DEFAULT_BLOCK_SIZES = (32, 64, 128, 256, 512, 1024)
# The file-mode clip is at least this long so one run takes long enough (~0.1 s) to time reliably.
MIN_FILE_SECONDS = 30.0
LOAD_REPEATS = 3  # fresh interpreters for load time and memory; the median is reported


@dataclass(frozen=True)
class BlockTiming:
    """Processing time of ``Dereverberator.process`` for one block size.

    block_size: frames per call at the stream's rate.
    block_ms: the block's duration (the real-time deadline of one call), ms.
    calls: timed calls.
    p50_ms, p99_ms, max_ms, mean_ms: per-call wall time, ms.
    rtf: total processing time / audio duration (sustained CPU share; blocks smaller than a hop
        only run the model on some calls, so the mean, not the median, is the honest load figure).
    rtf_p50: p50_ms / block_ms.
    """

    block_size: int
    block_ms: float
    calls: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    rtf: float
    rtf_p50: float

    @classmethod
    def from_times(cls, block_size: int, sample_rate: int, times_ns: np.ndarray) -> BlockTiming:
        t = np.asarray(times_ns, dtype=np.float64) / 1e6
        block_ms = 1000.0 * block_size / sample_rate
        p50 = float(np.median(t))
        return cls(block_size, block_ms, int(t.size), p50, float(np.percentile(t, 99)), float(t.max()),
                   float(t.mean()), float(t.sum() / (t.size * block_ms)), p50 / block_ms)


@dataclass(frozen=True)
class LoadFigures:
    """From fresh interpreters (median of ``LOAD_REPEATS``): seconds and MiB."""

    import_time_s: float  # ``import stream`` (numpy, the engine) and onnxruntime
    session_time_s: float  # StepModel.load: session creation and contract checks
    load_rss_mb: float  # peak resident memory once the model is loaded
    peak_rss_mb: float  # peak after streaming 2 s at the hop and one file-mode block

    @property
    def load_time_s(self) -> float:
        return self.import_time_s + self.session_time_s


@dataclass(frozen=True)
class BenchReport:
    """Everything ``dereverb bench`` measured (see the module docstring for units)."""

    model: str
    model_name: str
    model_sample_rate: int
    hop: int
    sample_rate: int
    channels: int
    threads: int
    seconds: float
    algorithmic_latency_samples: int
    algorithmic_latency_ms: float
    model_latency_ms: float
    resampler_latency_ms: float
    hop_block: int  # the model's hop at the stream's rate, frames
    hop_timing: BlockTiming
    blocks: list[BlockTiming]
    file_rtf: float
    file_seconds: float
    file_block_size: int
    file_hops_per_call: int
    load: LoadFigures
    load_average: float  # 1-minute load average when the run started
    cpu_count: int
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def rtf(self) -> float:
        """Streaming RTF at the model's hop: median per-hop time / hop duration."""
        return self.hop_timing.rtf_p50

    @property
    def streams_per_core(self) -> int:
        """Real-time streams one core sustains at the hop, from the mean (sustained) per-hop cost."""
        return int(math.floor(1.0 / self.hop_timing.rtf)) if self.hop_timing.rtf > 0 else 0

    def to_json(self) -> dict:
        """The ``--json`` object: required keys first, then the details (floats to 6 significant digits)."""
        h = self.hop_timing
        return _rounded({
            "model": self.model,
            "model_name": self.model_name,
            "sample_rate": self.sample_rate,
            "model_sample_rate": self.model_sample_rate,
            "hop": self.hop,
            "channels": self.channels,
            "threads": self.threads,
            "algorithmic_latency_ms": self.algorithmic_latency_ms,
            "algorithmic_latency_samples": self.algorithmic_latency_samples,
            "model_latency_ms": self.model_latency_ms,
            "resampler_latency_ms": self.resampler_latency_ms,
            "rtf": self.rtf,
            "rtf_mean": h.rtf,
            "hop_block": self.hop_block,
            "hop_p50_ms": h.p50_ms,
            "hop_p99_ms": h.p99_ms,
            "hop_max_ms": h.max_ms,
            "hop_p99_pct": 100.0 * h.p99_ms / h.block_ms,
            "streams_per_core": self.streams_per_core,
            "file_rtf": self.file_rtf,
            "file_x_realtime": 1.0 / self.file_rtf if self.file_rtf > 0 else None,
            "file_seconds": self.file_seconds,
            "file_block_size": self.file_block_size,
            "file_hops_per_call": self.file_hops_per_call,
            "load_time_s": self.load.load_time_s,
            "import_time_s": self.load.import_time_s,
            "session_time_s": self.load.session_time_s,
            "load_rss_mb": self.load.load_rss_mb,
            "peak_rss_mb": self.load.peak_rss_mb,
            "seconds": self.seconds,
            "blocks": [asdict(b) for b in self.blocks],
            "load_average": self.load_average,
            "cpu_count": self.cpu_count,
            "versions": self.versions,
        })

    def format_table(self) -> str:
        """A readable report."""
        h = self.hop_timing
        ld = self.load
        resampled = self.sample_rate != self.model_sample_rate
        lines = [
            f"model      {self.model} ({self.model_name})",
            f"stream     {self.sample_rate} Hz x {self.channels} ch, {self.threads} thread(s), "
            f"{self.seconds:g} s of speech per block size",
            f"latency    {self.algorithmic_latency_ms:.2f} ms algorithmic ({self.algorithmic_latency_samples} samples)"
            + (f": model {self.model_latency_ms:.2f} ms + resampling {self.resampler_latency_ms:.2f} ms"
               if resampled else ""),
            f"streaming  RTF {self.rtf:.4f} at the model's hop ({self.hop_block} frames, {h.block_ms:.1f} ms): "
            f"p50 {h.p50_ms:.3f} ms, p99 {h.p99_ms:.3f} ms ({100 * h.p99_ms / h.block_ms:.1f} % of the hop), "
            f"max {h.max_ms:.3f} ms",
            f"capacity   {self.streams_per_core} real-time streams on one core (mean RTF {h.rtf:.4f})",
            f"file mode  {1 / self.file_rtf:.0f}x real time (RTF {self.file_rtf:.4f}; {self.file_seconds:g} s WAV, "
            f"{self.file_block_size}-frame blocks, up to {self.file_hops_per_call} hops per ONNX call)",
            f"load       {ld.load_time_s:.3f} s (import {ld.import_time_s:.3f} s + model {ld.session_time_s:.3f} s); "
            f"peak RSS {ld.peak_rss_mb:.0f} MiB ({ld.load_rss_mb:.0f} MiB after load)",
            "",
            f"{'block':>6} {'deadline ms':>11} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'p99 %':>6} {'RTF':>8}",
        ]
        for b in self.blocks:
            lines.append(f"{b.block_size:>6} {b.block_ms:>11.2f} {b.p50_ms:>8.3f} {b.p99_ms:>8.3f} {b.max_ms:>8.3f} "
                         f"{100 * b.p99_ms / b.block_ms:>5.1f}% {b.rtf:>8.4f}")
        lines.append("RTF = total processing time / audio duration; p99 % = p99 time / block duration.")
        return "\n".join(lines)


def _rounded(obj):
    """``obj`` with every float rounded to 6 significant digits (timings are not more precise than that)."""
    if isinstance(obj, float):
        return float(f"{obj:.6g}") if math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return obj


def busy_warning(load_average: float, cpu_count: int) -> str | None:
    """A warning when other processes use the CPU (the figures would be pessimistic), else None."""
    if load_average > 0.5:
        return (f"load average {load_average:.1f} on {cpu_count} cores: other processes are using the CPU, "
                "so these figures are pessimistic; re-run on a quiet machine")
    return None


def bench_audio(sample_rate: int, channels: int, seconds: float) -> np.ndarray:
    """The bundled reverberant speech clip, looped to ``seconds``, at ``sample_rate``: float32 [frames, channels].

    Channels are the clip shifted by 0.37 s each, so they are not identical.
    """
    import soundfile as sf

    from stream.demo import DEMO_CLIP

    clip, sr = sf.read(str(DEMO_CLIP), dtype="float32", always_2d=True)
    clip = clip[:, 0]
    if sr != sample_rate:
        rs = Resampler(sr, sample_rate)
        clip, _ = rs.step(clip[None, :], rs.initial_state(1))
        clip = clip[0]
    n = max(1, int(round(seconds * sample_rate)))
    shift = int(0.37 * sample_rate)
    reps = (n + shift * channels) // clip.size + 1
    looped = np.tile(clip, reps)
    return np.ascontiguousarray(np.stack([looped[c * shift : c * shift + n] for c in range(channels)], axis=1))


def time_stream(model: StepModel, sample_rate: int, channels: int, audio: np.ndarray, block: int) -> BlockTiming:
    """Wall time of every ``Dereverberator.process`` call on ``audio`` cut into ``block``-frame blocks.

    The first calls allocate (ONNX Runtime's arena, numpy buffers), so a warm-up of at least
    0.25 s and 10 calls runs first, untimed, on the same stream.
    """
    d = Dereverberator(model, sample_rate=sample_rate, channels=channels)
    warm = max(10 * block, sample_rate // 4)
    for i in range(0, min(warm, audio.shape[0]) - block + 1, block):
        d.process(audio[i : i + block])
    calls = audio.shape[0] // block
    if calls == 0:
        raise ValueError(f"block size {block} is longer than the {audio.shape[0]}-frame benchmark signal")
    blocks = [audio[k * block : (k + 1) * block] for k in range(calls)]  # views, sliced outside the timing
    times = np.empty(calls, dtype=np.int64)
    clock = time.perf_counter_ns
    process = d.process
    for k, blk in enumerate(blocks):
        t0 = clock()
        process(blk)
        times[k] = clock() - t0
    return BlockTiming.from_times(block, sample_rate, times)


def time_file_mode(model: StepModel, sample_rate: int, channels: int, seconds: float, repeats: int = 3) -> float:
    """File-mode RTF (wall time / audio duration, median of ``repeats``) through ``process_file``."""
    import soundfile as sf

    from stream.filemode import DEFAULT_BLOCK, Job, process_file

    audio = bench_audio(sample_rate, channels, seconds)
    with tempfile.TemporaryDirectory(prefix="dereverb-bench-") as tmp:
        src, dst = Path(tmp) / "in.wav", Path(tmp) / "out.wav"
        sf.write(str(src), audio, sample_rate, subtype="PCM_16")
        rtfs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            process_file(Job(src, dst), model, block=DEFAULT_BLOCK, force=True)
            rtfs.append((time.perf_counter() - t0) / seconds)
    return float(np.median(rtfs))


# Runs in a fresh interpreter: everything a user's process pays to start dereverberating.
_LOAD_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import onnxruntime
import stream
from stream.model import SessionOptions, StepModel
t1 = time.perf_counter()
args = json.loads(sys.argv[1])
model = StepModel.load(args["model"], SessionOptions(threads=args["threads"]))
t2 = time.perf_counter()

def hwm_mb():
    # VmHWM belongs to this process image; ru_maxrss would carry over the parent's size across fork + exec.
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20 if sys.platform == "darwin" else 1024)

load_rss = hwm_mb()
import numpy as np
from stream.engine import Dereverberator
sr, ch = args["sample_rate"], args["channels"]
d = Dereverberator(model, sample_rate=sr, channels=ch)
hop_block = max(1, round(model.hop * sr / model.sample_rate))
x = np.zeros((hop_block, ch), np.float32)
for _ in range(int(2 * sr / hop_block)):
    d.process(x)
d.process(np.zeros((args["file_block"], ch), np.float32))
print(json.dumps({"import_time_s": t1 - t0, "session_time_s": t2 - t1, "load_rss_mb": load_rss,
                  "peak_rss_mb": hwm_mb()}))
"""


def measure_load(model_path: Path, threads: int, sample_rate: int, channels: int,
                 repeats: int = LOAD_REPEATS, env: dict[str, str] | None = None) -> LoadFigures:
    """Import + load time (s) and peak RSS (MiB), each the median over ``repeats`` fresh interpreters.

    ``env``: the interpreters' environment (default: this process's), e.g. one without thread-count
    variables a benchmark harness set for itself (they change how long numpy's BLAS takes to load).
    """
    from stream.filemode import DEFAULT_BLOCK

    root = str(Path(__file__).resolve().parents[1])  # the tree this runtime was imported from
    base = dict(os.environ if env is None else env)
    env = {**base, "PYTHONPATH": os.pathsep.join([root, base.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    arg = json.dumps({"model": str(model_path), "threads": threads, "sample_rate": sample_rate,
                      "channels": channels, "file_block": DEFAULT_BLOCK})
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", _LOAD_CHILD, arg], capture_output=True, text=True, env=env,
                             timeout=300)
        if out.returncode != 0:
            tail = out.stderr.strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"model load subprocess failed: {tail[0]}")
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    return LoadFigures(**med)


def run_bench(
    model: StepModel,
    threads: int = 1,
    block_sizes: tuple[int, ...] = DEFAULT_BLOCK_SIZES,
    sample_rate: int | None = None,
    channels: int = 1,
    seconds: float = 10.0,
    log: Callable[[str], None] | None = None,
    child_env: dict[str, str] | None = None,
) -> BenchReport:
    """Measure everything ``dereverb bench`` reports.

    Args:
        model: a loaded model (its session options, e.g. threads, are what gets timed).
        threads: the intra-op threads ``model`` was loaded with (reported, and used for the load subprocess).
        block_sizes: frames per ``process`` call at the stream's rate.
        sample_rate: the stream's rate in Hz (default: the model's).
        channels: channels per stream.
        seconds: audio per block size, s.
        log: optional callable taking a progress string.
        child_env: environment of the load-time / memory subprocesses (default: this process's).
    Raises:
        ValueError: bad rate, channels, block size or duration.
    """
    say = log or (lambda s: None)
    sr = int(sample_rate or model.sample_rate)
    if seconds <= 0:
        raise ValueError("seconds must be > 0")
    if not block_sizes or min(block_sizes) < 1:
        raise ValueError("block sizes must be >= 1")
    load_average, cpu_count = os.getloadavg()[0], os.cpu_count() or 1
    probe = Dereverberator(model, sample_rate=sr, channels=channels)  # validates rate and channels
    plan = probe.plan
    hop_block = max(1, round(model.hop * sr / model.sample_rate))
    audio = bench_audio(sr, channels, max(seconds, (max(max(block_sizes), hop_block) + 1) / sr))

    blocks = []
    for b in block_sizes:
        say(f"streaming, {b}-frame blocks")
        blocks.append(time_stream(model, sr, channels, audio, b))
    hop_timing = next((t for t in blocks if t.block_size == hop_block), None)
    if hop_timing is None:
        say(f"streaming, {hop_block}-frame blocks (the model's hop)")
        hop_timing = time_stream(model, sr, channels, audio, hop_block)
    file_seconds = max(seconds, MIN_FILE_SECONDS)
    say(f"file mode, {file_seconds:g} s")
    file_rtf = time_file_mode(model, sr, channels, file_seconds)
    say("model load and memory (fresh interpreters)")
    load = measure_load(model.path, threads, sr, channels, env=child_env)

    import onnxruntime

    from stream import __version__
    from stream.filemode import DEFAULT_BLOCK

    model_latency = model.step_latency + model.hop - 1  # model-rate samples: window - 1
    return BenchReport(
        model=str(model.path),
        model_name=f"{model.card.get('name', '?')} {model.card.get('version', '')}".strip(),
        model_sample_rate=model.sample_rate,
        hop=model.hop,
        sample_rate=sr,
        channels=channels,
        threads=threads,
        seconds=seconds,
        algorithmic_latency_samples=plan.latency,
        algorithmic_latency_ms=1000.0 * plan.latency / sr,
        model_latency_ms=1000.0 * model_latency / model.sample_rate,
        resampler_latency_ms=1000.0 * plan.resampler_latency / sr,
        hop_block=hop_block,
        hop_timing=hop_timing,
        blocks=blocks,
        file_rtf=file_rtf,
        file_seconds=file_seconds,
        file_block_size=DEFAULT_BLOCK,
        file_hops_per_call=MAX_HOPS_PER_CALL,
        load=load,
        load_average=load_average,
        cpu_count=cpu_count,
        versions={"dereverb": __version__, "python": platform.python_version(), "numpy": np.__version__,
                  "onnxruntime": onnxruntime.__version__, "machine": platform.machine()},
    )
