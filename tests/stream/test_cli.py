"""CLI round trips through the real console entry point (a subprocess, as a user runs it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.signals import speechlike


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})


@pytest.fixture
def wav(tmp_path) -> Path:
    p = tmp_path / "in" / "a.wav"
    p.parent.mkdir()
    sf.write(str(p), speechlike(2.0, 44100, 2, seed=1), 44100, subtype="PCM_24")
    return p


def test_file_single_output_keeps_format(wav, tmp_path):
    out = tmp_path / "out.wav"
    r = run("file", str(wav), "-o", str(out))
    assert r.returncode == 0, r.stderr
    a, b = sf.info(str(wav)), sf.info(str(out))
    assert (b.samplerate, b.channels, b.frames, b.subtype, b.format) == (a.samplerate, a.channels, a.frames,
                                                                          a.subtype, a.format)
    assert not list(out.parent.glob("*.partial*"))


def test_file_folder_keeps_layout_and_formats(tmp_path):
    src = tmp_path / "src"
    (src / "x" / "y").mkdir(parents=True)
    sf.write(str(src / "one.flac"), speechlike(1.0, 16000, 1), 16000)
    sf.write(str(src / "x" / "y" / "two.ogg"), speechlike(1.0, 48000, 1), 48000)
    sf.write(str(src / "x" / "three.aiff"), speechlike(1.0, 22050, 2), 22050)
    (src / "notes.txt").write_text("not audio, skipped when scanning a folder")
    r = run("file", str(src), "--out-dir", str(tmp_path / "dst"), "--quiet")
    assert r.returncode == 0, r.stderr
    for rel in ["one.flac", "x/y/two.ogg", "x/three.aiff"]:
        a, b = sf.info(str(src / rel)), sf.info(str(tmp_path / "dst" / rel))
        assert (a.frames, a.samplerate, a.channels, a.format) == (b.frames, b.samplerate, b.channels, b.format)
    assert not (tmp_path / "dst" / "notes.txt").exists()


def test_several_files_to_out_dir(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"f{i}.wav"
        sf.write(str(p), speechlike(0.5, 16000, 1, seed=i), 16000)
        paths.append(str(p))
    r = run("file", *paths, "--out-dir", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["f0.wav", "f1.wav", "f2.wav"]


def test_block_size_option_does_not_change_output(tmp_path):
    src = tmp_path / "a.wav"
    sf.write(str(src), speechlike(1.0, 48000, 2, seed=2), 48000, subtype="FLOAT")
    outs = []
    for bs in ["1", "441", "65536"]:
        out = tmp_path / f"o{bs}.wav"
        r = run("file", str(src), "-o", str(out), "--block-size", bs, "--quiet")
        assert r.returncode == 0, r.stderr
        outs.append(sf.read(str(out), dtype="float32")[0])
    assert np.abs(outs[0] - outs[2]).max() <= 1e-5 and np.abs(outs[1] - outs[2]).max() <= 1e-5


def test_mix_zero_returns_the_input(tmp_path):
    src = tmp_path / "a.wav"
    x = speechlike(1.0, 16000, 1, seed=3)
    sf.write(str(src), x, 16000, subtype="FLOAT")
    r = run("file", str(src), "-o", str(tmp_path / "dry.wav"), "--mix", "0", "--quiet")
    assert r.returncode == 0, r.stderr
    y = sf.read(str(tmp_path / "dry.wav"), dtype="float32", always_2d=True)[0]
    assert np.abs(y - x).max() < 1e-6
    r = run("file", str(src), "-o", str(tmp_path / "half.wav"), "--mix", "0.5", "--quiet")
    wet = run("file", str(src), "-o", str(tmp_path / "wet.wav"), "--quiet")
    assert r.returncode == 0 and wet.returncode == 0
    half = sf.read(str(tmp_path / "half.wav"), dtype="float32", always_2d=True)[0]
    full = sf.read(str(tmp_path / "wet.wav"), dtype="float32", always_2d=True)[0]
    assert np.abs(half - (0.5 * full + 0.5 * x)).max() < 1e-5


def test_model_option(tiny_onnx, wav, tmp_path):
    r = run("file", str(wav), "-o", str(tmp_path / "t.wav"), "--model", str(tiny_onnx), "--quiet")
    assert r.returncode == 0, r.stderr
    r = run("info", "--model", str(tiny_onnx))
    assert r.returncode == 0 and "tiny" in r.stdout


def test_force_and_never_overwrite_input(wav, tmp_path):
    out = tmp_path / "o.wav"
    assert run("file", str(wav), "-o", str(out), "--quiet").returncode == 0
    before = out.stat().st_mtime_ns
    r = run("file", str(wav), "-o", str(out), "--quiet")
    assert r.returncode == 1 and "exists" in r.stderr and out.stat().st_mtime_ns == before
    assert run("file", str(wav), "-o", str(out), "--force", "--quiet").returncode == 0
    original = wav.read_bytes()
    r = run("file", str(wav), "-o", str(wav), "--force")
    assert r.returncode == 1 and "overwrite the input" in r.stderr and wav.read_bytes() == original


@pytest.mark.parametrize("case", ["missing", "empty_folder", "not_audio", "truncated_header", "zero_frames",
                                  "unwritable"])
def test_bad_input_one_line_no_traceback_no_partial(case, tmp_path, wav):
    out_dir = tmp_path / "out"
    if case == "missing":
        target = tmp_path / "nope.wav"
    elif case == "empty_folder":
        target = tmp_path / "empty"
        target.mkdir()
    elif case == "not_audio":
        target = tmp_path / "x.wav"
        target.write_bytes(b"RIFF\x00\x00\x00\x00garbage that is not a wave file" * 3)
    elif case == "truncated_header":
        target = tmp_path / "t.wav"
        target.write_bytes(wav.read_bytes()[:30])
    elif case == "zero_frames":
        target = tmp_path / "z.wav"
        sf.write(str(target), np.zeros((0, 1), np.float32), 16000)
    else:
        target = wav
        out_dir.mkdir()
        out_dir.chmod(0o500)
        if os.access(out_dir, os.W_OK):  # root ignores permissions: use a path under a file instead
            out_dir = wav  # a file where a folder is expected cannot hold outputs
    r = run("file", str(target), "--out-dir", str(out_dir), "--quiet")
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert str(target.name) in lines[0] or str(out_dir) in lines[0]
    if out_dir.is_dir():
        assert not [p for p in out_dir.rglob("*") if p.is_file()]


def test_batch_continues_after_a_failure(tmp_path, wav):
    bad = tmp_path / "bad.wav"
    bad.write_text("nope")
    r = run("file", str(bad), str(wav), "--out-dir", str(tmp_path / "o"), "--quiet")
    assert r.returncode == 1 and "bad.wav" in r.stderr
    assert (tmp_path / "o" / "a.wav").exists()


@pytest.mark.parametrize("args", [["--mix", "1.5"], ["--mix", "-0.1"], ["--mix", "x"], ["--block-size", "0"]])
def test_usage_errors_exit_2(wav, tmp_path, args):
    r = run("file", str(wav), "-o", str(tmp_path / "o.wav"), *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_output_flag_with_several_inputs_is_usage_error(wav, tmp_path):
    r = run("file", str(wav), str(wav), "-o", str(tmp_path / "o.wav"))
    assert r.returncode == 2


def test_demo_writes_files_and_reports(tmp_path):
    r = run("demo", "--out-dir", str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    assert "latency" in r.stdout and "real time" in r.stdout
    x, sr = sf.read(str(tmp_path / "d" / "demo_input.wav"))
    y, sr2 = sf.read(str(tmp_path / "d" / "demo_dereverbed.wav"))
    assert sr == sr2 and x.shape == y.shape and np.abs(y).max() > 0.01


def test_bad_model_is_one_line(tmp_path, wav):
    bad = tmp_path / "m.onnx"
    bad.write_text("not onnx")
    r = run("file", str(wav), "-o", str(tmp_path / "o.wav"), "--model", str(bad))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "m.onnx" in r.stderr


@pytest.mark.parametrize("sig,code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_interrupt_leaves_no_partial_output(tmp_path, sig, code):
    import signal
    import time

    from benchmarks.live_measure import default_sigint

    src = tmp_path / "long.wav"
    sf.write(str(src), speechlike(120.0, 48000, 2, seed=9), 48000, subtype="PCM_16")
    out_dir = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "file", str(src), "--out-dir", str(out_dir),
                             "--block-size", "256", "--quiet"], stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    deadline = time.monotonic() + 60
    while not list(out_dir.glob(".*partial*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(out_dir.glob(".*partial*")), "processing never started"
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert not [p for p in out_dir.iterdir()], "a partial output was left behind"


def test_output_has_normal_file_permissions(wav, tmp_path):
    out = tmp_path / "perm.wav"
    assert run("file", str(wav), "-o", str(out), "--quiet").returncode == 0
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask
