"""Security properties checked on the source (ast) and on the real CLI.

- checkpoints are loaded with torch.load(weights_only=True): loading a .pt never runs pickled code;
- the runtime (stream/, models/) never unpickles anything;
- no code path goes through a shell;
- file names from the command line are data, never shell syntax.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile as sf

from tests.signals import speechlike

ROOT = Path(__file__).resolve().parents[1]
PICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "shelve", "torch", "cloudpickle"}


def sources(*packages: str) -> list[Path]:
    files = sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts)
    assert files, f"no Python files under {packages}"
    return files


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def dotted(node: ast.AST) -> str:
    """'torch.load' for the expression torch.load, '' when it is not a plain dotted name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def calls(tree: ast.AST) -> Iterator[tuple[ast.Call, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, dotted(node.func)


def keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{node.lineno}"


def planted(tmp_path: Path, monkeypatch, source: str) -> Path:
    """A module with planted violations, under a temporary ROOT (so ``where`` names it m.py)."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    path = tmp_path / "m.py"
    path.write_text(source)
    return path


def bad_lines(violations: list[str]) -> list[str]:
    """The line numbers of ``where``-prefixed violations ('m.py:4: ...' -> '4')."""
    return [v.split(":")[1] for v in violations]


# --------------------------------------------------------------------------------------- torch.load
def torch_load_violations(path: Path) -> tuple[int, list[str]]:
    """(number of torch.load calls, those without weights_only=True) in one file."""
    tree = parse(path)
    # Names bound to torch or to torch.load: import torch [as t]; from torch import load [as l].
    torch_names, load_names = {"torch"}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            torch_names |= {a.asname or a.name for a in node.names if a.name == "torch"}
        elif isinstance(node, ast.ImportFrom) and node.module == "torch":
            load_names |= {a.asname or a.name for a in node.names if a.name == "load"}
    found, bad = 0, []
    for call, name in calls(tree):
        head, _, last = name.rpartition(".")
        if (last == "load" and head in torch_names) or (not head and name in load_names):
            found += 1
            if not keyword_is(call, "weights_only", True):
                bad.append(f"{where(path, call)}: {ast.unparse(call)}")
    return found, bad


def test_every_torch_load_uses_weights_only():
    found, bad = 0, []
    for path in sources("training", "export"):
        n, b = torch_load_violations(path)
        found, bad = found + n, bad + b
    assert found >= 2, "expected the checkpoint loads in export/ and training/ to be found"
    assert not bad, "torch.load without weights_only=True:\n" + "\n".join(bad)


def test_torch_load_check_catches_a_missing_flag(tmp_path, monkeypatch):
    path = planted(tmp_path, monkeypatch,
                   "import torch\nfrom torch import load as L\n"
                   "a = torch.load(p, weights_only=True)\n"
                   "b = torch.load(p)\n"
                   "c = torch.load(p, weights_only=False)\n"
                   "d = L(p, map_location='cpu')\n"
                   "e = torch.load(p, weights_only=flag)\n"
                   "f = onnx.load(p)\n")
    found, bad = torch_load_violations(path)
    assert found == 5 and bad_lines(bad) == ["4", "5", "6", "7"]


# ------------------------------------------------------------------------------- runtime unpickling
def unpickling_violations(path: Path) -> list[str]:
    tree = parse(path)
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in PICKLING_MODULES:
                    bad.append(f"{where(path, node)}: import {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PICKLING_MODULES:
            bad.append(f"{where(path, node)}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = dotted(node.func)
            if name == "__import__" or name == "importlib.import_module":
                arg = node.args[0] if node.args else None
                if isinstance(arg, ast.Constant) and str(arg.value).split(".")[0] in PICKLING_MODULES:
                    bad.append(f"{where(path, node)}: {ast.unparse(node)}")
            if name.rpartition(".")[2] == "load" and name.rpartition(".")[0] in {"np", "numpy"}:
                allow = [k for k in node.keywords if k.arg == "allow_pickle"]
                if allow and not (isinstance(allow[0].value, ast.Constant) and allow[0].value.value is False):
                    bad.append(f"{where(path, node)}: {ast.unparse(node)}")
    return bad


def test_runtime_never_unpickles():
    bad = [b for path in sources("stream", "models") for b in unpickling_violations(path)]
    assert not bad, "the runtime must not unpickle:\n" + "\n".join(bad)


def test_unpickling_check_catches_violations(tmp_path, monkeypatch):
    path = planted(tmp_path, monkeypatch,
                   "import numpy as np\nimport pickle\nfrom joblib import load\nimport torch.nn\n"
                   "a = np.load(p)\nb = np.load(p, allow_pickle=True)\nc = np.load(p, allow_pickle=False)\n"
                   "d = __import__('dill')\n")
    assert bad_lines(unpickling_violations(path)) == ["2", "3", "4", "6", "8"]


# ----------------------------------------------------------------------------------------- no shell
def shell_violations(path: Path) -> list[str]:
    bad = []
    for call, name in calls(parse(path)):
        if name in {"os.system", "os.popen", "os.popen2", "os.popen3", "os.popen4", "commands.getoutput",
                    "subprocess.getoutput", "subprocess.getstatusoutput"}:
            bad.append(f"{where(path, call)}: {ast.unparse(call)}")
        elif any(k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                 for k in call.keywords):
            bad.append(f"{where(path, call)}: {ast.unparse(call)}")
    return bad


def test_no_shell_anywhere():
    bad = [b for path in sources("stream", "export", "training") for b in shell_violations(path)]
    assert not bad, "shell use:\n" + "\n".join(bad)


def test_shell_check_catches_violations(tmp_path, monkeypatch):
    path = planted(tmp_path, monkeypatch,
                   "import os, subprocess\n"
                   "subprocess.run(['ls'], shell=False)\n"
                   "subprocess.run('ls', shell=True)\n"
                   "os.system('ls')\n"
                   "os.popen('ls')\n"
                   "subprocess.Popen(cmd, shell=flag)\n")
    assert bad_lines(shell_violations(path)) == ["3", "4", "5", "6"]


# --------------------------------------------------------------------- hostile file names, for real
@pytest.mark.parametrize("name", ["$(touch PWNED);x.wav", "a;b|c&d.wav", "`touch PWNED`'\"x.wav"])
def test_shell_metacharacters_in_file_names_are_just_names(tmp_path, name):
    sf.write(str(tmp_path / name), speechlike(0.5, 16000, 1, seed=1), 16000, subtype="PCM_16")
    out = f"out {name}"
    r = subprocess.run([sys.executable, "-m", "stream.cli", "file", name, "-o", out, "--quiet"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert sf.info(str(tmp_path / out)).frames == 8000
    r = subprocess.run([sys.executable, "-m", "stream.cli", "file", name, "--out-dir", "o", "--quiet"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert sf.info(str(tmp_path / "o" / name)).frames == 8000
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, out, "o"]), "a shell ran something"
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()
