"""Shared fixtures (a small random-weight model exported under the contract, the shipped model) and the
check for the Debian packages some tests need.

A test that needs Debian packages says so with ``@pytest.mark.debian("jackd2", ...)`` (checked before it
runs) or calls :func:`require_debian` / :func:`debian_unavailable` itself. When a package is missing the
test is skipped with the exact ``apt-get install`` line that provides it; under ``CI=true`` it fails
instead, so CI exercises every test.
"""

from __future__ import annotations

import ctypes.util
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pytest

# torch's OpenMP threads spin while they wait: on this 2-core machine, busy with other work, two threads per
# torch call made tests/export take 265 s of wall time where one thread took 57 s (the same tests, the same
# load). The tests time nothing, so torch runs on one thread; code that sets its own count
# (training's optim.threads) still does. Set before any test module imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _program(name: str) -> Callable[[], bool]:
    return lambda: shutil.which(name) is not None


def _path(path: str) -> Callable[[], bool]:
    return lambda: Path(path).exists()


# The Debian packages tests use, each with what shows it is installed: the program or file the tests
# call, so the check also holds on a machine that has them without dpkg.
DEBIAN_PACKAGES: dict[str, Callable[[], bool]] = {
    "festival": _program("text2wave"),
    "festvox-kallpc16k": _path("/usr/share/festival/voices/english/kal_diphone"),
    "festvox-kdlpc16k": _path("/usr/share/festival/voices/english/ked_diphone"),
    "festvox-us-slt-hts": _path("/usr/share/festival/voices/us/cmu_us_slt_arctic_hts"),
    "flite": _program("flite"),
    "espeak-ng": _program("espeak-ng"),
    "fluidsynth": _program("fluidsynth"),
    "fluid-soundfont-gm": _path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
    "timgm6mb-soundfont": _path("/usr/share/sounds/sf2/TimGM6mb.sf2"),
    "jackd2": _program("jackd"),
    "libportaudio2": lambda: ctypes.util.find_library("portaudio") is not None,
    "chromium": _program("chromium"),
}
# The TTS voices and the music renderer the corpus builder runs.
CORPUS_PACKAGES = ("festival", "festvox-kallpc16k", "festvox-kdlpc16k", "festvox-us-slt-hts", "flite", "espeak-ng",
                   "fluidsynth", "fluid-soundfont-gm", "timgm6mb-soundfont")


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def debian_unavailable(packages: list[str] | tuple[str, ...], why: str = "not installed") -> NoReturn:
    """Skip the running test, naming the apt-get line for ``packages``; under ``CI=true`` fail it."""
    line = "sudo apt-get install --no-install-recommends " + " ".join(packages)
    message = f"needs Debian {'packages' if len(packages) > 1 else 'package'} {', '.join(packages)} ({why}): {line}"
    if in_ci():
        pytest.fail(f"{message} [CI=true: every test must run]", pytrace=False)
    pytest.skip(message)


def require_debian(*packages: str) -> None:
    """Skip (or under ``CI=true`` fail) the running test unless every one of ``packages`` is installed."""
    unknown = [p for p in packages if p not in DEBIAN_PACKAGES]
    if unknown:
        raise ValueError(f"no installation check for Debian packages {unknown}: add them to DEBIAN_PACKAGES")
    missing = [p for p in packages if not DEBIAN_PACKAGES[p]()]
    if missing:
        debian_unavailable(missing)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("debian"):
        require_debian(*mark.args)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    """A small MaskLSTM (hidden 32) exported by export/ — exercises the real contract, fast to run."""
    torch = pytest.importorskip("torch")
    from export.onnx_export import export_checkpoint
    from training.model import MaskLSTM, ModelConfig

    torch.manual_seed(0)
    model = MaskLSTM(ModelConfig(hidden=32, layers=2))
    d = tmp_path_factory.mktemp("tiny")
    ckpt = d / "tiny.pt"
    torch.save({"model_config": model.cfg.to_dict(), "model": model.state_dict(), "summary": {"note": "test"}}, ckpt)
    out = d / "tiny.onnx"
    export_checkpoint(ckpt, out)
    return out


@pytest.fixture(scope="session")
def default_model():
    from stream.model import StepModel

    return StepModel.load(None)


@pytest.fixture(scope="session")
def predictor_onnx(tmp_path_factory):
    """A small gated MaskLSTM with the in-step late-reverb predictor (4 taps, bins up to 2 kHz), random
    mask and gate weights (so the output depends on the network and the gate opens on some frames),
    exported by export/ with a 20 s rest state. Returns (torch model, .onnx path, card)."""
    torch = pytest.importorskip("torch")
    from export.onnx_export import export_checkpoint
    from training.model import MaskLSTM, ModelConfig

    torch.manual_seed(3)
    model = MaskLSTM(ModelConfig(hidden=32, music_gate=True, music_clear_frames=3, music_start_open=True,
                                 rls_taps=4, rls_f_max=2000.0)).eval()
    with torch.no_grad():
        model.mask.weight.normal_(0, 0.5)
        model.music_gate.weight.normal_(0, 2.0)
        model.music_gate.bias.zero_()
    d = tmp_path_factory.mktemp("predictor")
    torch.save({"model_config": model.cfg.to_dict(), "model": model.state_dict()}, d / "p.pt")
    card = export_checkpoint(d / "p.pt", d / "p.onnx", rest_seconds=20.0)
    return model, d / "p.onnx", card
