"""``dereverb demo``: run the bundled reverberant clip through the default model and report."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from stream.engine import Dereverberator
from stream.model import StepModel

DEMO_CLIP = Path(__file__).resolve().parent / "data" / "demo_reverb.flac"


def run_demo(model: StepModel, out_dir: Path, play: bool = False) -> int:
    """Write ``demo_input.wav`` and ``demo_dereverbed.wav`` to ``out_dir``; print latency and speed."""
    x, sr = sf.read(str(DEMO_CLIP), dtype="float32", always_2d=True)
    engine = Dereverberator(model=model, sample_rate=sr, channels=x.shape[1])
    lat = engine.latency_samples
    t0 = time.perf_counter()
    y = np.concatenate([engine.process(x), engine.flush()])[lat : lat + x.shape[0]]
    elapsed = time.perf_counter() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    sf.write(str(out_dir / "demo_input.wav"), x, sr, subtype="PCM_16")
    sf.write(str(out_dir / "demo_dereverbed.wav"), y, sr, subtype="PCM_16")
    seconds = x.shape[0] / sr
    print(f"model      {model.path.name} ({model.card.get('name', '?')})")
    print(f"clip       {seconds:.1f} s at {sr} Hz ({DEMO_CLIP.name})")
    print(f"latency    {lat} samples = {1000 * lat / sr:.1f} ms")
    print(f"speed      {elapsed * 1000:.0f} ms for {seconds:.1f} s = {seconds / elapsed:.0f}x real time "
          f"(real-time factor {elapsed / seconds:.4f}, {model.card.get('hop')}-sample hops, 1 thread)")
    print(f"wrote      {out_dir / 'demo_input.wav'}")
    print(f"           {out_dir / 'demo_dereverbed.wav'}")
    if play:
        return _play(x, y, sr)
    return 0


def _play(x: np.ndarray, y: np.ndarray, sr: int) -> int:
    try:
        import sounddevice as sd
    except OSError:
        print("dereverb: error: cannot play: PortAudio is missing (install libportaudio2)", file=sys.stderr)
        return 1
    try:
        sd.check_output_settings(samplerate=sr, channels=x.shape[1])
    except Exception as exc:  # PortAudioError or ValueError when there is no output device
        print(f"dereverb: error: cannot play: no usable output device ({exc})", file=sys.stderr)
        return 1
    gap = np.zeros((sr // 2, x.shape[1]), np.float32)
    print("playing    input, then dereverberated ...")
    sd.play(np.concatenate([x, gap, y]), sr, blocking=True)
    return 0
