"""CLI round trips through the real console entry point (a subprocess, as a user runs it)."""

from __future__ import annotations

import argparse
import os
import re
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


# ------------------------------------------------------------------------------ at a terminal (a pty)
def run_on_terminal(*args: str, timeout: float = 120.0) -> tuple[int, str]:
    """Run the CLI with stdin, stdout and stderr on a pseudo-terminal, as a person at a terminal runs it
    (progress bars on). Returns (exit code, everything the terminal showed)."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    import time

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    proc = subprocess.Popen([sys.executable, "-m", "stream.cli", *args], stdin=slave, stdout=slave, stderr=slave,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the process and its children closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
        else:
            proc.kill()
            pytest.fail(f"dereverb {' '.join(args)} did not finish in {timeout} s on a terminal")
        code = proc.wait(timeout=30)
    finally:
        os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


def messages(screen: str) -> list[str]:
    """The 'dereverb: error/warning: ...' lines a terminal showed (progress-bar redraws stripped)."""
    return re.findall(r"dereverb: (?:error|warning): [^\r\n]*", screen)


def test_unreadable_files_on_a_terminal_get_one_line_and_the_batch_goes_on(tmp_path):
    src = tmp_path / "talks"
    src.mkdir()
    sf.write(str(src / "b_good.wav"), speechlike(1.0, 16000, 1, seed=4), 16000, subtype="PCM_16")
    (src / "a_text.wav").write_text("a text file named .wav\n")
    (src / "c_empty.wav").write_bytes(b"")
    code, screen = run_on_terminal("file", str(src), "--out-dir", str(tmp_path / "out"))
    assert "frame/s" in screen, "no progress bar: the terminal path was not taken"
    assert "Traceback" not in screen, screen
    assert code == 1, screen
    errors = messages(screen)
    assert len(errors) == 2 and "a_text.wav" in errors[0] and "c_empty.wav: empty file (0 bytes)" in errors[1], screen
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["b_good.wav"]
    assert sf.info(str(tmp_path / "out" / "b_good.wav")).frames == 16000

    code, screen = run_on_terminal("file", str(src / "a_text.wav"), "-o", str(tmp_path / "one.wav"))
    assert code == 1 and "Traceback" not in screen, screen
    assert len(messages(screen)) == 1 and "a_text.wav" in messages(screen)[0], screen
    assert not (tmp_path / "one.wav").exists()


# -------------------------------------------------------------------------- outputs are never inputs
def test_an_output_folder_inside_the_input_folder_is_never_scanned(tmp_path):
    talks = tmp_path / "talks"
    (talks / "day2").mkdir(parents=True)
    sf.write(str(talks / "a.wav"), speechlike(0.5, 16000, 1, seed=1), 16000)
    sf.write(str(talks / "day2" / "b.flac"), speechlike(0.5, 16000, 1, seed=2), 16000)
    expected = ["clean/a.wav", "clean/day2/b.flac", "a.wav", "day2/b.flac"]
    for extra in ([], ["--force"]):
        r = run("file", str(talks), "--out-dir", str(talks / "clean"), *extra)
        assert r.returncode == 0, r.stderr
        assert r.stdout.count(" -> ") == 2, r.stdout
        assert sorted(str(p.relative_to(talks)) for p in talks.rglob("*") if p.is_file()) == sorted(expected)
    # A folder that holds nothing but earlier outputs has nothing to do; the input folder itself as the
    # output folder would overwrite every input.
    only_outputs = tmp_path / "only"
    (only_outputs / "out").mkdir(parents=True)
    sf.write(str(only_outputs / "out" / "x.wav"), speechlike(0.5, 16000, 1), 16000)
    r = run("file", str(only_outputs), "--out-dir", str(only_outputs / "out"), "--quiet")
    assert r.returncode == 1 and "no audio files outside the output folder" in r.stderr, r.stderr
    r = run("file", str(talks), "--out-dir", str(talks), "--force", "--quiet")
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and "overwrite the inputs" in r.stderr, r.stderr
    # An output folder that holds the input folder is not inside it: the input is scanned as usual.
    r = run("file", str(talks / "day2"), "--out-dir", str(talks), "--force", "--quiet")
    assert r.returncode == 0 and (talks / "b.flac").exists(), r.stderr


# ------------------------------------------------------------------------------------- closed stdout
@pytest.mark.parametrize("args", [["--help"], ["--version"], ["info"], ["info", "--json"], ["file"], ["demo"],
                                  ["bench", "--seconds", "0.5", "--block-sizes", "256", "--json"]],
                         ids=lambda a: " ".join(a))
def test_a_closed_stdout_ends_quietly(tmp_path, wav, args):
    """`dereverb info --json | head -1`: the reader went away; no traceback, the exit status of SIGPIPE."""
    if args == ["file"]:
        args = ["file", str(wav), "-o", str(tmp_path / "o.wav")]
    elif args == ["demo"]:
        args = ["demo", "--out-dir", str(tmp_path / "d")]
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before the first write: every write fails with EPIPE
    try:
        r = subprocess.run([sys.executable, "-m", "stream.cli", *args], stdout=write_end, stderr=subprocess.PIPE,
                           text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    finally:
        os.close(write_end)
    # argparse itself ignores a failed write of --help (exit 0); everything else ends as SIGPIPE would end it
    assert r.returncode == 141 or (args[0].startswith("--") and r.returncode == 0), r.stderr
    assert [ln for ln in r.stderr.splitlines() if not ln.startswith(("  measuring", "dereverb: warning:"))] == [], \
        r.stderr
    if args[0] == "file":
        assert sf.info(args[3]).frames == sf.info(str(wav)).frames  # the work itself was done


# ------------------------------------------------------------------------ numeric options are checked
@pytest.mark.parametrize("args", [
    ["file", "IN", "-o", "OUT", "--mix", "nan"], ["file", "IN", "-o", "OUT", "--mix", "inf"],
    ["file", "IN", "-o", "OUT", "--block-size", "1e3"], ["file", "IN", "-o", "OUT", "--threads", "0"],
    ["bench", "--seconds", "inf"], ["bench", "--seconds", "nan"], ["bench", "--seconds", "1e9"],
    ["bench", "--samplerate", "100"], ["bench", "--samplerate", "1000000"], ["bench", "--channels", "65"],
    ["bench", "--threads", "-1"], ["live", "--duration", "inf"], ["live", "--duration", "nan"],
    ["live", "--buffer-ms", "nan"], ["live", "--buffer-ms", "1e6"], ["live", "--latency", "nan"],
    ["live", "--latency", "-inf"], ["live", "--samplerate", "4000"], ["live", "--channels", "0"],
    ["live", "--mix", "-inf"], ["info", "--threads", "nan"],
], ids=lambda a: " ".join(x for x in a if x not in ("IN", "OUT", "-o")))
def test_non_finite_and_out_of_range_numbers_are_usage_errors(tmp_path, capsys, args):
    from stream.cli import main

    src = tmp_path / "in.wav"
    sf.write(str(src), speechlike(0.5, 16000, 1), 16000)
    args = [str(src) if a == "IN" else str(tmp_path / "out.wav") if a == "OUT" else a for a in args]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {args[-2]}" in err or args[-2] in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.wav"]


def test_nan_mix_is_refused_before_any_file_is_touched(tmp_path, wav):
    r = run("file", str(wav), "--out-dir", str(tmp_path / "o"), "--mix", "nan")
    assert r.returncode == 2 and "finite" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_the_rate_range_is_the_engines(default_model):
    from stream.cli import sample_rate
    from stream.engine import Dereverberator

    for rate in (8000, 384000):
        assert sample_rate(str(rate)) == rate
        Dereverberator(model=default_model, sample_rate=rate, channels=1)
    for rate in (7999, 384001):
        with pytest.raises(argparse.ArgumentTypeError):
            sample_rate(str(rate))
        with pytest.raises(ValueError):
            Dereverberator(model=default_model, sample_rate=rate, channels=1)


# ------------------------------------------------------------------------------------------ info, speed
def test_info_shows_training_metrics_and_readable_state_shapes(capsys):
    from stream.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines():
        rows.setdefault(line[:12].strip(), []).append(line[13:])
    assert "analysis [channels, 256]" in rows["state"] and "lstm_h [2, channels, 320]" in rows["state"]
    assert "'" not in "".join(rows["state"])
    assert any(re.fullmatch(r"\d+\.\d h of speech \(\d+ TTS voices\) and \d+\.\d h of music", t) for t in rows["training"])
    assert any(re.fullmatch(r"\d+ simulated rooms, RT60 [\d.]+-[\d.]+ s", t) for t in rows["training"])
    assert any("kept after epoch" in t for t in rows["training"])
    table = "\n".join(rows["metrics"])
    assert "held-out test set, 96 examples" in table and "dSI-SDR early-50" in table
    # the shipped card's own figure, as the card holds it
    import json

    card = json.loads((Path(__file__).parents[2] / "models" / "dereverb-lstm-16k.json").read_text())
    early = card["metrics"]["summary"]["rt60 0.4-0.8"]["ours"]["d_si_sdr_early"]
    assert re.search(r"RT60 0\.4-0\.8 s .*" + re.escape(f"{early:+.3f} dB"), table), table
    assert len(rows["known limit"]) == len(card["known_limits"])


def test_info_of_a_card_without_training_or_metrics_says_so(tiny_onnx):
    r = run("info", "--model", str(tiny_onnx))
    assert r.returncode == 0, r.stderr
    assert re.search(r"^metrics +not in the card$", r.stdout, re.M), r.stdout


def test_a_one_frame_file_reports_a_speed_that_is_not_zero(tmp_path):
    src = tmp_path / "one.wav"
    sf.write(str(src), np.full((1, 1), 0.25, np.float32), 16000, subtype="PCM_16")
    r = run("file", str(src), "-o", str(tmp_path / "o.wav"))
    assert r.returncode == 0, r.stderr
    m = re.search(r"\((1 frame, 0\.0625 ms audio), ([0-9.e+-]+)x real time\)", r.stdout)
    assert m and float(m.group(2)) > 0, r.stdout


@pytest.mark.parametrize("frames, seconds, elapsed, text", [
    (1, 1 / 16000, 0.01, "1 frame, 0.0625 ms audio, 0.0063x real time"),
    (160, 0.01, 0.002, "160 frames, 10 ms audio, 5x real time"),
    (480000, 30.0, 0.2, "30.0 s audio, 150x real time"),
    (16000, 1.0, 0.0, "1.0 s audio"),
])
def test_describe_speed(frames, seconds, elapsed, text):
    from stream.cli import describe_speed

    assert describe_speed(frames, seconds, elapsed) == text
