"""``dereverb bench``: the JSON report has every field with sane types (timings are not asserted here:
they depend on the machine; docs/benchmarks.md holds measured figures)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REQUIRED = {"model": str, "sample_rate": int, "hop": int, "algorithmic_latency_ms": float, "rtf": float,
            "file_rtf": float, "load_time_s": float, "peak_rss_mb": float, "threads": int, "blocks": list}
BLOCK_KEYS = {"block_size": int, "p50_ms": float, "p99_ms": float, "max_ms": float, "rtf": float}


def _positive_finite(v: float) -> bool:
    return isinstance(v, float) and math.isfinite(v) and v > 0


def test_bench_json_has_every_key():
    root = Path(__file__).parents[2]
    r = subprocess.run([sys.executable, "-m", "stream.cli", "bench", "--json", "--seconds", "1",
                        "--block-sizes", "256,1024"], capture_output=True, text=True, timeout=120, cwd=root,
                       env={**os.environ, "PYTHONPATH": str(root)})
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)  # stdout holds the one JSON object and nothing else
    for key, typ in REQUIRED.items():
        assert isinstance(report[key], typ), f"{key}: {report[key]!r} is not {typ.__name__}"
    assert report["sample_rate"] == 16000 and report["hop"] == 256 and report["threads"] == 1
    assert Path(report["model"]).name == "dereverb-lstm-16k.onnx"
    for key in ("algorithmic_latency_ms", "rtf", "file_rtf", "load_time_s", "peak_rss_mb"):
        assert _positive_finite(report[key]), key
    assert report["algorithmic_latency_ms"] == pytest.approx(511 / 16)  # window - 1 samples, no resampling
    assert report["resampler_latency_ms"] == 0.0
    assert 10 < report["peak_rss_mb"] < 4096 and report["load_time_s"] < 60
    assert [b["block_size"] for b in report["blocks"]] == [256, 1024]
    for b in report["blocks"]:
        for key, typ in BLOCK_KEYS.items():
            assert isinstance(b[key], typ), f"blocks.{key}: {b[key]!r}"
        assert 0 < b["p50_ms"] <= b["p99_ms"] <= b["max_ms"] and _positive_finite(b["rtf"])


def test_bench_at_another_rate_reports_the_resampler_share(default_model):
    from stream.bench import run_bench

    rep = run_bench(default_model, block_sizes=(480,), sample_rate=48000, channels=2, seconds=0.3)
    assert rep.hop_block == 768 and rep.hop_timing.calls > 0
    # The resamplers add at most 2 ms at 48 kHz (the latency budget); exact, so safe to assert.
    assert 0 < rep.resampler_latency_ms <= 2.0
    assert rep.algorithmic_latency_ms == pytest.approx(rep.model_latency_ms + rep.resampler_latency_ms)
    js = rep.to_json()
    assert js["sample_rate"] == 48000 and js["channels"] == 2 and js["blocks"][0]["block_size"] == 480
    json.dumps(js)  # serialisable


@pytest.mark.parametrize("bad", ["0", "12,x", ""])
def test_bench_rejects_bad_block_sizes(bad):
    r = subprocess.run([sys.executable, "-m", "stream.cli", "bench", "--block-sizes", bad], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert r.returncode == 2 and "block" in r.stderr
