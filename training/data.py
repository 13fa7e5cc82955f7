"""Dry training corpus: synthetic speech (Debian TTS engines) and synthetic music.

Usage::

    python -m training.data build --hours 4 --seed 1 --out /work/data/corpus [--jobs 2]

Every clip is 16 kHz mono, 3..12 s, active level about -26 dBFS, with 0.1..0.3 s of
silence at both ends, stored as 16-bit FLAC under ``OUT/<split>/<kind>/<id>.flac``.
``OUT/manifest.jsonl`` has one JSON object per clip (see docs/INTERFACES.md) and
``OUT/versions.json`` the Debian package versions that produced the audio.

Determinism: the whole plan (split, kind, voice, target length of every clip) is drawn in
the parent process from ``default_rng([seed, index])``; each worker then renders clip
``index`` with ``default_rng([seed, index, 1])``. The TTS engines and fluidsynth are
deterministic programs, so the same seed gives byte-identical FLAC files and manifest
whatever ``--jobs`` is.

Speakers are held out per split (see :func:`voice_bank`): a voice used for test never
appears in train or val, so test numbers measure generalisation to unseen voices.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000
SPLITS = ("train", "val", "test")
SENTENCES_PATH = Path(__file__).with_name("sentences.txt")
SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
# The test split's music comes from a soundfont no training clip uses (Debian timgm6mb-soundfont), so
# the test set scores instruments the model has not heard, not FluidR3's samples.
HELD_OUT_SOUNDFONT = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
DEBIAN_PACKAGES = ("festival", "flite", "espeak-ng", "fluidsynth", "fluid-soundfont-gm", "timgm6mb-soundfont",
                   "festvox-kallpc16k", "festvox-kdlpc16k", "festvox-us-slt-hts")


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class CorpusConfig:
    """Knobs of the corpus builder (times in seconds, levels in dBFS)."""

    sample_rate: int = SAMPLE_RATE
    min_seconds: float = 3.0
    max_seconds: float = 12.0
    target_dbfs: float = -26.0
    edge_silence: tuple[float, float] = (0.1, 0.3)
    music_fraction: float = 0.15
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    # Speed perturbation (resampling) scales pitch, formants and tempo together: a cheap
    # way to widen the apparent vocal-tract-length distribution of the few TTS voices.
    speed_range: tuple[float, float] = (0.92, 1.08)
    # Rough speaking rate used to pick how much text to synthesise for a target length.
    chars_per_second: float = 14.0
    # Soundfonts that render the music: train and val clips use the first, test clips the second.
    soundfont: str = str(SOUNDFONT)
    test_soundfont: str = str(HELD_OUT_SOUNDFONT)

    def soundfont_for(self, split: str) -> Path:
        """The soundfont that renders ``split``'s music."""
        return Path(self.test_soundfont if split == "test" else self.soundfont)


@dataclass(frozen=True)
class VoiceSpec:
    """One TTS voice. ``name`` is what goes into the manifest's ``voice`` field."""

    source: str  # festival | flite | espeak
    name: str
    split: str
    gate: bool = False  # flite awb/rms/slt carry a hiss floor that must be gated


@dataclass(frozen=True)
class ClipPlan:
    """What the parent process decided about clip ``index``; rendered by a worker."""

    index: int
    seed: int
    split: str
    kind: str  # speech | music
    voice: VoiceSpec | None
    target_seconds: float
    out_dir: str


# --------------------------------------------------------------------------- voices

