"""Tests that need Debian packages skip with the apt-get line that installs them, and fail under CI=true."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DEBIAN_PACKAGES, require_debian

ROOT = Path(__file__).resolve().parents[1]

MARKED = '''
import pytest
from tests import conftest

conftest.DEBIAN_PACKAGES["jackd2"] = lambda: False  # as on a machine without it


@pytest.mark.debian("flite", "jackd2")
def test_needs_jack():
    pass
'''


def run_marked(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "test_marked.py").write_text(MARKED)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PYTHONPATH": str(ROOT)}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "no:cacheprovider", "-p", "tests.conftest",
                           "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT), str(tmp_path / "test_marked.py")],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)


@pytest.mark.parametrize("ci", [None, "false"])
def test_a_missing_package_skips_with_its_apt_get_line(tmp_path, ci):
    r = run_marked(tmp_path, ci)
    assert r.returncode == 0 and "1 skipped" in r.stdout, r.stdout + r.stderr
    assert "needs Debian package jackd2 (not installed): sudo apt-get install --no-install-recommends jackd2" \
        in r.stdout, r.stdout


def test_under_ci_a_missing_package_fails(tmp_path):
    r = run_marked(tmp_path, "true")
    assert r.returncode == 1 and "1 error" in r.stdout, r.stdout + r.stderr  # fails in setup, before the test
    assert "sudo apt-get install --no-install-recommends jackd2" in r.stdout and "CI=true" in r.stdout, r.stdout


def test_require_debian_names_only_the_missing_packages(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setitem(DEBIAN_PACKAGES, "fluidsynth", lambda: False)
    monkeypatch.setitem(DEBIAN_PACKAGES, "flite", lambda: False)
    monkeypatch.setitem(DEBIAN_PACKAGES, "espeak-ng", lambda: True)
    with pytest.raises(pytest.skip.Exception, match=r"apt-get install --no-install-recommends flite fluidsynth$"):
        require_debian("flite", "espeak-ng", "fluidsynth")
    with pytest.raises(ValueError, match="no installation check"):
        require_debian("not-a-package")
