"""Make the bundled demo clip ``stream/data/demo_reverb.flac`` (deterministic) and its early-50 target.

    python -m training.make_demo [--out stream/data/demo_reverb.flac] [--target tests/data/demo_early50.flac]

A held-out TTS voice (festival ked, never used for training) speaks a few sentences in a simulated
6.5 x 5 x 3 m room with RT60 about 0.7 s, source 2.5 m from the microphone, at -26 dBFS. The target
is the same speech through the room's direct path and reflections up to 50 ms (the training target,
``training.mixing.split_rir``), at the same gain: the tests pin the shipped model's SI-SDR gain on it.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

TEXT = ("Reverberation smears every word across the room. "
        "This short clip was recorded in a simulated lecture room with hard walls. "
        "The streaming model removes the late echoes and keeps the voice.")
SR = 16000


def synthesize(text: str) -> np.ndarray:
    """festival's ked voice -> float32 mono at 16 kHz."""
    import soxr

    with tempfile.TemporaryDirectory() as tmp:
        txt, wav = Path(tmp) / "t.txt", Path(tmp) / "t.wav"
        txt.write_text(text)
        subprocess.run(["text2wave", "-eval", "(voice_ked_diphone)", "-o", str(wav), str(txt)],
                       check=True, capture_output=True)
        x, sr = sf.read(str(wav), dtype="float32")
    return soxr.resample(x, sr, SR).astype(np.float32) if sr != SR else x


def reverberate(dry: np.ndarray, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """(reverberant speech, early-50 target), both float32 [len(dry) + SR / 2]."""
    import pyroomacoustics as pra

    from training.mixing import convolve, split_rir

    dims = [6.5, 5.0, 3.0]
    absorption, max_order = pra.inverse_sabine(0.7, dims)
    pra.random.seed(seed)
    room = pra.ShoeBox(dims, fs=SR, materials=pra.Material(absorption), max_order=max_order, air_absorption=True)
    room.add_source([1.5, 2.0, 1.6], signal=dry)
    room.add_microphone([4.0, 2.2, 1.2])
    room.simulate()
    n = len(dry) + SR // 2
    early = convolve(dry.astype(np.float64), split_rir(np.asarray(room.rir[0][0]), SR).early, n)
    return room.mic_array.signals[0][:n].astype(np.float32), early.astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("stream/data/demo_reverb.flac"))
    parser.add_argument("--target", type=Path, default=Path("tests/data/demo_early50.flac"))
    args = parser.parse_args()
    y, early = reverberate(synthesize(TEXT))
    gain = 10 ** (-26 / 20) / np.sqrt(np.mean(y**2))
    for path, x in ((args.out, y * gain), (args.target, early * gain)):
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), x, SR, subtype="PCM_16")
        print(f"wrote {path}: {len(x) / SR:.1f} s, {path.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
