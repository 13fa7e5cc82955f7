"""Held-out evaluation of a dereverberation model against WPE baselines.

Usage::

    python -m training.evaluate --model models/NAME.onnx \\
        --corpus /work/data/corpus --rooms /work/data/rooms \\
        [--split test] [--count 96] [--seed 0] [--seconds 6] [--warmup 0] [--jobs 2] \\
        [--warm-seconds 12] [--warm-score-from 4] [--no-warm] \\
        [--out docs/eval/NAME.json] [--markdown docs/eval/NAME.md] [--no-baselines] [--no-dnsmos] [--rate 16000]

``--rate`` above 16000 (e.g. 48000, with a corpus and rooms rendered at that rate by
``python -m training.fullband``) scores the same test-set plan at that stream rate, per band: see
:func:`training.fullband.evaluate_at_rate`. Everything below describes the 16 kHz evaluation.

Test set (deterministic for a given corpus, rooms, split, count, seed, seconds and warmup):

* ``reverb``: speech clips of the split's (held-out) voices through the split's rooms with
  :func:`training.mixing.make_example` (noise and microphone EQ on, as in training; only the
  5 % "anechoic" replacement is switched off so that every example really is reverberant).
  Rooms are drawn round-robin over the RT60 bins (< 0.4 s, 0.4-0.8 s, > 0.8 s) so every
  bin gets about the same number of examples; speakers (espeak variants grouped by accent)
  are drawn round-robin too.
* ``dry``: the dry speech clip itself is the input (a dereverberator should leave it alone).
* ``music``: the split's music clips through the split's rooms (same mixing as speech).

Each input is processed by every system: ``unprocessed`` (identity), ``ours`` (the ONNX model
through the real runtime, :func:`stream.dereverb_array`, time-aligned), ``wpe_online`` and
``wpe_offline`` (nara-wpe, see :mod:`training.metrics`). Metrics, all at 16 kHz:

* reverb: SI-SDR vs the direct path and vs the early-50 ms target, and their improvement over
  the input (paired per example); PESQ-WB and ESTOI vs early-50 (and their change);
  DNSMOS OVRL/SIG/BAK of the output; the input's values are the ``unprocessed`` row.
* dry: SI-SDR, PESQ-WB and ESTOI of the output vs the input; DNSMOS of the output.
* music: SI-SDR vs early-50 and vs direct, input -> output (PESQ/ESTOI/DNSMOS are speech metrics).
* a "direct-path reference" row gives the DNSMOS of the direct-path target (a ceiling).

Every example starts from a fresh system state (cold start) unless ``--warmup S``: then S
seconds of other audio (same speaker group / other music, same room and mixing) are
processed first and not scored, which measures the steady state of adaptive systems
(online WPE needs 1-2 s to converge; it loses several dB in a cold 6 s example).

Warm streams (on unless ``--no-warm``): users stream for minutes, and an adaptive system (online
WPE, a late-reverberation predictor) learns the room within seconds, which a cold clip never shows.
For every reverberant speech example, a ``--warm-seconds`` stream (12 s) of the same talker's
held-out speech through the same room is built (:func:`build_warm_stream`: the example's utterance
whole, then the talker's other held-out utterances, 0.2-0.8 s pauses between them, reverberated as
one signal so the room's tail carries across the joins; the training mixing, as for the cold clip).
Every system processes the stream in one pass from its rest state; the metrics above (SI-SDR vs
early-50 and direct, PESQ-WB, ESTOI; no DNSMOS) are taken on the part after ``--warm-score-from``
seconds (4 s). How fast the gain comes is measured on the whole stream (:func:`windowed_gain`,
:func:`time_to_gain`): the dSI-SDR gain over the input in 1 s windows every 0.5 s, its plateau
(median over the windows in the stream's second half) and the start of the first window whose gain
(running median over three windows) reaches 90 % of that plateau; per RT60 bin the median of that
time over examples, and the median curve. A system without adaptation (a mask network) reads about 0 s. The JSON gets a ``warm``
section (config and per-bin summary), the Markdown a warm table after the cold one.

Examples are split into ``--jobs`` interleaved shards, one worker process each (one
thread per worker for numpy/onnxruntime, so RTFs are single-threaded figures measured
while the other workers run). Results: JSON (config, per-example records, per-group means
and counts, timings) and a Markdown table, which is also printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 16000
RT60_BINS: tuple[tuple[str, float, float], ...] = (
    ("rt60<0.4", 0.0, 0.4),
    ("rt60 0.4-0.8", 0.4, 0.8),
    ("rt60>0.8", 0.8, math.inf),
)
SYSTEMS_ORDER = ("unprocessed", "ours", "wpe_online", "wpe_offline")
SHORT_RT60 = 0.3  # below it the no-damage target applies (check_targets)
SHORT_GROUP = "rt60<0.3"
PASSTHROUGH = "passthrough"  # --model value that makes "ours" the identity (pipeline check)
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


# --------------------------------------------------------------------------------------
# Configuration and test-set plan
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalConfig:
    """Everything that defines an evaluation run (stored verbatim in the JSON)."""

    corpus: str = "/work/data/corpus"
    rooms: str = "/work/data/rooms"
    model: str | None = None  # .onnx path, "passthrough", or None (no "ours" system)
    split: str = "test"
    count: int = 96  # total examples: reverb + dry + music
    seed: int = 0
    seconds: float = 6.0  # maximum scored length of one example (shorter clips are used whole)
    # Seconds of other audio (same speaker, or other music; same room, same mixing) run through
    # every system before the scored part and then discarded. 0 = cold start: each example
    # starts from a fresh state, which is what an application sees in its first seconds;
    # > 0 measures the steady state of adaptive/streaming systems (online WPE needs ~1-2 s).
    warmup: float = 0.0
    dry_fraction: float = 0.125
    music_fraction: float = 0.125
    baselines: bool = True
    dnsmos: bool = True
    jobs: int = 2
    # Warm streams (module docstring): length and scored start, seconds; the windowed gain's window
    # and hop, seconds, and the share of the plateau whose time of arrival is reported.
    warm: bool = True
    warm_seconds: float = 12.0
    warm_score_from: float = 4.0
    warm_window: float = 1.0
    warm_hop: float = 0.5
    warm_fraction: float = 0.9


@dataclass(frozen=True)
class ExampleSpec:
    """One planned test example; everything a worker needs to rebuild it deterministically."""

    index: int
    kind: str  # "reverb" | "dry" | "music"
    clip_id: str
    clip_path: str  # absolute
    voice: str
    room_id: str | None
    room_path: str | None  # absolute
    rt60: float | None
    drr_db: float | None
    seed: int  # per-example seed for crop and mixing augmentations
    warmup_path: str | None = None  # absolute path of the clip that precedes it (--warmup)
    # Reverb examples: the talker's held-out clips for the warm stream, absolute paths in stream
    # order: this example's clip, the same voice's other clips, then its speaker group's.
    stream_paths: tuple[str, ...] = ()


def rt60_bin(rt60: float) -> str:
    """Name of the RT60 bin (seconds) an example belongs to."""
    for name, lo, hi in RT60_BINS:
        if lo <= rt60 < hi:
            return name
    return RT60_BINS[-1][0]


def speaker_key(clip: dict[str, Any]) -> str:
    """Speaker group of a manifest record: the voice, without an espeak variant suffix.

    espeak "voices" such as ``en-us-nyc+m3`` are one accent model with a variant (pitch,
    formant) tweak; grouping by the accent keeps one festival voice from being outweighed
    by dozens of near-identical espeak variants.
    """
    return f"{clip.get('source', '')}:{str(clip.get('voice') or '').split('+')[0]}"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _round_robin(groups: Sequence[Sequence[Any]], n: int) -> list[Any]:
    """Take ``n`` items cycling over ``groups`` (each cycled in its own order, wrapping)."""
    groups = [g for g in groups if len(g)]
    if not groups or n <= 0:
        return []
    pos = [0] * len(groups)
    out = []
    k = 0
    while len(out) < n:
        g = k % len(groups)
        out.append(groups[g][pos[g] % len(groups[g])])
        pos[g] += 1
        k += 1
    return out


def plan_examples(cfg: EvalConfig) -> list[ExampleSpec]:
    """Deterministic list of test examples for ``cfg`` (see module docstring).

    Raises:
        FileNotFoundError / ValueError if the corpus or rooms lack the requested split.
    """
    corpus, rooms_dir = Path(cfg.corpus), Path(cfg.rooms)
    clips = [c for c in _read_jsonl(corpus / "manifest.jsonl") if c.get("split") == cfg.split]
    rooms = [r for r in _read_jsonl(rooms_dir / "rooms.jsonl") if r.get("split") == cfg.split]
    speech = sorted((c for c in clips if c.get("kind") == "speech"), key=lambda c: c["id"])
    music = sorted((c for c in clips if c.get("kind") == "music"), key=lambda c: c["id"])
    rooms = sorted(rooms, key=lambda r: r["id"])
    if not speech:
        raise ValueError(f"no {cfg.split!r} speech clips in {corpus / 'manifest.jsonl'}")
    if not rooms:
        raise ValueError(f"no {cfg.split!r} rooms in {rooms_dir / 'rooms.jsonl'}")

    rng = np.random.default_rng(cfg.seed)
    n_dry = int(round(cfg.count * cfg.dry_fraction))
    n_music = int(round(cfg.count * cfg.music_fraction)) if music else 0
    n_reverb = max(0, cfg.count - n_dry - n_music)

    # Speakers round-robin (shuffled order), clips within a speaker shuffled: spreads the few
    # held-out speakers evenly instead of letting the most prolific one dominate.
    by_voice: dict[str, list[dict]] = {}
    for c in speech:
        by_voice.setdefault(speaker_key(c), []).append(c)
    voice_order = sorted(by_voice)
    rng.shuffle(voice_order)
    voice_lists = []
    for v in voice_order:
        lst = list(by_voice[v])
        rng.shuffle(lst)
        voice_lists.append(lst)
    speech_seq = _round_robin(voice_lists, n_reverb + n_dry)

    by_bin: dict[str, list[dict]] = {name: [] for name, _, _ in RT60_BINS}
    for r in rooms:
        by_bin[rt60_bin(float(r["rt60"]))].append(r)
    bin_lists = []
    for name, _, _ in RT60_BINS:
        lst = list(by_bin[name])
        rng.shuffle(lst)
        bin_lists.append(lst)
    room_seq = _round_robin(bin_lists, n_reverb + n_music)
    music_seq = list(music)
    rng.shuffle(music_seq)

    seeds = rng.integers(0, 2**31 - 1, size=cfg.count + 1)
    specs: list[ExampleSpec] = []

    def add(kind: str, clip: dict, room: dict | None) -> None:
        i = len(specs)
        specs.append(ExampleSpec(
            index=i, kind=kind, clip_id=str(clip["id"]), clip_path=str(corpus / clip["path"]),
            voice=str(clip.get("voice") or clip.get("source") or ""),
            room_id=None if room is None else str(room["id"]),
            room_path=None if room is None else str(rooms_dir / room["path"]),
            rt60=None if room is None else float(room["rt60"]),
            drr_db=None if room is None or room.get("drr_db") is None else float(room["drr_db"]),
            seed=int(seeds[i]),
        ))

    for k in range(n_reverb):
        add("reverb", speech_seq[k], room_seq[k])
    for k in range(n_dry):
        add("dry", speech_seq[n_reverb + k], None)
    for k in range(n_music):
        add("music", music_seq[k % len(music_seq)], room_seq[n_reverb + k])

    # Warm-up clips come from their own generator so that the plan above does not depend
    # on whether --warmup is used: same speaker group (speech) or any other music clip.
    wrng = np.random.default_rng([cfg.seed, 1])
    groups = {speaker_key(c): [str(corpus / x["path"]) for x in by_voice[speaker_key(c)]] for c in speech}
    music_paths = [str(corpus / c["path"]) for c in music]
    speech_paths = [str(corpus / c["path"]) for c in speech]
    out = []
    for sp in specs:
        if sp.kind == "music":
            pools = [music_paths]
        else:
            pools = [next(g for g in groups.values() if sp.clip_path in g), speech_paths]
        # another clip of the same kind (same speaker if possible); itself only as a last resort
        others = next((o for o in ([p for p in pool if p != sp.clip_path] for pool in pools) if o), [sp.clip_path])
        out.append(dataclasses.replace(sp, warmup_path=others[int(wrng.integers(len(others)))]))

    # Warm-stream clips, also from their own generator (the cold plan stays as it is).
    srng = np.random.default_rng([cfg.seed, 2])
    by_path = {str(corpus / c["path"]): c for c in speech}
    for k, sp in enumerate(out):
        if sp.kind != "reverb":
            continue
        clip = by_path[sp.clip_path]
        same_voice = [str(corpus / c["path"]) for c in by_voice[speaker_key(clip)]
                      if c.get("voice") == clip.get("voice") and str(corpus / c["path"]) != sp.clip_path]
        same_group = [str(corpus / c["path"]) for c in by_voice[speaker_key(clip)]
                      if c.get("voice") != clip.get("voice")]
        srng.shuffle(same_voice)
        srng.shuffle(same_group)
        out[k] = dataclasses.replace(sp, stream_paths=(sp.clip_path, *same_voice, *same_group))
    return out


# --------------------------------------------------------------------------------------
# Building one example
# --------------------------------------------------------------------------------------
def _read_audio(path: str, rate: int = SAMPLE_RATE) -> np.ndarray:
    """First channel of an audio file, float32 [n]; raises ValueError unless it is at ``rate`` Hz."""
    import soundfile as sf

    x, sr = sf.read(path, dtype="float32", always_2d=True)
    if sr != rate:
        raise ValueError(f"{path}: expected {rate} Hz, got {sr}")
    return x[:, 0]


def build_example(spec: ExampleSpec, seconds: float, warmup: float = 0.0, rate: int = SAMPLE_RATE) -> dict[str, Any]:
    """Rebuild ``spec`` from clips and a RIR at ``rate`` Hz (the mixing at that rate too).

    Returns ``{"input", "early", "direct": float32 [n], "score_from": int, "info": dict}``:
    systems process all ``n`` samples; metrics use ``[score_from:]`` only (``score_from`` =
    the warm-up length, 0 without warm-up).

    Clips longer than ``seconds`` are cropped at a seeded random offset; the reverb is
    computed on the clip up to the crop end, so the crop starts with the real reverberant
    tail of the preceding speech (``valid_from`` makes mixing measure levels on the crop).
    With ``warmup`` > 0 the last ``warmup`` seconds of ``spec.warmup_path`` are put in front
    (through the same room and augmentations), as if the stream had been running already.
    """
    from training.mixing import MixConfig, make_example

    rng = np.random.default_rng(spec.seed)
    dry = _read_audio(spec.clip_path, rate)
    seg = int(round(seconds * rate))
    start = int(rng.integers(0, len(dry) - seg + 1)) if len(dry) > seg else 0
    stop = min(len(dry), start + seg)
    n_warm = int(round(warmup * rate))
    if n_warm > 0:
        if spec.warmup_path is None:
            raise ValueError("warm-up requested but the example has no warm-up clip")
        warm = _read_audio(spec.warmup_path, rate)
        if len(warm) < n_warm:  # tile short clips; the exact content only has to be plausible
            warm = np.tile(warm, int(np.ceil(n_warm / max(1, len(warm)))))
        dry = np.concatenate([warm[-n_warm:], dry[start:stop]])
        start, stop = n_warm, n_warm + (stop - start)
    if spec.kind == "dry":
        x = dry[start - n_warm : stop].astype(np.float32)
        return {"input": x, "early": x, "direct": x, "score_from": n_warm, "info": {"crop_start": start}}
    import soundfile as sf

    rir, sr = sf.read(spec.room_path, dtype="float32", always_2d=True)
    if sr != rate:
        raise ValueError(f"{spec.room_path}: expected {rate} Hz, got {sr}")
    # Training's augmentations (level, EQ, noise) stay on; only the anechoic substitution is
    # off, because every reverb/music test example must actually be reverberant.
    mix_cfg = dataclasses.replace(MixConfig(), anechoic_prob=0.0, sample_rate=rate)
    ex = make_example(dry[:stop], rir[:, 0], rng, mix_cfg, info={"rt60": spec.rt60}, valid_from=start)
    info = {k: v for k, v in ex.info.items() if isinstance(v, (int, float, str, bool))}
    info["crop_start"] = start
    lo = start - n_warm
    return {"input": ex.mixture[lo:stop], "early": ex.early[lo:stop], "direct": ex.direct[lo:stop],
            "score_from": n_warm, "info": info}


WARM_PAUSE_SECONDS = (0.2, 0.8)  # silence between the utterances of a warm stream (uniform)


def build_warm_stream(spec: ExampleSpec, seconds: float, score_from: float) -> dict[str, Any]:
    """The warm stream of reverberant example ``spec``: ``seconds`` of its talker's held-out speech
    through its room.

    The dry stream is ``spec.stream_paths`` in order (this example's clip whole first), cycled if
    they are too short, with a seeded pause of ``WARM_PAUSE_SECONDS`` of digital silence after each
    utterance, cut to ``seconds``. It is reverberated as one signal with the room's RIR and the
    training mixing (level, EQ and noise drawn once for the stream; no anechoic replacement), so the
    reverberant tail of one utterance runs into the pause and the next.

    Returns ``{"input", "early", "direct", "dry": float32 [n], "score_from": int (samples), "info":
    dict}`` with ``n = seconds * 16000``; metrics use ``[score_from:]``, the time-to-gain measure
    the whole stream. ``info`` names the clips (``clips``, their start ``clip_starts`` in samples)
    and the room."""
    from training.mixing import MixConfig, make_example

    if spec.kind != "reverb" or not spec.stream_paths:
        raise ValueError(f"example {spec.index} ({spec.kind}) has no warm stream")
    if not 0.0 <= score_from < seconds:
        raise ValueError(f"warm scored start {score_from} s must lie in [0, {seconds}) s")
    rng = np.random.default_rng([spec.seed, 2])
    n = int(round(seconds * SAMPLE_RATE))
    parts: list[np.ndarray] = []
    clips: list[str] = []
    starts: list[int] = []
    total, k = 0, 0
    while total < n:
        path = spec.stream_paths[k % len(spec.stream_paths)]
        x = _read_audio(path)
        pause = np.zeros(int(round(rng.uniform(*WARM_PAUSE_SECONDS) * SAMPLE_RATE)), np.float32)
        clips.append(path)
        starts.append(total)
        parts += [x, pause]
        total += len(x) + len(pause)
        k += 1
    dry = np.concatenate(parts)[:n]
    import soundfile as sf

    rir, sr = sf.read(spec.room_path, dtype="float32", always_2d=True)
    if sr != SAMPLE_RATE:
        raise ValueError(f"{spec.room_path}: expected {SAMPLE_RATE} Hz, got {sr}")
    mix_cfg = dataclasses.replace(MixConfig(), anechoic_prob=0.0)
    ex = make_example(dry, rir[:, 0], rng, mix_cfg, info={"rt60": spec.rt60})
    info = {k: v for k, v in ex.info.items() if isinstance(v, (int, float, str, bool))}
    info.update(room=spec.room_id, clips=[Path(c).name for c in clips], clip_starts=starts)
    return {"input": ex.mixture, "early": ex.early, "direct": ex.direct, "dry": dry.astype(np.float32),
            "score_from": int(round(score_from * SAMPLE_RATE)), "info": info}


def windowed_gain(y: np.ndarray, x: np.ndarray, ref: np.ndarray, window: float = 1.0, hop: float = 0.5,
                  min_rel_db: float = -10.0) -> tuple[np.ndarray, np.ndarray]:
    """The SI-SDR gain of output ``y`` over input ``x`` against ``ref`` in consecutive windows.

    ``y``, ``x``, ``ref``: float [n] at 16 kHz, aligned. Windows are ``window`` seconds long, start
    every ``hop`` seconds from 0, and all lie inside the signal. Returns ``(starts, gains)``, both
    float [k]: the window starts in seconds and ``si_sdr(y_w, ref_w) - si_sdr(x_w, ref_w)`` in dB.
    A window whose reference energy is more than ``-min_rel_db`` dB below the reference's mean
    energy per window (a pause) has no meaningful SI-SDR and gets NaN."""
    from training.metrics import si_sdr

    w, h = int(round(window * SAMPLE_RATE)), int(round(hop * SAMPLE_RATE))
    if w <= 0 or h <= 0:
        raise ValueError("window and hop must be positive")
    n = min(len(y), len(x), len(ref))
    k = 0 if n < w else (n - w) // h + 1
    starts = np.arange(k) * h
    energy = np.array([np.sum(np.square(ref[s:s + w], dtype=np.float64)) for s in starts])
    floor = np.mean(energy) * 10 ** (min_rel_db / 10) if k else 0.0
    gains = np.full(k, np.nan)
    for i, s in enumerate(starts):
        if energy[i] > floor and energy[i] > 0:
            gains[i] = si_sdr(y[s:s + w], ref[s:s + w]) - si_sdr(x[s:s + w], ref[s:s + w])
    return starts / SAMPLE_RATE, gains


def time_to_gain(starts: np.ndarray, gains: np.ndarray, plateau_from: float, fraction: float = 0.9,
                 min_plateau_db: float = 0.1) -> tuple[float | None, float | None]:
    """How many seconds a stream takes to reach ``fraction`` of its final gain.

    ``starts``, ``gains``: float [k], a :func:`windowed_gain` curve (seconds, dB; NaN = pause).
    The plateau is the median gain of the windows starting at or after ``plateau_from`` seconds.
    The curve is smoothed by a running median over three neighbouring windows (pauses left out), so
    that one window of unusual content (an onset, a word's end into a pause) neither triggers nor
    delays the answer on its own. The time is the start of the first window (from 0) whose smoothed
    gain is at least ``fraction`` times the plateau: 0 means the first window already has it; the
    window length is the resolution. Returns ``(seconds, plateau_db)``; seconds is None when the
    plateau is below ``min_plateau_db`` (no gain to reach) or the smoothed curve never reaches it,
    and both are None without a valid late window. A plateau of a few tenths of a dB is within the
    window-to-window spread of the gain, so its time says little: read the time with its plateau."""
    starts, gains = np.asarray(starts, float), np.asarray(gains, float)
    late = gains[(starts >= plateau_from - 1e-9) & np.isfinite(gains)]
    if late.size == 0:
        return None, None
    plateau = float(np.median(late))
    if plateau < min_plateau_db:
        return None, plateau
    smooth = np.full(len(gains), np.nan)
    for i in range(len(gains)):
        near = gains[max(0, i - 1):i + 2]
        if np.isfinite(gains[i]) and np.isfinite(near).any():
            smooth[i] = np.median(near[np.isfinite(near)])
    hit = np.flatnonzero(np.isfinite(smooth) & (smooth >= fraction * plateau))
    return (float(starts[hit[0]]) if hit.size else None), plateau


# --------------------------------------------------------------------------------------
# Worker: systems and metrics
# --------------------------------------------------------------------------------------
class Evaluator:
    """Holds the per-process state (loaded model, DNSMOS sessions) and scores examples."""

    def __init__(self, cfg: EvalConfig) -> None:
        from training import metrics

        self.cfg = cfg
        self.m = metrics
        self.scorer = metrics.DnsmosScorer(threads=1) if cfg.dnsmos else None
        self.systems: dict[str, Callable[[np.ndarray], np.ndarray]] = {"unprocessed": lambda x: x}
        if cfg.model == PASSTHROUGH:
            self.systems["ours"] = lambda x: x.copy()
        elif cfg.model:
            self.systems["ours"] = self._load_ours(cfg.model)
        if cfg.baselines:
            self.systems["wpe_online"] = metrics.wpe_online
            self.systems["wpe_offline"] = metrics.wpe_offline
        self.metric_time: dict[str, list[float]] = {}

    @staticmethod
    def _load_ours(path: str) -> Callable[[np.ndarray], np.ndarray]:
        import stream

        # Load the ONNX model once per worker when the runtime exposes its loader; the
        # public contract (stream.dereverb_array(x, sr, model=PATH)) is the fallback.
        model: Any = path
        loader = getattr(getattr(stream, "StepModel", None), "load", None)
        if loader is not None:
            model = loader(path)

        def run(x: np.ndarray) -> np.ndarray:
            y = np.asarray(stream.dereverb_array(x, SAMPLE_RATE, model=model), dtype=np.float32)
            if y.shape != x.shape:
                raise RuntimeError(f"runtime returned shape {y.shape} for input {x.shape}")
            return y

        return run

    def _t(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        t0 = time.perf_counter()
        v = fn(*args)
        self.metric_time.setdefault(name, []).append(time.perf_counter() - t0)
        return v

    def _dnsmos(self, x: np.ndarray) -> dict[str, float]:
        if self.scorer is None:
            return {}
        d = self._t("dnsmos", self.scorer, x, SAMPLE_RATE)
        return {"dnsmos_ovrl": d["OVRL"], "dnsmos_sig": d["SIG"], "dnsmos_bak": d["BAK"]}

    def score(self, spec: ExampleSpec) -> dict[str, Any]:
        """Process one example with every system; returns its JSON-able record."""
        m = self.m
        ex = build_example(spec, self.cfg.seconds, self.cfg.warmup)
        x_all = ex["input"]
        s0 = int(ex["score_from"])
        x, early, direct = x_all[s0:], ex["early"][s0:], ex["direct"][s0:]
        rec: dict[str, Any] = {
            "index": spec.index, "kind": spec.kind, "clip": spec.clip_id, "voice": spec.voice,
            "room": spec.room_id, "rt60": spec.rt60, "drr_db": spec.drr_db,
            "bin": spec.kind if spec.kind != "reverb" else rt60_bin(float(spec.rt60)),
            "seconds": len(x) / SAMPLE_RATE, "processed_seconds": len(x_all) / SAMPLE_RATE,
            "mix": ex["info"], "systems": {},
        }
        for name, fn in self.systems.items():
            t0 = time.perf_counter()
            y_all = np.asarray(fn(x_all), dtype=np.float32)
            proc = time.perf_counter() - t0
            if y_all.shape != x_all.shape:
                raise RuntimeError(f"{name} returned shape {y_all.shape} for input {x_all.shape}")
            if not np.all(np.isfinite(y_all)):
                raise RuntimeError(f"{name} produced non-finite samples on example {spec.index}")
            y = y_all[s0:]
            r: dict[str, float] = {"proc_seconds": proc}
            if spec.kind == "reverb":
                r["si_sdr_direct"] = self._t("si_sdr", m.si_sdr, y, direct)
                r["si_sdr_early"] = self._t("si_sdr", m.si_sdr, y, early)
                r["pesq"] = self._t("pesq", m.pesq_wb, early, y, SAMPLE_RATE)
                r["estoi"] = self._t("estoi", m.estoi, early, y, SAMPLE_RATE)
                r.update(self._dnsmos(y))
            elif spec.kind == "dry":
                r["si_sdr_input"] = self._t("si_sdr", m.si_sdr, y, x)
                r["pesq"] = self._t("pesq", m.pesq_wb, x, y, SAMPLE_RATE)
                r["estoi"] = self._t("estoi", m.estoi, x, y, SAMPLE_RATE)
                r.update(self._dnsmos(y))
            else:  # music
                r["si_sdr_direct"] = self._t("si_sdr", m.si_sdr, y, direct)
                r["si_sdr_early"] = self._t("si_sdr", m.si_sdr, y, early)
            rec["systems"][name] = r
        if spec.kind == "reverb" and self.scorer is not None:
            # DNSMOS ceiling: the (EQ'd, noise-free) direct-path reference itself.
            rec["reference_dnsmos"] = self._dnsmos(direct)
        _paired_deltas(rec["systems"])
        if spec.kind == "reverb" and self.cfg.warm:
            rec["warm"] = self.score_warm(spec)
        return rec

    def score_warm(self, spec: ExampleSpec) -> dict[str, Any]:
        """The warm-stream record of reverberant example ``spec`` (module docstring): scored metrics
        after ``warm_score_from``, and per system the windowed gain curves vs early-50 and direct
        with their plateau and time to ``warm_fraction`` of it."""
        cfg, m = self.cfg, self.m
        ex = build_warm_stream(spec, cfg.warm_seconds, cfg.warm_score_from)
        x, s0 = ex["input"], int(ex["score_from"])
        early, direct = ex["early"], ex["direct"]
        rec: dict[str, Any] = {"seconds": len(x) / SAMPLE_RATE, "score_from": s0 / SAMPLE_RATE,
                               "mix": ex["info"], "systems": {}}
        for name, fn in self.systems.items():
            t0 = time.perf_counter()
            y = np.asarray(fn(x), dtype=np.float32)
            proc = time.perf_counter() - t0
            if y.shape != x.shape or not np.all(np.isfinite(y)):
                raise RuntimeError(f"{name} returned a bad output on the warm stream of example {spec.index}")
            r: dict[str, Any] = {"proc_seconds": proc}
            r["si_sdr_direct"] = self._t("si_sdr", m.si_sdr, y[s0:], direct[s0:])
            r["si_sdr_early"] = self._t("si_sdr", m.si_sdr, y[s0:], early[s0:])
            r["pesq"] = self._t("pesq", m.pesq_wb, early[s0:], y[s0:], SAMPLE_RATE)
            r["estoi"] = self._t("estoi", m.estoi, early[s0:], y[s0:], SAMPLE_RATE)
            if name != "unprocessed":
                for ref_name, ref in (("early", early), ("direct", direct)):
                    starts, gains = windowed_gain(y, x, ref, cfg.warm_window, cfg.warm_hop)
                    t, plateau = time_to_gain(starts, gains, len(x) / SAMPLE_RATE / 2, cfg.warm_fraction)
                    r[f"window_gain_{ref_name}"] = gains.tolist()
                    r[f"plateau_{ref_name}"] = plateau
                    r[f"t_reach_{ref_name}"] = t
                rec["window_starts"] = starts.tolist()
            rec["systems"][name] = r
        _paired_deltas(rec["systems"])
        return rec


def _paired_deltas(systems: dict[str, dict[str, Any]]) -> None:
    """Add ``d_<metric>``: each system's improvement over the input on the same example and reference."""
    base = systems["unprocessed"]
    for r in systems.values():
        for key in ("si_sdr_direct", "si_sdr_early", "pesq", "estoi", "dnsmos_ovrl"):
            if key in r and key in base:
                r["d_" + key] = r[key] - base[key]


def _set_single_thread_env() -> None:
    for var in _THREAD_VARS:
        os.environ[var] = "1"


def _run_shard(args: tuple[EvalConfig, list[ExampleSpec], int]) -> tuple[list[dict], dict[str, list[float]], float]:
    """Worker entry point: score one shard of examples (runs in a fresh spawned process)."""
    cfg, specs, shard = args
    t0 = time.perf_counter()
    ev = Evaluator(cfg)
    setup = time.perf_counter() - t0
    out = []
    for k, spec in enumerate(specs, 1):
        out.append(ev.score(spec))
        if k % 5 == 0 or k == len(specs):
            print(f"  [worker {shard}] {k}/{len(specs)} examples", file=sys.stderr, flush=True)
    return out, ev.metric_time, setup


# --------------------------------------------------------------------------------------
# Aggregation and reporting
# --------------------------------------------------------------------------------------
def _mean(values: list[float]) -> float | None:
    v = [x for x in values if x is not None and np.isfinite(x)]
    return float(np.mean(v)) if v else None


def aggregate(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Means per group and system: ``{group: {system: {"n": int, metric: mean, ...}}}``.

    Groups are the RT60 bins, ``all_reverb`` (all reverberant speech), ``rt60<0.3`` (the short rooms
of the no-damage target, a subset of the first bin), ``dry`` and ``music``.
    NaN/None values (e.g. PESQ found no utterance) are left out of the mean of that metric.
    """
    groups: dict[str, list[dict]] = {}
    for rec in records:
        groups.setdefault(rec["bin"], []).append(rec)
        if rec["kind"] == "reverb":
            groups.setdefault("all_reverb", []).append(rec)
            if rec.get("rt60") is not None and rec["rt60"] < SHORT_RT60:
                groups.setdefault(SHORT_GROUP, []).append(rec)
    order = [b for b, _, _ in RT60_BINS] + ["all_reverb", SHORT_GROUP, "dry", "music"]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for g in order:
        recs = groups.get(g, [])
        if not recs:
            continue
        systems = [s for s in SYSTEMS_ORDER if s in recs[0]["systems"]]
        out[g] = {}
        for s in systems:
            keys = sorted({k for r in recs for k in r["systems"][s]})
            row: dict[str, Any] = {"n": len(recs)}
            for k in keys:
                row[k] = _mean([r["systems"][s].get(k) for r in recs])
            audio = sum(r.get("processed_seconds", r["seconds"]) for r in recs)
            row["rtf"] = sum(r["systems"][s]["proc_seconds"] for r in recs) / audio if audio else None
            out[g][s] = row
        refs = [r["reference_dnsmos"] for r in recs if r.get("reference_dnsmos")]
        if refs:
            out[g]["reference"] = {"n": len(refs), **{k: _mean([d[k] for d in refs]) for k in refs[0]}}
        rt = [r["rt60"] for r in recs if r.get("rt60") is not None]
        if rt:
            out[g]["_rooms"] = {"rt60_mean": float(np.mean(rt)), "rt60_min": float(np.min(rt)),
                                "rt60_max": float(np.max(rt)), "rooms": len({r["room"] for r in recs})}
    return out


def _median(values: list[Any]) -> float | None:
    v = [x for x in values if x is not None and np.isfinite(x)]
    return float(np.median(v)) if v else None


def aggregate_warm(records: Sequence[dict[str, Any]], cfg: EvalConfig) -> dict[str, Any]:
    """The ``warm`` section of a result from the records' warm streams (:meth:`Evaluator.score_warm`).

    Returns ``{"config": the warm settings, "window_starts": [k] seconds, "summary": {group: {system:
    row}}}`` over the RT60 bins and ``all_reverb``. A row holds the means of the scored metrics (as
    :func:`aggregate`), and for each reference R in (early, direct): ``plateau_R`` (mean plateau, dB),
    ``t_reach_R`` (median over examples of the time to ``warm_fraction`` of the plateau, s; examples
    without a plateau above 0.1 dB are left out and ``t_reach_R_n`` counts the others),
    ``window_gain_R`` (the median windowed gain over examples, per window, dB) and
    ``t_reach_R_of_median`` (:func:`time_to_gain` of that median curve)."""
    recs = [r for r in records if r.get("warm")]
    conf = {"seconds": cfg.warm_seconds, "score_from": cfg.warm_score_from, "window": cfg.warm_window,
            "hop": cfg.warm_hop, "fraction": cfg.warm_fraction, "plateau_from": cfg.warm_seconds / 2,
            "pause_seconds": list(WARM_PAUSE_SECONDS)}
    if not recs:
        return {"config": conf, "window_starts": [], "summary": {}}
    starts = next((r["warm"]["window_starts"] for r in recs if "window_starts" in r["warm"]), [])
    groups: dict[str, list[dict]] = {}
    for r in recs:
        groups.setdefault(r["bin"], []).append(r)
        groups.setdefault("all_reverb", []).append(r)
    summary: dict[str, dict[str, Any]] = {}
    for g in [b for b, _, _ in RT60_BINS] + ["all_reverb"]:
        grp = groups.get(g, [])
        if not grp:
            continue
        summary[g] = {}
        for s in [s for s in SYSTEMS_ORDER if s in grp[0]["warm"]["systems"]]:
            rows = [r["warm"]["systems"][s] for r in grp]
            out: dict[str, Any] = {"n": len(rows)}
            for k in ("si_sdr_direct", "d_si_sdr_direct", "si_sdr_early", "d_si_sdr_early", "pesq", "d_pesq",
                      "estoi", "d_estoi"):
                out[k] = _mean([row.get(k) for row in rows])
            audio = sum(r["warm"]["seconds"] for r in grp)
            out["rtf"] = sum(row["proc_seconds"] for row in rows) / audio if audio else None
            for ref in ("early", "direct"):
                curves = [row[f"window_gain_{ref}"] for row in rows if f"window_gain_{ref}" in row]
                if not curves:
                    continue
                times = [row.get(f"t_reach_{ref}") for row in rows]
                out[f"plateau_{ref}"] = _mean([row.get(f"plateau_{ref}") for row in rows])
                out[f"t_reach_{ref}"] = _median(times)
                out[f"t_reach_{ref}_n"] = sum(t is not None for t in times)
                arr = np.array([[np.nan if v is None else v for v in c] for c in curves], dtype=float)
                with np.errstate(all="ignore"):
                    med = [None if not np.isfinite(arr[:, i]).any() else float(np.nanmedian(arr[:, i]))
                           for i in range(arr.shape[1])]
                out[f"window_gain_{ref}"] = med
                curve = np.array([np.nan if v is None else v for v in med])
                out[f"t_reach_{ref}_of_median"] = time_to_gain(np.asarray(starts), curve, conf["plateau_from"],
                                                               cfg.warm_fraction)[0]
            summary[g][s] = out
    return {"config": conf, "window_starts": starts, "summary": summary}


# Warm-stream bars: dSI-SDR vs early-50 on the scored part of the warm streams.
WARM_TARGETS: tuple[tuple[str, float], ...] = ((RT60_BINS[1][0], 4.0), (RT60_BINS[2][0], 5.0))


def check_warm_targets(warm: dict[str, Any]) -> list[dict[str, Any]]:
    """Target rows (as :func:`check_targets`) for the warm streams of a result's ``warm`` section."""
    rows = []
    for group, bar in WARM_TARGETS:
        value = warm.get("summary", {}).get(group, {}).get("ours", {}).get("d_si_sdr_early")
        rows.append({"target": f"warm {group}: dSI-SDR vs early-50 (dB)", "value": value, "bar": f">= {bar:+.2f}",
                     "met": None if value is None else bool(value >= bar)})
    return rows


# Metrics compared with WPE for "better than both WPE variants on every metric" (higher is better).
COMPARED = ("d_si_sdr_direct", "d_si_sdr_early", "pesq", "estoi", "dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak")


def check_targets(summary: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The project's quality targets for the shipped model against an :func:`aggregate` summary.

    Returns one row per target: ``{"target", "value", "bar", "met"}``; ``met`` is None when the
    summary lacks the group or system. Deltas are the paired means against the unprocessed input."""
    rows: list[dict[str, Any]] = []

    def get(group: str, system: str, key: str) -> float | None:
        return summary.get(group, {}).get(system, {}).get(key)

    def delta(group: str, key: str) -> float | None:
        """ours minus input: the paired mean ``d_<key>``, or the difference of the means (the same
        examples, so the same number) for metrics without a paired record."""
        d = get(group, "ours", f"d_{key}")
        if d is not None:
            return d
        a, b = get(group, "ours", key), get(group, "unprocessed", key)
        return None if a is None or b is None else a - b

    def add(target: str, value: float | None, bar: float, text: str | None = None, strict: bool = False) -> None:
        met = None if value is None else bool(value > bar if strict else value >= bar)
        rows.append({"target": target, "value": value, "bar": text or f">= {bar:+.2f}", "met": met})

    mid, high = RT60_BINS[1][0], RT60_BINS[2][0]
    for group, bar_e in ((mid, 3.0), (high, 4.0)):
        add(f"{group}: dSI-SDR vs early-50 (dB)", get(group, "ours", "d_si_sdr_early"), bar_e)
    add(f"{mid}: dSI-SDR vs direct path (dB)", get(mid, "ours", "d_si_sdr_direct"), 1.5)
    add(f"{mid}: dPESQ-WB", get(mid, "ours", "d_pesq"), 0.3)
    add(f"{mid}: dDNSMOS OVRL", get(mid, "ours", "d_dnsmos_ovrl"), 0.8)
    for group in (mid, high):
        for key in COMPARED:
            ours = get(group, "ours", key)
            wpe = [get(group, w, key) for w in ("wpe_online", "wpe_offline")]
            margin = None if ours is None or None in wpe else ours - max(wpe)  # type: ignore[type-var]
            add(f"{group}: {key} minus the better WPE", margin, 0.0, "> 0", strict=True)
    add("dry: SI-SDR of output vs input (dB)", get("dry", "ours", "si_sdr_input"), 30.0, ">= 30")
    for key, bar in (("si_sdr_direct", -0.5), ("si_sdr_early", -0.5), ("pesq", -0.05), ("dnsmos_ovrl", -0.05),
                     ("dnsmos_sig", -0.05), ("dnsmos_bak", -0.05)):
        add(f"{SHORT_GROUP}: change of {key}", delta(SHORT_GROUP, key), bar)
    add("music: dSI-SDR vs early-50 (dB)", get("music", "ours", "d_si_sdr_early"), -0.5)
    return rows


def targets_table(summary: dict[str, dict[str, dict[str, Any]]], warm: dict[str, Any] | None = None) -> str:
    """Markdown table of :func:`check_targets` (and :func:`check_warm_targets` with a ``warm`` section)."""
    rows = check_targets(summary) + (check_warm_targets(warm) if warm else [])
    lines = ["", "Quality targets:", "", "| target | measured | bar | met |", "|---|---|---|---|"]
    for r in rows:
        met = "-" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(f"| {r['target']} | {_f(r['value'], 3, signed=True)} | {r['bar']} | {met} |")
    met = sum(r["met"] is True for r in rows)
    lines += ["", f"{met} of {len(rows)} met.", ""]
    return "\n".join(lines)


def _f(v: Any, nd: int = 2, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{v:+.{nd}f}" if signed else f"{v:.{nd}f}"


def markdown_table(summary: dict[str, dict[str, dict[str, Any]]], title: str = "") -> str:
    """Markdown tables (reverberant speech per RT60 bin, dry speech, music) from :func:`aggregate`."""
    lines: list[str] = []
    if title:
        lines += [f"### {title}", ""]
    rev_groups = [g for g in [b for b, _, _ in RT60_BINS] + ["all_reverb", SHORT_GROUP] if g in summary]
    if rev_groups:
        lines += [
            "Reverberant speech (references: direct path, early-50 ms target; deltas are paired vs the input)",
            "",
            "| RT60 bin | system | n | SI-SDR direct dB | dSI-SDR direct | SI-SDR early dB | dSI-SDR early "
            "| PESQ-WB | dPESQ | ESTOI | dESTOI | DNSMOS OVRL | SIG | BAK | RTF |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for g in rev_groups:
            rooms = summary[g].get("_rooms", {})
            label = g if not rooms else f"{g} (mean {rooms['rt60_mean']:.2f} s)"
            for s, row in summary[g].items():
                if s.startswith("_"):
                    continue
                if s == "reference":
                    lines.append(f"| {label} | direct-path reference | {row['n']} | - | - | - | - | - | - | - | - "
                                 f"| {_f(row.get('dnsmos_ovrl'))} | {_f(row.get('dnsmos_sig'))} "
                                 f"| {_f(row.get('dnsmos_bak'))} | - |")
                    continue
                lines.append(
                    f"| {label} | {s} | {row['n']} | {_f(row.get('si_sdr_direct'))} "
                    f"| {_f(row.get('d_si_sdr_direct'), signed=True)} | {_f(row.get('si_sdr_early'))} "
                    f"| {_f(row.get('d_si_sdr_early'), signed=True)} | {_f(row.get('pesq'))} "
                    f"| {_f(row.get('d_pesq'), signed=True)} | {_f(row.get('estoi'), 3)} "
                    f"| {_f(row.get('d_estoi'), 3, signed=True)} | {_f(row.get('dnsmos_ovrl'))} "
                    f"| {_f(row.get('dnsmos_sig'))} | {_f(row.get('dnsmos_bak'))} "
                    f"| {_f(row.get('rtf'), 3) if s != 'unprocessed' else '-'} |")
        lines.append("")
    if "dry" in summary:
        lines += [
            "Dry (anechoic) speech: output vs input (a good dereverberator leaves it unchanged)",
            "",
            "| system | n | SI-SDR vs input dB | PESQ-WB vs input | ESTOI vs input | DNSMOS OVRL | SIG | BAK |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s, row in summary["dry"].items():
            if s.startswith("_") or s == "unprocessed":
                continue  # the identity's SI-SDR vs itself is just float precision
            lines.append(f"| {s} | {row['n']} | {_f(row.get('si_sdr_input'))} | {_f(row.get('pesq'))} "
                         f"| {_f(row.get('estoi'), 3)} | {_f(row.get('dnsmos_ovrl'))} "
                         f"| {_f(row.get('dnsmos_sig'))} | {_f(row.get('dnsmos_bak'))} |")
        unp = summary["dry"].get("unprocessed", {})
        if unp.get("dnsmos_ovrl") is not None:
            lines.append(f"| (input) | {unp['n']} | - | - | - | {_f(unp.get('dnsmos_ovrl'))} "
                         f"| {_f(unp.get('dnsmos_sig'))} | {_f(unp.get('dnsmos_bak'))} |")
        lines.append("")
    if "music" in summary:
        lines += [
            "Music through test rooms: SI-SDR vs early-50 (input -> output) and vs direct path",
            "",
            "| system | n | SI-SDR early dB | dSI-SDR early | SI-SDR direct dB | dSI-SDR direct |",
            "|---|---|---|---|---|---|",
        ]
        for s, row in summary["music"].items():
            if s.startswith("_"):
                continue
            lines.append(f"| {s} | {row['n']} | {_f(row.get('si_sdr_early'))} "
                         f"| {_f(row.get('d_si_sdr_early'), signed=True)} | {_f(row.get('si_sdr_direct'))} "
                         f"| {_f(row.get('d_si_sdr_direct'), signed=True)} |")
        lines.append("")
    return "\n".join(lines)


def warm_markdown_table(warm: dict[str, Any]) -> str:
    """Markdown tables of a result's ``warm`` section (:func:`aggregate_warm`): scored metrics and time to
    the gain per RT60 bin, then the median windowed gain vs early-50 at every whole second."""
    summary, c = warm.get("summary", {}), warm.get("config", {})
    if not summary:
        return ""
    pct = f"{100 * c['fraction']:.0f} %"
    lines = [
        f"Warm streams: {c['seconds']:g} s of the same talker through the same room, one pass from the rest "
        f"state, scored after {c['score_from']:g} s. Time to gain: start of the first {c['window']:g} s window "
        f"(every {c['hop']:g} s) whose dSI-SDR gain (running median of 3 windows) reaches {pct} of the plateau "
        f"(median over the windows after {c['plateau_from']:g} s); median over examples (n with a plateau "
        "above 0.1 dB), and of the median curve.",
        "",
        "| RT60 bin | system | n | SI-SDR direct dB | dSI-SDR direct | SI-SDR early dB | dSI-SDR early "
        f"| PESQ-WB | dPESQ | ESTOI | dESTOI | plateau early dB | s to {pct} (n) | s to {pct}, median curve | RTF |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for g, systems in summary.items():
        for s, row in systems.items():
            reach = "-" if s == "unprocessed" else f"{_f(row.get('t_reach_early'), 1)} ({row.get('t_reach_early_n', 0)})"
            cells = [g, s, str(row["n"]), _f(row.get("si_sdr_direct")), _f(row.get("d_si_sdr_direct"), signed=True),
                     _f(row.get("si_sdr_early")), _f(row.get("d_si_sdr_early"), signed=True), _f(row.get("pesq")),
                     _f(row.get("d_pesq"), signed=True), _f(row.get("estoi"), 3), _f(row.get("d_estoi"), 3, signed=True),
                     _f(row.get("plateau_early"), signed=True), reach, _f(row.get("t_reach_early_of_median"), 1),
                     _f(row.get("rtf"), 3) if s != "unprocessed" else "-"]
            lines.append("| " + " | ".join(cells) + " |")
    starts = warm.get("window_starts", [])
    cols = [i for i, t in enumerate(starts) if abs(t - round(t)) < 1e-9]
    if cols:
        lines += ["", f"Warm streams: median dSI-SDR gain vs early-50 (dB) in the {c['window']:g} s window starting at "
                      "t seconds", "",
                  "| RT60 bin | system | " + " | ".join(f"{starts[i]:g}" for i in cols) + " |",
                  "|---|---|" + "---|" * len(cols)]
        for g, systems in summary.items():
            for s, row in systems.items():
                curve = row.get("window_gain_early")
                if curve:
                    lines.append(f"| {g} | {s} | " + " | ".join(_f(curve[i], signed=True) for i in cols) + " |")
    lines.append("")
    return "\n".join(lines)


def _jsonable(o: Any) -> Any:
    """NaN/inf -> None (strict JSON), numpy scalars -> Python."""
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.floating, float)):
        return float(o) if np.isfinite(o) else None
    if isinstance(o, np.integer):
        return int(o)
    return o


# --------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------
def evaluate(cfg: EvalConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole evaluation; returns the result dict (what ``--out`` writes)."""
    t_start = time.perf_counter()
    specs = plan_examples(cfg)
    kinds = {k: sum(s.kind == k for s in specs) for k in ("reverb", "dry", "music")}
    log(f"evaluating {len(specs)} examples {kinds} with {cfg.jobs} job(s)")
    jobs = max(1, min(cfg.jobs, len(specs)))
    shards = [(cfg, specs[k::jobs], k) for k in range(jobs)]
    if jobs == 1:
        results = [_run_shard(shards[0])]
    else:
        # spawn (not fork): each worker starts numpy/onnxruntime fresh with the
        # single-thread environment set below, and inherits no parent state.
        saved = {v: os.environ.get(v) for v in _THREAD_VARS}
        _set_single_thread_env()
        try:
            # ProcessPoolExecutor (unlike Pool) raises BrokenProcessPool if a worker dies
            # instead of silently respawning it and waiting forever.
            with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
                results = list(pool.map(_run_shard, shards))
        finally:
            for v, val in saved.items():
                if val is None:
                    os.environ.pop(v, None)
                else:
                    os.environ[v] = val
    records = sorted((r for res in results for r in res[0]), key=lambda r: r["index"])
    metric_time: dict[str, list[float]] = {}
    for res in results:
        for k, v in res[1].items():
            metric_time.setdefault(k, []).extend(v)
    wall = time.perf_counter() - t_start

    audio = sum(r["seconds"] for r in records)
    processed = sum(r["processed_seconds"] for r in records)
    systems = [s for s in SYSTEMS_ORDER if s in records[0]["systems"]]
    timing = {
        "wall_seconds": wall,
        "examples": len(records),
        "audio_seconds": audio,
        "processed_audio_seconds": processed,
        "jobs": jobs,
        "worker_setup_seconds": [res[2] for res in results],
        "per_example_wall_seconds": wall / len(records),
        "metric_seconds_per_call": {k: float(np.mean(v)) for k, v in metric_time.items()},
        "metric_calls": {k: len(v) for k, v in metric_time.items()},
        "metric_seconds_total": {k: float(np.sum(v)) for k, v in metric_time.items()},
        "systems": {
            s: {"proc_seconds": sum(r["systems"][s]["proc_seconds"] for r in records),
                "rtf": sum(r["systems"][s]["proc_seconds"] for r in records) / processed}
            for s in systems
        },
    }
    summary = aggregate(records)
    warm = aggregate_warm(records, cfg) if cfg.warm else None
    if warm is not None:
        timing["warm_proc_seconds"] = {s: sum(r["warm"]["systems"][s]["proc_seconds"] for r in records if r.get("warm"))
                                       for s in systems}
    return _jsonable({
        "config": dataclasses.asdict(cfg),
        "environment": {"python": platform.python_version(), "machine": platform.machine(),
                        "cpus": os.cpu_count(), "packages": _package_versions()},
        "test_set": {"counts": kinds,
                     "manifest_sha256": _sha256(Path(cfg.corpus) / "manifest.jsonl"),
                     "rooms_sha256": _sha256(Path(cfg.rooms) / "rooms.jsonl"),
                     "model_sha256": _sha256(Path(cfg.model)) if cfg.model and cfg.model != PASSTHROUGH else None, "rt60_bins": {g: summary[g]["unprocessed"]["n"]
                                                   for g in summary if g.startswith("rt60")}},
        "summary": summary,
        "targets": check_targets(summary) + (check_warm_targets(warm) if warm else []),
        **({"warm": warm} if warm is not None else {}),
        **_gate_measures(cfg),
        "timing": timing,
        "examples": records,
    })


def noise_floor_shares(model: Any, seconds: float = 20.0) -> dict[str, dict[str, float]]:
    """What a music-gated model (a ``stream.StepModel`` with ``pass_share``) passes through of a noise
    floor before any sound, as a live microphone idling meets it: ``seconds`` of white, pink and brown
    noise at -80 and -60 dBFS (RMS, 16 kHz), each one channel from the model's rest state, run through
    the runtime's step. Returns {"KIND LEVEL dBFS": {"mean_share", "end_share"}}: the pass-through share
    over all hops and at the last one."""
    from training.mixing import colored_noise

    n = int(seconds * model.sample_rate) // model.hop * model.hop
    out = {}
    for level in (-80, -60):
        for kind in ("white", "pink", "brown"):
            x = colored_noise(np.random.default_rng(level + 100), n, kind) * 10 ** (level / 20)
            _, share, _ = model.run_with_share(x.astype(np.float32)[None], model.initial_state(1))
            out[f"{kind} {level} dBFS"] = {"mean_share": float(share[0].mean()), "end_share": float(share[0, -1])}
    return out


def _gate_measures(cfg: EvalConfig) -> dict[str, Any]:
    """For a model with a music gate, its noise-floor shares (``noise_floor_pass_share``); else nothing."""
    if not cfg.model or cfg.model == PASSTHROUGH:
        return {}
    from stream.model import StepModel

    model = StepModel.load(cfg.model)
    return {"noise_floor_pass_share": noise_floor_shares(model)} if model.has_pass_share else {}


def _sha256(path: Path) -> str:
    """Fingerprint of an input file, so a result can be tied to the exact data it used."""
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in ("numpy", "scipy", "onnxruntime", "pesq", "pystoi", "nara_wpe", "speechmos"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = "missing"
    return out


def timing_text(result: dict[str, Any]) -> str:
    """Human-readable timing summary of a result."""
    t = result["timing"]
    lines = [f"{t['examples']} examples ({t['audio_seconds']:.0f} s of audio) in {t['wall_seconds']:.1f} s "
             f"wall with {t['jobs']} job(s): {t['per_example_wall_seconds']:.2f} s per example",
             "metric cost per call (s): " + ", ".join(f"{k} {v:.3f} x{t['metric_calls'][k]}"
                                                       for k, v in sorted(t["metric_seconds_per_call"].items())),
             "system RTF (1 thread, with other workers running): " + ", ".join(
                 f"{s} {v['rtf']:.4f}" for s, v in t["systems"].items() if s != "unprocessed")]
    if "warm_proc_seconds" in t:
        lines.append("processing of the warm streams (s): " + ", ".join(
            f"{s} {v:.1f}" for s, v in t["warm_proc_seconds"].items() if s != "unprocessed"))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> tuple[EvalConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None,
                   help="ONNX model for the 'ours' system (run through stream.dereverb_array); "
                        f"'{PASSTHROUGH}' = identity (pipeline check); omit to evaluate baselines only")
    p.add_argument("--corpus", default=EvalConfig.corpus)
    p.add_argument("--rooms", default=EvalConfig.rooms)
    p.add_argument("--split", default=EvalConfig.split, choices=("train", "val", "test"))
    p.add_argument("--count", type=int, default=EvalConfig.count, help="total examples (reverb + dry + music)")
    p.add_argument("--seed", type=int, default=EvalConfig.seed)
    p.add_argument("--seconds", type=float, default=EvalConfig.seconds, help="maximum example length, s")
    p.add_argument("--warmup", type=float, default=EvalConfig.warmup,
                   help="seconds of preceding audio processed but not scored (0 = cold start)")
    p.add_argument("--warm-seconds", type=float, default=EvalConfig.warm_seconds,
                   help="length of the warm streams, s")
    p.add_argument("--warm-score-from", type=float, default=EvalConfig.warm_score_from,
                   help="the warm streams are scored from this second on")
    p.add_argument("--no-warm", action="store_true", help="skip the warm streams")
    p.add_argument("--jobs", type=int, default=EvalConfig.jobs, help="worker processes")
    p.add_argument("--out", default=None, help="write the full result JSON here")
    p.add_argument("--markdown", default=None, help="write the Markdown tables here")
    p.add_argument("--no-baselines", action="store_true", help="skip WPE online/offline")
    p.add_argument("--no-dnsmos", action="store_true", help="skip DNSMOS (the slowest metric)")
    p.add_argument("--rate", type=int, default=SAMPLE_RATE,
                   help="stream rate, Hz; above 16000 the corpus and rooms must be at this rate and the "
                        "evaluation is training.fullband's (per band, input and model only, one process)")
    a = p.parse_args(argv)
    if a.count < 1:
        p.error("--count must be >= 1")
    if not a.no_warm and not 0.0 <= a.warm_score_from < a.warm_seconds:
        p.error("--warm-score-from must lie in [0, --warm-seconds)")
    if not a.no_warm and a.warm_seconds < 2 * EvalConfig.warm_window:
        p.error(f"--warm-seconds must be at least {2 * EvalConfig.warm_window:g}")
    cfg = EvalConfig(corpus=a.corpus, rooms=a.rooms, model=a.model, split=a.split, count=a.count, seed=a.seed,
                     seconds=a.seconds, warmup=a.warmup, baselines=not a.no_baselines, dnsmos=not a.no_dnsmos,
                     jobs=max(1, a.jobs), warm=not a.no_warm, warm_seconds=a.warm_seconds,
                     warm_score_from=a.warm_score_from)
    return cfg, a


def main(argv: Sequence[str] | None = None) -> int:
    cfg, a = parse_args(argv)
    if cfg.model and cfg.model != PASSTHROUGH and not Path(cfg.model).is_file():
        print(f"error: model {cfg.model} not found", file=sys.stderr)
        return 2
    if a.rate != SAMPLE_RATE:
        if a.rate < SAMPLE_RATE:
            print(f"error: --rate {a.rate}: 16000 (the model's) or a full-band rate above it", file=sys.stderr)
            return 2
        from training.fullband import run_at_rate

        return run_at_rate(cfg, a.rate, a.out, a.markdown)
    result = evaluate(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    name = Path(cfg.model).stem if cfg.model else "baselines"
    md = markdown_table(result["summary"], title=f"{name} on {cfg.split} ({len(result['examples'])} examples, "
                                                   f"seed {cfg.seed}, "
                                                   + (f"{cfg.warmup:g} s warm-up)" if cfg.warmup > 0 else "cold start)"))
    if result.get("warm"):
        md += "\n" + warm_markdown_table(result["warm"]) + "\n"
    md += targets_table(result["summary"], result.get("warm")) + "\n"
    md += "\n" + "```\n" + timing_text(result) + "\n```\n"
    print(md)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    if a.markdown:
        Path(a.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(a.markdown).write_text(md, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
