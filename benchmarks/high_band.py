"""The band above the model's at 48 kHz (stream.engine.HighBand): what reaches the output, with and without it.

    python -m benchmarks.high_band [--model M.onnx] [--figure docs/high_band.png]

The clips (48 kHz, made here: the corpus's voices are 16-32 kHz, so the top octave is synthetic):
- speech: the demo clip's early-50 target (16 kHz, near dry) resampled, plus a 7.2-20 kHz noise that
  follows its 4-8 kHz band's envelope, as fricatives and breath extend into the top octave, its 8-20
  kHz band 29 dB below the rest (``fullband_speech``);
- reverberant: that speech in a synthetic room (``synthetic_room``: a direct path and an exponentially
  decaying noise tail, RT60 0.6 s at every frequency); its early-50 target is the speech through the
  room's first 50 ms;
- music: the brass clip resampled, plus a 7.2-20 kHz hiss (cymbal-like content, which the model's music
  gate should pass through).

Printed per clip, for the engine with its high band and without it (the model path alone, band-limited
by the resamplers, as the engine is where the stream's band is the model's): the output's 8-20 kHz
energy relative to the input's, and the SI-SDR of the output's 8-20 kHz band against the input's; for
the reverberant clip also, per band (8-20 kHz, 0.5-7 kHz), how far the energy of the reverberant
tail (20 ms frames after speech offsets) falls, and the SI-SDR against the early-50 target, input ->
output. ``--figure`` writes spectrograms of the reverberant clip: input, without, with.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from stream import dereverb_array
from stream.engine import Plan
from stream.model import StepModel
from stream.resample import Resampler

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
HIGH = (8000.0, 20000.0)
LOW = (500.0, 7000.0)


def band(x: np.ndarray, rate: int, lo: float, hi: float) -> np.ndarray:
    """``x`` [frames] with everything outside lo..hi Hz removed (an FFT brick wall), float64."""
    spectrum = np.fft.rfft(np.asarray(x, np.float64))
    f = np.fft.rfftfreq(x.shape[0], 1 / rate)
    spectrum[(f < lo) | (f >= hi)] = 0
    return np.fft.irfft(spectrum, n=x.shape[0])


def energy_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(np.square(x, dtype=np.float64))))


def si_sdr(est: np.ndarray, ref: np.ndarray) -> float:
    """Scale-invariant SDR of ``est`` against ``ref`` (both [frames]), dB."""
    est, ref = np.asarray(est, np.float64), np.asarray(ref, np.float64)
    scale = np.dot(est, ref) / np.dot(ref, ref)
    return float(10 * np.log10(np.sum((scale * ref) ** 2) / np.sum((est - scale * ref) ** 2)))


def _resampled(path: Path, rate: int, seconds: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(the file's first ``seconds`` at its rate, the same at ``rate`` as float64, its rate)."""
    import soundfile as sf

    x, sr = sf.read(str(path), dtype="float32")
    x = x[: int(seconds * sr)]
    rs = Resampler(sr, rate)
    return x, rs.step(x[None, :], rs.initial_state(1))[0][0].astype(np.float64), sr


def _noise(size: int, rate: int, seed: int) -> np.ndarray:
    """Unit-RMS noise of 7.2-20 kHz, [size] float64: from where the 16 kHz clips' content ends (the
    resampler's cutoff) up, so the clips have no gap in their spectrum."""
    noise = band(np.random.default_rng(seed).standard_normal(size), rate, 7200.0, HIGH[1])
    return noise / noise.std()


def fullband_speech(rate: int = 48000, seconds: float = 6.0) -> np.ndarray:
    """Speech with content up to 20 kHz, float32 [frames] at ``rate`` (see the module docstring)."""
    x16, up, sr = _resampled(DATA / "demo_early50.flac", rate, seconds)
    frame = sr // 200  # 5 ms
    env = np.sqrt(np.convolve(band(x16, sr, 4000, 8000) ** 2, np.ones(frame) / frame, mode="same"))
    env = np.interp(np.arange(up.size) * sr / rate, np.arange(env.size), env)
    return (up + 0.7 * env * _noise(up.size, rate, 0)).astype(np.float32)


def music_with_hiss(rate: int = 48000) -> np.ndarray:
    """The brass clip with an 8-20 kHz hiss, float32 [frames] at ``rate``."""
    _, up, _ = _resampled(DATA / "music_brass.flac", rate, 60.0)
    return (up + 0.02 * _noise(up.size, rate, 2)).astype(np.float32)


def _convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    size = 1 << int(np.ceil(np.log2(x.size + h.size)))
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[: x.size]


