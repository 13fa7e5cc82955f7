"""`dereverb bench` of two checkouts of this repository, interleaved A, B, B, A, ... so that load drifts
on a shared machine hit both alike: the side-by-side measure of a runtime change.

    git worktree add /tmp/base REV
    python -m benchmarks.checkout_ab /tmp/base . --reps 7

Each run is ``python -m stream.cli bench --json --seconds 5`` in that checkout (16 kHz mono, then
48 kHz stereo). Printed per configuration: the median over runs of the streaming RTF (p50 time of a
hop-sized block / its duration), its mean, the file-mode RTF, and each block size's p50 time, with
new / base ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CONFIGS = {"16 kHz mono": ["--seconds", "5"],
           "48 kHz stereo": ["--seconds", "5", "--samplerate", "48000", "--channels", "2"]}


def bench(checkout: Path, args: list[str]) -> dict:
    """One ``dereverb bench --json`` run of ``checkout``'s own code and shipped model."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    out = subprocess.run([sys.executable, "-m", "stream.cli", "bench", "--json", *args], cwd=checkout,
                         env=env, capture_output=True, text=True, check=True).stdout
    rep = json.loads(out)
    if not str(rep["model"]).startswith(str(checkout)):
        raise RuntimeError(f"{checkout}: the run used {rep['model']}, not its own model")
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", type=Path, help="checkout A (e.g. a git worktree of the base revision)")
    ap.add_argument("new", type=Path, help="checkout B")
    ap.add_argument("--reps", type=int, default=7, help="runs of each checkout per configuration (default 7)")
    a = ap.parse_args(argv)
    trees = {"base": a.base.resolve(), "new": a.new.resolve()}
    runs: dict[tuple[str, str], list[dict]] = {(c, w): [] for c in CONFIGS for w in trees}
    for r in range(a.reps):
        order = ("base", "new") if r % 2 == 0 else ("new", "base")
        for cname, args in CONFIGS.items():
            for w in order:
                runs[(cname, w)].append(bench(trees[w], args))
        print(f"run {r + 1}/{a.reps} done", file=sys.stderr, flush=True)
    med = statistics.median
    for cname in CONFIGS:
        print(f"== {cname} ({a.reps} runs each, medians)")
        for key in ("rtf", "rtf_mean", "file_rtf", "hop_p50_ms"):
            x, y = med(r[key] for r in runs[(cname, "base")]), med(r[key] for r in runs[(cname, "new")])
            print(f"  {key:12s} base {x:.4f}  new {y:.4f}  new/base {y / x:.3f}")
        for i, blk in enumerate(runs[(cname, "base")][0]["blocks"]):
            x = med(r["blocks"][i]["p50_ms"] for r in runs[(cname, "base")])
            y = med(r["blocks"][i]["p50_ms"] for r in runs[(cname, "new")])
            print(f"  block {blk['block_size']:5d} p50 ms  base {x:.4f}  new {y:.4f}  new/base {y / x:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
