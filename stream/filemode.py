"""File mode: stream audio files through the engine, time-aligned, atomically written.

Each file is read and written in blocks, so memory stays bounded for hours of audio. The engine's
output is delayed by ``latency`` samples; file mode drops that many samples at the head and flushes
the same number at the tail, so output sample k lines up with input sample k and the output has
exactly the input's frame count, rate, channels and (where the format allows) subtype.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf

from stream.engine import Dereverberator
from stream.model import StepModel

DEFAULT_BLOCK = 65536
# Extensions picked up when scanning a folder (explicitly named files may have any extension).
AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".oga", ".opus", ".aif", ".aiff", ".aifc", ".au", ".snd",
                    ".caf", ".w64", ".rf64", ".mp3", ".wv"}


class FileError(RuntimeError):
    """A problem with one file; the message names the file."""


@dataclass(frozen=True)
class Job:
    src: Path
    dst: Path


@dataclass(frozen=True)
class FileResult:
    src: Path
    dst: Path
    frames: int
    seconds: float  # audio duration
    elapsed: float  # processing wall time
    warnings: tuple[str, ...] = ()


def plan_jobs(inputs: Iterable[Path], output: Path | None, out_dir: Path | None) -> tuple[list[Job], list[str]]:
    """Expand files and folders into (src, dst) jobs. Returns (jobs, errors for inputs that yield none).

    A folder is scanned recursively, except for the output folder when it lies inside the input folder:
    outputs of an earlier run are never taken for inputs of the next one.
    """
    jobs: list[Job] = []
    errors: list[str] = []
    out_root = out_dir.resolve() if out_dir is not None else None
    for src in inputs:
        if not src.exists():
            errors.append(f"{src}: no such file or folder")
        elif src.is_dir():
            if out_root is not None and out_root == src.resolve():
                errors.append(f"{src}: the output folder is this input folder (outputs would overwrite the inputs)")
                continue
            nested = out_root is not None and out_root.is_relative_to(src.resolve())
            found = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
                           and not (nested and p.resolve().is_relative_to(out_root)))
            if not found:
                errors.append(f"{src}: folder holds no audio files"
                              + (" outside the output folder" if nested else ""))
            for p in found:
                jobs.append(Job(p, (out_dir or src) / p.relative_to(src)))
        elif output is not None:
            jobs.append(Job(src, output))
        else:
            jobs.append(Job(src, out_dir / src.name))
    return jobs, errors


class _ReadError(Exception):
    """libsndfile failed reading the input; any other libsndfile error while streaming is the output's."""


def _blocks(f: sf.SoundFile, block: int) -> Iterator[np.ndarray]:
    while True:
        try:
            data = f.read(block, dtype="float32", always_2d=True)
        except sf.LibsndfileError as exc:
            raise _ReadError(_reason(exc)) from None
        if data.shape[0] == 0:
            return
        yield data


def process_file(
    job: Job,
    model: StepModel,
    mix: float = 1.0,
    block: int = DEFAULT_BLOCK,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> FileResult:
    """Dereverberate one file into ``job.dst``; raises ``FileError`` naming the file on any problem."""
    import time

    src, dst = job.src, job.dst
    if dst.resolve() == src.resolve():
        raise FileError(f"{src}: output would overwrite the input")
    if dst.exists() and not force:
        raise FileError(f"{dst}: output exists (use --force to overwrite)")
    if src.is_file() and src.stat().st_size == 0:  # libsndfile would only say "Format not recognised"
        raise FileError(f"{src}: empty file (0 bytes)")
    try:
        f = sf.SoundFile(str(src))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise FileError(f"{src}: not a readable audio file ({_reason(exc)})") from None
    t0 = time.perf_counter()
    with f:
        if f.frames == 0:
            raise FileError(f"{src}: empty file (0 frames)")
        if not 1 <= f.channels <= 64:
            raise FileError(f"{src}: unsupported channel count {f.channels}")
        try:
            engine = Dereverberator(model=model, sample_rate=f.samplerate, channels=f.channels, mix=mix)
        except ValueError as exc:
            raise FileError(f"{src}: {exc}") from None
        fmt, subtype = f.format, f.subtype
        if not sf.check_format(fmt, subtype):
            subtype = sf.default_subtype(fmt)
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.stem}.", suffix=f".partial{dst.suffix}", dir=dst.parent)
            os.close(fd)
        except OSError as exc:
            raise FileError(f"{dst}: cannot write output ({exc.strerror or exc})") from None
        tmp = Path(tmp_name)
        try:
            frames = _stream(f, engine, tmp, fmt, subtype, block, progress)
            # mkstemp makes the file private (0600); give the output the permissions of a normal new file.
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, dst)
        except _ReadError as exc:
            raise FileError(f"{src}: read failed ({exc})") from None
        except sf.LibsndfileError as exc:  # a full disk or a size limit: name the output, not the input
            raise FileError(f"{dst}: cannot write output ({_reason(exc)})") from None
        except OSError as exc:
            raise FileError(f"{dst}: cannot write output ({exc.strerror or exc})") from None
        finally:
            tmp.unlink(missing_ok=True)
        warnings = []
        if frames != f.frames:
            warnings.append(f"{src}: header says {f.frames} frames but only {frames} could be read; processed those")
        elif short := _truncated_data(f):
            warnings.append(f"{src}: truncated ({short}); processed the {frames} frames that are there")
        if engine.nonfinite_inputs:
            warnings.append(f"{src}: replaced {engine.nonfinite_inputs} NaN/Inf samples with silence")
        if engine.state_resets:
            warnings.append(f"{src}: the model state became non-finite {engine.state_resets} time(s) and was reset")
        return FileResult(src, dst, frames, frames / f.samplerate, time.perf_counter() - t0, tuple(warnings))


