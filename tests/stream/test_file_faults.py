"""File-mode reliability: damaged, extreme and unwritable files, I/O failures, hours-long streams.

CLI cases run the real console entry point in a subprocess (as a user runs it); the read-error and
long-stream cases drive stream.filemode in-process so a fault can be injected or a file synthesised.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stream import filemode
from stream.engine import Dereverberator
from tests.signals import speechlike

ROOT = Path(__file__).parents[2]
PEAK_FACTOR = 10 ** (1 / 20)  # the engine's guarantee: output peak <= input peak + 1 dB


def run(*args: str, cwd: Path | None = None, preexec_fn=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, preexec_fn=preexec_fn,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"})


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------ damaged headers
def test_truncated_wav_processes_readable_frames_with_one_warning(tmp_path):
    src = tmp_path / "cut.wav"
    sf.write(str(src), speechlike(2.0, 16000, 1, seed=4), 16000, subtype="PCM_16")
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2 + 1])  # header still claims 32000 frames; odd tail byte too
    readable = sf.info(str(src)).frames
    assert 15000 < readable < 32000
    out = tmp_path / "out.wav"
    r = run("file", str(src), "-o", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    err = lines(r.stderr)
    assert len(err) == 1 and err[0].startswith("dereverb: warning: ") and "cut.wav" in err[0], r.stderr
    assert "Traceback" not in r.stderr
    info = sf.info(str(out))
    assert (info.frames, info.samplerate, info.channels, info.subtype) == (readable, 16000, 1, "PCM_16")


# ------------------------------------------------------------------------------- formats and extremes
@pytest.mark.parametrize("subtype,rate,channels", [("PCM_24", 44100, 2), ("FLOAT", 48000, 1)])
def test_24bit_and_float_keep_subtype_rate_channels_frames(tmp_path, subtype, rate, channels):
    src = tmp_path / f"in_{subtype}.wav"
    x = speechlike(1.5, rate, channels, seed=6)
    if subtype == "FLOAT":
        x = x / np.abs(x).max() * 2.0  # over full scale: legal in a float file
    sf.write(str(src), x, rate, subtype=subtype)
    out = tmp_path / "out.wav"
    r = run("file", str(src), "-o", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    a, b = sf.info(str(src)), sf.info(str(out))
    assert (b.subtype, b.format, b.samplerate, b.channels, b.frames) == (subtype, "WAV", rate, channels, a.frames)
    y = sf.read(str(out), dtype="float32", always_2d=True)[0]
    assert np.isfinite(y).all()
    if subtype == "FLOAT":
        # Float stays float: the >1.0 input is neither clipped to full scale nor pushed past +1 dB.
        assert 1.05 < np.abs(y).max() <= 2.0 * PEAK_FACTOR + 1e-6


@pytest.mark.parametrize("n", [1, 10])
def test_tiny_files_keep_exact_frame_count(tmp_path, n):
    src = tmp_path / f"tiny{n}.wav"
    sf.write(str(src), np.full((n, 1), 0.25, np.float32), 16000, subtype="PCM_16")
    out = tmp_path / "out.wav"
    r = run("file", str(src), "-o", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert sf.info(str(out)).frames == n
    assert np.isfinite(sf.read(str(out))[0]).all()


def _square(freq: float, seconds: float, sr: int) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return np.where(np.sin(2 * np.pi * freq * t) >= 0, 1.0, -1.0).astype(np.float32)[:, None]


@pytest.mark.parametrize("case", ["dc_offset", "square_100hz", "square_3khz"])
def test_dc_and_full_scale_square_stay_bounded(tmp_path, case):
    if case == "dc_offset":
        sr, x, subtype = 16000, speechlike(2.0, 16000, 1, seed=7) + np.float32(0.4), "FLOAT"
    else:
        sr, subtype = 48000, "PCM_16"  # 48 kHz also runs the resamplers, whose ringing can overshoot
        x = _square(100.0 if case == "square_100hz" else 3000.0, 2.0, sr)
    src = tmp_path / f"{case}.wav"
    sf.write(str(src), x, sr, subtype=subtype)
    x_read = sf.read(str(src), dtype="float32", always_2d=True)[0]
    out = tmp_path / "out.wav"
    r = run("file", str(src), "-o", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    y = sf.read(str(out), dtype="float32", always_2d=True)[0]
    assert y.shape == x_read.shape and np.isfinite(y).all()
    assert np.abs(y).max() <= np.abs(x_read).max() * PEAK_FACTOR + 1e-4
    if subtype == "PCM_16":
        # An overshoot written to 16 bits must saturate, not wrap to the opposite rail (a +-2 jump) ...
        assert np.abs(np.diff(y[:, 0])).max() <= 2.0 * 1.12
        # ... and precisely: the 16-bit output is the float output of the same samples, clipped and quantised.
        ref_in, ref_out = tmp_path / "ref_in.wav", tmp_path / "ref_out.wav"
        sf.write(str(ref_in), x_read, sr, subtype="FLOAT")
        r = run("file", str(ref_in), "-o", str(ref_out), "--quiet")
        assert r.returncode == 0, r.stderr
        y_float = sf.read(str(ref_out), dtype="float32", always_2d=True)[0]
        assert np.abs(y - np.clip(y_float, -1.0, 32767 / 32768)).max() < 1e-4


def test_nan_and_inf_in_a_float_file_are_replaced_and_reported(tmp_path):
    src = tmp_path / "nan.wav"
    x = speechlike(1.0, 16000, 1, seed=8)
    x[100:110, 0] = np.nan
    x[5000, 0] = np.inf
    sf.write(str(src), x, 16000, subtype="FLOAT")
    out = tmp_path / "out.wav"
    r = run("file", str(src), "-o", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert lines(r.stderr) == [f"dereverb: warning: {src}: replaced 11 NaN/Inf samples with silence"]
    y, _ = sf.read(str(out), dtype="float32")
    assert np.isfinite(y).all() and np.abs(y[8000:]).max() > 1e-4


def test_digital_silence_stays_exactly_zero(tmp_path):
    src = tmp_path / "silence.wav"
    sf.write(str(src), np.zeros((32000, 1), np.int16), 16000, subtype="PCM_16")
    out = tmp_path / "out.wav"
    r = run("file", str(src), "-o", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    y = sf.read(str(out), dtype="int16")[0]
    assert y.shape == (32000,) and not y.any()


# ------------------------------------------------------------------------------------- write failures
def _limit_file_size(limit: int):
    def preexec() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, like a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def test_write_failure_midway_fails_cleanly(tmp_path):
    src_dir, out_dir = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    src = src_dir / "big.wav"
    sf.write(str(src), speechlike(10.0, 16000, 1, seed=8), 16000, subtype="PCM_16")  # 320 kB out > 64 KiB
    before = sha(src)
    r = run("file", str(src), "-o", str(out_dir / "result.wav"), "--quiet", preexec_fn=_limit_file_size(64 * 1024))
    assert r.returncode == 1, r.stderr
    err = lines(r.stderr)
    assert len(err) == 1 and err[0].startswith("dereverb: error: ") and "Traceback" not in r.stderr, r.stderr
    assert "result.wav" in err[0] and "cannot write" in err[0], "the error must name the output, not the input"
    assert files_in(out_dir) == [], "an output or a partial file was left behind"
    assert sha(src) == before


def test_write_failure_on_one_file_does_not_stop_the_batch(tmp_path):
    src_dir, out_dir = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir()
    sf.write(str(src_dir / "a_small.wav"), speechlike(0.5, 16000, 1, seed=1), 16000, subtype="PCM_16")  # 16 kB
    sf.write(str(src_dir / "b_big.wav"), speechlike(10.0, 16000, 1, seed=2), 16000, subtype="PCM_16")  # 320 kB
    sf.write(str(src_dir / "c_small.wav"), speechlike(0.5, 16000, 1, seed=3), 16000, subtype="PCM_16")
    hashes = {p.name: sha(p) for p in files_in(src_dir)}
    r = run("file", str(src_dir), "--out-dir", str(out_dir), "--quiet", preexec_fn=_limit_file_size(64 * 1024))
    assert r.returncode == 1, r.stderr
    err = lines(r.stderr)
    assert len(err) == 1 and err[0].startswith("dereverb: error: ") and "Traceback" not in r.stderr, r.stderr
    assert str(out_dir / "b_big.wav") in err[0] and "cannot write" in err[0], r.stderr
    assert [p.name for p in files_in(out_dir)] == ["a_small.wav", "c_small.wav"]
    for name in ["a_small.wav", "c_small.wav"]:
        assert sf.info(str(out_dir / name)).frames == 8000
    assert {p.name: sha(p) for p in files_in(src_dir)} == hashes


@pytest.mark.parametrize("blocker", ["other_file", "the_input"])
def test_output_under_a_regular_file_is_one_error_line(tmp_path, blocker):
    src = tmp_path / "in.wav"
    sf.write(str(src), speechlike(0.5, 16000, 1, seed=5), 16000, subtype="PCM_16")
    parent = src if blocker == "the_input" else tmp_path / "file.wav"
    if blocker == "other_file":
        parent.write_bytes(b"a regular file, not a folder")
    hashes = {p: sha(p) for p in (src, parent)}
    r = run("file", str(src), "-o", str(parent / "out.wav"), "--quiet")
    assert r.returncode == 1
    err = lines(r.stderr)
    assert len(err) == 1 and err[0].startswith("dereverb: error: ") and "Traceback" not in r.stderr, r.stderr
    assert "out.wav" in err[0] and "cannot write" in err[0]
    assert {p: sha(p) for p in (src, parent)} == hashes
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({src.name, parent.name})


# -------------------------------------------------------------------------------------- read failures
def test_read_error_midway_fails_that_file_and_continues(tmp_path, monkeypatch, default_model):
    first, second = tmp_path / "first.wav", tmp_path / "second.wav"
    sf.write(str(first), speechlike(3.0, 16000, 1, seed=1), 16000, subtype="PCM_16")
    sf.write(str(second), speechlike(2.0, 16000, 1, seed=2), 16000, subtype="PCM_16")
    out = tmp_path / "out"
    real_read, calls = sf.SoundFile.read, []

    def failing_read(self, *args, **kwargs):
        if Path(str(self.name)).name == "first.wav" and self.mode == "r":
            calls.append(1)
            if len(calls) > 3:  # the disk goes away after three blocks
                raise sf.LibsndfileError(2, prefix="Error reading: ")  # SFE_SYSTEM
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", failing_read)
    log: list[str] = []
    jobs = [filemode.Job(first, out / "first.wav"), filemode.Job(second, out / "second.wav")]
    results, failures = filemode.run_jobs(jobs, default_model, 1.0, 4096, False, False, log=log.append)
    assert len(calls) == 4, "the fault was not injected midway"
    assert failures == 1 and [r.src for r in results] == [second]
    assert len(log) == 1 and log[0].startswith("dereverb: error: ") and str(first) in log[0], log
    assert "read failed" in log[0]
    assert [p.name for p in files_in(out)] == ["second.wav"]
    assert sf.info(str(out / "second.wav")).frames == 32000


def test_corrupted_flac_fails_that_file_and_continues(tmp_path, default_model):
    bad, good = tmp_path / "bad.flac", tmp_path / "good.flac"
    sf.write(str(bad), speechlike(5.0, 16000, 1, seed=3), 16000)
    sf.write(str(good), speechlike(1.0, 16000, 1, seed=4), 16000)
    data = bytearray(bad.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 4000] = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    bad.write_bytes(bytes(data))
    try:  # does libsndfile notice? If it decodes the damage silently, there is nothing to assert.
        with sf.SoundFile(str(bad)) as f:
            while f.read(4096).shape[0]:
                pass
    except (sf.LibsndfileError, RuntimeError):
        pass
    else:
        pytest.skip("libsndfile decodes this corrupted FLAC without reporting an error")
    out = tmp_path / "out"
    log: list[str] = []
    jobs = [filemode.Job(bad, out / "bad.flac"), filemode.Job(good, out / "good.flac")]
    results, failures = filemode.run_jobs(jobs, default_model, 1.0, 4096, False, False, log=log.append)
    assert failures == 1 and [r.src for r in results] == [good]
    assert len(log) == 1 and log[0].startswith("dereverb: error: ") and str(bad) in log[0], log
    assert "read failed" in log[0]
    assert [p.name for p in files_in(out)] == ["good.flac"]
    assert sf.info(str(out / "good.flac")).frames == 16000


# ------------------------------------------------------------------------ hours of audio, never stored
class SyntheticWav:
    """A 16-bit mono WAV of ``frames`` frames made on demand (read/seek/tell), never held in memory or on disk.

    The data repeats a 7.3 s speech-like pattern; byte k of the data is a pure function of k, so any seek works.
    """

    HEADER = 44

    def __init__(self, frames: int, rate: int = 16000):
        data_bytes = 2 * frames
        self.frames, self.size, self.pos = frames, self.HEADER + data_bytes, 0
        self.header = (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
                       + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, 2 * rate, 2, 16)
                       + b"data" + struct.pack("<I", data_bytes))
        x = speechlike(7.3, rate, 1, seed=11)[:, 0] * 4.0
        self.pattern = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = [offset, self.pos + offset, self.size + offset][whence]
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.pos if n < 0 else min(n, self.size - self.pos)
        parts = []
        while n > 0:
            if self.pos < self.HEADER:
                chunk = self.header[self.pos : self.pos + n]
            else:
                k = (self.pos - self.HEADER) % len(self.pattern)
                chunk = self.pattern[k : k + n]
            parts.append(chunk)
            self.pos += len(chunk)
            n -= len(chunk)
        return b"".join(parts)


class DiscardingSink:
    """A seekable write-only file that keeps only the first bytes (the header libsndfile rewrites) and the size."""

    KEEP = 4096

    def __init__(self):
        self.pos = self.size = 0
        self.head = bytearray(self.KEEP)

    def write(self, data: bytes) -> int:
        if self.pos < self.KEEP:
            part = data[: self.KEEP - self.pos]
            self.head[self.pos : self.pos + len(part)] = part
        self.pos += len(data)
        self.size = max(self.size, self.pos)
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = [offset, self.pos + offset, self.size + offset][whence]
        return self.pos

    def tell(self) -> int:
        return self.pos

    def data_frames(self) -> int:
        """Frames declared by the written header; also checks the header agrees with the bytes written."""
        i = self.head.index(b"data")
        declared = struct.unpack("<I", self.head[i + 4 : i + 8])[0]
        assert self.size == i + 8 + declared, "header and bytes written disagree"
        return declared // 2


class FiniteChecked(Dereverberator):
    """The real engine, also asserting every output block is finite."""

    def process(self, block):
        y = super().process(block)
        assert np.isfinite(y).all()
        return y


def _rss_kb() -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", text, re.M).group(1))


@pytest.mark.parametrize("hours,max_growth_mb", [
    pytest.param(10 / 60, 20, id="ten_minutes", marks=pytest.mark.slow),
    pytest.param(10.0, 5, id="ten_hours", marks=pytest.mark.soak),
])
def test_long_stream_constant_memory(default_model, hours, max_growth_mb):
    rate = 16000
    frames = int(hours * 3600 * rate)
    sink = DiscardingSink()
    with sf.SoundFile(SyntheticWav(frames, rate)) as f:
        assert (f.frames, f.samplerate, f.channels, f.subtype) == (frames, rate, 1, "PCM_16")
        engine = FiniteChecked(model=default_model, sample_rate=rate, channels=1)
        seen, rss = [0], {}

        def progress(n: int) -> None:
            seen[0] += n
            if "base" not in rss and seen[0] >= 60 * rate:  # warm-up: the first minute
                rss["base"] = rss["peak"] = _rss_kb()
            elif "base" in rss:
                rss["peak"] = max(rss["peak"], _rss_kb())

        n = filemode._stream(f, engine, sink, f.format, f.subtype, filemode.DEFAULT_BLOCK, progress)
    assert n == seen[0] == frames
    assert sink.data_frames() == frames
    growth_mb = (rss["peak"] - rss["base"]) / 1024
    print(f"\n{hours:g} h: {frames} frames, RSS after warm-up {rss['base'] / 1024:.1f} MB, "
          f"growth {growth_mb:.2f} MB")
    assert growth_mb < max_growth_mb
