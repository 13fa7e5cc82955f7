"""The runtime stands alone: ``import stream``, every module of ``stream`` and ``models``, and every CLI
path never import torch, onnx, ``training`` or ``export``, and nothing installed uses sounddevice's
private API.

Each import check runs in a fresh interpreter (with this checkout first on the path, where ``training``
and ``export`` are importable, so a stray import would succeed and not hide) that records every import
*attempted* of a forbidden name, caught or not, and lists the forbidden modules loaded at the end.
The CLI paths run through ``stream.cli.main`` one after the other in one interpreter; a forbidden
import is reported under the first step (importing ``stream.cli``, then each path) that triggered it. ``bench`` measures the load time in a child
interpreter that imports ``stream`` and ``stream.model``, which the module check covers.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("torch", "onnx", "training", "export", "benchmarks", "tests")  # top-level names; torchaudio & co. match "torch"

# Runs in the fresh interpreter: argv[1] = JSON {"mode": ..., "argvs": [...]}, argv[2] = result path.
PROBE = r'''
import importlib.abc, json, sys

FORBIDDEN = %(forbidden)r


def forbidden(name):
    top = name.split(".")[0]
    return top in FORBIDDEN or top.startswith("torch")


attempted = []
loaded = set()


class Recorder(importlib.abc.MetaPathFinder):
    """Sees every import the interpreter has not done yet; records the forbidden ones, finds nothing."""

    def find_spec(self, name, path=None, target=None):
        if forbidden(name):
            attempted.append(name)
        return None


sys.meta_path.insert(0, Recorder())
job = json.loads(sys.argv[1])
results = []


def record(label, run):
    before = len(attempted)
    try:
        outcome = run()
    except SystemExit as exc:  # --help, --version
        outcome = exc.code
    except Exception as exc:  # a path may fail here (no audio device): its imports still count
        outcome = type(exc).__name__
    now = {m for m in sys.modules if forbidden(m)}
    results.append({"label": label, "outcome": repr(outcome), "attempted": attempted[before:],
                    "loaded": sorted(now - loaded)})
    loaded.update(now)


if job["mode"] == "import stream":
    record("import stream", lambda: __import__("stream"))
elif job["mode"] == "modules":
    import importlib, pkgutil

    for package in ("stream", "models"):
        record(package, lambda: importlib.import_module(package))
        for info in pkgutil.walk_packages(sys.modules[package].__path__, package + "."):
            record(info.name, lambda: importlib.import_module(info.name))
else:
    import importlib

    record("import stream.cli", lambda: importlib.import_module("stream.cli"))
    main = sys.modules["stream.cli"].main
    for argv in job["argvs"]:
        record("dereverb " + " ".join(argv), lambda: main(argv))
with open(sys.argv[2], "w") as f:
    json.dump(results, f)
''' % {"forbidden": FORBIDDEN}


def run_probe(job: dict, tmp_path: Path) -> list[dict]:
    """Run PROBE on ``job`` in a fresh interpreter at the repository root; its per-step results."""
    out = tmp_path / "imports.json"
    r = subprocess.run([sys.executable, "-c", PROBE, json.dumps(job), str(out)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)})
    assert r.returncode == 0 and out.exists(), r.stderr[-3000:]
    return json.loads(out.read_text())


def offenders(results: list[dict]) -> list[tuple[str, list[str], list[str]]]:
    return [(s["label"], s["attempted"], s["loaded"]) for s in results if s["attempted"] or s["loaded"]]


def test_import_stream_never_imports_torch(tmp_path):
    results = run_probe({"mode": "import stream"}, tmp_path)
    assert "Error" not in results[0]["outcome"], results
    assert offenders(results) == []


def test_no_runtime_module_imports_torch(tmp_path):
    results = run_probe({"mode": "modules"}, tmp_path)
    labels = {s["label"] for s in results}
    # The walk found the runtime's modules (a broken walk would check nothing).
    assert {"stream", "stream.cli", "stream.engine", "stream.live", "stream.devices", "models"} <= labels, labels
    assert [s for s in results if "Error" in s["outcome"]] == []
    assert offenders(results) == []


def test_no_cli_path_imports_torch(tmp_path):
    x = (0.1 * np.random.default_rng(0).standard_normal((8000, 1))).astype(np.float32)
    sf.write(str(tmp_path / "in.wav"), x, 16000)
    argvs = [
        ["--version"],
        ["--help"],
        ["file", str(tmp_path / "in.wav"), "-o", str(tmp_path / "out.wav"), "--quiet"],
        ["demo", "--out-dir", str(tmp_path / "demo")],
        ["info"],
        ["info", "--json"],
        ["bench", "--block-sizes", "256", "--seconds", "0.5", "--json"],
        ["devices"],
        ["live", "--help"],
        ["live", "--list-devices"],
        # Loads the live modules and sounddevice, then stops at the device choice (no such device).
        ["live", "--duration", "0.1", "-i", "no-such-device", "-o", "no-such-device"],
    ]
    results = run_probe({"mode": "cli", "argvs": argvs}, tmp_path)
    assert [s["label"] for s in results] == ["import stream.cli"] + ["dereverb " + " ".join(a) for a in argvs]
    # The paths that need no audio device did their work (so their imports are the real ones).
    outcome = {s["label"]: s["outcome"] for s in results}
    for argv in argvs[2:7]:
        assert outcome["dereverb " + " ".join(argv)] == "0", outcome
    assert (tmp_path / "out.wav").exists() and (tmp_path / "demo").is_dir()
    assert offenders(results) == []


# ----------------------------------------------------------------------------- sounddevice's private API
def private_sounddevice_uses(source: str) -> list[str]:
    """``sd._x`` / ``sounddevice._x`` attribute uses in code, where ``sd`` is sounddevice (comments and
    strings do not count)."""
    tree = ast.parse(source)
    aliases = {"sounddevice"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname for a in node.names if a.name == "sounddevice" and a.asname}
    aliases |= {"sd"} if "sounddevice" in source else set()  # the runtime passes the module around as sd
    return [ast.unparse(n) for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in aliases
            and n.attr.startswith("_") and not n.attr.startswith("__")]


def installed_sources() -> list[Path]:
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    files = sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts)
    assert any(p.parts[-2:] == ("stream", "live.py") for p in files), packages
    return files


def test_nothing_installed_uses_sounddevice_private_api():
    found = {str(p.relative_to(ROOT)): private_sounddevice_uses(p.read_text()) for p in installed_sources()}
    assert {k: v for k, v in found.items() if v} == {}


def test_private_api_check_catches_a_use():
    assert private_sounddevice_uses("import sounddevice as sd\nsd._terminate()\n") == ["sd._terminate"]
    assert private_sounddevice_uses("def f(sd):\n    while sd._initialized:\n        pass\n# sounddevice\n") \
        == ["sd._initialized"]
    assert private_sounddevice_uses("import sounddevice\nsounddevice.query_devices()\n") == []
    # The measurement harness outside the package does use it: the check sees that.
    assert private_sounddevice_uses((ROOT / "benchmarks" / "live_measure.py").read_text())