def synthetic_room(dry: np.ndarray, rate: int, rt60: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """(``dry`` in a room: a direct path and a noise tail decaying by 60 dB in ``rt60`` s, peak 0.5, float32;
    the early-50 target: ``dry`` through the room's first 50 ms, on the same scale, float64). [frames] each."""
    t = np.arange(int(1.2 * rt60 * rate)) / rate
    rir = np.random.default_rng(1).standard_normal(t.size) * np.exp(-6.9 * t / rt60) * 0.1
    rir[0] = 1.0
    wet = _convolve(np.asarray(dry, np.float64), rir)
    scale = 0.5 / np.abs(wet).max()
    return (wet * scale).astype(np.float32), _convolve(np.asarray(dry, np.float64), rir[: int(0.05 * rate)]) * scale


def tail_frames(dry: np.ndarray, reverberant: np.ndarray, rate: int, lo: float, hi: float) -> np.ndarray:
    """[frames // (rate / 50)] bool: the 20 ms frames of the reverberant tail in lo..hi Hz: the dry band is
    30 dB below its loud frames (95th percentile: the source is silent there) and the reverberant one
    is not 50 dB below them (the room still rings)."""
    e_dry, e_in = frame_energy(dry, rate, lo, hi), frame_energy(reverberant, rate, lo, hi)
    loud = np.percentile(e_dry, 95)
    return (e_dry < loud * 1e-3) & (e_in > loud * 1e-5)


def frame_energy(x: np.ndarray, rate: int, lo: float, hi: float) -> np.ndarray:
    """Energy per 20 ms frame of ``x`` [frames] in lo..hi Hz."""
    b = band(x, rate, lo, hi)
    n = rate // 50
    return np.sum(b[: b.size // n * n].reshape(-1, n) ** 2, axis=1)


def tail_drop_db(dry: np.ndarray, reverberant: np.ndarray, out: np.ndarray, rate: int, lo: float, hi: float
                 ) -> float:
    """How far the reverberant tail's energy in lo..hi Hz falls from ``reverberant`` to ``out``, dB."""
    tail = tail_frames(dry, reverberant, rate, lo, hi)
    e_in, e_out = frame_energy(reverberant, rate, lo, hi), frame_energy(out, rate, lo, hi)
    return float(10 * np.log10(e_in[tail].sum() / e_out[tail].sum()))


@contextlib.contextmanager
def band_limited() -> Iterator[None]:
    """The engine without its high band: the model path alone (the engine's behaviour where a stream's
    band is the model's), for comparison."""
    original = Plan.high_band
    Plan.high_band = property(lambda self: False)  # type: ignore[method-assign]
    try:
        yield
    finally:
        Plan.high_band = original  # type: ignore[method-assign]


def _figure(path: Path, rate: int, clips: dict[str, np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, axes = plt.subplots(len(clips), 1, figsize=(8, 2.2 * len(clips)), sharex=True, constrained_layout=True)
    for ax, (title, x) in zip(axes, clips.items()):
        _, _, _, image = ax.specgram(x, NFFT=1024, Fs=rate, noverlap=512, vmin=-150, vmax=-40, cmap="magma")
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("kHz")
        ax.set_yticks(np.arange(0, rate / 2 + 1, 4000), [f"{k:g}" for k in np.arange(0, rate / 2000 + 1, 4)])
    axes[-1].set_xlabel("s")
    fig.colorbar(image, ax=axes, label="dB", shrink=0.6)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)
    # 64 colours: a noisy spectrogram in full colour is ~4x the file for no visible difference
    Image.open(buf).convert("RGB").quantize(64).save(path, optimize=True)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="ONNX model (default: the shipped one)")
    ap.add_argument("--figure", type=Path, default=None, help="write spectrograms of the reverberant clip here")
    args = ap.parse_args(argv)
    model = StepModel.load(args.model)
    rate = 48000
    speech = fullband_speech(rate)
    reverberant, early = synthetic_room(speech, rate)
    clips = {"speech (dry)": speech, "speech in a room (RT60 0.6 s)": reverberant,
             "music with hiss": music_with_hiss(rate)}
    outputs: dict[str, dict[str, np.ndarray]] = {}
    for name, runner in (("without", band_limited), ("with", contextlib.nullcontext)):
        with runner():
            outputs[name] = {clip: dereverb_array(x, rate, model=model) for clip, x in clips.items()}
    print(f"{model.path.name}, 48 kHz; high band = 8-20 kHz")
    print(f"{'clip':32s} {'high band':>9s} {'out - in dB':>12s} {'SI-SDR dB':>10s}")
    for clip, x in clips.items():
        x_high = band(x, rate, *HIGH)
        for name in ("without", "with"):
            y_high = band(outputs[name][clip], rate, *HIGH)
            print(f"{clip:32s} {name:>9s} {energy_db(y_high) - energy_db(x_high):12.2f} {si_sdr(y_high, x_high):10.2f}")
    clip = "speech in a room (RT60 0.6 s)"
    print(f"\n{clip}: tail after speech offsets, and SI-SDR against early-50 (input -> output)")
    for lo, hi in (HIGH, LOW):
        ref, x_band = band(early, rate, lo, hi), band(reverberant, rate, lo, hi)
        for name in ("without", "with"):
            y = outputs[name][clip]
            print(f"  {lo / 1000:g}-{hi / 1000:g} kHz, {name:7s} high band: tail falls "
                  f"{tail_drop_db(speech, reverberant, y, rate, lo, hi):6.2f} dB; SI-SDR {si_sdr(x_band, ref):6.2f} -> "
                  f"{si_sdr(band(y, rate, lo, hi), ref):6.2f} dB")
    if args.figure is not None:
        _figure(args.figure, rate, {"input: speech in a room (RT60 0.6 s), 48 kHz": reverberant,
                                    "dereverberated, model path alone (band-limited)": outputs["without"][clip],
                                    "dereverberated, with the high band": outputs["with"][clip]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
