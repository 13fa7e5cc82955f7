"""Map-style dataset of on-the-fly reverberant training examples (no torch import here).

``ReverbDataset(corpus_dir, rooms_dir, split)[i]`` is a dict of float32 numpy arrays:

* ``mixture``, ``early``, ``direct``: [segment] at 16 kHz (aligned, see training.mixing),
* ``rt60``: float32 scalar (s; 0 for the anechoic replacement), ``drr_db``: float32 scalar
  (60 for anechoic), ``is_music``: float32 scalar 0/1,
* ``lead``: int64 scalar, samples at the start where nothing sounds yet (only the mixture's noise;
  0 unless ``lead_prob`` > 0).

Item ``i`` only depends on (seed, epoch, i): ``rng = default_rng([seed, epoch, i])``, so a
DataLoader with any number of workers or any shuffling sees the same examples, and
``set_epoch(e)`` gives a fresh draw per epoch. Clips and RIRs are cached in memory the
first time they are used (``preload()`` loads all, e.g. before the DataLoader forks its
workers so they share the pages copy-on-write).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from .mixing import MixConfig, make_example


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class ReverbDataset:
    """Random (dry clip segment, room) pairs of one split, rendered with make_example.

    Args:
        corpus_dir: output of ``python -m training.data build`` (has manifest.jsonl).
        rooms_dir: output of ``python -m training.rooms build`` (has rooms.jsonl).
        split: "train", "val" or "test"; clips and rooms are both taken from it.
        segment_seconds: length of the returned arrays (s).
        length: number of items per epoch (examples are drawn, not enumerated).
        seed: base seed.
        mix: augmentation settings; its sample_rate must match the data (16 kHz).
        kinds: restrict to "speech" and/or "music" (default both, each with its share of
            the corpus duration).
        music_share: probability that an example is music (None: music's share of the split's
            duration). Clips within each kind are still drawn in proportion to their duration.
        lead_prob: probability that an example starts with a lead: ``lead_seconds`` (uniform in the
            range) in which the source is silent, so the mixture holds only its noise, as a recording
            or a live stream does before the first sound. Training crops clips at random points, so
            without it a stream's start is almost never a noise floor (docs/model.md, "Music").
        lead_seconds: (shortest, longest) lead in seconds.
    """

    def __init__(self, corpus_dir: str | Path, rooms_dir: str | Path, split: str,
                 segment_seconds: float = 4.0, length: int = 10000, seed: int = 0,
                 mix: MixConfig = MixConfig(), kinds: tuple[str, ...] = ("speech", "music"),
                 music_share: float | None = None, lead_prob: float = 0.0,
                 lead_seconds: tuple[float, float] = (0.05, 1.5)) -> None:
        self.corpus_dir = Path(corpus_dir)
        self.rooms_dir = Path(rooms_dir)
        self.split = split
        self.mix = mix
        self.sample_rate = mix.sample_rate
        self.segment = int(round(segment_seconds * self.sample_rate))
        self.length = int(length)
        self.seed = int(seed)
        self.epoch = 0
        self.clips = [r for r in read_jsonl(self.corpus_dir / "manifest.jsonl")
                      if r["split"] == split and r["kind"] in kinds]
        self.rooms = [r for r in read_jsonl(self.rooms_dir / "rooms.jsonl") if r["split"] == split]
        if not self.clips:
            raise ValueError(f"no {kinds} clips for split {split!r} in {self.corpus_dir}")
        if not self.rooms:
            raise ValueError(f"no rooms for split {split!r} in {self.rooms_dir}")
        # Clips are drawn proportionally to their duration, so every second of the corpus
        # is equally likely and music keeps its natural share.
        sec = np.array([r["seconds"] for r in self.clips], np.float64)
        self._clip_p = sec / sec.sum()
        if music_share is not None:
            if not 0.0 <= music_share <= 1.0:
                raise ValueError(f"music_share must be in [0, 1], got {music_share}")
            is_music = np.array([r["kind"] == "music" for r in self.clips])
            if is_music.any() and (~is_music).any():
                # Why a knob: music is ~14 % of the corpus's duration, and the model took sustained
                # notes for reverberant tails (docs/research.md, "Near-clean music: where the error is").
                w = np.where(is_music, music_share / sec[is_music].sum(), (1.0 - music_share) / sec[~is_music].sum())
                self._clip_p = sec * w
        if not 0.0 <= lead_prob <= 1.0:
            raise ValueError(f"lead_prob must be in [0, 1], got {lead_prob}")
        if lead_prob > 0 and not 0.0 <= lead_seconds[0] <= lead_seconds[1] < segment_seconds:
            raise ValueError(f"lead_seconds must be (a, b) with 0 <= a <= b < segment_seconds, got {lead_seconds}")
        self.lead_prob = float(lead_prob)
        self.lead_seconds = (float(lead_seconds[0]), float(lead_seconds[1]))
        self._clip_cache: dict[int, np.ndarray] = {}
        self._rir_cache: dict[int, np.ndarray] = {}

    # ------------------------------------------------------------------ torch-like protocol

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Select the draw of examples (call once per epoch, before iterating)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        room_i = int(rng.integers(len(self.rooms)))
        rir = self.rir(room_i)
        room = self.rooms[room_i]
        dry, start, first_clip = self._dry_stream(rng, lead=len(rir))
        lead = 0
        if self.lead_prob > 0:
            # Its own generator, so that examples without a lead are the same as with lead_prob = 0.
            lrng = np.random.default_rng([self.seed, self.epoch, int(index), 1])
            if lrng.random() < self.lead_prob:
                lead = int(round(lrng.uniform(*self.lead_seconds) * self.sample_rate))
                # Silent before start + lead: no sound, and no reverberant tail of earlier sound either.
                dry = dry.copy()
                dry[: start + lead] = 0.0
        item = self.render(dry, start, rir, rng, info={
            "rt60": float(room["rt60"]), "drr": float(room["drr_db"]), "room": room["id"],
            "kind": self.clips[first_clip]["kind"], "clip": self.clips[first_clip]["id"]})
        item["lead"] = np.int64(lead)
        return item

    # ------------------------------------------------------------------ pieces

    def clip(self, i: int) -> np.ndarray:
        """Dry clip ``i`` as float32 [n] (cached)."""
        if i not in self._clip_cache:
            x, sr = sf.read(str(self.corpus_dir / self.clips[i]["path"]), dtype="float32")
            if sr != self.sample_rate:
                raise ValueError(f"{self.clips[i]['path']}: {sr} Hz, expected {self.sample_rate}")
            self._clip_cache[i] = x
        return self._clip_cache[i]

    def rir(self, i: int) -> np.ndarray:
        """RIR ``i`` as float32 [m] (cached)."""
        if i not in self._rir_cache:
            h, sr = sf.read(str(self.rooms_dir / self.rooms[i]["path"]), dtype="float32")
            if sr != self.sample_rate:
                raise ValueError(f"{self.rooms[i]['path']}: {sr} Hz, expected {self.sample_rate}")
            self._rir_cache[i] = h if h.ndim == 1 else h[:, 0]
        return self._rir_cache[i]

    def preload(self) -> None:
        """Load every clip and RIR of the split into memory."""
        for i in range(len(self.clips)):
            self.clip(i)
        for i in range(len(self.rooms)):
            self.rir(i)

    def _dry_stream(self, rng: np.random.Generator, lead: int) -> tuple[np.ndarray, int, int]:
        """Dry signal [n] with a segment start ``start`` and up to ``lead`` samples of real
        signal before it. Clips shorter than a segment are followed by further random
        clips of the same kind (back to back, as in continuous talk or a playlist)."""
        first = int(rng.choice(len(self.clips), p=self._clip_p))
        kind = self.clips[first]["kind"]
        parts = [self.clip(first)]
        total = len(parts[0])
        while total < self.segment:
            j = int(rng.choice(len(self.clips), p=self._clip_p))
            if self.clips[j]["kind"] != kind:
                continue
            parts.append(self.clip(j))
            total += len(parts[-1])
        x = np.concatenate(parts) if len(parts) > 1 else parts[0]
        start = int(rng.integers(0, len(x) - self.segment + 1))
        lo = max(0, start - lead)
        return x[lo : start + self.segment], start - lo, first

    def render(self, dry: np.ndarray, start: int, rir: np.ndarray, rng: np.random.Generator,
               info: dict | None = None) -> dict[str, Any]:
        """Reverberate ``dry`` [n] and crop ``[start, start + segment)``.

        Convolving from up to len(rir) samples *before* the segment means the segment
        begins with the reverb tail of what was said just before, as in a real stream;
        the targets (early/direct) contain only the short-delay part of that past."""
        ex = make_example(dry, rir, rng, self.mix, info=info, valid_from=start)
        sl = slice(start, start + self.segment)
        drr = ex.info.get("drr", np.nan)
        return {
            "mixture": ex.mixture[sl], "early": ex.early[sl], "direct": ex.direct[sl],
            "rt60": np.float32(ex.info.get("rt60", np.nan)),
            "drr_db": np.float32(60.0 if not np.isfinite(drr) else drr),
            "is_music": np.float32(ex.info.get("kind") == "music"),
        }