ESPEAK_ACCENT_SPLIT = {
    "en": "train", "en-us": "train", "en-gb-scotland": "train", "en-gb-x-rp": "train",
    "en-029": "train", "en-gb-x-gbclan": "val", "en-gb-x-gbcwmd": "test", "en-us-nyc": "test",
}
# espeak-ng voice variants that still sound like a (synthetic) human; the novelty ones
# (robots, whisper, croak, "Demonic") would teach the model nothing about real speech.
ESPEAK_VARIANTS = (
    "m1 m2 m3 m4 m5 m6 m7 m8 f1 f2 f3 f4 f5 klatt klatt2 klatt3 klatt4 klatt6 "
    "adam Alex Alicia Andrea Andy Annie antonio aunty belinda benjamin boris caleb david "
    "Denis ed edward Gene Hugo iven john linda max Michael Mike norbert paul pedro "
    "quincy rob robert shelby steph travis victor zac anika grandma grandpa"
).split()


def voice_bank() -> list[VoiceSpec]:
    """All voices with their split. Held-out voices: festival ked (test), flite rms (val),
    espeak accents en-gb-x-gbcwmd/en-us-nyc (test) and en-gb-x-gbclan (val)."""
    voices = [
        VoiceSpec("festival", "kal_diphone", "train"),
        VoiceSpec("festival", "cmu_us_slt_arctic_hts", "train"),
        VoiceSpec("festival", "ked_diphone", "test"),
        VoiceSpec("flite", "kal16", "train"),
        VoiceSpec("flite", "awb", "train", gate=True),
        VoiceSpec("flite", "slt", "train", gate=True),
        VoiceSpec("flite", "rms", "val", gate=True),
    ]
    for accent, split in ESPEAK_ACCENT_SPLIT.items():
        voices += [VoiceSpec("espeak", f"{accent}+{v}", split) for v in ESPEAK_VARIANTS]
    return voices


# Relative probability of each engine when drawing a speech clip: espeak has many more
# voices but sounds the least natural, so it does not get a share proportional to count.
SOURCE_WEIGHTS = {"festival": 0.3, "flite": 0.3, "espeak": 0.4}


def pick_voice(rng: np.random.Generator, split: str, voices: Sequence[VoiceSpec]) -> VoiceSpec:
    """Draw an engine (by SOURCE_WEIGHTS, among engines that have voices in ``split``),
    then a voice of that engine uniformly."""
    in_split = [v for v in voices if v.split == split]
    sources = sorted({v.source for v in in_split})
    w = np.array([SOURCE_WEIGHTS[s] for s in sources])
    source = sources[int(rng.choice(len(sources), p=w / w.sum()))]
    pool = [v for v in in_split if v.source == source]
    return pool[int(rng.integers(len(pool)))]


# --------------------------------------------------------------------------- level / trim


def frame_energy_db(x: np.ndarray, sample_rate: int, frame_ms: float = 10.0) -> np.ndarray:
    """Mean-square energy in dB (re full scale) of non-overlapping frames of ``x`` [n]."""
    n = max(1, int(sample_rate * frame_ms / 1000))
    m = len(x) // n
    if m == 0:
        return np.array([-120.0])
    fr = x[: m * n].reshape(m, n).astype(np.float64)
    return 10.0 * np.log10(np.mean(fr**2, axis=1) + 1e-12)


def active_level_db(x: np.ndarray, sample_rate: int) -> float:
    """Active speech level in dBFS (RMS of frames within 30 dB of the loud frames).

    A simplified ITU-T P.56: pauses would otherwise make slow talkers sound quieter and
    the normalisation would boost them."""
    e = frame_energy_db(x, sample_rate)
    thr = np.percentile(e, 95) - 30.0
    act = e[e > thr]
    return float(10.0 * np.log10(np.mean(10.0 ** (act / 10.0)) + 1e-12))


def normalize_level(x: np.ndarray, sample_rate: int, target_dbfs: float,
                    peak: float = 0.99) -> np.ndarray:
    """Scale ``x`` to ``target_dbfs`` active level, lowering the gain if it would clip."""
    gain = 10.0 ** ((target_dbfs - active_level_db(x, sample_rate)) / 20.0)
    pk = float(np.max(np.abs(x))) * gain
    if pk > peak:
        gain *= peak / pk
    return (x * gain).astype(np.float32)


