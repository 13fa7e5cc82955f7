"""The wheel: the runtime only (stream with its demo clip, models), built without setuptools warnings."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_the_runtime_and_builds_without_warnings(tmp_path):
    pytest.importorskip("setuptools", minversion="77")  # the dev extras install it; the build uses it offline
    src = tmp_path / "src"
    src.mkdir()
    for name in ["pyproject.toml", "README.md"]:
        shutil.copy(ROOT / name, src / name)
    for package in ["stream", "models", "training", "export"]:  # a checkout's top-level packages
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pt"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index",
                        "-v", "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert "absent from the `packages` configuration" not in log and "Warning" not in log, log[-5000:]
    (wheel,) = (tmp_path / "dist").glob("dereverb-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"stream", "models"}
    assert "stream/data/demo_reverb.flac" in names and "stream/cli.py" in names
    assert {"models/dereverb-lstm-16k.onnx", "models/dereverb-lstm-16k.json", "models/README.md"} <= set(names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "dereverb = stream.cli:main" in entry_points