def _stream(f: sf.SoundFile, engine: Dereverberator, tmp: Path | BinaryIO, fmt: str, subtype: str, block: int,
            progress: Callable[[int], None] | None) -> int:
    """Read -> engine -> write, dropping ``latency`` samples at the head, flushing them at the tail.

    ``tmp`` is the output path, or a seekable binary file object (tests stream hours into a sink)."""
    skip = engine.latency_samples
    frames = written = 0
    target = str(tmp) if isinstance(tmp, Path) else tmp
    with sf.SoundFile(target, "w", samplerate=f.samplerate, channels=f.channels, format=fmt, subtype=subtype) as out:
        for data in _blocks(f, block):
            frames += data.shape[0]
            y = engine.process(data)
            drop = min(skip, y.shape[0])
            skip -= drop
            out.write(y[drop:])
            written += y.shape[0] - drop
            if progress:
                progress(data.shape[0])
        # The flush holds the last ``latency`` output samples; emit exactly as many frames as were read.
        tail = engine.flush()
        out.write(tail[skip : skip + frames - written])
    return frames


def _truncated_data(f: sf.SoundFile) -> str | None:
    """A WAV/AIFF whose data chunk claims more bytes than the file holds (a cut-off download or recording).

    libsndfile silently shrinks ``frames`` to what is there; only its header log keeps the claimed size.
    """
    m = re.search(r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", f.extra_info, re.MULTILINE)
    if m and int(m.group(1)) > int(m.group(2)):
        return f"header claims {m.group(1)} bytes of audio, the file holds {m.group(2)}"
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def run_jobs(jobs: list[Job], model: StepModel, mix: float, block: int, force: bool, show_progress: bool,
             log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> tuple[list[FileResult], int]:
    """Process every job; one failing file does not stop the others. Returns (results, failures).

    A failing file's line is logged after its progress bar is cleared, so on a terminal it stands alone.
    """
    results, failures = [], 0
    for i, job in enumerate(jobs):
        bar = _progress_bar(job, i, len(jobs)) if show_progress else None
        error: FileError | None = None
        try:
            res = process_file(job, model, mix, block, force, None if bar is None else bar.update)
        except FileError as exc:
            error = exc
        finally:
            # ``is not None``: a bar without a known total (an unreadable file) refuses ``bool()``.
            if bar is not None:
                bar.close()
        if error is not None:
            failures += 1
            log(f"dereverb: error: {error}")
            continue
        for w in res.warnings:
            log(f"dereverb: warning: {w}")
        results.append(res)
    return results, failures


def _progress_bar(job: Job, index: int, count: int):
    from tqdm import tqdm

    try:
        total = sf.info(str(job.src)).frames
    except Exception:
        total = None
    label = f"[{index + 1}/{count}] {job.src.name}" if count > 1 else job.src.name
    return tqdm(total=total, desc=label, unit="frame", unit_scale=True, leave=False, file=sys.stderr)