def trim_and_pad(x: np.ndarray, sample_rate: int, rng: np.random.Generator,
                 edge: tuple[float, float], floor_db: float = 45.0) -> np.ndarray:
    """Cut leading/trailing silence (frames ``floor_db`` below the loudest) and pad each end
    with a random 0.1..0.3 s of digital silence; 5 ms fades avoid clicks at the cuts."""
    frame = sample_rate // 100
    e = frame_energy_db(x, sample_rate)
    on = np.flatnonzero(e > e.max() - floor_db)
    start, stop = on[0] * frame, min(len(x), (on[-1] + 1) * frame)
    y = x[start:stop].astype(np.float32).copy()
    fade = min(len(y) // 2, sample_rate // 200)
    if fade > 0:
        ramp = np.sin(np.linspace(0, np.pi / 2, fade, dtype=np.float32)) ** 2
        y[:fade] *= ramp
        y[-fade:] *= ramp[::-1]
    pre, post = (int(rng.uniform(*edge) * sample_rate) for _ in range(2))
    return np.concatenate([np.zeros(pre, np.float32), y, np.zeros(post, np.float32)])


def cut_at_pause(x: np.ndarray, sample_rate: int, max_seconds: float,
                 min_seconds: float) -> np.ndarray:
    """Shorten ``x`` to at most ``max_seconds`` by cutting at the quietest 10 ms frame in
    [min_seconds, max_seconds]: a pause between words/sentences, so no word is chopped."""
    if len(x) <= max_seconds * sample_rate:
        return x
    e = frame_energy_db(x, sample_rate)
    lo, hi = int(min_seconds * 100), int(max_seconds * 100) - 1
    # Prefer the latest of the near-quietest frames so the clip stays long.
    seg = e[lo:hi]
    cand = np.flatnonzero(seg <= max(seg.min() + 3.0, e.max() - 45.0))
    cut = (lo + int(cand[-1])) * (sample_rate // 100)
    return x[:cut]


# --------------------------------------------------------------------------- hiss gate


@dataclass(frozen=True)
class GateConfig:
    """Spectral noise gate settings (STFT at the signal's rate)."""

    n_fft: int = 512
    hop: int = 128
    quiet_fraction: float = 0.1  # quietest frames used to estimate the hiss spectrum
    oversubtract: float = 4.0  # gate bins whose smoothed power is below ~6 dB over the hiss
    range_db: float = 40.0  # max attenuation of gated bins
    smooth_frames: int = 9  # power smoothing before the decision (variance of noise bins)
    smooth_bins: int = 5
    release_frames: int = 4  # gain release so the gate does not flutter (musical noise)


def hiss_gate(x: np.ndarray, sample_rate: int, cfg: GateConfig = GateConfig()) -> np.ndarray:
    """Remove a stationary hiss floor from ``x`` [n] (any rate); returns [n] float32.

    The flite awb/rms/slt voices carry broadband hiss well under the speech. In the dry
    target it would be "room-less" noise the model has to reproduce, and it is audible in
    pauses, so we gate it. The hiss power spectrum N(f) is the mean power of the quietest
    ``quiet_fraction`` of STFT frames (pauses; the zero-padded edge frames excluded, they
    would underestimate N). The decision uses the power P smoothed over ``smooth_frames``
    frames x ``smooth_bins`` bins: raw noise bins fluctuate ~5 dB around N (Rayleigh)
    and overlapping frames/bins are correlated, so only a wide smoothing makes noise
    bins sit reliably under ``oversubtract * N``; then a spectral-subtraction gain
    ``max(1 - oversubtract * N / P, floor)`` closes reliably in pauses and stays ~1 on
    speech bins that are well above the hiss. A fast-attack / slow-release filter over
    frames keeps the gain from fluttering (musical noise).
    """
    from scipy.ndimage import uniform_filter
    from scipy.signal import istft, stft

    x = np.asarray(x, np.float64)
    n = len(x)
    _, _, z = stft(x, fs=sample_rate, nperseg=cfg.n_fft, noverlap=cfg.n_fft - cfg.hop,
                   window="hann", boundary="zeros", padded=True)
    p = np.abs(z) ** 2 + 1e-20
    frame_pow = p.sum(axis=0)
    edge = cfg.n_fft // cfg.hop
    inner = np.arange(edge, p.shape[1] - edge) if p.shape[1] > 2 * edge + 4 else np.arange(p.shape[1])
    k = max(4, int(cfg.quiet_fraction * len(inner)))
    quiet = inner[np.argsort(frame_pow[inner])[:k]]
    noise = p[:, quiet].mean(axis=1, keepdims=True)
    ps = uniform_filter(p, size=(cfg.smooth_bins, cfg.smooth_frames), mode="nearest")
    floor = 10.0 ** (-cfg.range_db / 10.0)
    g = np.sqrt(np.clip(1.0 - cfg.oversubtract * noise / ps, floor, 1.0))
    alpha = np.exp(-1.0 / max(1, cfg.release_frames))
    sm = np.empty_like(g)
    prev = g[:, 0]
    for t in range(g.shape[1]):
        prev = np.maximum(g[:, t], alpha * prev + (1 - alpha) * g[:, t])
        sm[:, t] = prev
    _, y = istft(z * sm, fs=sample_rate, nperseg=cfg.n_fft, noverlap=cfg.n_fft - cfg.hop,
                 window="hann", boundary=True)
    return y[:n].astype(np.float32)


# --------------------------------------------------------------------------- TTS engines


def _run(cmd: list[str], cwd: str) -> None:
    """Run a program (never through a shell); raise with its stderr on failure."""
    r = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       stdin=subprocess.DEVNULL, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({r.returncode}): {r.stderr.decode(errors='replace')[-500:]}")


def _read_mono(path: str) -> tuple[np.ndarray, int]:
    x, sr = sf.read(path, dtype="float32", always_2d=True)
    return x[:, 0], int(sr)


def synthesize(voice: VoiceSpec, text: str, rng: np.random.Generator,
               workdir: str) -> tuple[np.ndarray, int, dict]:
    """Speak ``text`` with ``voice``; returns (audio [n] float32 at its native rate, rate,
    params). The text always goes through a file, never a command line or shell."""
    txt = os.path.join(workdir, "text.txt")
    wav = os.path.join(workdir, "tts.wav")
    with open(txt, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    params: dict = {}
    if voice.source == "festival":
        stretch = round(float(rng.uniform(0.85, 1.2)), 3)
        params["duration_stretch"] = stretch
        _run(["text2wave", "-o", wav, "-eval", f"(voice_{voice.name})",
              "-eval", f"(Parameter.set 'Duration_Stretch {stretch})", txt], workdir)
    elif voice.source == "flite":
        stretch = round(float(rng.uniform(0.85, 1.2)), 3)
        params["duration_stretch"] = stretch
        _run(["flite", "-voice", voice.name, "--setf", f"duration_stretch={stretch}",
              "-f", txt, "-o", wav], workdir)
    elif voice.source == "espeak":
        pitch = int(rng.integers(25, 76))
        rate = int(rng.integers(130, 196))
        gap = int(rng.integers(0, 3))
        params.update(pitch=pitch, rate=rate, word_gap=gap)
        _run(["espeak-ng", "-v", voice.name, "-p", str(pitch), "-s", str(rate), "-g", str(gap),
              "-f", txt, "-w", wav], workdir)
    else:
        raise ValueError(f"unknown TTS source {voice.source!r}")
    x, sr = _read_mono(wav)
    return x, sr, params


def pick_text(rng: np.random.Generator, sentences: Sequence[str], n_chars: float) -> str:
    """Consecutive-looking run of random sentences with at least ``n_chars`` characters."""
    out: list[str] = []
    while sum(len(s) + 1 for s in out) < n_chars:
        out.append(sentences[int(rng.integers(len(sentences)))])
    return " ".join(out)


def render_speech(plan: ClipPlan, cfg: CorpusConfig, sentences: Sequence[str],
                  rng: np.random.Generator, workdir: str) -> tuple[np.ndarray, dict]:
    """Render one speech clip: TTS -> gate -> speed perturbation/resample -> length fit."""
    assert plan.voice is not None
    speed = float(rng.uniform(*cfg.speed_range))
    n_chars = plan.target_seconds * cfg.chars_per_second
    meta: dict = {}
    for _ in range(4):  # grow the text until the clip reaches min_seconds
        text = pick_text(rng, sentences, n_chars)
        x, sr, params = synthesize(plan.voice, text, rng, workdir)
        if plan.voice.gate:
            x = hiss_gate(x, sr)
        # Treat the audio as if it were recorded at sr*speed: faster and higher.
        y = soxr.resample(x, sr * speed, cfg.sample_rate, quality="HQ").astype(np.float32)
        meta = {"text": text, "speed": round(speed, 4), **params}
        if len(y) >= cfg.min_seconds * cfg.sample_rate:
            break
        n_chars *= 1.6
    # Cut at a pause near the planned length so the corpus hours match the plan.
    limit = min(plan.target_seconds, cfg.max_seconds - 2 * cfg.edge_silence[1])
    y = cut_at_pause(y, cfg.sample_rate, limit, min(cfg.min_seconds * 0.8, limit * 0.8))
    return y, meta


# --------------------------------------------------------------------------- music


def _vlq(n: int) -> bytes:
    """MIDI variable-length quantity."""
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    return bytes(reversed(out))


def midi_bytes(events: Iterable[tuple[int, bytes]], tempo_bpm: float, ppq: int = 480) -> bytes:
    """Standard MIDI file (format 0) from (absolute tick, raw message) events."""
    tempo_us = int(round(60e6 / tempo_bpm))
    evs = [(0, b"\xff\x51\x03" + tempo_us.to_bytes(3, "big"))]
    # Sort by tick; at equal ticks, note-offs (0x80) before note-ons to avoid stuck notes.
    evs += sorted(events, key=lambda e: (e[0], 0 if e[1][0] & 0xF0 != 0x90 else 1, e[1]))
    body = bytearray()
    last = 0
    for tick, msg in evs:
        body += _vlq(tick - last) + msg
        last = tick
    body += _vlq(0) + b"\xff\x2f\x00"
    header = b"MThd" + (6).to_bytes(4, "big") + (0).to_bytes(2, "big") + (1).to_bytes(2, "big") + ppq.to_bytes(2, "big")
    return header + b"MTrk" + len(body).to_bytes(4, "big") + bytes(body)


SCALES = {"major": [0, 2, 4, 5, 7, 9, 11], "minor": [0, 2, 3, 5, 7, 8, 10],
          "dorian": [0, 2, 3, 5, 7, 9, 10], "mixolydian": [0, 2, 4, 5, 7, 9, 10]}
PROGRESSIONS = [[0, 4, 5, 3], [0, 5, 3, 4], [0, 3, 4, 0], [1, 4, 0, 0], [0, 3, 0, 4], [5, 3, 0, 4], [0, 6, 5, 4]]
# GM programs (0-based): piano, electric piano, mallets, organ, guitars, strings, brass,
# reeds, pipes, harp -- acoustic-ish timbres that occur in rooms.
MELODY_PROGRAMS = [0, 1, 2, 4, 6, 8, 11, 12, 16, 19, 21, 22, 24, 25, 26, 40, 41, 42, 46, 56, 57, 60, 64, 65, 66, 68, 71, 73, 74, 79]
CHORD_PROGRAMS = [0, 1, 4, 16, 19, 24, 25, 46, 48, 49, 50, 52, 61, 89]
BASS_PROGRAMS = [32, 33, 34, 35, 42, 43, 58]


def compose_midi(rng: np.random.Generator, seconds: float) -> tuple[bytes, dict]:
    """Random tonal piece of about ``seconds``: melody + chords (+ bass, + drums sometimes).

    Returns (MIDI file bytes, description). Chords follow a common progression in a random
    key/mode; the melody is a random walk on the scale with chord tones on strong beats."""
    ppq = 480
    tempo = float(rng.uniform(60, 170))
    beats_total = int(np.ceil(seconds * tempo / 60.0))
    mode = list(SCALES)[int(rng.integers(len(SCALES)))]
    scale = SCALES[mode]
    root = int(rng.integers(48, 60))
    prog = PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))]
    beats_per_chord = int(rng.choice([2, 4, 4, 8]))
    solo_piano = rng.random() < 0.2
    mel_prog = 0 if solo_piano else int(rng.choice(MELODY_PROGRAMS))
    chd_prog = 0 if solo_piano else int(rng.choice(CHORD_PROGRAMS))
    with_bass = (not solo_piano) and rng.random() < 0.6
    with_drums = (not solo_piano) and rng.random() < 0.35
    arpeggio = rng.random() < 0.4
    ev: list[tuple[int, bytes]] = [(0, bytes([0xC0, mel_prog])), (0, bytes([0xC1, chd_prog]))]
    if with_bass:
        ev.append((0, bytes([0xC2, int(rng.choice(BASS_PROGRAMS))])))

    def note(ch: int, t0: float, dur: float, pitch: int, vel: int) -> None:
        a, b = int(t0 * ppq), int((t0 + dur) * ppq)
        pitch = int(np.clip(pitch, 21, 108))
        ev.append((a, bytes([0x90 | ch, pitch, vel])))
        ev.append((max(a + 1, b), bytes([0x80 | ch, pitch, 0])))

    def degree_pitch(deg: int, base: int) -> int:
        return base + 12 * (deg // 7) + scale[deg % 7]

    beat = 0.0
    chord_idx = 0
    while beat < beats_total:
        deg = prog[chord_idx % len(prog)]
        tones = [degree_pitch(deg + k, root) for k in (0, 2, 4)]
        vel = int(rng.integers(45, 85))
        if arpeggio:
            step = float(rng.choice([0.5, 1.0]))
            t = 0.0
            while t < beats_per_chord:
                note(1, beat + t, step * 1.5, tones[int(t / step) % 3], vel)
                t += step
        else:
            for p in tones:
                note(1, beat, beats_per_chord * 0.95, p, vel)
        if with_bass:
            note(2, beat, beats_per_chord * 0.9, tones[0] - 12, int(rng.integers(60, 95)))
        beat += beats_per_chord
        chord_idx += 1

    t = 0.0
    pos = int(rng.integers(7, 14))  # scale-degree index of the melody, one octave up
    while t < beats_total:
        dur = float(rng.choice([0.25, 0.5, 0.5, 1.0, 1.0, 1.5, 2.0]))
        if rng.random() < 0.12:  # rest
            t += dur
            continue
        pos = int(np.clip(pos + rng.choice([-2, -1, -1, 0, 1, 1, 2, 3, -3]), 5, 18))
        note(0, t, dur * float(rng.uniform(0.7, 1.0)), degree_pitch(pos, root), int(rng.integers(60, 115)))
        t += dur

    if with_drums:
        step = 0.5
        for k in range(int(beats_total / step)):
            tt = k * step
            if k % 2 == 0 and (k // 2) % 2 == 0:
                note(9, tt, 0.1, 36, 100)  # kick on 1, 3
            if k % 2 == 0 and (k // 2) % 2 == 1:
                note(9, tt, 0.1, 38, 90)  # snare on 2, 4
            note(9, tt, 0.05, 42, int(rng.integers(50, 80)))  # hi-hat eighths

    # Silent tail event so fluidsynth renders the release of the last notes.
    tail_tick = int((beats_total + 2 * tempo / 60.0) * ppq)
    ev.append((tail_tick, bytes([0xB0, 7, 100])))
    desc = {"tempo": round(tempo, 2), "mode": mode, "root": root, "melody_program": mel_prog,
            "chord_program": chd_prog, "bass": with_bass, "drums": with_drums, "arpeggio": arpeggio}
    return midi_bytes(ev, tempo, ppq), desc


def render_music(plan: ClipPlan, cfg: CorpusConfig, rng: np.random.Generator,
                 workdir: str) -> tuple[np.ndarray, dict]:
    """Compose and render one music clip with fluidsynth; reverb/chorus off (-R 0 -C 0)
    because any room in the "dry" audio would become an unremovable part of the target."""
    mid = os.path.join(workdir, "music.mid")
    wav = os.path.join(workdir, "music.wav")
    data, desc = compose_midi(rng, plan.target_seconds)
    with open(mid, "wb") as f:
        f.write(data)
    _run(["fluidsynth", "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.6", "-r", str(cfg.sample_rate),
          "-F", wav, str(cfg.soundfont_for(plan.split)), mid], workdir)
    x, sr = _read_mono(wav)
    if sr != cfg.sample_rate:
        x = soxr.resample(x, sr, cfg.sample_rate, quality="HQ").astype(np.float32)
    limit = min(plan.target_seconds, cfg.max_seconds - 2 * cfg.edge_silence[1])
    x = cut_at_pause(x, cfg.sample_rate, limit, min(cfg.min_seconds, limit * 0.8))
    return x, {"midi": desc}


# --------------------------------------------------------------------------- planning / build


def plan_corpus(hours: float, seed: int, out_dir: str, cfg: CorpusConfig,
                voices: Sequence[VoiceSpec]) -> list[ClipPlan]:
    """Draw split/kind/voice/length of clips until their target lengths sum to ``hours``."""
    plans: list[ClipPlan] = []
    total = 0.0
    i = 0
    while total < hours * 3600.0:
        rng = np.random.default_rng([seed, i])
        split = SPLITS[int(rng.choice(3, p=np.array(cfg.split_fractions)))]
        kind = "music" if rng.random() < cfg.music_fraction else "speech"
        voice = pick_voice(rng, split, voices) if kind == "speech" else None
        target = float(rng.uniform(cfg.min_seconds, cfg.max_seconds - 2 * cfg.edge_silence[1]))
        plans.append(ClipPlan(i, seed, split, kind, voice, target, out_dir))
        total += target
        i += 1
    return plans


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", s).strip("-")


def build_clip(plan: ClipPlan, cfg: CorpusConfig = CorpusConfig(),
               sentences: Sequence[str] | None = None) -> dict:
    """Render, normalise and write clip ``plan.index``; returns its manifest record."""
    if sentences is None:
        sentences = load_sentences()
    rng = np.random.default_rng([plan.seed, plan.index, 1])
    with tempfile.TemporaryDirectory(prefix="dereverb_clip_") as wd:
        if plan.kind == "speech":
            x, meta = render_speech(plan, cfg, sentences, rng, wd)
            source, voice = plan.voice.source, plan.voice.name  # type: ignore[union-attr]
        else:
            x, meta = render_music(plan, cfg, rng, wd)
            source, voice = "fluidsynth", cfg.soundfont_for(plan.split).stem
    x = trim_and_pad(x, cfg.sample_rate, rng, cfg.edge_silence)
    x = normalize_level(x, cfg.sample_rate, cfg.target_dbfs)
    cid = f"{plan.index:06d}_{source}_{_slug(voice)}"
    rel = f"{plan.split}/{plan.kind}/{cid}.flac"
    path = Path(plan.out_dir) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)
    sf.write(str(path), pcm, cfg.sample_rate, format="FLAC", subtype="PCM_16")
    return {"id": cid, "path": rel, "split": plan.split, "kind": plan.kind, "source": source,
            "voice": voice, "seconds": round(len(pcm) / cfg.sample_rate, 4), "index": plan.index, **meta}


def load_sentences(path: Path = SENTENCES_PATH) -> list[str]:
    """Non-empty lines of the sentence list."""
    return [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]


def debian_versions(packages: Sequence[str] = DEBIAN_PACKAGES) -> dict[str, str]:
    """Installed Debian versions (``dpkg-query -W``); missing packages map to ''."""
    out: dict[str, str] = {}
    for p in packages:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", p], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL)
        out[p] = r.stdout.decode().strip() if r.returncode == 0 else ""
    return out


def _worker(args: tuple[ClipPlan, CorpusConfig]) -> dict:
    # Re-reading the 300 KB sentence list per clip costs ~2 ms and keeps workers stateless.
    plan, cfg = args
    return build_clip(plan, cfg)


def check_tools(need_music: bool = True, cfg: CorpusConfig = CorpusConfig()) -> None:
    """Fail early with a clear message if an engine is missing."""
    tools = ["text2wave", "flite", "espeak-ng"] + (["fluidsynth"] if need_music else [])
    missing = [t for t in tools if shutil.which(t) is None]
    if need_music:
        missing += [font for font in dict.fromkeys((cfg.soundfont, cfg.test_soundfont)) if not Path(font).exists()]
    if missing:
        raise SystemExit(f"missing: {missing} (apt-get install festival festvox-kallpc16k festvox-kdlpc16k "
                         "festvox-us-slt-hts flite espeak-ng fluidsynth fluid-soundfont-gm timgm6mb-soundfont)")


def build_corpus(out: str, hours: float, seed: int, jobs: int = 2,
                 cfg: CorpusConfig = CorpusConfig(), progress: bool = True) -> list[dict]:
    """Build the whole corpus into ``out``; returns the manifest records (index order)."""
    from tqdm import tqdm

    check_tools(cfg=cfg)
    out_p = Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    plans = plan_corpus(hours, seed, str(out_p), cfg, voice_bank())
    tasks = [(p, cfg) for p in plans]
    records: list[dict] = []
    bar = tqdm(total=len(tasks), desc="corpus", unit="clip", disable=not progress)
    if jobs <= 1:
        for t in tasks:
            records.append(_worker(t))
            bar.update()
    else:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(jobs) as pool:
            for rec in pool.imap(_worker, tasks, chunksize=1):  # imap keeps index order
                records.append(rec)
                bar.update()
    bar.close()
    with open(out_p / "manifest.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    versions = {"debian": debian_versions(), "python": {"numpy": np.__version__, "soxr": soxr.__version__,
                "soundfile": sf.__version__}, "seed": seed, "hours": hours, "config": asdict(cfg)}
    with open(out_p / "versions.json", "w", encoding="utf-8") as f:
        json.dump(versions, f, indent=2, sort_keys=True)
        f.write("\n")
    return records


def summarize(records: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Hours per split and kind."""
    s: dict[str, dict[str, float]] = {}
    for r in records:
        d = s.setdefault(r["split"], {})
        d[r["kind"]] = d.get(r["kind"], 0.0) + r["seconds"] / 3600.0
    return s


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m training.data", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the dry corpus")
    b.add_argument("--hours", type=float, required=True, help="total hours incl. val/test")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", required=True)
    b.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args(argv)
    import time

    t0 = time.time()
    recs = build_corpus(a.out, a.hours, a.seed, a.jobs)
    dt = time.time() - t0
    print(f"built {len(recs)} clips in {dt:.1f} s ({dt / max(1, len(recs)):.3f} s/clip wall, jobs={a.jobs})")
    print(json.dumps(summarize(recs), indent=1))


if __name__ == "__main__":
    main()
